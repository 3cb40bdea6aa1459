//! Raw RNS polynomial arithmetic for the server's hot path: a polynomial at level 0 is a flat
//! `Vec<u64>` of `primes x N` residues (prime-major), in NTT or coefficient form as the caller
//! tracks. Working on flat slices instead of `fhe`'s `Poly` lets the server keep weights
//! pre-transformed, accumulate products lazily in 128 bits, and switch moduli in the coefficient
//! domain with no transform. All arithmetic is constant time (`fhe_math`'s `Modulus` and NTT).

use super::HeError;
use fhe_math::ntt::NttOperator;
use fhe_math::zq::Modulus;

/// Products of two residues below `2^62` are below `2^124`; a `u128` accumulator holding one reduced
/// value (below `2^62`) takes 15 more such products without overflow.
const LAZY_TERMS: usize = 15;

/// Primes below `2^30` have products below `2^60`: a `u64` accumulator holding one reduced value takes
/// 15 more ([`LAZY_TERMS`]) without overflow, so their rows of [`Rns::dot2`] need no 128-bit arithmetic.
const SMALL_PRIME: u64 = 1 << 30;

/// The primes of the ciphertext chain with their NTT plans and mod-switching constants.
#[derive(Debug)]
pub(crate) struct Rns {
    pub n: usize,
    pub q: Vec<Modulus>,
    ntt: Vec<NttOperator>,
    /// `inv_last[k][i] = q_k^{-1} mod q_i` for `i < k` (dropping prime `k`).
    inv_last: Vec<Vec<u64>>,
}

impl Rns {
    pub fn new(moduli: &[u64], n: usize) -> Result<Self, HeError> {
        // The lazy sums of `dot2` rely on residues below 2^62 (`fhe` caps primes at 62 bits).
        if let Some(p) = moduli.iter().find(|&&p| p >> 62 != 0) {
            return Err(HeError::Params(format!("prime {p} is not below 2^62")));
        }
        let q = moduli
            .iter()
            .map(|&p| Modulus::new(p).map_err(|e| HeError::Params(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let ntt = q
            .iter()
            .map(|m| NttOperator::new(m, n).ok_or_else(|| HeError::Params(format!("no NTT of size {n} mod {}", **m))))
            .collect::<Result<Vec<_>, _>>()?;
        let inv_last = (0..q.len())
            .map(|k| {
                (0..k)
                    .map(|i| {
                        q[i].inv(q[i].reduce(moduli[k])).ok_or_else(|| HeError::Params("primes not coprime".into()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { n, q, ntt, inv_last })
    }

    pub fn primes(&self) -> usize {
        self.q.len()
    }

    /// Forward NTT of the first `primes` rows of `a`.
    pub fn forward(&self, a: &mut [u64], primes: usize) {
        for (row, op) in a.chunks_exact_mut(self.n).zip(&self.ntt).take(primes) {
            op.forward(row);
        }
    }

    /// Inverse NTT of the first `primes` rows of `a`.
    pub fn backward(&self, a: &mut [u64], primes: usize) {
        for (row, op) in a.chunks_exact_mut(self.n).zip(&self.ntt).take(primes) {
            op.backward(row);
        }
    }

    /// A polynomial with signed integer coefficients `c` (`c.len() == N`), reduced into every prime
    /// in constant time (Barrett reduction of `c + q * 2^64`).
    #[cfg(test)]
    pub fn reduce_all(&self, c: &[i64]) -> Vec<u64> {
        let mut out = vec![0u64; self.primes() * self.n];
        for (i, row) in out.chunks_exact_mut(self.n).enumerate() {
            for (dst, &v) in row.iter_mut().zip(c) {
                *dst = self.reduce_signed(i, v);
            }
        }
        out
    }

    /// `v` (any `i64`) reduced mod prime `i` in constant time.
    pub fn reduce_signed(&self, i: usize, v: i64) -> u64 {
        let m = &self.q[i];
        m.reduce_u128((((**m as i128) << 64) + v as i128) as u128)
    }

    /// [`Rns::reduce_all`] for noise: every `|c| < 2^16`, below every prime, so a negative value only
    /// needs its prime added (branch-free).
    pub fn reduce_small(&self, c: &[i64]) -> Vec<u64> {
        let mut out = vec![0u64; self.primes() * self.n];
        for (row, m) in out.chunks_exact_mut(self.n).zip(&self.q) {
            for (dst, &v) in row.iter_mut().zip(c) {
                debug_assert!(v.unsigned_abs() < 1 << 16);
                *dst = (v as u64).wrapping_add(**m & ((v >> 63) as u64));
            }
        }
        out
    }

    /// `a += b` on the first `primes` rows (both reduced).
    pub fn add_assign(&self, a: &mut [u64], b: &[u64], primes: usize) {
        for ((ra, rb), m) in a.chunks_exact_mut(self.n).zip(b.chunks_exact(self.n)).zip(&self.q).take(primes) {
            m.add_vec(ra, rb);
        }
    }

    /// `acc += a * b` pointwise (NTT form) for every prime.
    pub fn mul_add(&self, acc: &mut [u64], a: &[u64], b: &[u64]) {
        for (((r, ra), rb), m) in
            acc.chunks_exact_mut(self.n).zip(a.chunks_exact(self.n)).zip(b.chunks_exact(self.n)).zip(&self.q)
        {
            for ((d, &x), &y) in r.iter_mut().zip(ra).zip(rb) {
                *d = m.add(*d, m.mul(x, y));
            }
        }
    }

    /// `sum_j a_j * b_j` pointwise over all primes for pairs of NTT-form polynomials, accumulated in
    /// 128 bits and reduced every [`LAZY_TERMS`] products: two dot products (`(x0, x1)` against the same
    /// `b`) per call, which is the shape of a ciphertext times a plaintext.
    pub fn dot2<'a>(
        &self,
        terms: impl Iterator<Item = (&'a [u64], &'a [u64], &'a [u64])> + Clone,
    ) -> (Vec<u64>, Vec<u64>) {
        let n = self.n;
        if terms.clone().next().is_none() {
            return (vec![0; self.primes() * n], vec![0; self.primes() * n]);
        }
        let mut out0 = Vec::with_capacity(self.primes() * n);
        let mut out1 = Vec::with_capacity(self.primes() * n);
        // The first product of each prime is stored, not added, so the accumulators are never
        // zero-filled (a megabyte of stores per reply otherwise).
        let mut acc0: Vec<u128> = Vec::with_capacity(n);
        let mut acc1: Vec<u128> = Vec::with_capacity(n);
        for (i, m) in self.q.iter().enumerate() {
            let row = i * n..(i + 1) * n;
            if **m < SMALL_PRIME {
                let (r0, r1) = Self::dot2_small(
                    m,
                    terms.clone().map(|(x0, x1, b)| (&x0[row.clone()], &x1[row.clone()], &b[row.clone()])),
                );
                out0.extend(r0);
                out1.extend(r1);
                continue;
            }
            for (t, (x0, x1, b)) in terms.clone().enumerate() {
                if t > 0 && t % LAZY_TERMS == 0 {
                    acc0.iter_mut().chain(acc1.iter_mut()).for_each(|v| *v = m.reduce_u128(*v) as u128);
                }
                let (x0, x1, b) = (&x0[row.clone()], &x1[row.clone()], &b[row.clone()]);
                if t == 0 {
                    acc0.clear();
                    acc1.clear();
                    acc0.extend(x0.iter().zip(b).map(|(&x, &w)| x as u128 * w as u128));
                    acc1.extend(x1.iter().zip(b).map(|(&x, &w)| x as u128 * w as u128));
                } else {
                    for j in 0..n {
                        let w = b[j] as u128;
                        acc0[j] += x0[j] as u128 * w;
                        acc1[j] += x1[j] as u128 * w;
                    }
                }
            }
            out0.extend(acc0.iter().map(|&v| m.reduce_u128(v)));
            out1.extend(acc1.iter().map(|&v| m.reduce_u128(v)));
        }
        (out0, out1)
    }

    /// [`Rns::dot2`] at one prime below [`SMALL_PRIME`]: products below `2^60` summed in 64 bits, 15 at
    /// a time between reductions, which the compiler turns into 32x32-bit vector multiplies.
    fn dot2_small<'a>(
        m: &Modulus,
        mut terms: impl Iterator<Item = (&'a [u64], &'a [u64], &'a [u64])>,
    ) -> (Vec<u64>, Vec<u64>) {
        let Some((x0, x1, b)) = terms.next() else { return (Vec::new(), Vec::new()) };
        // Residues are below 2^30, so truncating them to 32 bits loses nothing.
        let prod = |x: u64, w: u64| (x as u32 as u64) * (w as u32 as u64);
        let mut acc0: Vec<u64> = x0.iter().zip(b).map(|(&x, &w)| prod(x, w)).collect();
        let mut acc1: Vec<u64> = x1.iter().zip(b).map(|(&x, &w)| prod(x, w)).collect();
        for (t, (x0, x1, b)) in terms.enumerate() {
            if (t + 1) % LAZY_TERMS == 0 {
                acc0.iter_mut().chain(acc1.iter_mut()).for_each(|v| *v = m.reduce(*v));
            }
            for ((a, &x), &w) in acc0.iter_mut().zip(x0).zip(b) {
                *a += prod(x, w);
            }
            for ((a, &x), &w) in acc1.iter_mut().zip(x1).zip(b) {
                *a += prod(x, w);
            }
        }
        acc0.iter_mut().chain(acc1.iter_mut()).for_each(|v| *v = m.reduce(*v));
        (acc0, acc1)
    }

    /// Divides a coefficient-form polynomial by its last `drop` primes with rounding and keeps the
    /// remaining `primes - drop` rows (BFV modulus switching, one prime at a time: for the last prime
    /// `q_k`, `x' = (x - [x + q_k/2]_{q_k} + q_k/2) / q_k`, computed mod every remaining prime).
    pub fn switch_down(&self, a: &mut Vec<u64>, drop: usize) {
        self.switch_down_rows(a, self.n, drop);
    }

    /// [`Rns::switch_down`] on rows of any `width`: the same coefficients of every prime, e.g. only
    /// those of a polynomial that leave the server (the switch works coefficient by coefficient).
    ///
    /// Lazy and constant time: `x + q_i/2 + 2 q_i - (y mod q_i)` stays below `4 q_i < 2^64` with `y mod
    /// q_i` only reduced to `[0, 2 q_i)` (and not at all when `q_k <= 2 q_i`), and Shoup's product
    /// takes any 64-bit multiplicand and reduces once at the end.
    pub fn switch_down_rows(&self, a: &mut Vec<u64>, width: usize, drop: usize) {
        if width == 0 {
            return; // no coefficients: nothing to switch (and `a` is empty)
        }
        let mut primes = a.len() / width;
        debug_assert_eq!(a.len(), primes * width);
        for _ in 0..drop {
            let k = primes - 1;
            let (rest, last) = a.split_at_mut(k * width);
            let qk = &self.q[k];
            let half = **qk / 2;
            last.iter_mut().for_each(|v| *v = qk.add(*v, half));
            for (i, row) in rest.chunks_exact_mut(width).enumerate() {
                let qi = &self.q[i];
                let p = **qi;
                let offset = qi.reduce(half) + 2 * p;
                let inv = self.inv_last[k][i];
                let inv_shoup = qi.shoup(inv);
                if **qk <= 2 * p {
                    for (x, &y) in row.iter_mut().zip(last.iter()) {
                        *x = qi.mul_shoup(*x + offset - y, inv, inv_shoup);
                    }
                } else {
                    for (x, &y) in row.iter_mut().zip(last.iter()) {
                        *x = qi.mul_shoup(*x + offset - qi.lazy_reduce(y), inv, inv_shoup);
                    }
                }
            }
            a.truncate(k * width);
            primes = k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::HeParams;
    use fhe_math::rq::{Poly, Representation, traits::TryConvertFrom};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn setup() -> (std::sync::Arc<crate::params::HeContext>, Rns) {
        let ctx = HeParams::new(59).unwrap().context().unwrap();
        let rns = Rns::new(&ctx.moduli, ctx.degree()).unwrap();
        (ctx, rns)
    }

    /// Our NTT, products and modulus switching agree with `fhe`'s `Poly` on random inputs.
    #[test]
    fn agrees_with_fhe_poly() {
        let (ctx, rns) = setup();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let ctx0 = ctx.bfv.context_at_level(0).unwrap();
        let a = Poly::random(ctx0, Representation::PowerBasis, &mut rng);
        let b = Poly::random(ctx0, Representation::PowerBasis, &mut rng);
        let raw = |p: &Poly| p.coefficients().as_slice().unwrap().to_vec();

        let (mut an, mut bn) = (a.clone(), b.clone());
        an.change_representation(Representation::Ntt);
        bn.change_representation(Representation::Ntt);
        let (mut ra, mut rb) = (raw(&a), raw(&b));
        rns.forward(&mut ra, 4);
        rns.forward(&mut rb, 4);
        assert_eq!(ra, raw(&an));
        assert_eq!(rb, raw(&bn));

        // 40 terms cross the lazy reduction boundary twice.
        let terms: Vec<(&[u64], &[u64], &[u64])> = (0..40).map(|_| (&ra[..], &rb[..], &rb[..])).collect();
        let (d0, d1) = rns.dot2(terms.iter().copied());
        // `fhe`'s sum of 40 copies of x * y.
        let forty_products = |x: &Poly, y: &Poly| {
            let mut prod = x.clone();
            prod *= y;
            let mut sum = Poly::zero(ctx0, Representation::Ntt);
            for _ in 0..40 {
                sum += &prod;
            }
            raw(&sum)
        };
        assert_eq!(d0, forty_products(&an, &bn));
        assert_eq!(d1, forty_products(&bn, &bn));

        let mut back = ra.clone();
        rns.backward(&mut back, 4);
        assert_eq!(back, raw(&a));

        let mut sw = raw(&a);
        rns.switch_down(&mut sw, 2);
        let mut expect = a.clone();
        expect.switch_down_to(ctx.bfv.context_at_level(2).unwrap()).unwrap();
        assert_eq!(sw, raw(&expect));

        // The same switch on a few coefficients of every prime (as a reply's first component).
        let n = ctx.degree();
        let coefs = [0usize, 1, 17, 4095, n - 1];
        let mut few: Vec<u64> = raw(&a).chunks_exact(n).flat_map(|row| coefs.map(|c| row[c])).collect();
        rns.switch_down_rows(&mut few, coefs.len(), 2);
        let full = raw(&expect);
        let expect_few: Vec<u64> = full.chunks_exact(n).flat_map(|row| coefs.map(|c| row[c])).collect();
        assert_eq!(few, expect_few);

        let signed: Vec<i64> = (0..ctx.degree() as i64).map(|i| (i % 7 - 3) * (1 << 40) + i).collect();
        let p = Poly::try_convert_from(signed.as_slice(), ctx0, false, Representation::PowerBasis).unwrap();
        assert_eq!(rns.reduce_all(&signed), raw(&p));
    }
}
