//! Arithmetic output: turns garbled output bits `z_o` into an additive sharing of `Σ z_o·w_o mod 2^l`
//! without decoding them (ABY's Y2B + B2A, with the OT taken from the output labels themselves).
//!
//! Per output wire with labels `L0`, `L1 = L0 ⊕ Δ` and `π = lsb(L0)`: let `h(L)` be the low 64 bits of
//! `H(L, t)`. The garbler sets `R = h(L_π) - π·w` and sends `T = R + (1-π)·w - h(L_{¬π})` (8 bytes).
//! The evaluator, holding `L_z`, computes `v = h(L_z) + lsb(L_z)·T = R + z·w`. Summed over the wires the
//! evaluator gets `V = R_sum + Σ z_o w_o`, where `R_sum` is masked by the hashes of labels it never
//! holds; the garbler keeps `R_sum`. Cost: 8 bytes and 2 (garbler) / 1 (evaluator) hashes per bit,
//! instead of an `l`-bit garbled subtractor.

use super::hash::{FixedKeyAes, tweak};
use super::{Delta, Label};

/// Bytes of one output ciphertext.
pub const ARITH_CT_BYTES: usize = 8;

/// Garbler side for `lanes` instances: `out_zero[lane * nout + o]` are the output zero-labels, the
/// hash tweaks are `(ids[lane], first_index + o)`. Writes `8 * nout` bytes for instance `lane` at byte
/// `lane * stride` of `cts` and returns the garbler's share offsets `R_sum` (mod `mask + 1`) in `r`.
#[allow(clippy::too_many_arguments)]
pub fn garble_arith(
    out_zero: &[Label],
    weights: &[u64],
    mask: u64,
    delta: &Delta,
    ids: &[u64],
    first_index: u64,
    cts: &mut [u8],
    stride: usize,
    r: &mut [u64],
) {
    let nout = weights.len();
    let lanes = ids.len();
    assert_eq!(out_zero.len(), lanes * nout);
    assert!(stride >= nout * ARITH_CT_BYTES && cts.len() >= (lanes - 1) * stride + nout * ARITH_CT_BYTES);
    assert_eq!(r.len(), lanes);
    let sd = FixedKeyAes::sigma(delta.as_u128());
    let aes = FixedKeyAes::get();
    let mut buf = vec![0u128; 2 * nout];
    for j in 0..lanes {
        for o in 0..nout {
            let s = FixedKeyAes::sigma(out_zero[j * nout + o].0) ^ tweak(ids[j], first_index + o as u64);
            buf[2 * o] = s;
            buf[2 * o + 1] = s ^ sd;
        }
        aes.mmo_in_place(&mut buf);
        let mut sum = 0u64;
        for o in 0..nout {
            let pi = out_zero[j * nout + o].lsb();
            let (h0, h1) = (buf[2 * o] as u64, buf[2 * o + 1] as u64);
            let (h_even, h_odd) = if pi { (h1, h0) } else { (h0, h1) };
            let w = weights[o];
            let r_o = h_even.wrapping_sub(if pi { w } else { 0 });
            let t = r_o.wrapping_add(if pi { 0 } else { w }).wrapping_sub(h_odd);
            sum = sum.wrapping_add(r_o);
            let off = j * stride + o * ARITH_CT_BYTES;
            cts[off..off + ARITH_CT_BYTES].copy_from_slice(&(t & mask).to_le_bytes());
        }
        r[j] = sum & mask;
    }
}

/// Evaluator side: from the output labels and the ciphertexts (instance `lane` at `lane * stride`),
/// `V = R_sum + Σ z_o w_o` per instance.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_arith(
    out: &[Label],
    nout: usize,
    mask: u64,
    ids: &[u64],
    first_index: u64,
    cts: &[u8],
    stride: usize,
    v: &mut [u64],
) {
    let lanes = ids.len();
    assert_eq!(out.len(), lanes * nout);
    assert!(stride >= nout * ARITH_CT_BYTES && cts.len() >= (lanes - 1) * stride + nout * ARITH_CT_BYTES);
    assert_eq!(v.len(), lanes);
    let aes = FixedKeyAes::get();
    let mut buf = vec![0u128; nout];
    for j in 0..lanes {
        for o in 0..nout {
            buf[o] = FixedKeyAes::sigma(out[j * nout + o].0) ^ tweak(ids[j], first_index + o as u64);
        }
        aes.mmo_in_place(&mut buf);
        let mut sum = 0u64;
        for o in 0..nout {
            let off = j * stride + o * ARITH_CT_BYTES;
            let t = u64::from_le_bytes(cts[off..off + ARITH_CT_BYTES].try_into().expect("8 bytes"));
            let h = buf[o] as u64;
            sum = sum.wrapping_add(if out[j * nout + o].lsb() { h.wrapping_add(t) } else { h });
        }
        v[j] = sum & mask;
    }
}
