//! Many instances of one circuit with arithmetic output, garbled or evaluated in parallel on all
//! cores (rayon over groups of [`LANES`] instances). Instance `i` of a batch is circuit id
//! `first_id + i`. Each instance costs `32·n_and` bytes of AND tables and `8·n_out` bytes of
//! arithmetic-output ciphertexts; a group of `m` instances (`m = LANES` except perhaps the last)
//! occupies `m` records' bytes: first gate by gate, the `m` tables of each gate side by side, then
//! output by output, the `m` ciphertexts side by side ([`Layout::interleaved`]). The lock-step
//! backends then read and write whole cache lines.

use super::arith::{ARITH_CT_BYTES, evaluate_arith, garble_arith};
use super::circuit::Circuit;
use super::evaluate::evaluate_lanes;
use super::garble::{AND_TABLE_BYTES, garble_lanes};
use super::{Delta, LANES, Label, Layout, ReluParams};
use rayon::prelude::*;

/// A circuit whose output bits `z_o` are read as the ring element `Σ z_o·weights[o] mod 2^l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArithCircuit {
    pub circuit: Circuit,
    pub weights: Vec<u64>,
    /// `2^l - 1`.
    pub mask: u64,
    /// The ReLU gadget this circuit records, if it is one: such batches run on the lock-step
    /// backends ([`super::lockstep`]) where the CPU allows, with identical output.
    pub gadget: Option<ReluParams>,
}

impl ArithCircuit {
    /// Wraps `circuit`; panics if the weights do not match the outputs or an output is constant.
    pub fn new(circuit: Circuit, weights: Vec<u64>, mask: u64) -> Self {
        assert_eq!(circuit.outputs.len(), weights.len(), "one weight per output");
        assert!(circuit.outputs.iter().all(|o| matches!(o, super::Bit::Wire(_))), "outputs must be wires");
        Self { circuit, weights, mask, gadget: None }
    }

    /// AND-table bytes per instance.
    pub fn and_bytes(&self) -> usize {
        AND_TABLE_BYTES * self.circuit.n_and()
    }

    /// Bytes per instance on the wire (tables + output ciphertexts).
    pub fn record_bytes(&self) -> usize {
        self.and_bytes() + ARITH_CT_BYTES * self.weights.len()
    }

    /// First hash index of the output ciphertexts (AND gates use `0..2·n_and`).
    fn arith_index(&self) -> u64 {
        2 * self.circuit.n_and() as u64
    }

    /// Plaintext interpreter: `Σ z_o·w_o mod 2^l`.
    pub fn eval_plain(&self, garbler: &[bool], evaluator: &[bool]) -> u64 {
        let bits = self.circuit.eval_plain(garbler, evaluator);
        bits.iter().zip(&self.weights).fold(0u64, |acc, (&z, &w)| if z { acc.wrapping_add(w) } else { acc }) & self.mask
    }
}

/// Garbles `r.len()` instances. `gin`/`ein`: input zero-labels, instance-major; `records`: output,
/// `record_bytes()` per instance; `r`: the garbler's output offsets `R_sum` per instance.
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
    let (ng, ne, nout) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs, ac.weights.len());
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    records
        .par_chunks_mut(LANES * rec)
        .zip(r.par_chunks_mut(LANES))
        .enumerate()
        .for_each(|(g, (recs, rs))| {
            let lanes = rs.len();
            let i0 = g * LANES;
            let gl = &gin[i0 * ng..(i0 + lanes) * ng];
            let el = &ein[i0 * ne..(i0 + lanes) * ne];
            #[cfg(target_arch = "x86_64")]
            if ac.gadget.is_some() && lanes == LANES && super::lockstep::available() {
                return super::lockstep::garble_relus(ac, delta, first_id + i0 as u64, gl, el, recs, rs);
            }
            let ids: Vec<u64> = (0..lanes as u64).map(|j| first_id + (i0 as u64) + j).collect();
            let mut out = vec![Label::default(); lanes * nout];
            let (tables, cts) = recs.split_at_mut(lanes * ac.and_bytes());
            garble_lanes(&ac.circuit, delta, &ids, gl, el, tables, Layout::interleaved(AND_TABLE_BYTES, lanes), &mut out);
            let cl = Layout::interleaved(ARITH_CT_BYTES, lanes);
            garble_arith(&out, &ac.weights, ac.mask, delta, &ids, ac.arith_index(), cts, cl, rs);
        });
}

/// Evaluates `v.len()` instances from their active input labels and records; `v` receives
/// `V = R_sum + Σ z_o w_o mod 2^l` per instance.
pub fn evaluate_batch(ac: &ArithCircuit, first_id: u64, gin: &[Label], ein: &[Label], records: &[u8], v: &mut [u64]) {
    let n = v.len();
    let (ng, ne, nout) = (ac.circuit.n_garbler_inputs, ac.circuit.n_evaluator_inputs, ac.weights.len());
    let rec = ac.record_bytes();
    assert_eq!(gin.len(), n * ng);
    assert_eq!(ein.len(), n * ne);
    assert_eq!(records.len(), n * rec);
    records.par_chunks(LANES * rec).zip(v.par_chunks_mut(LANES)).enumerate().for_each(|(g, (recs, vs))| {
        let lanes = vs.len();
        let i0 = g * LANES;
        let gl = &gin[i0 * ng..(i0 + lanes) * ng];
        let el = &ein[i0 * ne..(i0 + lanes) * ne];
        #[cfg(target_arch = "x86_64")]
        if ac.gadget.is_some() && lanes == LANES && super::lockstep::available() {
            return super::lockstep::evaluate_relus(ac, first_id + i0 as u64, gl, el, recs, vs);
        }
        let ids: Vec<u64> = (0..lanes as u64).map(|j| first_id + (i0 as u64) + j).collect();
        let mut out = vec![Label::default(); lanes * nout];
        let (tables, cts) = recs.split_at(lanes * ac.and_bytes());
        evaluate_lanes(&ac.circuit, &ids, gl, el, tables, Layout::interleaved(AND_TABLE_BYTES, lanes), &mut out);
        evaluate_arith(&out, nout, ac.mask, &ids, ac.arith_index(), cts, Layout::interleaved(ARITH_CT_BYTES, lanes), vs);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::garble::encode;
    use crate::gc::relu::{ReluParams, evaluator_input_bits, garbler_input_bits, relu_arith_circuit};
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
        let gbits: Vec<bool> = a.iter().flat_map(|&x| garbler_input_bits(p, x)).collect();
        let ebits: Vec<bool> = b.iter().flat_map(|&x| evaluator_input_bits(p, x)).collect();
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
                                   n in 1usize..40, seed in any::<u64>(), first_id in any::<u32>()) {
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
