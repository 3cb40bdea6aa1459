//! AES-128 in counter mode as a fast pseudo-random generator: expands a 16-byte seed into labels
//! (garbler input labels) and into the IKNP matrix columns. The counter lets one seed serve many
//! disjoint extensions without ever repeating output.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use zeroize::Zeroize;

/// Blocks encrypted per cipher call.
const BATCH: usize = 64;

/// AES-128-CTR keyed by a secret seed. The key schedule is zeroized on drop (aes `zeroize` feature).
#[derive(Clone)]
pub struct AesPrg {
    cipher: Aes128,
}

impl AesPrg {
    /// The stream of `seed` (which is zeroized after the key schedule).
    pub fn new(seed: [u8; 16]) -> Self {
        let mut seed = seed;
        let cipher = Aes128::new(&seed.into());
        seed.zeroize();
        Self { cipher }
    }

    /// Fills `out` with blocks number `start, start+1, ...` of the stream.
    pub fn fill(&self, start: u64, out: &mut [u128]) {
        let mut blocks = [aes::Block::default(); BATCH];
        let mut ctr = start as u128;
        for chunk in out.chunks_mut(BATCH) {
            let blocks = &mut blocks[..chunk.len()];
            for b in blocks.iter_mut() {
                *b = aes::Block::from(ctr.to_le_bytes());
                ctr += 1;
            }
            self.cipher.encrypt_blocks(blocks);
            for (b, x) in blocks.iter().zip(chunk.iter_mut()) {
                let bytes: [u8; 16] = (*b).into();
                *x = u128::from_le_bytes(bytes);
            }
        }
    }

    /// Like [`AesPrg::fill`] but XORs the stream into `out`.
    pub fn xor_into(&self, start: u64, out: &mut [u128]) {
        let mut blocks = [aes::Block::default(); BATCH];
        let mut ctr = start as u128;
        for chunk in out.chunks_mut(BATCH) {
            let blocks = &mut blocks[..chunk.len()];
            for b in blocks.iter_mut() {
                *b = aes::Block::from(ctr.to_le_bytes());
                ctr += 1;
            }
            self.cipher.encrypt_blocks(blocks);
            for (b, x) in blocks.iter().zip(chunk.iter_mut()) {
                let bytes: [u8; 16] = (*b).into();
                *x ^= u128::from_le_bytes(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_positional_and_seed_dependent() {
        let p = AesPrg::new([3; 16]);
        let mut all = vec![0u128; 300];
        p.fill(10, &mut all);
        let mut tail = vec![0u128; 100];
        p.fill(210, &mut tail);
        assert_eq!(&all[200..], &tail[..]);
        let mut x = all.clone();
        p.xor_into(10, &mut x);
        assert!(x.iter().all(|&v| v == 0));
        let mut other = vec![0u128; 300];
        AesPrg::new([4; 16]).fill(10, &mut other);
        assert_ne!(all, other);
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
