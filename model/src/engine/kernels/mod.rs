//! Linear kernels shared by both engines (and by the PI server's online linear layers): im2col
//! convolution, fully connected layers, pooling sums. Generic over f32 and wrapping `u64`.

use crate::fixed::FixedPoint;
use rayon::prelude::*;

mod simd;
pub mod winograd;

/// The arithmetic the kernels need. For `u64` it is wrapping arithmetic mod `2^64`, which reduces
/// to `Z_{2^l}` by masking once at the end.
pub trait Scalar: Copy + Send + Sync + PartialEq + 'static {
    const ZERO: Self;
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
}

impl Scalar for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self * o
    }
}

impl Scalar for u64 {
    const ZERO: Self = 0;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
}

/// Geometry of a convolution (groups = 1, square kernel, symmetric zero padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_height() * self.out_width()
    }
}

/// Output channels per register tile of the convolution micro-kernel.
const MR: usize = 8;
/// Output positions per register tile (one 64-byte cache line of `u64`).
const NR: usize = 8;

/// `out[m, y, x] = sum_{c,u,v} w[m, c, u, v] * in[c, y*s + u - p, x*s + v - p]` (no bias).
///
/// im2col into tiles of `NR` output positions (each tile's `K x NR` patch matrix is contiguous and
/// stays in cache), then a register-tiled `MR x NR` micro-kernel over all output channels; tiles run
/// in parallel.
pub fn conv2d<T: Scalar>(g: &ConvGeometry, input: &[T], weight: &[T]) -> Vec<T> {
    let (ho, wo) = (g.out_height(), g.out_width());
    let p = ho * wo;
    let kk = g.in_channels * g.kernel * g.kernel;
    let m = g.out_channels;
    let tiles = p.div_ceil(NR);
    let tile_out: Vec<Vec<T>> = (0..tiles)
        .into_par_iter()
        .map(|t| {
            // Patch matrix of this tile: patch[k * NR + j] = input seen by position t*NR + j at row k.
            let mut patch = vec![T::ZERO; kk * NR];
            for j in 0..NR.min(p - t * NR) {
                let pos = t * NR + j;
                let (y, x) = (pos / wo, pos % wo);
                for c in 0..g.in_channels {
                    for u in 0..g.kernel {
                        let iy = (y * g.stride + u) as isize - g.padding as isize;
                        if iy < 0 || iy >= g.height as isize {
                            continue;
                        }
                        let src = &input[(c * g.height + iy as usize) * g.width..][..g.width];
                        for v in 0..g.kernel {
                            let ix = (x * g.stride + v) as isize - g.padding as isize;
                            if ix >= 0 && (ix as usize) < g.width {
                                patch[((c * g.kernel + u) * g.kernel + v) * NR + j] = src[ix as usize];
                            }
                        }
                    }
                }
            }
            let mut out = vec![T::ZERO; m * NR];
            let mut m0 = 0;
            while m0 < m {
                let rows = MR.min(m - m0);
                let acc = simd::micro_kernel::<T, MR>(weight, kk, kk, m0, rows, &patch);
                for (i, row) in acc.iter().enumerate().take(rows) {
                    out[(m0 + i) * NR..(m0 + i + 1) * NR].copy_from_slice(row);
                }
                m0 += MR;
            }
            out
        })
        .collect();
    let mut out = vec![T::ZERO; m * p];
    for (t, tile) in tile_out.iter().enumerate() {
        let n = NR.min(p - t * NR);
        for ch in 0..m {
            out[ch * p + t * NR..][..n].copy_from_slice(&tile[ch * NR..][..n]);
        }
    }
    out
}

/// A convolution's kernels transposed to `[C][k][k][M]` as `i32` (the weights' signed values, lifted
/// from `Z_{2^l}`), for [`conv2d_scatter_add`]: the `M` output channels one input value reaches are
/// contiguous, so they are multiplied as one vector.
#[derive(Clone, Debug, Default)]
pub struct ScatterKernels {
    out_channels: usize,
    w: Vec<i32>,
}

impl ScatterKernels {
    /// Transposes `weight` (`[M][C][k][k]`, elements of `Z_{2^l}`), or `None` when a weight does not
    /// fit in `i32` (beyond `2^31` units).
    pub fn new(g: &ConvGeometry, weight: &[u64], l: u32) -> Option<Self> {
        let (m, c, kk) = (g.out_channels, g.in_channels, g.kernel * g.kernel);
        let ring = FixedPoint { l, f: 0 }; // only its width: the signed value of a ring element
        let mut w = vec![0i32; c * kk * m];
        for o in 0..m {
            for ci in 0..c {
                for t in 0..kk {
                    w[(ci * kk + t) * m + o] = i32::try_from(ring.to_i64(weight[(o * c + ci) * kk + t])).ok()?;
                }
            }
        }
        Some(Self { out_channels: m, w })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of_val(self.w.as_slice())
    }
}

/// `out += conv(x)` (no bias; `out` is `[M][Ho][Wo]`) for an input `x` that is zero except at the
/// flat `[C][H][W]` positions `idx`, where it is `val`: `len * k^2 * M` multiply-adds, the dense
/// convolution's work on those positions only. Correct mod `2^l` of the kernels. With the dense
/// convolution of the other positions it gives the convolution of the whole input (it is linear):
/// the PI server convolves the linearized neurons while the garbled ReLUs are still out.
pub fn conv2d_scatter_add(g: &ConvGeometry, k: &ScatterKernels, idx: &[u32], val: &[u64], out: &mut [u64]) {
    let (ho, wo, m) = (g.out_height(), g.out_width(), g.out_channels);
    assert!(k.out_channels == m && k.w.len() == g.in_channels * g.kernel * g.kernel * m, "kernels of another shape");
    assert!(out.len() == m * ho * wo && idx.len() == val.len(), "output or values of the wrong length");
    let (h, w, plane) = (g.height, g.width, g.height * g.width);
    // Per output position, the M channels contiguous: `[Ho * Wo][M]`.
    let mut acc = vec![0u64; ho * wo * m];
    // Output coordinate fed by input coordinate `i` through kernel tap `t`: `o * s + t - p = i`.
    let out_coord = |i: usize, t: usize, n: usize| -> Option<usize> {
        let shifted = (i + g.padding).checked_sub(t)?;
        (shifted % g.stride == 0 && shifted / g.stride < n).then_some(shifted / g.stride)
    };
    let mut rows = Vec::with_capacity(g.kernel * g.kernel);
    for (&x, &v) in idx.iter().zip(val) {
        let x = x as usize;
        assert!(x < g.in_channels * plane, "position {x} outside the input");
        let (c, iy, ix) = (x / plane, x % plane / w, x % w);
        debug_assert!(iy < h);
        rows.clear();
        for u in 0..g.kernel {
            let Some(oy) = out_coord(iy, u, ho) else { continue };
            for t in 0..g.kernel {
                if let Some(ox) = out_coord(ix, t, wo) {
                    rows.push(((c * g.kernel + u) * g.kernel + t, oy * wo + ox));
                }
            }
        }
        for &(tap, pos) in &rows {
            simd::axpy_i32(&mut acc[pos * m..][..m], &k.w[tap * m..][..m], v);
        }
    }
    let p = ho * wo;
    for (pos, a) in acc.chunks_exact(m).enumerate() {
        for (o, &v) in a.iter().enumerate() {
            out[o * p + pos] = out[o * p + pos].wrapping_add(v);
        }
    }
}

/// `64 * iters` wrapping multiply-adds held in registers (8 accumulator rows of `NR` lanes, the
/// micro-kernel's shape with twice its rows): the CPU's bound for the ring kernels. Returns a
/// checksum so the work cannot be optimised away.
#[inline(always)]
fn mac_block(iters: usize, seed: u64) -> u64 {
    let mut acc = [[0u64; NR]; 8];
    let w: [u64; 8] = std::array::from_fn(|i| seed.wrapping_mul(2 * i as u64 + 3));
    let mut b: [u64; NR] = std::array::from_fn(|j| seed ^ (j as u64) << 7);
    for _ in 0..iters {
        b = std::hint::black_box(b);
        for i in 0..8 {
            for j in 0..NR {
                acc[i][j] = acc[i][j].wrapping_add(w[i].wrapping_mul(b[j]));
            }
        }
    }
    acc.iter().flatten().fold(0, |a, &x| a ^ x)
}

/// Wrapping `u64` multiply-adds per second this CPU sustains on all rayon threads, in registers,
/// with the instruction set of the ring kernels (AVX-512 where present): the bound their speed is
/// judged against. Runs for about `seconds`.
pub fn u64_mac_bound(seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    let probe = std::time::Instant::now();
    std::hint::black_box(simd::mac_block(100_000, 1));
    let per_iter = probe.elapsed().as_secs_f64() / 100_000.0;
    let iters = ((seconds / per_iter.max(1e-12)) as usize).max(1000);
    let start = std::time::Instant::now();
    let sum: u64 = (0..threads).into_par_iter().map(|t| simd::mac_block(iters, t as u64 + 5)).sum();
    std::hint::black_box(sum);
    (threads * iters * 64) as f64 / start.elapsed().as_secs_f64()
}

/// `out[i] = sum_j w[i, j] * x[j]` (no bias).
pub fn linear<T: Scalar>(input: &[T], weight: &[T], out_features: usize) -> Vec<T> {
    let n = input.len();
    (0..out_features)
        .into_par_iter()
        .map(|i| weight[i * n..(i + 1) * n].iter().zip(input).fold(T::ZERO, |a, (&w, &x)| a.add(w.mul(x))))
        .collect()
}

/// Window sums of average pooling (the caller scales by `1 / kernel^2`).
pub fn pool_sum<T: Scalar>(input: &[T], shape: [usize; 3], kernel: usize, stride: usize) -> Vec<T> {
    let [c, h, w] = shape;
    let (ho, wo) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    let mut out = vec![T::ZERO; c * ho * wo];
    for ch in 0..c {
        for y in 0..ho {
            for x in 0..wo {
                let mut s = T::ZERO;
                for u in 0..kernel {
                    for v in 0..kernel {
                        s = s.add(input[(ch * h + y * stride + u) * w + x * stride + v]);
                    }
                }
                out[(ch * ho + y) * wo + x] = s;
            }
        }
    }
    out
}

/// Per-channel sums over the whole spatial extent (global average pooling before scaling).
pub fn channel_sum<T: Scalar>(input: &[T], channels: usize) -> Vec<T> {
    let per = input.len() / channels;
    input.chunks(per).map(|ch| ch.iter().fold(T::ZERO, |a, &x| a.add(x))).collect()
}

/// Element-wise sum.
pub fn add<T: Scalar>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter().zip(b).map(|(&x, &y)| x.add(y)).collect()
}

/// A xorshift64 stream for the kernels' tests (full-range ring elements, reproducible).
#[cfg(test)]
fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct, loop-for-loop convolution as the independent reference.
    fn naive(g: &ConvGeometry, x: &[i64], w: &[i64]) -> Vec<i64> {
        let (ho, wo) = (g.out_height(), g.out_width());
        let mut out = vec![0; g.out_channels * ho * wo];
        for m in 0..g.out_channels {
            for y in 0..ho {
                for xo in 0..wo {
                    let mut s = 0;
                    for c in 0..g.in_channels {
                        for u in 0..g.kernel {
                            for v in 0..g.kernel {
                                let iy = (y * g.stride + u) as i64 - g.padding as i64;
                                let ix = (xo * g.stride + v) as i64 - g.padding as i64;
                                if iy >= 0 && ix >= 0 && (iy as usize) < g.height && (ix as usize) < g.width {
                                    s += w[((m * g.in_channels + c) * g.kernel + u) * g.kernel + v]
                                        * x[(c * g.height + iy as usize) * g.width + ix as usize];
                                }
                            }
                        }
                    }
                    out[(m * ho + y) * wo + xo] = s;
                }
            }
        }
        out
    }

    /// A dense convolution of an input with zeros at some positions plus the scatter of those
    /// positions equals the dense convolution of the whole input, mod `2^l`: strides 1 and 2, 1x1
    /// and 3x3 kernels, padding, channel counts that are not multiples of 8, negative weights.
    #[test]
    fn scatter_add_completes_a_dense_convolution() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for (cin, h, cout, k, st, p) in
            [(3, 7, 4, 3, 1, 1), (5, 8, 9, 3, 2, 1), (4, 6, 16, 1, 2, 0), (2, 5, 3, 3, 1, 0)]
        {
            let g = ConvGeometry {
                in_channels: cin,
                height: h,
                width: h,
                out_channels: cout,
                kernel: k,
                stride: st,
                padding: p,
            };
            let l = 59;
            let mask = u64::MAX >> (64 - l);
            let x: Vec<u64> = (0..cin * h * h).map(|_| next() & mask).collect();
            let w: Vec<u64> =
                (0..cout * cin * k * k).map(|_| ((next() >> 44) as i64 - (1 << 19)) as u64 & mask).collect();
            let whole = conv2d(&g, &x, &w);
            // Every third position goes through the scatter, the rest through the dense kernel.
            let idx: Vec<u32> = (0..x.len() as u32).filter(|i| i % 3 == 1).collect();
            let val: Vec<u64> = idx.iter().map(|&i| x[i as usize]).collect();
            let mut rest = x.clone();
            idx.iter().for_each(|&i| rest[i as usize] = 0);
            let mut got = conv2d(&g, &rest, &w);
            conv2d_scatter_add(&g, &ScatterKernels::new(&g, &w, l).unwrap(), &idx, &val, &mut got);
            for (o, (a, b)) in whole.iter().zip(&got).enumerate() {
                assert_eq!(a & mask, b & mask, "output {o} of {g:?}");
            }
        }
        // Weights beyond i32 are refused.
        let g = ConvGeometry { in_channels: 1, height: 3, width: 3, out_channels: 1, kernel: 1, stride: 1, padding: 0 };
        assert!(ScatterKernels::new(&g, &[1 << 31], 59).is_none());
        assert!(ScatterKernels::new(&g, &[((1i64 << 59) - (1 << 31)) as u64], 59).is_some());
    }

    #[test]
    fn im2col_conv_matches_direct_convolution() {
        for (cin, h, cout, k, s, p) in [(3, 7, 4, 3, 1, 1), (2, 8, 3, 3, 2, 1), (4, 6, 5, 1, 2, 0), (1, 5, 2, 5, 1, 2)]
        {
            let g = ConvGeometry {
                in_channels: cin,
                height: h,
                width: h,
                out_channels: cout,
                kernel: k,
                stride: s,
                padding: p,
            };
            let x: Vec<i64> = (0..cin * h * h).map(|i| (i as i64 * 7919 % 23) - 11).collect();
            let w: Vec<i64> = (0..cout * cin * k * k).map(|i| (i as i64 * 104729 % 17) - 8).collect();
            let xr: Vec<u64> = x.iter().map(|&v| v as u64).collect();
            let wr: Vec<u64> = w.iter().map(|&v| v as u64).collect();
            let got: Vec<i64> = conv2d(&g, &xr, &wr).into_iter().map(|v| v as i64).collect();
            assert_eq!(got, naive(&g, &x, &w));
        }
    }
}
