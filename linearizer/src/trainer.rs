//! The training step shared by every command: loss (cross-entropy, distillation from a
//! teacher, L1 on masks), one epoch (reporting to a [`Progress`]), and evaluation.

use std::time::Instant;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};
use pi_model::data::Dataset;
use rand_chacha::ChaCha8Rng;

use crate::batches::{epoch_batches, gather, is_cifar};
use crate::executor::{Mode, Net, ParamKind, to_vec};
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

/// Re-estimates every BatchNorm's running mean and variance for the network as it is now (e.g.
/// after binarising masks): forward passes in training mode over the first `batches` shuffled
/// batches of `data`, no parameter updates, the running statistics being the cumulative average
/// of the batch statistics (the old ones are discarded). Returns the number of images used.
/// Trainability and the running-statistics momentum are restored afterwards.
pub fn recalibrate_batchnorm(
    net: &mut Net,
    data: &Dataset,
    batch: usize,
    batches: usize,
    rng: &mut ChaCha8Rng,
) -> usize {
    if batches == 0 {
        return 0;
    }
    let weights = net.params().iter().any(|p| p.kind == ParamKind::Weight && p.trainable);
    let masks = net.params().iter().any(|p| p.kind == ParamKind::Mask && p.trainable);
    let momentum = net.bn_momentum;
    net.set_trainable(false, false);
    let augment = is_cifar(data);
    let mut seen = 0;
    for (k, idx) in epoch_batches(data, batch, rng).iter().take(batches).enumerate() {
        // Batch k+1 gets weight 1/(k+1): the running value is the mean over the batches so far.
        net.bn_momentum = 1.0 / (k + 1) as f64;
        let b = gather(data, idx, augment, rng);
        let x = net.input(b.pixels, b.n, Mode::Train);
        drop(net.forward(x, Mode::Train));
        seen += b.n;
    }
    net.bn_momentum = momentum;
    net.set_trainable(weights, masks);
    seen
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

#[cfg(test)]
mod recalibration_tests {
    use super::*;
    use crate::executor::{default_device, with_full_masks};
    use pi_model::data::Normalization;
    use pi_model::{Granularity, Model, arch};
    use rand::SeedableRng;

    fn data(n: usize) -> Dataset {
        let pixels: Vec<u8> = (0..n * 28 * 28).map(|i| ((i * 37 + i / 784 * 11) % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 4) as u8).collect();
        Dataset::from_raw(&pixels, labels, [1, 28, 28], 4, Normalization::fashion_mnist()).unwrap()
    }

    /// Largest difference between eval-mode logits (running statistics) and training-mode logits
    /// (statistics of this very batch) on the whole of `data`.
    fn eval_train_gap(net: &mut Net, data: &Dataset) -> f32 {
        let eval = to_vec(&net.forward(net.input(data.images.clone(), data.n, Mode::Eval), Mode::Eval));
        let momentum = net.bn_momentum;
        net.bn_momentum = 0.0; // leaves the running statistics as they are
        let train = to_vec(&net.forward(net.input(data.images.clone(), data.n, Mode::Train), Mode::Train));
        net.bn_momentum = momentum;
        eval.iter().zip(&train).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// With running statistics far from the data's, eval and training mode disagree; after
    /// recalibrating on one batch holding the whole data set, the running statistics are that
    /// batch's statistics, so the two modes agree (up to the unbiased-variance factor).
    #[test]
    fn recalibration_sets_running_stats_to_the_batch_statistics() {
        let data = data(24);
        let mut model =
            with_full_masks(&Model::random(arch::build("small-cnn", 4).unwrap(), 5, None).unwrap(), Granularity::Pixel)
                .unwrap();
        for (name, t) in model.tensors.iter_mut() {
            if name.ends_with(".running_mean") {
                t.fill(3.0);
            } else if name.ends_with(".running_var") {
                t.fill(9.0);
            }
        }
        let mut net = Net::from_model(&model, &default_device()).unwrap();
        net.set_trainable(true, false);
        let before = eval_train_gap(&mut net, &data);
        assert!(before > 0.1, "stale statistics should change the logits: {before}");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(recalibrate_batchnorm(&mut net, &data, data.n, 5, &mut rng), data.n);
        let after = eval_train_gap(&mut net, &data);
        assert!(
            after < before / 100.0,
            "recalibrated eval logits differ from batch-statistics logits by {after} (before: {before})"
        );
        // Nothing else changed: trainability and momentum restored, weights untouched.
        assert_eq!(net.bn_momentum, 0.1);
        assert!(net.params().iter().all(|p| p.trainable == (p.kind == ParamKind::Weight)));
        let weights = |n: &Net| n.params().iter().flat_map(|p| to_vec(&p.value)).collect::<Vec<_>>();
        let fresh = Net::from_model(&model, &default_device()).unwrap();
        assert_eq!(weights(&net), weights(&fresh));
        // 0 batches: a no-op.
        assert_eq!(recalibrate_batchnorm(&mut net, &data, 8, 0, &mut rng), 0);
    }

    /// Several batches: the running statistics are the batches' average, not the last batch's.
    #[test]
    fn recalibration_averages_over_batches() {
        let data = data(32);
        let model =
            with_full_masks(&Model::random(arch::build("small-cnn", 4).unwrap(), 6, None).unwrap(), Granularity::Pixel)
                .unwrap();
        let stats = |net: &Net| net.to_model().tensors["bn1.running_mean"].iter().copied().collect::<Vec<f32>>();
        let mut whole = Net::from_model(&model, &default_device()).unwrap();
        recalibrate_batchnorm(&mut whole, &data, 32, 1, &mut ChaCha8Rng::seed_from_u64(2));
        let mut halves = Net::from_model(&model, &default_device()).unwrap();
        recalibrate_batchnorm(&mut halves, &data, 16, 2, &mut ChaCha8Rng::seed_from_u64(2));
        let mut last = Net::from_model(&model, &default_device()).unwrap();
        recalibrate_batchnorm(&mut last, &data, 16, 1, &mut ChaCha8Rng::seed_from_u64(2));
        let (w, h, l) = (stats(&whole), stats(&halves), stats(&last));
        // The first BatchNorm's input does not depend on earlier statistics: the mean over two
        // equal halves is the mean over the whole.
        for (a, b) in w.iter().zip(&h) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert!(w.iter().zip(&l).any(|(a, b)| (a - b).abs() > 1e-3), "one half alone differs");
    }
}
