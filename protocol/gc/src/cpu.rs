//! The one place that asks the CPU what it has (`is_x86_feature_detected!`, once per process), and
//! the proofs of it that the SIMD code takes. [`Avx512`] and [`Vaes`] can only be made here, after
//! detection, and every path to an AVX-512 or VAES instruction needs one (as a constructor argument of
//! `word::X4`, `vaes::RoundKeys`, or to call a `#[target_feature]` entry point), so no code in the
//! crate can reach an instruction the CPU lacks.

use std::sync::OnceLock;

/// What the CPU offers the garbling code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// AVX2 and AVX-512F/VL/BW: four labels per register in the interpreters (`word::X4`).
    pub avx512: bool,
    /// `avx512` plus VAES and AES-NI: AES on four blocks per instruction and the lock-step backends.
    pub vaes: bool,
    /// AES-NI (the `aes` crate detects and uses it by itself; reported by the benchmark).
    pub aesni: bool,
}

/// The CPU's features, detected on first use.
pub(crate) fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx512 = has!("avx2") && has!("avx512f") && has!("avx512vl") && has!("avx512bw");
    let aesni = has!("aes");
    Features { avx512, vaes: avx512 && aesni && has!("vaes"), aesni }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features { avx512: false, vaes: false, aesni: false }
}

/// Proof that this CPU has AVX2 and AVX-512F/VL/BW (only [`avx512`] makes one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Avx512 {
    _detected: (),
}

/// Proof that this CPU has everything [`Avx512`] proves, plus VAES and AES-NI (only [`vaes`] makes one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vaes {
    _detected: (),
}

impl Vaes {
    /// VAES implies the AVX-512 subset.
    #[inline(always)]
    pub(crate) fn avx512(self) -> Avx512 {
        Avx512 { _detected: () }
    }
}

/// The AVX-512 proof, where the CPU has AVX2 and AVX-512F/VL/BW.
#[inline]
pub(crate) fn avx512() -> Option<Avx512> {
    features().avx512.then_some(Avx512 { _detected: () })
}

/// The VAES proof, where the CPU has AVX-512F/VL/BW, VAES and AES-NI.
#[inline]
pub(crate) fn vaes() -> Option<Vaes> {
    features().vaes.then_some(Vaes { _detected: () })
}

/// Which code garbles and evaluates: the fastest one this CPU runs ([`Backend::best`]), or a slower
/// one forced by tests, which check that every backend produces the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The interpreters on SSE2 words (plain `u128` off x86_64), `π` by the `aes` crate: runs anywhere.
    Portable,
    /// The interpreters with four labels per AVX-512 register, `π` by the `aes` crate.
    Avx512(Avx512),
    /// As [`Backend::Avx512`], `π` by VAES, and the lock-step backends for the ReLU gadget.
    Vaes(Vaes),
}

impl Backend {
    /// The fastest backend this CPU runs.
    #[inline]
    pub(crate) fn best() -> Self {
        match (vaes(), avx512()) {
            (Some(v), _) => Backend::Vaes(v),
            (None, Some(a)) => Backend::Avx512(a),
            (None, None) => Backend::Portable,
        }
    }

    /// The AVX-512 proof, if this backend uses AVX-512.
    #[inline]
    pub(crate) fn avx512(self) -> Option<Avx512> {
        match self {
            Backend::Portable => None,
            Backend::Avx512(a) => Some(a),
            Backend::Vaes(v) => Some(v.avx512()),
        }
    }

    /// The VAES proof, if this backend uses VAES.
    #[inline]
    pub(crate) fn vaes(self) -> Option<Vaes> {
        match self {
            Backend::Vaes(v) => Some(v),
            _ => None,
        }
    }
}

/// For the `simd_` tests: the AVX-512 proof, or a panic that says the CPU cannot run the test.
#[cfg(test)]
pub(crate) fn require_avx512() -> Avx512 {
    avx512().expect("this test needs AVX2 + AVX-512F/VL/BW, which this CPU lacks: run it on a CPU that has them")
}

/// For the `simd_` tests: the VAES proof, or a panic that says the CPU cannot run the test.
#[cfg(test)]
pub(crate) fn require_vaes() -> Vaes {
    vaes().expect("this test needs AVX-512F/VL/BW + VAES + AES-NI, which this CPU lacks: run it on a CPU that has them")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_ordered_by_what_they_prove() {
        let f = features();
        assert!(!f.vaes || (f.avx512 && f.aesni), "VAES is only used together with AVX-512 and AES-NI");
        let best = Backend::best();
        assert_eq!(best.avx512().is_some(), f.avx512);
        assert_eq!(best.vaes().is_some(), f.vaes);
        assert_eq!(Backend::Portable.avx512(), None);
        assert_eq!(Backend::Portable.vaes(), None);
    }
}
