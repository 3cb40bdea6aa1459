//! Private inference of a whole network: the server's and the client's offline and online phases,
//! walking the (folded) graph node by node on additive shares.
//!
//! Per linear node the client's share comes from HE offline; per ReLU node with surviving neurons a
//! garbled-circuit layer runs; everything else (adds, pooling, linearized ReLUs, truncations) is
//! local on both shares. See `docs/protocol.md` for the message diagram.

pub mod client;
pub mod server;

use crate::channel::ChannelError;
use crate::gc::GcError;
use crate::he::HeError;
use crate::he::layer::{ConvShape, FcShape, LayerShape};
use crate::public::{PublicModel, PublicModelError};
use crate::share::{Role, truncate_shares};
use pi_model::engine::kernels;
use pi_model::engine::plan::ScalePlan;
use pi_model::graph::{Node, Op};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Anything that ends an inference session.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("garbled circuits: {0}")]
    Gc(#[from] GcError),
    #[error("homomorphic encryption: {0}")]
    He(#[from] HeError),
    #[error(transparent)]
    PublicModel(#[from] PublicModelError),
    #[error("model hash mismatch: server serves {served}, client expects {expected}")]
    HashMismatch { served: String, expected: String },
    #[error("protocol version mismatch: server speaks {server}, client {client}")]
    Version { server: u16, client: u16 },
    #[error("bad input: {0}")]
    Input(String),
    #[error("refused: {0}")]
    Limit(String),
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for InferenceError {
    fn from(e: tokio::task::JoinError) -> Self {
        InferenceError::Task(e.to_string())
    }
}

/// Server greeting.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub model: PublicModel,
}

/// Client's answer: the model hash it expects (the server refuses a mismatch too).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloAck {
    pub hash: String,
}

/// A client request: start one inference, or end the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Infer,
    Bye,
}

/// The graph facts both parties derive from the public model.
pub(crate) struct Walk {
    pub plan: ScalePlan,
    pub shapes: HashMap<String, Vec<usize>>,
    pub index: HashMap<String, usize>,
}

impl Walk {
    pub fn new(public: &PublicModel) -> Result<Self, InferenceError> {
        let plan = public.validate()?;
        let shapes = public.graph.shapes().map_err(|e| PublicModelError(e.to_string()))?;
        let index = public.graph.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        Ok(Self { plan, shapes, index })
    }

    /// The output of node `name` (or the network input).
    pub fn arg<'a>(&self, outs: &'a [Vec<u64>], input: &'a [u64], name: &str) -> &'a [u64] {
        match self.index.get(name) {
            Some(&p) => &outs[p],
            None => input,
        }
    }

    /// HE shape of a linear node.
    pub fn layer_shape(&self, node: &Node) -> Option<LayerShape> {
        layer_shape(node, &self.shapes[&node.inputs[0]])
    }
}

/// HE shape of a conv or linear node reading an input of shape `s` (`None` for other nodes).
pub fn layer_shape(node: &Node, s: &[usize]) -> Option<LayerShape> {
        match node.op {
            Op::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => Some(LayerShape::Conv(ConvShape {
                in_channels,
                out_channels,
                height: s[1],
                width: s[2],
                kernel,
                stride,
                padding,
            })),
            Op::Linear { in_features, out_features, .. } => {
                Some(LayerShape::Fc(FcShape { inputs: in_features, outputs: out_features }))
            }
            _ => None,
        }
}

/// The linear layers of a graph in evaluation order, by node name (what HE preprocesses).
pub fn linear_layers(graph: &pi_model::Graph) -> Result<Vec<(String, LayerShape)>, pi_model::GraphError> {
    let shapes = graph.shapes()?;
    Ok(graph.nodes.iter().filter_map(|n| layer_shape(n, &shapes[&n.inputs[0]]).map(|s| (n.name.clone(), s))).collect())
}

/// Local computation of a non-linear, non-ReLU node on one party's shares (add, pooling, flatten).
pub(crate) fn local_node(public: &PublicModel, walk: &Walk, i: usize, args: &[&[u64]]) -> Vec<u64> {
    let fp = &public.fp;
    let node = &public.graph.nodes[i];
    let s = &walk.shapes[&node.inputs[0]];
    let scale = |v: Vec<u64>, area: usize| -> Vec<u64> {
        let c = fp.pool_factor(area);
        v.into_iter().map(|x| fp.reduce(x.wrapping_mul(c))).collect()
    };
    match node.op {
        Op::Add => kernels::add(args[0], args[1]).into_iter().map(|v| fp.reduce(v)).collect(),
        Op::AvgPool { kernel, stride } => scale(kernels::pool_sum(args[0], [s[0], s[1], s[2]], kernel, stride), kernel * kernel),
        Op::GlobalAvgPool => scale(kernels::channel_sum(args[0], s[0]), s[1] * s[2]),
        Op::Flatten => args[0].to_vec(),
        _ => unreachable!("local_node on {}", node.op.kind()),
    }
}

/// Applies the plan's local truncation after node `i`, if any.
pub(crate) fn finish_node(public: &PublicModel, walk: &Walk, i: usize, role: Role, mut out: Vec<u64>) -> Vec<u64> {
    if walk.plan.nodes[i].truncate_after {
        truncate_shares(&public.fp, role, &mut out, public.fp.f);
    }
    out
}

/// Bits a ReLU node drops.
pub(crate) fn relu_shift(public: &PublicModel, walk: &Walk, i: usize) -> u32 {
    walk.plan.nodes[i].relu_shift_units * public.fp.f
}

/// Circuit parameters of ReLU node `i`.
pub(crate) fn relu_params(public: &PublicModel, walk: &Walk, i: usize) -> crate::gc::ReluParams {
    crate::gc::ReluParams { l: public.fp.l, k: public.relu_bits[i], shift: relu_shift(public, walk, i) }
}

#[cfg(test)]
mod tests;
