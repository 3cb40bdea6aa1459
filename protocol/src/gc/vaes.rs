//! The fixed-key permutation with VAES: AES-128 on four blocks per instruction (one 512-bit
//! register), eight registers in flight so that the rounds pipeline. The `aes` crate (0.8) encrypts
//! one block per instruction, half this rate, so where the CPU has VAES the garbler, the evaluator
//! and the benchmark's AES bound all use this code; elsewhere they use the crate. Checked against the
//! crate block for block.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// AES-128 round keys of the fixed key (public: the permutation's key is not a secret).
#[derive(Clone, Copy)]
pub struct RoundKeys([__m128i; 11]);

impl RoundKeys {
    /// The expanded key if this CPU has AVX-512F and VAES (and AES-NI for the expansion), else `None`.
    pub fn new(key: &[u8; 16]) -> Option<Self> {
        let ok = is_x86_feature_detected!("aes")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("vaes");
        // SAFETY: AES-NI is present (checked).
        ok.then(|| unsafe { Self::expand(key) })
    }

    /// FIPS-197 key expansion with `AESKEYGENASSIST`.
    #[target_feature(enable = "aes")]
    unsafe fn expand(key: &[u8; 16]) -> Self {
        #[inline(always)]
        fn next(k: __m128i, assist: __m128i) -> __m128i {
            // SAFETY: SSE2 is part of the x86_64 baseline.
            unsafe {
                let t = _mm_shuffle_epi32::<0xff>(assist);
                let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
                let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
                let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
                _mm_xor_si128(k, t)
            }
        }
        let mut rk = [_mm_setzero_si128(); 11];
        rk[0] = unsafe { _mm_loadu_si128(key.as_ptr() as *const __m128i) };
        macro_rules! round {
            ($i:literal, $rcon:literal) => {
                rk[$i] = next(rk[$i - 1], _mm_aeskeygenassist_si128::<$rcon>(rk[$i - 1]));
            };
        }
        round!(1, 0x01);
        round!(2, 0x02);
        round!(3, 0x04);
        round!(4, 0x08);
        round!(5, 0x10);
        round!(6, 0x20);
        round!(7, 0x40);
        round!(8, 0x80);
        round!(9, 0x1b);
        round!(10, 0x36);
        RoundKeys(rk)
    }

    /// Round key `r` (0..=10).
    #[inline(always)]
    pub fn key(&self, r: usize) -> __m128i {
        self.0[r]
    }

    /// `π` in place on `n` 16-byte blocks at `p` (any alignment).
    ///
    /// # Safety
    /// The CPU has AVX-512F and VAES (true for every `RoundKeys` built by [`RoundKeys::new`]) and `p`
    /// is valid for reads and writes of `16 * n` bytes.
    #[target_feature(enable = "avx512f,vaes,aes")]
    pub unsafe fn permute(&self, p: *mut u8, n: usize) {
        unsafe {
            let k: [__m512i; 11] = std::array::from_fn(|r| _mm512_broadcast_i32x4(self.0[r]));
            // Eight registers (32 blocks) per step: enough in flight to hide the 5-cycle round latency.
            let full = n / 32;
            for c in 0..full {
                let q = p.add(c * 512) as *mut __m512i;
                let mut s: [__m512i; 8] = std::array::from_fn(|i| _mm512_xor_si512(_mm512_loadu_si512(q.add(i)), k[0]));
                for key in &k[1..10] {
                    for x in s.iter_mut() {
                        *x = _mm512_aesenc_epi128(*x, *key);
                    }
                }
                for (i, x) in s.iter().enumerate() {
                    _mm512_storeu_si512(q.add(i), _mm512_aesenclast_epi128(*x, k[10]));
                }
            }
            // Tail: one register (4 blocks) at a time, then single blocks.
            let mut done = full * 32;
            while done + 4 <= n {
                let q = p.add(done * 16) as *mut __m512i;
                let mut x = _mm512_xor_si512(_mm512_loadu_si512(q), k[0]);
                for key in &k[1..10] {
                    x = _mm512_aesenc_epi128(x, *key);
                }
                _mm512_storeu_si512(q, _mm512_aesenclast_epi128(x, k[10]));
                done += 4;
            }
            while done < n {
                let q = p.add(done * 16) as *mut __m128i;
                let mut x = _mm_xor_si128(_mm_loadu_si128(q), self.0[0]);
                for key in &self.0[1..10] {
                    x = _mm_aesenc_si128(x, *key);
                }
                _mm_storeu_si128(q, _mm_aesenclast_si128(x, self.0[10]));
                done += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes128;
    use aes::cipher::{BlockEncrypt, KeyInit};

    #[test]
    fn vaes_matches_the_aes_crate_for_every_batch_shape() {
        let key = *b"pi-protocol:gc:1";
        let Some(rk) = RoundKeys::new(&key) else { return };
        let crate_aes = Aes128::new(&key.into());
        for n in (0..80).chain([255, 256, 257]) {
            let xs: Vec<u128> = (0..n as u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 77).collect();
            let mut got = xs.clone();
            // SAFETY: `RoundKeys::new` checked the CPU; `got` holds `n` blocks.
            unsafe { rk.permute(got.as_mut_ptr() as *mut u8, n) };
            for (i, &x) in xs.iter().enumerate() {
                let mut b = aes::Block::from(x.to_le_bytes());
                crate_aes.encrypt_block(&mut b);
                let want = u128::from_le_bytes(b.into());
                assert_eq!(got[i], want, "block {i} of {n}");
            }
        }
    }
}
