//! BFV parameters for linear-layer preprocessing and the numbers derived from them (scaling factors,
//! flooding width). See `docs/he.md` for the security and noise reasoning.

use super::HeError;
use super::wire::residue_bits;
use fhe::bfv::{BfvParameters, BfvParametersBuilder};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Public description of the HE parameters; both parties must use the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeParams {
    /// Ring degree `N`.
    pub degree: usize,
    /// Bit sizes of the ciphertext primes, in `fhe`'s chain order (switching down drops the last).
    pub moduli_bits: Vec<usize>,
    /// Level of the returned ciphertexts (0 = all primes); they keep the first `moduli_bits.len() - reply_level` primes.
    pub reply_level: usize,
    /// Ring width: plaintext modulus `t = 2^l`.
    pub l: u32,
    /// Statistical security of noise flooding, in bits.
    pub stat_sec: u32,
}

/// Largest ring width supported by the default parameters (`t = 2^l` must stay below the first prime).
pub const MAX_L: u32 = 61;
/// Smallest ring width supported.
pub const MIN_L: u32 = 8;

impl HeParams {
    /// The default parameters for ring width `l`: `N = 8192`, primes of 62 + 30 + 62 + 62 = 216 bits
    /// (within the 218 bits the HE standard allows for 128-bit security at `N = 8192`), replies
    /// switched down to the first two primes (92 bits), 40-bit statistical flooding.
    pub fn new(l: u32) -> Result<Self, HeError> {
        if !(MIN_L..=MAX_L).contains(&l) {
            return Err(HeError::Params(format!("ring width l = {l} outside the supported {MIN_L}..={MAX_L}")));
        }
        Ok(Self { degree: 8192, moduli_bits: vec![62, 30, 62, 62], reply_level: 2, l, stat_sec: 40 })
    }

    /// Builds the `fhe` parameters and the derived constants.
    pub(crate) fn context(&self) -> Result<Arc<HeContext>, HeError> {
        HeContext::new(self.clone()).map(Arc::new)
    }
}

/// `fhe` parameters plus the constants the protocol needs.
#[derive(Debug)]
pub(crate) struct HeContext {
    pub params: HeParams,
    pub bfv: Arc<BfvParameters>,
    /// All ciphertext primes.
    pub moduli: Vec<u64>,
    /// Residue widths of all primes.
    pub bits: Vec<u32>,
    /// Number of primes at the reply level.
    pub reply_primes: usize,
    /// `floor(q_0 / t) mod p_i` (the level-0 scaling factor, to encode the server's share).
    pub delta0: Vec<u64>,
    /// Flooding noise is uniform in `[-2^flood_bits, 2^flood_bits)`.
    pub flood_bits: u32,
    /// `2^flood_bits mod p_i` for all primes.
    pub flood_offset: Vec<u64>,
    /// NTT plans and constant-time arithmetic of the primes, for the server's products.
    pub rns: super::rns::Rns,
}

impl HeContext {
    fn new(params: HeParams) -> Result<Self, HeError> {
        let fail = |m: String| Err(HeError::Params(m));
        if !(MIN_L..=MAX_L).contains(&params.l) {
            return fail(format!("ring width l = {} outside {MIN_L}..={MAX_L}", params.l));
        }
        if params.moduli_bits.len() < 2 || params.reply_level >= params.moduli_bits.len() - 1 {
            return fail("need at least two primes and a reply level keeping two of them".into());
        }
        let total: usize = params.moduli_bits.iter().sum();
        let bound = standard_max_log_q(params.degree)
            .ok_or_else(|| HeError::Params(format!("degree {} not in the HE standard table", params.degree)))?;
        if total > bound {
            return fail(format!(
                "{total} bits of modulus exceed {bound}, the 128-bit bound for N = {}",
                params.degree
            ));
        }
        let bfv = BfvParametersBuilder::new()
            .set_degree(params.degree)
            .set_plaintext_modulus(1u64 << params.l)
            .set_moduli_sizes(&params.moduli_bits)
            .set_variance(super::secret::VARIANCE)
            .build_arc()
            .map_err(|e| HeError::Params(e.to_string()))?;
        let moduli = bfv.moduli().to_vec();
        if (1u64 << params.l) >= moduli[0] {
            return fail(format!("t = 2^{} must be below the first prime {}", params.l, moduli[0]));
        }
        let bits: Vec<u32> = moduli.iter().map(|&p| residue_bits(p)).collect();
        let reply_primes = moduli.len() - params.reply_level;
        if reply_primes != 2 {
            return fail("replies are encoded with exactly two primes".into());
        }
        let q_reply = moduli[0] as u128 * moduli[1] as u128;
        let delta0_limbs = shr_limbs(&product_limbs(&moduli), params.l);
        let delta0 = moduli.iter().map(|&p| mod_limbs(&delta0_limbs, p)).collect();
        let log_q0: f64 = moduli.iter().map(|&p| (p as f64).log2()).sum();
        let log_delta0 = (log_q0 - params.l as f64).floor() as u32;
        // Flood at 1/16 of the scaling factor: after switching down it stays far below half of it.
        let flood_bits = log_delta0 - 4;
        let flood_offset = moduli.iter().map(|&p| pow2_mod(flood_bits, p)).collect();
        let log_delta_reply = ((q_reply as f64).log2() - params.l as f64).floor() as u32;
        if log_delta_reply < 24 {
            return fail(format!("reply modulus leaves only {log_delta_reply} bits of room above t"));
        }
        let rns = super::rns::Rns::new(&moduli, params.degree)?;
        Ok(Self { params, bfv, moduli, bits, reply_primes, delta0, flood_bits, flood_offset, rns })
    }

    pub fn degree(&self) -> usize {
        self.params.degree
    }

    pub fn l(&self) -> u32 {
        self.params.l
    }

    /// Bytes of a query ciphertext: a 32-byte seed and the first component at level 0.
    pub fn query_bytes(&self) -> usize {
        32 + self.bits.iter().map(|&b| super::wire::packed_len(self.degree(), b)).sum::<usize>()
    }

    /// Bytes of the second component of a reply ciphertext.
    pub fn reply_fixed_bytes(&self) -> usize {
        self.bits[..self.reply_primes].iter().map(|&b| super::wire::packed_len(self.degree(), b)).sum()
    }

    /// Bytes of a reply ciphertext carrying `count` first-component coefficients.
    pub fn reply_bytes(&self, count: usize) -> usize {
        self.reply_fixed_bytes()
            + self.bits[..self.reply_primes].iter().map(|&b| super::wire::packed_len(count, b)).sum::<usize>()
    }

    /// Bits of one reply coefficient (all reply primes).
    pub fn reply_coeff_bits(&self) -> usize {
        self.bits[..self.reply_primes].iter().map(|&b| b as usize).sum()
    }
}

/// Product of `factors` as little-endian 64-bit limbs.
fn product_limbs(factors: &[u64]) -> Vec<u64> {
    let mut limbs = vec![1u64];
    for &f in factors {
        let mut carry = 0u128;
        for limb in limbs.iter_mut() {
            let v = *limb as u128 * f as u128 + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        if carry > 0 {
            limbs.push(carry as u64);
        }
    }
    limbs
}

/// `x >> s` for `s < 64` on little-endian limbs.
fn shr_limbs(x: &[u64], s: u32) -> Vec<u64> {
    (0..x.len())
        .map(|i| {
            let hi = if s == 0 { 0 } else { x.get(i + 1).map_or(0, |&h| h << (64 - s)) };
            (x[i] >> s) | hi
        })
        .collect()
}

/// `x mod p` on little-endian limbs.
fn mod_limbs(x: &[u64], p: u64) -> u64 {
    x.iter().rev().fold(0u128, |acc, &limb| ((acc << 64) | limb as u128) % p as u128) as u64
}

/// `2^e mod p`.
fn pow2_mod(e: u32, p: u64) -> u64 {
    let mut r = 1u128 % p as u128;
    for _ in 0..e {
        r = (r * 2) % p as u128;
    }
    r as u64
}

/// Largest `log2 q` for 128-bit classical security with a ternary or Gaussian secret and error of
/// standard deviation 3.2 (HomomorphicEncryption.org standard, 2018, Table 1).
pub fn standard_max_log_q(degree: usize) -> Option<usize> {
    Some(match degree {
        1024 => 27,
        2048 => 54,
        4096 => 109,
        8192 => 218,
        16384 => 438,
        32768 => 881,
        _ => return None,
    })
}
