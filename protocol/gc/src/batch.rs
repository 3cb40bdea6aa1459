//! Many instances of one circuit with arithmetic output, garbled or evaluated in parallel on all
//! cores (rayon over groups of [`LANES`] instances). Instance `i` of a batch is circuit id
//! `first_id + i`. Each instance costs `32·n_and` bytes of AND tables and `8·n_out` bytes of
//! arithmetic-output ciphertexts (`24·n_out` if scaled); a group of `m` instances (`m = LANES` except
//! perhaps the last) occupies `m` records' bytes: first gate by gate, the `m` tables of each gate side
//! by side, then output by output, the `m` ciphertexts side by side ([`Layout::interleaved`]; scaled:
//! every output's `T_A ‖ T_B`, then every output's `T_P`). The lock-step backends then read and write
//! whole cache lines.

use crate::arith::{
    ARITH_CT_BYTES, Conversion, SCALED_AB_BYTES, SCALED_P_BYTES, evaluate_arith, evaluate_scaled, garble_arith,
    garble_scaled,
};
use crate::circuit::{Bit, Circuit};
use crate::cpu::Backend;
use crate::evaluate::evaluate_lanes_on;
use crate::fancy::Fancy;
use crate::garble::{AND_TABLE_BYTES, garble_lanes_on};
use crate::relu::relu_gadget;
use crate::stochastic::{StochasticParams, stochastic_gadget};
use crate::{Delta, Group, LANES, Label, Layout, ReluParams};
use rayon::prelude::*;
use zeroize::Zeroize;

/// How an [`ArithCircuit`]'s output bits make its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// `Σ z_o·weights[o]`: one output per weight.
    Sum,
    /// `p · Σ y_o·weights[o]`: the outputs are the `y_o`, one per weight, followed by the one scale bit `p`.
    Scaled,
}

/// A circuit whose output bits `z_o` are read as the ring element `Σ z_o·weights[o] mod 2^l`, or, if
/// it is *scaled*, whose outputs are `y_0 .. y_{n-1}` and then one scale bit `p`, read as
/// `p · Σ y_o·weights[o]` (the product garbled by [`crate::arith::garble_scaled`], cheaper than an AND
/// gate per output). The fields are private: the AND count is cached, and a ReLU gadget's circuit is
/// the one recorded from the gadget itself ([`ArithCircuit::relu`]), so the lock-step backends, which
/// run the gadget, and the interpreters, which run the circuit, cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArithCircuit {
    circuit: Circuit,
    /// `circuit.n_and()`, counted once (the batch entry points need it per group).
    n_and: usize,
    weights: Vec<u64>,
    /// `2^l - 1`.
    mask: u64,
    reading: Reading,
    /// The gadget this circuit records, if it is one: such batches run on the lock-step backends
    /// where the CPU allows, with identical output.
    gadget: Option<LockstepGadget>,
}

impl ArithCircuit {
    /// Reads `circuit`'s outputs as `Σ z_o·weights[o] mod (mask + 1)`; panics unless there is one weight
    /// per output and all outputs are wires.
    pub fn new(circuit: Circuit, weights: Vec<u64>, mask: u64) -> Self {
        assert_eq!(circuit.outputs.len(), weights.len(), "one weight per output");
        Self::with_reading(circuit, weights, mask, Reading::Sum)
    }

    /// Reads `circuit`'s outputs `y_0 .. y_{n-1}, p` as `p · Σ y_o·weights[o] mod (mask + 1)`; panics
    /// unless there is one weight per output before the scale bit and all outputs are wires.
    pub fn scaled(circuit: Circuit, weights: Vec<u64>, mask: u64) -> Self {
        assert_eq!(circuit.outputs.len(), weights.len() + 1, "one weight per output, then the scale bit");
        Self::with_reading(circuit, weights, mask, Reading::Scaled)
    }

    /// The ReLU gadget for `p` ([`crate::relu::relu_gadget`]), recorded as a scaled circuit whose output
    /// bit `o` weighs `2^o` in `Z_{2^l}`. Batches of it run on the lock-step backends where the CPU has
    /// AVX-512 and VAES; panics if `p` is invalid.
    pub fn relu(p: &ReluParams) -> Self {
        let circuit = crate::relu::relu_circuit(p);
        let weights = (0..p.out_bits()).map(|o| 1u64 << o).collect();
        Self { gadget: Some(LockstepGadget::Relu(*p)), ..Self::scaled(circuit, weights, p.mask()) }
    }

    /// This circuit, recorded from `gadget`, marked as such: batches of it then run on the
    /// lock-step backends where the CPU allows.
    pub(crate) fn recorded_from(self, gadget: LockstepGadget) -> Self {
        Self { gadget: Some(gadget), ..self }
    }

    fn with_reading(circuit: Circuit, weights: Vec<u64>, mask: u64, reading: Reading) -> Self {
        assert!(circuit.outputs.iter().all(|o| matches!(o, Bit::Wire(_))), "outputs must be wires");
        Self { n_and: circuit.n_and(), circuit, weights, mask, reading, gadget: None }
    }

    /// Whether the outputs end with a scale bit (see the type's documentation).
    pub fn is_scaled(&self) -> bool {
        self.reading == Reading::Scaled
    }

    /// The Boolean circuit.
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The weight of each output bit (scaled: of each output before the scale bit).
    pub fn weights(&self) -> &[u64] {
        &self.weights
    }

    /// `2^l - 1` of the ring `Z_{2^l}` the value lives in.
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// The gadget this circuit records, if any.
    pub(crate) fn gadget(&self) -> Option<LockstepGadget> {
        self.gadget
    }

    /// Garbled AND gates (half-gates tables) per instance.
    pub fn n_and(&self) -> usize {
        self.n_and
    }

    /// AND gates of the function per instance: the garbled ones, plus one per scaled output (each
    /// computes `y_o ∧ p`).
    pub fn and_count(&self) -> usize {
        self.n_and + if self.is_scaled() { self.weights.len() } else { 0 }
    }

    /// AND-table bytes per instance.
    pub fn and_bytes(&self) -> usize {
        AND_TABLE_BYTES * self.n_and
    }

    /// Fixed-key AES blocks hashed per instance by (garbler, evaluator): 4 and 2 per garbled AND; per
    /// output 2 and 1, plus for scaled outputs the scale bit's 2 and 1 per pair of outputs.
    pub fn hashes_per_instance(&self) -> (usize, usize) {
        let (n, pairs) = (self.weights.len(), if self.is_scaled() { self.weights.len().div_ceil(2) } else { 0 });
        (4 * self.n_and + 2 * n + 2 * pairs, 2 * self.n_and + n + pairs)
    }

    /// Output-ciphertext bytes per instance.
    pub fn ct_bytes(&self) -> usize {
        self.weights.len() * if self.is_scaled() { SCALED_AB_BYTES + SCALED_P_BYTES } else { ARITH_CT_BYTES }
    }

    /// Bytes per instance on the wire (tables + output ciphertexts).
    pub fn record_bytes(&self) -> usize {
        self.and_bytes() + self.ct_bytes()
    }

    /// First hash index of the output ciphertexts (AND gates use `0..2·n_and`).
    pub(crate) fn arith_index(&self) -> u64 {
        2 * self.n_and as u64
    }

    /// The conversion of the outputs into shares, on `backend`.
    fn conversion(&self, backend: Backend) -> Conversion<'_> {
        Conversion::new(&self.weights, self.mask, self.arith_index()).on(backend)
    }

    /// Plaintext interpreter: `Σ z_o·w_o mod 2^l` (times the scale bit if scaled).
    pub fn eval_plain(&self, garbler: &[bool], evaluator: &[bool]) -> u64 {
        let bits = self.circuit.eval_plain(garbler, evaluator);
        let sum = bits.iter().zip(&self.weights).fold(0u64, |acc, (&z, &w)| if z { acc.wrapping_add(w) } else { acc });
        let scale = !self.is_scaled() || bits[self.weights.len()];
        if scale { sum & self.mask } else { 0 }
    }

    /// Garbler side of the outputs of one group of `ids.len()` instances (interpreter path):
    /// `out` are the output zero-labels, instance-major; `cts` the group's ciphertext bytes.
    pub(crate) fn garble_outputs(
        &self,
        backend: Backend,
        out: &[Label],
        delta: &Delta,
        ids: &[u64],
        cts: &mut [u8],
        r: &mut [u64],
    ) {
        let (lanes, n, conv) = (ids.len(), self.weights.len(), self.conversion(backend));
        match self.reading {
            Reading::Scaled => {
                let (ab, p) = cts.split_at_mut(lanes * n * SCALED_AB_BYTES);
                let (abl, pl) =
                    (Layout::interleaved(SCALED_AB_BYTES, lanes), Layout::interleaved(SCALED_P_BYTES, lanes));
                garble_scaled(out, conv, delta, ids, (ab, abl), (p, pl), r);
            }
            Reading::Sum => garble_arith(out, conv, delta, ids, (cts, Layout::interleaved(ARITH_CT_BYTES, lanes)), r),
        }
    }

    /// Copies each instance's scale-bit label (a scaled circuit's last output) from the output
    /// labels `out` (instance-major) to `scale`; leaves `scale` as it is for other circuits.
    fn scale_labels(&self, out: &[Label], scale: &mut [Label]) {
        if self.is_scaled() {
            let nout = self.circuit.outputs.len();
            scale.iter_mut().zip(out.chunks_exact(nout)).for_each(|(s, o)| *s = o[nout - 1]);
        }
    }

    /// Evaluator side of [`Self::garble_outputs`].
    pub(crate) fn evaluate_outputs(&self, backend: Backend, out: &[Label], ids: &[u64], cts: &[u8], v: &mut [u64]) {
        let (lanes, n, conv) = (ids.len(), self.weights.len(), self.conversion(backend));
        match self.reading {
            Reading::Scaled => {
                let (ab, p) = cts.split_at(lanes * n * SCALED_AB_BYTES);
                let (abl, pl) =
                    (Layout::interleaved(SCALED_AB_BYTES, lanes), Layout::interleaved(SCALED_P_BYTES, lanes));
                evaluate_scaled(out, conv, ids, (ab, abl), (p, pl), v);
            }
            Reading::Sum => evaluate_arith(out, conv, ids, (cts, Layout::interleaved(ARITH_CT_BYTES, lanes)), v),
        }
    }
}

/// A gadget written over [`Fancy`] that the lock-step backends run directly (the circuit of an
/// [`ArithCircuit`] recorded from it, so both give the same bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockstepGadget {
    /// [`crate::relu::relu_gadget`].
    Relu(ReluParams),
    /// [`crate::stochastic::stochastic_gadget`].
    Stochastic(StochasticParams),
}

impl LockstepGadget {
    /// Runs the gadget on backend `f`.
    #[inline(always)]
    pub(crate) fn run<F: Fancy>(&self, f: &mut F) {
        match self {
            LockstepGadget::Relu(p) => relu_gadget(f, p),
            LockstepGadget::Stochastic(p) => stochastic_gadget(f, p),
        }
    }
}

/// Consecutive instances `first_id ..` of a batch: their input labels in batch order
/// ([`input_index`]) and their records (`R` is `&mut [u8]` when garbling, `&[u8]` when evaluating).
pub(crate) struct Batch<'a, R> {
    pub(crate) first_id: u64,
    pub(crate) gin: &'a [Label],
    pub(crate) ein: &'a [Label],
    pub(crate) records: R,
}

/// Where input bit `bit` of instance `j` sits among the input labels of a batch of `n` instances
/// with `bits` inputs each (of one party): the groups of [`LANES`] instances one after the other, and
/// inside a group of `m` instances bit by bit, the `m` instances side by side. The lock-step backends
/// then load a wire of a whole group with four 64-byte reads.
pub fn input_index(n: usize, bits: usize, j: usize, bit: usize) -> usize {
    let g0 = j / LANES * LANES;
    g0 * bits + bit * (n - g0).min(LANES) + (j - g0)
}

/// The low `bits` bits of each of `values`, in batch input order ([`input_index`]).
pub fn input_bits(values: &[u64], bits: usize) -> impl Iterator<Item = bool> + '_ {
    values.chunks(LANES).flat_map(move |g| (0..bits).flat_map(move |i| g.iter().map(move |&v| (v >> i) & 1 == 1)))
}

/// One group's input labels from batch order to instance-major order (what the interpreters read).
pub(crate) fn instance_major(labels: &[Label], lanes: usize, bits: usize) -> Vec<Label> {
    (0..lanes).flat_map(|t| (0..bits).map(move |i| labels[i * lanes + t])).collect()
}

/// Garbles `r.len()` instances on the fastest backend this CPU runs. `gin`/`ein`: input zero-labels
/// in batch order ([`input_index`]); `records`: output, `record_bytes()` per instance; `r`: the
/// garbler's output offsets `R_sum` per instance.
pub fn garble_batch(
    ac: &ArithCircuit,
    delta: &Delta,
    first_id: u64,
    gin: &[Label],
    ein: &[Label],
    records: &mut [u8],
    r: &mut [u64],
) {
    let mut scale = vec![Label::default(); r.len()];
    garble_batch_on(Backend::best(), ac, delta, Batch { first_id, gin, ein, records }, r, &mut scale);
    scale.iter_mut().for_each(|l| l.0.zeroize());
}

/// [`garble_batch`] on a chosen backend (the same bytes on every backend).
pub(crate) fn garble_batch_on(
    backend: Backend,
    ac: &ArithCircuit,
    delta: &Delta,
    batch: Batch<'_, &mut [u8]>,
    r: &mut [u64],
    scale: &mut [Label],
) {
    let Batch { first_id, gin, ein, records } = batch;
    let n = r.len();
    assert_eq!(scale.len(), n);
    let (ng, ne) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs);
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    let tasks = records.par_chunks_mut(PASS * rec).zip(r.par_chunks_mut(PASS)).zip(scale.par_chunks_mut(PASS));
    tasks.enumerate().for_each(|(c, ((recs, rs), sc))| {
        let i0 = c * PASS;
        let fast = lockstep_instances(backend, ac, rs.len());
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = backend.vaes() {
            for g in 0..fast / LANES {
                let i = i0 + g * LANES;
                let (cur, next) = recs[g * LANES * rec..fast * rec].split_at_mut(LANES * rec);
                let ahead = ahead(ac, &gin[..(i0 + fast) * ng], &ein[..(i0 + fast) * ne], next, i + LANES);
                let (gl, el) = (&gin[i * ng..(i + LANES) * ng], &ein[i * ne..(i + LANES) * ne]);
                let group = Batch { first_id: first_id + i as u64, gin: gl, ein: el, records: cur };
                let (rs, sc) = (&mut rs[g * LANES..(g + 1) * LANES], &mut sc[g * LANES..(g + 1) * LANES]);
                crate::lockstep::garble_relus(cpu, ac, delta, group, ahead, rs, sc);
            }
        }
        let groups = recs[fast * rec..].chunks_mut(LANES * rec).zip(rs[fast..].chunks_mut(LANES));
        for (g, ((recs, rs), sc)) in groups.zip(sc[fast..].chunks_mut(LANES)).enumerate() {
            let i = i0 + fast + g * LANES;
            let out = garble_group(backend, ac, delta, Batch { first_id, gin, ein, records: recs }, i, rs);
            ac.scale_labels(&out, sc);
        }
    });
}

/// The interpreters on the group of `r.len()` instances from batch instance `i` (`batch.records`:
/// the group's); returns the output zero-labels, instance-major.
fn garble_group(
    backend: Backend,
    ac: &ArithCircuit,
    delta: &Delta,
    batch: Batch<'_, &mut [u8]>,
    i: usize,
    r: &mut [u64],
) -> Vec<Label> {
    let lanes = r.len();
    let (ids, gl, el, mut out) = interpreter_group(ac, batch.first_id, batch.gin, batch.ein, i, lanes);
    let (tables, cts) = batch.records.split_at_mut(lanes * ac.and_bytes());
    let layout = Layout::interleaved(AND_TABLE_BYTES, lanes);
    let group = Group { ids: &ids, gin: &gl, ein: &el, tables, layout, out: &mut out };
    garble_lanes_on(backend, &ac.circuit, delta, group);
    ac.garble_outputs(backend, &out, delta, &ids, cts, r);
    out
}

/// [`garble_batch`] for a scaled circuit whose scale bit is used again online
/// ([`crate::arith::garble_online_scaled`]): also writes each instance's scale-bit zero-label to
/// `scale` (the same records as [`garble_batch`]).
#[allow(clippy::too_many_arguments)] // garble_batch's arguments and the one output it adds
pub fn garble_batch_keeping_scale(
    ac: &ArithCircuit,
    delta: &Delta,
    first_id: u64,
    gin: &[Label],
    ein: &[Label],
    records: &mut [u8],
    r: &mut [u64],
    scale: &mut [Label],
) {
    assert!(ac.is_scaled(), "the circuit has no scale bit");
    garble_batch_on(Backend::best(), ac, delta, Batch { first_id, gin, ein, records }, r, scale)
}

/// Evaluates `v.len()` instances from their active input labels (batch order) and records, on the
/// fastest backend this CPU runs; `v` receives `V = R_sum + Σ z_o w_o mod 2^l` per instance (times the
/// scale bit if the circuit is scaled).
pub fn evaluate_batch(ac: &ArithCircuit, first_id: u64, gin: &[Label], ein: &[Label], records: &[u8], v: &mut [u64]) {
    let mut scale = vec![Label::default(); v.len()];
    evaluate_batch_on(Backend::best(), ac, Batch { first_id, gin, ein, records }, v, &mut scale)
}

/// [`evaluate_batch`] on a chosen backend (the same values on every backend).
pub(crate) fn evaluate_batch_on(
    backend: Backend,
    ac: &ArithCircuit,
    batch: Batch<'_, &[u8]>,
    v: &mut [u64],
    scale: &mut [Label],
) {
    let Batch { first_id, gin, ein, records } = batch;
    let n = v.len();
    assert_eq!(scale.len(), n);
    let (ng, ne) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs);
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    let tasks = records.par_chunks(PASS * rec).zip(v.par_chunks_mut(PASS)).zip(scale.par_chunks_mut(PASS));
    tasks.enumerate().for_each(|(c, ((recs, vs), sc))| {
        let i0 = c * PASS;
        let fast = lockstep_instances(backend, ac, vs.len());
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = backend.vaes() {
            for g in 0..fast / LANES {
                let i = i0 + g * LANES;
                let (cur, next) = recs[g * LANES * rec..fast * rec].split_at(LANES * rec);
                let ahead = ahead(ac, &gin[..(i0 + fast) * ng], &ein[..(i0 + fast) * ne], next, i + LANES);
                let (gl, el) = (&gin[i * ng..(i + LANES) * ng], &ein[i * ne..(i + LANES) * ne]);
                let group = Batch { first_id: first_id + i as u64, gin: gl, ein: el, records: cur };
                let (vs, sc) = (&mut vs[g * LANES..(g + 1) * LANES], &mut sc[g * LANES..(g + 1) * LANES]);
                crate::lockstep::evaluate_relus(cpu, ac, group, ahead, vs, sc);
            }
        }
        let groups = recs[fast * rec..].chunks(LANES * rec).zip(vs[fast..].chunks_mut(LANES));
        for (g, ((recs, vs), sc)) in groups.zip(sc[fast..].chunks_mut(LANES)).enumerate() {
            let i = i0 + fast + g * LANES;
            let out = evaluate_group(backend, ac, Batch { first_id, gin, ein, records: recs }, i, vs);
            ac.scale_labels(&out, sc);
        }
    });
}

/// The interpreters' evaluation of the group of `v.len()` instances from batch instance `i`; returns
/// the active output labels, instance-major.
fn evaluate_group(backend: Backend, ac: &ArithCircuit, batch: Batch<'_, &[u8]>, i: usize, v: &mut [u64]) -> Vec<Label> {
    let lanes = v.len();
    let (ids, gl, el, mut out) = interpreter_group(ac, batch.first_id, batch.gin, batch.ein, i, lanes);
    let (tables, cts) = batch.records.split_at(lanes * ac.and_bytes());
    let layout = Layout::interleaved(AND_TABLE_BYTES, lanes);
    evaluate_lanes_on(backend, &ac.circuit, Group { ids: &ids, gin: &gl, ein: &el, tables, layout, out: &mut out });
    ac.evaluate_outputs(backend, &out, &ids, cts, v);
    out
}

/// Evaluator side of [`garble_batch_keeping_scale`]: [`evaluate_batch`], and each instance's active
/// scale-bit label in `scale`.
pub fn evaluate_batch_keeping_scale(
    ac: &ArithCircuit,
    first_id: u64,
    gin: &[Label],
    ein: &[Label],
    records: &[u8],
    v: &mut [u64],
    scale: &mut [Label],
) {
    assert!(ac.is_scaled(), "the circuit has no scale bit");
    evaluate_batch_on(Backend::best(), ac, Batch { first_id, gin, ein, records }, v, scale)
}

/// What the interpreters need for the `lanes` instances from batch instance `i`: circuit ids, input
/// labels in instance-major order, and room for the output labels.
fn interpreter_group(
    ac: &ArithCircuit,
    first_id: u64,
    gin: &[Label],
    ein: &[Label],
    i: usize,
    lanes: usize,
) -> (Vec<u64>, Vec<Label>, Vec<Label>, Vec<Label>) {
    let (ng, ne) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs);
    let ids = (0..lanes as u64).map(|j| first_id + i as u64 + j).collect();
    let gl = instance_major(&gin[i * ng..(i + lanes) * ng], lanes, ng);
    let el = instance_major(&ein[i * ne..(i + lanes) * ne], lanes, ne);
    (ids, gl, el, vec![Label::default(); lanes * ac.circuit.outputs.len()])
}

/// What the lock-step backends prefetch while they run one group: the next group of the task, whose
/// records start `next` (the rest of the task's records) and whose labels start at instance `i`
/// (all empty after the last group).
#[cfg(target_arch = "x86_64")]
fn ahead<'a>(
    ac: &ArithCircuit,
    gin: &'a [Label],
    ein: &'a [Label],
    next: &'a [u8],
    i: usize,
) -> crate::lockstep::Ahead<'a> {
    let take = |l: &'a [Label], per: usize| l.get(i * per..(i + LANES) * per).unwrap_or(&[]);
    crate::lockstep::Ahead {
        records: &next[..next.len().min(LANES * ac.record_bytes())],
        gin: take(gin, ac.circuit.n_garbler_inputs),
        ein: take(ein, ac.circuit.n_evaluator_inputs),
    }
}

/// Instances per parallel task: eight groups, run one after the other so that each prefetches the next.
const PASS: usize = 8 * LANES;

/// How many of a task's `n` instances (from its start) the lock-step backends take: its whole
/// groups, if the circuit is recorded from a lock-step gadget and the backend is VAES (which includes AVX-512); else none.
fn lockstep_instances(backend: Backend, ac: &ArithCircuit, n: usize) -> usize {
    if cfg!(target_arch = "x86_64") && ac.gadget.is_some() && backend.vaes().is_some() {
        return n / LANES * LANES;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::garble::encode;
    use crate::relu::{ReluParams, relu_arith_circuit};
    use pi_model::fixed::FixedPoint;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Garbles and evaluates `a.len()` ReLUs in a batch; returns `V - R` per ReLU (should be `z`).
    fn run(
        p: &ReluParams,
        a: &[u64],
        b: &[u64],
        delta: &Delta,
        eval_delta: &Delta,
        first_id: u64,
        seed: u64,
    ) -> Vec<u64> {
        let ac = relu_arith_circuit(p);
        let n = a.len();
        let k = p.k as usize;
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
        let gz: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
        let mut records = vec![0u8; n * ac.record_bytes()];
        let mut r = vec![0u64; n];
        garble_batch(&ac, delta, first_id, &gz, &ez, &mut records, &mut r);
        let gbits: Vec<bool> = input_bits(a, k).collect();
        let ebits: Vec<bool> = input_bits(b, k).collect();
        let ga: Vec<Label> = gz.iter().zip(&gbits).map(|(&z, &x)| encode(z, x, eval_delta)).collect();
        let ea: Vec<Label> = ez.iter().zip(&ebits).map(|(&z, &x)| encode(z, x, eval_delta)).collect();
        let mut v = vec![0u64; n];
        evaluate_batch(&ac, first_id, &ga, &ea, &records, &mut v);
        v.iter().zip(&r).map(|(&v, &r)| v.wrapping_sub(r) & p.mask()).collect()
    }

    fn reference(p: &ReluParams, a: u64, b: u64) -> u64 {
        let fk = FixedPoint { l: p.k, f: 0 };
        let y = fk.to_i64(a.wrapping_add(b) & fk.mask());
        (y.max(0) >> p.shift) as u64
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn batch_matches_plaintext(l in 16u32..=64, shift_frac in 0.0f64..1.0, k_frac in 0.0f64..1.0,
                                   n in 1usize..300, seed in any::<u64>(), first_id in any::<u32>()) {
            let shift = ((l / 2 - 1) as f64 * shift_frac) as u32;
            let k = shift + 2 + ((l - shift - 2) as f64 * k_frac) as u32;
            let p = ReluParams { l, k, shift };
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let a: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
            let b: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
            let delta = Delta::random(&mut rng);
            let got = run(&p, &a, &b, &delta, &delta, first_id as u64, seed);
            for i in 0..n {
                prop_assert_eq!(got[i], reference(&p, a[i], b[i]), "i={}", i);
            }
        }
    }

    /// blake3 of the records, `R` and `V` of `n` instances of `ac` garbled and evaluated on `backend`
    /// from seeded labels (instance ids from 5, random active labels).
    fn transcript_hash(backend: Backend, ac: &ArithCircuit, n: usize, seed: u64) -> String {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
        let delta = Delta::random(&mut rng);
        let c = ac.circuit();
        let gz: Vec<Label> = (0..n * c.n_garbler_inputs).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..n * c.n_evaluator_inputs).map(|_| Label(rng.random())).collect();
        let mut records = vec![0u8; n * ac.record_bytes()];
        let mut r = vec![0u64; n];
        let (mut gs, mut es) = (vec![Label::default(); n], vec![Label::default(); n]);
        let batch = Batch { first_id: 5, gin: &gz, ein: &ez, records: &mut records[..] };
        garble_batch_on(backend, ac, &delta, batch, &mut r, &mut gs);
        let flip = |z: &Label, bit: bool| if bit { *z ^ delta.as_label() } else { *z };
        let ga: Vec<Label> = gz.iter().map(|z| flip(z, rng.random())).collect();
        let ea: Vec<Label> = ez.iter().map(|z| flip(z, rng.random())).collect();
        let mut v = vec![0u64; n];
        evaluate_batch_on(backend, ac, Batch { first_id: 5, gin: &ga, ein: &ea, records: &records }, &mut v, &mut es);
        let mut h = blake3::Hasher::new();
        h.update(&records);
        for x in r.iter().chain(&v) {
            h.update(&x.to_le_bytes());
        }
        // The scale labels of a gadget whose scale bit is used again (not in the golden transcripts).
        if matches!(ac.gadget(), Some(LockstepGadget::Stochastic(_))) {
            gs.iter().chain(&es).for_each(|l| _ = h.update(&l.to_bytes()));
        }
        h.finalize().to_hex().to_string()
    }

    /// Checks `backend` against transcripts recorded before the crate split (2026-11): the wire format
    /// (tables, ciphertexts, input order) and the shares must not change.
    fn check_golden_transcripts(backend: Backend) {
        let golden = [
            (
                ReluParams { l: 59, k: 32, shift: 12 },
                300,
                "031161763e7f9630d3512fca833aec54982e04318c26318b782e66c255d66c5d",
            ),
            (
                ReluParams { l: 64, k: 64, shift: 0 },
                37,
                "180eb06c82bfa8c3a6ecce6cb5803a83f5aff7454a97956972c37413a7beb272",
            ),
            (
                ReluParams { l: 16, k: 10, shift: 3 },
                16,
                "75edcbc6279e52708792014ca99c2155acf649a154e36e8f1908e11a67792fcc",
            ),
        ];
        for (p, n, want) in golden {
            assert_eq!(transcript_hash(backend, &relu_arith_circuit(&p), n, 9), want, "{backend:?}: ReLU {p:?}, {n}");
        }
        // A circuit with plain (not scaled) arithmetic outputs: the all-Boolean ReLU.
        let p = ReluParams { l: 59, k: 32, shift: 12 };
        let c = crate::relu::relu_circuit_with_mask(&p);
        let weights = (0..c.outputs.len()).map(|o| 1u64 << o).collect();
        let ac = ArithCircuit::new(c, weights, p.mask());
        let want = "7ec0fc85eb397c40890cffa79714a27d264979cfb0c5493497bb1999f3c81047";
        assert_eq!(transcript_hash(backend, &ac, 50, 10), want, "{backend:?}: plain arithmetic outputs");
    }

    #[test]
    fn default_backend_reproduces_the_golden_transcripts() {
        check_golden_transcripts(Backend::best());
    }

    /// The portable interpreters run everywhere, whatever the CPU offers.
    #[test]
    fn portable_backend_reproduces_the_golden_transcripts() {
        check_golden_transcripts(Backend::Portable);
    }

    #[test]
    #[ignore = "needs AVX-512F/VL/BW; .ci/run runs every `simd_avx512_` test where the CPU has it"]
    fn simd_avx512_backend_reproduces_the_golden_transcripts() {
        check_golden_transcripts(Backend::Avx512(crate::cpu::require_avx512()));
    }

    #[test]
    #[ignore = "needs AVX-512F/VL/BW + VAES; .ci/run runs every `simd_` test where the CPU has them"]
    fn simd_vaes_backend_reproduces_the_golden_transcripts() {
        check_golden_transcripts(Backend::Vaes(crate::cpu::require_vaes()));
    }

    /// Random shapes and ids (ragged tails, several tasks): the portable and the default backend give
    /// the same bytes.
    #[test]
    fn portable_and_default_backends_agree_on_random_batches() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(77);
        for (p, n) in
            [(ReluParams { l: 59, k: 32, shift: 12 }, 2 * PASS + 19), (ReluParams { l: 40, k: 24, shift: 8 }, 33)]
        {
            let ac = relu_arith_circuit(&p);
            let seed = rng.random();
            assert_eq!(
                transcript_hash(Backend::Portable, &ac, n, seed),
                transcript_hash(Backend::best(), &ac, n, seed)
            );
        }
        // The stochastic ReLU, its scale labels included.
        for (p, n) in [
            (StochasticParams { l: 59, k: 24, sign_bits: 14 }, 2 * PASS + 19),
            (StochasticParams { l: 64, k: 64, sign_bits: 2 }, 17),
        ] {
            let (ac, seed) = (p.arith_circuit(), rng.random());
            assert_eq!(
                transcript_hash(Backend::Portable, &ac, n, seed),
                transcript_hash(Backend::best(), &ac, n, seed)
            );
        }
    }

    #[test]
    fn input_order_is_a_permutation_that_input_bits_follows() {
        for n in [1, 15, 16, 17, 40, 300] {
            let bits = 5;
            let values: Vec<u64> = (0..n as u64).map(|j| j * 0x9e37_79b9 % 32).collect();
            let order: Vec<bool> = input_bits(&values, bits).collect();
            let mut seen = vec![false; n * bits];
            for (j, &v) in values.iter().enumerate() {
                for bit in 0..bits {
                    let at = input_index(n, bits, j, bit);
                    assert!(!seen[at], "position {at} used twice");
                    seen[at] = true;
                    assert_eq!(order[at], (v >> bit) & 1 == 1, "n={n} j={j} bit={bit}");
                }
            }
            let group =
                instance_major(&(0..(n.min(LANES) * bits) as u128).map(Label).collect::<Vec<_>>(), n.min(LANES), bits);
            for j in 0..n.min(LANES) {
                for bit in 0..bits {
                    assert_eq!(group[j * bits + bit].0, input_index(n, bits, j, bit) as u128);
                }
            }
        }
    }

    #[test]
    fn flipped_delta_gives_wrong_results() {
        let p = ReluParams { l: 59, k: 32, shift: 12 };
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(11);
        let a: Vec<u64> = (0..16).map(|_| rng.random::<u64>() & p.mask()).collect();
        // Positive activations, so that the correct output is nonzero and has many set bits.
        let b: Vec<u64> = a.iter().map(|&x| ((1u64 << 30) - 1).wrapping_sub(x) & p.mask()).collect();
        let delta = Delta::random(&mut rng);
        let good = run(&p, &a, &b, &delta, &delta, 0, 1);
        for i in 0..16 {
            assert_eq!(good[i], reference(&p, a[i], b[i]));
        }
        let bad = Delta::new(delta.as_u128() ^ 0x100).unwrap();
        let wrong = run(&p, &a, &b, &delta, &bad, 0, 1);
        assert!((0..16).all(|i| wrong[i] != good[i]));
    }
}
