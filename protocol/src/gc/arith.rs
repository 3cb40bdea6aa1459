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
use super::word::{Native, Word};
use super::{Delta, Label, Layout};

/// Bytes of one output ciphertext.
pub const ARITH_CT_BYTES: usize = 8;

/// Garbler side for `lanes` instances: `out_zero[lane * nout + o]` are the output zero-labels, the
/// hash tweaks are `(ids[lane], first_index + o)`. Writes the 8-byte ciphertext of output `o` of
/// instance `lane` at byte `layout.at(lane, o)` of `cts` and returns the garbler's share offsets `R_sum` (mod `mask + 1`) in `r`.
#[allow(clippy::too_many_arguments)]
pub fn garble_arith(
    out_zero: &[Label],
    weights: &[u64],
    mask: u64,
    delta: &Delta,
    ids: &[u64],
    first_index: u64,
    cts: &mut [u8],
    layout: Layout,
    r: &mut [u64],
) {
    let nout = weights.len();
    let lanes = ids.len();
    assert_eq!(out_zero.len(), lanes * nout);
    assert!(layout.lane >= ARITH_CT_BYTES && cts.len() >= layout.span(lanes, nout, ARITH_CT_BYTES));
    assert_eq!(r.len(), lanes);
    let sd = Native::from_u128(FixedKeyAes::sigma(delta.as_u128()));
    let aes = FixedKeyAes::get();
    // All lanes' hashes in one AES call (SIMD words: no 64-bit stores read back as 128-bit blocks).
    let mut buf = vec![Native::zero(); 2 * nout * lanes];
    let mut ys = vec![0u64; 2 * nout * lanes];
    for (j, &id) in ids.iter().enumerate() {
        for o in 0..nout {
            let i = j * nout + o;
            let s = Native::from_u128(FixedKeyAes::sigma(out_zero[i].0) ^ tweak(id, first_index + o as u64));
            let s1 = s.xor(sd);
            buf[2 * i] = s;
            buf[2 * i + 1] = s1;
            // Low halves of the hash inputs, kept for `H = π(y) ⊕ y` (only the low 64 bits are used).
            ys[2 * i] = s.to_u128() as u64;
            ys[2 * i + 1] = s1.to_u128() as u64;
        }
    }
    aes.permute_words(&mut buf);
    // Branch-free per output.
    for (j, rj) in r.iter_mut().enumerate() {
        let mut sum = 0u64;
        let outs = (0..nout)
            .zip(buf[2 * j * nout..2 * (j + 1) * nout].chunks_exact(2))
            .zip(ys[2 * j * nout..2 * (j + 1) * nout].chunks_exact(2))
            .zip(&out_zero[j * nout..(j + 1) * nout])
            .zip(weights);
        for ((((o, b), y), l), &w) in outs {
            let (h0, h1) = ((b[0].to_u128() as u64) ^ y[0], (b[1].to_u128() as u64) ^ y[1]);
            let m = ((l.0 & 1) as u64).wrapping_neg(); // all ones iff π = 1
            let swap = (h0 ^ h1) & m;
            let (h_even, h_odd) = (h0 ^ swap, h1 ^ swap);
            let r_o = h_even.wrapping_sub(w & m);
            let t = r_o.wrapping_add(w & !m).wrapping_sub(h_odd);
            sum = sum.wrapping_add(r_o);
            let at = layout.at(j, o);
            cts[at..at + ARITH_CT_BYTES].copy_from_slice(&(t & mask).to_le_bytes());
        }
        *rj = sum & mask;
    }
}

/// Evaluator side: from the output labels and the ciphertexts (placed by `layout`),
/// `V = R_sum + Σ z_o w_o` per instance.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_arith(
    out: &[Label],
    nout: usize,
    mask: u64,
    ids: &[u64],
    first_index: u64,
    cts: &[u8],
    layout: Layout,
    v: &mut [u64],
) {
    let lanes = ids.len();
    assert_eq!(out.len(), lanes * nout);
    assert!(layout.lane >= ARITH_CT_BYTES && cts.len() >= layout.span(lanes, nout, ARITH_CT_BYTES));
    assert_eq!(v.len(), lanes);
    let aes = FixedKeyAes::get();
    let mut buf = vec![Native::zero(); nout * lanes];
    for j in 0..lanes {
        for o in 0..nout {
            buf[j * nout + o] = Native::from_u128(FixedKeyAes::sigma(out[j * nout + o].0) ^ tweak(ids[j], first_index + o as u64));
        }
    }
    aes.permute_words(&mut buf);
    for j in 0..lanes {
        let mut sum = 0u64;
        for o in 0..nout {
            let i = j * nout + o;
            let y = FixedKeyAes::sigma(out[i].0) ^ tweak(ids[j], first_index + o as u64);
            let off = layout.at(j, o);
            let t = u64::from_le_bytes(cts[off..off + ARITH_CT_BYTES].try_into().expect("8 bytes"));
            let h = (buf[i].to_u128() ^ y) as u64;
            sum = sum.wrapping_add(if out[i].lsb() { h.wrapping_add(t) } else { h });
        }
        v[j] = sum & mask;
    }
}
