//! One generic burn executor for any `pi_model` graph: it holds the parameters as burn tensors,
//! runs the graph forward in training mode (BatchNorm on batch statistics, running statistics
//! updated, autodiff recorded) or in eval mode, and converts to and from `pi_model::Model`.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, batch_norm, batch_norm_train, conv2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions};
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{ArrayD, IxDyn};
use pi_model::data::Normalization;
use pi_model::graph::{INPUT, param_shapes};
use pi_model::{Granularity, Model, Op, ValidGraph};

use crate::error::{LinearizeError, Result};
use crate::masked_relu::{MaskValues, masked_relu};

/// What a parameter is, which decides how optimisers treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Convolution / linear weights and biases, BatchNorm scale and shift.
    Weight,
    /// A ReLU mask (`a` of SNL); never weight-decayed.
    Mask,
}

/// A parameter stored flat (rank 1) and reshaped where it is used, so every parameter has the
/// same tensor type whatever its rank.
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    /// Flat values; an autodiff leaf that requires grad when `trainable`.
    pub value: Tensor<1>,
    pub trainable: bool,
}

/// Training (batch statistics, autodiff) or evaluation (running statistics, no autodiff).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// An activation: feature map `[N, C, H, W]` or flat `[N, F]`.
#[derive(Clone)]
enum Act {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

/// A trainable network built from a graph, on a CPU (flex) device with autodiff.
pub struct Net {
    pub graph: ValidGraph,
    params: Vec<Param>,
    index: HashMap<String, usize>,
    /// BatchNorm running mean and variance by node name (plain tensors, not trained).
    stats: HashMap<String, (Tensor<1>, Tensor<1>)>,
    /// For each node, the index of the last node that reads it (activations are freed there).
    last_use: Vec<usize>,
    /// ReLU nodes whose masks are all ones and frozen: evaluated as a plain ReLU.
    plain_relu: HashMap<String, bool>,
    device: Device,
    /// The model's input normalisation, kept for [`Net::to_model`].
    pub normalization: Normalization,
    /// BatchNorm running-statistics momentum (PyTorch convention: weight of the new batch).
    pub bn_momentum: f64,
}

/// The device everything runs on: the pure-Rust CPU backend with autodiff.
pub fn default_device() -> Device {
    Device::flex().autodiff()
}

fn to_flat(device: &Device, values: Vec<f32>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Host copy of a tensor's values.
pub fn to_vec<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().expect("f32 tensor")
}

impl Net {
    /// Builds the executor from a model (folded or not); every tensor the graph needs must be present.
    pub fn from_model(model: &Model, device: &Device) -> Result<Net> {
        let graph = model.graph.clone();
        let expected = graph.expected_tensors();
        let mut params = Vec::new();
        let mut running: HashMap<String, Tensor<1>> = HashMap::new();
        for node in &graph.nodes {
            for (p, shape) in param_shapes(node, graph.input_shape_of(node)) {
                let name = format!("{}.{p}", node.name);
                let Some(t) = model.tensors.get(&name) else {
                    return Err(LinearizeError::MissingTensor(name));
                };
                if t.shape() != expected[&name].as_slice() {
                    return Err(LinearizeError::TensorShape {
                        got: t.shape().to_vec(),
                        expected: expected[&name].clone(),
                        name,
                    });
                }
                let values: Vec<f32> = t.iter().copied().collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(LinearizeError::NonFinite(name));
                }
                if p == "running_mean" || p == "running_var" {
                    running.insert(name, to_flat(&device.clone().inner(), values));
                    continue;
                }
                let kind = if p == "mask" { ParamKind::Mask } else { ParamKind::Weight };
                params.push(Param { name, shape, kind, value: to_flat(device, values), trainable: false });
            }
        }
        let mut stats = HashMap::new();
        for node in graph.nodes.iter().filter(|n| matches!(n.op, Op::Batchnorm { .. })) {
            let mut take = |p: &str| running.remove(&format!("{}.{p}", node.name)).expect("validated above");
            let mean = take("running_mean");
            stats.insert(node.name.clone(), (mean, take("running_var")));
        }
        let index = params.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        let node_index = graph.index();
        let mut last_use = vec![0; graph.nodes.len()];
        for (j, n) in graph.nodes.iter().enumerate() {
            for i in &n.inputs {
                if let Some(&p) = node_index.get(i.as_str()) {
                    last_use[p] = j;
                }
            }
        }
        let mut net = Net {
            graph,
            params,
            index,
            stats,
            last_use,
            plain_relu: HashMap::new(),
            device: device.clone(),
            normalization: model.normalization.clone(),
            bn_momentum: 0.1,
        };
        net.set_trainable(true, false);
        Ok(net)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Chooses which parameters train: weights (incl. BatchNorm affine) and/or masks.
    pub fn set_trainable(&mut self, weights: bool, masks: bool) {
        for p in &mut self.params {
            let t = match p.kind {
                ParamKind::Weight => weights,
                ParamKind::Mask => masks,
            };
            p.trainable = t;
            let inner = p.value.clone().without_autodiff();
            p.value = if t { inner.autodiff().require_grad() } else { inner.autodiff() };
        }
        self.refresh_plain_relu();
    }

    fn refresh_plain_relu(&mut self) {
        let mut plain = HashMap::new();
        for node in &self.graph.nodes {
            if let Op::Relu { .. } = node.op {
                let p = &self.params[self.index[&format!("{}.mask", node.name)]];
                let ones = !p.trainable && to_vec(&p.value).iter().all(|&v| v == 1.0);
                plain.insert(node.name.clone(), ones);
            }
        }
        self.plain_relu = plain;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut [Param] {
        &mut self.params
    }

    /// Current masks of all ReLU nodes (host copies), in graph order.
    pub fn masks(&self) -> Vec<MaskValues> {
        self.graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Relu { granularity } => {
                    let values = to_vec(&self.params[self.index[&format!("{}.mask", n.name)]].value);
                    let weight = match granularity {
                        Granularity::Pixel => 1,
                        Granularity::Channel => self.graph.input_shape_of(n)[1..].iter().product(),
                    };
                    Some(MaskValues { node: n.name.clone(), values, weight })
                }
                _ => None,
            })
            .collect()
    }

    /// Replaces the masks (same order as [`Net::masks`]); they keep their trainability.
    pub fn set_masks(&mut self, masks: &[Vec<f32>]) {
        let relus: Vec<String> =
            self.graph.nodes.iter().filter(|n| matches!(n.op, Op::Relu { .. })).map(|n| n.name.clone()).collect();
        assert_eq!(relus.len(), masks.len(), "one mask per ReLU node");
        for (name, values) in relus.iter().zip(masks) {
            let i = self.index[&format!("{name}.mask")];
            assert_eq!(values.len(), self.params[i].value.dims()[0], "mask length of {name}");
            let t = to_flat(&self.device, values.clone());
            self.params[i].value = if self.params[i].trainable { t.require_grad() } else { t };
        }
        self.refresh_plain_relu();
    }

    /// The L1 term of SNL: sum of |a| over all masks, each weighted by the number of ReLUs it
    /// governs (1 for a pixel mask, `H*W` for a channel mask), so lambda means the same per ReLU
    /// at both granularities. A graph-connected scalar.
    pub fn mask_l1(&self) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for node in &self.graph.nodes {
            let Op::Relu { granularity } = node.op else {
                continue;
            };
            let p = &self.params[self.index[&format!("{}.mask", node.name)]];
            let mut s = p.value.clone().abs().sum();
            if granularity == Granularity::Channel {
                let per: usize = self.graph.input_shape_of(node)[1..].iter().product();
                s = s.mul_scalar(per as f64);
            }
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros([1], &self.device))
    }

    fn param(&self, name: &str, mode: Mode) -> Tensor<1> {
        let v = self.params[self.index[name]].value.clone();
        match mode {
            Mode::Train => v,
            Mode::Eval => v.without_autodiff(),
        }
    }

    fn opt_param(&self, name: &str, mode: Mode) -> Option<Tensor<1>> {
        self.index.contains_key(name).then(|| self.param(name, mode))
    }

    /// Makes an input batch `[N, C, H, W]` from host pixels on the right device for `mode`.
    pub fn input(&self, pixels: Vec<f32>, n: usize, mode: Mode) -> Tensor<4> {
        let [c, h, w] = [self.graph.input_shape[0], self.graph.input_shape[1], self.graph.input_shape[2]];
        let dev = match mode {
            Mode::Train => self.device.clone(),
            Mode::Eval => self.device.clone().inner(),
        };
        Tensor::from_data(TensorData::new(pixels, [n, c, h, w]), &dev)
    }

    /// Runs the graph on a batch and returns the logits `[N, classes]`. In [`Mode::Train`] the
    /// BatchNorm running statistics are updated.
    pub fn forward(&mut self, x: Tensor<4>, mode: Mode) -> Tensor<2> {
        let nodes = self.graph.nodes.clone();
        let node_index = self.graph.index();
        let mut acts: Vec<Option<Act>> = vec![None; nodes.len()];
        for (i, node) in nodes.iter().enumerate() {
            let get = |acts: &Vec<Option<Act>>, name: &str| -> Act {
                if name == INPUT {
                    Act::Map(x.clone())
                } else {
                    acts[node_index[name]].clone().expect("activation alive")
                }
            };
            let map = |a: Act| match a {
                Act::Map(t) => t,
                Act::Flat(_) => panic!("node {} needs a feature map", node.name),
            };
            let a = get(&acts, &node.inputs[0]);
            let w = |p: &str| format!("{}.{p}", node.name);
            let out = match &node.op {
                Op::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
                    let weight =
                        self.param(&w("weight"), mode).reshape([*out_channels, *in_channels, *kernel, *kernel]);
                    let bias = self.opt_param(&w("bias"), mode);
                    Act::Map(conv2d(map(a), weight, bias, ConvOptions::new([*stride; 2], [*padding; 2], [1, 1], 1)))
                }
                Op::Batchnorm { eps, .. } => {
                    let gamma = self.param(&w("weight"), mode);
                    let beta = self.param(&w("bias"), mode);
                    let xin = map(a);
                    match mode {
                        Mode::Train => {
                            let [n, _, h, wd] = xin.dims();
                            let out = batch_norm_train(xin, gamma, beta, *eps as f64);
                            let count = (n * h * wd) as f64;
                            let unbias = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
                            let m = self.bn_momentum;
                            let (rm, rv) = self.stats.get_mut(&node.name).expect("bn stats");
                            *rm = rm.clone().mul_scalar(1.0 - m) + out.mean.without_autodiff().mul_scalar(m);
                            *rv =
                                rv.clone().mul_scalar(1.0 - m) + out.variance.without_autodiff().mul_scalar(m * unbias);
                            Act::Map(out.output)
                        }
                        Mode::Eval => {
                            let (rm, rv) = self.stats[&node.name].clone();
                            Act::Map(batch_norm(xin, gamma, beta, rm, rv, *eps as f64))
                        }
                    }
                }
                Op::Linear { in_features, out_features, .. } => {
                    let x2 = match a {
                        Act::Flat(t) => t,
                        Act::Map(t) => {
                            let [n, c, h, wd] = t.dims();
                            t.reshape([n, c * h * wd])
                        }
                    };
                    let weight = self.param(&w("weight"), mode).reshape([*out_features, *in_features]);
                    let mut y = x2.matmul(weight.transpose());
                    if let Some(b) = self.opt_param(&w("bias"), mode) {
                        y = y + b.reshape([1, *out_features]);
                    }
                    Act::Flat(y)
                }
                Op::Relu { granularity } => {
                    let xin = map(a);
                    if self.plain_relu.get(&node.name).copied().unwrap_or(false) {
                        Act::Map(relu(xin))
                    } else {
                        Act::Map(masked_relu(xin, self.param(&w("mask"), mode), *granularity))
                    }
                }
                Op::Add => match (a, get(&acts, &node.inputs[1])) {
                    (Act::Map(p), Act::Map(q)) => Act::Map(p + q),
                    (Act::Flat(p), Act::Flat(q)) => Act::Flat(p + q),
                    _ => panic!("node {}: adds a feature map and a flat vector", node.name),
                },
                Op::AvgPool { kernel, stride } => {
                    Act::Map(avg_pool2d(map(a), AvgPoolOptions::new([*kernel; 2]).with_stride([*stride; 2])))
                }
                Op::GlobalAvgPool => {
                    let t = map(a);
                    let [n, c, _, _] = t.dims();
                    Act::Flat(t.mean_dim(3).mean_dim(2).reshape([n, c]))
                }
                Op::Flatten => {
                    let t = map(a);
                    let [n, c, h, wd] = t.dims();
                    Act::Flat(t.reshape([n, c * h * wd]))
                }
            };
            acts[i] = Some(out);
            for inp in &node.inputs {
                if let Some(&p) = node_index.get(inp.as_str())
                    && self.last_use[p] == i
                {
                    acts[p] = None;
                }
            }
        }
        match acts.pop().flatten() {
            Some(Act::Flat(t)) => t,
            _ => panic!("graph output is not a flat vector"),
        }
    }

    /// The model with the current parameters, BatchNorm unfolded (masks as they are).
    pub fn to_model(&self) -> Model {
        let mut tensors = BTreeMap::new();
        for p in &self.params {
            let arr = ArrayD::from_shape_vec(IxDyn(&p.shape), to_vec(&p.value)).expect("shape");
            tensors.insert(p.name.clone(), arr);
        }
        for (node, (m, v)) in &self.stats {
            let c = m.dims()[0];
            tensors
                .insert(format!("{node}.running_mean"), ArrayD::from_shape_vec(IxDyn(&[c]), to_vec(m)).expect("shape"));
            tensors
                .insert(format!("{node}.running_var"), ArrayD::from_shape_vec(IxDyn(&[c]), to_vec(v)).expect("shape"));
        }
        Model { graph: self.graph.clone(), tensors, normalization: self.normalization.clone() }
    }

    /// Copies parameters and statistics from another executor of the same graph (best-checkpoint restore).
    pub fn load_state(&mut self, other: &Net) {
        for (p, q) in self.params.iter_mut().zip(&other.params) {
            let inner = q.value.clone().without_autodiff();
            p.value = if p.trainable { inner.autodiff().require_grad() } else { inner.autodiff() };
        }
        self.stats = other.stats.clone();
        self.refresh_plain_relu();
    }

    /// A detached copy (same parameters and statistics, independent of this one's autodiff graph).
    pub fn snapshot(&self) -> Net {
        let params = self
            .params
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                shape: p.shape.clone(),
                kind: p.kind,
                value: p.value.clone().without_autodiff().autodiff(),
                trainable: false,
            })
            .collect();
        Net {
            graph: self.graph.clone(),
            params,
            index: self.index.clone(),
            stats: self.stats.clone(),
            last_use: self.last_use.clone(),
            plain_relu: self.plain_relu.clone(),
            device: self.device.clone(),
            normalization: self.normalization.clone(),
            bn_momentum: self.bn_momentum,
        }
    }
}

/// Rewrites every ReLU of `model` to `granularity` with all masks set to 1 (SNL's start).
pub fn with_full_masks(model: &Model, granularity: Granularity) -> Result<Model> {
    let mut m = model.clone();
    let mut graph = model.graph.graph().clone();
    for node in &mut graph.nodes {
        if let Op::Relu { granularity: g } = &mut node.op {
            *g = granularity;
        }
    }
    m.graph = graph.validate()?;
    let expected = m.graph.expected_tensors();
    for (name, shape) in &expected {
        if name.ends_with(".mask") {
            m.tensors.insert(name.clone(), ArrayD::ones(IxDyn(shape)));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pi_model::arch;
    use pi_model::engine::float::run_f32;
    use rand::{Rng, SeedableRng};

    fn random_input(n: usize, len: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Eval mode with running statistics must compute what the runtime's f32 engine computes on
    /// the folded export, masks included.
    #[test]
    fn eval_matches_run_f32_on_the_folded_model() {
        for (arch, classes) in [("small-cnn", 10), ("small-cnn", 3)] {
            let graph = arch::build(arch, classes).unwrap();
            let model = Model::random(graph, 7, Some(0.5)).unwrap();
            let dev = default_device();
            let mut net = Net::from_model(&model, &dev).unwrap();
            let len: usize = model.graph.input_shape.iter().product();
            let n = 3;
            let pixels = random_input(n, len, 1);
            let logits = to_vec(&net.forward(net.input(pixels.clone(), n, Mode::Eval), Mode::Eval));
            let folded = net.to_model().fold_batchnorm();
            for i in 0..n {
                let reference = run_f32(&folded, &pixels[i * len..(i + 1) * len]).unwrap();
                for (a, b) in logits[i * classes..(i + 1) * classes].iter().zip(&reference) {
                    assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{arch}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn channel_masks_and_round_trip() {
        let graph = arch::build("small-cnn", 10).unwrap();
        let model = with_full_masks(&Model::random(graph, 3, None).unwrap(), Granularity::Channel).unwrap();
        let dev = default_device();
        let mut net = Net::from_model(&model, &dev).unwrap();
        let masks = net.masks();
        assert_eq!(masks[0].values.len(), 16);
        assert_eq!(masks[0].weight, 28 * 28);
        let zeroed: Vec<Vec<f32>> =
            masks.iter().map(|m| m.values.iter().enumerate().map(|(i, _)| (i % 2) as f32).collect()).collect();
        net.set_masks(&zeroed);
        let back = net.to_model();
        assert_eq!(back.tensors.keys().collect::<Vec<_>>(), model.tensors.keys().collect::<Vec<_>>());
        let folded = back.fold_batchnorm();
        let len = 28 * 28;
        let pixels = random_input(2, len, 5);
        let logits = to_vec(&net.forward(net.input(pixels.clone(), 2, Mode::Eval), Mode::Eval));
        let reference = run_f32(&folded, &pixels[len..]).unwrap();
        for (a, b) in logits[10..].iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// With all masks at 1 the L1 term equals the ReLU count at either granularity.
    #[test]
    fn mask_l1_counts_relus_at_both_granularities() {
        let model = Model::random(arch::build("small-cnn", 10).unwrap(), 3, None).unwrap();
        for g in [Granularity::Pixel, Granularity::Channel] {
            let net = Net::from_model(&with_full_masks(&model, g).unwrap(), &default_device()).unwrap();
            assert_eq!(to_vec(&net.mask_l1())[0], 20_384.0, "{g:?}");
        }
    }

    #[test]
    fn missing_tensor_is_an_error() {
        let graph = arch::build("small-cnn", 10).unwrap();
        let mut model = Model::random(graph, 3, None).unwrap();
        model.tensors.remove("conv2.weight");
        let err = Net::from_model(&model, &default_device()).err().unwrap();
        assert!(matches!(&err, LinearizeError::MissingTensor(n) if n == "conv2.weight"), "{err}");
        assert_eq!(err.to_string(), "model lacks tensor conv2.weight");
    }
}
