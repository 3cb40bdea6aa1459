//! The network as a DAG of named nodes: operations, shape inference and validation.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Name under which nodes refer to the network input.
pub const INPUT: &str = "input";

/// Which elements of an activation a ReLU mask addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One mask value per activation element (`C x H x W`).
    Pixel,
    /// One mask value per channel (`C`).
    Channel,
}

/// One operation. Weights live in the model's tensor map under `"{node}.{param}"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// 2-D convolution, groups = 1. Tensors `weight [out, in, k, k]`, `bias [out]` when `bias`.
    Conv2d { in_channels: usize, out_channels: usize, kernel: usize, stride: usize, padding: usize, bias: bool },
    /// Batch normalisation with running statistics. Tensors `weight`, `bias`, `running_mean`, `running_var` `[C]`.
    Batchnorm { channels: usize, eps: f32 },
    /// Fully connected. Tensors `weight [out, in]`, `bias [out]` when `bias`.
    Linear { in_features: usize, out_features: usize, bias: bool },
    /// `y = m*relu(x) + (1-m)*x` with `m` in {0,1}: tensor `mask` of the activation's shape or `[C]`.
    Relu { granularity: Granularity },
    /// Element-wise sum of two inputs (residual connection).
    Add,
    /// Average pooling, no padding.
    AvgPool { kernel: usize, stride: usize },
    /// Average over the whole spatial extent: `C x H x W -> C`.
    GlobalAvgPool,
    /// `C x H x W -> C*H*W`.
    Flatten,
}

impl Op {
    /// Short name used in reports and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Batchnorm { .. } => "batchnorm",
            Op::Linear { .. } => "linear",
            Op::Relu { .. } => "relu",
            Op::Add => "add",
            Op::AvgPool { .. } => "avg_pool",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Flatten => "flatten",
        }
    }

    fn arity(&self) -> usize {
        if matches!(self, Op::Add) { 2 } else { 1 }
    }
}

/// A named node with the names of the nodes it reads (or [`INPUT`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<String>,
}

/// A validated network graph: nodes in topological order, the last node is the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Architecture name, e.g. `small-cnn`.
    pub arch: String,
    /// Input shape `[C, H, W]`.
    pub input_shape: Vec<usize>,
    /// Number of output classes (length of the output vector).
    pub classes: usize,
    pub nodes: Vec<Node>,
}

/// A graph that cannot be built: names the node and the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    #[error("graph has no nodes")]
    Empty,
    #[error("duplicate node name {0:?}")]
    DuplicateName(String),
    #[error("node {node:?} reads {input:?}, which is not an earlier node")]
    UnknownInput { node: String, input: String },
    #[error("node {node:?} ({kind}) takes {expected} inputs, has {got}")]
    Arity { node: String, kind: &'static str, expected: usize, got: usize },
    #[error("node {node:?}: {reason}")]
    Shape { node: String, reason: String },
    #[error("output has shape {got:?}, expected [{classes}]")]
    Output { got: Vec<usize>, classes: usize },
}

/// Tensor shape of each parameter a node needs, by parameter name.
pub fn param_shapes(node: &Node, in_shape: &[usize]) -> Vec<(&'static str, Vec<usize>)> {
    match &node.op {
        Op::Conv2d { in_channels, out_channels, kernel, bias, .. } => {
            let mut v = vec![("weight", vec![*out_channels, *in_channels, *kernel, *kernel])];
            if *bias {
                v.push(("bias", vec![*out_channels]));
            }
            v
        }
        Op::Batchnorm { channels, .. } => {
            ["weight", "bias", "running_mean", "running_var"].into_iter().map(|p| (p, vec![*channels])).collect()
        }
        Op::Linear { in_features, out_features, bias } => {
            let mut v = vec![("weight", vec![*out_features, *in_features])];
            if *bias {
                v.push(("bias", vec![*out_features]));
            }
            v
        }
        Op::Relu { granularity } => vec![(
            "mask",
            match granularity {
                Granularity::Pixel => in_shape.to_vec(),
                Granularity::Channel => vec![in_shape[0]],
            },
        )],
        _ => vec![],
    }
}

fn out_shape(node: &Node, ins: &[&Vec<usize>]) -> Result<Vec<usize>, String> {
    let chw = |s: &Vec<usize>| -> Result<(usize, usize, usize), String> {
        match s.as_slice() {
            [c, h, w] => Ok((*c, *h, *w)),
            _ => Err(format!("needs a C x H x W input, got {s:?}")),
        }
    };
    match &node.op {
        Op::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
            let (c, h, w) = chw(ins[0])?;
            if c != *in_channels {
                return Err(format!("expects {in_channels} input channels, gets {c}"));
            }
            if *kernel == 0 || *stride == 0 || *out_channels == 0 {
                return Err("kernel, stride and out_channels must be positive".into());
            }
            if h + 2 * padding < *kernel || w + 2 * padding < *kernel {
                return Err(format!("kernel {kernel} larger than padded input {h}x{w}"));
            }
            Ok(vec![*out_channels, (h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1])
        }
        Op::Batchnorm { channels, .. } => {
            let (c, _, _) = chw(ins[0])?;
            if c != *channels {
                return Err(format!("expects {channels} channels, gets {c}"));
            }
            Ok(ins[0].clone())
        }
        Op::Linear { in_features, out_features, .. } => match ins[0].as_slice() {
            [n] if n == in_features && *out_features > 0 => Ok(vec![*out_features]),
            s => Err(format!("expects a flat input of {in_features}, gets {s:?}")),
        },
        Op::Relu { .. } => Ok(ins[0].clone()),
        Op::Add => {
            if ins[0] != ins[1] {
                return Err(format!("adds shapes {:?} and {:?}", ins[0], ins[1]));
            }
            Ok(ins[0].clone())
        }
        Op::AvgPool { kernel, stride } => {
            let (c, h, w) = chw(ins[0])?;
            if *kernel == 0 || *stride == 0 || *kernel > h || *kernel > w {
                return Err(format!("pool kernel {kernel} / stride {stride} does not fit {h}x{w}"));
            }
            Ok(vec![c, (h - kernel) / stride + 1, (w - kernel) / stride + 1])
        }
        Op::GlobalAvgPool => Ok(vec![chw(ins[0])?.0]),
        Op::Flatten => Ok(vec![ins[0].iter().product()]),
    }
}

/// Upper bound on any dimension, so a hostile file cannot make shape arithmetic overflow.
const MAX_DIM: usize = 1 << 16;

impl Graph {
    /// Checks names, topology, arities and dimensions and computes every activation's shape, once:
    /// the only way to a [`ValidGraph`].
    pub fn validate(self) -> Result<ValidGraph, GraphError> {
        let shapes = self.infer_shapes()?;
        Ok(ValidGraph { graph: self, shapes })
    }

    /// Validates names, topology, arities and shapes; returns the output shape of every node.
    fn infer_shapes(&self) -> Result<HashMap<String, Vec<usize>>, GraphError> {
        if self.nodes.is_empty() {
            return Err(GraphError::Empty);
        }
        let mut shapes: HashMap<String, Vec<usize>> = HashMap::new();
        if self.input_shape.len() != 3 || self.input_shape.iter().any(|&d| d == 0 || d > MAX_DIM) {
            return Err(GraphError::Shape {
                node: INPUT.into(),
                reason: format!("bad input shape {:?}", self.input_shape),
            });
        }
        shapes.insert(INPUT.to_string(), self.input_shape.clone());
        for node in &self.nodes {
            if shapes.contains_key(&node.name) {
                return Err(GraphError::DuplicateName(node.name.clone()));
            }
            if node.inputs.len() != node.op.arity() {
                return Err(GraphError::Arity {
                    node: node.name.clone(),
                    kind: node.op.kind(),
                    expected: node.op.arity(),
                    got: node.inputs.len(),
                });
            }
            let mut ins = Vec::new();
            for i in &node.inputs {
                ins.push(
                    shapes
                        .get(i)
                        .ok_or_else(|| GraphError::UnknownInput { node: node.name.clone(), input: i.clone() })?,
                );
            }
            let too_big = |n: &usize| *n > MAX_DIM;
            let dims_ok = match &node.op {
                Op::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
                    ![in_channels, out_channels, kernel, stride, padding].into_iter().any(too_big)
                }
                Op::Linear { in_features, out_features, .. } => *in_features <= MAX_DIM * 64 && !too_big(out_features),
                Op::Batchnorm { channels, .. } => !too_big(channels),
                Op::AvgPool { kernel, stride } => !too_big(kernel) && !too_big(stride),
                _ => true,
            };
            if !dims_ok {
                return Err(GraphError::Shape { node: node.name.clone(), reason: "dimension too large".into() });
            }
            let s = out_shape(node, &ins).map_err(|reason| GraphError::Shape { node: node.name.clone(), reason })?;
            shapes.insert(node.name.clone(), s);
        }
        let out = &shapes[&self.nodes.last().expect("non-empty").name];
        if out != &vec![self.classes] {
            return Err(GraphError::Output { got: out.clone(), classes: self.classes });
        }
        Ok(shapes)
    }

    /// Index of each node by name.
    pub fn index(&self) -> HashMap<&str, usize> {
        self.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect()
    }

    /// For each node, the indices of the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let idx = self.index();
        let mut out = vec![Vec::new(); self.nodes.len()];
        for (j, n) in self.nodes.iter().enumerate() {
            for i in &n.inputs {
                if let Some(&p) = idx.get(i.as_str()) {
                    out[p].push(j);
                }
            }
        }
        out
    }
}

/// A graph that passed [`Graph::validate`], with the shape of every activation computed once.
/// Read-only: it dereferences to the [`Graph`]; serialises as the graph and validates when
/// deserialised, so a graph read from a file or a peer is checked before anything uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidGraph {
    graph: Graph,
    shapes: HashMap<String, Vec<usize>>,
}

impl std::ops::Deref for ValidGraph {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.graph
    }
}

impl ValidGraph {
    /// The shapes of the input (under [`INPUT`]) and of every node's output, by name.
    pub fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }

    /// Shape of a node's (first) input.
    pub fn input_shape_of(&self, node: &Node) -> &[usize] {
        &self.shapes[&node.inputs[0]]
    }

    /// The underlying graph description.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn into_graph(self) -> Graph {
        self.graph
    }

    /// This graph rewired by BatchNorm folding: every kept node keeps its output shape and reads
    /// nodes of the same shapes, so validity carries over (checked: the shapes are computed anew).
    pub(crate) fn rewired(&self, nodes: Vec<Node>) -> ValidGraph {
        let graph = Graph { nodes, ..self.graph.clone() };
        let shapes = graph.infer_shapes().expect("BatchNorm folding keeps a valid graph valid");
        ValidGraph { graph, shapes }
    }

    /// ReLU elements per ReLU node (all of them, regardless of masks): `(name, count)`.
    pub fn relu_sites(&self) -> Vec<(String, usize)> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Relu { .. }))
            .map(|n| (n.name.clone(), self.input_shape_of(n).iter().product()))
            .collect()
    }

    /// Required parameter tensors and their shapes, `"{node}.{param}" -> shape`.
    pub fn expected_tensors(&self) -> BTreeMap<String, Vec<usize>> {
        let mut out = BTreeMap::new();
        for n in &self.nodes {
            for (p, s) in param_shapes(n, self.input_shape_of(n)) {
                out.insert(format!("{}.{}", n.name, p), s);
            }
        }
        out
    }
}

impl Serialize for ValidGraph {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.graph.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ValidGraph {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Graph::deserialize(d)?.validate().map_err(serde::de::Error::custom)
    }
}

/// Incremental builder used by the architecture definitions.
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    pub fn new(arch: &str, input_shape: [usize; 3], classes: usize) -> Self {
        Self { graph: Graph { arch: arch.into(), input_shape: input_shape.to_vec(), classes, nodes: vec![] } }
    }

    /// Adds a node and returns its name, so calls chain naturally.
    pub fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[&str]) -> String {
        let name = name.into();
        self.graph.nodes.push(Node { name: name.clone(), op, inputs: inputs.iter().map(|s| s.to_string()).collect() });
        name
    }

    /// A bias-free convolution: `(in, out)` channels and `(kernel, stride, padding)`, in PyTorch's
    /// `Conv2d(in, out, kernel, stride, padding)` order.
    pub fn conv(
        &mut self,
        name: &str,
        input: &str,
        (cin, cout): (usize, usize),
        (k, s, p): (usize, usize, usize),
    ) -> String {
        let op = Op::Conv2d { in_channels: cin, out_channels: cout, kernel: k, stride: s, padding: p, bias: false };
        self.add(name, op, &[input])
    }

    pub fn bn(&mut self, name: &str, input: &str, c: usize) -> String {
        self.add(name, Op::Batchnorm { channels: c, eps: 1e-5 }, &[input])
    }

    pub fn relu(&mut self, name: &str, input: &str) -> String {
        self.add(name, Op::Relu { granularity: Granularity::Pixel }, &[input])
    }

    /// Validates and returns the graph.
    pub fn finish(self) -> Result<ValidGraph, GraphError> {
        self.graph.validate()
    }
}
