//! Logits as `.npy` files: float32, `[images, classes]`, C order, so that `numpy.load` (or
//! `torch.from_numpy(numpy.load(...))`) reads them in one line.

use anyhow::{Context, ensure};
use ndarray::Array2;
use ndarray_npy::WriteNpyExt;
use std::io::BufWriter;
use std::path::Path;

/// Writes one row of logits per image; every row must have the same length.
pub fn write_logits(path: &Path, rows: &[Vec<f32>]) -> anyhow::Result<()> {
    let classes = rows.first().map_or(0, Vec::len);
    ensure!(rows.iter().all(|r| r.len() == classes), "logit rows of different lengths");
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let array = Array2::from_shape_vec((rows.len(), classes), flat).context("logits array")?;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    array.write_npy(BufWriter::new(file)).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
