//! The evaluator's interpreter: half-gates evaluation of up to [`LANES`] instances in lock step
//! (2 hashes per AND gate per instance, batched across instances). Per AND gate, with labels `A`, `B`:
//! `W = H(A,t0) ⊕ lsb(A)·TG ⊕ H(B,t1) ⊕ lsb(B)·(TE ⊕ A)`.

use crate::cpu::Backend;
use crate::garble::{AND_TABLE_BYTES, MAX_RUN, and_run, lanes_of, load_wires};
use crate::hash::{FixedKeyAes, Pi, tweak};
use crate::word::{Lanes, Native};
use crate::{Bit, Circuit, Gate, Group, LANES, Label, Layout};

/// Evaluates the `group.ids.len()` (1..=LANES) instances in `group` (see [`Group`]: active input
/// labels, the tables as [`crate::garble::garble_lanes`] wrote them; `out` receives the active output
/// labels), on the fastest backend this CPU runs.
pub fn evaluate_lanes(circuit: &Circuit, group: Group<'_, &[u8]>) {
    evaluate_lanes_on(Backend::best(), circuit, group)
}

/// [`evaluate_lanes`] on a chosen backend (the same labels on every backend).
pub(crate) fn evaluate_lanes_on(backend: Backend, circuit: &Circuit, group: Group<'_, &[u8]>) {
    group.check(circuit);
    let pi = FixedKeyAes::get().pi(backend);
    thread_local!(static SCRATCH: std::cell::RefCell<Vec<Native>> = const { std::cell::RefCell::new(Vec::new()) });
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = backend.avx512() {
        use crate::word::X4;
        thread_local!(static SCRATCH4: std::cell::RefCell<Vec<X4>> = const { std::cell::RefCell::new(Vec::new()) });
        // SAFETY: `cpu` proves that the CPU has the features `evaluate_lanes_avx512` is compiled with.
        return SCRATCH4.with_borrow_mut(|w| unsafe { evaluate_lanes_avx512(cpu, w, pi, circuit, group) });
    }
    SCRATCH.with_borrow_mut(|w| evaluate_lanes_with::<Native, LANES>((), w, pi, circuit, group))
}

/// [`evaluate_lanes_with`] compiled with AVX-512 enabled (see `garble::garble_lanes_avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
fn evaluate_lanes_avx512(
    cpu: crate::cpu::Avx512,
    w: &mut Vec<crate::word::X4>,
    pi: Pi<'_>,
    circuit: &Circuit,
    group: Group<'_, &[u8]>,
) {
    evaluate_lanes_with::<crate::word::X4, { LANES / 4 }>(cpu, w, pi, circuit, group)
}

/// [`evaluate_lanes`] computing with word type `W` (checked arguments), `L` words per wire.
#[inline(always)]
pub(crate) fn evaluate_lanes_with<W: Lanes, const L: usize>(
    cpu: W::Cpu,
    w: &mut Vec<W>,
    pi: Pi<'_>,
    circuit: &Circuit,
    group: Group<'_, &[u8]>,
) {
    let lanes = group.ids.len();
    assert_eq!(L * W::K, LANES, "L words of K labels make LANES instances");
    if lanes == LANES {
        return evaluate_impl::<W, L>(cpu, w, pi, circuit, group);
    }
    // Partial group: padded to LANES lanes with dummy labels and zero tables (results discarded).
    let (ng, ne, nout) = (circuit.n_garbler_inputs, circuit.n_evaluator_inputs, circuit.outputs.len());
    let rec = AND_TABLE_BYTES * circuit.n_and();
    let pad_ids: Vec<u64> = (0..LANES).map(|j| group.ids[j.min(lanes - 1)]).collect();
    let mut pgin = group.gin.to_vec();
    pgin.resize(LANES * ng, Label::default());
    let mut pein = group.ein.to_vec();
    pein.resize(LANES * ne, Label::default());
    let mut ptables = vec![0u8; LANES * rec];
    let pl = Layout::interleaved(AND_TABLE_BYTES, LANES);
    for g in 0..circuit.n_and() {
        for j in 0..lanes {
            let (s, d) = (group.layout.at(j, g), pl.at(j, g));
            ptables[d..d + AND_TABLE_BYTES].copy_from_slice(&group.tables[s..s + AND_TABLE_BYTES]);
        }
    }
    let mut pout = vec![Label::default(); LANES * nout];
    let padded = Group { ids: &pad_ids, gin: &pgin, ein: &pein, tables: &ptables[..], layout: pl, out: &mut pout };
    evaluate_impl::<W, L>(cpu, w, pi, circuit, padded);
    group.out.copy_from_slice(&pout[..lanes * nout]);
}

/// Evaluates a full group of [`LANES`] instances.
#[inline(always)]
fn evaluate_impl<W: Lanes, const L: usize>(
    cpu: W::Cpu,
    w: &mut Vec<W>,
    pi: Pi<'_>,
    circuit: &Circuit,
    group: Group<'_, &[u8]>,
) {
    let Group { ids, gin, ein, tables, layout, out } = group;
    let nin = circuit.n_inputs();
    let nout = circuit.outputs.len();
    // Wire labels, then the AES batch of one run of independent ANDs (2 blocks per AND per lane).
    // Every wire is written before it is read, so stale contents from the previous call are harmless
    // (zeroing the scratch on every call cost ~10% of the time).
    let (w, enc) = load_wires::<W, L>(cpu, w, MAX_RUN * L * 2, circuit, gin, ein);
    let k = W::K;
    let base: [W; L] = std::array::from_fn(|j| W::gather(cpu, |t| tweak(ids[j * k + t], 0)));
    let gates = &circuit.gates;
    let mut and_idx = 0usize;
    let mut g = 0usize;
    while g < gates.len() {
        let (src, dst) = w.split_at_mut((nin + g) * L);
        match gates[g] {
            Gate::Xor(a, b) => {
                let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                for ((o, &x), &y) in dst[..L].iter_mut().zip(sa).zip(sb) {
                    *o = x.xor(y);
                }
                g += 1;
            }
            Gate::Not(a) => {
                dst[..L].copy_from_slice(lanes_of::<W, L>(src, a));
                g += 1;
            }
            Gate::And(..) => {
                let run = and_run(gates, nin, g);
                let enc = &mut enc[..run * L * 2];
                for (r, e) in enc.chunks_exact_mut(2 * L).enumerate() {
                    let Gate::And(a, b) = gates[g + r] else { unreachable!() };
                    let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                    let t0 = W::splat(cpu, 2 * (and_idx + r) as u128);
                    let t1 = W::splat(cpu, 2 * (and_idx + r) as u128 + 1);
                    for j in 0..L {
                        e[2 * j] = sa[j].sigma().xor(base[j]).xor(t0);
                        e[2 * j + 1] = sb[j].sigma().xor(base[j]).xor(t1);
                    }
                }
                pi.permute_words(enc);
                for (r, e) in enc.chunks_exact(2 * L).enumerate() {
                    let Gate::And(a, b) = gates[g + r] else { unreachable!() };
                    let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                    let t0 = W::splat(cpu, 2 * (and_idx + r) as u128);
                    let t1 = W::splat(cpu, 2 * (and_idx + r) as u128 + 1);
                    let dst = &mut dst[r * L..(r + 1) * L];
                    for j in 0..L {
                        let (la, lb) = (sa[j], sb[j]);
                        let off = layout.at(j * k, and_idx + r);
                        let tg = W::read_strided(cpu, tables, off, layout.lane);
                        let te = W::read_strided(cpu, tables, off + 16, layout.lane);
                        // Hash inputs recomputed rather than copied before the in-place AES.
                        let ha = e[2 * j].xor(la.sigma().xor(base[j]).xor(t0));
                        let hb = e[2 * j + 1].xor(lb.sigma().xor(base[j]).xor(t1));
                        dst[j] = ha.xor(la.lsb_mask().and(tg)).xor(hb).xor(lb.lsb_mask().and(te.xor(la)));
                    }
                }
                and_idx += run;
                g += run;
            }
        }
    }
    for (oi, o) in circuit.outputs.iter().enumerate() {
        let Bit::Wire(x) = *o else { panic!("constant circuit outputs are not garbled") };
        for j in 0..L {
            w[x as usize * L + j].scatter(|t, v| out[(j * k + t) * nout + oi] = Label(v));
        }
    }
}

/// Evaluates one instance; returns its output labels.
pub fn evaluate(circuit: &Circuit, id: u64, gin: &[Label], ein: &[Label], tables: &[u8]) -> Vec<Label> {
    let mut out = vec![Label::default(); circuit.outputs.len()];
    let layout = Layout::per_instance(AND_TABLE_BYTES, circuit.n_and());
    evaluate_lanes(circuit, Group { ids: &[id], gin, ein, tables, layout, out: &mut out });
    out
}

/// Output decoding by point-and-permute: the plaintext bit is `lsb(label) ⊕ decoding bit`.
pub fn decode(out: &[Label], decoding: &[bool]) -> Vec<bool> {
    out.iter().zip(decoding).map(|(l, &d)| l.lsb() ^ d).collect()
}
