//! Mini-batches from an in-memory `pi_model::data::Dataset`: shuffling, the validation split,
//! and CIFAR augmentation (random crop with 4-pixel zero padding and horizontal flip).

use std::path::Path;

use pi_model::data::{Dataset, Normalization, Split, load_dir_with};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{LinearizeError, Result};

/// One batch on the host: pixels `n*C*H*W` and labels.
pub struct Batch {
    pub pixels: Vec<f32>,
    pub labels: Vec<u8>,
    pub n: usize,
}

/// Training data, validation data (held out from the training split) and the test split.
pub struct Splits {
    pub train: Dataset,
    pub val: Dataset,
    pub test: Dataset,
}

/// Loads `dir` normalised as `normalization` (`None`: the data format's default), holds out
/// `val_size` training images (the last ones of a fixed shuffle) for validation, and optionally
/// keeps only the first `train_limit` of the rest.
pub fn load_splits(
    dir: &Path,
    normalization: Option<&Normalization>,
    val_size: usize,
    train_limit: Option<usize>,
    seed: u64,
) -> Result<Splits> {
    let load = |split, name| {
        load_dir_with(dir, split, normalization.cloned()).map_err(|source| LinearizeError::Dataset {
            split: name,
            dir: dir.to_path_buf(),
            source,
        })
    };
    let full = load(Split::Train, "training")?;
    let test = load(Split::Test, "test")?;
    let val_size = val_size.min(full.n / 5);
    let mut idx: Vec<usize> = (0..full.n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed));
    let (train_idx, val_idx) = idx.split_at(full.n - val_size);
    let mut train_idx = train_idx.to_vec();
    if let Some(limit) = train_limit {
        train_idx.truncate(limit.max(1));
    }
    Ok(Splits { train: full.subset(&train_idx), val: full.subset(val_idx), test })
}

/// True for 3x32x32 datasets (CIFAR), the only ones that get crop + flip augmentation.
pub fn is_cifar(ds: &Dataset) -> bool {
    ds.shape == [3, 32, 32]
}

/// Shuffled training batches of one epoch (the last, partial batch is dropped when it has
/// fewer than 2 images, which BatchNorm cannot normalise).
pub fn epoch_batches(ds: &Dataset, batch: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..ds.n).collect();
    idx.shuffle(rng);
    idx.chunks(batch.max(1)).filter(|c| c.len() >= 2).map(|c| c.to_vec()).collect()
}

/// Gathers the images `indices` into a batch, augmenting when asked.
pub fn gather(ds: &Dataset, indices: &[usize], augment: bool, rng: &mut ChaCha8Rng) -> Batch {
    let len = ds.image_len();
    let mut pixels = Vec::with_capacity(indices.len() * len);
    for &i in indices {
        let img = ds.image(i);
        if augment {
            crop_flip(img, ds.shape, rng, &mut pixels);
        } else {
            pixels.extend_from_slice(img);
        }
    }
    Batch { pixels, labels: indices.iter().map(|&i| ds.label(i)).collect(), n: indices.len() }
}

/// Random 4-pixel-padded crop and horizontal flip; the padding is zero in normalised space.
fn crop_flip(img: &[f32], [c, h, w]: [usize; 3], rng: &mut ChaCha8Rng, out: &mut Vec<f32>) {
    let dy = rng.random_range(0..=8) as isize - 4;
    let dx = rng.random_range(0..=8) as isize - 4;
    let flip = rng.random_bool(0.5);
    for ch in 0..c {
        for y in 0..h as isize {
            for x in 0..w as isize {
                let sx = if flip { w as isize - 1 - x } else { x } + dx;
                let sy = y + dy;
                let v = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                    0.0
                } else {
                    img[ch * h * w + sy as usize * w + sx as usize]
                };
                out.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_flip_keeps_shape_and_moves_pixels() {
        let img: Vec<f32> = (0..3 * 32 * 32).map(|i| i as f32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut changed = false;
        for _ in 0..5 {
            let mut out = Vec::new();
            crop_flip(&img, [3, 32, 32], &mut rng, &mut out);
            assert_eq!(out.len(), img.len());
            changed |= out != img;
        }
        assert!(changed);
    }
}
