//! Fixed-point numbers in the ring `Z_{2^l}` with `f` fractional bits: the number system private
//! inference computes in. See `docs/fixed-point.md` for the rounding and truncation rules.

use serde::{Deserialize, Serialize};

/// Ring width `l` and fractional bits `f`. Ring elements are `u64` values reduced mod `2^l`;
/// a value is negative when its bit `l-1` is set (two's complement in `l` bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Ring bit width, `2 <= l <= 64`.
    pub l: u32,
    /// Fractional bits of activations and weights, `f < l / 2` (products carry `2f`).
    pub f: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FixedPoint {
    /// `l = 59` (the widest ring the HE plaintext modulus allows, see DESIGN.md section 4) keeps the
    /// local-truncation failure probability `|y| / 2^l` negligible; `f = 12` as in CrypTFlow2/Cheetah.
    pub const DEFAULT: FixedPoint = FixedPoint { l: 59, f: 12 };

    /// Checks the parameters make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(8..=64).contains(&self.l) {
            return Err(format!("ring width l = {} must be in 8..=64", self.l));
        }
        if self.f >= 32 || 2 * self.f + 2 > self.l {
            return Err(format!("f = {} fractional bits leave no room in l = {} (need 2f + 2 <= l)", self.f, self.l));
        }
        Ok(())
    }

    /// `2^l - 1`.
    #[inline]
    pub fn mask(&self) -> u64 {
        if self.l == 64 { u64::MAX } else { (1u64 << self.l) - 1 }
    }

    /// Reduces mod `2^l`.
    #[inline]
    pub fn reduce(&self, x: u64) -> u64 {
        x & self.mask()
    }

    /// Ring element from a signed integer.
    #[inline]
    pub fn from_i64(&self, x: i64) -> u64 {
        (x as u64) & self.mask()
    }

    /// Signed integer of a ring element (two's complement in `l` bits).
    #[inline]
    pub fn to_i64(&self, x: u64) -> i64 {
        let s = 64 - self.l;
        ((x << s) as i64) >> s
    }

    /// Encodes a real with `frac` fractional bits: `round(x * 2^frac)` (ties away from zero), saturated
    /// to the representable range.
    pub fn encode_with(&self, x: f32, frac: u32) -> u64 {
        let scaled = (x as f64 * (frac as f64).exp2()).round();
        let lim = ((self.l - 1) as f64).exp2() - 1.0;
        let v = if scaled.is_nan() { 0.0 } else { scaled.clamp(-lim, lim) };
        self.from_i64(v as i64)
    }

    /// Encodes a real with `f` fractional bits.
    pub fn encode(&self, x: f32) -> u64 {
        self.encode_with(x, self.f)
    }

    /// Decodes a ring element carrying `frac` fractional bits.
    pub fn decode_with(&self, x: u64, frac: u32) -> f32 {
        (self.to_i64(x) as f64 / (frac as f64).exp2()) as f32
    }

    /// Decodes a ring element carrying `f` fractional bits.
    pub fn decode(&self, x: u64) -> f32 {
        self.decode_with(x, self.f)
    }

    /// Exact truncation of a plaintext ring element: arithmetic shift right by `bits` (floor division
    /// by `2^bits` of the signed value). This is what the garbled ReLU computes.
    #[inline]
    pub fn truncate(&self, x: u64, bits: u32) -> u64 {
        self.from_i64(self.to_i64(x) >> bits)
    }

    /// Multiplier of average pooling over `area` elements: `round(2^f / area)` with `f` fractional
    /// bits. The ring engine and private inference both scale window sums by it.
    pub fn pool_factor(&self, area: usize) -> u64 {
        self.encode(1.0 / area as f32)
    }

    /// ReLU of a plaintext ring element.
    #[inline]
    pub fn relu(&self, x: u64) -> u64 {
        if self.to_i64(x) < 0 { 0 } else { x }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_truncate() {
        let fp = FixedPoint::DEFAULT;
        assert!(fp.validate().is_ok());
        for x in [0.0f32, 1.5, -1.5, 1234.25, -1.0 / 4096.0] {
            assert_eq!(fp.decode(fp.encode(x)), x);
        }
        let y = fp.encode_with(-2.75, 2 * fp.f);
        assert_eq!(fp.decode(fp.truncate(y, fp.f)), -2.75);
        // Floor semantics on a non-exact value.
        assert_eq!(fp.to_i64(fp.truncate(fp.from_i64(-5), 1)), -3);
        assert_eq!(fp.relu(fp.from_i64(-5)), 0);
        assert_eq!(fp.relu(7), 7);
    }
}
