//! The SNL activation `y = a*relu(x) + (1-a)*x` and the mask arithmetic around it: counting
//! masks above a threshold and binarising to an exact ReLU budget.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use pi_model::Granularity;

/// Applies the masked ReLU to a batch `[N, C, H, W]`; `mask` is the flat mask (`C*H*W` values
/// for pixel masks, `C` for channel masks).
///
/// Written as `x + a*relu(-x)`, which equals `a*relu(x) + (1-a)*x` with one multiply fewer.
pub fn masked_relu(x: Tensor<4>, mask: Tensor<1>, granularity: Granularity) -> Tensor<4> {
    let [_, c, h, w] = x.dims();
    let a: Tensor<4> = match granularity {
        Granularity::Pixel => mask.reshape([1, c, h, w]),
        Granularity::Channel => mask.reshape([1, c, 1, 1]),
    };
    x.clone() + relu(x.neg()) * a
}

/// One ReLU node's mask as host values with the number of activation elements each value governs
/// (1 for pixel masks, `H*W` for channel masks).
#[derive(Clone, Debug)]
pub struct MaskValues {
    pub node: String,
    pub values: Vec<f32>,
    pub weight: usize,
}

/// ReLUs kept when every mask value `> threshold` counts as a ReLU (SNL's count).
pub fn count_above(masks: &[MaskValues], threshold: f32) -> usize {
    masks.iter().map(|m| m.values.iter().filter(|&&v| v > threshold).count() * m.weight).sum()
}

/// Binarises the masks: a value becomes 1 when it is above `threshold` and among the largest
/// values that fit in `budget` ReLUs, else 0. The kept ReLU count is `<= budget` exactly.
///
/// Values are taken in decreasing order (ties broken by position, so the result is
/// deterministic); a channel mask that would overflow the budget is skipped and smaller ones
/// may still fit.
pub fn binarise(masks: &[MaskValues], threshold: f32, budget: usize) -> Vec<Vec<f32>> {
    let mut order: Vec<(usize, usize)> = Vec::new();
    for (l, m) in masks.iter().enumerate() {
        for (i, &v) in m.values.iter().enumerate() {
            if v > threshold {
                order.push((l, i));
            }
        }
    }
    order.sort_by(|&(la, ia), &(lb, ib)| {
        masks[lb].values[ib].total_cmp(&masks[la].values[ia]).then((la, ia).cmp(&(lb, ib)))
    });
    let mut out: Vec<Vec<f32>> = masks.iter().map(|m| vec![0.0; m.values.len()]).collect();
    let mut used = 0usize;
    for (l, i) in order {
        let w = masks[l].weight;
        if used + w <= budget {
            out[l][i] = 1.0;
            used += w;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn masked_relu_interpolates_between_relu_and_identity() {
        let dev = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![-2.0f32, 3.0, -1.0, 0.5], [1, 1, 2, 2]), &dev);
        let m = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 1.0, 0.0, 0.5], [4]), &dev);
        let y: Vec<f32> = masked_relu(x, m, Granularity::Pixel).into_data().try_to_vec().unwrap();
        assert_eq!(y, vec![0.0, 3.0, -1.0, 0.5]);
        let x = Tensor::<4>::from_data(TensorData::new(vec![-2.0f32, 3.0, -1.0, -0.5], [1, 2, 1, 2]), &dev);
        let m = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 0.5], [2]), &dev);
        let y: Vec<f32> = masked_relu(x, m, Granularity::Channel).into_data().try_to_vec().unwrap();
        assert_eq!(y, vec![-2.0, 3.0, -0.5, -0.25]);
    }

    #[test]
    fn binarise_respects_the_budget_exactly() {
        let masks = vec![
            MaskValues { node: "a".into(), values: vec![0.9, 0.005, 0.5, 0.7, 0.3], weight: 1 },
            MaskValues { node: "b".into(), values: vec![0.8, 0.6], weight: 3 },
        ];
        assert_eq!(count_above(&masks, 0.01), 4 + 6);
        for budget in 0..12 {
            let b = binarise(&masks, 0.01, budget);
            let kept: usize =
                b.iter().zip(&masks).map(|(v, m)| v.iter().filter(|&&x| x == 1.0).count() * m.weight).sum();
            assert!(kept <= budget, "budget {budget}: kept {kept}");
            assert!(b.iter().flatten().all(|&x| x == 0.0 || x == 1.0));
            // Below threshold never survives.
            assert_eq!(b[0][1], 0.0);
        }
        // Budget 2: the two largest pixel values fit (0.9 and 0.7); the channel mask 0.8 needs 3.
        let b = binarise(&masks, 0.01, 2);
        assert_eq!(b[0], vec![1.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(b[1], vec![0.0, 0.0]);
        // A large budget keeps everything above threshold.
        let b = binarise(&masks, 0.01, 100);
        assert_eq!(b[0], vec![1.0, 0.0, 1.0, 1.0, 1.0]);
        assert_eq!(b[1], vec![1.0, 1.0]);
    }
}
