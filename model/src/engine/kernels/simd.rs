//! The one place in `pi-model` that holds `unsafe`: the convolution micro-kernel compiled for
//! AVX-512 (64-bit vector multiplies), behind one safe dispatch that checks the CPU first.

#![allow(unsafe_code)]

#[cfg(test)]
use super::MR;
use super::{NR, Scalar};

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
    kernel::<T, R>(weight, stride, kk, m0, rows, patch)
}

/// The body of [`micro_kernel`], compiled once per instruction set.
#[inline(always)]
fn kernel<T: Scalar, const R: usize>(
    weight: &[T],
    stride: usize,
    kk: usize,
    m0: usize,
    rows: usize,
    patch: &[T],
) -> [[T; NR]; R] {
    let mut acc = [[T::ZERO; NR]; R];
    let w: [&[T]; R] = std::array::from_fn(|i| {
        let r = if i < rows { m0 + i } else { m0 };
        &weight[r * stride..][..kk]
    });
    for k in 0..kk {
        let c: &[T; NR] = patch[k * NR..][..NR].try_into().expect("NR values");
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
    kernel::<T, R>(weight, stride, kk, m0, rows, patch)
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
                kernel::<u64, MR>(&weight, kk, kk, 0, rows, &patch)
            );
        }
        // Fewer rows per call, a row stride longer than the rows, and a start row.
        assert_eq!(
            micro_kernel::<u64, 4>(&weight, kk + 3, kk, 1, 3, &patch),
            kernel::<u64, 4>(&weight, kk + 3, kk, 1, 3, &patch)
        );
    }
}
