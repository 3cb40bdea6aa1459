//! The garbler's interpreter: half-gates garbling of up to [`LANES`] instances of one circuit in lock
//! step (so the 4 hashes of an AND gate in each of 8 instances go to AES as one batch of 32 blocks).
//!
//! Per AND gate `g` of instance `id`, with zero-labels `A0`, `B0`, permute bits `pa`, `pb`, tweaks
//! `t0 = (id, 2g)` and `t1 = (id, 2g+1)`:
//! `TG = H(A0,t0) ⊕ H(A1,t0) ⊕ pb·Δ`, `TE = H(B0,t1) ⊕ H(B1,t1) ⊕ A0`,
//! `W0 = H(A0,t0) ⊕ pa·TG ⊕ H(B0,t1) ⊕ pb·(TE ⊕ A0)`. The table is `TG ‖ TE` (32 bytes).

use crate::cpu::Backend;
use crate::hash::{FixedKeyAes, Pi, tweak};
use crate::word::{Lanes, Native};
use crate::{Bit, Circuit, Delta, Gate, Group, LANES, Label, Layout};

/// Bytes of one AND gate's table.
pub const AND_TABLE_BYTES: usize = 32;

/// Garbles the `group.ids.len()` (1..=LANES) instances of `circuit` in `group` (see [`Group`]: the
/// inputs are zero-labels, and `out` receives the output zero-labels), on the fastest backend this
/// CPU runs. Every output must be a wire (constant outputs are not garbled).
pub fn garble_lanes(circuit: &Circuit, delta: &Delta, group: Group<'_, &mut [u8]>) {
    garble_lanes_on(Backend::best(), circuit, delta, group)
}

/// [`garble_lanes`] on a chosen backend (the same bytes on every backend).
pub(crate) fn garble_lanes_on(backend: Backend, circuit: &Circuit, delta: &Delta, group: Group<'_, &mut [u8]>) {
    group.check(circuit);
    let pi = FixedKeyAes::get().pi(backend);
    // Per-thread scratch for the wire labels: allocating it per call made the allocator return and
    // re-fault pages on every group.
    thread_local!(static SCRATCH: std::cell::RefCell<Vec<Native>> = const { std::cell::RefCell::new(Vec::new()) });
    #[cfg(target_arch = "x86_64")]
    if let Some(cpu) = backend.avx512() {
        use crate::word::X4;
        thread_local!(static SCRATCH4: std::cell::RefCell<Vec<X4>> = const { std::cell::RefCell::new(Vec::new()) });
        // SAFETY: `cpu` proves that the CPU has the features `garble_lanes_avx512` is compiled with.
        return SCRATCH4.with_borrow_mut(|w| unsafe { garble_lanes_avx512(cpu, w, pi, circuit, delta, group) });
    }
    SCRATCH.with_borrow_mut(|w| garble_lanes_with::<Native, LANES>((), w, pi, circuit, delta, group))
}

/// The same code compiled with AVX-512 enabled: 32 vector registers (no spills of the lane arrays)
/// and 256/512-bit moves and XORs for the lane loops of free gates, four labels per word.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
fn garble_lanes_avx512(
    cpu: crate::cpu::Avx512,
    w: &mut Vec<crate::word::X4>,
    pi: Pi<'_>,
    circuit: &Circuit,
    delta: &Delta,
    group: Group<'_, &mut [u8]>,
) {
    garble_lanes_with::<crate::word::X4, { LANES / 4 }>(cpu, w, pi, circuit, delta, group)
}

/// [`garble_lanes`] computing with word type `W` (checked arguments), `L` words per wire.
#[inline(always)]
pub(crate) fn garble_lanes_with<W: Lanes, const L: usize>(
    cpu: W::Cpu,
    w: &mut Vec<W>,
    pi: Pi<'_>,
    circuit: &Circuit,
    delta: &Delta,
    group: Group<'_, &mut [u8]>,
) {
    let lanes = group.ids.len();
    assert_eq!(L * W::K, LANES, "L words of K labels make LANES instances");
    if lanes == LANES {
        return garble_impl::<W, L>(cpu, w, pi, circuit, delta, group);
    }
    // A partial group (the tail of a batch) runs padded to LANES lanes (constant trip counts keep the
    // lane loops unrolled); the padding lanes' tables are discarded, never sent.
    let (ng, ne, nout) = (circuit.n_garbler_inputs, circuit.n_evaluator_inputs, circuit.outputs.len());
    let rec = AND_TABLE_BYTES * circuit.n_and();
    let pad_ids: Vec<u64> = (0..LANES).map(|j| group.ids[j.min(lanes - 1)]).collect();
    let mut pgin = group.gin.to_vec();
    pgin.resize(LANES * ng, Label::default());
    let mut pein = group.ein.to_vec();
    pein.resize(LANES * ne, Label::default());
    let mut ptables = vec![0u8; LANES * rec];
    let mut pout = vec![Label::default(); LANES * nout];
    let pl = Layout::interleaved(AND_TABLE_BYTES, LANES);
    let padded = Group { ids: &pad_ids, gin: &pgin, ein: &pein, tables: &mut ptables[..], layout: pl, out: &mut pout };
    garble_impl::<W, L>(cpu, w, pi, circuit, delta, padded);
    for g in 0..circuit.n_and() {
        for j in 0..lanes {
            let (s, d) = (pl.at(j, g), group.layout.at(j, g));
            group.tables[d..d + AND_TABLE_BYTES].copy_from_slice(&ptables[s..s + AND_TABLE_BYTES]);
        }
    }
    group.out.copy_from_slice(&pout[..lanes * nout]);
}

/// Sizes the scratch (`L` words per wire of `circuit`, then `extra` words for AES batches) and loads the input
/// labels into the wire words, garbler inputs first: word `j` of a wire holds instances
/// `j*K .. j*K + K`. Returns the wire words and the AES buffer. Shared by garbler and evaluator.
#[inline(always)]
pub(crate) fn load_wires<'a, W: Lanes, const L: usize>(
    cpu: W::Cpu,
    w: &'a mut Vec<W>,
    extra: usize,
    circuit: &Circuit,
    gin: &[Label],
    ein: &[Label],
) -> (&'a mut [W], &'a mut [W]) {
    let (nw, ng, ne) = (circuit.n_wires() * L, circuit.n_garbler_inputs, circuit.n_evaluator_inputs);
    if w.len() != nw + extra {
        w.clear();
        w.resize(nw + extra, W::zero(cpu));
    }
    let (wires, buf) = w.split_at_mut(nw);
    let k = W::K;
    for i in 0..ng {
        for j in 0..L {
            wires[i * L + j] = W::gather(cpu, |t| gin[(j * k + t) * ng + i].0);
        }
    }
    for i in 0..ne {
        for j in 0..L {
            wires[(ng + i) * L + j] = W::gather(cpu, |t| ein[(j * k + t) * ne + i].0);
        }
    }
    (wires, buf)
}

/// Labels of one wire in all `L` lanes.
#[inline(always)]
pub(crate) fn lanes_of<W: Copy, const L: usize>(w: &[W], wire: u32) -> &[W; L] {
    let i = wire as usize * L;
    w[i..i + L].try_into().expect("L labels")
}

/// Most AND gates hashed in one AES call (a run of mutually independent ANDs, see [`and_run`]).
pub(crate) const MAX_RUN: usize = 32;

/// Length of the run of AND gates starting at gate `g` (an AND) whose inputs all come from before
/// gate `g`: they are independent, so all their hashes (in all lanes) go to AES as one batch. In the
/// ReLU gadget the carry chain gives runs of 1 and the output muxes one run of `k - 1 - shift`.
#[inline]
pub(crate) fn and_run(gates: &[Gate], nin: usize, g: usize) -> usize {
    let lim = (nin + g) as u32;
    gates[g..].iter().take(MAX_RUN).take_while(|gate| matches!(**gate, Gate::And(a, b) if a < lim && b < lim)).count()
}

/// Garbles a full group of [`LANES`] instances.
#[inline(always)]
fn garble_impl<W: Lanes, const L: usize>(
    cpu: W::Cpu,
    w: &mut Vec<W>,
    pi: Pi<'_>,
    circuit: &Circuit,
    delta: &Delta,
    group: Group<'_, &mut [u8]>,
) {
    let Group { ids, gin, ein, tables, layout, out } = group;
    let nin = circuit.n_inputs();
    let nout = circuit.outputs.len();
    let k = W::K;
    let d = W::splat(cpu, delta.as_u128());
    let sd = d.sigma();
    // Wire labels, then the AES batch of one run (4 blocks per AND per lane).
    // Every wire is written before it is read, so stale contents from the previous call are harmless
    // (zeroing the scratch on every call cost ~10% of the time).
    let (w, enc) = load_wires::<W, L>(cpu, w, MAX_RUN * L * 4, circuit, gin, ein);
    let base: [W; L] = std::array::from_fn(|j| W::gather(cpu, |t| tweak(ids[j * k + t], 0)));
    let gates = &circuit.gates;
    let mut and_idx = 0usize;
    let mut g = 0usize;
    while g < gates.len() {
        // Gates only read earlier wires, so the output slots are split off from their inputs.
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
                for (o, &x) in dst[..L].iter_mut().zip(lanes_of::<W, L>(src, a)) {
                    *o = x.xor(d);
                }
                g += 1;
            }
            Gate::And(..) => {
                let run = and_run(gates, nin, g);
                let enc = &mut enc[..run * L * 4];
                for (r, e) in enc.chunks_exact_mut(4 * L).enumerate() {
                    let Gate::And(a, b) = gates[g + r] else { unreachable!() };
                    let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                    let t0 = W::splat(cpu, 2 * (and_idx + r) as u128);
                    let t1 = W::splat(cpu, 2 * (and_idx + r) as u128 + 1);
                    for j in 0..L {
                        let ha = sa[j].sigma().xor(base[j]).xor(t0);
                        let hb = sb[j].sigma().xor(base[j]).xor(t1);
                        e[4 * j..4 * j + 4].copy_from_slice(&[ha, ha.xor(sd), hb, hb.xor(sd)]);
                    }
                }
                pi.permute_words(enc);
                for (r, e) in enc.chunks_exact(4 * L).enumerate() {
                    let Gate::And(a, b) = gates[g + r] else { unreachable!() };
                    let (sa, sb) = (lanes_of::<W, L>(src, a), lanes_of::<W, L>(src, b));
                    let t0 = W::splat(cpu, 2 * (and_idx + r) as u128);
                    let t1 = W::splat(cpu, 2 * (and_idx + r) as u128 + 1);
                    let dst = &mut dst[r * L..(r + 1) * L];
                    for j in 0..L {
                        let (a0, b0) = (sa[j], sb[j]);
                        // Recompute the hash inputs rather than keep a copy of the batch.
                        let ya = a0.sigma().xor(base[j]).xor(t0);
                        let yb = b0.sigma().xor(base[j]).xor(t1);
                        let h0 = e[4 * j].xor(ya);
                        let h1 = e[4 * j + 1].xor(ya).xor(sd);
                        let h2 = e[4 * j + 2].xor(yb);
                        let h3 = e[4 * j + 3].xor(yb).xor(sd);
                        let (ma, mb) = (a0.lsb_mask(), b0.lsb_mask());
                        let tg = h0.xor(h1).xor(mb.and(d));
                        let te = h2.xor(h3).xor(a0);
                        let wg = h0.xor(ma.and(tg));
                        let we = h2.xor(mb.and(te.xor(a0)));
                        dst[j] = wg.xor(we);
                        let off = layout.at(j * k, and_idx + r);
                        tg.write_strided(tables, off, layout.lane);
                        te.write_strided(tables, off + 16, layout.lane);
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

/// Garbles one instance: returns its tables and output zero-labels.
pub fn garble(circuit: &Circuit, delta: &Delta, id: u64, gin: &[Label], ein: &[Label]) -> (Vec<u8>, Vec<Label>) {
    let mut tables = vec![0u8; AND_TABLE_BYTES * circuit.n_and()];
    let mut out = vec![Label::default(); circuit.outputs.len()];
    let layout = Layout::per_instance(AND_TABLE_BYTES, circuit.n_and());
    garble_lanes(circuit, delta, Group { ids: &[id], gin, ein, tables: &mut tables, layout, out: &mut out });
    (tables, out)
}

/// Output decoding information: the permute bit of each output zero-label.
pub fn decoding_bits(out_zero: &[Label]) -> Vec<bool> {
    out_zero.iter().map(|l| l.lsb()).collect()
}

/// The label that encodes `bit` on a wire whose zero-label is `zero`.
#[inline]
pub fn encode(zero: Label, bit: bool, delta: &Delta) -> Label {
    if bit { zero ^ delta.as_label() } else { zero }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{CircuitBuilder, from_bits, to_bits};
    use crate::evaluate::{decode, evaluate};
    use crate::relu::{ReluParams, relu_circuit_with_mask};
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Garbles `c`, evaluates it on the given bits and decodes by point-and-permute.
    fn run(c: &Circuit, g: &[bool], e: &[bool], seed: u64) -> Vec<bool> {
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(seed);
        let delta = Delta::random(&mut rng);
        let gz: Vec<Label> = (0..g.len()).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..e.len()).map(|_| Label(rng.random())).collect();
        let (tables, out_zero) = garble(c, &delta, seed, &gz, &ez);
        let ga: Vec<Label> = gz.iter().zip(g).map(|(&z, &b)| encode(z, b, &delta)).collect();
        let ea: Vec<Label> = ez.iter().zip(e).map(|(&z, &b)| encode(z, b, &delta)).collect();
        let out = evaluate(c, seed, &ga, &ea, &tables);
        // Every output label is one of the wire's two labels.
        for (o, z) in out.iter().zip(&out_zero) {
            assert!(*o == *z || *o == *z ^ delta.as_label());
        }
        decode(&out, &decoding_bits(&out_zero))
    }

    fn mixed_circuit(n: usize) -> Circuit {
        let mut b = CircuitBuilder::new();
        let x = b.garbler_inputs(n);
        let y = b.evaluator_inputs(n);
        let s = b.add(&x, &y);
        let d = b.sub(&x, &y);
        let lt = b.lt_unsigned(&x, &y);
        let m = b.mux(lt, &s, &d);
        let mut out = m;
        out.push(lt);
        let o = b.or(x[0], y[n - 1]);
        out.push(o);
        b.finish(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbled_equals_plaintext(n in 1usize..=64, x in any::<u64>(), y in any::<u64>(), seed in any::<u64>()) {
            let c = mixed_circuit(n);
            let (g, e) = (to_bits(x, n), to_bits(y, n));
            prop_assert_eq!(run(&c, &g, &e, seed), c.eval_plain(&g, &e));
        }

        #[test]
        fn boolean_relu_with_mask_garbled_equals_plaintext(a in any::<u64>(), b in any::<u64>(), r in any::<u64>(), seed in any::<u64>()) {
            let p = ReluParams { l: 59, k: 32, shift: 12 };
            let c = relu_circuit_with_mask(&p);
            let g = to_bits(a, 32);
            let mut e = to_bits(b, 32);
            e.extend(to_bits(r, 59));
            let got = run(&c, &g, &e, seed);
            prop_assert_eq!(from_bits(&got), from_bits(&c.eval_plain(&g, &e)));
        }
    }

    /// Garbles `lanes` instances of the ReLU gadget with `f`; returns tables and output labels.
    fn garble_relu_group(lanes: usize, f: impl Fn(&Circuit, &Delta, Group<'_, &mut [u8]>)) -> (Vec<u8>, Vec<Label>) {
        let p = ReluParams { l: 59, k: 32, shift: 12 };
        let c = crate::relu::relu_circuit(&p);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(8 + lanes as u64);
        let delta = Delta::random(&mut rng);
        let ids: Vec<u64> = (0..lanes as u64).map(|i| 100 + i).collect();
        let gz: Vec<Label> = (0..lanes * 32).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..lanes * 32).map(|_| Label(rng.random())).collect();
        let mut t = vec![0u8; lanes * AND_TABLE_BYTES * c.n_and()];
        let mut o = vec![Label::default(); lanes * c.outputs.len()];
        let layout = Layout::interleaved(AND_TABLE_BYTES, lanes);
        f(&c, &delta, Group { ids: &ids, gin: &gz, ein: &ez, tables: &mut t, layout, out: &mut o });
        (t, o)
    }

    /// The portable backend, and plain `u128` words, against the default backend of this CPU.
    #[test]
    fn portable_backend_and_u128_words_garble_like_the_default() {
        for lanes in [1usize, 5, LANES] {
            let default = garble_relu_group(lanes, garble_lanes);
            let portable = garble_relu_group(lanes, |c, d, g| garble_lanes_on(Backend::Portable, c, d, g));
            let words = garble_relu_group(lanes, |c, d, g| {
                let pi = FixedKeyAes::get().pi(Backend::Portable);
                garble_lanes_with::<u128, LANES>((), &mut Vec::new(), pi, c, d, g)
            });
            assert!(default == portable, "{lanes} lanes: default and portable backends differ");
            assert!(default == words, "{lanes} lanes: default backend and u128 words differ");
        }
    }

    /// The AVX-512 interpreter against the portable one (the default test above may compare a backend
    /// with itself on a CPU without AVX-512; this one cannot).
    #[test]
    #[ignore = "needs AVX-512F/VL/BW; .ci/run runs every `simd_avx512_` test where the CPU has it"]
    fn simd_avx512_interpreter_garbles_like_the_portable_one() {
        let cpu = crate::cpu::require_avx512();
        for lanes in [1usize, 5, LANES] {
            let avx = garble_relu_group(lanes, |c, d, g| garble_lanes_on(Backend::Avx512(cpu), c, d, g));
            let portable = garble_relu_group(lanes, |c, d, g| garble_lanes_on(Backend::Portable, c, d, g));
            assert!(avx == portable, "{lanes} lanes: AVX-512 and portable interpreters differ");
        }
    }

    #[test]
    fn wrong_delta_or_wrong_label_gives_wrong_result() {
        let p = ReluParams { l: 59, k: 32, shift: 0 };
        let c = relu_circuit_with_mask(&p);
        let mut rng = rand_chacha::ChaCha12Rng::seed_from_u64(3);
        let delta = Delta::random(&mut rng);
        let gz: Vec<Label> = (0..c.n_garbler_inputs).map(|_| Label(rng.random())).collect();
        let ez: Vec<Label> = (0..c.n_evaluator_inputs).map(|_| Label(rng.random())).collect();
        let (tables, out_zero) = garble(&c, &delta, 1, &gz, &ez);
        let dec = decoding_bits(&out_zero);
        let (a, b, r) = (1000u64, 2345u64, 777u64);
        let g = to_bits(a, 32);
        let mut e = to_bits(b, 32);
        e.extend(to_bits(r, 59));
        let expect = from_bits(&c.eval_plain(&g, &e));
        let enc = |d: &Delta, gz: &[Label], ez: &[Label]| {
            let ga: Vec<Label> = gz.iter().zip(&g).map(|(&z, &x)| encode(z, x, d)).collect();
            let ea: Vec<Label> = ez.iter().zip(&e).map(|(&z, &x)| encode(z, x, d)).collect();
            (ga, ea)
        };
        let (ga, ea) = enc(&delta, &gz, &ez);
        assert_eq!(from_bits(&decode(&evaluate(&c, 1, &ga, &ea, &tables), &dec)), expect);
        // Inputs encoded with a flipped delta bit.
        let bad = Delta::new(delta.as_u128() ^ (1 << 77)).unwrap();
        let (ga2, ea2) = enc(&bad, &gz, &ez);
        let out = evaluate(&c, 1, &ga2, &ea2, &tables);
        assert_ne!(from_bits(&decode(&out, &dec)), expect);
        // One wrong input label (low bit of the server share) corrupts the outputs.
        let mut ga3 = ga.clone();
        ga3[0] = Label(ga3[0].0 ^ (1 << 40));
        let out = evaluate(&c, 1, &ga3, &ea, &tables);
        assert!(out.iter().zip(&out_zero).any(|(o, z)| *o != *z && *o != *z ^ delta.as_label()));
        assert_ne!(from_bits(&decode(&out, &dec)), expect);
        // Evaluating under another circuit id (tweak) fails as well.
        assert_ne!(from_bits(&decode(&evaluate(&c, 2, &ga, &ea, &tables), &dec)), expect);
    }
}
