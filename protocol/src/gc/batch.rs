//! Many instances of one circuit with arithmetic output, garbled or evaluated in parallel on all
//! cores (rayon over groups of [`LANES`] instances). Instance `i` of a batch is circuit id
//! `first_id + i`. Each instance costs `32·n_and` bytes of AND tables and `8·n_out` bytes of
//! arithmetic-output ciphertexts (`24·n_out` if scaled); a group of `m` instances (`m = LANES` except
//! perhaps the last) occupies `m` records' bytes: first gate by gate, the `m` tables of each gate side
//! by side, then output by output, the `m` ciphertexts side by side ([`Layout::interleaved`]; scaled:
//! every output's `T_A ‖ T_B`, then every output's `T_P`). The lock-step backends then read and write
//! whole cache lines.

use super::arith::{ARITH_CT_BYTES, SCALED_AB_BYTES, SCALED_P_BYTES, evaluate_arith, evaluate_scaled, garble_arith, garble_scaled};
use super::circuit::Circuit;
use super::evaluate::evaluate_lanes;
use super::garble::{AND_TABLE_BYTES, garble_lanes};
use super::{Delta, LANES, Label, Layout, ReluParams};
use rayon::prelude::*;

/// A circuit whose output bits `z_o` are read as the ring element `Σ z_o·weights[o] mod 2^l`, or, if
/// it is *scaled*, whose last output is a scale bit `p` and whose value is `p · Σ z_o·weights[o]`
/// (the product garbled by [`super::arith::garble_scaled`], cheaper than an AND gate per output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArithCircuit {
    circuit: Circuit,
    /// `circuit.n_and()`, counted once (the batch entry points need it per group).
    n_and: usize,
    pub weights: Vec<u64>,
    /// `2^l - 1`.
    pub mask: u64,
    /// The ReLU gadget this circuit records, if it is one: such batches run on the lock-step
    /// backends ([`super::lockstep`]) where the CPU allows, with identical output.
    pub gadget: Option<ReluParams>,
    /// Whether the last output is a scale bit (see the type's documentation).
    scaled: bool,
}

impl ArithCircuit {
    /// Wraps `circuit`; panics if the weights do not match the outputs or an output is constant.
    pub fn new(circuit: Circuit, weights: Vec<u64>, mask: u64) -> Self {
        assert_eq!(circuit.outputs.len(), weights.len(), "one weight per output");
        assert!(circuit.outputs.iter().all(|o| matches!(o, super::Bit::Wire(_))), "outputs must be wires");
        Self { n_and: circuit.n_and(), circuit, weights, mask, gadget: None, scaled: false }
    }

    /// Wraps `circuit` whose last output is the scale bit; panics unless there is one weight per
    /// other output and all outputs are wires.
    pub fn scaled(circuit: Circuit, weights: Vec<u64>, mask: u64) -> Self {
        assert_eq!(circuit.outputs.len(), weights.len() + 1, "one weight per output, then the scale bit");
        assert!(circuit.outputs.iter().all(|o| matches!(o, super::Bit::Wire(_))), "outputs must be wires");
        Self { n_and: circuit.n_and(), circuit, weights, mask, gadget: None, scaled: true }
    }

    /// Whether the last output is a scale bit.
    pub fn is_scaled(&self) -> bool {
        self.scaled
    }

    /// The Boolean circuit (read-only: the AND count is cached).
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// Garbled AND gates (half-gates tables) per instance.
    pub fn n_and(&self) -> usize {
        self.n_and
    }

    /// AND gates of the function per instance: the garbled ones, plus one per scaled output (each
    /// computes `y_o ∧ p`).
    pub fn and_count(&self) -> usize {
        self.n_and + if self.scaled { self.weights.len() } else { 0 }
    }

    /// AND-table bytes per instance.
    pub fn and_bytes(&self) -> usize {
        AND_TABLE_BYTES * self.n_and
    }

    /// Fixed-key AES blocks hashed per instance by (garbler, evaluator): 4 and 2 per garbled AND; per
    /// output 2 and 1, plus for scaled outputs the scale bit's 2 and 1 per pair of outputs.
    pub fn hashes_per_instance(&self) -> (usize, usize) {
        let (n, pairs) = (self.weights.len(), if self.scaled { self.weights.len().div_ceil(2) } else { 0 });
        (4 * self.n_and + 2 * n + 2 * pairs, 2 * self.n_and + n + pairs)
    }

    /// Output-ciphertext bytes per instance.
    pub fn ct_bytes(&self) -> usize {
        self.weights.len() * if self.scaled { SCALED_AB_BYTES + SCALED_P_BYTES } else { ARITH_CT_BYTES }
    }

    /// Bytes per instance on the wire (tables + output ciphertexts).
    pub fn record_bytes(&self) -> usize {
        self.and_bytes() + self.ct_bytes()
    }

    /// First hash index of the output ciphertexts (AND gates use `0..2·n_and`).
    pub(crate) fn arith_index(&self) -> u64 {
        2 * self.n_and as u64
    }

    /// Plaintext interpreter: `Σ z_o·w_o mod 2^l` (times the scale bit if scaled).
    pub fn eval_plain(&self, garbler: &[bool], evaluator: &[bool]) -> u64 {
        let bits = self.circuit.eval_plain(garbler, evaluator);
        let sum = bits.iter().zip(&self.weights).fold(0u64, |acc, (&z, &w)| if z { acc.wrapping_add(w) } else { acc });
        let scale = !self.scaled || bits[self.weights.len()];
        if scale { sum & self.mask } else { 0 }
    }

    /// Garbler side of the outputs of one group of `ids.len()` instances (interpreter path):
    /// `out` are the output zero-labels, instance-major; `cts` the group's ciphertext bytes.
    pub(crate) fn garble_outputs(&self, out: &[Label], delta: &Delta, ids: &[u64], cts: &mut [u8], r: &mut [u64]) {
        let (lanes, n) = (ids.len(), self.weights.len());
        if self.scaled {
            let (ab, p) = cts.split_at_mut(lanes * n * SCALED_AB_BYTES);
            let (abl, pl) = (Layout::interleaved(SCALED_AB_BYTES, lanes), Layout::interleaved(SCALED_P_BYTES, lanes));
            garble_scaled(out, &self.weights, self.mask, delta, ids, self.arith_index(), (ab, abl), (p, pl), r);
        } else {
            let cl = Layout::interleaved(ARITH_CT_BYTES, lanes);
            garble_arith(out, &self.weights, self.mask, delta, ids, self.arith_index(), cts, cl, r);
        }
    }

    /// Evaluator side of [`Self::garble_outputs`].
    pub(crate) fn evaluate_outputs(&self, out: &[Label], ids: &[u64], cts: &[u8], v: &mut [u64]) {
        let (lanes, n) = (ids.len(), self.weights.len());
        if self.scaled {
            let (ab, p) = cts.split_at(lanes * n * SCALED_AB_BYTES);
            let (abl, pl) = (Layout::interleaved(SCALED_AB_BYTES, lanes), Layout::interleaved(SCALED_P_BYTES, lanes));
            evaluate_scaled(out, n, self.mask, ids, self.arith_index(), (ab, abl), (p, pl), v);
        } else {
            evaluate_arith(out, n, self.mask, ids, self.arith_index(), cts, Layout::interleaved(ARITH_CT_BYTES, lanes), v);
        }
    }
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

/// Garbles `r.len()` instances. `gin`/`ein`: input zero-labels in batch order ([`input_index`]);
/// `records`: output, `record_bytes()` per instance; `r`: the garbler's output offsets `R_sum` per
/// instance.
pub fn garble_batch(
    ac: &ArithCircuit,
    delta: &Delta,
    first_id: u64,
    gin: &[Label],
    ein: &[Label],
    records: &mut [u8],
    r: &mut [u64],
) {
    let n = r.len();
    let (ng, ne) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs);
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    records.par_chunks_mut(PASS * rec).zip(r.par_chunks_mut(PASS)).enumerate().for_each(|(c, (recs, rs))| {
        let i0 = c * PASS;
        let fast = lockstep_instances(ac, rs.len());
        #[cfg(target_arch = "x86_64")]
        for g in 0..fast / LANES {
            let i = i0 + g * LANES;
            let (cur, next) = recs[g * LANES * rec..fast * rec].split_at_mut(LANES * rec);
            let ahead = ahead(ac, &gin[..(i0 + fast) * ng], &ein[..(i0 + fast) * ne], next, i + LANES);
            let (gl, el) = (&gin[i * ng..(i + LANES) * ng], &ein[i * ne..(i + LANES) * ne]);
            let rs = &mut rs[g * LANES..(g + 1) * LANES];
            super::lockstep::garble_relus(ac, delta, first_id + i as u64, gl, el, cur, rs, ahead);
        }
        for (g, (recs, rs)) in recs[fast * rec..].chunks_mut(LANES * rec).zip(rs[fast..].chunks_mut(LANES)).enumerate() {
            let (i, lanes) = (i0 + fast + g * LANES, rs.len());
            let (ids, gl, el, mut out) = interpreter_group(ac, first_id, gin, ein, i, lanes);
            let (tables, cts) = recs.split_at_mut(lanes * ac.and_bytes());
            garble_lanes(&ac.circuit, delta, &ids, &gl, &el, tables, Layout::interleaved(AND_TABLE_BYTES, lanes), &mut out);
            ac.garble_outputs(&out, delta, &ids, cts, rs);
        }
    });
}

/// Evaluates `v.len()` instances from their active input labels (batch order) and records; `v` receives
/// `V = R_sum + Σ z_o w_o mod 2^l` per instance (times the scale bit if the circuit is scaled).
pub fn evaluate_batch(ac: &ArithCircuit, first_id: u64, gin: &[Label], ein: &[Label], records: &[u8], v: &mut [u64]) {
    let n = v.len();
    let (ng, ne) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs);
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    records.par_chunks(PASS * rec).zip(v.par_chunks_mut(PASS)).enumerate().for_each(|(c, (recs, vs))| {
        let i0 = c * PASS;
        let fast = lockstep_instances(ac, vs.len());
        #[cfg(target_arch = "x86_64")]
        for g in 0..fast / LANES {
            let i = i0 + g * LANES;
            let (cur, next) = recs[g * LANES * rec..fast * rec].split_at(LANES * rec);
            let ahead = ahead(ac, &gin[..(i0 + fast) * ng], &ein[..(i0 + fast) * ne], next, i + LANES);
            let (gl, el) = (&gin[i * ng..(i + LANES) * ng], &ein[i * ne..(i + LANES) * ne]);
            let vs = &mut vs[g * LANES..(g + 1) * LANES];
            super::lockstep::evaluate_relus(ac, first_id + i as u64, gl, el, cur, vs, ahead);
        }
        for (g, (recs, vs)) in recs[fast * rec..].chunks(LANES * rec).zip(vs[fast..].chunks_mut(LANES)).enumerate() {
            let (i, lanes) = (i0 + fast + g * LANES, vs.len());
            let (ids, gl, el, mut out) = interpreter_group(ac, first_id, gin, ein, i, lanes);
            let (tables, cts) = recs.split_at(lanes * ac.and_bytes());
            evaluate_lanes(&ac.circuit, &ids, &gl, &el, tables, Layout::interleaved(AND_TABLE_BYTES, lanes), &mut out);
            ac.evaluate_outputs(&out, &ids, cts, vs);
        }
    });
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
fn ahead<'a>(ac: &ArithCircuit, gin: &'a [Label], ein: &'a [Label], next: &'a [u8], i: usize) -> super::lockstep::Ahead<'a> {
    let take = |l: &'a [Label], per: usize| l.get(i * per..(i + LANES) * per).unwrap_or(&[]);
    super::lockstep::Ahead {
        records: &next[..next.len().min(LANES * ac.record_bytes())],
        gin: take(gin, ac.circuit.n_garbler_inputs),
        ein: take(ein, ac.circuit.n_evaluator_inputs),
    }
}

/// Instances per parallel task: eight groups, run one after the other so that each prefetches the next.
const PASS: usize = 8 * LANES;

/// How many of a task's `n` instances (from its start) the lock-step backends take: its whole
/// groups, if the circuit is the ReLU gadget and the CPU has AVX-512 and VAES; else none.
fn lockstep_instances(ac: &ArithCircuit, n: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if ac.gadget.is_some() && super::lockstep::available() {
        return n / LANES * LANES;
    }
    let _ = (ac, n);
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::garble::encode;
    use crate::gc::relu::{ReluParams, relu_arith_circuit};
    use pi_model::fixed::FixedPoint;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Garbles and evaluates `a.len()` ReLUs in a batch; returns `V - R` per ReLU (should be `z`).
    fn run(p: &ReluParams, a: &[u64], b: &[u64], delta: &Delta, eval_delta: &Delta, first_id: u64, seed: u64) -> Vec<u64> {
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
            let group = instance_major(&(0..(n.min(LANES) * bits) as u128).map(Label).collect::<Vec<_>>(), n.min(LANES), bits);
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
