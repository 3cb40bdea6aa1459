//! Bit-matrix transpose for IKNP: 128 columns of `m` bits become `m` rows of 128 bits, one
//! 128x128 block at a time (Eklundh's recursive block swap, 7 rounds of 64 swaps, the last six on 64-bit halves).

use rayon::prelude::*;

/// Eklundh's rounds below 64 (shifts 32, 16, ..., 1): the bits that move, per 64-bit half. For
/// `s <= 32` a `u128` row's swap never carries a bit across its halves, so each half is swapped alone
/// (two-lane code the compiler turns into SSE2 on x86_64).
const MASKS: [u64; 6] = [
    0x0000_0000_ffff_ffff,
    0x0000_ffff_0000_ffff,
    0x00ff_00ff_00ff_00ff,
    0x0f0f_0f0f_0f0f_0f0f,
    0x3333_3333_3333_3333,
    0x5555_5555_5555_5555,
];

/// In-place transpose of a 128x128 bit matrix: bit `j` of row `i` moves to bit `i` of row `j`.
#[inline]
pub fn transpose128(m: &mut [u128; 128]) {
    let mut h = [[0u64; 2]; 128];
    for (h, &x) in h.iter_mut().zip(m.iter()) {
        *h = [x as u64, (x >> 64) as u64];
    }
    transpose_halves(&mut h);
    for (x, h) in m.iter_mut().zip(h.iter()) {
        *x = h[0] as u128 | (h[1] as u128) << 64;
    }
}

/// [`transpose128`] on rows split into `[low, high]` 64-bit halves, written on `[u64; 2]` pairs so
/// that the compiler vectorises every round (SSE2 on x86_64; an AVX2 build of the same code was only
/// 1.15x faster, an AVX-512 build 2x slower).
#[inline]
fn transpose_halves(m: &mut [[u64; 2]; 128]) {
    // Round 64: the off-diagonal 64x64 blocks trade places.
    for r in 0..64 {
        let t = m[r][1];
        m[r][1] = m[r + 64][0];
        m[r + 64][0] = t;
    }
    round::<32>(m, MASKS[0]);
    round::<16>(m, MASKS[1]);
    round::<8>(m, MASKS[2]);
    round::<4>(m, MASKS[3]);
    round::<2>(m, MASKS[4]);
    round::<1>(m, MASKS[5]);
}

/// One round: rows `r` and `r + S` (for `r mod 2S < S`) swap the bits selected by `mask` (shifted).
#[inline(always)]
fn round<const S: usize>(m: &mut [[u64; 2]; 128], mask: u64) {
    for block in m.chunks_exact_mut(2 * S) {
        let (a, b) = block.split_at_mut(S);
        for (a, b) in a.iter_mut().zip(b.iter_mut()) {
            for k in 0..2 {
                let t = ((a[k] >> S) ^ b[k]) & mask;
                b[k] ^= t;
                a[k] ^= t << S;
            }
        }
    }
}

/// `cols[c * nb + w]` holds bits `128w .. 128w+127` of column `c` (128 columns); writes row `j` (bit `c`
/// = bit `j` of column `c`) to `rows[j]`, `128 * nb` rows in all. Parallel over 128-row blocks.
pub fn transpose_columns(cols: &[u128], nb: usize, rows: &mut [u128]) {
    assert_eq!(cols.len(), 128 * nb);
    assert_eq!(rows.len(), 128 * nb);
    rows.par_chunks_mut(128).enumerate().for_each(|(w, out)| {
        let mut m = [[0u64; 2]; 128];
        for (c, v) in m.iter_mut().enumerate() {
            let x = cols[c * nb + w];
            *v = [x as u64, (x >> 64) as u64];
        }
        transpose_halves(&mut m);
        for (o, h) in out.iter_mut().zip(m.iter()) {
            *o = h[0] as u128 | (h[1] as u128) << 64;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_naive_transpose() {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(1);
        let nb = 3;
        let cols: Vec<u128> = (0..128 * nb).map(|_| rng.random()).collect();
        let mut rows = vec![0u128; 128 * nb];
        transpose_columns(&cols, nb, &mut rows);
        for j in 0..128 * nb {
            for c in 0..128 {
                let col_bit = (cols[c * nb + j / 128] >> (j % 128)) & 1;
                assert_eq!((rows[j] >> c) & 1, col_bit, "row {j} col {c}");
            }
        }
        let mut m = [0u128; 128];
        m.copy_from_slice(&rows[..128]);
        transpose128(&mut m);
        transpose128(&mut m);
        assert_eq!(&m[..], &rows[..128]);
    }
}
