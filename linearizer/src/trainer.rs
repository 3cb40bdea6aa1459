//! The training step shared by every command: loss (cross-entropy, distillation from a
//! teacher, L1 on masks), one epoch (reporting to a [`Progress`]), and evaluation.

use std::time::Instant;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};
use pi_model::data::Dataset;
use rand_chacha::ChaCha8Rng;

use crate::batches::{epoch_batches, gather, is_cifar};
use crate::executor::{Mode, Net, to_vec};
use crate::optim::Optimizer;
use crate::progress::Progress;

/// Weights of the loss terms: `CE + kd_weight * T^2 * KL(teacher_T || student_T) + l1 * sum|a|`.
#[derive(Clone, Copy, Debug)]
pub struct LossWeights {
    pub kd_weight: f64,
    pub temperature: f64,
    pub l1: f64,
}

impl LossWeights {
    /// Plain cross-entropy.
    pub fn ce() -> Self {
        LossWeights { kd_weight: 0.0, temperature: 1.0, l1: 0.0 }
    }
}

/// Mean cross-entropy of `logits` against `labels`.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u8]) -> Tensor<1> {
    let [n, k] = logits.dims();
    let mut onehot = vec![0.0f32; n * k];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * k + l as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &logits.device());
    (log_softmax(logits, 1) * onehot).sum().neg().div_scalar(n as f64)
}

/// Hinton distillation: `T^2 * KL(softmax(teacher/T) || softmax(student/T))`, batch mean.
pub fn distillation(student: Tensor<2>, teacher: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [n, _] = student.dims();
    let t = teacher.div_scalar(temperature);
    let p = softmax(t.clone(), 1);
    let log_p = log_softmax(t, 1);
    let log_q = log_softmax(student.div_scalar(temperature), 1);
    (p * (log_p - log_q)).sum().mul_scalar(temperature * temperature / n as f64)
}

/// Figures of one training epoch.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EpochStats {
    pub loss: f64,
    pub train_acc: f64,
    pub images: usize,
    pub seconds: f64,
}

impl EpochStats {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// What one epoch needs besides the network.
pub struct EpochPlan<'a> {
    pub data: &'a Dataset,
    pub batch: usize,
    pub loss: LossWeights,
    /// Learning rate as a function of progress through this epoch, in [0, 1).
    pub lr: &'a dyn Fn(f64) -> f64,
    /// Name of the epoch for progress reports.
    pub label: String,
}

/// Fraction of correct argmax predictions.
fn correct(logits: &[f32], labels: &[u8]) -> usize {
    let k = logits.len() / labels.len().max(1);
    labels
        .iter()
        .enumerate()
        .filter(|(i, l)| pi_model::engine::argmax(&logits[i * k..(i + 1) * k]) == **l as usize)
        .count()
}

/// Trains `net` for one epoch; `teacher` (eval mode) supplies distillation targets.
pub fn train_epoch(
    net: &mut Net,
    mut teacher: Option<&mut Net>,
    opt: &mut Optimizer,
    plan: &EpochPlan,
    rng: &mut ChaCha8Rng,
    progress: &mut dyn Progress,
) -> EpochStats {
    let augment = is_cifar(plan.data);
    let batches = epoch_batches(plan.data, plan.batch, rng);
    progress.start(&plan.label, batches.len());
    let start = Instant::now();
    let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
    for (s, idx) in batches.iter().enumerate() {
        let b = gather(plan.data, idx, augment, rng);
        let teacher_logits = match (&mut teacher, plan.loss.kd_weight > 0.0) {
            (Some(t), true) => {
                let x = t.input(b.pixels.clone(), b.n, Mode::Eval);
                Some(t.forward(x, Mode::Eval))
            }
            _ => None,
        };
        let x = net.input(b.pixels, b.n, Mode::Train);
        let logits = net.forward(x, Mode::Train);
        hits += correct(&to_vec(&logits), &b.labels);
        let mut loss = cross_entropy(logits.clone(), &b.labels);
        if let Some(t) = teacher_logits {
            loss = loss + distillation(logits, t, plan.loss.temperature).mul_scalar(plan.loss.kd_weight);
        }
        if plan.loss.l1 > 0.0 {
            loss = loss + net.mask_l1().mul_scalar(plan.loss.l1);
        }
        let value = to_vec(&loss)[0] as f64;
        let grads = loss.backward();
        opt.step(net, &grads, (plan.lr)(s as f64 / batches.len() as f64));
        loss_sum += value * b.n as f64;
        seen += b.n;
        progress.batch(s, loss_sum / seen as f64, hits as f64 / seen as f64);
    }
    progress.finish();
    EpochStats {
        loss: loss_sum / seen.max(1) as f64,
        train_acc: hits as f64 / seen.max(1) as f64,
        images: seen,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Accuracy of `net` in eval mode (running BatchNorm statistics) on `data`.
pub fn evaluate(net: &mut Net, data: &Dataset) -> f64 {
    let len = data.image_len();
    let mut hits = 0;
    for start in (0..data.n).step_by(500) {
        let end = (start + 500).min(data.n);
        let pixels = data.images[start * len..end * len].to_vec();
        let x = net.input(pixels, end - start, Mode::Eval);
        let logits = to_vec(&net.forward(x, Mode::Eval));
        hits += correct(&logits, &data.labels[start..end]);
    }
    hits as f64 / data.n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn losses_match_hand_computation() {
        let dev = Device::flex();
        let logits = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5, 0.0], [2, 2]), &dev);
        let ce = to_vec(&cross_entropy(logits.clone(), &[1, 0]))[0] as f64;
        let l0 = (1.0f64.exp() + 2.0f64.exp()).ln() - 2.0;
        let l1 = (0.5f64.exp() + 1.0).ln() - 0.5;
        assert!((ce - (l0 + l1) / 2.0).abs() < 1e-5, "{ce}");
        // Distillation from itself is zero, from a different teacher positive.
        assert!(to_vec(&distillation(logits.clone(), logits.clone(), 4.0))[0].abs() < 1e-6);
        let other = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, -2.0, 0.0, 1.0], [2, 2]), &dev);
        assert!(to_vec(&distillation(logits, other, 4.0))[0] > 1e-3);
    }
}

#[cfg(test)]
mod training_tests {
    use super::*;
    use crate::executor::{Net, default_device, with_full_masks};
    use crate::optim::OptimKind;
    use crate::progress::NoProgress;
    use pi_model::data::Normalization;
    use pi_model::{Granularity, Model, arch};
    use rand::SeedableRng;

    fn tiny() -> Dataset {
        let n = 32;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let k = i % 4;
            labels.push(k as u8);
            for r in 0..28 {
                for c in 0..28 {
                    pixels.push(if r / 7 == k { 220 } else { ((r * 7 + c * 13 + i) % 50) as u8 });
                }
            }
        }
        Dataset::from_raw(&pixels, labels, [1, 28, 28], 4, Normalization::fashion_mnist()).unwrap()
    }

    /// The SNL loss moves the masks: their L1 norm shrinks while the task loss is trained.
    #[test]
    fn snl_steps_shrink_mask_l1_and_fit_the_data() {
        let data = tiny();
        let model =
            with_full_masks(&Model::random(arch::build("small-cnn", 4).unwrap(), 1, None).unwrap(), Granularity::Pixel)
                .unwrap();
        let dev = default_device();
        let mut teacher = Net::from_model(&model, &dev).unwrap();
        teacher.set_trainable(false, false);
        let mut net = Net::from_model(&model, &dev).unwrap();
        net.set_trainable(true, true);
        let l1 = |n: &Net| n.masks().iter().flat_map(|m| m.values.iter()).map(|v| v.abs() as f64).sum::<f64>();
        let before = l1(&net);
        let mut opt = Optimizer::new(OptimKind::adam());
        let lr = |_: f64| 1e-2;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut losses = Vec::new();
        for _ in 0..6 {
            let plan = EpochPlan {
                data: &data,
                batch: 16,
                loss: LossWeights { kd_weight: 1.0, temperature: 4.0, l1: 1e-4 },
                lr: &lr,
                label: String::new(),
            };
            let stats = train_epoch(&mut net, Some(&mut teacher), &mut opt, &plan, &mut rng, &mut NoProgress);
            losses.push(stats.loss);
        }
        let after = l1(&net);
        assert!(after < before * 0.95, "mask L1 {before} -> {after}");
        assert!(losses[5] < losses[0], "loss {losses:?}");
        // The teacher never changes.
        let t_masks = teacher.masks();
        assert!(t_masks.iter().all(|m| m.values.iter().all(|&v| v == 1.0)));
    }
}
