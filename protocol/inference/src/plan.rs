//! The compiled plan both parties walk: one step per graph node, with everything either party needs
//! decided once from the validated public model (input sources, HE layer shapes, which neurons are
//! garbled, circuit parameters, truncations). The parties never re-match ops or masks.

use crate::public::{PublicModel, PublicModelError};
use crate::share::{Role, Truncation, truncate_shares};
use pi_gc::{Gadget, ReluParams, StochasticParams, TruncParams};
use pi_he::{ConvShape, FcShape, LayerShape};
use pi_model::FixedPoint;
use pi_model::engine::kernels;
use pi_model::graph::{Node, Op, ValidGraph};
use std::collections::HashMap;

/// Where a step reads a value: the network input or an earlier step's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Input,
    Step(usize),
}

/// The positions of an activation whose ReLU survives (garbled); the others are linearized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Positions as `u32`: activations are at most `MAX_ACTIVATION` (2^26) elements.
    positions: Vec<u32>,
}

impl Kept {
    fn from_mask(mask: &[bool]) -> Self {
        Kept { positions: mask.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i as u32).collect() }
    }

    /// The positions the mask does not keep.
    fn complement(mask: &[bool]) -> Self {
        Kept { positions: mask.iter().enumerate().filter(|(_, k)| !**k).map(|(i, _)| i as u32).collect() }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// The kept positions (flat indices into the activation), ascending.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// The kept elements of `x`, in order.
    pub fn gather(&self, x: &[u64]) -> Vec<u64> {
        self.positions.iter().map(|&p| x[p as usize]).collect()
    }

    /// The kept elements of the share `x` (in `Z_{2^l}` of `fp`), each shifted right by `bits`.
    pub fn gather_shifted(&self, fp: &FixedPoint, x: &[u64], bits: u32) -> Vec<u64> {
        self.positions.iter().map(|&p| fp.reduce(x[p as usize]) >> bits).collect()
    }

    /// Writes `values` (one per kept element, in order) into the kept positions of `y`.
    pub fn scatter(&self, y: &mut [u64], values: impl IntoIterator<Item = u64>) {
        for (&p, v) in self.positions.iter().zip(values) {
            y[p as usize] = v;
        }
    }
}

/// A local step on one party's shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Local {
    Add,
    /// Sum-pool over `[C, H, W]` then multiply by the pooling factor of `kernel²`.
    AvgPool {
        shape: [usize; 3],
        kernel: usize,
        stride: usize,
    },
    /// Channel sums over `[C, H*W]` then the pooling factor of `H*W`.
    GlobalAvgPool {
        channels: usize,
        area: usize,
    },
    Flatten,
}

/// What one node does in the protocol.
#[derive(Clone, Debug)]
pub(crate) enum StepKind {
    /// Conv or FC: HE offline (client's share `L(r) - s`), plaintext on the server's share online.
    Linear {
        shape: LayerShape,
    },
    /// ReLU: every element is truncated locally by `shift`, then the kept ones are replaced by the
    /// garbled layer's output (`gc` is `None` when the layer is fully linearized). With exact
    /// truncation, the linearized ones are replaced by the output of a truncation layer run in the
    /// same round trip (`linearized`: their positions and the gadget).
    ///
    /// With local truncation, a ReLU that rescales drops its shares' low `shift` bits before the
    /// circuit (`gc_input_shift`; the circuit is then `k - shift` bits wide with no shift of its
    /// own): `relu(floor(a / 2^s) + floor(b / 2^s))` is `relu(y) >> s` or one less, like a local
    /// truncation, and costs `shift` fewer garbled ANDs and input bits per ReLU.
    Relu {
        shift: u32,
        kept: Kept,
        gc: Option<Gadget>,
        gc_input_shift: u32,
        total: usize,
        linearized: Option<(Kept, TruncParams)>,
    },
    Local(Local),
}

/// One node of the plan.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: String,
    /// The graph op's short name (`conv2d`, `linear`, `relu`, ...), for reports.
    pub op_kind: &'static str,
    pub kind: StepKind,
    pub inputs: Vec<Src>,
    /// The output is truncated by `f` bits after the step: locally, or, with `exact_after`, by a
    /// garbled truncation layer over the whole output (its own round trip).
    pub truncate_after: bool,
    pub exact_after: Option<TruncParams>,
    /// Elements of the step's output.
    pub out_len: usize,
}

/// One party's garbled layers of one step, made offline in this order and run online in it: the
/// kept ReLUs and the exact truncation of the linearized neurons (one round trip together), then
/// the exact truncation of the step's output (another).
pub(crate) struct StepGc<T> {
    pub relu: Option<T>,
    pub linearized: Option<T>,
    pub after: Option<T>,
}

impl<T> Default for StepGc<T> {
    fn default() -> Self {
        StepGc { relu: None, linearized: None, after: None }
    }
}

/// The whole network as steps in evaluation order; the last step's output is the logits.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub fp: FixedPoint,
    pub input_len: usize,
    /// Fractional bits of the logits.
    pub output_frac: u32,
}

impl Plan {
    /// Validates a (possibly peer-supplied) public model and compiles it: nothing in it can make a
    /// party panic later.
    pub fn compile(public: &PublicModel) -> Result<Self, PublicModelError> {
        let checked = public.check()?;
        let (shapes, scale) = (checked.shapes, checked.scale);
        let index: HashMap<&str, usize> =
            public.graph.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        let fp = public.fp;
        let exact = public.truncation == Truncation::Exact;
        let steps = public
            .graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let s = &shapes[&node.inputs[0]];
                let kind = match node.op {
                    Op::Conv2d { .. } | Op::Linear { .. } => {
                        StepKind::Linear { shape: layer_shape(node, s).expect("conv/linear node") }
                    }
                    Op::Relu { .. } => {
                        let shift = scale.nodes[i].relu_shift_units * fp.f;
                        let kept = Kept::from_mask(&public.masks[i]);
                        let k = public.relu_bits[i];
                        // Validated: k >= shift + 2, so the narrowed circuit keeps 2 bits or more.
                        // Validated: top sign bits only with local truncation.
                        let (params, gc_input_shift): (Gadget, _) = match (exact, public.sign_bits.top(k - shift)) {
                            (true, _) => (ReluParams { l: fp.l, k, shift }.into(), 0),
                            (false, Some(m)) => {
                                (StochasticParams { l: fp.l, k: k - shift, sign_bits: m }.into(), shift)
                            }
                            (false, None) => (ReluParams { l: fp.l, k: k - shift, shift: 0 }.into(), shift),
                        };
                        let gc = (kept.len() > 0).then_some(params);
                        let linearized = Kept::complement(&public.masks[i]);
                        let linearized = (exact && shift > 0 && linearized.len() > 0)
                            .then_some((linearized, TruncParams { l: fp.l, shift }));
                        StepKind::Relu { shift, kept, gc, gc_input_shift, total: public.masks[i].len(), linearized }
                    }
                    Op::Add => StepKind::Local(Local::Add),
                    Op::AvgPool { kernel, stride } => {
                        StepKind::Local(Local::AvgPool { shape: [s[0], s[1], s[2]], kernel, stride })
                    }
                    Op::GlobalAvgPool => StepKind::Local(Local::GlobalAvgPool { channels: s[0], area: s[1] * s[2] }),
                    Op::Flatten => StepKind::Local(Local::Flatten),
                    Op::Batchnorm { .. } => unreachable!("validate() refuses unfolded graphs"),
                };
                let inputs = node.inputs.iter().map(|n| index.get(n.as_str()).map_or(Src::Input, |&p| Src::Step(p)));
                let truncate_after = scale.nodes[i].truncate_after;
                Step {
                    name: node.name.clone(),
                    op_kind: node.op.kind(),
                    kind,
                    inputs: inputs.collect(),
                    truncate_after,
                    exact_after: (exact && truncate_after && fp.f > 0).then_some(TruncParams { l: fp.l, shift: fp.f }),
                    out_len: shapes[&node.name].iter().product(),
                }
            })
            .collect();
        let output_frac = scale.nodes.last().map_or(fp.f, |n| n.out_scale * fp.f);
        let input_len = public.graph.input_shape.iter().product();
        Ok(Plan { steps, fp, input_len, output_frac })
    }

    /// The value a step reads.
    pub fn arg<'a>(&self, outs: &'a [Vec<u64>], input: &'a [u64], src: Src) -> &'a [u64] {
        match src {
            Src::Input => input,
            Src::Step(p) => &outs[p],
        }
    }

    /// Runs a local step on one party's shares.
    pub fn local(&self, op: Local, args: &[&[u64]]) -> Vec<u64> {
        let fp = self.fp;
        let scale = |v: Vec<u64>, area: usize| -> Vec<u64> {
            let c = fp.pool_factor(area);
            v.into_iter().map(|x| fp.reduce(x.wrapping_mul(c))).collect()
        };
        match op {
            Local::Add => kernels::add(args[0], args[1]).into_iter().map(|v| fp.reduce(v)).collect(),
            Local::AvgPool { shape, kernel, stride } => {
                scale(kernels::pool_sum(args[0], shape, kernel, stride), kernel * kernel)
            }
            Local::GlobalAvgPool { channels, area } => scale(kernels::channel_sum(args[0], channels), area),
            Local::Flatten => args[0].to_vec(),
        }
    }

    /// The linear step that the server may start on step `i`'s linearized neurons while its kept
    /// ReLUs are being evaluated: step `i + 1`, when it is linear and reads step `i`, and step `i`
    /// is a ReLU step whose one round trip is its kept ReLUs (no garbled truncation of linearized
    /// neurons, none after) and whose output is not truncated after.
    pub fn linear_after_relu(&self, i: usize) -> Option<usize> {
        let (step, next) = (self.steps.get(i)?, self.steps.get(i + 1)?);
        let relu = matches!(step.kind, StepKind::Relu { gc: Some(_), linearized: None, .. });
        let reads = matches!(next.kind, StepKind::Linear { .. }) && next.inputs.first() == Some(&Src::Step(i));
        (relu && reads && !step.truncate_after && step.exact_after.is_none()).then_some(i + 1)
    }

    /// Applies step `i`'s local truncation, if any, to `role`'s share (an exact one is the
    /// parties' garbled layer).
    pub fn finish(&self, i: usize, role: Role, mut out: Vec<u64>) -> Vec<u64> {
        if self.steps[i].truncate_after && self.steps[i].exact_after.is_none() {
            truncate_shares(&self.fp, role, &mut out, self.fp.f);
        }
        out
    }
}

/// HE shape of a conv or linear node reading an input of shape `s` (`None` for other nodes).
fn layer_shape(node: &Node, s: &[usize]) -> Option<LayerShape> {
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
pub fn linear_layers(graph: &ValidGraph) -> Vec<(String, LayerShape)> {
    graph.nodes.iter().filter_map(|n| layer_shape(n, graph.input_shape_of(n)).map(|s| (n.name.clone(), s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The narrowed ReLU of local truncation: the circuit `k - s` bits wide, no shift, on the
        /// shares shifted right by `s`, gives `relu(y) >> s` or one less (never below 0, never a
        /// wrong sign), for every split of every `y` in `[-2^(k-1) + 2^s, 2^(k-1))` (the full
        /// width's range but its lowest `2^s` values, which calibration margins never reach).
        #[test]
        fn narrowed_relu_is_off_by_at_most_one_below(y in any::<i64>(), a in any::<u64>(), r in any::<u64>(), k in 14u32..=59) {
            let fp = FixedPoint { l: 59, f: 12 };
            let s = 12;
            let y = (y >> (64 - k)).max(-(1i64 << (k - 1)) + (1 << s));
            let a = fp.reduce(a);
            let b = fp.reduce(fp.from_i64(y).wrapping_sub(a));
            let narrowed = ReluParams { l: fp.l, k: k - s, shift: 0 };
            let r = fp.reduce(r);
            let out = pi_gc::relu::relu_plain(&narrowed, a >> s, b >> s, r);
            let got = fp.to_i64(fp.reduce(out.wrapping_add(r)));
            let want = y.max(0) >> s;
            prop_assert!(got == want || got == (want - 1).max(0), "y={y} got={got} want={want}");
        }
    }

    #[test]
    fn kept_gathers_and_scatters_in_mask_order() {
        let kept = Kept::from_mask(&[false, true, true, false, true]);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.gather(&[10, 11, 12, 13, 14]), vec![11, 12, 14]);
        let mut y = vec![0; 5];
        kept.scatter(&mut y, [7, 8, 9]);
        assert_eq!(y, vec![0, 7, 8, 0, 9]);
    }
}
