//! The ReLU with its sign read from the shares' top bits (Circa's stochastic ReLU, adapted): fewer
//! server input bits, so fewer bytes online, for a ReLU that may zero small positive values.
//!
//! Inputs, for `y = a + b mod 2^k` with `|y| < 2^(k-1) - 2^t` and `t = k - m`: the garbler's top `m`
//! bits of `a` (bits `t .. k`), the evaluator's `k` bits of `b`. The circuit adds the two `m`-bit tops
//! (`m` garbled ANDs, the last one the carry out `w`) and reads the sign `s` of the sum's top bit;
//! `p = ¬s`. The output is `p · (a + b - w·2^k)`, which is `relu(y)` when the sign is right:
//! * `p · b` and `-p · w·2^k` are scaled outputs of the evaluator's input wires and of `w`
//!   ([`crate::arith::garble_scaled`], offline, 24 bytes each);
//! * `p · a`, with `a` known only online, is one 8-byte ciphertext keyed by the scale bit's labels
//!   ([`crate::arith::garble_online_scaled`]), sent with the server's `m` labels.
//!
//! Without the low `t` bits the tops' sum misses the carry `c` out of them: the sum is `y >> t` or one
//! less. That changes the sign (and `w` with it) only when `0 <= y < 2^t`: such a `y` comes out as `y`
//! (no carry) or as `0` (carry), never anything else; every other in-range `y` gives `relu(y)` exactly
//! (property test `matches_relu_outside_the_dead_zone`). Online: `16 m + 16` bytes per ReLU instead of
//! `16 k + 8`; offline `32 m + 40 k + 24` instead of `72 k - 56`.

use crate::batch::{ArithCircuit, LockstepGadget};
use crate::fancy::{Fancy, Recorder};
use serde::{Deserialize, Serialize};

/// Per-layer parameters of the stochastic ReLU (no shift of its own: it runs on shares already
/// narrowed, as `--truncation local` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StochasticParams {
    /// Ring width `l` of the shares and the output.
    pub l: u32,
    /// Bits of each share the value lives in: `|y| < 2^(k-1) - 2^(k - sign_bits)`.
    pub k: u32,
    /// Top bits of each share that decide the sign (`m`); the server sends this many labels online.
    pub sign_bits: u32,
}

impl StochasticParams {
    /// Checks `2 <= sign_bits < k <= l <= 64`.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=64).contains(&self.l) || self.k > self.l {
            return Err(format!("need k = {} <= l = {} <= 64", self.k, self.l));
        }
        if self.sign_bits < 2 || self.sign_bits >= self.k {
            return Err(format!("sign bits {} must be in 2..k = {}", self.sign_bits, self.k));
        }
        Ok(())
    }

    /// `2^l - 1`.
    pub fn mask(&self) -> u64 {
        if self.l == 64 { u64::MAX } else { (1u64 << self.l) - 1 }
    }

    /// `2^k - 1`.
    fn mask_k(&self) -> u64 {
        if self.k == 64 { u64::MAX } else { (1u64 << self.k) - 1 }
    }

    /// Low bits the sign does not read: `t = k - m` (positive values below `2^t` may become 0).
    pub fn dropped_bits(&self) -> u32 {
        self.k - self.sign_bits
    }

    /// The garbler's circuit input word: the top `m` of the `k` bits of `a`.
    pub fn garbler_word(&self, a: u64) -> u64 {
        (a & self.mask_k()) >> self.dropped_bits()
    }

    /// The evaluator's circuit input word: the `k` bits of `b`.
    pub fn evaluator_word(&self, b: u64) -> u64 {
        b & self.mask_k()
    }

    /// The value the garbler scales online: the `k` bits of `a`.
    pub fn online_value(&self, a: u64) -> u64 {
        a & self.mask_k()
    }

    /// The circuit with its arithmetic reading: outputs `b_0 .. b_{k-1}, w` weighing `2^i` and
    /// `-2^k`, scaled by `p`.
    pub fn arith_circuit(&self) -> ArithCircuit {
        self.validate().expect("valid stochastic ReLU parameters");
        let mut r = Recorder::new(self.sign_bits as usize, self.k as usize);
        stochastic_gadget(&mut r, self);
        let mut weights: Vec<u64> = (0..self.k).map(|i| 1u64 << i).collect();
        weights.push(1u64.checked_shl(self.k).unwrap_or(0).wrapping_neg() & self.mask());
        ArithCircuit::scaled(r.finish(), weights, self.mask()).recorded_from(LockstepGadget::Stochastic(*self))
    }

    /// Hash index of the online ciphertext in each instance: past the circuit's AND gates (`2·m`),
    /// its `k + 1` outputs and their `(k + 2) / 2` scale-bit pairs.
    pub fn online_index(&self) -> u64 {
        let nout = self.k as u64 + 1;
        2 * self.sign_bits as u64 + nout + nout.div_ceil(2)
    }
}

/// The gadget over [`Fancy`]: garbler inputs `0..m` are bits `t..k` of `a`, evaluator inputs `0..k`
/// the bits of `b`. A ripple-carry adder of the two `m`-bit tops (`c' = c ⊕ ((a ⊕ c) ∧ (b ⊕ c))`,
/// the carry out of the top bit included: `m` ANDs), then `b`'s bits and the carry out `w`, each
/// times the inverted sign, as scaled outputs.
#[inline(always)]
pub fn stochastic_gadget<F: Fancy>(f: &mut F, p: &StochasticParams) {
    let (k, m) = (p.k as usize, p.sign_bits as usize);
    let t = k - m;
    debug_assert!(2 <= m && m < k && k <= 64);
    // The client's bits wait here for the outputs (as `Option`s, as in the ReLU gadget).
    let mut b: [Option<F::Wire>; 64] = [None; 64];
    for (i, w) in b[..t].iter_mut().enumerate() {
        *w = Some(f.evaluator_input(i));
    }
    let mut carry: Option<F::Wire> = None;
    let mut sign = None;
    for j in 0..m {
        let (a, bj) = (f.garbler_input(j), f.evaluator_input(t + j));
        b[t + j] = Some(bj);
        let (sum, ac, bc) = match carry {
            None => (f.xor(a, bj), a, bj),
            Some(c) => {
                let ac = f.xor(a, c);
                (f.xor(ac, bj), ac, f.xor(bj, c))
            }
        };
        let and = f.and(ac, bc);
        carry = Some(match carry {
            None => and,
            Some(c) => f.xor(c, and),
        });
        sign = Some(sum);
    }
    let positive = f.not(sign.expect("m >= 2"));
    let wrap = carry.expect("m >= 2");
    let ys = b[..k].iter().map(|w| w.expect("input bit")).chain(std::iter::once(wrap));
    f.scaled_outputs(ys, positive);
}

/// Plaintext run through the same circuit, online term included: `p · (a + b - w·2^k) mod 2^l`.
pub fn stochastic_plain(p: &StochasticParams, a: u64, b: u64) -> u64 {
    let ac = p.arith_circuit();
    let (g, e) =
        (crate::circuit::to_bits(p.garbler_word(a), p.sign_bits as usize), crate::circuit::to_bits(b, p.k as usize));
    let bits = ac.circuit().eval_plain(&g, &e);
    let positive = bits[bits.len() - 1];
    let offline = ac.eval_plain(&g, &e);
    offline.wrapping_add(if positive { p.online_value(a) } else { 0 }) & p.mask()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arith::{evaluate_online_scaled, garble_online_scaled};
    use crate::batch::{evaluate_batch_keeping_scale, garble_batch_keeping_scale, input_bits};
    use crate::garble::encode;
    use crate::{Delta, Label};
    use pi_model::fixed::FixedPoint;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn params() -> impl Strategy<Value = StochasticParams> {
        (8u32..=64).prop_flat_map(|l| {
            (Just(l), 3u32..=l)
                .prop_flat_map(|(l, k)| (2..k).prop_map(move |m| StochasticParams { l, k, sign_bits: m }))
        })
    }

    /// Shares of `y` (`|y| < 2^(k-1) - 2^t`) with the garbler's share `a`.
    fn split(p: &StochasticParams, y: i64, a: u64) -> (u64, u64) {
        let fp = FixedPoint { l: p.l, f: 0 };
        let a = a & p.mask();
        (a, fp.from_i64(y).wrapping_sub(a) & p.mask())
    }

    fn in_range(p: &StochasticParams, y: i64) -> i64 {
        let lim = (1i128 << (p.k - 1)) - (1i128 << p.dropped_bits());
        let y = (y >> (64 - p.k)) as i128;
        y.clamp(-lim + 1, lim - 1) as i64
    }

    #[test]
    fn and_count_and_bytes() {
        let p = StochasticParams { l: 59, k: 20, sign_bits: 14 };
        let ac = p.arith_circuit();
        assert_eq!(ac.n_and(), 14);
        assert_eq!(ac.record_bytes(), 32 * 14 + 24 * 21);
    }

    proptest! {
        /// Independent reference: reconstruct `y` in the ring; outside `[0, 2^t)` the output is
        /// `relu(y)`, inside it is `y` or `0`, and `0` exactly when the low `t` bits carried.
        #[test]
        fn matches_relu_outside_the_dead_zone(p in params(), y in any::<i64>(), a in any::<u64>()) {
            let y = in_range(&p, y);
            let (a, b) = split(&p, y, a);
            let fp = FixedPoint { l: p.l, f: 0 };
            let got = fp.to_i64(stochastic_plain(&p, a, b));
            let t = p.dropped_bits();
            let low = (1u64 << t) - 1;
            let carried = (a & low) + (b & low) > low;
            let want = if (0..1i64 << t).contains(&y) && carried { 0 } else { y.max(0) };
            prop_assert_eq!(got, want, "y={} t={}", y, t);
        }

        /// Garbled in a batch and evaluated, the online term included: the same values as plaintext.
        #[test]
        fn garbled_matches_plaintext(p in params(), n in 1usize..40, seed in any::<u64>()) {
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let delta = Delta::random(&mut rng);
            let ac = p.arith_circuit();
            let (m, k) = (p.sign_bits as usize, p.k as usize);
            let ys: Vec<i64> = (0..n).map(|_| in_range(&p, rng.random())).collect();
            let (a, b): (Vec<u64>, Vec<u64>) = ys.iter().map(|&y| split(&p, y, rng.random())).unzip();
            let gz: Vec<Label> = (0..n * m).map(|_| Label(rng.random())).collect();
            let ez: Vec<Label> = (0..n * k).map(|_| Label(rng.random())).collect();
            let (mut records, mut r, mut p0) = (vec![0u8; n * ac.record_bytes()], vec![0u64; n], vec![Label::default(); n]);
            garble_batch_keeping_scale(&ac, &delta, 5, &gz, &ez, &mut records, &mut r, &mut p0);
            let ids: Vec<u64> = (5..5 + n as u64).collect();
            let x: Vec<u64> = a.iter().map(|&a| p.online_value(a)).collect();
            let (mut t, mut r2) = (vec![0u64; n], vec![0u64; n]);
            garble_online_scaled(&p0, &delta, &ids, p.online_index(), &x, &mut t, &mut r2);
            let gw: Vec<u64> = a.iter().map(|&a| p.garbler_word(a)).collect();
            let ew: Vec<u64> = b.iter().map(|&b| p.evaluator_word(b)).collect();
            let ga: Vec<Label> = gz.iter().zip(input_bits(&gw, m)).map(|(&z, x)| encode(z, x, &delta)).collect();
            let ea: Vec<Label> = ez.iter().zip(input_bits(&ew, k)).map(|(&z, x)| encode(z, x, &delta)).collect();
            let (mut v, mut ps, mut v2) = (vec![0u64; n], vec![Label::default(); n], vec![0u64; n]);
            evaluate_batch_keeping_scale(&ac, 5, &ga, &ea, &records, &mut v, &mut ps);
            evaluate_online_scaled(&ps, &ids, p.online_index(), &t, &mut v2);
            for i in 0..n {
                let got = v[i].wrapping_add(v2[i]).wrapping_sub(r[i]).wrapping_sub(r2[i]) & p.mask();
                prop_assert_eq!(got, stochastic_plain(&p, a[i], b[i]), "instance {}", i);
            }
        }
    }
}
