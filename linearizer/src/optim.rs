//! SGD with momentum and Adam over the executor's parameters, and the learning-rate schedules.
//! Written on plain tensors so masks and weights can be treated differently (no weight decay on
//! masks) without going through burn's module machinery.

use burn::tensor::Gradients;
use burn::tensor::Tensor;

use crate::executor::{Net, ParamKind};

/// Which optimiser, with its constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimKind {
    /// PyTorch-style SGD: `buf = momentum*buf + (g + wd*w)`, `w -= lr*buf`.
    Sgd { momentum: f64, weight_decay: f64 },
    /// Adam with bias correction (Kingma & Ba), L2 weight decay added to the gradient.
    Adam { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimKind {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        OptimKind::Sgd { momentum, weight_decay }
    }
    pub fn adam() -> Self {
        OptimKind::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Optimiser state (one or two moment tensors per parameter).
pub struct Optimizer {
    kind: OptimKind,
    first: Vec<Option<Tensor<1>>>,
    second: Vec<Option<Tensor<1>>>,
    steps: i32,
}

impl Optimizer {
    pub fn new(kind: OptimKind) -> Self {
        Optimizer { kind, first: Vec::new(), second: Vec::new(), steps: 0 }
    }

    /// Applies one update with learning rate `lr` to every trainable parameter with a gradient.
    pub fn step(&mut self, net: &mut Net, grads: &Gradients, lr: f64) {
        let n = net.params().len();
        self.first.resize(n, None);
        self.second.resize(n, None);
        self.steps += 1;
        for (i, p) in net.params_mut().iter_mut().enumerate() {
            if !p.trainable {
                continue;
            }
            let Some(g) = p.value.grad(grads) else {
                continue;
            };
            let w = p.value.clone().without_autodiff();
            let decay = |wd: f64| if p.kind == ParamKind::Mask { 0.0 } else { wd };
            let new = match self.kind {
                OptimKind::Sgd { momentum, weight_decay } => {
                    let wd = decay(weight_decay);
                    let g = if wd > 0.0 { g + w.clone().mul_scalar(wd) } else { g };
                    let buf = match self.first[i].take() {
                        Some(b) => b.mul_scalar(momentum) + g,
                        None => g,
                    };
                    let out = w - buf.clone().mul_scalar(lr);
                    self.first[i] = Some(buf);
                    out
                }
                OptimKind::Adam { beta1, beta2, eps, weight_decay } => {
                    let wd = decay(weight_decay);
                    let g = if wd > 0.0 { g + w.clone().mul_scalar(wd) } else { g };
                    let m = match self.first[i].take() {
                        Some(m) => m.mul_scalar(beta1) + g.clone().mul_scalar(1.0 - beta1),
                        None => g.clone().mul_scalar(1.0 - beta1),
                    };
                    let v = match self.second[i].take() {
                        Some(v) => v.mul_scalar(beta2) + g.square().mul_scalar(1.0 - beta2),
                        None => g.square().mul_scalar(1.0 - beta2),
                    };
                    let c1 = 1.0 - beta1.powi(self.steps);
                    let c2 = 1.0 - beta2.powi(self.steps);
                    let update = m.clone().div_scalar(c1) / v.clone().div_scalar(c2).sqrt().add_scalar(eps);
                    self.first[i] = Some(m);
                    self.second[i] = Some(v);
                    w - update.mul_scalar(lr)
                }
            };
            p.value = new.autodiff().require_grad();
        }
    }
}

/// Learning-rate schedule over a run of `epochs` epochs, evaluated per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half-cosine from the base rate to 0.
    Cosine,
    /// Multiply by 0.1 at 50% and 75% of the run.
    Step,
    /// Constant.
    Constant,
}

impl Schedule {
    /// Learning rate at `progress` in [0, 1) of the run.
    pub fn lr(self, base: f64, progress: f64) -> f64 {
        match self {
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Schedule::Step => {
                if progress >= 0.75 {
                    base * 0.01
                } else if progress >= 0.5 {
                    base * 0.1
                } else {
                    base
                }
            }
            Schedule::Constant => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Cosine.lr(0.1, 0.0), 0.1);
        assert!((Schedule::Cosine.lr(0.1, 0.5) - 0.05).abs() < 1e-12);
        assert_eq!(Schedule::Step.lr(1.0, 0.6), 0.1);
        assert_eq!(Schedule::Step.lr(1.0, 0.8), 0.01);
        assert_eq!(Schedule::Constant.lr(0.3, 0.9), 0.3);
    }
}
