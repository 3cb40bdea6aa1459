//! The fixed-point engine: the network encoded into `Z_{2^l}` and evaluated exactly as private
//! inference evaluates it (same encodings, same truncation points, floor semantics).

use super::EngineError;
use super::float::{Backend, conv_geometry, execute};
use super::kernels::winograd::{self, WinogradKernels};
use super::kernels::{self, ConvGeometry, ScatterKernels};
use super::plan::ScalePlan;
use crate::fixed::FixedPoint;
use crate::graph::Op;
use crate::model::Model;

/// Ring-encoded parameters of one node.
#[derive(Clone, Debug, Default)]
pub struct RingLayer {
    /// Weights with `f` fractional bits, row-major like the f32 tensor.
    pub weight: Vec<u64>,
    /// Bias with `2f` fractional bits (added to a product that carries `2f`).
    pub bias: Vec<u64>,
    /// Per-element ReLU mask (true = real ReLU).
    pub mask: Vec<bool>,
    /// Kept ReLU inputs below this come out as 0: the worst case of a sign read from top bits
    /// ([`RingModel::set_sign_dead_zones`]); 0 = exact ReLU.
    pub dead_zone: u64,
    /// Convolution geometry, for conv nodes.
    pub conv: Option<ConvGeometry>,
    /// Transformed kernels of a 3x3 stride-1 convolution (Winograd F(2x2,3x3), exact for `l <= 62`;
    /// `None` keeps the direct convolution, also for kernels too large for the `i32` transform).
    pub winograd: Option<WinogradKernels>,
    /// Pooling multiplier `round(2^f / area)`, for pooling nodes.
    pub pool_factor: u64,
    /// A convolution's kernels transposed for inputs that are zero but at a few positions
    /// ([`RingModel::prepare_scatter`]; the PI server's, `None` elsewhere).
    pub scatter: Option<ScatterKernels>,
}

/// A folded model encoded for the ring, with its scale plan.
#[derive(Clone, Debug)]
pub struct RingModel {
    pub model: Model,
    pub fp: FixedPoint,
    pub plan: ScalePlan,
    pub layers: Vec<RingLayer>,
}

impl RingModel {
    /// Encodes a model (folding BatchNorm if needed).
    pub fn new(model: &Model, fp: FixedPoint) -> Result<Self, EngineError> {
        fp.validate().map_err(EngineError::Params)?;
        let model = if model.is_folded() { model.clone() } else { model.fold_batchnorm() };
        let plan = ScalePlan::new(&model.graph)?;
        let layers = model
            .graph
            .nodes
            .iter()
            .map(|node| {
                let in_shape = model.graph.input_shape_of(node);
                let mut l = RingLayer { conv: conv_geometry(&node.op, in_shape), ..Default::default() };
                match node.op {
                    Op::Conv2d { .. } | Op::Linear { .. } => {
                        l.weight = model.tensor(&node.name, "weight").iter().map(|&w| fp.encode(w)).collect();
                        if let Some(g) = l.conv.filter(|g| winograd::applies(g) && fp.l <= winograd::MAX_L) {
                            l.winograd = WinogradKernels::new(&g, &l.weight, fp.l);
                        }
                        let out_ch = match node.op {
                            Op::Linear { out_features, .. } => out_features,
                            Op::Conv2d { out_channels, .. } => out_channels,
                            _ => unreachable!(),
                        };
                        l.bias = match model.try_tensor(&node.name, "bias") {
                            Some(b) => b.iter().map(|&v| fp.encode_with(v, 2 * fp.f)).collect(),
                            None => vec![0; out_ch],
                        };
                    }
                    Op::Relu { .. } => l.mask = model.pixel_mask(node, in_shape),
                    Op::AvgPool { kernel, .. } => l.pool_factor = fp.pool_factor(kernel * kernel),
                    Op::GlobalAvgPool => l.pool_factor = fp.pool_factor(in_shape[1] * in_shape[2]),
                    _ => {}
                }
                l
            })
            .collect();
        Ok(Self { model, fp, plan, layers })
    }

    /// Makes each ReLU node `i` with `bits[i] > 0` zero its kept inputs in `[0, 2^bits[i])`: the
    /// worst case of the stochastic ReLU (`pi serve --sign-bits`), where such a value comes out as
    /// itself or as 0 depending on the shares. For choosing the sign bits; a served model keeps
    /// exact ReLUs. Panics unless there is one entry per node, each below 63.
    pub fn set_sign_dead_zones(&mut self, bits: &[u32]) {
        assert_eq!(bits.len(), self.layers.len(), "one entry per node");
        for (l, &b) in self.layers.iter_mut().zip(bits) {
            assert!(b < 63, "dead zone of {b} bits");
            l.dead_zone = if b == 0 { 0 } else { 1u64 << b };
        }
    }

    /// Encodes an f32 input with `f` fractional bits.
    pub fn encode_input(&self, x: &[f32]) -> Vec<u64> {
        x.iter().map(|&v| self.fp.encode(v)).collect()
    }

    /// Runs on an encoded input; returns every node's output.
    pub fn run_all(&self, input: Vec<u64>) -> Result<Vec<Vec<u64>>, EngineError> {
        execute(&self.model.graph, self, input)
    }

    /// Runs on an f32 input; returns the logits as ring elements (at the output node's scale).
    pub fn run(&self, x: &[f32]) -> Result<Vec<u64>, EngineError> {
        Ok(self.run_all(self.encode_input(x))?.pop().expect("non-empty"))
    }

    /// Fractional bits of the network output.
    pub fn output_frac_bits(&self) -> u32 {
        self.plan.nodes.last().expect("non-empty").out_scale * self.fp.f
    }

    /// Decodes output logits.
    pub fn decode_output(&self, out: &[u64]) -> Vec<f32> {
        out.iter().map(|&v| self.fp.decode_with(v, self.output_frac_bits())).collect()
    }

    /// The linear part of node `i` without bias, in the ring: what HE preprocesses and what the PI
    /// server evaluates online on its share.
    pub fn linear_no_bias(&self, i: usize, input: &[u64]) -> Vec<u64> {
        let mut out = self.linear_unreduced(i, input);
        out.iter_mut().for_each(|v| *v = self.fp.reduce(*v));
        out
    }

    /// What the PI server computes online at node `i` (linear): the linear part on its share of the
    /// input, plus the bias, plus `share` (its HE share of the layer's offline output), reduced once.
    /// Equal to `linear_no_bias` + `add_bias` + `share` mod `2^l`, in one pass over the output.
    pub fn linear_share(&self, i: usize, input: &[u64], share: &[u64]) -> Vec<u64> {
        let mut out = self.linear_unreduced(i, input);
        assert_eq!(out.len(), share.len(), "node {i}: a share of {} values for {} outputs", share.len(), out.len());
        let bias = &self.layers[i].bias;
        let per = out.len() / bias.len().max(1);
        for ((chunk, s), &b) in out.chunks_mut(per).zip(share.chunks(per)).zip(bias) {
            chunk.iter_mut().zip(s).for_each(|(v, &s)| *v = self.fp.reduce(v.wrapping_add(b).wrapping_add(s)));
        }
        out
    }

    /// The linear part of node `i` without bias, correct mod `2^l` (higher bits undefined).
    fn linear_unreduced(&self, i: usize, input: &[u64]) -> Vec<u64> {
        let l = &self.layers[i];
        match (&l.conv, &self.model.graph.nodes[i].op) {
            (Some(g), _) => match &l.winograd {
                Some(k) => winograd::conv3x3(g, input, k),
                None => kernels::conv2d(g, input, &l.weight),
            },
            (None, Op::Linear { out_features, .. }) => kernels::linear(input, &l.weight, *out_features),
            _ => panic!("node {i} is not linear"),
        }
    }

    /// Builds every convolution's [`ScatterKernels`] (4 bytes per weight), for
    /// [`Self::add_scattered`]. Returns the bytes they take.
    pub fn prepare_scatter(&mut self) -> usize {
        let l = self.fp.l;
        for layer in &mut self.layers {
            if let Some(g) = layer.conv {
                layer.scatter = ScatterKernels::new(&g, &layer.weight, l);
            }
        }
        self.layers.iter().filter_map(|x| x.scatter.as_ref()).map(|k| k.bytes()).sum()
    }

    /// Whether [`Self::add_scattered`] runs for node `i`.
    pub fn scatters(&self, i: usize) -> bool {
        self.layers.get(i).is_some_and(|l| l.scatter.is_some())
    }

    /// Adds node `i`'s linear part (a convolution, no bias) of an input that is zero except at the
    /// flat positions `idx`, where it is `val`, to `out`, reduced mod `2^l`. With [`Self::linear_share`]
    /// of the other positions it gives the whole input's result. `false` (and `out` untouched) when
    /// node `i` has no scatter kernels.
    pub fn add_scattered(&self, i: usize, idx: &[u32], val: &[u64], out: &mut [u64]) -> bool {
        let l = &self.layers[i];
        let (Some(g), Some(k)) = (&l.conv, &l.scatter) else { return false };
        kernels::conv2d_scatter_add(g, k, idx, val, out);
        out.iter_mut().for_each(|v| *v = self.fp.reduce(*v));
        true
    }

    /// Adds node `i`'s bias (encoded at `2f`) to a linear output, in place.
    pub fn add_bias(&self, i: usize, out: &mut [u64]) {
        let bias = &self.layers[i].bias;
        let per = out.len() / bias.len().max(1);
        for (c, chunk) in out.chunks_mut(per).enumerate() {
            chunk.iter_mut().for_each(|v| *v = self.fp.reduce(v.wrapping_add(bias[c])));
        }
    }
}

impl Backend for RingModel {
    type T = u64;

    fn linear_op(&self, i: usize, input: &[u64]) -> Vec<u64> {
        let mut out = self.linear_no_bias(i, input);
        self.add_bias(i, &mut out);
        out
    }

    fn relu(&self, i: usize, mut x: Vec<u64>) -> Vec<u64> {
        let shift = self.plan.nodes[i].relu_shift_units * self.fp.f;
        let dead_zone = self.layers[i].dead_zone;
        for (v, &keep) in x.iter_mut().zip(&self.layers[i].mask) {
            // A kept value is non-negative after `relu`, so the ring element compares as its size.
            let y = if keep { Some(self.fp.relu(*v)).filter(|&r| r >= dead_zone).unwrap_or(0) } else { *v };
            *v = self.fp.truncate(y, shift);
        }
        x
    }

    fn pool_scale(&self, i: usize, mut sums: Vec<u64>, _area: usize) -> Vec<u64> {
        let c = self.layers[i].pool_factor;
        sums.iter_mut().for_each(|v| *v = self.fp.reduce(v.wrapping_mul(c)));
        sums
    }

    fn finish(&self, i: usize, mut out: Vec<u64>) -> Vec<u64> {
        if self.plan.nodes[i].truncate_after {
            out.iter_mut().for_each(|v| *v = self.fp.truncate(*v, self.fp.f));
        } else {
            out.iter_mut().for_each(|v| *v = self.fp.reduce(*v));
        }
        out
    }
}
