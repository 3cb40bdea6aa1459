//! `linearize`: Selective Network Linearization (Cho et al., ICML 2022). Masks start at 1 and
//! are learned with the weights under `CE + KD + lambda*|a|_1` (Adam); lambda grows by 1.1 each
//! epoch the count of masks above the threshold fails to reach a new minimum; once the count is
//! within the budget the masks are binarised (exactly `<= budget` ReLUs), the network is
//! finetuned with distillation, and exported. [`Method::Random`] and [`Method::Layer`] replace the
//! mask learning with a baseline selection and keep everything else identical.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use pi_model::Granularity;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::{info, warn};

use crate::baselines::{layer_masks, random_masks};
use crate::batches::{Splits, load_splits};
use crate::error::{LinearizeError, ParseBudgetError, Result};
use crate::executor::{Net, default_device, with_full_masks};
use crate::masked_relu::{binarise, count_above};
use crate::optim::{OptimKind, Optimizer, Schedule};
use crate::progress::Progress;
use crate::report::{LayerRelus, layer_relus, peak_memory_mib, write_report};
use crate::trainer::{EpochPlan, LossWeights, evaluate, recalibrate_batchnorm, train_epoch};

/// A ReLU budget: an absolute count, or a fraction of the network's ReLUs when below 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Count(usize),
    Fraction(f64),
}

/// Parses a count (`3000`) or a fraction in [0, 1) (`0.15`).
impl FromStr for Budget {
    type Err = ParseBudgetError;
    fn from_str(s: &str) -> Result<Self, ParseBudgetError> {
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Budget::Count(n));
        }
        match s.parse::<f64>() {
            Ok(f) if (0.0..1.0).contains(&f) => Ok(Budget::Fraction(f)),
            _ => Err(ParseBudgetError(s.to_string())),
        }
    }
}

impl Budget {
    /// The budget in ReLUs for a network with `total` ReLUs.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            Budget::Count(n) => n.min(total),
            Budget::Fraction(f) => (f * total as f64).floor() as usize,
        }
    }
}

/// How the surviving ReLUs are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Learned masks (SNL).
    Snl,
    /// Uniformly random ReLUs (baseline).
    Random,
    /// Whole ReLU layers kept or removed (DeepReDuce-like baseline).
    Layer,
}

/// What `linearize` does: the trained model and data, the budgets, how ReLUs are selected (SNL's
/// mask learning or a baseline) and how the result is finetuned. [`LinearizeConfig::new`] gives
/// the defaults of `pi linearize`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearizeConfig {
    /// Trained model file (from `train` or `import`); also the distillation teacher.
    pub model: PathBuf,
    /// Dataset directory (IDX or CIFAR binary); `None`: the system Fashion-MNIST if installed,
    /// else the bundled subset.
    pub data: Option<PathBuf>,
    /// ReLUs to keep. Several budgets share one mask-learning run: each is taken at the epoch
    /// where a run with that budget alone would stop, then finetuned and written separately
    /// (`out` and `report` get a `-{budget}` suffix).
    pub budgets: Vec<Budget>,
    /// Output model file (.safetensors).
    pub out: PathBuf,
    /// How the surviving ReLUs are chosen.
    pub method: Method,
    /// One mask per activation element or per channel.
    pub granularity: Granularity,
    /// Initial weight of the L1 penalty on the masks (sum of |a| over all masks).
    pub lambda: f64,
    /// Factor applied to lambda after an epoch whose mask count is not a new minimum.
    pub lambda_growth: f64,
    /// A count is a new minimum only when at least this fraction below the previous minimum
    /// (0: SNL's rule, any decrease).
    pub min_decrease: f64,
    /// Lambda may grow after this epoch at the earliest (counted from 1). Adam moves a mask by at
    /// most about `lr` per step, so no mask can cross the threshold in the first
    /// `(1 - threshold) / lr` steps: earlier epochs are no sign of stalling.
    pub warmup_epochs: usize,
    /// Upper bound on mask-learning epochs (binarisation to the budget happens regardless).
    pub max_epochs: usize,
    /// Adam learning rate for weights and masks during mask learning.
    pub lr: f64,
    /// A mask counts as a ReLU when its value is above this threshold.
    pub threshold: f64,
    /// Distillation temperature.
    pub temperature: f64,
    /// Weight of the distillation term (mask learning and finetuning).
    pub kd_weight: f64,
    /// Finetuning epochs after binarisation (SGD with momentum, with distillation).
    pub finetune_epochs: usize,
    /// Base learning rate of the finetuning SGD.
    pub finetune_lr: f64,
    /// Finetuning learning-rate schedule.
    pub finetune_schedule: Schedule,
    /// SGD momentum for finetuning.
    pub momentum: f64,
    /// L2 weight decay for finetuning (never on masks).
    pub weight_decay: f64,
    /// Mini-batch size.
    pub batch: usize,
    /// Training images held out to choose the best finetuning epoch.
    pub val_size: usize,
    /// Train on only this many images (quick experiments).
    pub train_limit: Option<usize>,
    /// Seed of shuffling, augmentation and the random baseline.
    pub seed: u64,
    /// Seed of the validation split and of the `train_limit` subset; `None`: `seed`. Fixing it
    /// keeps the same images across seeds (and the teacher's held-out images out of training).
    pub split_seed: Option<u64>,
    /// Batches (of `batch` training images) over which every BatchNorm's running statistics are
    /// re-estimated after the masks are binarised (or set by a baseline), before finetuning; 0: off.
    pub recalibrate_batches: usize,
    /// Write the inference form (BatchNorm folded into the convolutions).
    pub fold: bool,
    /// Also write the JSON report(s) to this file.
    pub report: Option<PathBuf>,
}

impl LinearizeConfig {
    /// The defaults of `pi linearize` for `model`, `out` and `budgets`: SNL with pixel masks
    /// (lambda 5e-4 growing by 1.1 from the 6th epoch on, at most 40 epochs, Adam lr 1e-3,
    /// threshold 0.01), BatchNorm statistics recalibrated over 50 batches after binarising,
    /// distillation at temperature 4 with weight 1, 5 finetuning epochs of SGD (lr 0.01, cosine,
    /// momentum 0.9, weight decay 5e-4), batch 64, 5000 validation images, seed 0 (split too),
    /// folded output, no report file.
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>, budgets: Vec<Budget>) -> Self {
        LinearizeConfig {
            model: model.into(),
            data: None,
            budgets,
            out: out.into(),
            method: Method::Snl,
            granularity: Granularity::Pixel,
            lambda: 5e-4,
            lambda_growth: 1.1,
            min_decrease: 0.0,
            warmup_epochs: 6,
            max_epochs: 40,
            lr: 1e-3,
            threshold: 0.01,
            temperature: 4.0,
            kd_weight: 1.0,
            finetune_epochs: 5,
            finetune_lr: 0.01,
            finetune_schedule: Schedule::Cosine,
            momentum: 0.9,
            weight_decay: 5e-4,
            batch: 64,
            val_size: 5000,
            train_limit: None,
            seed: 0,
            split_seed: None,
            recalibrate_batches: 50,
            fold: true,
            report: None,
        }
    }
}

/// One mask-learning epoch in the report.
#[derive(Clone, Debug, Serialize)]
pub struct SnlEpoch {
    pub epoch: usize,
    pub lambda: f64,
    pub loss: f64,
    pub relus_above_threshold: usize,
    pub val_acc: f64,
    pub seconds: f64,
}

/// One finetuning epoch in the report.
#[derive(Debug, Serialize)]
pub struct FinetuneEpoch {
    pub epoch: usize,
    pub loss: f64,
    pub val_acc: f64,
    pub seconds: f64,
}

/// JSON report of `linearize` (one per budget).
#[derive(Debug, Serialize)]
pub struct LinearizeReport {
    pub method: Method,
    pub granularity: String,
    pub model: String,
    pub out: String,
    pub budget: usize,
    /// Seed of shuffling and the random baseline.
    pub seed: u64,
    /// Seed of the validation split and the `train_limit` subset.
    pub split_seed: u64,
    /// Training images (after `train_limit`) and validation images.
    pub train_images: usize,
    pub val_images: usize,
    pub relus_before: usize,
    pub relus_after: usize,
    pub layers: Vec<LayerRelus>,
    /// Test accuracy of the input model, after binarising the masks (running statistics as they
    /// were), after recalibrating BatchNorm (`None` when off; finetuning starts from it), and
    /// after finetuning.
    pub test_acc_before: f64,
    pub test_acc_binarised: f64,
    pub test_acc_recalibrated: Option<f64>,
    /// Training images whose batch statistics replaced the running statistics (0: off).
    pub recalibration_images: usize,
    pub test_acc_finetuned: f64,
    pub val_acc_finetuned: f64,
    pub snl_epochs: Vec<SnlEpoch>,
    pub lambda_trajectory: Vec<f64>,
    /// True when mask learning reached the budget before `max_epochs`.
    pub snl_converged: bool,
    pub finetune_epochs: Vec<FinetuneEpoch>,
    pub train_images_per_second: f64,
    pub peak_memory_mib: Option<f64>,
    pub seconds: f64,
}

/// Accumulates training throughput over phases.
#[derive(Clone, Default)]
struct Throughput {
    images: usize,
    seconds: f64,
}

/// Where mask learning stopped for one budget: the network, the binarised masks and the state
/// needed to carry on exactly as a run with only this budget would.
struct Stop {
    budget: usize,
    net: Net,
    selection: Vec<Vec<f32>>,
    rng: ChaCha8Rng,
    epochs: usize,
    converged: bool,
    throughput: Throughput,
}

/// `path` with `-{budget}` inserted before the extension when several budgets are written.
fn suffixed(path: &std::path::Path, budget: usize, many: bool) -> PathBuf {
    if !many {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let name = match path.extension() {
        Some(e) => format!("{stem}-{budget}.{}", e.to_string_lossy()),
        None => format!("{stem}-{budget}"),
    };
    path.with_file_name(name)
}

/// Linearizes a trained network (see [`LinearizeConfig`]): learns or picks the ReLUs to keep for
/// each budget, finetunes, saves each model, writes the report files when asked, and returns the
/// reports (one per distinct budget, largest budget first).
pub fn linearize(config: &LinearizeConfig, progress: &mut dyn Progress) -> Result<Vec<LinearizeReport>> {
    let started = Instant::now();
    let input = pi_model::load(&config.model)
        .map_err(|source| LinearizeError::LoadModel { path: config.model.clone(), source })?;
    let dir = config.data.clone().unwrap_or_else(pi_model::data::default_fashion_mnist_dir);
    let split_seed = config.split_seed.unwrap_or(config.seed);
    let splits = load_splits(&dir, Some(&input.normalization), config.val_size, config.train_limit, split_seed)?;
    if input.graph.input_shape != splits.train.shape.to_vec() || input.graph.classes != splits.train.classes {
        return Err(LinearizeError::DatasetMismatch {
            model_shape: input.graph.input_shape.clone(),
            model_classes: input.graph.classes,
            data_shape: splits.train.shape.to_vec(),
            data_classes: splits.train.classes,
        });
    }
    if config.budgets.is_empty() {
        return Err(LinearizeError::NoBudget);
    }
    let granularity = config.granularity;
    let start_model = with_full_masks(&input, granularity)?;
    let total = start_model.kept_relus();
    let mut budgets: Vec<usize> = config.budgets.iter().map(|b| b.resolve(total)).collect();
    budgets.sort_unstable_by(|a, b| b.cmp(a));
    budgets.dedup();
    let many = budgets.len() > 1;
    let device = default_device();
    let mut teacher = Net::from_model(&input, &device)?;
    teacher.set_trainable(false, false);
    let acc_before = evaluate(&mut teacher, &splits.test);
    info!(total, ?budgets, acc_before, method = ?config.method, "linearizing");

    let mut snl_epochs = Vec::new();
    let stops: Vec<Stop> = match config.method {
        Method::Snl => {
            let net = Net::from_model(&start_model, &device)?;
            learn_masks(config, &splits, net, &mut teacher, &budgets, &mut snl_epochs, progress)
        }
        Method::Random | Method::Layer => budgets
            .iter()
            .map(|&budget| {
                let net = Net::from_model(&start_model, &device)?;
                let masks = net.masks();
                let selection = match config.method {
                    Method::Random => random_masks(&masks, budget, config.seed),
                    _ => layer_masks(&masks, budget),
                };
                Ok(Stop {
                    budget,
                    net,
                    selection,
                    rng: ChaCha8Rng::seed_from_u64(config.seed),
                    epochs: 0,
                    converged: true,
                    throughput: Throughput::default(),
                })
            })
            .collect::<Result<_>>()?,
    };

    let mut reports = Vec::with_capacity(stops.len());
    for stop in stops {
        let Stop { budget, mut net, selection, mut rng, epochs, converged, throughput: mut tp } = stop;
        net.set_trainable(true, false);
        net.set_masks(&selection);
        let acc_binarised = evaluate(&mut net, &splits.test);
        let kept = count_above(&net.masks(), 0.5);
        info!(kept, budget, acc_binarised, "masks binarised");
        if kept > budget {
            return Err(LinearizeError::BudgetExceeded { kept, budget });
        }
        // Own stream, so the finetuning batches are the same with and without recalibration.
        let mut calib_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0xb47c_4a11);
        let recalibration_images =
            recalibrate_batchnorm(&mut net, &splits.train, config.batch, config.recalibrate_batches, &mut calib_rng);
        let acc_recalibrated = (recalibration_images > 0).then(|| evaluate(&mut net, &splits.test));
        if let Some(acc) = acc_recalibrated {
            info!(
                budget,
                acc_binarised,
                acc_recalibrated = acc,
                images = recalibration_images,
                "BatchNorm recalibrated"
            );
        }
        let (finetune, val_acc) = finetune(config, &splits, &mut net, &mut teacher, &mut rng, &mut tp, progress);
        let acc_finetuned = evaluate(&mut net, &splits.test);
        let result = net.to_model();
        let out_model = if config.fold { result.fold_batchnorm() } else { result };
        let out = suffixed(&config.out, budget, many);
        pi_model::save(&out_model, &out).map_err(|source| LinearizeError::SaveModel { path: out.clone(), source })?;
        info!(budget, acc_before, acc_binarised, acc_finetuned, relus = out_model.kept_relus(), out = %out.display(), "done");
        let report = LinearizeReport {
            method: config.method,
            granularity: format!("{granularity:?}").to_lowercase(),
            model: config.model.display().to_string(),
            out: out.display().to_string(),
            budget,
            seed: config.seed,
            split_seed,
            train_images: splits.train.n,
            val_images: splits.val.n,
            relus_before: input.kept_relus(),
            relus_after: out_model.kept_relus(),
            layers: layer_relus(&input, &out_model),
            test_acc_before: acc_before,
            test_acc_binarised: acc_binarised,
            test_acc_recalibrated: acc_recalibrated,
            recalibration_images,
            test_acc_finetuned: acc_finetuned,
            val_acc_finetuned: val_acc,
            snl_epochs: snl_epochs.iter().take(epochs).cloned().collect(),
            lambda_trajectory: snl_epochs.iter().take(epochs).map(|e| e.lambda).collect(),
            snl_converged: converged,
            finetune_epochs: finetune,
            train_images_per_second: tp.images as f64 / tp.seconds.max(1e-9),
            peak_memory_mib: peak_memory_mib(),
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Some(path) = &config.report {
            write_report(&report, &suffixed(path, budget, many))?;
        }
        reports.push(report);
    }
    Ok(reports)
}

/// The SNL loop over budgets sorted in decreasing order; returns where it stopped for each.
fn learn_masks(
    config: &LinearizeConfig,
    splits: &Splits,
    mut net: Net,
    teacher: &mut Net,
    budgets: &[usize],
    log: &mut Vec<SnlEpoch>,
    progress: &mut dyn Progress,
) -> Vec<Stop> {
    net.set_trainable(true, true);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut tp = Throughput::default();
    let mut opt = Optimizer::new(OptimKind::adam());
    let threshold = config.threshold as f32;
    let mut lambda = config.lambda;
    let mut lowest = count_above(&net.masks(), threshold);
    let mut stops = Vec::new();
    let mut pending = budgets.iter().copied().peekable();
    // A budget the full network already meets needs no mask learning.
    while let Some(&b) = pending.peek() {
        if lowest > b {
            break;
        }
        stops.push(Stop {
            budget: b,
            net: net.snapshot(),
            selection: binarise(&net.masks(), threshold, b),
            rng: rng.clone(),
            epochs: 0,
            converged: true,
            throughput: tp.clone(),
        });
        pending.next();
    }
    for epoch in 0..config.max_epochs {
        if pending.peek().is_none() {
            break;
        }
        let lr = |_: f64| config.lr;
        let plan = EpochPlan {
            data: &splits.train,
            batch: config.batch,
            loss: LossWeights { kd_weight: config.kd_weight, temperature: config.temperature, l1: lambda },
            lr: &lr,
            label: format!("snl {}", epoch + 1),
        };
        let stats = train_epoch(&mut net, Some(teacher), &mut opt, &plan, &mut rng, progress);
        tp.images += stats.images;
        tp.seconds += stats.seconds;
        let masks = net.masks();
        let count = count_above(&masks, threshold);
        let val_acc = evaluate(&mut net, &splits.val);
        info!(
            epoch = epoch + 1,
            lambda,
            count,
            val_acc,
            loss = stats.loss,
            img_s = stats.images_per_second(),
            "snl epoch"
        );
        log.push(SnlEpoch {
            epoch: epoch + 1,
            lambda,
            loss: stats.loss,
            relus_above_threshold: count,
            val_acc,
            seconds: stats.seconds,
        });
        while let Some(&b) = pending.peek() {
            if count > b {
                break;
            }
            stops.push(Stop {
                budget: b,
                net: net.snapshot(),
                selection: binarise(&masks, threshold, b),
                rng: rng.clone(),
                epochs: epoch + 1,
                converged: true,
                throughput: tp.clone(),
            });
            pending.next();
        }
        let new_minimum = (count as f64) < lowest as f64 * (1.0 - config.min_decrease);
        if !new_minimum && epoch + 1 >= config.warmup_epochs {
            lambda *= config.lambda_growth;
        }
        lowest = lowest.min(count);
    }
    let masks = net.masks();
    for b in pending {
        warn!(
            budget = b,
            max_epochs = config.max_epochs,
            "mask learning did not reach the budget; keeping the largest masks"
        );
        stops.push(Stop {
            budget: b,
            net: net.snapshot(),
            selection: binarise(&masks, threshold, b),
            rng: rng.clone(),
            epochs: log.len(),
            converged: false,
            throughput: tp.clone(),
        });
    }
    stops
}

/// Finetunes weights with frozen binary masks; restores the epoch with the best validation accuracy.
fn finetune(
    config: &LinearizeConfig,
    splits: &Splits,
    net: &mut Net,
    teacher: &mut Net,
    rng: &mut ChaCha8Rng,
    tp: &mut Throughput,
    progress: &mut dyn Progress,
) -> (Vec<FinetuneEpoch>, f64) {
    net.set_trainable(true, false);
    let mut opt = Optimizer::new(OptimKind::sgd(config.momentum, config.weight_decay));
    let mut best_acc = evaluate(net, &splits.val);
    let mut best = net.snapshot();
    let mut log = Vec::new();
    for epoch in 0..config.finetune_epochs {
        let lr = |p: f64| {
            config.finetune_schedule.lr(config.finetune_lr, (epoch as f64 + p) / config.finetune_epochs as f64)
        };
        let plan = EpochPlan {
            data: &splits.train,
            batch: config.batch,
            loss: LossWeights { kd_weight: config.kd_weight, temperature: config.temperature, l1: 0.0 },
            lr: &lr,
            label: format!("finetune {}/{}", epoch + 1, config.finetune_epochs),
        };
        let stats = train_epoch(net, Some(teacher), &mut opt, &plan, rng, progress);
        tp.images += stats.images;
        tp.seconds += stats.seconds;
        let val_acc = evaluate(net, &splits.val);
        info!(epoch = epoch + 1, loss = stats.loss, val_acc, img_s = stats.images_per_second(), "finetune epoch");
        log.push(FinetuneEpoch { epoch: epoch + 1, loss: stats.loss, val_acc, seconds: stats.seconds });
        if val_acc > best_acc {
            best_acc = val_acc;
            best = net.snapshot();
        }
    }
    net.load_state(&best);
    (log, best_acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_parses_counts_and_fractions() {
        assert_eq!("3000".parse::<Budget>().unwrap(), Budget::Count(3000));
        assert_eq!("0.15".parse::<Budget>().unwrap(), Budget::Fraction(0.15));
        assert!("1.5".parse::<Budget>().is_err());
        let err = "abc".parse::<Budget>().unwrap_err();
        assert_eq!(err.to_string(), "\"abc\" is neither a ReLU count nor a fraction in [0, 1)");
        assert_eq!(Budget::Fraction(0.15).resolve(20384), 3057);
        assert_eq!(Budget::Count(30000).resolve(20384), 20384);
    }
}
