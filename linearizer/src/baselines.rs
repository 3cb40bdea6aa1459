//! Baseline ReLU selections that SNL is compared with at the same budget: random pixel masks
//! and whole-layer removal (DeepReDuce-like).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::masked_relu::MaskValues;

/// Keeps `budget` ReLUs chosen uniformly at random over all mask entries (pixel masks; with
/// channel masks whole channels are drawn until the next one would not fit).
pub fn random_masks(masks: &[MaskValues], budget: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut all: Vec<(usize, usize)> =
        masks.iter().enumerate().flat_map(|(l, m)| (0..m.values.len()).map(move |i| (l, i))).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut out: Vec<Vec<f32>> = masks.iter().map(|m| vec![0.0; m.values.len()]).collect();
    let mut used = 0;
    for (l, i) in all {
        if used + masks[l].weight <= budget {
            out[l][i] = 1.0;
            used += masks[l].weight;
        }
    }
    out
}

/// Whole-layer selection: each ReLU layer is kept entirely or linearized entirely. Among the
/// subsets of layers that fit in the budget, keeps the one with the most ReLUs; ties go to the
/// subset that removes later layers (DeepReDuce found late ReLUs the least critical). With more
/// than 20 layers the search is greedy: layers are removed from the last one backwards until the
/// rest fits.
pub fn layer_masks(masks: &[MaskValues], budget: usize) -> Vec<Vec<f32>> {
    let sizes: Vec<usize> = masks.iter().map(|m| m.values.len() * m.weight).collect();
    let n = sizes.len();
    let keep: Vec<bool> = if n <= 20 {
        let mut best: Option<(usize, u32)> = None;
        for set in 0u32..(1u32 << n) {
            let total: usize = (0..n).filter(|&l| set >> l & 1 == 1).map(|l| sizes[l]).sum();
            if total > budget {
                continue;
            }
            // Prefer more ReLUs; on ties prefer keeping earlier layers (smaller reversed mask).
            let better = match best {
                None => true,
                Some((t, s)) => total > t || (total == t && set.reverse_bits() > s.reverse_bits()),
            };
            if better {
                best = Some((total, set));
            }
        }
        let set = best.map(|b| b.1).unwrap_or(0);
        (0..n).map(|l| set >> l & 1 == 1).collect()
    } else {
        let mut keep = vec![true; n];
        let mut total: usize = sizes.iter().sum();
        for l in (0..n).rev() {
            if total <= budget {
                break;
            }
            keep[l] = false;
            total -= sizes[l];
        }
        keep
    };
    masks.iter().zip(keep).map(|(m, k)| vec![if k { 1.0 } else { 0.0 }; m.values.len()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(sizes: &[usize]) -> Vec<MaskValues> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| MaskValues { node: format!("r{i}"), values: vec![1.0; s], weight: 1 })
            .collect()
    }

    fn kept(sel: &[Vec<f32>]) -> usize {
        sel.iter().flatten().filter(|&&v| v == 1.0).count()
    }

    #[test]
    fn random_masks_hit_the_budget() {
        let m = layers(&[100, 50, 20]);
        for b in [0, 1, 37, 170, 500] {
            assert_eq!(kept(&random_masks(&m, b, 3)), b.min(170));
        }
        assert_ne!(random_masks(&m, 40, 1), random_masks(&m, 40, 2));
    }

    #[test]
    fn layer_masks_keep_whole_layers_within_budget() {
        let m = layers(&[100, 30, 30, 15]);
        let sel = layer_masks(&m, 50);
        assert_eq!(kept(&sel), 45);
        assert!(sel.iter().all(|l| l.iter().all(|&v| v == l[0])));
        // 30 fits twice: keeps the earlier of the two equal layers with the 15.
        assert_eq!(sel[1][0], 1.0);
        assert_eq!(sel[2][0], 0.0);
        assert_eq!(kept(&layer_masks(&m, 10)), 0);
        assert_eq!(kept(&layer_masks(&m, 1000)), 175);
    }
}
