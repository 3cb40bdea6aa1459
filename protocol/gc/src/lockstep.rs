//! Half-gates garbling and evaluation of a ReLU gadget (the exact one or the stochastic one, see
//! [`LockstepGadget`]) for [`LANES`] = 16 instances in lock step,
//! as [`Fancy`] backends compiled with AVX-512 and VAES: a wire is four 512-bit registers (16
//! labels), each AND hashes its 64 (garbler) or 32 (evaluator) blocks inline with the round keys in
//! registers, and the arithmetic outputs are hashed as soon as the gadget hands them over. The
//! compiler turns the gadget into straight-line code, so there is no wire array, no batch buffer and
//! no library call per AND (which together cost more than the AES itself). Byte for byte the same
//! tables, ciphertexts and shares as the circuit interpreters (tested).
//!
//! Crate-private. The entry points take the `cpu` module's VAES proof; the helpers below stay
//! `#[inline(always)]` (which `#[target_feature]` functions cannot be) so that the gadget compiles to
//! one straight-line function, and are sound because each receives an [`X4`] or the proof itself.

#![cfg(target_arch = "x86_64")]

use crate::arith::{SCALED_AB_BYTES, SCALED_P_BYTES};
use crate::batch::{ArithCircuit, Batch, LockstepGadget};
use crate::cpu::{Avx512, Vaes};
use crate::fancy::Fancy;
use crate::garble::AND_TABLE_BYTES;
use crate::hash::{FixedKeyAes, tweak};
use crate::vaes::RoundKeys;
use crate::word::{Lanes, X4};
use crate::{Delta, LANES, Label};
use std::arch::x86_64::*;

/// A wire of 16 instances: instance `4j + t` is label `t` of word `j`.
type Wire = [X4; 4];

/// The round keys broadcast to all four 128-bit lanes, with the VAES proof that lets them be used.
#[derive(Clone, Copy)]
struct Keys {
    k: [__m512i; 11],
    cpu: Vaes,
}

impl Keys {
    #[inline(always)]
    fn new(rk: &RoundKeys) -> Self {
        let cpu = rk.cpu();
        // SAFETY: `rk` carries the proof that the CPU has AVX-512F.
        let k = unsafe {
            let mut k = [_mm512_setzero_si512(); 11];
            for (r, kr) in k.iter_mut().enumerate() {
                *kr = _mm512_broadcast_i32x4(rk.key(r));
            }
            k
        };
        Keys { k, cpu }
    }

    /// `π(y) ⊕ y` on every block of `M` wires' worth of registers, each given as `y ⊕ k0` (AES's
    /// first round-key addition is folded into the hash input, see [`Common::hash_in`]).
    #[inline(always)]
    fn mmo<const M: usize>(&self, s: &mut [Wire; M]) {
        let cpu = self.cpu.avx512();
        // SAFETY: `self.cpu` proves AVX-512F and VAES.
        unsafe {
            let mut x = [[_mm512_setzero_si512(); 4]; M];
            for (xm, sm) in x.iter_mut().zip(s.iter()) {
                for (v, y) in xm.iter_mut().zip(sm) {
                    *v = y.m512();
                }
            }
            for key in &self.k[1..10] {
                for xm in x.iter_mut() {
                    for v in xm.iter_mut() {
                        *v = _mm512_aesenc_epi128(*v, *key);
                    }
                }
            }
            for (xm, sm) in x.iter().zip(s.iter_mut()) {
                for (v, y) in xm.iter().zip(sm.iter_mut()) {
                    // π(y) ⊕ (y ⊕ k0) ⊕ k0 in one three-way XOR.
                    let last = _mm512_aesenclast_epi128(*v, self.k[10]);
                    *y = X4::from_m512(cpu, _mm512_ternarylogic_epi64::<0x96>(last, y.m512(), self.k[0]));
                }
            }
        }
    }
}

/// Per label of `x`: whether its least significant bit (the point-and-permute bit) is set, as a
/// mask over both of the label's 64-bit halves.
#[inline(always)]
fn lsb_k(x: X4) -> __mmask8 {
    // SAFETY: `x` proves AVX-512F (see `X4`). Copy each label's low half over its high half, then
    // test bit 0.
    unsafe { _mm512_test_epi64_mask(_mm512_shuffle_epi32::<0b01_00_01_00>(x.m512()), _mm512_set1_epi64(1)) }
}

/// `x ⊕ y` in the labels that `k` selects, `x` elsewhere.
#[inline(always)]
fn xor_if(x: X4, k: __mmask8, y: X4) -> X4 {
    // SAFETY: `x` proves AVX-512F (see `X4`).
    X4::from_m512(x.cpu(), unsafe { _mm512_mask_xor_epi64(x.m512(), k, x.m512(), y.m512()) })
}

/// `b` in the labels that `k` selects, `a` elsewhere.
#[inline(always)]
fn select(k: __mmask8, a: X4, b: X4) -> X4 {
    // SAFETY: `a` proves AVX-512F (see `X4`).
    X4::from_m512(a.cpu(), unsafe { _mm512_mask_blend_epi64(k, a.m512(), b.m512()) })
}

/// `x` in the labels that `k` selects, zero elsewhere.
#[inline(always)]
fn keep_if(k: __mmask8, x: X4) -> X4 {
    // SAFETY: `x` proves AVX-512F (see `X4`).
    X4::from_m512(x.cpu(), unsafe { _mm512_maskz_mov_epi64(k, x.m512()) })
}

/// The low 64 bits of each of the four labels of `x`.
#[inline(always)]
fn low_qwords(x: X4) -> [u64; 4] {
    // SAFETY: `__m512i` and `[u64; 8]` have the same size, and every bit pattern is valid for both.
    let q: [u64; 8] = unsafe { std::mem::transmute(x.m512()) };
    [q[0], q[2], q[4], q[6]]
}

/// Whether `n` items from `at` lie inside `len` items (without an overflow that could hide an
/// out-of-bounds access).
#[inline(always)]
fn fits(len: usize, at: usize, n: usize) -> bool {
    len >= n && at <= len - n
}

/// Stores the tables `tg`, `te` of four instances as 128 contiguous bytes `tg0 te0 tg1 te1 ..` at
/// `out[at..]` (the interleaved layout).
#[inline(always)]
fn store_tables(tg: X4, te: X4, out: &mut [u8], at: usize) {
    assert!(fits(out.len(), at, 128));
    // SAFETY: `tg` proves AVX-512F (see `X4`); the two 64-byte unaligned stores lie inside `out`
    // (checked above).
    unsafe {
        let (tg, te) = (tg.m512(), te.m512());
        let lo = _mm512_permutex2var_epi64(tg, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), te);
        let hi = _mm512_permutex2var_epi64(tg, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), te);
        let p = out.as_mut_ptr().add(at) as *mut __m512i;
        _mm512_storeu_si512(p, lo);
        _mm512_storeu_si512(p.add(1), hi);
    }
}

/// The inverse of [`store_tables`].
#[inline(always)]
fn load_tables(cpu: Avx512, b: &[u8], at: usize) -> (X4, X4) {
    assert!(fits(b.len(), at, 128));
    // SAFETY: `cpu` proves AVX-512F; the two 64-byte unaligned loads lie inside `b` (checked above).
    unsafe {
        let p = b.as_ptr().add(at) as *const __m512i;
        let (l0, l1) = (_mm512_loadu_si512(p), _mm512_loadu_si512(p.add(1)));
        let tg = _mm512_permutex2var_epi64(l0, _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0), l1);
        let te = _mm512_permutex2var_epi64(l0, _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2), l1);
        (X4::from_m512(cpu, tg), X4::from_m512(cpu, te))
    }
}

/// Stores the four labels of `x` as 64 contiguous bytes at `out[at..]`.
#[inline(always)]
fn store64(x: X4, out: &mut [u8], at: usize) {
    assert!(fits(out.len(), at, 64));
    // SAFETY: `x` proves AVX-512F (see `X4`); the 64-byte unaligned store lies inside `out` (checked
    // above).
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(at) as *mut __m512i, x.m512()) }
}

/// The inverse of [`store64`].
#[inline(always)]
fn load64(cpu: Avx512, b: &[u8], at: usize) -> X4 {
    assert!(fits(b.len(), at, 64));
    // SAFETY: `cpu` proves AVX-512F; the 64-byte unaligned load lies inside `b` (checked above).
    X4::from_m512(cpu, unsafe { _mm512_loadu_si512(b.as_ptr().add(at) as *const __m512i) })
}

/// Per label: its high 64 bits moved to the low half (high half zero).
#[inline(always)]
fn high_to_low(x: X4) -> X4 {
    // SAFETY: `x` proves AVX-512BW (see `X4`).
    X4::from_m512(x.cpu(), unsafe { _mm512_bsrli_epi128::<8>(x.m512()) })
}

/// The 64-bit half (in the low half) that output `o` takes from its pair's hash: low for even `o`.
#[inline(always)]
fn pair_half(h: X4, o: usize) -> X4 {
    if o.is_multiple_of(2) { h } else { high_to_low(h) }
}

/// Stores the low 64 bits of the four labels of `x` as 32 contiguous bytes at `out[at..]`.
#[inline(always)]
fn store_low_qwords(x: X4, out: &mut [u8], at: usize) {
    assert!(fits(out.len(), at, 32));
    // SAFETY: `x` proves AVX-512F (see `X4`); the 32-byte unaligned store lies inside `out` (checked
    // above).
    unsafe {
        let packed = _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0), x.m512());
        _mm256_storeu_si256(out.as_mut_ptr().add(at) as *mut __m256i, _mm512_castsi512_si256(packed));
    }
}

/// The inverse of [`store_low_qwords`] (high halves zero).
#[inline(always)]
fn load_low_qwords(cpu: Avx512, b: &[u8], at: usize) -> X4 {
    assert!(fits(b.len(), at, 32));
    // SAFETY: `cpu` proves AVX-512F; the 32-byte unaligned load lies inside `b` (checked above).
    X4::from_m512(cpu, unsafe {
        let q = _mm512_castsi256_si512(_mm256_loadu_si256(b.as_ptr().add(at) as *const __m256i));
        let spread = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 3, 2, 2, 1, 1, 0, 0), q);
        _mm512_and_si512(spread, _mm512_set_epi64(0, -1, 0, -1, 0, -1, 0, -1))
    })
}

/// Per 64-bit half: `a + b` (wrapping).
#[inline(always)]
fn add64(a: X4, b: X4) -> X4 {
    // SAFETY: `a` proves AVX-512F (see `X4`).
    X4::from_m512(a.cpu(), unsafe { _mm512_add_epi64(a.m512(), b.m512()) })
}

/// Per 64-bit half: `a - b` (wrapping).
#[inline(always)]
fn sub64(a: X4, b: X4) -> X4 {
    // SAFETY: `a` proves AVX-512F (see `X4`).
    X4::from_m512(a.cpu(), unsafe { _mm512_sub_epi64(a.m512(), b.m512()) })
}

#[inline(always)]
fn xor(a: Wire, b: Wire) -> Wire {
    let mut o = a;
    for j in 0..4 {
        o[j] = a[j].xor(b[j]);
    }
    o
}

/// The next group's records and input labels. While a backend works on one group it prefetches
/// into L2 the same bytes of the next group that it is reading or writing (past the caches, memory
/// and not AES limits a batch). Empty slices: no next group.
#[derive(Clone, Copy, Default)]
pub(crate) struct Ahead<'a> {
    pub(crate) records: &'a [u8],
    pub(crate) gin: &'a [Label],
    pub(crate) ein: &'a [Label],
}

/// Where [`Ahead`]'s regions start: the next group's, or without one this group's own (then the
/// prefetches touch lines already in use). Only ever prefetched, never read.
#[derive(Clone, Copy)]
struct Next {
    records: *const u8,
    gin: *const u8,
    ein: *const u8,
}

impl Next {
    fn new(ahead: Ahead, records: &[u8], gin: &[Label], ein: &[Label]) -> Self {
        let pick = |next: *const u8, n: usize, own: *const u8, m: usize| if n == m { next } else { own };
        Next {
            records: pick(ahead.records.as_ptr(), ahead.records.len(), records.as_ptr(), records.len()),
            gin: pick(ahead.gin.as_ptr() as _, ahead.gin.len(), gin.as_ptr() as _, gin.len()),
            ein: pick(ahead.ein.as_ptr() as _, ahead.ein.len(), ein.as_ptr() as _, ein.len()),
        }
    }
}

/// Prefetches into L2 the `lines` cache lines at `base + at` (a hint: it changes no memory and
/// cannot fault). Callers pass an `at` inside the region of `base`, so that the hint is useful.
#[inline(always)]
fn prefetch(base: *const u8, at: usize, lines: usize) {
    for l in 0..lines {
        // SAFETY: a prefetch reads and writes no memory and never faults, whatever the address; the
        // address is computed with wrapping arithmetic, so it is no out-of-bounds pointer offset either.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(at + 64 * l) as *const i8) };
    }
}

/// What both parties share: the hash tweak bases and where each instance's record lives.
struct Common<'a> {
    keys: Keys,
    /// The AVX-512 proof (from the keys' VAES proof), for values made from memory.
    cpu: Avx512,
    /// `tweak(id, 0) ⊕ k0` of each instance (`k0`: AES's first round key).
    base: Wire,
    /// Input labels in batch order: bit by bit, the 16 instances side by side.
    gin: &'a [Label],
    ein: &'a [Label],
    /// Start of the output ciphertexts in the group's records (after all 16 instances' tables):
    /// first every output's `T_A ‖ T_B`, then every output's `T_P`.
    ct_at: usize,
    and_idx: usize,
    /// Scaled outputs handed over so far: the next one's number (its position in the gadget's sequence).
    out_idx: usize,
    arith_index: u64,
    weights: &'a [u64],
    /// The next group's records and labels.
    next: Next,
}

impl<'a> Common<'a> {
    fn new(
        ac: &'a ArithCircuit,
        first_id: u64,
        gin: &'a [Label],
        ein: &'a [Label],
        records: &[u8],
        ahead: Ahead,
    ) -> Self {
        let rk = FixedKeyAes::get().round_keys().expect("the fixed key is expanded for VAES on CPUs with VAES");
        let keys = Keys::new(rk);
        let cpu = keys.cpu.avx512();
        Common {
            keys,
            cpu,
            base: {
                let k0 = X4::from_m512(cpu, keys.k[0]);
                let mut base = [X4::zero(cpu); 4];
                for (j, b) in base.iter_mut().enumerate() {
                    let id = |t: usize| (first_id + (4 * j + t) as u64) as i64;
                    // SAFETY: `cpu` proves AVX-512F. `tweak(id, 0)` puts the id in the high 64 bits.
                    let t = X4::from_m512(cpu, unsafe { _mm512_set_epi64(id(3), 0, id(2), 0, id(1), 0, id(0), 0) });
                    debug_assert_eq!(low_qwords(t), [0; 4]);
                    *b = t.xor(k0);
                    debug_assert_eq!(tweak(id(0) as u64, 0) >> 64, id(0) as u128);
                }
                base
            },
            gin,
            ein,
            ct_at: LANES * ac.and_bytes(),
            and_idx: 0,
            out_idx: 0,
            arith_index: ac.arith_index(),
            weights: ac.weights(),
            next: Next::new(ahead, records, gin, ein),
        }
    }

    /// Input `i` of all 16 instances: 256 contiguous bytes (batch order); `next` is where the same
    /// array of the next group starts.
    #[inline(always)]
    fn input(&self, labels: &[Label], next: *const u8, i: usize) -> Wire {
        let at = LANES * i;
        assert!(fits(labels.len(), at, LANES));
        prefetch(next, 16 * at, 4);
        let mut w = [X4::zero(self.cpu); 4];
        for (j, x) in w.iter_mut().enumerate() {
            // SAFETY: `self.cpu` proves AVX-512F; labels `at + 4j .. at + 4j + 4` (64 bytes, loaded
            // unaligned) are in bounds (checked above).
            *x = X4::from_m512(self.cpu, unsafe {
                _mm512_loadu_si512(labels.as_ptr().add(at + 4 * j) as *const __m512i)
            });
        }
        w
    }

    /// Numbers the next AND gate `g` and returns the hash inputs of its two wires (tweaks `2g`, `2g+1`).
    #[inline(always)]
    fn next_and(&mut self, a: &Wire, b: &Wire) -> (usize, Wire, Wire) {
        let g = self.and_idx;
        self.and_idx += 1;
        (g, self.hash_in(a, 2 * g as u64), self.hash_in(b, 2 * g as u64 + 1))
    }

    /// Hash inputs `y = σ(x) ⊕ tweak(id, index)` of a wire, as `y ⊕ k0` (what [`Keys::mmo`] takes).
    #[inline(always)]
    fn hash_in(&self, x: &Wire, index: u64) -> Wire {
        let t = X4::splat(self.cpu, index as u128);
        let mut y = [X4::zero(self.cpu); 4];
        for j in 0..4 {
            y[j] = x[j].sigma().xor(self.base[j]).xor(t);
        }
        y
    }

    /// Numbers the next scaled output `o` (its position in the sequence the gadget hands over).
    #[inline(always)]
    fn next_output(&mut self) -> usize {
        let o = self.out_idx;
        self.out_idx += 1;
        o
    }

    /// Checks, after the last scaled output, that there was one per weight (a shape check, once per
    /// group; counted here rather than asked of the iterator up front, which compiled the AND loop
    /// with more spills).
    #[inline(always)]
    fn outputs_done(&self) {
        assert_eq!(self.out_idx, self.weights.len(), "one scaled output per weight");
    }

    /// Where output `o`'s `T_A ‖ T_B` of the 16 instances start (16 bytes each, side by side).
    #[inline(always)]
    fn ab_at(&self, o: usize) -> usize {
        self.ct_at + SCALED_AB_BYTES * LANES * o
    }

    /// Where output `o`'s `T_P` of the 16 instances start (8 bytes each, after all `T_A ‖ T_B`).
    #[inline(always)]
    fn p_at(&self, o: usize) -> usize {
        self.ct_at + SCALED_AB_BYTES * LANES * self.weights.len() + SCALED_P_BYTES * LANES * o
    }
}

/// The garbler backend: wires carry zero-labels.
struct Garbler<'a> {
    c: Common<'a>,
    /// `H(P0)`, `H(P1)` of the scale bit for the current output pair.
    p_hash: [Wire; 2],
    delta: X4,
    sd: X4,
    records: &'a mut [u8],
    /// `Σ R_o` per instance (low 64 bits of each label slot).
    r_sum: Wire,
    mask: X4,
    /// The scale bit's zero-labels, once the gadget has handed over its outputs.
    scale: Wire,
}

impl Fancy for Garbler<'_> {
    type Wire = Wire;
    #[inline(always)]
    fn garbler_input(&mut self, i: usize) -> Wire {
        self.c.input(self.c.gin, self.c.next.gin, i)
    }
    #[inline(always)]
    fn evaluator_input(&mut self, i: usize) -> Wire {
        self.c.input(self.c.ein, self.c.next.ein, i)
    }
    #[inline(always)]
    fn xor(&mut self, a: Wire, b: Wire) -> Wire {
        xor(a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: Wire) -> Wire {
        xor(a, [self.delta; 4])
    }
    #[inline(always)]
    fn and(&mut self, a: Wire, b: Wire) -> Wire {
        let (g, ya, yb) = self.c.next_and(&a, &b);
        let sd = [self.sd; 4];
        // The hashes of both labels of each input wire.
        let mut h = [ya, xor(ya, sd), yb, xor(yb, sd)];
        self.c.keys.mmo(&mut h);
        let off = AND_TABLE_BYTES * LANES * g;
        prefetch(self.c.next.records, off, AND_TABLE_BYTES * LANES / 64);
        let mut out = a;
        for j in 0..4 {
            let (a0, b0) = (a[j], b[j]);
            let (h0, h1, h2, h3) = (h[0][j], h[1][j], h[2][j], h[3][j]);
            let (ka, kb) = (lsb_k(a0), lsb_k(b0));
            let tg = xor_if(h0.xor(h1), kb, self.delta);
            let te = h2.xor(h3).xor(a0);
            store_tables(tg, te, self.records, off + 4 * AND_TABLE_BYTES * j);
            out[j] = xor_if(xor_if(h0.xor(h2), ka, tg), kb, h2.xor(h3));
        }
        out
    }
    #[inline(always)]
    fn scaled_outputs(&mut self, ys: impl Iterator<Item = Wire>, p: Wire) {
        for y in ys {
            let o = self.c.next_output();
            self.scaled_output(o, y, p);
        }
        self.c.outputs_done();
        self.scale = p;
    }
}

impl Garbler<'_> {
    /// Scaled output `o` (as [`crate::arith::garble_scaled`], 16 instances at once): the two
    /// conversions of `y` run side by side in the two 64-bit halves of each label slot, weights
    /// `α = r·w` (low) and `β = (1 - 2r)·w` (high) with `r = lsb(P0)`; the scale bit's hash of
    /// output pair `o / 2` is computed at even `o` and its halves serve `o` and `o + 1`.
    #[inline(always)]
    fn scaled_output(&mut self, o: usize, y: Wire, p: Wire) {
        let sd = [self.sd; 4];
        let hy = self.c.hash_in(&y, self.c.arith_index + o as u64);
        // The hashes of both labels of `y` (and, at even `o`, of the scale bit), in one AES pass.
        let h = if o.is_multiple_of(2) {
            let hp = self.c.hash_in(&p, self.c.arith_index + (self.c.weights.len() + o / 2) as u64);
            let mut h = [hy, xor(hy, sd), hp, xor(hp, sd)];
            self.c.keys.mmo(&mut h);
            self.p_hash = [h[2], h[3]];
            [h[0], h[1]]
        } else {
            let mut h = [hy, xor(hy, sd)];
            self.c.keys.mmo(&mut h);
            h
        };
        let w = self.c.weights[o] as u128;
        // (α ‖ β) for r = 0 and r = 1.
        let cpu = self.c.cpu;
        let (w_r0, w_r1) = (X4::splat(cpu, w << 64), X4::splat(cpu, w | ((w as u64).wrapping_neg() as u128) << 64));
        let (ab_at, p_at) = (self.c.ab_at(o), self.c.p_at(o));
        prefetch(self.c.next.records, ab_at, SCALED_AB_BYTES * LANES / 64);
        prefetch(self.c.next.records, p_at, SCALED_P_BYTES * LANES / 64);
        for j in 0..4 {
            let (h0, h1) = (h[0][j], h[1][j]);
            let (ky, kr) = (lsb_k(y[j]), lsb_k(p[j]));
            let (even, odd) = (select(ky, h0, h1), select(ky, h1, h0));
            let wv = select(kr, w_r0, w_r1);
            let r_ab = sub64(even, keep_if(ky, wv));
            let t_ab = sub64(add64(r_ab, keep_if(!ky, wv)), odd).and(self.mask);
            store64(t_ab, self.records, ab_at + 4 * SCALED_AB_BYTES * j);
            let (hp0, hp1) = (pair_half(self.p_hash[0][j], o), pair_half(self.p_hash[1][j], o));
            let (pe, po) = (select(kr, hp0, hp1), select(kr, hp1, hp0));
            let t_p = sub64(sub64(pe, high_to_low(r_ab)), po).and(self.mask);
            store_low_qwords(t_p, self.records, p_at + 4 * SCALED_P_BYTES * j);
            self.r_sum[j] = add64(self.r_sum[j], add64(r_ab, pe));
        }
    }
}

/// The evaluator backend: wires carry active labels.
struct Evaluator<'a> {
    c: Common<'a>,
    /// `H(P)` of the scale bit for the current output pair.
    p_hash: Wire,
    records: &'a [u8],
    v_sum: Wire,
    /// The scale bit's active labels, once the gadget has handed over its outputs.
    scale: Wire,
}

impl Fancy for Evaluator<'_> {
    type Wire = Wire;
    #[inline(always)]
    fn garbler_input(&mut self, i: usize) -> Wire {
        self.c.input(self.c.gin, self.c.next.gin, i)
    }
    #[inline(always)]
    fn evaluator_input(&mut self, i: usize) -> Wire {
        self.c.input(self.c.ein, self.c.next.ein, i)
    }
    #[inline(always)]
    fn xor(&mut self, a: Wire, b: Wire) -> Wire {
        xor(a, b)
    }
    #[inline(always)]
    fn not(&mut self, a: Wire) -> Wire {
        a
    }
    #[inline(always)]
    fn and(&mut self, a: Wire, b: Wire) -> Wire {
        let (g, ya, yb) = self.c.next_and(&a, &b);
        let mut h = [ya, yb];
        self.c.keys.mmo(&mut h);
        let off = AND_TABLE_BYTES * LANES * g;
        prefetch(self.c.next.records, off, AND_TABLE_BYTES * LANES / 64);
        let mut out = a;
        for j in 0..4 {
            let (tg, te) = load_tables(self.c.cpu, self.records, off + 4 * AND_TABLE_BYTES * j);
            let (la, lb) = (a[j], b[j]);
            out[j] = xor_if(xor_if(h[0][j].xor(h[1][j]), lsb_k(la), tg), lsb_k(lb), te.xor(la));
        }
        out
    }
    #[inline(always)]
    fn scaled_outputs(&mut self, ys: impl Iterator<Item = Wire>, p: Wire) {
        for y in ys {
            let o = self.c.next_output();
            self.scaled_output(o, y, p);
        }
        self.c.outputs_done();
        self.scale = p;
    }
}

impl Evaluator<'_> {
    /// `V += u + s·v + g`: `u ‖ v = H(Y) + lsb(Y)·(T_A ‖ T_B)`, `g = h(P) + s·T_P`, `s = lsb(P)`.
    #[inline(always)]
    fn scaled_output(&mut self, o: usize, y: Wire, p: Wire) {
        let hy = self.c.hash_in(&y, self.c.arith_index + o as u64);
        // The hash of `y`'s label (and, at even `o`, of the scale bit's), in one AES pass.
        let h = if o.is_multiple_of(2) {
            let hp = self.c.hash_in(&p, self.c.arith_index + (self.c.weights.len() + o / 2) as u64);
            let mut h = [hy, hp];
            self.c.keys.mmo(&mut h);
            self.p_hash = h[1];
            h[0]
        } else {
            let mut h = [hy];
            self.c.keys.mmo(&mut h);
            h[0]
        };
        let (ab_at, p_at) = (self.c.ab_at(o), self.c.p_at(o));
        prefetch(self.c.next.records, ab_at, SCALED_AB_BYTES * LANES / 64);
        prefetch(self.c.next.records, p_at, SCALED_P_BYTES * LANES / 64);
        for j in 0..4 {
            let (ky, ks) = (lsb_k(y[j]), lsb_k(p[j]));
            let uv = add64(h[j], keep_if(ky, load64(self.c.cpu, self.records, ab_at + 4 * SCALED_AB_BYTES * j)));
            let t_p = load_low_qwords(self.c.cpu, self.records, p_at + 4 * SCALED_P_BYTES * j);
            let g = add64(pair_half(self.p_hash[j], o), keep_if(ks, t_p));
            self.v_sum[j] = add64(self.v_sum[j], add64(add64(uv, keep_if(ks, high_to_low(uv))), g));
        }
    }
}

/// Checks the shapes shared by both entry points; returns the gadget.
fn check(ac: &ArithCircuit, gin: &[Label], ein: &[Label], records: usize, out: (usize, usize)) -> LockstepGadget {
    let g = ac.gadget().expect("the circuit must be recorded from a lock-step gadget");
    let c = ac.circuit();
    assert_eq!((gin.len(), ein.len()), (LANES * c.n_garbler_inputs, LANES * c.n_evaluator_inputs));
    assert_eq!(out, (LANES, LANES));
    assert_eq!(records, LANES * ac.record_bytes());
    g
}

/// Writes the 16 labels of `w` to `out`.
#[inline(always)]
fn store_wire(w: &Wire, out: &mut [Label]) {
    for (j, x) in w.iter().enumerate() {
        x.scatter(|t, l| out[4 * j + t] = Label(l));
    }
}

/// Garbles the 16 instances of the gadget `ac` in `group` (records as in
/// [`crate::batch::garble_batch`]); `r` receives the garbler's output offsets and `scale` the scale
/// bit's zero-labels. `cpu` proves that the CPU runs the lock-step code.
pub(crate) fn garble_relus(
    cpu: Vaes,
    ac: &ArithCircuit,
    delta: &Delta,
    group: Batch<'_, &mut [u8]>,
    ahead: Ahead,
    r: &mut [u64],
    scale: &mut [Label],
) {
    let g = check(ac, group.gin, group.ein, group.records.len(), (r.len(), scale.len()));
    // SAFETY: `cpu` proves every feature `garble_relus_vaes` is compiled with.
    unsafe { garble_relus_vaes(cpu, ac, &g, delta, group, ahead, (r, scale)) }
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,vaes,aes")]
fn garble_relus_vaes(
    cpu: Vaes,
    ac: &ArithCircuit,
    gadget: &LockstepGadget,
    delta: &Delta,
    group: Batch<'_, &mut [u8]>,
    ahead: Ahead,
    (r, scale): (&mut [u64], &mut [Label]),
) {
    let cpu = cpu.avx512();
    let Batch { first_id, gin, ein, records } = group;
    let d = X4::splat(cpu, delta.as_u128());
    let mask = ac.mask();
    let mut g = Garbler {
        c: Common::new(ac, first_id, gin, ein, records, ahead),
        delta: d,
        sd: d.sigma(),
        records,
        r_sum: [X4::zero(cpu); 4],
        p_hash: [[X4::zero(cpu); 4]; 2],
        mask: X4::splat(cpu, mask as u128 | (mask as u128) << 64),
        scale: [X4::zero(cpu); 4],
    };
    gadget.run(&mut g);
    for j in 0..4 {
        for (t, s) in low_qwords(g.r_sum[j]).into_iter().enumerate() {
            r[4 * j + t] = s & mask;
        }
    }
    store_wire(&g.scale, scale);
}

/// Evaluates the 16 instances in `group` from their active input labels and records; `v` receives
/// `R_sum + Σ z_o w_o` per instance and `scale` the scale bit's active labels. `cpu` proves that the
/// CPU runs the lock-step code.
pub(crate) fn evaluate_relus(
    cpu: Vaes,
    ac: &ArithCircuit,
    group: Batch<'_, &[u8]>,
    ahead: Ahead,
    v: &mut [u64],
    scale: &mut [Label],
) {
    let g = check(ac, group.gin, group.ein, group.records.len(), (v.len(), scale.len()));
    // SAFETY: `cpu` proves every feature `evaluate_relus_vaes` is compiled with.
    unsafe { evaluate_relus_vaes(cpu, ac, &g, group, ahead, (v, scale)) }
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,vaes,aes")]
fn evaluate_relus_vaes(
    cpu: Vaes,
    ac: &ArithCircuit,
    gadget: &LockstepGadget,
    group: Batch<'_, &[u8]>,
    ahead: Ahead,
    (v, scale): (&mut [u64], &mut [Label]),
) {
    let cpu = cpu.avx512();
    let Batch { first_id, gin, ein, records } = group;
    let mut e = Evaluator {
        c: Common::new(ac, first_id, gin, ein, records, ahead),
        p_hash: [X4::zero(cpu); 4],
        records,
        v_sum: [X4::zero(cpu); 4],
        scale: [X4::zero(cpu); 4],
    };
    gadget.run(&mut e);
    for j in 0..4 {
        for (t, s) in low_qwords(e.v_sum[j]).into_iter().enumerate() {
            v[4 * j + t] = s & ac.mask();
        }
    }
    store_wire(&e.scale, scale);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{input_bits, instance_major};
    use crate::cpu::{Backend, require_vaes};
    use crate::evaluate::evaluate_lanes_on;
    use crate::garble::{encode, garble_lanes_on};
    use crate::relu::{ReluParams, relu_arith_circuit};
    use crate::{Group, Layout};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// The portable circuit interpreters on the same 16 instances (labels in batch order): records and `R`.
    fn interpreter_garble(
        ac: &ArithCircuit,
        delta: &Delta,
        ids: &[u64],
        gin: &[Label],
        ein: &[Label],
    ) -> (Vec<u8>, Vec<u64>) {
        let c = ac.circuit();
        let gin = instance_major(gin, LANES, c.n_garbler_inputs);
        let ein = instance_major(ein, LANES, c.n_evaluator_inputs);
        let mut recs = vec![0u8; LANES * ac.record_bytes()];
        let mut out = vec![Label::default(); LANES * c.outputs.len()];
        let mut r = vec![0u64; LANES];
        let (tables, cts) = recs.split_at_mut(LANES * ac.and_bytes());
        let layout = Layout::interleaved(AND_TABLE_BYTES, LANES);
        garble_lanes_on(
            Backend::Portable,
            c,
            delta,
            Group { ids, gin: &gin, ein: &ein, tables, layout, out: &mut out },
        );
        ac.garble_outputs(Backend::Portable, &out, delta, ids, cts, &mut r);
        (recs, r)
    }

    #[test]
    #[ignore = "needs AVX-512F/VL/BW + VAES; .ci/run runs every `simd_` test where the CPU has them"]
    fn simd_vaes_lockstep_equals_interpreters_and_plaintext() {
        let cpu = require_vaes();
        let config = ProptestConfig::with_cases(24);
        proptest!(config, |(l in 16u32..=64, shift_frac in 0.0f64..1.0, k_frac in 0.0f64..1.0,
                             seed in any::<u64>(), first_id in any::<u32>())| {
            let shift = ((l / 2 - 1) as f64 * shift_frac) as u32;
            let k = shift + 2 + ((l - shift - 2) as f64 * k_frac) as u32;
            let p = ReluParams { l, k, shift };
            let ac = relu_arith_circuit(&p);
            let ku = k as usize;
            let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
            let delta = Delta::random(&mut rng);
            let gz: Vec<Label> = (0..LANES * ku).map(|_| Label(rng.random())).collect();
            let ez: Vec<Label> = (0..LANES * ku).map(|_| Label(rng.random())).collect();
            let first = first_id as u64;
            let ids: Vec<u64> = (0..LANES as u64).map(|j| first + j).collect();
            let mut recs = vec![0u8; LANES * ac.record_bytes()];
            let mut r = vec![0u64; LANES];
            let group = Batch { first_id: first, gin: &gz, ein: &ez, records: &mut recs[..] };
            let mut scale = vec![Label::default(); LANES];
            garble_relus(cpu, &ac, &delta, group, Ahead::default(), &mut r, &mut scale);
            let (want_recs, want_r) = interpreter_garble(&ac, &delta, &ids, &gz, &ez);
            prop_assert!(recs == want_recs, "tables or ciphertexts differ from the interpreter");
            prop_assert_eq!(&r, &want_r);

            // Evaluate on random shares; compare with the interpreter and with plaintext ReLU.
            let a: Vec<u64> = (0..LANES).map(|_| rng.random::<u64>() & p.mask()).collect();
            let b: Vec<u64> = (0..LANES).map(|_| rng.random::<u64>() & p.mask()).collect();
            let ga: Vec<Label> = input_bits(&a, ku).zip(&gz).map(|(bit, &z)| encode(z, bit, &delta)).collect();
            let ea: Vec<Label> = input_bits(&b, ku).zip(&ez).map(|(bit, &z)| encode(z, bit, &delta)).collect();
            let mut v = vec![0u64; LANES];
            let group = Batch { first_id: first, gin: &ga, ein: &ea, records: &recs[..] };
            evaluate_relus(cpu, &ac, group, Ahead::default(), &mut v, &mut scale);
            let mut out = vec![Label::default(); LANES * ac.circuit().outputs.len()];
            let (tables, cts) = recs.split_at(LANES * ac.and_bytes());
            let (gi, ei) = (instance_major(&ga, LANES, ku), instance_major(&ea, LANES, ku));
            let layout = Layout::interleaved(AND_TABLE_BYTES, LANES);
            let group = Group { ids: &ids, gin: &gi, ein: &ei, tables, layout, out: &mut out };
            evaluate_lanes_on(Backend::Portable, ac.circuit(), group);
            let mut want_v = vec![0u64; LANES];
            ac.evaluate_outputs(Backend::Portable, &out, &ids, cts, &mut want_v);
            prop_assert_eq!(&v, &want_v);
            for i in 0..LANES {
                let y = ((a[i].wrapping_add(b[i]) << (64 - k)) as i64) >> (64 - k);
                let z = (y.max(0) >> shift) as u64;
                prop_assert_eq!(v[i].wrapping_sub(r[i]) & p.mask(), z, "instance {}", i);
            }
        });
    }
}
