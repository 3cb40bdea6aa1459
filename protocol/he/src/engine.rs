//! The CPU side of HE preprocessing (no I/O): the client's encryption of its packed mask, the server's
//! packed products with flooding and modulus switching, and the client's decryption. Every function
//! here runs on rayon inside `spawn_blocking`.
//!
//! Wire formats (all residues bit-packed by `wire`, per prime in chain order):
//! - query / public key: `seed[32] | c0 at level 0 (NTT form)`; `c1` is regenerated from the seed;
//! - reply: `c1 at the reply level (NTT form) | c0 at the useful coefficients (coefficient form)`.

use super::HeError;
use super::kernel::EncodedLayer;
use super::pack::Plan;
use super::params::HeContext;
use super::secret::{ClientKey, VARIANCE};
use super::wire::{pack, unpack_checked};
use fhe_math::rq::{Poly, Representation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rayon::prelude::*;
use std::ops::Range;

/// One serialised reply and the server's share of its outputs as `(output index, share)`.
pub(crate) type Reply = (Vec<u8>, Vec<(usize, u64)>);

/// A ciphertext at level 0 as the server holds it: both components in NTT form, flat RNS
/// (`primes x N`, see [`super::rns`]).
pub(crate) struct LevelZeroCt {
    pub c0: Vec<u64>,
    pub c1: Vec<u64>,
}

/// Parses a seeded level-0 ciphertext (query or public key) received from the peer.
pub(crate) fn parse_seeded(ctx: &HeContext, bytes: &[u8]) -> Result<LevelZeroCt, HeError> {
    if bytes.len() != ctx.query_bytes() {
        return Err(HeError::Malformed(format!("ciphertext of {} bytes, expected {}", bytes.len(), ctx.query_bytes())));
    }
    let seed: [u8; 32] = bytes[..32].try_into().map_err(|_| HeError::Malformed("seed".into()))?;
    let n = ctx.degree();
    let mut coeffs = Vec::with_capacity(n * ctx.moduli.len());
    let mut pos = 32;
    for (&p, &b) in ctx.moduli.iter().zip(&ctx.bits) {
        let (v, used) = unpack_checked(&bytes[pos..], n, b, p)?;
        coeffs.extend_from_slice(&v);
        pos += used;
    }
    let c1 = Poly::random_from_seed(ctx.bfv.context_at_level(0)?, Representation::Ntt, seed);
    let c1 = c1.coefficients().as_slice().ok_or_else(|| HeError::Fhe("polynomial not contiguous".into()))?.to_vec();
    Ok(LevelZeroCt { c0: coeffs, c1 })
}

/// Client: encrypts queries `range` of the canonical input tensor (query `i` is channel block
/// `i / tiles`, tile `i % tiles`), one ciphertext each.
pub(crate) fn client_queries(
    ctx: &HeContext,
    key: &ClientKey,
    plan: &Plan,
    t: &[u64],
    range: Range<usize>,
) -> Result<Vec<Vec<u8>>, HeError> {
    range
        .into_par_iter()
        .map_init(ChaCha20Rng::from_os_rng, |rng, i| {
            let block = plan.input_block(t, i / plan.tiles(), i % plan.tiles());
            key.encrypt(ctx, &block, rng)
        })
        .collect()
}

/// `floor(log2(x)) + 1` for `x > 0`, 0 for 0.
fn bit_len(x: u128) -> u32 {
    128 - x.leading_zeros()
}

/// Server: checks that the flooding noise swamps the product noise for these weights by
/// `stat_sec` bits; returns the margin in bits.
pub(crate) fn check_noise(ctx: &HeContext, plan: &Plan, kernel: &[i64]) -> Result<u32, HeError> {
    let wmax = kernel.iter().map(|w| w.unsigned_abs()).max().unwrap_or(0).max(1) as u128;
    let terms = (plan.n_cb * plan.kernel_nnz()) as u128;
    // |noise| <= terms * wmax * (t + B_e) plus the fresh public-key noise: below 2^(l + 2 + bits(terms * wmax)).
    let noise_bits = ctx.l() + 2 + bit_len(terms.saturating_mul(wmax));
    let need = noise_bits + ctx.params.stat_sec;
    if ctx.flood_bits < need {
        return Err(HeError::Noise(format!(
            "product noise up to 2^{noise_bits} (weights up to {wmax}) leaves less than {} bits of flooding margin (flood 2^{})",
            ctx.params.stat_sec, ctx.flood_bits
        )));
    }
    Ok(ctx.flood_bits - noise_bits)
}

/// Server: the products of output groups `groups` of one layer, re-randomised, flooded, switched
/// down and masked by a fresh uniform share. Returns, in (group, tile) order, each reply ciphertext
/// with the server's share at the output indices (`[M][Ho][Wo]`) it covers. Output groups run in
/// parallel, and the tiles of each group too.
pub(crate) fn server_replies(
    layer: &EncodedLayer,
    queries: &[LevelZeroCt],
    pk: &LevelZeroCt,
    groups: Range<usize>,
) -> Result<Vec<Reply>, HeError> {
    let (ctx, plan) = (&*layer.ctx, &layer.plan);
    let tiles = plan.tiles();
    let per_group: Vec<Result<Vec<Reply>, HeError>> = groups
        .into_par_iter()
        .map(|g| {
            let kernels = layer.group(g);
            (0..tiles)
                .into_par_iter()
                .map_init(ChaCha20Rng::from_os_rng, |rng, tile| {
                    let terms = (0..plan.n_cb).map(|cb| {
                        let q = &queries[cb * tiles + tile];
                        (&q.c0[..], &q.c1[..], kernels.get(cb))
                    });
                    let product = ctx.rns.dot2(terms);
                    finish_reply(ctx, plan, pk, (g, tile), product, rng)
                })
                .collect()
        })
        .collect();
    let mut replies = Vec::new();
    for group in per_group {
        replies.extend(group?);
    }
    Ok(replies)
}

/// Re-randomises one accumulated product with the client's public key, adds flooding noise minus the
/// encoded share at the useful coefficients, switches down to the reply level and serialises.
/// `(g, tile)` says which output block `product = (a0, a1)` (NTT form) holds.
///
/// Only `u` is transformed: both components go back to coefficient form once, where the second
/// error, the flooding and the modulus switch need no transform, and the second component is
/// transformed again at the two reply primes (8 + 4 + 2 prime-sized NTTs per reply).
fn finish_reply(
    ctx: &HeContext,
    plan: &Plan,
    pk: &LevelZeroCt,
    (g, tile): (usize, usize),
    (mut a0, mut a1): (Vec<u64>, Vec<u64>),
    rng: &mut ChaCha20Rng,
) -> Result<Reply, HeError> {
    let (rns, n) = (&ctx.rns, ctx.degree());
    let np = rns.primes();
    let outs = plan.outputs(g, tile);
    let small = |rng: &mut ChaCha20Rng| {
        fhe_util::sample_vec_cbd(n, VARIANCE, rng).map(|v| rns.reduce_small(&v)).map_err(|e| HeError::Fhe(e.into()))
    };
    // Encryption of zero under the public key: (u*b + e1, u*a + e2); e1 is the flooding term below.
    let mut u = small(rng)?;
    rns.forward(&mut u, np);
    rns.mul_add(&mut a0, &pk.c0, &u);
    rns.mul_add(&mut a1, &pk.c1, &u);
    rns.backward(&mut a0, np);
    rns.backward(&mut a1, np);
    rns.add_assign(&mut a1, &small(rng)?, np);
    // Flooding noise uniform in [-2^fb, 2^fb) minus Delta_0 * share, at the useful coefficients only:
    // no other coefficient of the first component leaves the server.
    let limbs = (ctx.flood_bits as usize + 1).div_ceil(64);
    let top_mask = match (ctx.flood_bits + 1) % 64 {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    };
    let ring = super::layer::ring_mask(ctx.l());
    // The first component at the useful coefficients only, prime-major (`np x outs`): the flooding,
    // the modulus switch and the serialisation never touch the coefficients that stay here.
    let width = outs.len();
    let mut c0 = Vec::with_capacity(np * width);
    for row in a0.chunks_exact(n) {
        c0.extend(outs.iter().map(|&(coef, _)| row[coef]));
    }
    let mut shares = Vec::with_capacity(width);
    let mut big = vec![0u64; limbs];
    for (k, &(_, idx)) in outs.iter().enumerate() {
        big.iter_mut().for_each(|x| *x = rng.random());
        big[limbs - 1] &= top_mask;
        let s = rng.random::<u64>() & ring;
        shares.push((idx, s));
        for (i, m) in rns.q.iter().enumerate() {
            // Horner over the limbs: every step is below 2^126, reduced in constant time.
            let r = big.iter().rev().fold(0u64, |acc, &limb| m.reduce_u128(((acc as u128) << 64) | limb as u128));
            let flood = m.sub(r, ctx.flood_offset[i]);
            let enc_share = m.mul(ctx.delta0[i], m.reduce(s));
            let c = &mut c0[i * width + k];
            *c = m.add(*c, m.sub(flood, enc_share));
        }
    }
    rns.switch_down_rows(&mut c0, width, ctx.params.reply_level);
    rns.switch_down(&mut a1, ctx.params.reply_level);
    rns.forward(&mut a1, ctx.reply_primes);
    let mut out = Vec::with_capacity(ctx.reply_bytes(width));
    for i in 0..ctx.reply_primes {
        pack(&a1[i * n..(i + 1) * n], ctx.bits[i], &mut out);
    }
    for i in 0..ctx.reply_primes {
        pack(&c0[i * width..(i + 1) * width], ctx.bits[i], &mut out);
    }
    Ok((out, shares))
}

/// Client: decrypts replies `first..` (in (group, tile) order) and returns its share at the output
/// indices (`[M][Ho][Wo]`) they cover.
pub(crate) fn client_decrypt(
    ctx: &HeContext,
    key: &ClientKey,
    plan: &Plan,
    first: usize,
    replies: &[&[u8]],
) -> Result<Vec<(usize, u64)>, HeError> {
    let tiles = plan.tiles();
    let n = ctx.degree();
    let parts: Vec<Result<Vec<(usize, u64)>, HeError>> = replies
        .par_iter()
        .enumerate()
        .map(|(j, bytes)| {
            let i = first + j;
            let outs = plan.outputs(i / tiles, i % tiles);
            if bytes.len() != ctx.reply_bytes(outs.len()) {
                return Err(HeError::Malformed(format!(
                    "reply of {} bytes, expected {}",
                    bytes.len(),
                    ctx.reply_bytes(outs.len())
                )));
            }
            let mut pos = 0;
            let mut c1 = Vec::with_capacity(ctx.reply_primes * n);
            for i in 0..ctx.reply_primes {
                let (v, used) = unpack_checked(&bytes[pos..], n, ctx.bits[i], ctx.moduli[i])?;
                c1.extend_from_slice(&v);
                pos += used;
            }
            let mut c0 = Vec::with_capacity(ctx.reply_primes * outs.len());
            for i in 0..ctx.reply_primes {
                let (v, used) = unpack_checked(&bytes[pos..], outs.len(), ctx.bits[i], ctx.moduli[i])?;
                c0.extend_from_slice(&v);
                pos += used;
            }
            let coefs: Vec<usize> = outs.iter().map(|&(coef, _)| coef).collect();
            let m = key.decrypt_at(ctx, c1, &c0, &coefs);
            Ok(outs.iter().zip(m).map(|(&(_, idx), v)| (idx, v)).collect())
        })
        .collect();
    let mut share = Vec::new();
    for part in parts {
        share.extend(part?);
    }
    Ok(share)
}
