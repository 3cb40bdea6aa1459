//! The 128-bit word the garbling loops compute with. On x86_64 it is an SSE2 register (`__m128i`), so
//! that labels never bounce between general-purpose and vector registers (a 128-bit load of a value
//! just stored as two 64-bit halves stalls store forwarding, which cost half the garbling speed);
//! elsewhere, and in tests on every target, it is a plain `u128`. Both give identical results.

/// Operations the garbler and evaluator need on a label-sized word.
///
/// # Safety
/// Implementors are exactly 16 bytes of plain data whose memory is the little-endian encoding of the
/// word (the AES hash encrypts words in place).
pub unsafe trait Word: Copy + Send + Sync + 'static {
    fn zero() -> Self;
    fn from_u128(x: u128) -> Self;
    fn to_u128(self) -> u128;
    fn xor(self, o: Self) -> Self;
    fn and(self, o: Self) -> Self;
    /// `σ(xL ‖ xR) = (xL ⊕ xR ‖ xL)`, `xL` the high 64 bits.
    fn sigma(self) -> Self;
    /// All ones if the least significant bit is 1, else zero.
    fn lsb_mask(self) -> Self;
    /// Little-endian bytes.
    fn to_bytes(self) -> [u8; 16];
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
    pub struct Sse(pub __m128i);

    // SAFETY (all blocks below): SSE2 is always available on x86_64; loads and stores are unaligned
    // variants on valid 16-byte buffers.
    // SAFETY: `__m128i` is 16 bytes; x86 stores its lanes little-endian.
    unsafe impl Word for Sse {
        #[inline(always)]
        fn zero() -> Self {
            unsafe { Sse(_mm_setzero_si128()) }
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
            unsafe { Sse(_mm_xor_si128(self.0, o.0)) }
        }
        #[inline(always)]
        fn and(self, o: Self) -> Self {
            unsafe { Sse(_mm_and_si128(self.0, o.0)) }
        }
        #[inline(always)]
        fn sigma(self) -> Self {
            unsafe {
                let swapped = _mm_shuffle_epi32::<0b01_00_11_10>(self.0);
                let high_only = _mm_and_si128(self.0, _mm_set_epi64x(-1, 0));
                Sse(_mm_xor_si128(swapped, high_only))
            }
        }
        #[inline(always)]
        fn lsb_mask(self) -> Self {
            unsafe {
                let t = _mm_slli_epi64::<63>(self.0);
                Sse(_mm_srai_epi32::<31>(_mm_shuffle_epi32::<0b01_01_01_01>(t)))
            }
        }
        #[inline(always)]
        fn to_bytes(self) -> [u8; 16] {
            let mut out = [0u8; 16];
            unsafe { _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, self.0) };
            out
        }
        #[inline(always)]
        fn from_bytes(b: &[u8; 16]) -> Self {
            unsafe { Sse(_mm_loadu_si128(b.as_ptr() as *const __m128i)) }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub use sse::Sse;

/// The word type used in production on this target.
#[cfg(target_arch = "x86_64")]
pub type Native = Sse;
#[cfg(not(target_arch = "x86_64"))]
pub type Native = u128;

#[cfg(test)]
mod tests {
    use super::*;

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
}
