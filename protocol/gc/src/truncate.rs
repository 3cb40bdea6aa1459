//! Exact truncation of an additively shared value: `floor(y / 2^shift)` in `Z_{2^l}` with no
//! error and no dependence on either party's share, for `|y| < 2^(l-2)`.
//!
//! Local (SecureML) truncation drops the carry out of the low bits and, rarely, wraps; both depend
//! on the shares. Here the server first adds `2^(l-2)` to its share, so that `y' = y + 2^(l-2)` lies
//! in `[0, 2^(l-1))`. With `a' + b = y' + w·2^l` and `c` the carry out of the low `shift` bits,
//! `floor(y'/2^shift) = (a' >> shift) + (b >> shift) + c - w·2^(l-shift)`; and because `y' < 2^(l-1)`
//! the wrap `w` is simply `msb(a') ∨ msb(b)`. The garbled circuit computes only `c` (`shift` ANDs)
//! and `w` (one AND) and hands them out as arithmetic shares with weights `1` and `-2^(l-shift)`
//! ([`crate::arith`]); the shifts are local, and the server removes `2^(l-2-shift)` at the end.

use crate::batch::ArithCircuit;
use crate::circuit::{Bit, Circuit, CircuitBuilder};
use serde::{Deserialize, Serialize};

/// Parameters of the exact truncation gadget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncParams {
    /// Ring width: shares live in `Z_{2^l}`, `4 <= l <= 64`.
    pub l: u32,
    /// Bits dropped, `1 <= shift <= l - 2`. The value must satisfy `|y| < 2^(l-2)`.
    pub shift: u32,
}

impl TruncParams {
    /// Checks `4 <= l <= 64` and `1 <= shift <= l - 2`.
    pub fn validate(&self) -> Result<(), String> {
        if !(4..=64).contains(&self.l) {
            return Err(format!("ring width l = {} must be in 4..=64", self.l));
        }
        if self.shift == 0 || self.shift + 2 > self.l {
            return Err(format!("truncation by {} bits must be in 1..={}", self.shift, self.l - 2));
        }
        Ok(())
    }

    /// `2^l - 1`.
    pub fn mask(&self) -> u64 {
        if self.l == 64 { u64::MAX } else { (1u64 << self.l) - 1 }
    }

    /// Input bits per party: the low `shift` bits of its share and its share's top bit.
    pub fn bits(&self) -> usize {
        self.shift as usize + 1
    }

    /// The offset the server adds to its share: `2^(l-2)`.
    fn offset(&self) -> u64 {
        1u64 << (self.l - 2)
    }

    /// The circuit's input word of a share (already offset for the server): low `shift` bits, then
    /// bit `l-1` at position `shift`.
    fn word(&self, share: u64) -> u64 {
        let low = share & ((1u64 << self.shift) - 1);
        low | ((share >> (self.l - 1)) & 1) << self.shift
    }

    /// The server's circuit input word for its share `a`.
    pub fn garbler_word(&self, a: u64) -> u64 {
        self.word(a.wrapping_add(self.offset()) & self.mask())
    }

    /// The client's circuit input word for its share `b`.
    pub fn evaluator_word(&self, b: u64) -> u64 {
        self.word(b & self.mask())
    }

    /// The server's share of `floor(y / 2^shift)` from its share `a` and its output of the circuit
    /// (`c - w·2^(l-shift) - r`, where `r` is the client's mask).
    pub fn garbler_share(&self, a: u64, out: u64) -> u64 {
        let shifted = (a.wrapping_add(self.offset()) & self.mask()) >> self.shift;
        shifted.wrapping_sub(self.offset() >> self.shift).wrapping_add(out) & self.mask()
    }

    /// The client's share of `floor(y / 2^shift)` from its share `b` and its mask `r`.
    pub fn evaluator_share(&self, b: u64, r: u64) -> u64 {
        ((b & self.mask()) >> self.shift).wrapping_add(r) & self.mask()
    }

    /// The Boolean circuit: inputs as [`Self::garbler_word`] and [`Self::evaluator_word`] lay them
    /// out; outputs the carry `c` and the wrap `w` (`shift + 1` ANDs).
    pub fn circuit(&self) -> Circuit {
        self.validate().expect("valid truncation parameters");
        let s = self.shift as usize;
        let mut b = CircuitBuilder::new();
        let a = b.garbler_inputs(s + 1);
        let e = b.evaluator_inputs(s + 1);
        let (_, carry) = b.add_with_carry(&a[..s], &e[..s], Bit::Const(false));
        let wrap = b.or(a[s], e[s]);
        b.finish(vec![carry, wrap])
    }

    /// The circuit with its arithmetic reading: `c·1 + w·(-2^(l-shift)) mod 2^l`.
    pub fn arith_circuit(&self) -> ArithCircuit {
        let wrap_weight = 0u64.wrapping_sub(1u64 << (self.l - self.shift)) & self.mask();
        ArithCircuit::new(self.circuit(), vec![1, wrap_weight], self.mask())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::to_bits;
    use pi_model::fixed::FixedPoint;
    use proptest::prelude::*;

    /// The two shares of `floor(y / 2^shift)` through the circuit's plaintext interpreter, with mask `r`.
    fn plain(p: &TruncParams, a: u64, b: u64, r: u64) -> u64 {
        let ac = p.arith_circuit();
        let out = ac.eval_plain(&to_bits(p.garbler_word(a), p.bits()), &to_bits(p.evaluator_word(b), p.bits()));
        let server = p.garbler_share(a, out.wrapping_sub(r) & p.mask());
        server.wrapping_add(p.evaluator_share(b, r)) & p.mask()
    }

    #[test]
    fn and_count() {
        let p = TruncParams { l: 59, shift: 12 };
        assert_eq!(p.arith_circuit().and_count(), 13);
        assert_eq!(p.arith_circuit().record_bytes(), 13 * 32 + 2 * 8);
        assert!(TruncParams { l: 59, shift: 0 }.validate().is_err());
        assert!(TruncParams { l: 59, shift: 58 }.validate().is_err());
        assert!(TruncParams { l: 64, shift: 62 }.validate().is_ok());
    }

    #[test]
    fn edges() {
        for p in [TruncParams { l: 59, shift: 12 }, TruncParams { l: 64, shift: 62 }, TruncParams { l: 4, shift: 1 }] {
            let fp = FixedPoint { l: p.l, f: 0 };
            let lim = 1i64 << (p.l - 2);
            for y in [0, 1, -1, lim - 1, -lim, 4095, 4096, -4096, -4097] {
                if y.abs() > lim {
                    continue;
                }
                for a in [0u64, 1, p.mask(), p.mask() >> 1, (p.mask() >> 1) + 1, 0x5555_5555_5555_5555 & p.mask()] {
                    let b = fp.from_i64(y).wrapping_sub(a) & p.mask();
                    assert_eq!(
                        plain(&p, a, b, 12345 & p.mask()),
                        fp.truncate(fp.from_i64(y), p.shift),
                        "{p:?} y={y} a={a}"
                    );
                }
            }
        }
    }

    proptest! {
        /// Any split of any in-range value truncates to exactly the arithmetic shift.
        #[test]
        fn exact_for_every_split(l in 4u32..=64, shift_frac in 0.0f64..1.0, y in any::<i64>(), a in any::<u64>(), r in any::<u64>()) {
            let shift = 1 + ((l - 3) as f64 * shift_frac) as u32;
            let p = TruncParams { l, shift };
            let fp = FixedPoint { l, f: 0 };
            let y = y >> (65 - l); // -2^(l-2) <= y < 2^(l-2)
            let a = a & p.mask();
            let b = fp.from_i64(y).wrapping_sub(a) & p.mask();
            prop_assert_eq!(plain(&p, a, b, r & p.mask()), fp.truncate(fp.from_i64(y), shift));
        }
    }
}
