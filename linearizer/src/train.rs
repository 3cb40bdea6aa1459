//! `train`: baseline training of an architecture from `pi_model::arch` (SGD with momentum and
//! weight decay, cosine or step schedule), keeping the checkpoint with the best validation accuracy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use pi_model::{Model, arch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tracing::info;

use crate::batches::load_splits;
use crate::executor::{Net, default_device};
use crate::optim::{OptimKind, Optimizer, Schedule};
use crate::report::{emit, peak_memory_mib};
use crate::trainer::{EpochPlan, LossWeights, evaluate, train_epoch};

/// Train a network (all ReLUs kept) on an image dataset and save the best checkpoint.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Architecture, as defined once in pi-model: small-cnn (1x28x28), resnet18, wrn22-8 (3x32x32).
    #[arg(long, default_value = "small-cnn")]
    pub arch: String,
    /// Dataset directory: IDX files (MNIST / Fashion-MNIST, gzip or raw) or the CIFAR-10/100 binary
    /// format. Default: /usr/share/datasets/fashion-mnist if installed, else the bundled subset.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Start from this model file instead of random weights (same architecture).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Output model file (.safetensors, the project's model format).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training data.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Base learning rate of SGD.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay (not applied to ReLU masks).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    /// Learning-rate schedule over the run.
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Training images held out to choose the best epoch (the test split is only reported).
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Use only this many training images (quick experiments).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save the inference form (BatchNorm folded into the convolutions). By default the
    /// checkpoint keeps BatchNorm so `linearize` can keep training with batch statistics; the
    /// runtime folds on load either way.
    #[arg(long)]
    pub fold: bool,
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

/// Runs `train` (see [`TrainArgs`]).
pub fn train(args: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    let dir = args
        .data
        .clone()
        .unwrap_or_else(pi_model::data::default_fashion_mnist_dir);
    let splits = load_splits(&dir, args.val_size, args.train_limit, args.seed)?;
    let model = match &args.init {
        Some(p) => pi_model::load(p).with_context(|| format!("loading {}", p.display()))?,
        None => Model::random(
            arch::build(&args.arch, splits.train.classes)?,
            args.seed,
            None,
        )?,
    };
    if model.graph.input_shape != splits.train.shape.to_vec() {
        bail!(
            "{} expects {:?} inputs, the dataset has {:?}",
            model.graph.arch,
            model.graph.input_shape,
            splits.train.shape
        );
    }
    if model.graph.classes != splits.train.classes {
        bail!(
            "the model has {} classes, the dataset {}",
            model.graph.classes,
            splits.train.classes
        );
    }
    info!(arch = %model.graph.arch, train = splits.train.n, val = splits.val.n, test = splits.test.n, "training");
    let device = default_device();
    let mut net = Net::from_model(&model, &device)?;
    let mut opt = Optimizer::new(OptimKind::sgd(args.momentum, args.weight_decay));
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut best: Option<(usize, f64, Net)> = None;
    let mut records = Vec::new();
    let (mut images, mut seconds) = (0usize, 0.0f64);
    for epoch in 0..args.epochs {
        let lr_at = |p: f64| {
            args.schedule
                .lr(args.lr, (epoch as f64 + p) / args.epochs as f64)
        };
        let plan = EpochPlan {
            data: &splits.train,
            batch: args.batch,
            loss: LossWeights::ce(),
            lr: &lr_at,
            label: format!("epoch {}/{}", epoch + 1, args.epochs),
            progress: !args.no_progress,
        };
        let stats = train_epoch(&mut net, None, &mut opt, &plan, &mut rng);
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
    let out_model = if args.fold {
        trained.fold_batchnorm()
    } else {
        trained
    };
    pi_model::save(&out_model, &args.out)
        .with_context(|| format!("saving {}", args.out.display()))?;
    info!(best_epoch, best_val_acc, test_acc, out = %args.out.display(), "saved");
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
        out: args.out.display().to_string(),
    };
    emit(&report, args.report.as_deref(), args.json)
}
