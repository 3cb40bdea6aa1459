//! `pi eval`: plaintext accuracy with the f32 or the fixed-point reference engine.

use anyhow::Context;
use pi_model::data;
use pi_model::engine::{RingModel, argmax, run_f32};
use pi_model::{FixedPoint, format};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model file (.safetensors).
    file: PathBuf,
    /// Test images, as `pi infer --data` takes them: a dataset directory (its test split: IDX files
    /// for MNIST/Fashion-MNIST, or CIFAR binary batches), a CIFAR `.bin` batch, or an IDX images file
    /// with its labels file beside it; default: the full Fashion-MNIST when installed, else the
    /// bundled subset.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate only the first N test images.
    #[arg(long)]
    count: Option<usize>,
    /// Use the fixed-point engine (what private inference computes) instead of f32.
    #[arg(long)]
    fixed_point: bool,
    /// Ring width l of the fixed-point engine.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Fractional bits f of the fixed-point engine.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.f)]
    frac_bits: u32,
    /// Also write every image's logits to FILE.npy (float32, [images, classes], from the engine in
    /// use), for numpy: `numpy.load(FILE)`.
    #[arg(long, value_name = "FILE.npy")]
    logits: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: &EvalArgs) -> anyhow::Result<()> {
    let model = format::load(&a.file).with_context(|| format!("loading {}", a.file.display()))?.fold_batchnorm();
    let dir = a.data.clone().unwrap_or_else(data::default_fashion_mnist_dir);
    let mut ds = pi_client::load_images(&dir, Some(&model.normalization))?;
    if let Some(n) = a.count {
        ds = ds.take(n);
    }
    anyhow::ensure!(
        ds.shape.to_vec() == model.graph.input_shape,
        "dataset images are {:?}, the model expects {:?}",
        ds.shape,
        model.graph.input_shape
    );
    let classes = model.graph.classes;
    anyhow::ensure!(
        classes == ds.classes,
        "the model has {classes} outputs, the data {} classes ({})",
        ds.classes,
        dir.display()
    );
    let fp = FixedPoint { l: a.ring_bits, f: a.frac_bits };
    let ring = if a.fixed_point { Some(RingModel::new(&model, fp)?) } else { None };
    let start = std::time::Instant::now();
    let mut correct = 0;
    let mut all_logits = Vec::with_capacity(if a.logits.is_some() { ds.len() } else { 0 });
    for i in 0..ds.len() {
        let x = ds.image(i);
        let logits = match &ring {
            Some(r) => r.decode_output(&r.run(x)?),
            None => run_f32(&model, x)?,
        };
        correct += (argmax(&logits) == ds.label(i) as usize) as usize;
        if a.logits.is_some() {
            all_logits.push(logits);
        }
    }
    if let Some(path) = &a.logits {
        crate::npy::write_logits(path, &all_logits)?;
    }
    let acc = correct as f64 / ds.len().max(1) as f64;
    let engine = if a.fixed_point { format!("fixed-point l={} f={}", fp.l, fp.f) } else { "f32".into() };
    if a.json {
        let v = serde_json::json!({"images": ds.len(), "correct": correct, "accuracy": acc, "engine": engine,
            "seconds": start.elapsed().as_secs_f64()});
        println!("{v}");
    } else {
        println!(
            "{engine}: {correct}/{} correct, accuracy {:.2}% ({:.1}s)",
            ds.len(),
            100.0 * acc,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
