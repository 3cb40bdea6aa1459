//! A graph together with its weights and masks; random initialisation and BatchNorm folding.

use crate::data::Normalization;
use crate::graph::{Granularity, GraphError, Node, Op, ValidGraph};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;

/// A parameter tensor.
pub type Tensor = ArrayD<f32>;

/// A mask-annotated network: architecture plus named tensors (`"{node}.{param}"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub graph: ValidGraph,
    pub tensors: BTreeMap<String, Tensor>,
    /// How raw pixels become the network's input: part of the function the model computes, so
    /// it travels with the model (file metadata, the server's greeting).
    pub normalization: Normalization,
}

/// ReLU statistics of one ReLU node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReluCount {
    pub node: String,
    /// Elements of the activation.
    pub total: usize,
    /// Elements whose mask is 1 (a real ReLU, evaluated in a garbled circuit).
    pub kept: usize,
}

impl Model {
    /// Random weights (Kaiming-uniform), randomised BatchNorm statistics (so folding is exercised)
    /// and masks that keep a random `keep` fraction of each layer's ReLUs (all when `keep` is `None`).
    pub fn random(graph: ValidGraph, seed: u64, keep: Option<f64>) -> Result<Model, GraphError> {
        let shapes = graph.shapes();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        for node in &graph.nodes {
            let in_shape = &shapes[&node.inputs[0]];
            for (param, shape) in crate::graph::param_shapes(node, in_shape) {
                let n: usize = shape.iter().product();
                let fan_in = |s: &[usize]| s[1..].iter().product::<usize>().max(1) as f32;
                let data: Vec<f32> = match (&node.op, param) {
                    (Op::Conv2d { .. } | Op::Linear { .. }, "weight") => {
                        let b = (6.0 / fan_in(&shape)).sqrt();
                        (0..n).map(|_| rng.random_range(-b..b)).collect()
                    }
                    (_, "bias") if !matches!(node.op, Op::Batchnorm { .. }) => {
                        (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
                    }
                    (Op::Batchnorm { .. }, "weight") => (0..n).map(|_| rng.random_range(0.5..1.5)).collect(),
                    (Op::Batchnorm { .. }, "bias") => (0..n).map(|_| rng.random_range(-0.2..0.2)).collect(),
                    (Op::Batchnorm { .. }, "running_mean") => (0..n).map(|_| rng.random_range(-0.2..0.2)).collect(),
                    (Op::Batchnorm { .. }, "running_var") => (0..n).map(|_| rng.random_range(0.5..2.0)).collect(),
                    (Op::Relu { .. }, "mask") => {
                        let mut m = vec![1.0f32; n];
                        if let Some(p) = keep {
                            let k = ((n as f64) * p.clamp(0.0, 1.0)).round() as usize;
                            let mut idx: Vec<usize> = (0..n).collect();
                            idx.shuffle(&mut rng);
                            m.iter_mut().for_each(|v| *v = 0.0);
                            idx[..k].iter().for_each(|&i| m[i] = 1.0);
                        }
                        m
                    }
                    _ => vec![0.0; n],
                };
                tensors.insert(
                    format!("{}.{param}", node.name),
                    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape"),
                );
            }
        }
        let normalization = Normalization::legacy_default(graph.input_shape[0], graph.classes);
        Ok(Model { graph, tensors, normalization })
    }

    /// A model whose normalisation is the data format's default for its input and class count
    /// (what every model was trained with before the normalisation was stored).
    pub fn with_default_normalization(graph: ValidGraph, tensors: BTreeMap<String, Tensor>) -> Model {
        let normalization = Normalization::legacy_default(graph.input_shape[0], graph.classes);
        Model { graph, tensors, normalization }
    }

    /// The tensor `"{node}.{param}"`; panics if absent, which a validated model rules out.
    pub fn tensor(&self, node: &str, param: &str) -> &Tensor {
        self.tensors.get(&format!("{node}.{param}")).unwrap_or_else(|| panic!("validated model lacks {node}.{param}"))
    }

    /// Optional tensor (e.g. a bias).
    pub fn try_tensor(&self, node: &str, param: &str) -> Option<&Tensor> {
        self.tensors.get(&format!("{node}.{param}"))
    }

    /// Kept and total ReLUs per ReLU node.
    pub fn relu_counts(&self) -> Vec<ReluCount> {
        let shapes = self.graph.shapes();
        self.graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Relu { granularity } => {
                    let s = &shapes[&n.inputs[0]];
                    let total: usize = s.iter().product();
                    let mask = self.tensor(&n.name, "mask");
                    let ones = mask.iter().filter(|&&v| v != 0.0).count();
                    let kept = match granularity {
                        Granularity::Pixel => ones,
                        Granularity::Channel => ones * s[1..].iter().product::<usize>(),
                    };
                    Some(ReluCount { node: n.name.clone(), total, kept })
                }
                _ => None,
            })
            .collect()
    }

    /// Surviving (mask = 1) ReLUs in the whole network.
    pub fn kept_relus(&self) -> usize {
        self.relu_counts().iter().map(|c| c.kept).sum()
    }

    /// Number of trainable parameters (masks and BatchNorm running statistics excluded).
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(k, _)| !k.ends_with(".mask") && !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
            .map(|(_, t)| t.len())
            .sum()
    }

    /// Per-element mask of a ReLU node, expanded to the activation's size (1 = keep).
    pub fn pixel_mask(&self, node: &Node, activation: &[usize]) -> Vec<bool> {
        let mask = self.tensor(&node.name, "mask");
        let n: usize = activation.iter().product();
        match node.op {
            Op::Relu { granularity: Granularity::Channel } => {
                let per = n / activation[0].max(1);
                let m: Vec<f32> = mask.iter().copied().collect();
                (0..n).map(|i| m[i / per] != 0.0).collect()
            }
            _ => mask.iter().map(|&v| v != 0.0).collect(),
        }
    }

    /// The inference form: every BatchNorm folded into the convolution before it when that
    /// convolution feeds only the BatchNorm, otherwise turned into a 1x1 convolution with a diagonal
    /// kernel (pre-activation networks). The result has no `batchnorm` nodes.
    pub fn fold_batchnorm(&self) -> Model {
        let consumers = self.graph.consumers();
        let index = self.graph.index();
        let mut tensors = self.tensors.clone();
        let mut nodes: Vec<Node> = Vec::new();
        let mut renamed: BTreeMap<String, String> = BTreeMap::new();
        let mut dropped = vec![false; self.graph.nodes.len()];
        for (i, node) in self.graph.nodes.iter().enumerate() {
            let Op::Batchnorm { channels, eps } = node.op else { continue };
            let gamma = self.tensor(&node.name, "weight");
            let beta = self.tensor(&node.name, "bias");
            let mean = self.tensor(&node.name, "running_mean");
            let var = self.tensor(&node.name, "running_var");
            let scale: Vec<f32> = (0..channels).map(|c| gamma[c] / (var[c] + eps).sqrt()).collect();
            let shift: Vec<f32> = (0..channels).map(|c| beta[c] - mean[c] * scale[c]).collect();
            for p in ["weight", "bias", "running_mean", "running_var"] {
                tensors.remove(&format!("{}.{p}", node.name));
            }
            let prev = index.get(node.inputs[0].as_str()).copied();
            let foldable =
                prev.is_some_and(|p| matches!(self.graph.nodes[p].op, Op::Conv2d { .. }) && consumers[p] == [i]);
            if let (true, Some(p)) = (foldable, prev) {
                let conv = &self.graph.nodes[p].name;
                let w = tensors.get_mut(&format!("{conv}.weight")).expect("conv weight");
                let per = w.len() / channels;
                let ws = w.as_slice_memory_order_mut().expect("contiguous");
                for (c, chunk) in ws.chunks_mut(per).enumerate() {
                    chunk.iter_mut().for_each(|v| *v *= scale[c]);
                }
                let bias: Vec<f32> = match self.try_tensor(conv, "bias") {
                    Some(b) => (0..channels).map(|c| b[c] * scale[c] + shift[c]).collect(),
                    None => shift,
                };
                tensors
                    .insert(format!("{conv}.bias"), ArrayD::from_shape_vec(IxDyn(&[channels]), bias).expect("shape"));
                dropped[i] = true;
                renamed.insert(node.name.clone(), conv.clone());
            } else {
                let mut w = ArrayD::zeros(IxDyn(&[channels, channels, 1, 1]));
                for c in 0..channels {
                    w[[c, c, 0, 0]] = scale[c];
                }
                tensors.insert(format!("{}.weight", node.name), w);
                tensors.insert(
                    format!("{}.bias", node.name),
                    ArrayD::from_shape_vec(IxDyn(&[channels]), shift).expect("shape"),
                );
            }
        }
        for (i, node) in self.graph.nodes.iter().enumerate() {
            if dropped[i] {
                continue;
            }
            let mut n = node.clone();
            for input in n.inputs.iter_mut() {
                if let Some(r) = renamed.get(input) {
                    *input = r.clone();
                }
            }
            match &mut n.op {
                Op::Batchnorm { channels, .. } => {
                    let c = *channels;
                    n.op = Op::Conv2d { in_channels: c, out_channels: c, kernel: 1, stride: 1, padding: 0, bias: true };
                }
                Op::Conv2d { bias, .. } if tensors.contains_key(&format!("{}.bias", n.name)) => *bias = true,
                _ => {}
            }
            nodes.push(n);
        }
        Model { graph: self.graph.rewired(nodes), tensors, normalization: self.normalization.clone() }
    }

    /// True when the model has no BatchNorm left (what the engines and the protocol run).
    pub fn is_folded(&self) -> bool {
        !self.graph.nodes.iter().any(|n| matches!(n.op, Op::Batchnorm { .. }))
    }
}
