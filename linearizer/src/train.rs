//! `train`: baseline training of an architecture from `pi_model::arch` (SGD with momentum and
//! weight decay, cosine or step schedule), keeping the checkpoint with the best validation accuracy.

use std::path::PathBuf;
use std::time::Instant;

use pi_model::{Model, arch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::info;

use crate::batches::load_splits;
use crate::error::{LinearizeError, Result};
use crate::executor::{Net, default_device};
use crate::optim::{OptimKind, Optimizer, Schedule};
use crate::progress::Progress;
use crate::report::{peak_memory_mib, write_report};
use crate::trainer::{EpochPlan, LossWeights, evaluate, train_epoch};

/// What `train` does: the architecture (or a starting model), the data, SGD's settings and
/// where the best checkpoint goes. [`TrainConfig::new`] gives the defaults of `pi train`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Architecture defined in `pi_model::arch` (small-cnn, resnet18, wrn22-8); ignored with `init`.
    pub arch: String,
    /// Dataset directory (IDX or CIFAR binary); `None`: the system Fashion-MNIST if installed,
    /// else the bundled subset.
    pub data: Option<PathBuf>,
    /// Start from this model file instead of random weights.
    pub init: Option<PathBuf>,
    /// Output model file (.safetensors).
    pub out: PathBuf,
    /// Passes over the training data.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch: usize,
    /// Base learning rate of SGD.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// L2 weight decay (never applied to ReLU masks).
    pub weight_decay: f64,
    /// Learning-rate schedule over the run.
    pub schedule: Schedule,
    /// Training images held out to choose the best epoch (the test split is only reported).
    pub val_size: usize,
    /// Train on only this many images (quick experiments).
    pub train_limit: Option<usize>,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Write the inference form (BatchNorm folded); unfolded files can be trained further by
    /// `linearize` with batch statistics.
    pub fold: bool,
    /// Also write the JSON report to this file.
    pub report: Option<PathBuf>,
}

impl TrainConfig {
    /// The defaults of `pi train`, writing to `out`: small-cnn, 10 epochs of SGD (batch 64,
    /// lr 0.05 with a cosine schedule, momentum 0.9, weight decay 5e-4), 5000 validation images,
    /// seed 0, BatchNorm kept unfolded, no report file.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        TrainConfig {
            arch: "small-cnn".into(),
            data: None,
            init: None,
            out: out.into(),
            epochs: 10,
            batch: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            val_size: 5000,
            train_limit: None,
            seed: 0,
            fold: false,
            report: None,
        }
    }
}

/// One epoch in the training report.
#[derive(Debug, Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_acc: f64,
    pub val_acc: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// JSON report of `train`.
#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub arch: String,
    pub data: String,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    pub relus: usize,
    pub parameters: usize,
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_acc: f64,
    pub test_acc: f64,
    pub train_images_per_second: f64,
    pub peak_memory_mib: Option<f64>,
    pub seconds: f64,
    pub out: String,
}

/// Trains a network (see [`TrainConfig`]), saves the checkpoint with the best validation
/// accuracy to `out`, writes the report file when asked, and returns the report.
pub fn train(config: &TrainConfig, progress: &mut dyn Progress) -> Result<TrainReport> {
    let started = Instant::now();
    let dir = config.data.clone().unwrap_or_else(pi_model::data::default_fashion_mnist_dir);
    let init = match &config.init {
        Some(p) => Some(pi_model::load(p).map_err(|source| LinearizeError::LoadModel { path: p.clone(), source })?),
        None => None,
    };
    // A model to continue keeps its normalisation; a new one records the data's.
    let splits =
        load_splits(&dir, init.as_ref().map(|m| &m.normalization), config.val_size, config.train_limit, config.seed)?;
    let model = match init {
        Some(m) => m,
        None => Model {
            normalization: splits.train.normalization.clone(),
            ..Model::random(arch::build(&config.arch, splits.train.classes)?, config.seed, None)?
        },
    };
    if model.graph.input_shape != splits.train.shape.to_vec() {
        return Err(LinearizeError::InputShape {
            arch: model.graph.arch.clone(),
            model: model.graph.input_shape.clone(),
            data: splits.train.shape.to_vec(),
        });
    }
    if model.graph.classes != splits.train.classes {
        return Err(LinearizeError::ClassCount { model: model.graph.classes, data: splits.train.classes });
    }
    info!(arch = %model.graph.arch, train = splits.train.n, val = splits.val.n, test = splits.test.n, "training");
    let device = default_device();
    let mut net = Net::from_model(&model, &device)?;
    let mut opt = Optimizer::new(OptimKind::sgd(config.momentum, config.weight_decay));
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut best: Option<(usize, f64, Net)> = None;
    let mut records = Vec::new();
    let (mut images, mut seconds) = (0usize, 0.0f64);
    for epoch in 0..config.epochs {
        let lr_at = |p: f64| config.schedule.lr(config.lr, (epoch as f64 + p) / config.epochs as f64);
        let plan = EpochPlan {
            data: &splits.train,
            batch: config.batch,
            loss: LossWeights::ce(),
            lr: &lr_at,
            label: format!("epoch {}/{}", epoch + 1, config.epochs),
        };
        let stats = train_epoch(&mut net, None, &mut opt, &plan, &mut rng, progress);
        images += stats.images;
        seconds += stats.seconds;
        let val_acc = evaluate(&mut net, &splits.val);
        info!(
            epoch = epoch + 1,
            loss = stats.loss,
            train_acc = stats.train_acc,
            val_acc,
            img_s = stats.images_per_second(),
            "epoch done"
        );
        records.push(EpochRecord {
            epoch: epoch + 1,
            lr: lr_at(0.0),
            loss: stats.loss,
            train_acc: stats.train_acc,
            val_acc,
            seconds: stats.seconds,
            images_per_second: stats.images_per_second(),
        });
        if best.as_ref().is_none_or(|b| val_acc > b.1) {
            best = Some((epoch + 1, val_acc, net.snapshot()));
        }
    }
    let (best_epoch, best_val_acc) = match &best {
        Some((e, a, b)) => {
            net.load_state(b);
            (*e, *a)
        }
        None => (0, evaluate(&mut net, &splits.val)),
    };
    let test_acc = evaluate(&mut net, &splits.test);
    let trained = net.to_model();
    let out_model = if config.fold { trained.fold_batchnorm() } else { trained };
    pi_model::save(&out_model, &config.out)
        .map_err(|source| LinearizeError::SaveModel { path: config.out.clone(), source })?;
    info!(best_epoch, best_val_acc, test_acc, out = %config.out.display(), "saved");
    let report = TrainReport {
        arch: out_model.graph.arch.clone(),
        data: dir.display().to_string(),
        train_images: splits.train.n,
        val_images: splits.val.n,
        test_images: splits.test.n,
        relus: out_model.kept_relus(),
        parameters: out_model.parameter_count(),
        epochs: records,
        best_epoch,
        best_val_acc,
        test_acc,
        train_images_per_second: images as f64 / seconds.max(1e-9),
        peak_memory_mib: peak_memory_mib(),
        seconds: started.elapsed().as_secs_f64(),
        out: config.out.display().to_string(),
    };
    if let Some(path) = &config.report {
        write_report(&report, path)?;
    }
    Ok(report)
}
