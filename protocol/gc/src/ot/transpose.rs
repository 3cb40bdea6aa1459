//! Bit-matrix transpose for IKNP: 128 columns of `m` bits become `m` rows of 128 bits, one
//! 128x128 block at a time (Eklundh's recursive block swap on `u128` rows, 7 rounds of 64 swaps).

use rayon::prelude::*;

const MASKS: [(u32, u128); 7] = [
    (64, 0x0000_0000_0000_0000_ffff_ffff_ffff_ffff),
    (32, 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff),
    (16, 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff),
    (8, 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff),
    (4, 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f),
    (2, 0x3333_3333_3333_3333_3333_3333_3333_3333),
    (1, 0x5555_5555_5555_5555_5555_5555_5555_5555),
];

/// In-place transpose of a 128x128 bit matrix: bit `j` of row `i` moves to bit `i` of row `j`.
#[inline]
pub fn transpose128(m: &mut [u128; 128]) {
    for &(s, mask) in &MASKS {
        let s = s as usize;
        let mut i = 0;
        while i < 128 {
            for r in i..i + s {
                let t = ((m[r] >> s) ^ m[r + s]) & mask;
                m[r + s] ^= t;
                m[r] ^= t << s;
            }
            i += 2 * s;
        }
    }
}

/// `cols[c * nb + w]` holds bits `128w .. 128w+127` of column `c` (128 columns); writes row `j` (bit `c`
/// = bit `j` of column `c`) to `rows[j]`, `128 * nb` rows in all. Parallel over 128-row blocks.
pub fn transpose_columns(cols: &[u128], nb: usize, rows: &mut [u128]) {
    assert_eq!(cols.len(), 128 * nb);
    assert_eq!(rows.len(), 128 * nb);
    rows.par_chunks_mut(128).enumerate().for_each(|(w, out)| {
        let mut m = [0u128; 128];
        for (c, v) in m.iter_mut().enumerate() {
            *v = cols[c * nb + w];
        }
        transpose128(&mut m);
        out.copy_from_slice(&m);
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
