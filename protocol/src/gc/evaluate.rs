//! The evaluator's interpreter: half-gates evaluation of up to [`LANES`] instances in lock step
//! (2 hashes per AND gate per instance, batched across instances). Per AND gate, with labels `A`, `B`:
//! `W = H(A,t0) ⊕ lsb(A)·TG ⊕ H(B,t1) ⊕ lsb(B)·(TE ⊕ A)`.

use super::garble::{AND_TABLE_BYTES, lanes_of};
use super::word::{Native, Word};
use super::hash::{FixedKeyAes, tweak};
use super::{Bit, Circuit, Gate, LANES, Label};

/// Evaluates `ids.len()` (1..=LANES) instances; same layouts as [`super::garble::garble_lanes`], with
/// active labels instead of zero-labels and tables of instance `lane` at byte `lane * stride`.
/// `out` receives the output labels.
pub fn evaluate_lanes(
    circuit: &Circuit,
    ids: &[u64],
    gin: &[Label],
    ein: &[Label],
    tables: &[u8],
    stride: usize,
    out: &mut [Label],
) {
    let lanes = ids.len();
    let rec = AND_TABLE_BYTES * circuit.n_and();
    assert!((1..=LANES).contains(&lanes), "1..=LANES instances per call");
    assert_eq!(gin.len(), lanes * circuit.n_garbler_inputs);
    assert_eq!(ein.len(), lanes * circuit.n_evaluator_inputs);
    assert!(stride >= rec && tables.len() >= (lanes - 1) * stride + rec);
    assert_eq!(out.len(), lanes * circuit.outputs.len());
    thread_local!(static SCRATCH: std::cell::RefCell<Vec<Native>> = const { std::cell::RefCell::new(Vec::new()) });
    SCRATCH.with_borrow_mut(|w| evaluate_lanes_with::<Native>(w, circuit, ids, gin, ein, tables, stride, out))
}

/// [`evaluate_lanes`] computing with word type `W` (checked arguments).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate_lanes_with<W: Word>(
    w: &mut Vec<W>,
    circuit: &Circuit,
    ids: &[u64],
    gin: &[Label],
    ein: &[Label],
    tables: &[u8],
    stride: usize,
    out: &mut [Label],
) {
    let lanes = ids.len();
    if lanes == LANES {
        return evaluate_impl::<W, LANES>(w, circuit, ids, gin, ein, tables, stride, out);
    }
    // Partial group: padded to LANES lanes with dummy labels and zero tables (results discarded).
    let (ng, ne, nout) = (circuit.n_garbler_inputs, circuit.n_evaluator_inputs, circuit.outputs.len());
    let rec = AND_TABLE_BYTES * circuit.n_and();
    let pad_ids: Vec<u64> = (0..LANES).map(|j| ids[j.min(lanes - 1)]).collect();
    let mut pgin = gin.to_vec();
    pgin.resize(LANES * ng, Label::default());
    let mut pein = ein.to_vec();
    pein.resize(LANES * ne, Label::default());
    let mut ptables = vec![0u8; LANES * rec];
    for j in 0..lanes {
        ptables[j * rec..(j + 1) * rec].copy_from_slice(&tables[j * stride..j * stride + rec]);
    }
    let mut pout = vec![Label::default(); LANES * nout];
    evaluate_impl::<W, LANES>(w, circuit, &pad_ids, &pgin, &pein, &ptables, rec, &mut pout);
    out.copy_from_slice(&pout[..lanes * nout]);
}

#[allow(clippy::too_many_arguments)]
fn evaluate_impl<W: Word, const L: usize>(
    w: &mut Vec<W>,
    circuit: &Circuit,
    ids: &[u64],
    gin: &[Label],
    ein: &[Label],
    tables: &[u8],
    stride: usize,
    out: &mut [Label],
) {
    let (ng, ne, nin) = (circuit.n_garbler_inputs, circuit.n_evaluator_inputs, circuit.n_inputs());
    let nout = circuit.outputs.len();
    let aes = FixedKeyAes::get();
    w.clear();
    w.resize(circuit.n_wires() * L, W::zero());
    for j in 0..L {
        for i in 0..ng {
            w[i * L + j] = W::from_u128(gin[j * ng + i].0);
        }
        for i in 0..ne {
            w[(ng + i) * L + j] = W::from_u128(ein[j * ne + i].0);
        }
    }
    let base: [W; L] = std::array::from_fn(|j| W::from_u128(tweak(ids[j], 0)));
    let mut ys = [[W::zero(); 2]; L];
    let mut enc = [[W::zero(); 2]; L];
    let mut and_idx = 0usize;
    for (g, gate) in circuit.gates.iter().enumerate() {
        let (src, dst) = w.split_at_mut((nin + g) * L);
        let dst = &mut dst[..L];
        match *gate {
            Gate::Xor(a, b) => {
                let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                for ((o, &x), &y) in dst.iter_mut().zip(sa).zip(sb) {
                    *o = x.xor(y);
                }
            }
            Gate::Not(a) => dst.copy_from_slice(lanes_of::<W, L>(src, a)),
            Gate::And(a, b) => {
                let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                let t0 = W::from_u128(2 * and_idx as u128);
                let t1 = W::from_u128(2 * and_idx as u128 + 1);
                for j in 0..L {
                    ys[j] = [sa[j].sigma().xor(base[j]).xor(t0), sb[j].sigma().xor(base[j]).xor(t1)];
                    enc[j] = ys[j];
                }
                aes.permute_words(enc.as_flattened_mut());
                for j in 0..L {
                    let (la, lb) = (sa[j], sb[j]);
                    let off = j * stride + AND_TABLE_BYTES * and_idx;
                    let table: &[u8; 32] = tables[off..off + 32].try_into().expect("32 bytes");
                    let tg = W::read_from(&table[..16]);
                    let te = W::read_from(&table[16..]);
                    let (ha, hb) = (enc[j][0].xor(ys[j][0]), enc[j][1].xor(ys[j][1]));
                    dst[j] = ha.xor(la.lsb_mask().and(tg)).xor(hb).xor(lb.lsb_mask().and(te.xor(la)));
                }
                and_idx += 1;
            }
        }
    }
    for (oi, o) in circuit.outputs.iter().enumerate() {
        let Bit::Wire(x) = *o else { panic!("constant circuit outputs are not garbled") };
        for j in 0..L {
            out[j * nout + oi] = Label(w[x as usize * L + j].to_u128());
        }
    }
}

/// Evaluates one instance; returns its output labels.
pub fn evaluate(circuit: &Circuit, id: u64, gin: &[Label], ein: &[Label], tables: &[u8]) -> Vec<Label> {
    let mut out = vec![Label::default(); circuit.outputs.len()];
    evaluate_lanes(circuit, &[id], gin, ein, tables, tables.len(), &mut out);
    out
}

/// Output decoding by point-and-permute: the plaintext bit is `lsb(label) ⊕ decoding bit`.
pub fn decode(out: &[Label], decoding: &[bool]) -> Vec<bool> {
    out.iter().zip(decoding).map(|(l, &d)| l.lsb() ^ d).collect()
}
