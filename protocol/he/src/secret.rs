//! The client's BFV secret key and the two operations that use it, on flat RNS residues like the
//! server's [`super::rns`]: encrypting a packed polynomial and decrypting the useful coefficients
//! of a reply. The key is held in NTT form once per session (`fhe`'s `SecretKey` converts and
//! transforms it again for every ciphertext), encryption transforms noise and message together
//! (one NTT per prime instead of three), and decryption scales only the coefficients the client
//! reads, with constants precomputed for `t = 2^l`.

use super::HeError;
use super::params::HeContext;
use super::wire::pack;
use fhe_math::rq::{Poly, Representation};
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

/// Error variance of the secret key, encryption and re-randomisation noise (centred binomial, as `fhe`).
pub(crate) const VARIANCE: usize = 10;

/// `2^l * c_i / p_i` for one reply prime, split into its integer part (below `2^l`) and its
/// fraction as a 128-bit fixed-point number, where `c_i = (q / p_i)^{-1} mod p_i`.
#[derive(Clone, Copy, Debug)]
struct ScaleTerm {
    int: u64,
    frac: u128,
}

/// The client's secret key at level 0, ready for the hot paths.
pub(crate) struct ClientKey {
    /// The key in NTT form, flat `primes x N`.
    s_ntt: Zeroizing<Vec<u64>>,
    /// Decryption constants of the two reply primes.
    scale: [ScaleTerm; 2],
}

impl ClientKey {
    /// A fresh key: `N` centred-binomial coefficients drawn from `rng`.
    pub fn random<R: RngCore + CryptoRng>(ctx: &HeContext, rng: &mut R) -> Result<Self, HeError> {
        let n = ctx.degree();
        let coeffs = Zeroizing::new(
            fhe_util::sample_vec_cbd(n, VARIANCE, rng).map_err(|e| HeError::Fhe(format!("key sampling: {e}")))?,
        );
        let mut s_ntt = Zeroizing::new(vec![0u64; ctx.moduli.len() * n]);
        for (i, row) in s_ntt.chunks_exact_mut(n).enumerate() {
            for (dst, &c) in row.iter_mut().zip(coeffs.iter()) {
                *dst = ctx.rns.reduce_signed(i, c);
            }
        }
        ctx.rns.forward(&mut s_ntt, ctx.moduli.len());
        Ok(Self { s_ntt, scale: scale_terms(ctx)? })
    }

    /// A seeded level-0 encryption of `values` (coefficients `0..values.len()`, the rest zero) in
    /// wire form: `seed | c0` with `c1 = a` regenerated from the seed (as the server's
    /// `parse_seeded` does) and `c0 = -a*s + e + Delta*m`, `Delta = floor(q / t)`.
    pub fn encrypt<R: RngCore + CryptoRng>(
        &self,
        ctx: &HeContext,
        values: &[u64],
        rng: &mut R,
    ) -> Result<Vec<u8>, HeError> {
        let (n, primes) = (ctx.degree(), ctx.moduli.len());
        if values.len() > n {
            return Err(HeError::Shape(format!("{} values in a polynomial of degree {n}", values.len())));
        }
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let e = Zeroizing::new(
            fhe_util::sample_vec_cbd(n, VARIANCE, rng).map_err(|e| HeError::Fhe(format!("noise sampling: {e}")))?,
        );
        let mut c0 = Zeroizing::new(ctx.rns.reduce_small(&e));
        for ((row, q), &d) in c0.chunks_exact_mut(n).zip(&ctx.rns.q).zip(&ctx.delta0) {
            for (dst, &v) in row.iter_mut().zip(values) {
                *dst = q.add(*dst, q.mul(d, q.reduce(v)));
            }
        }
        ctx.rns.forward(&mut c0, primes);
        let a = Poly::random_from_seed(ctx.bfv.context_at_level(0)?, Representation::Ntt, seed);
        let a = a.coefficients();
        let a = a.as_slice().ok_or_else(|| HeError::Fhe("polynomial not contiguous".into()))?;
        let mut out = Vec::with_capacity(ctx.query_bytes());
        out.extend_from_slice(&seed);
        for (i, q) in ctx.rns.q.iter().enumerate() {
            let span = i * n..(i + 1) * n;
            let row = &mut c0[span.clone()];
            for ((c, &x), &s) in row.iter_mut().zip(&a[span.clone()]).zip(&self.s_ntt[span]) {
                *c = q.sub(*c, q.mul(x, s));
            }
            pack(row, ctx.bits[i], &mut out);
        }
        debug_assert_eq!(out.len(), ctx.query_bytes());
        Ok(out)
    }

    /// Decrypts the coefficients `coefs` of a reply-level ciphertext given as `c1` (NTT form,
    /// `2 x N`) and `c0` at those coefficients only (`2 x coefs.len()`, prime-major):
    /// `round(t * [c0 + c1*s]_q / q) mod t` per coefficient.
    pub fn decrypt_at(&self, ctx: &HeContext, mut c1: Vec<u64>, c0: &[u64], coefs: &[usize]) -> Vec<u64> {
        let n = ctx.degree();
        let k = coefs.len();
        debug_assert_eq!(ctx.reply_primes, 2);
        debug_assert_eq!((c1.len(), c0.len()), (2 * n, 2 * k));
        for (i, q) in ctx.rns.q.iter().take(2).enumerate() {
            q.mul_vec(&mut c1[i * n..(i + 1) * n], &self.s_ntt[i * n..(i + 1) * n]);
        }
        ctx.rns.backward(&mut c1, 2);
        let (q0, q1) = (&ctx.rns.q[0], &ctx.rns.q[1]);
        let mask = super::layer::ring_mask(ctx.l());
        let m = coefs
            .iter()
            .enumerate()
            .map(|(j, &coef)| {
                let x0 = q0.add(c1[coef], c0[j]);
                let x1 = q1.add(c1[n + coef], c0[k + j]);
                scale(&self.scale, x0, x1) & mask
            })
            .collect();
        c1.zeroize(); // the phase carries the key's product
        m
    }
}

/// `round(sum_i x_i * 2^l * c_i / p_i) mod 2^64`, which is `round(t * x / q) mod t` once masked to
/// `l` bits, `x` being the CRT lift of `(x_0, x_1)`: the lift is `sum_i x_i (q/p_i) c_i` up to a
/// multiple of `q`, which contributes a multiple of `t`. The fractions are exact to `2^-66` each
/// (residues below `2^62` times 128-bit fractions); rounding is wrong only within `2^-63` of a
/// half, which decryption noise (below `Delta / 16` after flooding) never reaches.
fn scale(terms: &[ScaleTerm; 2], x0: u64, x1: u64) -> u64 {
    let part = |x: u64, t: &ScaleTerm| -> u128 {
        let x = u128::from(x);
        x * (t.frac >> 64) + ((x * (t.frac & u128::from(u64::MAX))) >> 64)
    };
    // Both parts are below 2^126 (x < 2^62, fraction < 1, in units of 2^-64).
    let frac = part(x0, &terms[0]) + part(x1, &terms[1]);
    let rounded = ((frac + (1u128 << 63)) >> 64) as u64;
    x0.wrapping_mul(terms[0].int).wrapping_add(x1.wrapping_mul(terms[1].int)).wrapping_add(rounded)
}

/// The constants of [`scale`] for the two reply primes.
fn scale_terms(ctx: &HeContext) -> Result<[ScaleTerm; 2], HeError> {
    let l = ctx.l();
    let p = [ctx.moduli[0], ctx.moduli[1]];
    let term = |i: usize| -> Result<ScaleTerm, HeError> {
        let (pi, other) = (p[i], p[1 - i]);
        let qi = &ctx.rns.q[i];
        let c = qi.inv(qi.reduce(other)).ok_or_else(|| HeError::Params("reply primes not coprime".into()))?;
        // c < p_i < 2^62 and l <= 61, so 2^l * c < 2^123.
        let num = u128::from(c) << l;
        let (int, rem) = ((num / u128::from(pi)) as u64, num % u128::from(pi));
        let hi = (rem << 64) / u128::from(pi);
        let lo = (((rem << 64) % u128::from(pi)) << 64) / u128::from(pi);
        Ok(ScaleTerm { int, frac: (hi << 64) | lo })
    };
    Ok([term(0)?, term(1)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::HeParams;
    use rand::{Rng, SeedableRng};

    /// `round(x * 2^l / q) mod 2^l` by long division in 128 bits (`q` below 2^93).
    fn reference(x: u128, q: u128, l: u32) -> u64 {
        let (mut quotient, mut rem, mut left) = (0u128, x, l);
        // Bring in the factor 2^l a few bits at a time so that `rem << step` stays in 128 bits.
        while left > 0 {
            let step = left.min(30);
            let num = rem << step;
            quotient = (quotient << step) + num / q;
            rem = num % q;
            left -= step;
        }
        ((quotient + u128::from(2 * rem >= q)) as u64) & ((1u64 << l) - 1)
    }

    /// The RNS scaling equals exact rounding of the CRT lift, at ring widths across the supported
    /// range, for random residues and the extremes.
    #[test]
    fn scale_matches_exact_rounding() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        for l in [8, 13, 32, 47, 59, 61] {
            let ctx = HeParams::new(l).unwrap().context().unwrap();
            let terms = scale_terms(&ctx).unwrap();
            let (p0, p1) = (ctx.moduli[0], ctx.moduli[1]);
            let q = u128::from(p0) * u128::from(p1);
            let q1 = &ctx.rns.q[1];
            let inv = q1.inv(q1.reduce(p0)).unwrap();
            let extremes = [(0, 0), (p0 - 1, p1 - 1), (0, p1 - 1), (p0 - 1, 0), (1, 1)];
            let random = (0..5000).map(|_| (rng.random_range(0..p0), rng.random_range(0..p1)));
            for (x0, x1) in extremes.into_iter().chain(random) {
                // CRT: x = x0 + p0 * ((x1 - x0) * p0^-1 mod p1).
                let h = q1.mul(q1.sub(x1, q1.reduce(x0)), inv);
                let x = u128::from(x0) + u128::from(p0) * u128::from(h);
                assert!(x < q);
                let got = scale(&terms, x0, x1) & ((1u64 << l) - 1);
                assert_eq!(got, reference(x, q, l), "l = {l}, x0 = {x0}, x1 = {x1}");
            }
        }
    }
}
