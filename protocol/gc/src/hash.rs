//! Fixed-key AES as the tweakable correlation-robust hash of half-gates:
//! `H(x, t) = π(σ(x) ⊕ t) ⊕ σ(x) ⊕ t`, with `π` AES-128 under a public fixed key and `σ` the linear
//! orthomorphism `σ(xL ‖ xR) = (xL ⊕ xR ‖ xL)` (Guo-Katz-Wang-Yu 2020). One AES call per hash; callers
//! hash many independent inputs per call so that AES-NI pipelines them. The permutation runs on VAES
//! (four blocks per instruction, crate-private `vaes` module) where the CPU has it, else on the `aes`
//! crate. Everything public here is safe; the one cast of label words to AES blocks is `as_blocks`.

use crate::cpu::{self, Backend};
use crate::word::Lanes;
use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use std::sync::OnceLock;

#[cfg(target_endian = "big")]
compile_error!("the garbling hash reads labels in their in-memory little-endian form");

/// The public AES key of the fixed-key permutation (any fixed value works; this one is "nothing up my sleeve").
const FIXED_KEY: [u8; 16] = *b"pi-protocol:gc:1";

/// Blocks handed to the cipher per call (the AES-NI backend works on 8 at a time).
const BATCH: usize = 64;

/// The fixed-key permutation `π` and the hash built from it. One process-wide instance
/// ([`FixedKeyAes::get`]); `π` runs on VAES where the CPU has it, else on the `aes` crate.
pub struct FixedKeyAes {
    cipher: Aes128,
    /// Present exactly where the CPU has VAES (the keys carry the proof).
    #[cfg(target_arch = "x86_64")]
    vaes: Option<crate::vaes::RoundKeys>,
}

impl FixedKeyAes {
    fn new() -> Self {
        Self {
            cipher: Aes128::new(&FIXED_KEY.into()),
            #[cfg(target_arch = "x86_64")]
            vaes: cpu::vaes().map(|v| crate::vaes::RoundKeys::new(v, &FIXED_KEY)),
        }
    }

    /// The process-wide instance (the key schedule is computed once).
    pub fn get() -> &'static FixedKeyAes {
        static INSTANCE: OnceLock<FixedKeyAes> = OnceLock::new();
        INSTANCE.get_or_init(FixedKeyAes::new)
    }

    /// Which implementation computes `π` on this machine (reported by the benchmark).
    pub fn backend(&self) -> &'static str {
        match self.pi(Backend::best()) {
            #[cfg(target_arch = "x86_64")]
            Pi::Vaes(_) => "vaes",
            Pi::Crate(_) if cpu::features().aesni => "aes-ni (aes crate)",
            Pi::Crate(_) => "aes crate",
        }
    }

    /// `π` as `backend` computes it: VAES for [`Backend::Vaes`], else the `aes` crate.
    #[inline]
    pub(crate) fn pi(&self, backend: Backend) -> Pi<'_> {
        #[cfg(target_arch = "x86_64")]
        if let (Some(_), Some(rk)) = (backend.vaes(), &self.vaes) {
            return Pi::Vaes(rk);
        }
        let _ = backend;
        Pi::Crate(&self.cipher)
    }

    /// The VAES round keys, present exactly where the CPU has VAES (they carry the proof).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn round_keys(&self) -> Option<&crate::vaes::RoundKeys> {
        self.vaes.as_ref()
    }

    /// `σ(xL ‖ xR) = (xL ⊕ xR ‖ xL)`, with `xL` the high 64 bits.
    #[inline(always)]
    pub fn sigma(x: u128) -> u128 {
        let hi = (x >> 64) as u64;
        let lo = x as u64;
        (((hi ^ lo) as u128) << 64) | hi as u128
    }

    /// In place `y ← π(y) ⊕ y` for every element; callers put `σ(x) ⊕ t` in `y` first.
    #[inline]
    pub fn mmo_in_place(&self, ys: &mut [u128]) {
        self.pi(Backend::best()).mmo_in_place(ys)
    }

    /// Raw `π` in place on 16-byte blocks (little-endian `u128`s), computed exactly as the gate loops
    /// compute it (VAES where present): the benchmark measures its AES bound with this.
    #[inline]
    pub fn permute(&self, xs: &mut [u128]) {
        self.pi(Backend::best()).permute_words(xs)
    }

    /// `H(x, t)` for one input (slow path for tests and odd cases).
    pub fn hash(&self, x: u128, tweak: u128) -> u128 {
        let mut y = [Self::sigma(x) ^ tweak];
        self.mmo_in_place(&mut y);
        y[0]
    }

    /// Raw `π` through the `aes` crate even where VAES is present (the benchmark reports both).
    pub fn permute_with_crate(&self, xs: &mut [u128]) {
        Pi::Crate(&self.cipher).permute_words(xs)
    }
}

/// The permutation `π` as one backend computes it ([`FixedKeyAes::pi`]).
#[derive(Clone, Copy)]
pub(crate) enum Pi<'a> {
    /// VAES, four blocks per instruction.
    #[cfg(target_arch = "x86_64")]
    Vaes(&'a crate::vaes::RoundKeys),
    /// The `aes` crate (AES-NI where present, detected by the crate).
    Crate(&'a Aes128),
}

impl Pi<'_> {
    /// `π` in place on `blocks`.
    #[inline]
    fn permute_blocks(self, blocks: &mut [aes::Block]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Pi::Vaes(rk) => rk.permute(blocks),
            Pi::Crate(cipher) => cipher.encrypt_blocks(blocks),
        }
    }

    /// Raw `π` on [`Lanes`] values in place, without copies: the hot loops keep the hash inputs `y`
    /// themselves and finish `H = π(y) ⊕ y` (a `memcpy` of the batch stalled store forwarding into AES).
    #[inline]
    pub(crate) fn permute_words<W: Lanes>(self, xs: &mut [W]) {
        self.permute_blocks(as_blocks(xs))
    }

    /// In place `y ← π(y) ⊕ y` for every element (see [`FixedKeyAes::mmo_in_place`]).
    #[inline]
    pub(crate) fn mmo_in_place(self, ys: &mut [u128]) {
        let mut blocks = [aes::Block::default(); BATCH];
        for chunk in ys.chunks_mut(BATCH) {
            let blocks = &mut blocks[..chunk.len()];
            for (b, y) in blocks.iter_mut().zip(chunk.iter()) {
                *b = aes::Block::from(y.to_le_bytes());
            }
            self.permute_blocks(blocks);
            for (b, y) in blocks.iter().zip(chunk.iter_mut()) {
                let out: [u8; 16] = (*b).into();
                *y ^= u128::from_le_bytes(out);
            }
        }
    }
}

/// The `K` labels of each value of `xs` as AES blocks, in place.
#[inline(always)]
fn as_blocks<W: Lanes>(xs: &mut [W]) -> &mut [aes::Block] {
    debug_assert_eq!(std::mem::size_of::<W>(), 16 * W::K);
    // SAFETY: `W` is `16 * K` bytes of plain data whose memory is `K` little-endian labels (the
    // `Lanes` contract; little-endian target), so the slice is `16 * K * len` initialised bytes, and
    // `aes::Block` is `[u8; 16]` with alignment 1 and no invalid values. The borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr() as *mut aes::Block, xs.len() * W::K) }
}

/// Tweak of hash number `index` inside circuit instance `id`: unique across a whole session, which is
/// what the tweakable hash needs (the session's delta is shared by all its circuits).
#[inline(always)]
pub fn tweak(id: u64, index: u64) -> u128 {
    ((id as u128) << 64) | index as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_is_linear_and_invertible() {
        let a = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128;
        let b = 0xdead_beef_0000_1111_2222_3333_4444_5555u128;
        assert_eq!(FixedKeyAes::sigma(a ^ b), FixedKeyAes::sigma(a) ^ FixedKeyAes::sigma(b));
        // σ has no nonzero fixed points and σ(x) ⊕ x is also a permutation (orthomorphism): check a few.
        for x in [1u128, 1 << 64, a, b] {
            assert_ne!(FixedKeyAes::sigma(x), x);
            assert_ne!(FixedKeyAes::sigma(x) ^ x, 0);
        }
    }

    #[test]
    fn aes_matches_fips197_vector_and_batches_agree() {
        // FIPS-197 appendix C.1 vector checks the cipher, not our wrapper's byte order.
        let c = Aes128::new(&[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15].into());
        let mut blk = aes::Block::from([
            0x00u8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        ]);
        c.encrypt_block(&mut blk);
        assert_eq!(
            blk.as_slice(),
            &[0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4, 0xc5, 0x5a]
        );
        let h = FixedKeyAes::get();
        let xs: Vec<u128> = (0..200u128).map(|i| i * 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835).collect();
        let mut batch: Vec<u128> =
            xs.iter().enumerate().map(|(i, &x)| FixedKeyAes::sigma(x) ^ tweak(7, i as u64)).collect();
        h.mmo_in_place(&mut batch);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(batch[i], h.hash(x, tweak(7, i as u64)));
        }
        // Different tweaks give different outputs.
        assert_ne!(h.hash(5, tweak(1, 0)), h.hash(5, tweak(1, 1)));
        assert_ne!(h.hash(5, tweak(1, 0)), h.hash(5, tweak(2, 0)));
    }
}
