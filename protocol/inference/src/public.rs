//! What the server announces about its model: everything the client needs to run the protocol
//! (architecture, ReLU masks, fixed-point parameters, circuit widths) and nothing about the weights.

use crate::share::Truncation;
use pi_model::data::Normalization;
use pi_model::engine::ScalePlan;
use pi_model::graph::{Op, ValidGraph};
use pi_model::{FixedPoint, Model};
use serde::{Deserialize, Serialize};

/// The public part of a served model, sent in the server's greeting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicModel {
    /// Content hash of the model file (`pi inspect` prints it).
    pub hash: String,
    /// The folded graph (no weights), carried as its JSON text (the model file's form).
    #[serde(with = "graph_json")]
    pub graph: ValidGraph,
    pub fp: FixedPoint,
    /// Per graph node: for ReLU nodes the per-element mask (true = real ReLU), else empty.
    pub masks: Vec<Vec<bool>>,
    /// Per graph node: for ReLU nodes the garbled circuit's input width `k` (`|y| < 2^(k-1)`), else 0.
    pub relu_bits: Vec<u32>,
    /// How the client turns pixels into the network's input (the model's preprocessing).
    pub normalization: Normalization,
    /// How both parties rescale shares (the server's choice, `pi serve --truncation`).
    pub truncation: Truncation,
    /// How kept ReLUs read the sign (the server's choice, `pi serve --sign-bits`).
    pub sign_bits: SignBits,
}

/// How a kept ReLU's circuit finds the sign of its input. Serialised as its command-line text
/// (`"all"`, `"14"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SignBits {
    /// From every bit of the calibrated width: exactly `relu` (with `--truncation local`, of the
    /// locally truncated value).
    #[default]
    All,
    /// From the top `m` bits of each share ([`pi_gc::stochastic`], after Circa): the server sends
    /// `m` labels and 8 more bytes online instead of one label per bit of the width; a positive
    /// input below `2^(k - m)` units (`k` the circuit's width) may come out as 0.
    Top(u32),
}

impl SignBits {
    /// The top bits a kept ReLU circuit of (narrowed) width `k` reads its sign from: `Some(m)` when
    /// it is the stochastic gadget, `None` when it reads every bit (`All`, or `k <= m`). The one
    /// rule both parties' plans and `--sign-bits auto` follow.
    pub fn top(&self, k: u32) -> Option<u32> {
        match *self {
            SignBits::Top(m) if k > m => Some(m),
            _ => None,
        }
    }
}

impl std::fmt::Display for SignBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignBits::All => f.write_str("all"),
            SignBits::Top(m) => write!(f, "{m}"),
        }
    }
}

impl From<SignBits> for String {
    fn from(s: SignBits) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for SignBits {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for SignBits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(SignBits::All),
            _ => match s.parse::<u32>() {
                Ok(m) if (2..=64).contains(&m) => Ok(SignBits::Top(m)),
                _ => Err(format!("expected all or a bit count in 2..=64, got {s:?}")),
            },
        }
    }
}

/// Serialises a graph as JSON text inside any serde format (bincode cannot encode its flattened enums).
mod graph_json {
    use pi_model::graph::ValidGraph;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(g: &ValidGraph, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(g).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ValidGraph, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// Largest activation (elements) a peer may announce: bounds the memory a hostile greeting can demand.
pub const MAX_ACTIVATION: usize = 1 << 26;
/// Largest sum of all activations a peer may announce (the client keeps every node's share).
pub const MAX_TOTAL_ACTIVATIONS: usize = 1 << 28;

/// Refuses a graph whose activations exceed [`MAX_ACTIVATION`] elements each or
/// [`MAX_TOTAL_ACTIVATIONS`] in all (products checked, so absurd shapes cannot overflow). The server
/// runs it on a model file before anything allocates by its shapes; clients on the peer's greeting.
pub fn check_activations(graph: &ValidGraph) -> Result<(), PublicModelError> {
    let err = |s: String| PublicModelError(s);
    let mut total = 0usize;
    // In graph order (the input first), so the error names the same activation every time.
    let names = std::iter::once(pi_model::graph::INPUT).chain(graph.nodes.iter().map(|n| n.name.as_str()));
    for (name, s) in names.filter_map(|n| graph.shapes().get(n).map(|s| (n, s))) {
        let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n <= MAX_ACTIVATION);
        let n =
            n.ok_or_else(|| err(format!("activation {name:?} of shape {s:?} exceeds {MAX_ACTIVATION} elements")))?;
        total += n;
    }
    if total > MAX_TOTAL_ACTIVATIONS {
        return Err(err(format!("activations total {total} elements, more than {MAX_TOTAL_ACTIVATIONS}")));
    }
    Ok(())
}

/// What validation computed: every activation's shape and the fixed-point scale plan.
pub(crate) struct Checked<'a> {
    pub shapes: &'a std::collections::HashMap<String, Vec<usize>>,
    pub scale: ScalePlan,
}

/// Why a public model is unusable.
#[derive(Debug, thiserror::Error)]
#[error("inconsistent public model: {0}")]
pub struct PublicModelError(pub String);

impl PublicModel {
    /// Public view of a folded model with the given circuit widths (`None` = full width `l`).
    pub fn new(
        model: &Model,
        hash: String,
        fp: FixedPoint,
        relu_bits: Option<Vec<u32>>,
    ) -> Result<Self, PublicModelError> {
        let shapes = model.graph.shapes();
        let masks = model
            .graph
            .nodes
            .iter()
            .map(|n| match n.op {
                Op::Relu { .. } => model.pixel_mask(n, &shapes[&n.inputs[0]]),
                _ => vec![],
            })
            .collect();
        let relu_bits = relu_bits.unwrap_or_else(|| {
            model.graph.nodes.iter().map(|n| if matches!(n.op, Op::Relu { .. }) { fp.l } else { 0 }).collect()
        });
        let normalization = model.normalization.clone();
        let (truncation, sign_bits) = (Truncation::Local, SignBits::All);
        let graph = model.graph.clone();
        let p = PublicModel { hash, graph, fp, masks, relu_bits, normalization, truncation, sign_bits };
        p.validate()?;
        Ok(p)
    }

    /// Checks a (possibly peer-supplied) public model before use: nothing in it may panic us later.
    pub fn validate(&self) -> Result<(), PublicModelError> {
        self.check().map(|_| ())
    }

    /// [`PublicModel::validate`], returning the facts it computed (shapes once, the scale plan).
    pub(crate) fn check(&self) -> Result<Checked<'_>, PublicModelError> {
        let err = |s: String| PublicModelError(s);
        self.fp.validate().map_err(err)?;
        check_activations(&self.graph)?;
        self.normalization.check(self.graph.input_shape[0]).map_err(|e| err(format!("normalisation: {e}")))?;
        let shapes = self.graph.shapes();
        if self.graph.nodes.iter().any(|n| matches!(n.op, Op::Batchnorm { .. })) {
            return Err(err("graph is not folded".into()));
        }
        if self.masks.len() != self.graph.nodes.len() || self.relu_bits.len() != self.graph.nodes.len() {
            return Err(err("masks / relu_bits do not cover the graph".into()));
        }
        let scale = ScalePlan::new(&self.graph).map_err(|e| err(e.to_string()))?;
        match self.sign_bits {
            SignBits::Top(m) if !(2..=64).contains(&m) => return Err(err(format!("{m} sign bits, not in 2..=64"))),
            SignBits::Top(_) if self.truncation == Truncation::Exact => {
                return Err(err("sign bits other than all need local truncation".into()));
            }
            _ => {}
        }
        for (i, n) in self.graph.nodes.iter().enumerate() {
            let is_relu = matches!(n.op, Op::Relu { .. });
            let len: usize = shapes[&n.inputs[0]].iter().product();
            if is_relu && self.masks[i].len() != len {
                return Err(err(format!(
                    "mask of {:?} has {} entries, activation has {len}",
                    n.name,
                    self.masks[i].len()
                )));
            }
            if !is_relu && !self.masks[i].is_empty() {
                return Err(err(format!("non-ReLU node {:?} has a mask", n.name)));
            }
            let k = self.relu_bits[i];
            let shift = scale.nodes[i].relu_shift_units * self.fp.f;
            if is_relu && (k > self.fp.l || k < shift + 2) {
                return Err(err(format!("ReLU {:?}: circuit width {k} outside {}..={}", n.name, shift + 2, self.fp.l)));
            }
        }
        Ok(Checked { shapes, scale })
    }

    /// Surviving ReLUs (garbled circuits per inference).
    pub fn kept_relus(&self) -> usize {
        self.masks.iter().map(|m| m.iter().filter(|&&b| b).count()).sum()
    }
}

/// Circuit width per node from calibration inputs: the widest ReLU input seen, plus a sign bit and
/// `margin_bits` of headroom, capped at `l`. Non-ReLU nodes get 0.
pub fn calibrate_relu_bits(ring: &pi_model::engine::RingModel, inputs: &[Vec<f32>], margin_bits: u32) -> Vec<u32> {
    let widest = widest_relu_inputs(ring, inputs);
    ring.model
        .graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n.op {
            Op::Relu { .. } => {
                let shift = ring.plan.nodes[i].relu_shift_units * ring.fp.f;
                (64 - widest[i].leading_zeros() + 1 + margin_bits).max(shift + 2).min(ring.fp.l)
            }
            _ => 0,
        })
        .collect()
}

/// Largest `|v|` of each ReLU node's input over `inputs`, on its kept neurons only (linearized
/// ones never enter a circuit); 0 for other nodes and for fully linearized layers.
fn widest_relu_inputs(ring: &pi_model::engine::RingModel, inputs: &[Vec<f32>]) -> Vec<u64> {
    let graph = &ring.model.graph;
    let index = graph.index();
    let masks: Vec<Option<Vec<bool>>> = graph
        .nodes
        .iter()
        .map(|n| matches!(n.op, Op::Relu { .. }).then(|| ring.model.pixel_mask(n, graph.input_shape_of(n))))
        .collect();
    let mut widest = vec![0u64; graph.nodes.len()];
    for x in inputs {
        let Ok(outs) = ring.run_all(ring.encode_input(x)) else { continue };
        for (i, n) in graph.nodes.iter().enumerate() {
            let Some(mask) = &masks[i] else { continue };
            let Some(&p) = index.get(n.inputs[0].as_str()) else { continue };
            let kept = outs[p].iter().zip(mask).filter(|(_, keep)| **keep);
            let m = kept.map(|(&v, _)| ring.fp.to_i64(v).unsigned_abs()).max().unwrap_or(0);
            widest[i] = widest[i].max(m);
        }
    }
    widest
}

/// How one ReLU layer's circuit width fares on inputs it was not chosen from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WidthCheck {
    pub node: String,
    /// The circuit width `k` (a kept neuron's input must satisfy `|v| < 2^(k-1)`).
    pub bits: u32,
    /// Bits (sign included) of the largest input magnitude seen on the checked inputs.
    pub needed_bits: u32,
    /// Inputs of kept neurons that would wrap (`|v| >= 2^(k-1)`: a wrong ReLU output), and how
    /// many were checked.
    pub wraps: u64,
    pub values: u64,
}

/// Checks circuit widths `bits` (one per node, as [`calibrate_relu_bits`] returns) against the
/// activations of `inputs`, on the kept neurons only (linearized ones never enter a circuit).
pub fn check_relu_bits(ring: &pi_model::engine::RingModel, inputs: &[Vec<f32>], bits: &[u32]) -> Vec<WidthCheck> {
    let graph = &ring.model.graph;
    let index = graph.index();
    let relus: Vec<(usize, Vec<bool>)> = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Relu { .. }))
        .map(|(i, n)| (i, ring.model.pixel_mask(n, graph.input_shape_of(n))))
        .collect();
    let mut checks: Vec<WidthCheck> = relus
        .iter()
        .map(|&(i, _)| WidthCheck {
            node: graph.nodes[i].name.clone(),
            bits: bits[i],
            needed_bits: 0,
            wraps: 0,
            values: 0,
        })
        .collect();
    for x in inputs {
        let Ok(outs) = ring.run_all(ring.encode_input(x)) else { continue };
        for ((i, mask), c) in relus.iter().zip(checks.iter_mut()) {
            let Some(&p) = index.get(graph.nodes[*i].inputs[0].as_str()) else { continue };
            let limit = 1u64 << c.bits.saturating_sub(1).min(63);
            for (&v, _) in outs[p].iter().zip(mask).filter(|(_, keep)| **keep) {
                let m = ring.fp.to_i64(v).unsigned_abs();
                c.needed_bits = c.needed_bits.max(65 - m.leading_zeros());
                c.values += 1;
                c.wraps += u64::from(m >= limit);
            }
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_bits_parse_print_and_need_local_truncation() {
        assert_eq!("all".parse::<SignBits>(), Ok(SignBits::All));
        assert_eq!("14".parse::<SignBits>(), Ok(SignBits::Top(14)));
        for bad in ["1", "65", "x", ""] {
            assert!(bad.parse::<SignBits>().is_err(), "{bad:?}");
        }
        assert_eq!(SignBits::Top(14).to_string(), "14");
        assert_eq!(
            (SignBits::Top(14).top(15), SignBits::Top(14).top(14), SignBits::All.top(59)),
            (Some(14), None, None)
        );
        assert_eq!(serde_json::to_string(&SignBits::Top(12)).unwrap(), "\"12\"");
        assert!(serde_json::from_str::<SignBits>("\"1\"").is_err());

        let model = pi_model::Model::random(pi_model::arch::build("small-cnn", 10).unwrap(), 1, Some(0.1)).unwrap();
        let model = model.fold_batchnorm();
        let mut p = PublicModel::new(&model, "h".into(), FixedPoint::DEFAULT, None).unwrap();
        p.sign_bits = SignBits::Top(12);
        assert!(p.validate().is_ok());
        p.truncation = Truncation::Exact;
        assert!(p.validate().unwrap_err().to_string().contains("local truncation"));
        p.sign_bits = SignBits::Top(70); // a hostile greeting
        assert!(p.validate().is_err());
    }
}
