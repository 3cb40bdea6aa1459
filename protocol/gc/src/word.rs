//! The words the garbling loops compute with (crate-private: [`X4`]'s operations run AVX-512
//! instructions, sound only because its values carry the `cpu` module's proof).
//!
//! A [`Word`] is one label. On x86_64 it is an SSE2 register (`__m128i`), so that labels never bounce
//! between general-purpose and vector registers (a 128-bit load of a value just stored as two 64-bit
//! halves stalls store forwarding, which cost half the garbling speed); elsewhere, and in tests on
//! every target, it is a plain `u128`. Both give identical results. [`Lanes`] generalises to `K` labels
//! per value: [`X4`] holds four in one AVX-512 register.

/// Operations the garbler and evaluator need on a label-sized word.
///
/// # Safety
/// Implementors are exactly 16 bytes of plain data whose memory is the little-endian encoding of the
/// word (the AES hash encrypts words in place).
pub(crate) unsafe trait Word: Copy + Send + Sync + 'static {
    /// Zero.
    fn zero() -> Self;
    /// The word holding `x`.
    fn from_u128(x: u128) -> Self;
    /// The value held.
    fn to_u128(self) -> u128;
    /// Bitwise XOR.
    fn xor(self, o: Self) -> Self;
    /// Bitwise AND.
    fn and(self, o: Self) -> Self;
    /// `σ(xL ‖ xR) = (xL ⊕ xR ‖ xL)`, `xL` the high 64 bits.
    fn sigma(self) -> Self;
    /// All ones if the least significant bit is 1, else zero.
    fn lsb_mask(self) -> Self;
    /// Little-endian bytes.
    fn to_bytes(self) -> [u8; 16];
    /// From little-endian bytes.
    fn from_bytes(b: &[u8; 16]) -> Self;
    /// Stores the little-endian bytes into `out[..16]` (panics if shorter).
    #[inline(always)]
    fn write_to(self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.to_bytes());
    }
    /// Loads from `b[..16]` (panics if shorter).
    #[inline(always)]
    fn read_from(b: &[u8]) -> Self {
        Self::from_bytes(b[..16].try_into().expect("16 bytes"))
    }
}

// SAFETY: 16 bytes; little-endian in memory on the (little-endian) targets this crate builds for.
unsafe impl Word for u128 {
    #[inline(always)]
    fn zero() -> Self {
        0
    }
    #[inline(always)]
    fn from_u128(x: u128) -> Self {
        x
    }
    #[inline(always)]
    fn to_u128(self) -> u128 {
        self
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        self ^ o
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self & o
    }
    #[inline(always)]
    fn sigma(self) -> Self {
        let hi = (self >> 64) as u64;
        let lo = self as u64;
        (((hi ^ lo) as u128) << 64) | hi as u128
    }
    #[inline(always)]
    fn lsb_mask(self) -> Self {
        0u128.wrapping_sub(self & 1)
    }
    #[inline(always)]
    fn to_bytes(self) -> [u8; 16] {
        self.to_le_bytes()
    }
    #[inline(always)]
    fn from_bytes(b: &[u8; 16]) -> Self {
        u128::from_le_bytes(*b)
    }
}

#[cfg(target_arch = "x86_64")]
mod sse {
    use super::Word;
    use std::arch::x86_64::*;

    /// SSE2 word (SSE2 is part of the x86_64 baseline, so no run-time detection is needed).
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(crate) struct Sse(__m128i);

    // SAFETY: `__m128i` is 16 bytes; x86 stores its lanes little-endian.
    //
    // The operations below run SSE2 instructions only, which every x86_64 CPU has.
    unsafe impl Word for Sse {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: SSE2 is baseline on x86_64.
            Sse(unsafe { _mm_setzero_si128() })
        }
        #[inline(always)]
        fn from_u128(x: u128) -> Self {
            Self::from_bytes(&x.to_le_bytes())
        }
        #[inline(always)]
        fn to_u128(self) -> u128 {
            u128::from_le_bytes(self.to_bytes())
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            // SAFETY: SSE2 is baseline on x86_64.
            Sse(unsafe { _mm_xor_si128(self.0, o.0) })
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            // SAFETY: SSE2 is baseline on x86_64.
            Sse(unsafe { _mm_and_si128(self.0, o.0) })
        }
        #[inline(always)]
        fn sigma(self) -> Self {
            // SAFETY: SSE2 is baseline on x86_64.
            unsafe {
                let swapped = _mm_shuffle_epi32::<0b01_00_11_10>(self.0);
                let high_only = _mm_and_si128(self.0, _mm_set_epi64x(-1, 0));
                Sse(_mm_xor_si128(swapped, high_only))
            }
        }
        #[inline(always)]
        fn lsb_mask(self) -> Self {
            // SAFETY: SSE2 is baseline on x86_64.
            unsafe {
                let t = _mm_slli_epi64::<63>(self.0);
                Sse(_mm_srai_epi32::<31>(_mm_shuffle_epi32::<0b01_01_01_01>(t)))
            }
        }
        #[inline(always)]
        fn to_bytes(self) -> [u8; 16] {
            let mut out = [0u8; 16];
            // SAFETY: SSE2 is baseline; an unaligned 16-byte store into a 16-byte array.
            unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, self.0) };
            out
        }
        #[inline(always)]
        fn from_bytes(b: &[u8; 16]) -> Self {
            // SAFETY: SSE2 is baseline; an unaligned 16-byte load from a 16-byte array.
            Sse(unsafe { _mm_loadu_si128(b.as_ptr() as *const __m128i) })
        }
    }
}

/// What the garbling loops compute with: `K` labels (of `K` circuit instances) per value. Every
/// [`Word`] is one (`K = 1`); on x86_64 with AVX-512, [`X4`] holds four in one 512-bit register, so
/// that each instruction of the gate loops serves four instances (all operations act on each 128-bit
/// label independently, exactly as on one label).
///
/// Values are made only by the functions that take [`Lanes::Cpu`], the proof that the CPU runs the
/// type's instructions, so the operations on values need no proof.
///
/// # Safety
/// Implementors are exactly `16 * K` bytes of plain data whose memory is the `K` labels' little-endian
/// encodings one after the other (the AES hash encrypts them in place as `K` blocks).
pub(crate) unsafe trait Lanes: Copy + Send + Sync + 'static {
    /// Labels per value.
    const K: usize;
    /// Proof that the CPU runs this type's instructions (`()` where the target's baseline suffices).
    type Cpu: Copy;
    /// All labels zero.
    fn zero(cpu: Self::Cpu) -> Self;
    /// The same label in every position.
    fn splat(cpu: Self::Cpu, x: u128) -> Self;
    /// Position `t` holds `f(t)`.
    fn gather(cpu: Self::Cpu, f: impl FnMut(usize) -> u128) -> Self;
    /// Loads label `t` from `b[off + t * stride..][..16]` (panics if out of bounds).
    fn read_strided(cpu: Self::Cpu, b: &[u8], off: usize, stride: usize) -> Self;
    /// Calls `f(t, label t)` for every position.
    fn scatter(self, f: impl FnMut(usize, u128));
    /// Bitwise XOR.
    fn xor(self, o: Self) -> Self;
    /// Bitwise AND.
    fn and(self, o: Self) -> Self;
    /// `σ` of every label.
    fn sigma(self) -> Self;
    /// Per label: all ones if its least significant bit is 1, else zero.
    fn lsb_mask(self) -> Self;
    /// Stores label `t` at `out[off + t * stride..][..16]` (panics if out of bounds).
    fn write_strided(self, out: &mut [u8], off: usize, stride: usize);
}

// SAFETY: a `Word` is 16 bytes holding one little-endian label (the `Word` contract).
unsafe impl<W: Word> Lanes for W {
    const K: usize = 1;
    type Cpu = ();
    #[inline(always)]
    fn zero(_: ()) -> Self {
        <W as Word>::zero()
    }
    #[inline(always)]
    fn splat(_: (), x: u128) -> Self {
        W::from_u128(x)
    }
    #[inline(always)]
    fn gather(_: (), mut f: impl FnMut(usize) -> u128) -> Self {
        W::from_u128(f(0))
    }
    #[inline(always)]
    fn read_strided(_: (), b: &[u8], off: usize, _stride: usize) -> Self {
        W::read_from(&b[off..off + 16])
    }
    #[inline(always)]
    fn scatter(self, mut f: impl FnMut(usize, u128)) {
        f(0, self.to_u128())
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        Word::xor(self, o)
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        Word::and(self, o)
    }
    #[inline(always)]
    fn sigma(self) -> Self {
        Word::sigma(self)
    }
    #[inline(always)]
    fn lsb_mask(self) -> Self {
        Word::lsb_mask(self)
    }
    #[inline(always)]
    fn write_strided(self, out: &mut [u8], off: usize, _stride: usize) {
        self.write_to(&mut out[off..off + 16]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x4 {
    use super::Lanes;
    use crate::cpu::Avx512;
    use std::arch::x86_64::*;

    /// Four labels in one AVX-512 register. A value carries the [`Avx512`] proof it was made with
    /// (a zero-sized field), so one exists only where the CPU has AVX2 and AVX-512F/VL/BW, and its
    /// safe operations (inlined into functions compiled with those features) cannot run elsewhere.
    #[derive(Clone, Copy)]
    #[repr(transparent)]
    pub(crate) struct X4 {
        v: __m512i,
        cpu: Avx512,
    }

    impl X4 {
        /// Wraps a register computed on a CPU that `cpu` proves has AVX-512.
        #[inline(always)]
        pub(crate) fn from_m512(cpu: Avx512, v: __m512i) -> Self {
            X4 { v, cpu }
        }

        /// The register.
        #[inline(always)]
        pub(crate) fn m512(self) -> __m512i {
            self.v
        }

        /// The proof this value was made with: AVX-512 instructions may run on it.
        #[inline(always)]
        pub(crate) fn cpu(self) -> Avx512 {
            self.cpu
        }

        #[inline(always)]
        fn with(self, v: __m512i) -> Self {
            X4 { v, cpu: self.cpu }
        }
    }

    /// Whether the 16-byte items at `off + t * stride` (`t < 4`) lie inside `len` bytes, computed
    /// wide so that no overflow can hide an out-of-bounds access (layouts come from callers).
    #[inline(always)]
    fn strided_fits(len: usize, off: usize, stride: usize) -> bool {
        off as u128 + 3 * stride as u128 + 16 <= len as u128
    }

    #[inline(always)]
    fn m128(x: u128) -> __m128i {
        // SAFETY: SSE2 is baseline on x86_64. Built from general-purpose registers (no store-to-load).
        unsafe { _mm_set_epi64x((x >> 64) as i64, x as i64) }
    }

    // SAFETY: 64 bytes (the proof is a zero-sized field of a transparent struct), four little-endian
    // 128-bit lanes in order.
    //
    // Every operation below runs AVX-512F/VL/BW instructions, which is sound because it receives
    // either a value (made with the `Avx512` proof, see `X4`) or the proof itself.
    unsafe impl Lanes for X4 {
        const K: usize = 4;
        type Cpu = Avx512;
        #[inline(always)]
        fn zero(cpu: Avx512) -> Self {
            // SAFETY: `cpu` proves AVX-512F.
            X4 { v: unsafe { _mm512_setzero_si512() }, cpu }
        }
        #[inline(always)]
        fn splat(cpu: Avx512, x: u128) -> Self {
            // SAFETY: `cpu` proves AVX-512F.
            X4 { v: unsafe { _mm512_broadcast_i32x4(m128(x)) }, cpu }
        }
        #[inline(always)]
        fn gather(cpu: Avx512, mut f: impl FnMut(usize) -> u128) -> Self {
            // SAFETY: `cpu` proves AVX-512F.
            let v = unsafe {
                let v = _mm512_castsi128_si512(m128(f(0)));
                let v = _mm512_inserti32x4::<1>(v, m128(f(1)));
                let v = _mm512_inserti32x4::<2>(v, m128(f(2)));
                _mm512_inserti32x4::<3>(v, m128(f(3)))
            };
            X4 { v, cpu }
        }
        #[inline(always)]
        fn read_strided(cpu: Avx512, b: &[u8], off: usize, stride: usize) -> Self {
            assert!(strided_fits(b.len(), off, stride));
            // SAFETY: `cpu` proves AVX-512F; the four 16-byte loads lie inside `b` (checked above) and
            // are unaligned loads.
            let v = unsafe {
                let p = b.as_ptr().add(off);
                let v = _mm512_castsi128_si512(_mm_loadu_si128(p as *const __m128i));
                let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p.add(stride) as *const __m128i));
                let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p.add(2 * stride) as *const __m128i));
                _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p.add(3 * stride) as *const __m128i))
            };
            X4 { v, cpu }
        }
        #[inline(always)]
        fn scatter(self, mut f: impl FnMut(usize, u128)) {
            let mut b = [0u8; 64];
            // SAFETY: `self` proves AVX-512F; a 64-byte unaligned store into a 64-byte array.
            unsafe { _mm512_storeu_si512(b.as_mut_ptr() as *mut _, self.v) };
            for (t, c) in b.chunks_exact(16).enumerate() {
                f(t, u128::from_le_bytes(c.try_into().expect("16 bytes")));
            }
        }
        #[inline(always)]
        fn xor(self, o: Self) -> Self {
            // SAFETY: `self` proves AVX-512F.
            self.with(unsafe { _mm512_xor_si512(self.v, o.v) })
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            // SAFETY: `self` proves AVX-512F.
            self.with(unsafe { _mm512_and_si512(self.v, o.v) })
        }
        #[inline(always)]
        fn sigma(self) -> Self {
            // SAFETY: `self` proves AVX-512F.
            self.with(unsafe {
                let swapped = _mm512_shuffle_epi32::<0b01_00_11_10>(self.v);
                let high_only = _mm512_and_si512(self.v, _mm512_set_epi64(-1, 0, -1, 0, -1, 0, -1, 0));
                _mm512_xor_si512(swapped, high_only)
            })
        }
        #[inline(always)]
        fn lsb_mask(self) -> Self {
            // SAFETY: `self` proves AVX-512F.
            self.with(unsafe {
                let t = _mm512_slli_epi64::<63>(self.v);
                _mm512_srai_epi32::<31>(_mm512_shuffle_epi32::<0b01_01_01_01>(t))
            })
        }
        #[inline(always)]
        fn write_strided(self, out: &mut [u8], off: usize, stride: usize) {
            assert!(strided_fits(out.len(), off, stride));
            // SAFETY: `self` proves AVX-512F; the four 16-byte stores lie inside `out` (checked above)
            // and are unaligned stores.
            unsafe {
                let p = out.as_mut_ptr().add(off);
                _mm_storeu_si128(p as *mut __m128i, _mm512_castsi512_si128(self.v));
                _mm_storeu_si128(p.add(stride) as *mut __m128i, _mm512_extracti32x4_epi32::<1>(self.v));
                _mm_storeu_si128(p.add(2 * stride) as *mut __m128i, _mm512_extracti32x4_epi32::<2>(self.v));
                _mm_storeu_si128(p.add(3 * stride) as *mut __m128i, _mm512_extracti32x4_epi32::<3>(self.v));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x4::X4;

#[cfg(target_arch = "x86_64")]
pub(crate) use sse::Sse;

/// The word type of the portable backend on this target.
#[cfg(target_arch = "x86_64")]
pub(crate) type Native = Sse;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) type Native = u128;

#[cfg(test)]
mod tests {
    use super::{Native, Word};

    #[test]
    fn native_word_agrees_with_u128() {
        let xs = [0u128, 1, 2, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3211, 1 << 64, (1 << 64) | 1];
        for &x in &xs {
            for &y in &xs {
                let (nx, ny) = (Native::from_u128(x), Native::from_u128(y));
                assert_eq!(nx.to_u128(), x);
                assert_eq!(nx.xor(ny).to_u128(), x ^ y);
                assert_eq!(nx.and(ny).to_u128(), x & y);
            }
            assert_eq!(Native::from_u128(x).sigma().to_u128(), x.sigma());
            assert_eq!(Native::from_u128(x).lsb_mask().to_u128(), x.lsb_mask());
            assert_eq!(Native::from_bytes(&x.to_le_bytes()).to_bytes(), x.to_le_bytes());
        }
        assert_eq!(Native::zero().to_u128(), 0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore = "needs AVX-512F/VL/BW; .ci/run runs every `simd_avx512_` test where the CPU has it"]
    fn simd_avx512_x4_agrees_with_u128_per_label() {
        use super::{Lanes, X4};
        let cpu = crate::cpu::require_avx512();
        let xs = [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3211, 1 << 64, (1 << 64) | 1, 3 << 63, 7];
        let y = [xs[3], xs[4], xs[5], xs[6]];
        for q in xs.windows(4) {
            let v = X4::gather(cpu, |t| q[t]);
            let w = X4::gather(cpu, |t| y[t]);
            let check = |got: X4, want: &dyn Fn(usize) -> u128| {
                got.scatter(|t, g| assert_eq!(g, want(t), "label {t}"));
            };
            check(v, &|t| q[t]);
            check(v.xor(w), &|t| q[t] ^ y[t]);
            check(Lanes::and(v, w), &|t| q[t] & y[t]);
            check(Lanes::sigma(v), &|t| Word::sigma(q[t]));
            check(Lanes::lsb_mask(v), &|t| Word::lsb_mask(q[t]));
            check(X4::splat(cpu, q[1]), &|_| q[1]);
            check(X4::zero(cpu), &|_| 0);
            let mut buf = vec![0u8; 3 * 40 + 16 + 8];
            v.write_strided(&mut buf, 8, 40);
            check(X4::read_strided(cpu, &buf, 8, 40), &|t| q[t]);
            assert_eq!(u128::from_le_bytes(buf[48..64].try_into().unwrap()), q[1]);
        }
    }
}
