//! The one place in `pi-model` that holds `unsafe`: the convolution micro-kernel compiled for
//! AVX-512 (64-bit vector multiplies), behind one safe dispatch that checks the CPU first.

#![allow(unsafe_code)]

use super::{MR, NR, Scalar};

/// `MR x NR` block of `W[m0.., :] * patch`: the AVX-512 build of [`super::micro_kernel`] when the CPU
/// has AVX-512 F/DQ/VL, the portable one otherwise. Both compute the same values.
#[inline(always)]
pub(super) fn micro_kernel<T: Scalar>(weight: &[T], kk: usize, m0: usize, rows: usize, patch: &[T]) -> [[T; NR]; MR] {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU supports the features the function is compiled for (checked just above).
        return unsafe { micro_kernel_avx512(weight, kk, m0, rows, patch) };
    }
    super::micro_kernel(weight, kk, m0, rows, patch)
}

/// Whether this CPU runs the AVX-512 kernel (std caches the detection).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn micro_kernel_avx512<T: Scalar>(weight: &[T], kk: usize, m0: usize, rows: usize, patch: &[T]) -> [[T; NR]; MR] {
    super::micro_kernel(weight, kk, m0, rows, patch)
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
                micro_kernel(&weight, kk, 0, rows, &patch),
                super::super::micro_kernel(&weight, kk, 0, rows, &patch)
            );
        }
    }
}
