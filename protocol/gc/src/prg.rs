//! AES-128 in counter mode as a fast pseudo-random generator: expands a 16-byte seed into labels
//! (garbler input labels) and into the IKNP matrix columns. The counter lets one seed serve many
//! disjoint extensions without ever repeating output. Where the CPU has VAES the blocks are
//! encrypted four per instruction (the backend of the garbling hash, crate-private `vaes`), else
//! by the `aes` crate; both give the same stream (tested block for block).

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use zeroize::Zeroize;

/// Blocks encrypted per cipher call.
const BATCH: usize = 64;

/// AES-128-CTR keyed by a secret seed. The key schedule is zeroized on drop (aes `zeroize` feature;
/// `vaes::SecretRoundKeys` zeroizes its own).
#[derive(Clone)]
pub struct AesPrg {
    backend: PrgBackend,
}

/// Which AES computes the stream.
#[derive(Clone)]
enum PrgBackend {
    /// Four blocks per instruction; present exactly where the CPU has VAES (the keys carry the proof).
    #[cfg(target_arch = "x86_64")]
    Vaes(crate::vaes::SecretRoundKeys),
    /// The `aes` crate (AES-NI where present); boxed, its key schedules are four times the size.
    Crate(Box<Aes128>),
}

/// Counter-mode output: overwrite the buffer or XOR into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Fill,
    Xor,
}

impl AesPrg {
    /// The stream of `seed` (which is zeroized after the key schedule), on the fastest AES here.
    pub fn new(seed: [u8; 16]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(cpu) = crate::cpu::vaes() {
            let mut seed = seed;
            let keys = crate::vaes::SecretRoundKeys::new(cpu, &seed);
            seed.zeroize();
            return Self { backend: PrgBackend::Vaes(keys) };
        }
        Self::with_crate(seed)
    }

    /// The same stream through the `aes` crate, whatever the CPU (tests and the benchmark compare).
    pub fn with_crate(seed: [u8; 16]) -> Self {
        let mut seed = seed;
        let cipher = Aes128::new(&seed.into());
        seed.zeroize();
        Self { backend: PrgBackend::Crate(Box::new(cipher)) }
    }

    /// Fills `out` with blocks number `start, start+1, ...` of the stream.
    pub fn fill(&self, start: u64, out: &mut [u128]) {
        self.ctr(start, out, Mode::Fill)
    }

    /// Like [`AesPrg::fill`] but XORs the stream into `out`.
    pub fn xor_into(&self, start: u64, out: &mut [u128]) {
        self.ctr(start, out, Mode::Xor)
    }

    fn ctr(&self, start: u64, out: &mut [u128], mode: Mode) {
        let cipher = match &self.backend {
            #[cfg(target_arch = "x86_64")]
            PrgBackend::Vaes(keys) => return keys.ctr(start, out, mode),
            PrgBackend::Crate(cipher) => cipher,
        };
        let mut blocks = [aes::Block::default(); BATCH];
        let mut ctr = start as u128;
        for chunk in out.chunks_mut(BATCH) {
            let blocks = &mut blocks[..chunk.len()];
            for b in blocks.iter_mut() {
                *b = aes::Block::from(ctr.to_le_bytes());
                ctr += 1;
            }
            cipher.encrypt_blocks(blocks);
            for (b, x) in blocks.iter().zip(chunk.iter_mut()) {
                let y = u128::from_le_bytes((*b).into());
                *x = if mode == Mode::Xor { *x ^ y } else { y };
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

    #[test]
    fn every_backend_gives_the_same_stream() {
        // `new` picks VAES where the CPU has it; the crate path is the reference.
        let (fast, reference) = (AesPrg::new([7; 16]), AesPrg::with_crate([7; 16]));
        for (start, n) in [(0u64, 0usize), (0, 1), (5, 3), (1 << 33, 1000), (u64::MAX - 10, 40)] {
            let (mut a, mut b) = (vec![0u128; n], vec![0u128; n]);
            fast.fill(start, &mut a);
            reference.fill(start, &mut b);
            assert_eq!(a, b, "fill {start} {n}");
            fast.xor_into(start + 1, &mut a);
            reference.xor_into(start + 1, &mut b);
            assert_eq!(a, b, "xor {start} {n}");
        }
    }
}
