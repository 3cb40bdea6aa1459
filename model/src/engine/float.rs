//! The graph walk shared by both engines, and the f32 engine.

use super::EngineError;
use super::kernels::{self, ConvGeometry, Scalar};
use crate::graph::{Op, ValidGraph};
use crate::model::Model;

/// What an engine supplies for the operations that differ between number systems.
pub trait Backend {
    type T: Scalar;
    /// Convolution or linear layer of node `i` including its bias (weights are the backend's).
    fn linear_op(&self, i: usize, input: &[Self::T]) -> Vec<Self::T>;
    /// ReLU node `i` with its mask.
    fn relu(&self, i: usize, input: Vec<Self::T>) -> Vec<Self::T>;
    /// Scales window sums of a pooling node `i` by `1 / area`.
    fn pool_scale(&self, i: usize, sums: Vec<Self::T>, area: usize) -> Vec<Self::T>;
    /// Applied to every node's output (e.g. truncation).
    fn finish(&self, _i: usize, out: Vec<Self::T>) -> Vec<Self::T> {
        out
    }
}

/// Geometry of a convolution node given its input shape.
pub fn conv_geometry(op: &Op, in_shape: &[usize]) -> Option<ConvGeometry> {
    match *op {
        Op::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => Some(ConvGeometry {
            in_channels,
            height: in_shape[1],
            width: in_shape[2],
            out_channels,
            kernel,
            stride,
            padding,
        }),
        _ => None,
    }
}

/// Runs a folded graph, returning every node's output (indexed like `graph.nodes`).
pub fn execute<B: Backend>(graph: &ValidGraph, b: &B, input: Vec<B::T>) -> Result<Vec<Vec<B::T>>, EngineError> {
    let shapes = graph.shapes();
    let expected: usize = graph.input_shape.iter().product();
    if input.len() != expected {
        return Err(EngineError::InputSize { expected, got: input.len() });
    }
    let index = graph.index();
    let mut outs: Vec<Vec<B::T>> = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        let arg = |k: usize| -> &[B::T] {
            match index.get(node.inputs[k].as_str()) {
                Some(&p) => &outs[p],
                None => &input,
            }
        };
        let in_shape = &shapes[&node.inputs[0]];
        let out = match &node.op {
            Op::Conv2d { .. } | Op::Linear { .. } => b.linear_op(i, arg(0)),
            Op::Relu { .. } => b.relu(i, arg(0).to_vec()),
            Op::Add => kernels::add(arg(0), arg(1)),
            Op::AvgPool { kernel, stride } => {
                let s = [in_shape[0], in_shape[1], in_shape[2]];
                b.pool_scale(i, kernels::pool_sum(arg(0), s, *kernel, *stride), kernel * kernel)
            }
            Op::GlobalAvgPool => b.pool_scale(i, kernels::channel_sum(arg(0), in_shape[0]), in_shape[1] * in_shape[2]),
            Op::Flatten => arg(0).to_vec(),
            Op::Batchnorm { .. } => return Err(EngineError::NotFolded(node.name.clone())),
        };
        outs.push(b.finish(i, out));
    }
    Ok(outs)
}

struct FloatBackend<'a> {
    model: &'a Model,
}

impl Backend for FloatBackend<'_> {
    type T = f32;

    fn linear_op(&self, i: usize, input: &[f32]) -> Vec<f32> {
        let node = &self.model.graph.nodes[i];
        let w = self.model.tensor(&node.name, "weight");
        let w = w.as_slice_memory_order().expect("contiguous weights");
        let mut out = match node.op {
            Op::Linear { out_features, .. } => kernels::linear(input, w, out_features),
            _ => {
                let g = conv_geometry(&node.op, self.model.graph.input_shape_of(node)).expect("conv node");
                kernels::conv2d(&g, input, w)
            }
        };
        if let Some(bias) = self.model.try_tensor(&node.name, "bias") {
            let per = out.len() / bias.len();
            for (c, chunk) in out.chunks_mut(per).enumerate() {
                chunk.iter_mut().for_each(|v| *v += bias[c]);
            }
        }
        out
    }

    fn relu(&self, i: usize, mut x: Vec<f32>) -> Vec<f32> {
        let node = &self.model.graph.nodes[i];
        let mask = self.model.pixel_mask(node, self.model.graph.input_shape_of(node));
        x.iter_mut().zip(mask).for_each(|(v, keep)| {
            if keep && *v < 0.0 {
                *v = 0.0
            }
        });
        x
    }

    fn pool_scale(&self, _i: usize, mut sums: Vec<f32>, area: usize) -> Vec<f32> {
        sums.iter_mut().for_each(|v| *v /= area as f32);
        sums
    }
}

/// Runs the f32 engine on a folded model; returns the logits.
pub fn run_f32(model: &Model, input: &[f32]) -> Result<Vec<f32>, EngineError> {
    let b = FloatBackend { model };
    let mut outs = execute(&model.graph, &b, input.to_vec())?;
    Ok(outs.pop().expect("non-empty graph"))
}
