//! The ReLU gadget over additive shares in `Z_{2^l}`, written once as a [`Circuit`] and run by all
//! three interpreters.
//!
//! Inputs: the garbler's share `a` and the evaluator's share `b`, low `k` bits each. The circuit adds
//! them mod `2^k` (`k-1` garbled ANDs), reads the sign bit `k-1`, and outputs the `k-1-shift` bits
//! `z = relu(y) >> shift`, each the AND of a sum bit with the inverted sign, where `y` is `a + b` read
//! as a signed `k`-bit number. Those ANDs are not garbled as gates: they are *scaled outputs*
//! ([`super::arith::garble_scaled`]) that turn `p · Σ y_o 2^o` (`p` the inverted sign) directly into
//! arithmetic shares, for fewer hashes and bytes than an AND gate plus a bit conversion. The client's
//! mask `r` is subtracted outside the circuit, so the protocol yields `z - r mod 2^l` with
//! `2k - 2 - shift` ANDs (50 at `k = 32`, `shift = 12`: 31 garbled, 19 scaled outputs).

use super::batch::ArithCircuit;
use super::circuit::{Circuit, CircuitBuilder, to_bits};
use super::fancy::{Fancy, Recorder};
use serde::{Deserialize, Serialize};

/// Per-layer parameters of the ReLU gadget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReluParams {
    /// Ring width: shares and the output live in `Z_{2^l}`, `1 <= l <= 64`.
    pub l: u32,
    /// Bits of each share the circuit reads; the activation must satisfy `|y| < 2^(k-1)`. `k = l` is
    /// the full-width mode.
    pub k: u32,
    /// Low bits dropped after the ReLU (`f` after a product, 0 when the input is already at scale `f`).
    pub shift: u32,
}

impl ReluParams {
    /// Full-width mode: the circuit reads all `l` bits of both shares.
    pub fn full_width(l: u32, shift: u32) -> Self {
        Self { l, k: l, shift }
    }

    /// Checks `shift + 1 < k <= l <= 64`.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=64).contains(&self.l) {
            return Err(format!("ring width l = {} must be in 2..=64", self.l));
        }
        if self.k > self.l {
            return Err(format!("k = {} exceeds l = {}", self.k, self.l));
        }
        if self.shift + 1 >= self.k {
            return Err(format!("k = {} must exceed shift + 1 = {}", self.k, self.shift + 1));
        }
        Ok(())
    }

    /// `2^l - 1`.
    pub fn mask(&self) -> u64 {
        if self.l == 64 { u64::MAX } else { (1u64 << self.l) - 1 }
    }

    /// Output bits of the circuit: `k - 1 - shift`.
    pub fn out_bits(&self) -> usize {
        (self.k - 1 - self.shift) as usize
    }

    /// Garbler (server share) input bits: `k`.
    pub fn garbler_bits(&self) -> usize {
        self.k as usize
    }

    /// Evaluator (client share) input bits: `k`.
    pub fn evaluator_bits(&self) -> usize {
        self.k as usize
    }
}

/// The gadget, once for every backend: `z = relu(sext_k(a + b)) >> shift` as `k - 1 - shift`
/// little-endian output bits. A ripple-carry adder (`c' = c ⊕ ((a ⊕ c) ∧ (b ⊕ c))`, no carry out of
/// the top bit: `k - 1` ANDs), then the kept bits, each times the inverted sign, handed over as one
/// sequence of scaled outputs ([`Fancy::scaled_outputs`]). Sum bits below `shift` are XORs only; the
/// garbled backends skip nothing else.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `i` is the bit position of inputs and kept sums alike
pub fn relu_gadget<F: Fancy>(f: &mut F, p: &ReluParams) {
    let (k, shift) = (p.k as usize, p.shift as usize);
    debug_assert!(shift + 1 < k && k <= 64);
    // Kept sum bits wait here until the sign is known (as `Option`s: a `[F::Wire; 64]` would need a
    // placeholder wire copied 64 times per run, 16 KiB per group in the lock-step backends).
    let mut kept: [Option<F::Wire>; 64] = [None; 64];
    let mut carry: Option<F::Wire> = None;
    let mut sign = None;
    for i in 0..k {
        let (a, b) = (f.garbler_input(i), f.evaluator_input(i));
        let (sum, ac, bc) = match carry {
            None => (f.xor(a, b), a, b),
            Some(c) => {
                let ac = f.xor(a, c);
                (f.xor(ac, b), ac, f.xor(b, c))
            }
        };
        if i + 1 < k {
            let t = f.and(ac, bc);
            carry = Some(match carry {
                None => t,
                Some(c) => f.xor(c, t),
            });
        }
        if i + 1 == k {
            sign = Some(sum);
        } else if i >= shift {
            kept[i] = Some(sum);
        }
    }
    let positive = f.not(sign.expect("k >= 2"));
    f.scaled_outputs(kept[shift..k - 1].iter().map(|y| y.expect("kept bit")), positive);
}

/// The gadget recorded as a circuit (for the interpreters and AND counts).
pub fn relu_circuit(p: &ReluParams) -> Circuit {
    p.validate().expect("valid ReLU parameters");
    let mut r = Recorder::new(p.garbler_bits(), p.evaluator_bits());
    relu_gadget(&mut r, p);
    r.finish()
}

/// The gadget with its arithmetic reading: output bit `o` weighs `2^o` in `Z_{2^l}`
/// ([`ArithCircuit::relu`]).
pub fn relu_arith_circuit(p: &ReluParams) -> ArithCircuit {
    ArithCircuit::relu(p)
}

/// The all-Boolean variant for comparison: the evaluator also inputs its mask `r` (`l` bits) and the
/// circuit subtracts it with an `l`-bit subtractor, outputting `z - r mod 2^l` as `l` bits
/// (`(k-1) + (k-1-shift) + (l-1)` ANDs). The protocol uses [`relu_arith_circuit`] instead.
pub fn relu_circuit_with_mask(p: &ReluParams) -> Circuit {
    p.validate().expect("valid ReLU parameters");
    let (k, l) = (p.k as usize, p.l as usize);
    let mut b = CircuitBuilder::new();
    let a = b.garbler_inputs(k);
    let bb = b.evaluator_inputs(k);
    let r = b.evaluator_inputs(l);
    let y = b.add(&a, &bb);
    let positive = b.not(y[k - 1]);
    let mut z: Vec<_> = y[p.shift as usize..k - 1].iter().map(|&yi| b.and(yi, positive)).collect();
    z.resize(l, b.constant(false));
    let out = b.sub(&z, &r);
    b.finish(out)
}

/// The garbler's input bits for share `a`.
pub fn garbler_input_bits(p: &ReluParams, a: u64) -> Vec<bool> {
    to_bits(a, p.k as usize)
}

/// The evaluator's input bits for share `b`.
pub fn evaluator_input_bits(p: &ReluParams, b: u64) -> Vec<bool> {
    to_bits(b, p.k as usize)
}

/// Plaintext run of the gadget with the mask: `(z - r) mod 2^l`, through the same circuit.
pub fn relu_plain(p: &ReluParams, a: u64, b: u64, r: u64) -> u64 {
    let z = relu_arith_circuit(p).eval_plain(&garbler_input_bits(p, a), &evaluator_input_bits(p, b));
    z.wrapping_sub(r) & p.mask()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::from_bits;
    use pi_model::fixed::FixedPoint;
    use proptest::prelude::*;

    /// Independent reference: sign-extend the k-bit sum, ReLU, floor-shift, subtract the mask in Z_{2^l}.
    fn reference(p: &ReluParams, a: u64, b: u64, r: u64) -> u64 {
        let ring_k = FixedPoint { l: p.k, f: 0 };
        let ring_l = FixedPoint { l: p.l, f: 0 };
        let y = ring_k.to_i64(a.wrapping_add(b) & ring_k.mask());
        let z = y.max(0) >> p.shift;
        ring_l.from_i64(z).wrapping_sub(r) & ring_l.mask()
    }

    fn params() -> impl Strategy<Value = ReluParams> {
        (16u32..=64).prop_flat_map(|l| {
            (Just(l), 0u32..=(l / 2 - 1))
                .prop_flat_map(|(l, shift)| ((shift + 2)..=l).prop_map(move |k| ReluParams { l, k, shift }))
        })
    }

    #[test]
    fn and_counts() {
        let p = ReluParams { l: 59, k: 32, shift: 12 };
        assert_eq!(relu_circuit(&p).n_and(), 32 - 1);
        assert_eq!(relu_arith_circuit(&p).and_count(), 2 * 32 - 2 - 12);
        assert_eq!(relu_circuit_with_mask(&p).n_and(), 31 + 19 + 58);
        let full = ReluParams::full_width(59, 12);
        assert_eq!(relu_circuit(&full).n_and(), 59 - 1);
        assert_eq!(relu_arith_circuit(&full).and_count(), 2 * 59 - 2 - 12);
    }

    #[test]
    fn edge_values_default_params() {
        for p in [
            ReluParams { l: 59, k: 32, shift: 12 },
            ReluParams { l: 59, k: 32, shift: 0 },
            ReluParams::full_width(59, 12),
            ReluParams::full_width(64, 12),
        ] {
            let fp = FixedPoint { l: p.l, f: p.shift };
            let (max, min) = (i64::MAX >> (64 - p.k), i64::MIN >> (64 - p.k));
            for y in [0i64, 1, -1, 4095, 4096, -4096, max, min, max - 4096, min + 1, 12345678 & max, -(12345678 & max)]
            {
                for (a, r) in [(0u64, 0u64), (0x1234_5678_9abc_def0, 77), (u64::MAX, p.mask())] {
                    let a = a & p.mask();
                    let b = fp.from_i64(y).wrapping_sub(a) & p.mask();
                    // With y in range, the result equals the FixedPoint formula on the reconstructed value.
                    let expect = fp.truncate(fp.relu(fp.from_i64(y)), p.shift).wrapping_sub(r) & p.mask();
                    assert_eq!(relu_plain(&p, a, b, r), expect, "p={p:?} y={y} a={a:#x}");
                    assert_eq!(reference(&p, a, b, r), expect);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn gadget_matches_reference(p in params(), a in any::<u64>(), b in any::<u64>(), r in any::<u64>()) {
            let (a, b, r) = (a & p.mask(), b & p.mask(), r & p.mask());
            prop_assert_eq!(relu_plain(&p, a, b, r), reference(&p, a, b, r));
            // The gadget run directly on bits (no circuit) agrees.
            let (g, e) = (garbler_input_bits(&p, a), evaluator_input_bits(&p, b));
            let mut plain = crate::fancy::Plain::new(&g, &e);
            relu_gadget(&mut plain, &p);
            prop_assert_eq!(plain.out.len(), p.out_bits());
            let z = plain.out.iter().enumerate().fold(0u64, |acc, (o, &bit)| acc | ((bit as u64) << o));
            prop_assert_eq!(z.wrapping_sub(r) & p.mask(), reference(&p, a, b, r));
            // The all-Boolean variant computes the same thing in-circuit.
            let c = relu_circuit_with_mask(&p);
            let mut e = evaluator_input_bits(&p, b);
            e.extend(to_bits(r, p.l as usize));
            prop_assert_eq!(from_bits(&c.eval_plain(&garbler_input_bits(&p, a), &e)), reference(&p, a, b, r));
        }

        #[test]
        fn in_range_values_match_fixed_point(p in params(), y in any::<i64>(), a in any::<u64>(), r in any::<u64>()) {
            let fp = FixedPoint { l: p.l, f: p.shift };
            let y = y >> (64 - p.k); // -2^(k-1) <= y < 2^(k-1)
            let a = a & p.mask();
            let b = fp.from_i64(y).wrapping_sub(a) & p.mask();
            let r = r & p.mask();
            let expect = fp.truncate(fp.relu(fp.from_i64(y)), p.shift).wrapping_sub(r) & p.mask();
            prop_assert_eq!(relu_plain(&p, a, b, r), expect);
        }
    }
}
