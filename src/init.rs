//! `pi init`: random networks of the built-in architectures.

use anyhow::{Context, bail};
use pi_model::{Model, arch, format};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InitArgs {
    /// Architecture: small-cnn (1x28x28, default), resnet18 (CIFAR, 491,520 ReLUs) or wrn22-8 (1,359,872 ReLUs).
    #[arg(long, default_value = "small-cnn")]
    arch: String,
    /// Number of output classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Seed of the weights and masks (the same seed gives the same file).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep this fraction of each layer's ReLUs (random positions); the rest become identities.
    #[arg(long, value_name = "FRACTION")]
    mask_keep: Option<f64>,
    /// Output model file (.safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: &InitArgs) -> anyhow::Result<()> {
    if let Some(k) = a.mask_keep
        && !(0.0..=1.0).contains(&k)
    {
        bail!("--mask-keep must be a fraction in [0, 1], got {k}");
    }
    let graph = arch::build(&a.arch, a.classes)?;
    let model = Model::random(graph, a.seed, a.mask_keep)?;
    format::save(&model, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let counts = model.relu_counts();
    let total: usize = counts.iter().map(|c| c.total).sum();
    eprintln!(
        "wrote {} ({}: {} of {} ReLUs kept, {} parameters)",
        a.out.display(),
        a.arch,
        model.kept_relus(),
        total,
        model.parameter_count()
    );
    Ok(())
}
