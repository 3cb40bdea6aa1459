//! The fixed-key permutation with VAES: AES-128 on four blocks per instruction (one 512-bit
//! register), eight registers in flight so that the rounds pipeline. The `aes` crate (0.8) encrypts
//! one block per instruction, half this rate, so where the CPU has VAES the garbler, the evaluator
//! and the benchmark's AES bound all use this code; elsewhere they use the crate. Checked against the
//! crate block for block. Crate-private: [`RoundKeys`] exist only with the `cpu` module's VAES proof.

#![cfg(target_arch = "x86_64")]

use crate::cpu::Vaes;
use crate::prg::Mode;
use std::arch::x86_64::*;

/// AES-128 round keys of the fixed key (public: the permutation's key is not a secret), with the
/// proof that this CPU has VAES: holding a `RoundKeys` is what lets code run the VAES rounds.
#[derive(Clone, Copy)]
pub(crate) struct RoundKeys {
    k: [__m128i; 11],
    cpu: Vaes,
}

impl RoundKeys {
    /// The expanded `key` (on a CPU that `cpu` proves has VAES, AVX-512F and AES-NI).
    pub(crate) fn new(cpu: Vaes, key: &[u8; 16]) -> Self {
        // SAFETY: `cpu` proves AES-NI, the one feature `expand` is compiled with beyond the baseline.
        RoundKeys { k: unsafe { expand(key) }, cpu }
    }

    /// The VAES proof these keys were made with.
    #[inline(always)]
    pub(crate) fn cpu(&self) -> Vaes {
        self.cpu
    }

    /// Round key `r` (0..=10).
    #[inline(always)]
    pub(crate) fn key(&self, r: usize) -> __m128i {
        self.k[r]
    }

    /// `π` in place on `blocks`.
    #[inline]
    pub(crate) fn permute(&self, blocks: &mut [aes::Block]) {
        // SAFETY: `self.cpu` proves AVX-512F, VAES and AES-NI; `blocks` is valid for reads and writes
        // of its `16 * len` bytes (`aes::Block` is `[u8; 16]`).
        unsafe { permute_raw(&self.k, blocks.as_mut_ptr() as *mut u8, blocks.len()) }
    }
}

/// AES-128 round keys of a **secret** key (a PRG seed): not `Copy`, zeroized on drop. Used by
/// [`crate::prg::AesPrg`] for counter mode, so the OT extension's matrix columns and the garbler's
/// input labels come from the same four-blocks-per-instruction AES as the garbling hash.
#[derive(Clone)]
pub(crate) struct SecretRoundKeys {
    k: [__m128i; 11],
    _cpu: Vaes,
}

impl SecretRoundKeys {
    /// The expanded `key` (on a CPU that `cpu` proves has VAES, AVX-512F and AES-NI).
    pub(crate) fn new(cpu: Vaes, key: &[u8; 16]) -> Self {
        // SAFETY: `cpu` proves AES-NI, the one feature `expand` is compiled with beyond the baseline.
        SecretRoundKeys { k: unsafe { expand(key) }, _cpu: cpu }
    }

    /// AES-128-CTR: block `j` of `out` becomes (with [`Mode::Xor`], is XORed with) the encryption of
    /// the counter `start + j` as a little-endian 128-bit block.
    #[inline]
    pub(crate) fn ctr(&self, start: u64, out: &mut [u128], mode: Mode) {
        // SAFETY: `self._cpu` proves AVX-512F, VAES and AES-NI; `out` is valid for reads and writes
        // of its `16 * len` bytes.
        unsafe { ctr_raw(&self.k, start, out.as_mut_ptr() as *mut u8, out.len(), mode == Mode::Xor) }
    }
}

impl Drop for SecretRoundKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.k);
    }
}

/// FIPS-197 key expansion with `AESKEYGENASSIST`.
#[target_feature(enable = "aes")]
fn expand(key: &[u8; 16]) -> [__m128i; 11] {
    // A closure, so that it has the function's target features (AES-NI, which implies SSE2).
    let next = |k: __m128i, assist: __m128i| -> __m128i {
        let t = _mm_shuffle_epi32::<0xff>(assist);
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, t)
    };
    let mut rk = [_mm_setzero_si128(); 11];
    // SAFETY: an unaligned 16-byte load from a 16-byte array.
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
    rk
}

/// `π` in place on `n` 16-byte blocks at `p` (any alignment) with round keys `rk`.
///
/// # Safety
/// The CPU has AVX-512F, VAES and AES-NI, and `p` is valid for reads and writes of `16 * n` bytes.
#[target_feature(enable = "avx512f,vaes,aes")]
unsafe fn permute_raw(rk: &[__m128i; 11], p: *mut u8, n: usize) {
    let k: [__m512i; 11] = std::array::from_fn(|r| _mm512_broadcast_i32x4(rk[r]));
    // SAFETY: every load and store below is an unaligned access to one of the `n` blocks at `p`,
    // which the caller guarantees are valid; the features are the caller's guarantee too.
    unsafe {
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
            let mut x = _mm_xor_si128(_mm_loadu_si128(q), rk[0]);
            for key in &rk[1..10] {
                x = _mm_aesenc_si128(x, *key);
            }
            _mm_storeu_si128(q, _mm_aesenclast_si128(x, rk[10]));
            done += 1;
        }
    }
}

/// AES-128-CTR on `n` 16-byte blocks at `p` (any alignment): block `j` is set to (`xor`: XORed
/// with) `AES(rk, start + j)`, the counter a little-endian 128-bit integer.
///
/// # Safety
/// The CPU has AVX-512F, VAES and AES-NI, and `p` is valid for reads and writes of `16 * n` bytes.
#[target_feature(enable = "avx512f,vaes,aes")]
unsafe fn ctr_raw(rk: &[__m128i; 11], start: u64, p: *mut u8, n: usize, xor: bool) {
    let k: [__m512i; 11] = std::array::from_fn(|r| _mm512_broadcast_i32x4(rk[r]));
    // Four counters per register; the high 64 bits of each are 0 while the counter fits in a u64.
    let counters = |c: u64| {
        let c = c as i64;
        _mm512_set_epi64(0, c.wrapping_add(3), 0, c.wrapping_add(2), 0, c.wrapping_add(1), 0, c)
    };
    let four = _mm512_set_epi64(0, 4, 0, 4, 0, 4, 0, 4);
    let encrypt = |x: __m512i| {
        let mut x = _mm512_xor_si512(x, k[0]);
        for key in &k[1..10] {
            x = _mm512_aesenc_epi128(x, *key);
        }
        _mm512_aesenclast_epi128(x, k[10])
    };
    // Blocks whose counter stays below 2^64 take the vector counters; any others (never reached by
    // the protocol's counters, which advance by the blocks actually used) are built one by one.
    let fast = if start.checked_add(n as u64).is_some() { n } else { (u64::MAX - start) as usize };
    // SAFETY: every load and store below is an unaligned access to one of the `n` blocks at `p`
    // (or to the local `tail` array), which the caller guarantees are valid; the features are the
    // caller's guarantee too.
    unsafe {
        // Eight registers (32 blocks) per step: enough in flight to hide the 5-cycle round latency.
        let mut done = 0;
        let mut ctr = counters(start);
        while done + 32 <= fast {
            let q = p.add(done * 16) as *mut __m512i;
            let mut s: [__m512i; 8] = std::array::from_fn(|_| {
                let x = _mm512_xor_si512(ctr, k[0]);
                ctr = _mm512_add_epi64(ctr, four);
                x
            });
            for key in &k[1..10] {
                for x in s.iter_mut() {
                    *x = _mm512_aesenc_epi128(*x, *key);
                }
            }
            for (i, x) in s.iter().enumerate() {
                let mut y = _mm512_aesenclast_epi128(*x, k[10]);
                if xor {
                    y = _mm512_xor_si512(y, _mm512_loadu_si512(q.add(i)));
                }
                _mm512_storeu_si512(q.add(i), y);
            }
            done += 32;
        }
        while done + 4 <= fast {
            let q = p.add(done * 16) as *mut __m512i;
            let mut y = encrypt(ctr);
            ctr = _mm512_add_epi64(ctr, four);
            if xor {
                y = _mm512_xor_si512(y, _mm512_loadu_si512(q));
            }
            _mm512_storeu_si512(q, y);
            done += 4;
        }
        // The last one to three blocks, and any whose counter passes 2^64: four counters at a time
        // through a local array.
        while done < n {
            let m = (n - done).min(4);
            let c: [u128; 4] = std::array::from_fn(|j| start as u128 + (done + j) as u128);
            let mut tail = [0u128; 4];
            _mm512_storeu_si512(
                tail.as_mut_ptr() as *mut __m512i,
                encrypt(_mm512_loadu_si512(c.as_ptr() as *const __m512i)),
            );
            let q = p.add(done * 16) as *mut u128;
            for (j, t) in tail[..m].iter().enumerate() {
                let v = if xor { q.add(j).read_unaligned() ^ t } else { *t };
                q.add(j).write_unaligned(v);
            }
            done += m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes128;
    use aes::cipher::{BlockEncrypt, KeyInit};

    #[test]
    #[ignore = "needs AVX-512F/VL/BW + VAES; .ci/run runs every `simd_` test where the CPU has them"]
    fn simd_vaes_counter_mode_matches_the_aes_crate() {
        let key = [0x5au8; 16];
        let sk = SecretRoundKeys::new(crate::cpu::require_vaes(), &key);
        let crate_aes = Aes128::new(&key.into());
        let want = |start: u64, n: usize| -> Vec<u128> {
            (0..n as u128)
                .map(|j| {
                    let mut b = aes::Block::from((start as u128 + j).to_le_bytes());
                    crate_aes.encrypt_block(&mut b);
                    u128::from_le_bytes(b.into())
                })
                .collect()
        };
        // Every tail shape, the 32-block steps, and counters that cross 2^64.
        let starts = [0u64, 1, 1 << 40, u64::MAX - 40, u64::MAX - 3, u64::MAX];
        for start in starts {
            for n in (0..70).chain([255, 256, 257]) {
                let mut got = vec![0u128; n];
                sk.ctr(start, &mut got, Mode::Fill);
                assert_eq!(got, want(start, n), "fill start {start} n {n}");
                let base: Vec<u128> =
                    (0..n as u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).collect();
                let mut x = base.clone();
                sk.ctr(start, &mut x, Mode::Xor);
                let w: Vec<u128> = base.iter().zip(want(start, n)).map(|(a, b)| a ^ b).collect();
                assert_eq!(x, w, "xor start {start} n {n}");
            }
        }
    }

    #[test]
    #[ignore = "needs AVX-512F/VL/BW + VAES; .ci/run runs every `simd_` test where the CPU has them"]
    fn simd_vaes_matches_the_aes_crate_for_every_batch_shape() {
        let key = *b"pi-protocol:gc:1";
        let rk = RoundKeys::new(crate::cpu::require_vaes(), &key);
        let crate_aes = Aes128::new(&key.into());
        for n in (0..80).chain([255, 256, 257]) {
            let xs: Vec<aes::Block> = (0..n as u128)
                .map(|i| {
                    aes::Block::from((i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 77).to_le_bytes())
                })
                .collect();
            let mut got = xs.clone();
            rk.permute(&mut got);
            let mut want = xs.clone();
            crate_aes.encrypt_blocks(&mut want);
            assert_eq!(got, want, "{n} blocks");
        }
    }
}
