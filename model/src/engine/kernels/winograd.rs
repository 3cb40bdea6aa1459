//! Winograd F(2x2, 3x3) for stride-1 3x3 convolutions over the ring: 16 multiplies per 2x2 output
//! tile and channel pair instead of 36 (2.25x fewer), exact.
//!
//! The textbook transform has halves in its kernel matrix `G`; `2^-1` does not exist mod `2^64`, so
//! the kernels are transformed with `2G` (integers) and the result is `4Y mod 2^64 = 4 (Y mod 2^62)`:
//! shifting right by 2 gives `Y mod 2^62`, which is all a ring of `l <= 62` bits needs. Every step is
//! wrapping `u64` arithmetic, so the output equals the direct convolution's mod `2^62` bit for bit.
//!
//! The kernels are transformed once per model from their signed values (the ring elements lifted
//! from `[-2^(l-1), 2^(l-1))`) and kept as `i32`: a fixed-point kernel times at most 9 fits with
//! room to spare, and the micro-kernel then streams 4 bytes per multiply instead of 8 (the layers
//! with few output tiles, ResNet-18's `layer4`, read each kernel value only a few times and were
//! bound by that traffic). A kernel that does not fit keeps the direct convolution.
//!
//! Layout: `U[xi][m-tile][c][8]` (kernels, transformed once per model, so a tile of 8 output
//! channels is the micro-kernel's `NR`-wide panel), `V[t][xi][c]` (input tiles, transformed per
//! call), products `M[xi][t][m]` by the same register-tiled micro-kernel as the direct convolution
//! (rows = input tiles, columns = output channels), then the output transform per channel.

use super::{ConvGeometry, MR, NR, simd};
use crate::fixed::FixedPoint;
use rayon::prelude::*;

/// Transform positions of a 4x4 tile.
const XI: usize = 16;

/// Largest ring width the transform is exact for.
pub const MAX_L: u32 = 62;

/// Whether a convolution takes the Winograd path: 3x3 and stride 1, with enough input channels
/// that the transforms are amortised (at least 8) and at least [`SHORT`] 2x2 output tiles (the
/// micro-kernel's rows are tiles).
pub fn applies(g: &ConvGeometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.in_channels >= 8 && tiles(g) >= SHORT
}

/// Rows of the micro-kernel when there are fewer tiles than [`MR`] (a 4x4 output has 4 tiles).
const SHORT: usize = 4;

/// Output tiles of 2x2.
fn tiles(g: &ConvGeometry) -> usize {
    g.out_height().div_ceil(2) * g.out_width().div_ceil(2)
}

/// A layer's kernels in the transformed domain, `(2G) g (2G)^T` per (output, input) channel pair.
#[derive(Clone, Debug, Default)]
pub struct WinogradKernels {
    out_channels: usize,
    in_channels: usize,
    /// `[xi][m-tile][c][NR]`, zero beyond the last output channel.
    u: Vec<i32>,
}

impl WinogradKernels {
    /// Transforms `weight` (`[M][C][3][3]`, elements of `Z_{2^l}`, `l <= MAX_L`), or `None` when a
    /// transformed value does not fit in `i32` (weights beyond `2^27` units; the caller keeps the
    /// direct convolution).
    pub fn new(g: &ConvGeometry, weight: &[u64], l: u32) -> Option<Self> {
        assert!(g.kernel == 3 && g.stride == 1, "Winograd F(2x2,3x3) needs a 3x3 stride-1 convolution");
        assert!((1..=MAX_L).contains(&l), "Winograd F(2x2,3x3) is exact for rings of at most {MAX_L} bits");
        let (m, c) = (g.out_channels, g.in_channels);
        let mt = m.div_ceil(NR);
        let ring = FixedPoint { l, f: 0 }; // only its width: the signed value of a ring element
        let mut u = vec![0i32; XI * mt * c * NR];
        for o in 0..m {
            for ci in 0..c {
                let k: [i64; 9] = std::array::from_fn(|i| ring.to_i64(weight[(o * c + ci) * 9 + i]));
                let t = transform_kernel(&k);
                for (xi, &v) in t.iter().enumerate() {
                    u[((xi * mt + o / NR) * c + ci) * NR + o % NR] = i32::try_from(v).ok()?;
                }
            }
        }
        Some(Self { out_channels: m, in_channels: c, u })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.u.as_slice())
    }
}

/// `(2G) k (2G)^T` with `2G = [[2,0,0],[1,1,1],[1,-1,1],[0,0,2]]`, row-major 4x4, on signed kernel
/// values (saturating: a saturated value does not fit in `i32` either, so it is rejected).
fn transform_kernel(k: &[i64; 9]) -> [i64; 16] {
    let g2 = |a: i64, b: i64, c: i64| {
        [
            a.saturating_mul(2),
            a.saturating_add(b).saturating_add(c),
            a.saturating_sub(b).saturating_add(c),
            c.saturating_mul(2),
        ]
    };
    // Columns of k transformed: t[r][j] for r in 0..4, j in 0..3.
    let cols: [[i64; 4]; 3] = std::array::from_fn(|j| g2(k[j], k[3 + j], k[6 + j]));
    let mut out = [0i64; 16];
    for r in 0..4 {
        let row = g2(cols[0][r], cols[1][r], cols[2][r]);
        out[r * 4..r * 4 + 4].copy_from_slice(&row);
    }
    out
}

/// `B^T d B` for a 4x4 tile `d` (row-major) with `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`.
#[inline(always)]
fn transform_input(d: &[u64; 16]) -> [u64; 16] {
    let bt =
        |a: u64, b: u64, c: u64, e: u64| [a.wrapping_sub(c), b.wrapping_add(c), c.wrapping_sub(b), b.wrapping_sub(e)];
    let mut tmp = [0u64; 16];
    for j in 0..4 {
        let col = bt(d[j], d[4 + j], d[8 + j], d[12 + j]);
        for r in 0..4 {
            tmp[r * 4 + j] = col[r];
        }
    }
    let mut out = [0u64; 16];
    for r in 0..4 {
        let row = bt(tmp[r * 4], tmp[r * 4 + 1], tmp[r * 4 + 2], tmp[r * 4 + 3]);
        out[r * 4..r * 4 + 4].copy_from_slice(&row);
    }
    out
}

/// `A^T m A` for a 4x4 tile with `A^T = [[1,1,1,0],[0,1,-1,-1]]`: the 2x2 outputs, row-major.
#[inline(always)]
fn transform_output(m: &[u64; 16]) -> [u64; 4] {
    let at = |a: u64, b: u64, c: u64, d: u64| [a.wrapping_add(b).wrapping_add(c), b.wrapping_sub(c).wrapping_sub(d)];
    let cols: [[u64; 2]; 4] = std::array::from_fn(|j| at(m[j], m[4 + j], m[8 + j], m[12 + j]));
    let r0 = at(cols[0][0], cols[1][0], cols[2][0], cols[3][0]);
    let r1 = at(cols[0][1], cols[1][1], cols[2][1], cols[3][1]);
    [r0[0], r0[1], r1[0], r1[1]]
}

/// The convolution of `input` (`[C][H][W]`) by the transformed kernels: `[M][Ho][Wo]`, each value
/// correct mod `2^l` (the bits above are not; callers reduce to the kernels' `l` bits).
pub fn conv3x3(g: &ConvGeometry, input: &[u64], k: &WinogradKernels) -> Vec<u64> {
    assert!(g.kernel == 3 && g.stride == 1 && k.in_channels == g.in_channels && k.out_channels == g.out_channels);
    if tiles(g) >= MR { conv3x3_rows::<MR>(g, input, k) } else { conv3x3_rows::<SHORT>(g, input, k) }
}

/// [`conv3x3`] with `R` tiles per micro-kernel call.
fn conv3x3_rows<const R: usize>(g: &ConvGeometry, input: &[u64], k: &WinogradKernels) -> Vec<u64> {
    let (c, h, w, p) = (g.in_channels, g.height as isize, g.width as isize, g.padding as isize);
    let (ho, wo) = (g.out_height(), g.out_width());
    let tw = wo.div_ceil(2);
    let tiles = tiles(g);
    let m = g.out_channels;
    let mt = m.div_ceil(NR);

    // V[t][xi][c]: each input tile transformed, in parallel over tiles.
    let mut v = vec![0u64; tiles * XI * c];
    v.par_chunks_mut(XI * c).enumerate().for_each(|(t, vt)| {
        let (y0, x0) = (2 * (t / tw) as isize - p, 2 * (t % tw) as isize - p);
        for ci in 0..c {
            let plane = &input[ci * (h * w) as usize..][..(h * w) as usize];
            let mut d = [0u64; 16];
            for a in 0..4 {
                let y = y0 + a as isize;
                if y < 0 || y >= h {
                    continue;
                }
                for b in 0..4 {
                    let x = x0 + b as isize;
                    if x >= 0 && x < w {
                        d[a * 4 + b] = plane[(y * w + x) as usize];
                    }
                }
            }
            for (xi, val) in transform_input(&d).into_iter().enumerate() {
                vt[xi * c + ci] = val;
            }
        }
    });

    // M[xi][m-tile] = V_xi (tiles x C) * U_xi,m-tile (C x NR): one task per (xi, m-tile), `R`
    // tiles per micro-kernel call (row `t` of V_xi is at `t * XI * c`).
    let blocks: Vec<Vec<u64>> = (0..XI * mt)
        .into_par_iter()
        .map(|task| {
            let (xi, j) = (task / mt, task % mt);
            let panel = &k.u[(xi * mt + j) * c * NR..][..c * NR];
            let rows = &v[xi * c..];
            let mut out = vec![0u64; tiles * NR];
            let mut t0 = 0;
            while t0 < tiles {
                let n = R.min(tiles - t0);
                let acc = simd::winograd_kernel::<R>(rows, XI * c, c, t0, n, panel);
                for (i, r) in acc.iter().enumerate().take(n) {
                    out[(t0 + i) * NR..][..NR].copy_from_slice(r);
                }
                t0 += R;
            }
            out
        })
        .collect();

    // Output transform per output channel, shifted back by the 2G scaling.
    let mut out = vec![0u64; m * ho * wo];
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(o, plane)| {
        let (j, lane) = (o / NR, o % NR);
        for t in 0..tiles {
            let tile: [u64; 16] = std::array::from_fn(|xi| blocks[xi * mt + j][t * NR + lane]);
            let y = transform_output(&tile);
            let (oy, ox) = (2 * (t / tw), 2 * (t % tw));
            for a in 0..2 {
                for b in 0..2 {
                    if oy + a < ho && ox + b < wo {
                        plane[(oy + a) * wo + ox + b] = y[a * 2 + b] >> 2;
                    }
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal to the direct convolution mod `2^l` on random full-range inputs and signed weights
    /// encoded in `Z_{2^l}` (up to the largest magnitude that fits), including odd sizes, no padding,
    /// wide padding, and channel counts that are not multiples of 8.
    #[test]
    fn equals_direct_convolution_mod_2_l() {
        let mut next = super::super::xorshift(0x9e37_79b9_7f4a_7c15);
        let shapes = [(3, 7, 7, 4, 1), (5, 8, 6, 9, 1), (2, 5, 9, 16, 0), (1, 4, 4, 3, 2), (16, 9, 9, 24, 1)];
        for (n, (cin, h, wd, cout, p)) in shapes.into_iter().enumerate() {
            let l = [MAX_L, 59, 44, 62, 31][n];
            let mask = u64::MAX >> (64 - l);
            // Kernel magnitudes below 2^bits: 9 * 2^27 > 2^31 could overflow, 2^27 / 9 cannot.
            let bits = [14, 26, 20, 8, 26][n];
            let g = ConvGeometry {
                in_channels: cin,
                height: h,
                width: wd,
                out_channels: cout,
                kernel: 3,
                stride: 1,
                padding: p,
            };
            let x: Vec<u64> = (0..cin * h * wd).map(|_| next()).collect();
            let w: Vec<u64> = (0..cout * cin * 9)
                .map(|_| {
                    let v = (next() >> (64 - bits)) as i64 - (1 << (bits - 1));
                    v as u64 & mask
                })
                .collect();
            let direct = super::super::conv2d(&g, &x, &w);
            let kernels = WinogradKernels::new(&g, &w, l).expect("kernels fit in i32");
            assert_eq!(kernels.bytes(), XI * cout.div_ceil(NR) * NR * cin * 4);
            let wino = conv3x3(&g, &x, &kernels);
            assert_eq!(direct.len(), wino.len());
            for (i, (a, b)) in direct.iter().zip(&wino).enumerate() {
                assert_eq!(a & mask, b & mask, "output {i} of {g:?}, l = {l}");
            }
        }
    }

    /// Kernels whose transform leaves `i32` are refused (the caller keeps the direct convolution),
    /// at both signs; the largest that fits is kept.
    #[test]
    fn kernels_beyond_i32_are_refused() {
        let g = ConvGeometry { in_channels: 1, height: 4, width: 4, out_channels: 1, kernel: 3, stride: 1, padding: 1 };
        let l = 59;
        let enc = |v: i64| v as u64 & (u64::MAX >> (64 - l));
        // The centre tap of (2G) k (2G)^T sums all nine values: 9 v must stay within i32.
        let fits = i32::MAX as i64 / 9;
        assert!(WinogradKernels::new(&g, &[enc(fits); 9], l).is_some());
        assert!(WinogradKernels::new(&g, &[enc(-fits); 9], l).is_some());
        assert!(WinogradKernels::new(&g, &[enc(fits + 1); 9], l).is_none());
        assert!(WinogradKernels::new(&g, &[enc(-fits - 1); 9], l).is_none());
        // A ring element near 2^(l-1) (a huge magnitude either way), and one at -2^(l-1).
        assert!(WinogradKernels::new(&g, &[enc((1 << (l - 1)) - 1), 0, 0, 0, 0, 0, 0, 0, 0], l).is_none());
        assert!(WinogradKernels::new(&g, &[enc(-(1 << (l - 1))), 0, 0, 0, 0, 0, 0, 0, 0], l).is_none());
    }
}
