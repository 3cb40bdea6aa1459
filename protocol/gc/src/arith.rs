//! Arithmetic output: turns garbled output bits `z_o` into an additive sharing of `Σ z_o·w_o mod 2^l`
//! without decoding them (ABY's Y2B + B2A, with the OT taken from the output labels themselves).
//!
//! Per output wire with labels `L0`, `L1 = L0 ⊕ Δ` and `π = lsb(L0)`: let `h(L)` be the low 64 bits of
//! `H(L, t)`. The garbler sets `R = h(L_π) - π·w` and sends `T = R + (1-π)·w - h(L_{¬π})` (8 bytes).
//! The evaluator, holding `L_z`, computes `v = h(L_z) + lsb(L_z)·T = R + z·w`. Summed over the wires the
//! evaluator gets `V = R_sum + Σ z_o w_o`, where `R_sum` is masked by the hashes of labels it never
//! holds; the garbler keeps `R_sum`. Cost: 8 bytes and 2 (garbler) / 1 (evaluator) hashes per bit,
//! instead of an `l`-bit garbled subtractor.

use crate::cpu::Backend;
use crate::hash::{FixedKeyAes, Pi, tweak};
use crate::word::{Native, Word};
use crate::{Delta, Label, Layout};
use zeroize::Zeroize;

/// Bytes of one output ciphertext.
pub const ARITH_CT_BYTES: usize = 8;

/// How output labels become shares: output bit `o` weighs `weights[o]` in `Z_{mask + 1}`, and its
/// hashes use the tweaks `(id, first_index + o)` (a scale bit's come after, see [`garble_scaled`]).
/// Both parties use the same conversion.
#[derive(Clone, Copy, Debug)]
pub struct Conversion<'a> {
    weights: &'a [u64],
    mask: u64,
    first_index: u64,
    backend: Backend,
}

impl<'a> Conversion<'a> {
    /// `mask` is `2^l - 1` of the ring; `first_index` must lie past every hash index of the circuit's
    /// AND gates (`2·n_and`), so that the tweaks stay unique.
    pub fn new(weights: &'a [u64], mask: u64, first_index: u64) -> Self {
        Conversion { weights, mask, first_index, backend: Backend::best() }
    }

    /// The same conversion computed on `backend` (the same bytes on every backend).
    pub(crate) fn on(self, backend: Backend) -> Self {
        Conversion { backend, ..self }
    }

    /// Number of outputs (one weight each).
    fn n(&self) -> usize {
        self.weights.len()
    }

    fn pi(&self) -> Pi<'static> {
        FixedKeyAes::get().pi(self.backend)
    }
}

/// One bit's conversion with weight `w`, given the hashes of its label with lsb 0 (`h_even`) and of
/// the other label (`h_odd`), and `m` all ones iff `π = 1`: the garbler's `R = h_even - π·w` and
/// the ciphertext `T = R + (1-π)·w - h_odd`. Branch-free in `π`.
#[inline(always)]
fn convert(h_even: u64, h_odd: u64, m: u64, w: u64) -> (u64, u64) {
    let r = h_even.wrapping_sub(w & m);
    (r, r.wrapping_add(w & !m).wrapping_sub(h_odd))
}

/// Garbler side for `ids.len()` instances: `out_zero[lane * n + o]` are the output zero-labels of
/// instance `lane` (`n` outputs, one per weight). Writes the 8-byte ciphertext of output `o` of
/// instance `lane` at byte `layout.at(lane, o)` of `cts` and the garbler's share offsets `R_sum`
/// (mod `mask + 1`) to `r`.
pub fn garble_arith(
    out_zero: &[Label],
    conv: Conversion<'_>,
    delta: &Delta,
    ids: &[u64],
    (cts, layout): (&mut [u8], Layout),
    r: &mut [u64],
) {
    let (nout, mask) = (conv.n(), conv.mask);
    let lanes = ids.len();
    assert_eq!(out_zero.len(), lanes * nout);
    assert!(layout.lane >= ARITH_CT_BYTES && cts.len() >= layout.span(lanes, nout, ARITH_CT_BYTES));
    assert_eq!(r.len(), lanes);
    let sd = Native::from_u128(FixedKeyAes::sigma(delta.as_u128()));
    // All lanes' hashes in one AES call (SIMD words: no 64-bit stores read back as 128-bit blocks).
    let mut buf = vec![Native::zero(); 2 * nout * lanes];
    let mut ys = vec![0u64; 2 * nout * lanes];
    for (j, &id) in ids.iter().enumerate() {
        for o in 0..nout {
            let i = j * nout + o;
            let s = Native::from_u128(FixedKeyAes::sigma(out_zero[i].0) ^ tweak(id, conv.first_index + o as u64));
            let s1 = s.xor(sd);
            buf[2 * i] = s;
            buf[2 * i + 1] = s1;
            // Low halves of the hash inputs, kept for `H = π(y) ⊕ y` (only the low 64 bits are used).
            ys[2 * i] = s.to_u128() as u64;
            ys[2 * i + 1] = s1.to_u128() as u64;
        }
    }
    conv.pi().permute_words(&mut buf);
    // Branch-free per output.
    for (j, rj) in r.iter_mut().enumerate() {
        let mut sum = 0u64;
        let outs = (0..nout)
            .zip(buf[2 * j * nout..2 * (j + 1) * nout].chunks_exact(2))
            .zip(ys[2 * j * nout..2 * (j + 1) * nout].chunks_exact(2))
            .zip(&out_zero[j * nout..(j + 1) * nout])
            .zip(conv.weights);
        for ((((o, b), y), l), &w) in outs {
            let (h0, h1) = ((b[0].to_u128() as u64) ^ y[0], (b[1].to_u128() as u64) ^ y[1]);
            let m = ((l.0 & 1) as u64).wrapping_neg(); // all ones iff π = 1
            let swap = (h0 ^ h1) & m;
            let (h_even, h_odd) = (h0 ^ swap, h1 ^ swap);
            let (r_o, t) = convert(h_even, h_odd, m, w);
            sum = sum.wrapping_add(r_o);
            let at = layout.at(j, o);
            cts[at..at + ARITH_CT_BYTES].copy_from_slice(&(t & mask).to_le_bytes());
        }
        *rj = sum & mask;
    }
}

/// Evaluator side: from the output labels and the ciphertexts (placed by `layout`),
/// `V = R_sum + Σ z_o w_o` per instance.
pub fn evaluate_arith(out: &[Label], conv: Conversion<'_>, ids: &[u64], (cts, layout): (&[u8], Layout), v: &mut [u64]) {
    let (nout, mask) = (conv.n(), conv.mask);
    let lanes = ids.len();
    assert_eq!(out.len(), lanes * nout);
    assert!(layout.lane >= ARITH_CT_BYTES && cts.len() >= layout.span(lanes, nout, ARITH_CT_BYTES));
    assert_eq!(v.len(), lanes);
    let mut buf = vec![Native::zero(); nout * lanes];
    for j in 0..lanes {
        for o in 0..nout {
            buf[j * nout + o] =
                Native::from_u128(FixedKeyAes::sigma(out[j * nout + o].0) ^ tweak(ids[j], conv.first_index + o as u64));
        }
    }
    conv.pi().permute_words(&mut buf);
    for j in 0..lanes {
        let mut sum = 0u64;
        for o in 0..nout {
            let i = j * nout + o;
            let y = FixedKeyAes::sigma(out[i].0) ^ tweak(ids[j], conv.first_index + o as u64);
            let off = layout.at(j, o);
            let t = u64::from_le_bytes(cts[off..off + ARITH_CT_BYTES].try_into().expect("8 bytes"));
            let h = (buf[i].to_u128() ^ y) as u64;
            sum = sum.wrapping_add(if out[i].lsb() { h.wrapping_add(t) } else { h });
        }
        v[j] = sum & mask;
    }
}

/// Bytes per scaled output in its first ciphertext section: `T_A ‖ T_B`.
pub const SCALED_AB_BYTES: usize = 16;
/// Bytes per scaled output in its second ciphertext section: `T_P`.
pub const SCALED_P_BYTES: usize = 8;

/// The 64-bit half of a hash that output `o` takes from the scale bit's hash of its pair `o / 2`.
#[inline(always)]
fn pair_half(h: u128, o: usize) -> u64 {
    (h >> (64 * (o % 2))) as u64
}

/// Garbler side of scaled outputs: the value is `p · Σ y_o w_o` for output bits `y_o` and one scale
/// bit `p` (see `docs/gc.md`, "Scaled arithmetic output"). Per instance, `out_zero` holds the
/// zero-labels of its `n` outputs `y_0 .. y_{n-1}` (one contiguous slice, one label per weight) and
/// then of its one scale bit `p`: `n + 1` labels, instance after instance. Hash tweaks:
/// `(id, first_index + o)` for `y_o`, `(id, first_index + n + o / 2)` for `p`. Writes `T_A ‖ T_B` of
/// output `o` of instance `lane` at `ab_layout.at(lane, o)` of `ab`, `T_P` at `p_layout.at(lane, o)`
/// of `p_cts`, and `R_sum` to `r`.
pub fn garble_scaled(
    out_zero: &[Label],
    conv: Conversion<'_>,
    delta: &Delta,
    ids: &[u64],
    (ab, ab_layout): (&mut [u8], Layout),
    (p_cts, p_layout): (&mut [u8], Layout),
    r: &mut [u64],
) {
    let (nout, lanes, mask) = (conv.n(), ids.len(), conv.mask);
    let npairs = nout.div_ceil(2);
    assert_eq!(out_zero.len(), lanes * (nout + 1));
    assert!(ab_layout.lane >= SCALED_AB_BYTES && ab.len() >= ab_layout.span(lanes, nout, SCALED_AB_BYTES));
    assert!(p_layout.lane >= SCALED_P_BYTES && p_cts.len() >= p_layout.span(lanes, nout, SCALED_P_BYTES));
    assert_eq!(r.len(), lanes);
    let d = delta.as_u128();
    // Per instance: H(Y0), H(Y1) of every output, then H(P0), H(P1) of every pair.
    let per = 2 * (nout + npairs);
    let mut hs_all = vec![0u128; lanes * per];
    for ((&id, labels), hs) in ids.iter().zip(out_zero.chunks_exact(nout + 1)).zip(hs_all.chunks_exact_mut(per)) {
        let (ys, scale) = (&labels[..nout], labels[nout]);
        for (o, l) in ys.iter().enumerate() {
            let t = tweak(id, conv.first_index + o as u64);
            hs[2 * o] = FixedKeyAes::sigma(l.0) ^ t;
            hs[2 * o + 1] = FixedKeyAes::sigma(l.0 ^ d) ^ t;
        }
        for q in 0..npairs {
            let t = tweak(id, conv.first_index + (nout + q) as u64);
            hs[2 * (nout + q)] = FixedKeyAes::sigma(scale.0) ^ t;
            hs[2 * (nout + q) + 1] = FixedKeyAes::sigma(scale.0 ^ d) ^ t;
        }
    }
    conv.pi().mmo_in_place(&mut hs_all);
    for (j, (rj, labels)) in r.iter_mut().zip(out_zero.chunks_exact(nout + 1)).enumerate() {
        let hs = &hs_all[j * per..(j + 1) * per];
        let (ys, scale) = (&labels[..nout], labels[nout]);
        // `r = lsb(P0)`; the label with lsb 0 carries the value `p = r`.
        // Branch-free in the garbler's secret permute bits: all-ones masks instead of `if`.
        let mr = ((scale.0 & 1) as u64).wrapping_neg();
        let mr128 = mr as u128 | (mr as u128) << 64;
        // `(a, b)`, swapped where `m` is all ones.
        let cswap = |m: u128, a: u128, b: u128| {
            let x = (a ^ b) & m;
            (a ^ x, b ^ x)
        };
        let mut sum = 0u64;
        for (o, (&w, y)) in conv.weights.iter().zip(ys).enumerate() {
            let mp = ((y.0 & 1) as u64).wrapping_neg();
            let mp128 = mp as u128 | (mp as u128) << 64;
            let (he, ho) = cswap(mp128, hs[2 * o], hs[2 * o + 1]);
            let (pe, po) = cswap(mr128, hs[2 * (nout + o / 2)], hs[2 * (nout + o / 2) + 1]);
            // Weights of the two conversions: `α = r·w` (low halves), `β = (1 - 2r)·w` (high halves).
            let (alpha, beta) = (w & mr, w.wrapping_sub(w.wrapping_shl(1) & mr));
            let (ra, ta) = convert(he as u64, ho as u64, mp, alpha);
            let (rb, tb) = convert((he >> 64) as u64, (ho >> 64) as u64, mp, beta);
            let g = pair_half(pe, o);
            let tp = g.wrapping_sub(rb).wrapping_sub(pair_half(po, o));
            sum = sum.wrapping_add(ra).wrapping_add(g);
            let at = ab_layout.at(j, o);
            ab[at..at + 8].copy_from_slice(&(ta & mask).to_le_bytes());
            ab[at + 8..at + 16].copy_from_slice(&(tb & mask).to_le_bytes());
            let at = p_layout.at(j, o);
            p_cts[at..at + SCALED_P_BYTES].copy_from_slice(&(tp & mask).to_le_bytes());
        }
        *rj = sum & mask;
    }
}

/// Evaluator side of scaled outputs (labels, active ones, and ciphertexts as in [`garble_scaled`]):
/// `V = R_sum + p · Σ y_o w_o` per instance.
pub fn evaluate_scaled(
    out: &[Label],
    conv: Conversion<'_>,
    ids: &[u64],
    (ab, ab_layout): (&[u8], Layout),
    (p_cts, p_layout): (&[u8], Layout),
    v: &mut [u64],
) {
    let (nout, lanes, mask) = (conv.n(), ids.len(), conv.mask);
    let npairs = nout.div_ceil(2);
    assert_eq!(out.len(), lanes * (nout + 1));
    assert!(ab_layout.lane >= SCALED_AB_BYTES && ab.len() >= ab_layout.span(lanes, nout, SCALED_AB_BYTES));
    assert!(p_layout.lane >= SCALED_P_BYTES && p_cts.len() >= p_layout.span(lanes, nout, SCALED_P_BYTES));
    assert_eq!(v.len(), lanes);
    let per = nout + npairs;
    let mut hs_all = vec![0u128; lanes * per];
    for ((&id, labels), hs) in ids.iter().zip(out.chunks_exact(nout + 1)).zip(hs_all.chunks_exact_mut(per)) {
        let (ys, scale) = (&labels[..nout], labels[nout]);
        for (o, l) in ys.iter().enumerate() {
            hs[o] = FixedKeyAes::sigma(l.0) ^ tweak(id, conv.first_index + o as u64);
        }
        for q in 0..npairs {
            hs[nout + q] = FixedKeyAes::sigma(scale.0) ^ tweak(id, conv.first_index + (nout + q) as u64);
        }
    }
    conv.pi().mmo_in_place(&mut hs_all);
    let read = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    for (j, (vj, labels)) in v.iter_mut().zip(out.chunks_exact(nout + 1)).enumerate() {
        let hs = &hs_all[j * per..(j + 1) * per];
        let (ys, scale) = (&labels[..nout], labels[nout]);
        let s = scale.lsb();
        let mut sum = 0u64;
        for (o, (&h, y)) in hs[..nout].iter().zip(ys).enumerate() {
            let ly = y.lsb();
            let at = ab_layout.at(j, o);
            let (ta, tb) = (read(ab, at), read(ab, at + 8));
            let u = (h as u64).wrapping_add(if ly { ta } else { 0 });
            let w = ((h >> 64) as u64).wrapping_add(if ly { tb } else { 0 });
            let g = pair_half(hs[nout + o / 2], o).wrapping_add(if s { read(p_cts, p_layout.at(j, o)) } else { 0 });
            sum = sum.wrapping_add(u).wrapping_add(if s { w } else { 0 }).wrapping_add(g);
        }
        *vj = sum & mask;
    }
}

/// Garbler side of a value known only online, scaled by a bit the circuit computed offline: for
/// instance `j` with scale-bit zero-label `p0[j]` and value `x[j]`, writes the 8-byte ciphertext `t[j]`
/// and returns in `r[j]` the garbler's offset `R`, so that the evaluator holding the scale bit's label
/// `P_p` gets `R + p·x` ([`evaluate_online_scaled`]). The plain conversion of one bit with weight `x`
/// (module docs), keyed by the tweak `(ids[j], index)`, which must be unused by the circuit.
pub fn garble_online_scaled(
    p0: &[Label],
    delta: &Delta,
    ids: &[u64],
    index: u64,
    x: &[u64],
    t: &mut [u64],
    r: &mut [u64],
) {
    let n = p0.len();
    assert!(ids.len() == n && x.len() == n && t.len() == n && r.len() == n);
    let d = delta.as_u128();
    let mut hs: Vec<u128> = Vec::with_capacity(2 * n);
    for (l, &id) in p0.iter().zip(ids) {
        let tw = tweak(id, index);
        hs.push(FixedKeyAes::sigma(l.0) ^ tw);
        hs.push(FixedKeyAes::sigma(l.0 ^ d) ^ tw);
    }
    FixedKeyAes::get().mmo_in_place(&mut hs);
    for (j, h) in hs.chunks_exact(2).enumerate() {
        let m = ((p0[j].0 & 1) as u64).wrapping_neg(); // all ones iff π = 1
        let (h0, h1) = (h[0] as u64, h[1] as u64);
        let swap = (h0 ^ h1) & m;
        (r[j], t[j]) = convert(h0 ^ swap, h1 ^ swap, m, x[j]);
    }
    hs.zeroize();
}

/// Evaluator side of [`garble_online_scaled`]: `R + p·x` per instance from the scale bit's active
/// label `p[j]` and the ciphertext `t[j]`.
pub fn evaluate_online_scaled(p: &[Label], ids: &[u64], index: u64, t: &[u64], v: &mut [u64]) {
    let n = p.len();
    assert!(ids.len() == n && t.len() == n && v.len() == n);
    let mut hs: Vec<u128> = p.iter().zip(ids).map(|(l, &id)| FixedKeyAes::sigma(l.0) ^ tweak(id, index)).collect();
    FixedKeyAes::get().mmo_in_place(&mut hs);
    for (j, h) in hs.iter().enumerate() {
        v[j] = (*h as u64).wrapping_add(if p[j].lsb() { t[j] } else { 0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::garble::encode;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Scaled outputs against plaintext `p · Σ y_o w_o`, for every choice of bits and labels.
        #[test]
        fn scaled_output_shares_the_product(nout in 1usize..8, lanes in 1usize..5, l in 1u32..=64, seed in any::<u64>()) {
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let mask = if l == 64 { u64::MAX } else { (1u64 << l) - 1 };
            let delta = Delta::random(&mut rng);
            let weights: Vec<u64> = (0..nout).map(|_| rng.random::<u64>() & mask).collect();
            let ids: Vec<u64> = (0..lanes as u64).map(|j| 7 + j).collect();
            let zero: Vec<Label> = (0..lanes * (nout + 1)).map(|_| Label(rng.random())).collect();
            let bits: Vec<bool> = (0..zero.len()).map(|_| rng.random()).collect();
            let (abl, pl) = (Layout::per_instance(SCALED_AB_BYTES, nout), Layout::per_instance(SCALED_P_BYTES, nout));
            let mut ab = vec![0u8; lanes * nout * SCALED_AB_BYTES];
            let mut pc = vec![0u8; lanes * nout * SCALED_P_BYTES];
            let mut r = vec![0u64; lanes];
            let conv = Conversion::new(&weights, mask, 40);
            garble_scaled(&zero, conv, &delta, &ids, (&mut ab, abl), (&mut pc, pl), &mut r);
            let active: Vec<Label> = zero.iter().zip(&bits).map(|(&z, &b)| encode(z, b, &delta)).collect();
            let mut v = vec![0u64; lanes];
            evaluate_scaled(&active, conv, &ids, (&ab, abl), (&pc, pl), &mut v);
            // A wrong scale label (not one of the pair) gives a wrong value, not silently the right one.
            let mut bad = active.clone();
            bad[nout] = Label(bad[nout].0 ^ (rng.random::<u128>() | 2));
            let mut v_bad = vec![0u64; lanes];
            evaluate_scaled(&bad, conv, &ids, (&ab, abl), (&pc, pl), &mut v_bad);
            if l >= 32 {
                prop_assert_ne!(v_bad[0], v[0]);
            }
            for j in 0..lanes {
                let b = &bits[j * (nout + 1)..(j + 1) * (nout + 1)];
                let want = if b[nout] {
                    (0..nout).filter(|&o| b[o]).fold(0u64, |acc, o| acc.wrapping_add(weights[o])) & mask
                } else {
                    0
                };
                prop_assert_eq!(v[j].wrapping_sub(r[j]) & mask, want, "lane {}", j);
            }
        }
    }
}
