//! Where fixed-point scales change: which node outputs carry `f` or `2f` fractional bits and where
//! truncation happens. The ring engine and the private-inference protocol follow the same plan.
//!
//! Rules: conv/linear/pooling outputs carry `2f` bits. Such an output is truncated locally right
//! after the node unless every consumer is a ReLU (the ReLU truncates: exactly inside the garbled
//! circuit for kept neurons, locally for linearized ones) or it is the network output (decoded at `2f`).

use crate::graph::{GraphError, Op, ValidGraph};

/// Scale facts of one node (scales in units of `f` fractional bits: 1 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePlan {
    /// Scale of the node's output after any truncation.
    pub out_scale: u32,
    /// The node's `2f` result is truncated by `f` right after it is computed (local truncation in PI).
    pub truncate_after: bool,
    /// For ReLU nodes: bits the ReLU drops (`f` when its input carries `2f`, else 0).
    pub relu_shift_units: u32,
}

/// The plan of every node, indexed like `graph.nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePlan {
    pub nodes: Vec<NodePlan>,
}

impl ScalePlan {
    /// Computes the plan of a folded graph.
    pub fn new(graph: &ValidGraph) -> Result<Self, GraphError> {
        let consumers = graph.consumers();
        let index = graph.index();
        let last = graph.nodes.len() - 1;
        let mut nodes: Vec<NodePlan> = Vec::with_capacity(graph.nodes.len());
        for (i, node) in graph.nodes.iter().enumerate() {
            let in_scale =
                |k: usize| -> u32 { index.get(node.inputs[k].as_str()).map(|&p| nodes[p].out_scale).unwrap_or(1) };
            let natural = match node.op {
                Op::Conv2d { .. } | Op::Linear { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool => 2,
                Op::Flatten | Op::Batchnorm { .. } => in_scale(0),
                Op::Relu { .. } | Op::Add => 1,
            };
            let only_relus =
                !consumers[i].is_empty() && consumers[i].iter().all(|&c| matches!(graph.nodes[c].op, Op::Relu { .. }));
            let truncate_after = natural == 2 && i != last && !only_relus;
            let relu_shift_units = if matches!(node.op, Op::Relu { .. }) { in_scale(0) - 1 } else { 0 };
            nodes.push(NodePlan { out_scale: natural - truncate_after as u32, truncate_after, relu_shift_units });
        }
        Ok(Self { nodes })
    }
}
