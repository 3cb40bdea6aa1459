//! Additive shares in `Z_{2^l}`: which party holds what, and the local operations on shares
//! (addition, multiplication by public constants, SecureML-style local truncation).

use pi_model::FixedPoint;
use serde::{Deserialize, Serialize};

/// The two parties. The server owns the weights and garbles; the client owns the input and evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Server,
    Client,
}

/// How shares are rescaled after a product (by `f` bits) and at linearized neurons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Each party shifts its own share (SecureML): free, but the result is one unit too large with
    /// a probability set by the client's share, and wrong by `2^(l-f)` when the shares wrap (see
    /// `docs/security.md`, known leak 1).
    #[default]
    Local,
    /// A small garbled circuit computes the carry and the wrap of every truncated value
    /// ([`pi_gc::truncate`]): bit-exact, as the fixed-point engine computes, for `|y| < 2^(l-2)`,
    /// at `f + 1` garbled ANDs and one more online round per truncating step.
    Exact,
}

impl Truncation {
    /// The command-line names.
    pub const NAMES: [&'static str; 2] = ["local", "exact"];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Truncation::Local => "local",
            Truncation::Exact => "exact",
        }
    }
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Truncation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Truncation::Local),
            "exact" => Ok(Truncation::Exact),
            _ => Err(format!("expected local or exact, got {s:?}")),
        }
    }
}

/// Local truncation of one party's share by `bits` (SecureML): the server shifts its share, the
/// client negates, shifts and negates back. The two results add up to `floor(y / 2^bits)` or one
/// more, except with probability about `|y| / 2^l` (see docs/fixed-point.md).
#[inline]
pub fn truncate_share(fp: &FixedPoint, role: Role, share: u64, bits: u32) -> u64 {
    if bits == 0 {
        return share;
    }
    match role {
        Role::Server => fp.reduce(share) >> bits,
        Role::Client => fp.reduce((fp.reduce(share.wrapping_neg()) >> bits).wrapping_neg()),
    }
}

/// Local truncation of a whole share vector in place.
pub fn truncate_shares(fp: &FixedPoint, role: Role, shares: &mut [u64], bits: u32) {
    shares.iter_mut().for_each(|s| *s = truncate_share(fp, role, *s, bits));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Shares of `y` truncate to `floor(y / 2^f)` or one more, for any split of `y`.
        #[test]
        fn local_truncation_is_off_by_at_most_one(y in -(1i64 << 36)..(1i64 << 36), c in any::<u64>(), l in 48u32..=64, f in 8u32..=16) {
            let fp = FixedPoint { l, f };
            let c = fp.reduce(c);
            let s = fp.reduce(fp.from_i64(y).wrapping_sub(c));
            // A failure needs the client's share within |y| of the wrap point: skip that tiny window.
            let margin = (y.unsigned_abs() + 1) as u128;
            let dist = ((fp.mask() as u128 + 1) - c as u128).min(c as u128);
            prop_assume!(dist > margin);
            let t = fp.reduce(truncate_share(&fp, Role::Server, s, f).wrapping_add(truncate_share(&fp, Role::Client, c, f)));
            let got = fp.to_i64(t);
            let want = y >> f;
            prop_assert!(got == want || got == want + 1, "y={y} got={got} want={want}");
        }
    }
}
