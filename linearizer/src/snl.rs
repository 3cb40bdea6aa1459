//! `linearize`: Selective Network Linearization (Cho et al., ICML 2022). Masks start at 1 and
//! are learned with the weights under `CE + KD + lambda*|a|_1` (Adam); lambda grows by 1.1 each
//! epoch the count of masks above the threshold fails to reach a new minimum; once the count is
//! within the budget the masks are binarised (exactly `<= budget` ReLUs), the network is
//! finetuned with distillation, and exported. `--method random|layer` replaces the mask learning
//! with a baseline selection and keeps everything else identical.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use pi_model::Granularity;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::{info, warn};

use crate::baselines::{layer_masks, random_masks};
use crate::batches::{Splits, load_splits};
use crate::executor::{Net, default_device, with_full_masks};
use crate::masked_relu::{binarise, count_above};
use crate::optim::{OptimKind, Optimizer, Schedule};
use crate::report::{LayerRelus, emit, layer_relus, peak_memory_mib};
use crate::trainer::{EpochPlan, LossWeights, evaluate, train_epoch};

/// A ReLU budget: an absolute count, or a fraction of the network's ReLUs when below 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    Count(usize),
    Fraction(f64),
}

impl FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Budget::Count(n));
        }
        match s.parse::<f64>() {
            Ok(f) if (0.0..1.0).contains(&f) => Ok(Budget::Fraction(f)),
            _ => Err(format!(
                "{s:?} is neither a ReLU count nor a fraction in [0, 1)"
            )),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Learned masks (SNL).
    Snl,
    /// Uniformly random ReLUs (baseline).
    Random,
    /// Whole ReLU layers kept or removed (DeepReDuce-like baseline).
    Layer,
}

/// Mask granularity flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GranularityArg {
    /// One mask per activation element.
    Pixel,
    /// One mask per channel (all pixels of a channel share it).
    Channel,
}

impl From<GranularityArg> for Granularity {
    fn from(g: GranularityArg) -> Self {
        match g {
            GranularityArg::Pixel => Granularity::Pixel,
            GranularityArg::Channel => Granularity::Channel,
        }
    }
}

/// Linearize a trained network to a ReLU budget (SNL or a baseline), finetune it, export it.
#[derive(Args, Clone, Debug)]
pub struct LinearizeArgs {
    /// Trained model file (from `train` or `import`); it is also the distillation teacher.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset directory (IDX or CIFAR binary). Default: the system Fashion-MNIST if installed,
    /// else the bundled subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// ReLUs to keep: a count (e.g. 3000) or a fraction of all ReLUs (e.g. 0.15). The exported
    /// model has at most this many ReLUs, exactly. Several budgets (`4000,2000,1000`) share one
    /// mask-learning run: SNL passes the larger budgets on its way to the smaller ones, and each
    /// is taken at the epoch where a run with that budget alone would stop; every budget is then
    /// finetuned and written separately (`OUT` and `--report` get a `-{budget}` suffix).
    #[arg(long, value_delimiter = ',', required = true)]
    pub budget: Vec<Budget>,
    /// Output model file (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// How surviving ReLUs are chosen: snl (learned), random, layer (whole layers).
    #[arg(long, value_enum, default_value_t = Method::Snl)]
    pub method: Method,
    /// Mask per activation element (pixel) or per channel.
    #[arg(long, value_enum, default_value_t = GranularityArg::Pixel)]
    pub granularity: GranularityArg,
    /// Initial weight of the L1 penalty on the masks (sum of |a| over all masks). SNL used 1e-5
    /// for ResNet-18 with up to 2000 epochs; 5e-4 reaches small-cnn budgets in a few epochs.
    #[arg(long, default_value_t = 5e-4)]
    pub lambda: f64,
    /// Factor applied to lambda after an epoch whose mask count is not a new minimum.
    #[arg(long, default_value_t = 1.1)]
    pub lambda_growth: f64,
    /// A count is a new minimum only when it is at least this fraction below the previous
    /// minimum (0 = SNL's rule: any decrease). Makes lambda grow when progress becomes slow.
    #[arg(long, default_value_t = 0.0)]
    pub min_decrease: f64,
    /// Epochs before lambda may grow.
    #[arg(long, default_value_t = 2)]
    pub warmup_epochs: usize,
    /// Upper bound on mask-learning epochs (binarisation to the budget happens regardless).
    #[arg(long, default_value_t = 40)]
    pub max_epochs: usize,
    /// Adam learning rate for weights and masks during mask learning.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// A mask counts as a ReLU when its value is above this threshold.
    #[arg(long, default_value_t = 0.01)]
    pub threshold: f64,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f64,
    /// Weight of the distillation term (mask learning and finetuning).
    #[arg(long, default_value_t = 1.0)]
    pub kd_weight: f64,
    /// Finetuning epochs after binarisation (SGD with momentum, with distillation).
    #[arg(long, default_value_t = 5)]
    pub finetune_epochs: usize,
    /// Base learning rate of the finetuning SGD.
    #[arg(long, default_value_t = 0.01)]
    pub finetune_lr: f64,
    /// Finetuning learning-rate schedule.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub finetune_schedule: Schedule,
    /// SGD momentum for finetuning.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay for finetuning (never on masks).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Training images held out to choose the best finetuning epoch.
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Use only this many training images (quick experiments).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Seed of shuffling, augmentation and the random baseline.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep BatchNorm unfolded in the exported file (default: folded inference form).
    #[arg(long)]
    pub no_fold: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Hide progress bars.
    #[arg(long)]
    pub no_progress: bool,
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

/// JSON report of `linearize`.
#[derive(Debug, Serialize)]
pub struct LinearizeReport {
    pub method: Method,
    pub granularity: String,
    pub model: String,
    pub out: String,
    pub budget: usize,
    pub relus_before: usize,
    pub relus_after: usize,
    pub layers: Vec<LayerRelus>,
    /// Test accuracy of the input model, after binarising the masks, and after finetuning.
    pub test_acc_before: f64,
    pub test_acc_binarised: f64,
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
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(e) => format!("{stem}-{budget}.{}", e.to_string_lossy()),
        None => format!("{stem}-{budget}"),
    };
    path.with_file_name(name)
}

/// Runs `linearize` (see [`LinearizeArgs`]).
pub fn linearize(args: &LinearizeArgs) -> Result<()> {
    let started = Instant::now();
    let input =
        pi_model::load(&args.model).with_context(|| format!("loading {}", args.model.display()))?;
    let dir = args
        .data
        .clone()
        .unwrap_or_else(pi_model::data::default_fashion_mnist_dir);
    let splits = load_splits(&dir, args.val_size, args.train_limit, args.seed)?;
    if input.graph.input_shape != splits.train.shape.to_vec()
        || input.graph.classes != splits.train.classes
    {
        bail!(
            "model takes {:?} with {} classes, dataset has {:?} with {} classes",
            input.graph.input_shape,
            input.graph.classes,
            splits.train.shape,
            splits.train.classes
        );
    }
    if args.budget.is_empty() {
        bail!("no budget given");
    }
    let granularity: Granularity = args.granularity.into();
    let start_model = with_full_masks(&input, granularity)?;
    let total = start_model.kept_relus();
    let mut budgets: Vec<usize> = args.budget.iter().map(|b| b.resolve(total)).collect();
    budgets.sort_unstable_by(|a, b| b.cmp(a));
    budgets.dedup();
    let many = budgets.len() > 1;
    let device = default_device();
    let mut teacher = Net::from_model(&input, &device)?;
    teacher.set_trainable(false, false);
    let acc_before = evaluate(&mut teacher, &splits.test);
    info!(total, ?budgets, acc_before, method = ?args.method, "linearizing");

    let mut snl_epochs = Vec::new();
    let mut lambdas = Vec::new();
    let stops: Vec<Stop> = match args.method {
        Method::Snl => {
            let net = Net::from_model(&start_model, &device)?;
            learn_masks(
                args,
                &splits,
                net,
                &mut teacher,
                &budgets,
                &mut snl_epochs,
                &mut lambdas,
            )
        }
        Method::Random | Method::Layer => budgets
            .iter()
            .map(|&budget| {
                let net = Net::from_model(&start_model, &device)?;
                let masks = net.masks();
                let selection = match args.method {
                    Method::Random => random_masks(&masks, budget, args.seed),
                    _ => layer_masks(&masks, budget),
                };
                Ok(Stop {
                    budget,
                    net,
                    selection,
                    rng: ChaCha8Rng::seed_from_u64(args.seed),
                    epochs: 0,
                    converged: true,
                    throughput: Throughput::default(),
                })
            })
            .collect::<Result<_>>()?,
    };

    for stop in stops {
        let Stop {
            budget,
            mut net,
            selection,
            mut rng,
            epochs,
            converged,
            throughput: mut tp,
        } = stop;
        net.set_trainable(true, false);
        net.set_masks(&selection);
        let acc_binarised = evaluate(&mut net, &splits.test);
        let kept = count_above(&net.masks(), 0.5);
        info!(kept, budget, acc_binarised, "masks binarised");
        if kept > budget {
            bail!("internal error: {kept} ReLUs kept for a budget of {budget}");
        }
        let (finetune, val_acc) =
            finetune(args, &splits, &mut net, &mut teacher, &mut rng, &mut tp);
        let acc_finetuned = evaluate(&mut net, &splits.test);
        let result = net.to_model();
        let out_model = if args.no_fold {
            result
        } else {
            result.fold_batchnorm()
        };
        let out = suffixed(&args.out, budget, many);
        pi_model::save(&out_model, &out).with_context(|| format!("saving {}", out.display()))?;
        info!(budget, acc_before, acc_binarised, acc_finetuned, relus = out_model.kept_relus(), out = %out.display(), "done");
        let report = LinearizeReport {
            method: args.method,
            granularity: format!("{granularity:?}").to_lowercase(),
            model: args.model.display().to_string(),
            out: out.display().to_string(),
            budget,
            relus_before: input.kept_relus(),
            relus_after: out_model.kept_relus(),
            layers: layer_relus(&input, &out_model),
            test_acc_before: acc_before,
            test_acc_binarised: acc_binarised,
            test_acc_finetuned: acc_finetuned,
            val_acc_finetuned: val_acc,
            snl_epochs: snl_epochs.iter().take(epochs).cloned().collect(),
            lambda_trajectory: lambdas.iter().take(epochs).copied().collect(),
            snl_converged: converged,
            finetune_epochs: finetune,
            train_images_per_second: tp.images as f64 / tp.seconds.max(1e-9),
            peak_memory_mib: peak_memory_mib(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let report_path = args.report.as_deref().map(|p| suffixed(p, budget, many));
        emit(&report, report_path.as_deref(), args.json)?;
    }
    Ok(())
}

/// The SNL loop over budgets sorted in decreasing order; returns where it stopped for each.
fn learn_masks(
    args: &LinearizeArgs,
    splits: &Splits,
    mut net: Net,
    teacher: &mut Net,
    budgets: &[usize],
    log: &mut Vec<SnlEpoch>,
    lambdas: &mut Vec<f64>,
) -> Vec<Stop> {
    net.set_trainable(true, true);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut tp = Throughput::default();
    let mut opt = Optimizer::new(OptimKind::adam());
    let threshold = args.threshold as f32;
    let mut lambda = args.lambda;
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
    for epoch in 0..args.max_epochs {
        if pending.peek().is_none() {
            break;
        }
        lambdas.push(lambda);
        let lr = |_: f64| args.lr;
        let plan = EpochPlan {
            data: &splits.train,
            batch: args.batch,
            loss: LossWeights {
                kd_weight: args.kd_weight,
                temperature: args.temperature,
                l1: lambda,
            },
            lr: &lr,
            label: format!("snl {}", epoch + 1),
            progress: !args.no_progress,
        };
        let stats = train_epoch(&mut net, Some(teacher), &mut opt, &plan, &mut rng);
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
        let new_minimum = (count as f64) < lowest as f64 * (1.0 - args.min_decrease);
        if !new_minimum && epoch + 1 >= args.warmup_epochs {
            lambda *= args.lambda_growth;
        }
        lowest = lowest.min(count);
    }
    let masks = net.masks();
    for b in pending {
        warn!(
            budget = b,
            max_epochs = args.max_epochs,
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
    args: &LinearizeArgs,
    splits: &Splits,
    net: &mut Net,
    teacher: &mut Net,
    rng: &mut ChaCha8Rng,
    tp: &mut Throughput,
) -> (Vec<FinetuneEpoch>, f64) {
    net.set_trainable(true, false);
    let mut opt = Optimizer::new(OptimKind::sgd(args.momentum, args.weight_decay));
    let mut best_acc = evaluate(net, &splits.val);
    let mut best = net.snapshot();
    let mut log = Vec::new();
    for epoch in 0..args.finetune_epochs {
        let lr = |p: f64| {
            args.finetune_schedule.lr(
                args.finetune_lr,
                (epoch as f64 + p) / args.finetune_epochs as f64,
            )
        };
        let plan = EpochPlan {
            data: &splits.train,
            batch: args.batch,
            loss: LossWeights {
                kd_weight: args.kd_weight,
                temperature: args.temperature,
                l1: 0.0,
            },
            lr: &lr,
            label: format!("finetune {}/{}", epoch + 1, args.finetune_epochs),
            progress: !args.no_progress,
        };
        let stats = train_epoch(net, Some(teacher), &mut opt, &plan, rng);
        tp.images += stats.images;
        tp.seconds += stats.seconds;
        let val_acc = evaluate(net, &splits.val);
        info!(
            epoch = epoch + 1,
            loss = stats.loss,
            val_acc,
            img_s = stats.images_per_second(),
            "finetune epoch"
        );
        log.push(FinetuneEpoch {
            epoch: epoch + 1,
            loss: stats.loss,
            val_acc,
            seconds: stats.seconds,
        });
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
        assert!("abc".parse::<Budget>().is_err());
        assert_eq!(Budget::Fraction(0.15).resolve(20384), 3057);
        assert_eq!(Budget::Count(30000).resolve(20384), 20384);
    }
}
