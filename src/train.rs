//! `pi train`, `pi linearize` and `pi import`: the command-line flags of the linearizer's
//! commands, mapped onto `pi_linearizer`'s configs; progress bars and `--json` output live here.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use pi_linearizer::{
    Budget, ImportConfig, LinearizeConfig, Method, NoProgress, Progress, Schedule, TrainConfig, WithoutMasks,
};
use pi_model::Granularity;
use pi_model::data::{NORMALIZATION_PRESETS, Normalization};
use serde::Serialize;

/// Learning-rate schedule flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// Half-cosine from the base rate to 0.
    Cosine,
    /// Multiply by 0.1 at 50% and 75% of the run.
    Step,
    /// Constant.
    Constant,
}

impl From<ScheduleArg> for Schedule {
    fn from(s: ScheduleArg) -> Self {
        match s {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::Step => Schedule::Step,
            ScheduleArg::Constant => Schedule::Constant,
        }
    }
}

/// How the surviving ReLUs are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// Learned masks (SNL).
    Snl,
    /// Uniformly random ReLUs (baseline).
    Random,
    /// Whole ReLU layers kept or removed (DeepReDuce-like baseline).
    Layer,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Snl => Method::Snl,
            MethodArg::Random => Method::Random,
            MethodArg::Layer => Method::Layer,
        }
    }
}

/// Mask granularity flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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

/// Train a network (all ReLUs kept) on an image dataset and save the best checkpoint.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// Architecture, as defined once in pi-model: small-cnn (1x28x28), resnet18, wrn22-8 (3x32x32).
    #[arg(long, default_value = "small-cnn")]
    arch: String,
    /// Dataset directory: IDX files (MNIST / Fashion-MNIST, gzip or raw) or the CIFAR-10/100 binary
    /// format. Default: /usr/share/datasets/fashion-mnist if installed, else the bundled subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Start from this model file instead of random weights (same architecture).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Output model file (.safetensors, the project's model format).
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training data.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Base learning rate of SGD.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay (not applied to ReLU masks).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Learning-rate schedule over the run.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    schedule: ScheduleArg,
    /// Training images held out to choose the best epoch (the test split is only reported).
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    /// Use only this many training images (quick experiments).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save the inference form (BatchNorm folded into the convolutions). By default the
    /// checkpoint keeps BatchNorm so `linearize` can keep training with batch statistics; the
    /// runtime folds on load either way.
    #[arg(long)]
    fold: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
}

impl TrainArgs {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            arch: self.arch.clone(),
            data: self.data.clone(),
            init: self.init.clone(),
            out: self.out.clone(),
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule.into(),
            val_size: self.val_size,
            train_limit: self.train_limit,
            seed: self.seed,
            fold: self.fold,
            report: self.report.clone(),
        }
    }
}

/// Linearize a trained network to a ReLU budget (SNL or a baseline), finetune it, export it.
#[derive(clap::Args, Clone, Debug)]
pub struct LinearizeArgs {
    /// Trained model file (from `train` or `import`); it is also the distillation teacher.
    #[arg(long)]
    model: PathBuf,
    /// Dataset directory (IDX or CIFAR binary). Default: the system Fashion-MNIST if installed,
    /// else the bundled subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// ReLUs to keep: a count (e.g. 3000) or a fraction of all ReLUs (e.g. 0.15). The exported
    /// model has at most this many ReLUs, exactly. Several budgets (`4000,2000,1000`) share one
    /// mask-learning run: SNL passes the larger budgets on its way to the smaller ones, and each
    /// is taken at the epoch where a run with that budget alone would stop; every budget is then
    /// finetuned and written separately (`OUT` and `--report` get a `-{budget}` suffix).
    #[arg(long, value_delimiter = ',', required = true)]
    budget: Vec<Budget>,
    /// Output model file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// How surviving ReLUs are chosen: snl (learned), random, layer (whole layers).
    #[arg(long, value_enum, default_value_t = MethodArg::Snl)]
    method: MethodArg,
    /// Mask per activation element (pixel) or per channel.
    #[arg(long, value_enum, default_value_t = GranularityArg::Pixel)]
    granularity: GranularityArg,
    /// Initial weight of the L1 penalty on the masks (sum of |a| over all masks). SNL used 1e-5
    /// for ResNet-18 with up to 2000 epochs; 5e-4 reaches small-cnn budgets in a few epochs.
    #[arg(long, default_value_t = 5e-4)]
    lambda: f64,
    /// Factor applied to lambda after an epoch whose mask count is not a new minimum.
    #[arg(long, default_value_t = 1.1)]
    lambda_growth: f64,
    /// A count is a new minimum only when it is at least this fraction below the previous
    /// minimum (0 = SNL's rule: any decrease). Makes lambda grow when progress becomes slow.
    #[arg(long, default_value_t = 0.0)]
    min_decrease: f64,
    /// Lambda may grow after this epoch at the earliest (SNL's code: after the 6th). Adam moves a
    /// mask by at most about --lr per step, so the count cannot fall before ~1/lr steps.
    #[arg(long, default_value_t = 6)]
    warmup_epochs: usize,
    /// Upper bound on mask-learning epochs (binarisation to the budget happens regardless).
    #[arg(long, default_value_t = 40)]
    max_epochs: usize,
    /// Adam learning rate for weights and masks during mask learning.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// A mask counts as a ReLU when its value is above this threshold.
    #[arg(long, default_value_t = 0.01)]
    threshold: f64,
    /// Distillation temperature.
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    /// Weight of the distillation term (mask learning and finetuning).
    #[arg(long, default_value_t = 1.0)]
    kd_weight: f64,
    /// Finetuning epochs after binarisation (SGD with momentum, with distillation).
    #[arg(long, default_value_t = 5)]
    finetune_epochs: usize,
    /// Base learning rate of the finetuning SGD.
    #[arg(long, default_value_t = 0.01)]
    finetune_lr: f64,
    /// Finetuning learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Cosine)]
    finetune_schedule: ScheduleArg,
    /// SGD momentum for finetuning.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay for finetuning (never on masks).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Training images held out to choose the best finetuning epoch.
    #[arg(long, default_value_t = 5000)]
    val_size: usize,
    /// Use only this many training images (quick experiments).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Seed of shuffling, augmentation and the random baseline.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed of the validation split and of the --train-limit subset (default: --seed). Fix it
    /// (e.g. 0, the teacher's) to compare seeds on the same images.
    #[arg(long)]
    split_seed: Option<u64>,
    /// Re-estimate BatchNorm running statistics over this many training batches after the masks
    /// are binarised (or chosen by a baseline), before finetuning; 0 = off. The report gives the
    /// test accuracy before and after (test_acc_binarised, test_acc_recalibrated).
    #[arg(long, default_value_t = 50)]
    recalibrate_batches: usize,
    /// Keep BatchNorm unfolded in the exported file (default: folded inference form).
    #[arg(long)]
    no_fold: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    json: bool,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
}

impl LinearizeArgs {
    fn config(&self) -> LinearizeConfig {
        LinearizeConfig {
            model: self.model.clone(),
            data: self.data.clone(),
            budgets: self.budget.clone(),
            out: self.out.clone(),
            method: self.method.into(),
            granularity: self.granularity.into(),
            lambda: self.lambda,
            lambda_growth: self.lambda_growth,
            min_decrease: self.min_decrease,
            warmup_epochs: self.warmup_epochs,
            max_epochs: self.max_epochs,
            lr: self.lr,
            threshold: self.threshold,
            temperature: self.temperature,
            kd_weight: self.kd_weight,
            finetune_epochs: self.finetune_epochs,
            finetune_lr: self.finetune_lr,
            finetune_schedule: self.finetune_schedule.into(),
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            batch: self.batch,
            val_size: self.val_size,
            train_limit: self.train_limit,
            seed: self.seed,
            split_seed: self.split_seed,
            recalibrate_batches: self.recalibrate_batches,
            fold: !self.no_fold,
            report: self.report.clone(),
        }
    }
}

/// Convert a PyTorch checkpoint of a CIFAR ResNet-18 or WRN-22-8 into the model format.
#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// Architecture of the checkpoint: resnet18 (SNL's ResNet18_IN, no stem ReLU) or wrn22-8.
    #[arg(long)]
    arch: String,
    /// Checkpoint: .pt/.pth/.pth.tar (torch.save of a state_dict, or a dict holding one under
    /// `state_dict`; a DataParallel `module.` prefix is removed) or .safetensors.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output model file (.safetensors, the project's model format).
    #[arg(long)]
    out: PathBuf,
    /// Number of classes (default: read from the classifier weight).
    #[arg(long)]
    classes: Option<usize>,
    /// SNL alphas above this value become ReLUs (mask 1), the others identities (mask 0).
    #[arg(long, default_value_t = 0.01)]
    threshold: f32,
    /// Fold BatchNorm into the convolutions in the written file (the runtime folds on load
    /// anyway; unfolded files can be trained further with `linearize`).
    #[arg(long)]
    fold: bool,
    /// Write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Import a checkpoint without SNL alphas with every ReLU kept (refused otherwise: missing
    /// alphas are more often a naming mistake than an intent).
    #[arg(long)]
    all_relus: bool,
    /// Rename a checkpoint name prefix before matching, whole dotted components: `fc=linear` for a
    /// ResNet-18 whose classifier is called `fc`. Repeatable.
    #[arg(long, value_name = "FROM=TO", value_parser = parse_rename)]
    rename: Vec<(String, String)>,
    /// The input normalisation the checkpoint was trained with (snl-cifar10, snl-cifar100,
    /// cifar10, cifar100, fashion-mnist, mnist, unit), stored in the model so that it computes
    /// here what it computed in PyTorch. Default: the SNL reference code's own constants for the
    /// dataset the class count names (snl-cifar10 for 10 classes, snl-cifar100 for 100).
    /// `cifar10`/`cifar100` are the datasets' exact statistics (torchvision tutorials' values).
    #[arg(long, value_name = "PRESET", value_parser = parse_preset, conflicts_with_all = ["mean", "std"])]
    normalization: Option<Normalization>,
    /// Per-channel means of `transforms.Normalize(mean, std)`, comma-separated (with --std).
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', requires = "std")]
    mean: Vec<f32>,
    /// Per-channel standard deviations, comma-separated (with --mean).
    #[arg(long, value_name = "A,B,C", value_delimiter = ',', requires = "mean")]
    std: Vec<f32>,
    /// Print the JSON report on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_preset(s: &str) -> Result<Normalization, String> {
    Normalization::preset(s)
        .ok_or_else(|| format!("unknown normalisation {s:?} (known: {})", NORMALIZATION_PRESETS.join(", ")))
}

fn parse_rename(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok((from.to_string(), to.to_string())),
        _ => Err(format!("expected FROM=TO (e.g. fc=linear), got {s:?}")),
    }
}

impl ImportArgs {
    fn config(&self) -> ImportConfig {
        ImportConfig {
            arch: self.arch.clone(),
            checkpoint: self.checkpoint.clone(),
            out: self.out.clone(),
            classes: self.classes,
            threshold: self.threshold,
            fold: self.fold,
            report: self.report.clone(),
            without_masks: if self.all_relus { WithoutMasks::KeepAllRelus } else { WithoutMasks::Refuse },
            normalization: if self.mean.is_empty() {
                self.normalization.clone()
            } else {
                Some(Normalization { mean: self.mean.clone(), std: self.std.clone() })
            },
            renames: self.rename.clone(),
        }
    }
}

/// Progress bars on stderr, one per epoch (indicatif hides them when stderr is not a terminal).
#[derive(Default)]
struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn start(&mut self, label: &str, batches: usize) {
        let pb = ProgressBar::new(batches as u64);
        pb.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        self.bar = Some(pb);
    }

    fn batch(&mut self, step: usize, loss: f64, accuracy: f64) {
        if let Some(pb) = &self.bar {
            pb.inc(1);
            if step.is_multiple_of(10) {
                pb.set_message(format!("loss {loss:.4} acc {accuracy:.3}"));
            }
        }
    }

    fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

/// Progress bars unless `--no-progress`.
fn progress(no_progress: bool) -> Box<dyn Progress> {
    if no_progress { Box::new(NoProgress) } else { Box::new(Bars::default()) }
}

/// `--json`: the report on stdout, as pretty JSON (the same text as the report file).
fn print_json<T: Serialize>(report: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

/// `pi train`.
pub fn train(a: &TrainArgs) -> anyhow::Result<()> {
    let report = pi_linearizer::train(&a.config(), progress(a.no_progress).as_mut())?;
    if a.json {
        print_json(&report)?;
    }
    Ok(())
}

/// `pi linearize`: one report per budget (largest first) with `--json`.
pub fn linearize(a: &LinearizeArgs) -> anyhow::Result<()> {
    let reports = pi_linearizer::linearize(&a.config(), progress(a.no_progress).as_mut())?;
    if a.json {
        for report in &reports {
            print_json(report)?;
        }
    }
    Ok(())
}

/// `pi import`.
pub fn import(a: &ImportArgs) -> anyhow::Result<()> {
    let report = pi_linearizer::import(&a.config())?;
    if a.json {
        print_json(&report)?;
    }
    Ok(())
}

/// Formats `pi export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// The public SNL code's state dict (ResNet-18 `ResNet_IN`, WRN-22-8) as .safetensors:
    /// `safetensors.torch.load_file` then `load_state_dict(strict=True)`.
    Snl,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Model file (.safetensors) of resnet18 or wrn22-8, BatchNorm kept or folded (a folded model
    /// is written with each BatchNorm as the identity-scale layer that carries the folded bias:
    /// the same function, and trainable again).
    model: PathBuf,
    /// Target format.
    #[arg(long, value_enum, default_value = "snl")]
    format: ExportFormat,
    /// Output file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Print the JSON report on stdout.
    #[arg(long)]
    json: bool,
}

/// `pi export`.
pub fn export(a: &ExportArgs) -> anyhow::Result<()> {
    let report = match a.format {
        ExportFormat::Snl => pi_linearizer::export_snl(&a.model, &a.out)?,
    };
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "wrote {} ({} entries, BatchNorm {}, {} of {} ReLUs kept)",
            report.out, report.tensors, report.batchnorm, report.relus_kept, report.relus_total
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }

    fn parse<T: clap::Args>(flags: &[&str]) -> T {
        Cli::<T>::try_parse_from(std::iter::once("pi").chain(flags.iter().copied())).unwrap().args
    }

    /// The flags' defaults are the library's (`pi_linearizer::*Config::new`).
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let t: TrainArgs = parse(&["--out", "m.safetensors"]);
        assert_eq!(t.config(), TrainConfig::new("m.safetensors"));
        let l: LinearizeArgs = parse(&["--model", "m.safetensors", "--out", "l.safetensors", "--budget", "3000"]);
        assert_eq!(l.config(), LinearizeConfig::new("m.safetensors", "l.safetensors", vec![Budget::Count(3000)]));
        let i: ImportArgs = parse(&["--arch", "resnet18", "--checkpoint", "c.pt", "--out", "r.safetensors"]);
        assert_eq!(i.config(), ImportConfig::new("resnet18", "c.pt", "r.safetensors"));
    }

    #[test]
    fn flags_map_onto_the_configs() {
        let l: LinearizeArgs = parse(&[
            "--model",
            "m",
            "--out",
            "o",
            "--budget",
            "4000,0.15",
            "--method",
            "layer",
            "--granularity",
            "channel",
            "--finetune-schedule",
            "step",
            "--no-fold",
            "--split-seed",
            "0",
            "--recalibrate-batches",
            "0",
            "--report",
            "r.json",
        ]);
        let c = l.config();
        assert_eq!(c.budgets, [Budget::Count(4000), Budget::Fraction(0.15)]);
        assert_eq!(c.method, Method::Layer);
        assert_eq!(c.granularity, Granularity::Channel);
        assert_eq!(c.finetune_schedule, Schedule::Step);
        assert!(!c.fold);
        assert_eq!((c.split_seed, c.recalibrate_batches), (Some(0), 0));
        assert_eq!(c.report, Some(PathBuf::from("r.json")));
        let t: TrainArgs = parse(&["--out", "o", "--schedule", "constant", "--fold", "--train-limit", "100"]);
        let c = t.config();
        assert_eq!((c.schedule, c.fold, c.train_limit), (Schedule::Constant, true, Some(100)));
        let bad = Cli::<LinearizeArgs>::try_parse_from(["pi", "--model", "m", "--out", "o", "--budget", "1.5"]);
        let err = bad.err().unwrap().to_string();
        assert!(err.contains("is neither a ReLU count nor a fraction in [0, 1)"), "{err}");
    }
}
