//! The one place in `pi-model` that holds `unsafe`: the convolution micro-kernels on AVX-512 (64-bit
//! vector multiplies), the generic one compiled for it and Winograd's written with its intrinsics,
//! each behind a safe dispatch that checks the CPU first.

#![allow(unsafe_code)]

#[cfg(test)]
use super::MR;
use super::{NR, Scalar};

/// A panel element the micro-kernel widens to its accumulator type: the ring's own `u64`, or the
/// `i32` in which Winograd's transformed kernels are stored (half the bytes streamed per multiply).
pub(super) trait Widen<T>: Copy + Send + Sync {
    fn widen(self) -> T;
}

impl<T: Scalar> Widen<T> for T {
    #[inline(always)]
    fn widen(self) -> T {
        self
    }
}

impl Widen<u64> for i32 {
    /// Sign extension: the same residue mod `2^64` as the signed value.
    #[inline(always)]
    fn widen(self) -> u64 {
        self as i64 as u64
    }
}

/// `R x NR` block of `W[m0.., :] * patch`, accumulated in registers: row `i` of `W` is
/// `weight[(m0 + i) * stride..][..kk]` (rows at and past `rows` repeat row 0 and are not meant to be
/// read), `patch` is `kk x NR`, row-major. The AVX-512 build when the CPU has AVX-512 F/DQ/VL, the
/// portable one otherwise; both compute the same values.
#[inline(always)]
pub(super) fn micro_kernel<T: Scalar, const R: usize>(
    weight: &[T],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    patch: &[T],
) -> [[T; NR]; R] {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { micro_kernel_avx512::<T, R>(weight, stride, kk, m0, rows, patch) };
    }
    kernel::<T, T, R>(weight, stride, kk, m0, rows, patch)
}

/// The body of [`micro_kernel`] (and the portable [`winograd_kernel`]), compiled once per
/// instruction set; the panel's elements are widened to `T`.
#[inline(always)]
fn kernel<T: Scalar, P: Widen<T>, const R: usize>(
    weight: &[T],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    patch: &[P],
) -> [[T; NR]; R] {
    let mut acc = [[T::ZERO; NR]; R];
    let w: [&[T]; R] = std::array::from_fn(|i| {
        let r = if i < rows { m0 + i } else { m0 };
        &weight[r * stride..][..kk]
    });
    for k in 0..kk {
        let c: &[P; NR] = patch[k * NR..][..NR].try_into().expect("NR values");
        let c: [T; NR] = c.map(Widen::widen);
        for i in 0..R {
            // Indexed with a bounds check: it costs a compare per row and k, but without it LLVM
            // vectorises across rows (gathers and scatters of the accumulators), 6x slower.
            let wi = w[i][k];
            for j in 0..NR {
                acc[i][j] = acc[i][j].add(wi.mul(c[j]));
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn micro_kernel_avx512<T: Scalar, const R: usize>(
    weight: &[T],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    patch: &[T],
) -> [[T; NR]; R] {
    kernel::<T, T, R>(weight, stride, kk, m0, rows, patch)
}

/// [`micro_kernel`] for Winograd's products: ring rows (input tiles, broadcast) times an `i32`
/// panel (transformed kernels, widened by sign extension). Written with explicit AVX-512 vectors:
/// left to itself, LLVM vectorises the 4-row instance across rows (the layers with 4 tiles ran at
/// half the multiply rate of the 8-row one).
#[inline(always)]
pub(super) fn winograd_kernel<const R: usize>(
    rows_src: &[u64],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    panel: &[i32],
) -> [[u64; NR]; R] {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { winograd_kernel_avx512::<R>(rows_src, stride, kk, m0, rows, panel) };
    }
    kernel::<u64, i32, R>(rows_src, stride, kk, m0, rows, panel)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn winograd_kernel_avx512<const R: usize>(
    rows_src: &[u64],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    panel: &[i32],
) -> [[u64; NR]; R] {
    use std::arch::x86_64::*;
    // Row starts, each checked to have `kk` values: the loop then reads them without a bounds check
    // per row and step.
    let w: [*const u64; R] = std::array::from_fn(|i| {
        let r = if i < rows { m0 + i } else { m0 };
        rows_src[r * stride..][..kk].as_ptr()
    });
    let mut acc = [_mm512_setzero_si512(); R];
    for (k, c) in panel[..kk * NR].chunks_exact(NR).enumerate() {
        // SAFETY: `c` is NR = 8 readable i32 (32 bytes); the load has no alignment requirement.
        let c = _mm512_cvtepi32_epi64(unsafe { _mm256_loadu_si256(c.as_ptr().cast()) });
        for (a, wi) in acc.iter_mut().zip(&w) {
            // SAFETY: `k < kk` and every row start has `kk` readable values (sliced above).
            let x = unsafe { *wi.add(k) };
            *a = _mm512_add_epi64(*a, _mm512_mullo_epi64(_mm512_set1_epi64(x as i64), c));
        }
    }
    let mut out = [[0u64; NR]; R];
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` is NR = 8 writable u64 (64 bytes); the store has no alignment requirement.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), *a) };
    }
    out
}

/// `acc[j] += w[j] * v` (the `i32` widened by sign extension), wrapping: one input value's
/// contribution to a run of output channels ([`super::conv2d_scatter_add`]). AVX-512 where the CPU
/// has it (8 channels per multiply), portable otherwise; both compute the same values.
#[inline(always)]
pub(super) fn axpy_i32(acc: &mut [u64], w: &[i32], v: u64) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { axpy_i32_avx512(acc, w, v) };
    }
    axpy(acc, w, v)
}

/// The body of [`axpy_i32`], compiled once per instruction set.
#[inline(always)]
fn axpy(acc: &mut [u64], w: &[i32], v: u64) {
    for (a, &x) in acc.iter_mut().zip(w) {
        *a = a.wrapping_add(x.widen().wrapping_mul(v));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn axpy_i32_avx512(acc: &mut [u64], w: &[i32], v: u64) {
    axpy(acc, w, v)
}

/// [`super::mac_block`] compiled like the micro-kernel (AVX-512 where the CPU has it).
pub(super) fn mac_block(iters: usize, seed: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { mac_block_avx512(iters, seed) };
    }
    super::mac_block(iters, seed)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn mac_block_avx512(iters: usize, seed: u64) -> u64 {
    super::mac_block(iters, seed)
}

/// Whether this CPU runs the AVX-512 kernel (std caches the detection).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched kernel (AVX-512 where present) equals the portable one bit for bit.
    #[test]
    fn dispatched_kernel_equals_portable_kernel() {
        let kk = 37;
        let weight: Vec<u64> = (0..(MR * kk) as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let patch: Vec<u64> = (0..(kk * NR) as u64).map(|i| i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 5).collect();
        for rows in 1..=MR {
            assert_eq!(
                micro_kernel::<u64, MR>(&weight, kk, kk, 0, rows, &patch),
                kernel::<u64, u64, MR>(&weight, kk, kk, 0, rows, &patch)
            );
        }
        // Fewer rows per call, a row stride longer than the rows, and a start row.
        assert_eq!(
            micro_kernel::<u64, 4>(&weight, kk + 3, kk, 1, 3, &patch),
            kernel::<u64, u64, 4>(&weight, kk + 3, kk, 1, 3, &patch)
        );
        // An i32 panel (Winograd's kernels), negative values included, equals its u64 widening, with
        // the explicit AVX-512 kernel (where present) and the portable one.
        let narrow: Vec<i32> = patch.iter().map(|&x| (x >> 32) as u32 as i32).collect();
        let wide: Vec<u64> = narrow.iter().map(|&x| x as i64 as u64).collect();
        assert!(narrow.iter().any(|&x| x < 0) && narrow.iter().any(|&x| x > 0));
        for rows in 1..=MR {
            let want = kernel::<u64, u64, MR>(&weight, kk, kk, 0, rows, &wide);
            assert_eq!(winograd_kernel::<MR>(&weight, kk, kk, 0, rows, &narrow)[..rows], want[..rows]);
            assert_eq!(kernel::<u64, i32, MR>(&weight, kk, kk, 0, rows, &narrow)[..rows], want[..rows]);
        }
        // The scatter's row update, every tail length.
        for n in [0, 1, 7, 8, 9, 63, 64, 67] {
            let (mut a, mut b): (Vec<u64>, Vec<u64>) = (weight[..n].to_vec(), weight[..n].to_vec());
            axpy_i32(&mut a, &narrow[..n], 0x9e37_79b9_7f4a_7c15);
            axpy(&mut b, &narrow[..n], 0x9e37_79b9_7f4a_7c15);
            assert_eq!(a, b, "axpy of {n}");
        }
        let want = kernel::<u64, u64, 4>(&weight, kk + 3, kk, 1, 4, &wide);
        assert_eq!(winograd_kernel::<4>(&weight, kk + 3, kk, 1, 4, &narrow), want);
    }
}
