//! The two-party protocol for one garbled layer of `n` values (server = garbler, client = evaluator):
//! a ReLU layer, or the exact truncation of linearized neurons and rescaled outputs ([`Gadget`]).
//!
//! The server holds `a[i]`, the client `b[i]`; `y = a + b` (mod `2^l`, with `|y| < 2^(k-1)`). The
//! client picks fresh masks `r[i]`. Afterwards the server holds `z[i] - r[i]` and the client `r[i]`,
//! where `z = relu(y) >> shift`: the masked value goes to the server, the client learns nothing.
//! (A truncation layer ends with the shares of `floor(y / 2^shift)` that [`Gadget`] describes.)
//!
//! Offline (client inputs known): `G → E` header; OT extension for the bits of `b` (`E → G`, 16 bytes
//! per bit); garbled tables and output ciphertexts (`G → E`, streamed). Online: `G → E` the labels of
//! `a` (16 bytes per bit); the client evaluates, gets `V = R + z`, and sends `V - r` (8 bytes per
//! ReLU); the server subtracts its `R`. One round trip per layer.
//!
//! A session ([`GarblerSession`]/[`EvaluatorSession`]) runs the base OTs once; every layer's offline
//! material ([`GarblerOffline`]/[`EvaluatorOffline`]) is consumed by value online, so it cannot be reused.

use crate::arith::{evaluate_online_scaled, garble_online_scaled};
use crate::batch::{
    ArithCircuit, evaluate_batch, evaluate_batch_keeping_scale, garble_batch, garble_batch_keeping_scale, input_bits,
};
use crate::ot::{CotReceiver, CotSender};
use crate::prg::AesPrg;
use crate::stochastic::StochasticParams;
use crate::truncate::TruncParams;
use crate::{Delta, GcError, LANES, Label, ReluParams, malformed};
use pi_channel::{Channel, MsgKind, TaskFailed, pipeline};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zeroize::Zeroize;

/// Target size of one online label frame; tables are chunked by the same number of ReLUs.
const ONLINE_FRAME_BYTES: usize = 1 << 20;

/// ReLUs per frame (tables, online labels and results alike): a multiple of [`LANES`].
pub fn chunk_relus(p: &ReluParams) -> usize {
    Gadget::Relu(*p).chunk()
}

/// What a garbled layer computes per value: which circuit, how shares become its inputs, and how
/// its output becomes each party's share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gadget {
    /// `relu(y) >> shift` ([`crate::relu`]): the server gets `z - r`, the client keeps `r`.
    Relu(ReluParams),
    /// `floor(y / 2^shift)` exactly ([`crate::truncate`]): the server gets
    /// [`TruncParams::garbler_share`], the client [`TruncParams::evaluator_share`].
    Truncate(TruncParams),
    /// `relu(y)` with the sign read from the shares' top bits ([`crate::stochastic`]): fewer
    /// server labels online; positive values below `2^t` may come out as 0. The server gets
    /// `z - r`, the client keeps `r`.
    Stochastic(StochasticParams),
}

impl From<StochasticParams> for Gadget {
    fn from(p: StochasticParams) -> Self {
        Gadget::Stochastic(p)
    }
}

impl From<ReluParams> for Gadget {
    fn from(p: ReluParams) -> Self {
        Gadget::Relu(p)
    }
}

impl From<TruncParams> for Gadget {
    fn from(p: TruncParams) -> Self {
        Gadget::Truncate(p)
    }
}

impl Gadget {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Gadget::Relu(p) => p.validate(),
            Gadget::Truncate(p) => p.validate(),
            Gadget::Stochastic(p) => p.validate(),
        }
    }

    /// The server's input bits per value (labels it sends online).
    pub fn garbler_bits(&self) -> usize {
        match self {
            Gadget::Relu(p) => p.k as usize,
            Gadget::Truncate(p) => p.bits(),
            Gadget::Stochastic(p) => p.sign_bits as usize,
        }
    }

    /// The client's input bits per value (OTs offline).
    pub fn evaluator_bits(&self) -> usize {
        match self {
            Gadget::Relu(p) => p.k as usize,
            Gadget::Truncate(p) => p.bits(),
            Gadget::Stochastic(p) => p.k as usize,
        }
    }

    /// Bytes per value of the online ciphertext sent with the server's labels (the stochastic
    /// ReLU's `p·a` term), 0 for the others.
    fn online_ct_bytes(&self) -> usize {
        match self {
            Gadget::Stochastic(_) => 8,
            _ => 0,
        }
    }

    /// `2^l - 1` of the ring.
    pub fn mask(&self) -> u64 {
        match self {
            Gadget::Relu(p) => p.mask(),
            Gadget::Truncate(p) => p.mask(),
            Gadget::Stochastic(p) => p.mask(),
        }
    }

    /// The circuit with its arithmetic reading.
    pub fn arith_circuit(&self) -> ArithCircuit {
        match self {
            Gadget::Relu(p) => ArithCircuit::relu(p),
            Gadget::Truncate(p) => p.arith_circuit(),
            Gadget::Stochastic(p) => p.arith_circuit(),
        }
    }

    /// Values per frame (tables, online labels and results alike): a multiple of [`LANES`].
    pub fn chunk(&self) -> usize {
        let per = 16 * self.garbler_bits().max(self.evaluator_bits());
        ((ONLINE_FRAME_BYTES / per) / LANES * LANES).max(LANES)
    }

    /// Bytes per value the garbler sends offline (tables and output ciphertexts) and the OT for the
    /// client's input bits takes (16 per bit); online, the server's labels and the masked result.
    pub fn bytes_per_value(&self) -> (usize, usize) {
        let online = 16 * self.garbler_bits() + self.online_ct_bytes() + 8;
        (self.arith_circuit().record_bytes() + 16 * self.evaluator_bits(), online)
    }

    fn garbler_word(&self, a: u64) -> u64 {
        match self {
            Gadget::Relu(_) => a,
            Gadget::Truncate(p) => p.garbler_word(a),
            Gadget::Stochastic(p) => p.garbler_word(a),
        }
    }

    fn evaluator_word(&self, b: u64) -> u64 {
        match self {
            Gadget::Relu(_) => b,
            Gadget::Truncate(p) => p.evaluator_word(b),
            Gadget::Stochastic(p) => p.evaluator_word(b),
        }
    }

    /// The client's share of the gadget's value from its input share `b` and its mask `r`.
    pub fn evaluator_share(&self, b: u64, r: u64) -> u64 {
        match self {
            Gadget::Relu(p) => r & p.mask(),
            Gadget::Truncate(p) => p.evaluator_share(b, r),
            Gadget::Stochastic(p) => r & p.mask(),
        }
    }
}

fn chunk_ranges(n: usize, chunk: usize) -> Vec<(usize, usize)> {
    (0..n.div_ceil(chunk)).map(|c| (c * chunk, ((c + 1) * chunk).min(n))).collect()
}

/// First message of a layer's offline phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct OfflineHeader {
    params: Gadget,
    n: u64,
    first_id: u64,
}

/// The server's side of a session: base OTs done, delta fixed, circuit ids counted.
pub struct GarblerSession {
    cot: CotSender,
    next_id: u64,
    rng: ChaCha12Rng,
}

impl GarblerSession {
    /// Runs the base OTs (128 Chou-Orlandi OTs) with OS randomness.
    pub async fn setup(ch: &mut Channel) -> Result<Self, GcError> {
        let mut rng = ChaCha12Rng::from_os_rng();
        let cot = CotSender::setup(ch, &mut rng).await?;
        Ok(Self { cot, next_id: 0, rng })
    }

    /// Offline phase of one layer of `n` values (ReLUs or truncations): OT for the client's share
    /// bits, then garbling streamed to the client.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        params: impl Into<Gadget>,
        n: usize,
    ) -> Result<GarblerOffline, GcError> {
        let params = params.into();
        params.validate().map_err(GcError::Params)?;
        let first_id = self.next_id;
        self.next_id += n as u64;
        ch.send_msg(MsgKind::GarbledTables, &OfflineHeader { params, n: n as u64, first_id }).await?;
        let (kg, ke) = (params.garbler_bits(), params.evaluator_bits());
        let ein = self.cot.extend(ch, n * ke).await?;
        let keep_scale = matches!(params, Gadget::Stochastic(_));

        let ac = params.arith_circuit();
        let chunk = params.chunk();
        let ranges = chunk_ranges(n, chunk);
        let mut seeds: Vec<[u8; 16]> = ranges
            .iter()
            .map(|_| {
                let mut s = [0u8; 16];
                self.rng.fill_bytes(&mut s);
                s
            })
            .collect();
        let delta = self.cot.delta().clone();
        let (a_zero, r_sum, scale_zero) = {
            let delta = delta.clone();
            pipeline::stream::<_, GcError, _>(ch, MsgKind::GarbledTables, move |frames| {
                let mut a_zero = vec![Label::default(); n * kg];
                let mut r_sum = vec![0u64; n];
                let mut scale_zero = vec![Label::default(); if keep_scale { n } else { 0 }];
                let mut raw = Vec::<u128>::new();
                for (c, &(lo, hi)) in ranges.iter().enumerate() {
                    let gin = &mut a_zero[lo * kg..hi * kg];
                    raw.resize(gin.len(), 0);
                    AesPrg::new(seeds[c]).fill(0, &mut raw);
                    for (g, &x) in gin.iter_mut().zip(&raw) {
                        *g = Label(x);
                    }
                    let mut records = frames.buffer();
                    records.resize((hi - lo) * ac.record_bytes(), 0);
                    let (ein, id) = (&ein[lo * ke..hi * ke], first_id + lo as u64);
                    match keep_scale {
                        true => {
                            let scale = &mut scale_zero[lo..hi];
                            garble_batch_keeping_scale(
                                &ac,
                                &delta,
                                id,
                                gin,
                                ein,
                                &mut records,
                                &mut r_sum[lo..hi],
                                scale,
                            )
                        }
                        false => garble_batch(&ac, &delta, id, gin, ein, &mut records, &mut r_sum[lo..hi]),
                    }
                    if !frames.send(records) {
                        break; // the async side failed and reports why
                    }
                }
                seeds.zeroize();
                raw.zeroize();
                (a_zero, r_sum, scale_zero)
            })
            .await?
        };
        Ok(GarblerOffline { params, first_id, delta, a_zero, r_sum, scale_zero })
    }
}

/// The server's material for one layer, used once online.
pub struct GarblerOffline {
    params: Gadget,
    first_id: u64,
    delta: Delta,
    /// Zero-labels of the server-share input wires, `k` per ReLU.
    a_zero: Vec<Label>,
    /// The server's output offsets `R` per ReLU.
    r_sum: Vec<u64>,
    /// Stochastic ReLU only: the scale bit's zero-label per ReLU, for the online `p·a` ciphertext.
    scale_zero: Vec<Label>,
}

impl Drop for GarblerOffline {
    /// With delta, the zero-labels give every input label pair; `R` unmasks the outputs.
    fn drop(&mut self) {
        self.a_zero.iter_mut().chain(&mut self.scale_zero).for_each(|l| l.0.zeroize());
        self.r_sum.zeroize();
    }
}

impl GarblerOffline {
    /// Number of ReLUs.
    pub fn len(&self) -> usize {
        self.r_sum.len()
    }

    /// Whether the layer has no ReLUs.
    pub fn is_empty(&self) -> bool {
        self.r_sum.is_empty()
    }

    /// The layer's gadget.
    pub fn params(&self) -> Gadget {
        self.params
    }

    /// Circuit id of the first ReLU (ids are unique per session).
    pub fn first_id(&self) -> u64 {
        self.first_id
    }

    /// Online phase: sends the labels of the server's shares `a` and returns the server's share of the
    /// output, `(relu(a + b) >> shift) - r mod 2^l` per ReLU (for a truncation layer,
    /// [`TruncParams::garbler_share`]). One round trip: [`Self::send_labels`], then
    /// [`GarblerPending::finish`].
    pub async fn online(self, ch: &mut Channel, a: &[u64]) -> Result<Vec<u64>, GcError> {
        self.send_labels(ch, a).await?.finish(ch).await
    }

    /// First half of the online phase: sends the labels of the server's shares `a`. Several layers
    /// may send theirs before any result is read (one round trip for all), as long as the client
    /// evaluates them all before it sends ([`Evaluated::send`]).
    pub async fn send_labels(mut self, ch: &mut Channel, a: &[u64]) -> Result<GarblerPending, GcError> {
        let n = self.len();
        if a.len() != n {
            return Err(GcError::Params(format!("{} server shares for a layer of {n} values", a.len())));
        }
        let k = self.params.garbler_bits();
        let chunk = self.params.chunk();
        let d = self.delta.as_u128();
        let mut frame = Vec::with_capacity(chunk * k * 16);
        let mut words = Vec::with_capacity(chunk);
        for &(lo, hi) in &chunk_ranges(n, chunk) {
            frame.clear();
            words.clear();
            words.extend(a[lo..hi].iter().map(|&x| self.params.garbler_word(x)));
            // Chunks hold whole groups, so the layer's batch order restricted to a chunk is the chunk's.
            for (zero, bit) in self.a_zero[lo * k..hi * k].iter().zip(input_bits(&words, k)) {
                let label = zero.0 ^ (0u128.wrapping_sub(bit as u128) & d);
                frame.extend_from_slice(&label.to_le_bytes());
            }
            ch.send(MsgKind::GarblerLabels, &frame).await?;
            if let Gadget::Stochastic(p) = self.params {
                let cts = self.online_cts(&p, lo, &a[lo..hi]);
                ch.send(MsgKind::GarblerLabels, &cts).await?;
            }
        }
        words.zeroize();
        ch.flush().await?;
        // Only truncation needs the server's input shares again to form its output share.
        let a = match self.params {
            Gadget::Relu(_) | Gadget::Stochastic(_) => Vec::new(),
            Gadget::Truncate(_) => a.to_vec(),
        };
        Ok(GarblerPending { params: self.params, r_sum: std::mem::take(&mut self.r_sum), a })
    }

    /// The stochastic ReLU's online ciphertexts for the values `lo ..` with server shares `a`
    /// (8 bytes each); adds their offsets to `R`.
    fn online_cts(&mut self, p: &StochasticParams, lo: usize, a: &[u64]) -> Vec<u8> {
        let hi = lo + a.len();
        let ids: Vec<u64> = (self.first_id + lo as u64..self.first_id + hi as u64).collect();
        let mut x: Vec<u64> = a.iter().map(|&a| p.online_value(a)).collect();
        let (mut t, mut r) = (vec![0u64; a.len()], vec![0u64; a.len()]);
        garble_online_scaled(&self.scale_zero[lo..hi], &self.delta, &ids, p.online_index(), &x, &mut t, &mut r);
        for (s, r) in self.r_sum[lo..hi].iter_mut().zip(&r) {
            *s = s.wrapping_add(*r);
        }
        x.zeroize();
        r.zeroize();
        t.iter().flat_map(|t| (t & p.mask()).to_le_bytes()).collect()
    }
}

/// A layer whose labels are sent: what the server needs to read the client's masked results.
pub struct GarblerPending {
    params: Gadget,
    r_sum: Vec<u64>,
    /// The server's input shares for a truncation layer (its output share needs them); empty for ReLU.
    a: Vec<u64>,
}

impl Drop for GarblerPending {
    fn drop(&mut self) {
        self.r_sum.zeroize();
        self.a.zeroize();
    }
}

impl GarblerPending {
    /// Second half of the online phase: reads the client's masked results and returns the server's
    /// shares.
    pub async fn finish(self, ch: &mut Channel) -> Result<Vec<u64>, GcError> {
        let (n, chunk, mask) = (self.r_sum.len(), self.params.chunk(), self.params.mask());
        let mut out = Vec::with_capacity(n);
        for &(lo, hi) in &chunk_ranges(n, chunk) {
            let masked = ch.recv_u64s(MsgKind::OnlineReluOutput, hi - lo).await?;
            let unmasked = masked.iter().zip(&self.r_sum[lo..hi]).map(|(&u, &r)| u.wrapping_sub(r) & mask);
            match self.params {
                Gadget::Relu(_) | Gadget::Stochastic(_) => out.extend(unmasked),
                Gadget::Truncate(p) => out.extend(unmasked.zip(&self.a[lo..hi]).map(|(u, &a)| p.garbler_share(a, u))),
            }
        }
        Ok(out)
    }
}

/// The client's side of a session.
pub struct EvaluatorSession {
    cot: CotReceiver,
    next_id: u64,
}

impl EvaluatorSession {
    /// Runs the base OTs with OS randomness.
    pub async fn setup(ch: &mut Channel) -> Result<Self, GcError> {
        let mut rng = ChaCha12Rng::from_os_rng();
        let cot = CotReceiver::setup(ch, &mut rng).await?;
        Ok(Self { cot, next_id: 0 })
    }

    /// Offline phase of one layer: the client's shares `b` and fresh masks `r` (one per value). The
    /// client's share of the layer's output is [`Gadget::evaluator_share`] of them.
    pub async fn offline(
        &mut self,
        ch: &mut Channel,
        params: impl Into<Gadget>,
        b: &[u64],
        r: &[u64],
    ) -> Result<EvaluatorOffline, GcError> {
        let params = params.into();
        params.validate().map_err(GcError::Params)?;
        if b.len() != r.len() {
            return Err(GcError::Params(format!("{} shares but {} masks", b.len(), r.len())));
        }
        let n = b.len();
        let header: OfflineHeader = ch.recv_msg(MsgKind::GarbledTables).await?;
        let expected = OfflineHeader { params, n: n as u64, first_id: self.next_id };
        if header != expected {
            return Err(malformed(MsgKind::GarbledTables, format!("offline header {header:?}, expected {expected:?}")));
        }
        self.next_id += n as u64;
        let k = params.evaluator_bits();
        let words: Vec<u64> = b.iter().map(|&x| params.evaluator_word(x)).collect();
        let choices: Vec<bool> = input_bits(&words, k).collect();
        let b_labels = self.cot.extend(ch, &choices).await?;

        let ac = params.arith_circuit();
        let rec = ac.record_bytes();
        let mut records = Vec::new();
        for (lo, hi) in chunk_ranges(n, params.chunk()) {
            records.push(ch.recv_exact_len(MsgKind::GarbledTables, (hi - lo) * rec).await?);
        }
        let mask = params.mask();
        Ok(EvaluatorOffline {
            params,
            first_id: header.first_id,
            ac: Arc::new(ac),
            b_labels: Arc::new(b_labels),
            records: Arc::new(records),
            r: r.iter().map(|&x| x & mask).collect(),
        })
    }
}

/// The client's material for one layer, used once online.
pub struct EvaluatorOffline {
    params: Gadget,
    first_id: u64,
    ac: Arc<ArithCircuit>,
    b_labels: Arc<Vec<Label>>,
    /// Garbled records, one frame per chunk.
    records: Arc<Vec<Vec<u8>>>,
    r: Vec<u64>,
}

impl Drop for EvaluatorOffline {
    /// The client's next-layer masks.
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

impl EvaluatorOffline {
    /// Number of ReLUs.
    pub fn len(&self) -> usize {
        self.r.len()
    }

    /// Whether the layer has no ReLUs.
    pub fn is_empty(&self) -> bool {
        self.r.is_empty()
    }

    /// The layer's gadget.
    pub fn params(&self) -> Gadget {
        self.params
    }

    /// Online phase: receives the server's labels, evaluates, sends the masked outputs. Returns the
    /// client's mask `r` (its share of a ReLU layer's output). One round trip: [`Self::evaluate`],
    /// then [`Evaluated::send`].
    pub async fn online(self, ch: &mut Channel) -> Result<Vec<u64>, GcError> {
        self.evaluate(ch).await?.send(ch).await
    }

    /// First half of the online phase: receives the server's labels and evaluates.
    pub async fn evaluate(mut self, ch: &mut Channel) -> Result<Evaluated, GcError> {
        let n = self.len();
        let (kg, ke) = (self.params.garbler_bits(), self.params.evaluator_bits());
        let mask = self.params.mask();
        let ranges = chunk_ranges(n, self.params.chunk());
        let r = Arc::new(std::mem::take(&mut self.r));
        let mut results: Vec<Vec<u8>> = Vec::with_capacity(ranges.len());
        type Task = tokio::task::JoinHandle<(Vec<u8>, Vec<Label>)>;
        let mut pending: Option<Task> = None;
        // Two label buffers take turns: the frame after next is received into the one the previous
        // evaluation hands back.
        let mut spare: Option<Vec<Label>> = None;
        for (c, &(lo, hi)) in ranges.iter().enumerate() {
            let mut gin = spare.take().unwrap_or_default();
            gin.resize((hi - lo) * kg, Label::default());
            ch.recv_exact_into(MsgKind::GarblerLabels, crate::label_bytes_mut(&mut gin)).await?;
            let online = match self.params {
                Gadget::Stochastic(p) => Some((p, ch.recv_u64s(MsgKind::GarblerLabels, hi - lo).await?)),
                _ => None,
            };
            if let Some(h) = pending.take() {
                let (out, buf) = h.await.map_err(TaskFailed::from)?;
                results.push(out);
                spare = Some(buf);
            }
            let (ac, b_labels, records, r) = (self.ac.clone(), self.b_labels.clone(), self.records.clone(), r.clone());
            let id = self.first_id + lo as u64;
            pending = Some(tokio::task::spawn_blocking(move || {
                let mut v = vec![0u64; hi - lo];
                let ein = &b_labels[lo * ke..hi * ke];
                match online {
                    Some((p, t)) => {
                        let mut scale = vec![Label::default(); hi - lo];
                        evaluate_batch_keeping_scale(&ac, id, &gin, ein, &records[c], &mut v, &mut scale);
                        let ids: Vec<u64> = (id..id + (hi - lo) as u64).collect();
                        let mut pa = vec![0u64; hi - lo];
                        evaluate_online_scaled(&scale, &ids, p.online_index(), &t, &mut pa);
                        v.iter_mut().zip(&pa).for_each(|(v, pa)| *v = v.wrapping_add(*pa));
                    }
                    None => evaluate_batch(&ac, id, &gin, ein, &records[c], &mut v),
                }
                let mut out = Vec::with_capacity(8 * (hi - lo));
                for (i, vi) in (lo..hi).zip(v) {
                    out.extend_from_slice(&(vi.wrapping_sub(r[i]) & mask).to_le_bytes());
                }
                (out, gin)
            }));
        }
        if let Some(h) = pending.take() {
            results.push(h.await.map_err(TaskFailed::from)?.0);
        }
        Ok(Evaluated { results, r: Arc::try_unwrap(r).unwrap_or_else(|r| (*r).clone()) })
    }
}

/// A layer the client has evaluated: its masked results, not yet sent.
pub struct Evaluated {
    results: Vec<Vec<u8>>,
    r: Vec<u64>,
}

impl Drop for Evaluated {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

impl Evaluated {
    /// Second half of the online phase: sends the masked results; returns the client's mask `r`.
    pub async fn send(mut self, ch: &mut Channel) -> Result<Vec<u64>, GcError> {
        for msg in &self.results {
            ch.send(MsgKind::OnlineReluOutput, msg).await?;
        }
        ch.flush().await?;
        Ok(std::mem::take(&mut self.r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pi_channel::HEADER_LEN;
    use pi_model::fixed::FixedPoint;
    use rand::Rng;

    /// Independent plaintext formula with `FixedPoint`: reconstruct, ReLU, truncate, mask.
    fn expected(p: &ReluParams, a: u64, b: u64, r: u64) -> u64 {
        let fp = FixedPoint { l: p.l, f: p.shift };
        let y = a.wrapping_add(b) & fp.mask();
        fp.truncate(fp.relu(y), p.shift).wrapping_sub(r) & fp.mask()
    }

    /// Shares of in-range activations `|y| < 2^(k-1)`, including the extremes.
    fn shares(p: &ReluParams, n: usize, rng: &mut impl Rng) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
        let fp = FixedPoint { l: p.l, f: p.shift };
        let (max, min) = (i64::MAX >> (64 - p.k), i64::MIN >> (64 - p.k));
        let mut ys = vec![0i64, 1, -1, max, min, max - 1, min + 1];
        while ys.len() < n {
            ys.push(rng.random::<i64>() >> (64 - p.k));
        }
        ys.truncate(n);
        let a: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
        let b = ys.iter().zip(&a).map(|(&y, &a)| fp.from_i64(y).wrapping_sub(a) & p.mask()).collect();
        let r = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
        (a, b, r)
    }

    /// Runs layers over a channel pair; checks results and online bytes.
    async fn run_layers(mut server: Channel, mut client: Channel, layers: Vec<(ReluParams, usize)>) {
        let mut rng = ChaCha12Rng::seed_from_u64(42);
        let data: Vec<_> = layers.iter().map(|&(p, n)| (p, shares(&p, n, &mut rng))).collect();
        let server_data: Vec<_> = data.iter().map(|(p, (a, _, _))| (*p, a.clone())).collect();
        let client_data: Vec<_> = data.iter().map(|(p, (_, b, r))| (*p, b.clone(), r.clone())).collect();
        let srv = tokio::spawn(async move {
            let mut s = GarblerSession::setup(&mut server).await.unwrap();
            let mut outs = vec![];
            for (p, a) in server_data {
                let off = s.offline(&mut server, p, a.len()).await.unwrap();
                let before = server.counters();
                let out = off.online(&mut server, &a).await.unwrap();
                outs.push((out, server.counters().since(before)));
            }
            outs
        });
        let mut c = EvaluatorSession::setup(&mut client).await.unwrap();
        let mut client_outs = vec![];
        for (p, b, r) in client_data {
            let off = c.offline(&mut client, p, &b, &r).await.unwrap();
            client_outs.push(off.online(&mut client).await.unwrap());
        }
        let server_outs = srv.await.unwrap();
        for (((p, (a, b, r)), (out, bytes)), cr) in data.iter().zip(&server_outs).zip(&client_outs) {
            let n = a.len();
            assert_eq!(cr, r, "the client's share is its mask");
            for i in 0..n {
                assert_eq!(out[i], expected(p, a[i], b[i], r[i]), "p={p:?} i={i}");
                // Shares reconstruct the truncated ReLU.
                let fp = FixedPoint { l: p.l, f: p.shift };
                assert_eq!(
                    (out[i].wrapping_add(cr[i])) & p.mask(),
                    fp.truncate(fp.relu(a[i].wrapping_add(b[i]) & p.mask()), p.shift)
                );
            }
            let frames = n.div_ceil(chunk_relus(p)) as u64;
            let k = p.k as u64;
            assert_eq!(bytes.sent, n as u64 * 16 * k + frames * HEADER_LEN as u64, "server -> client online bytes");
            assert_eq!(bytes.received, n as u64 * 8 + frames * HEADER_LEN as u64, "client -> server online bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layers_over_memory_channel() {
        let (s, c) = Channel::memory_pair();
        let layers = vec![
            (ReluParams { l: 59, k: 32, shift: 12 }, 5000), // spans several frames, ragged last group
            (ReluParams { l: 59, k: 59, shift: 12 }, 37),   // full width
            (ReluParams { l: 64, k: 64, shift: 0 }, 9),
            (ReluParams { l: 16, k: 10, shift: 3 }, 1),
            (ReluParams { l: 59, k: 20, shift: 0 }, 0),
        ];
        run_layers(s, c, layers).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layers_over_tcp_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server = accept.await.unwrap();
        let layers = vec![(ReluParams { l: 59, k: 32, shift: 12 }, 3000), (ReluParams { l: 40, k: 24, shift: 8 }, 100)];
        run_layers(Channel::new(server), Channel::new(client), layers).await;
    }

    /// A ReLU layer and an exact truncation layer garbled offline, then run online in one round
    /// trip (both label flights before either result): shares of `relu(y) >> 12` and of
    /// `floor(y / 2^12)`, exactly, for values up to the truncation's `2^(l-2)`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncation_and_relu_layers_in_one_round_trip() {
        let (mut server, mut client) = Channel::memory_pair();
        let relu = ReluParams { l: 59, k: 32, shift: 12 };
        let trunc = TruncParams { l: 59, shift: 12 };
        let fp = FixedPoint { l: 59, f: 0 };
        let mut rng = ChaCha12Rng::seed_from_u64(7);
        let (a1, b1, r1) = shares(&relu, 3000, &mut rng);
        let lim = 1i64 << 57;
        let mut ys = vec![0i64, 1, -1, 4095, 4096, -4096, -4097, lim - 1, -lim];
        ys.extend((0..5000).map(|_| rng.random::<i64>() >> 7));
        let n2 = ys.len();
        let a2: Vec<u64> = (0..n2).map(|_| rng.random::<u64>() & trunc.mask()).collect();
        let b2: Vec<u64> = ys.iter().zip(&a2).map(|(&y, &a)| fp.from_i64(y).wrapping_sub(a) & trunc.mask()).collect();
        let r2: Vec<u64> = (0..n2).map(|_| rng.random::<u64>() & trunc.mask()).collect();
        let (sa1, sa2) = (a1.clone(), a2.clone());
        let srv = tokio::spawn(async move {
            let mut s = GarblerSession::setup(&mut server).await.unwrap();
            let o1 = s.offline(&mut server, relu, sa1.len()).await.unwrap();
            let o2 = s.offline(&mut server, trunc, sa2.len()).await.unwrap();
            let before = server.counters();
            let p1 = o1.send_labels(&mut server, &sa1).await.unwrap();
            let p2 = o2.send_labels(&mut server, &sa2).await.unwrap();
            let sent = server.counters().since(before);
            (p1.finish(&mut server).await.unwrap(), p2.finish(&mut server).await.unwrap(), sent)
        });
        let mut c = EvaluatorSession::setup(&mut client).await.unwrap();
        let e1 = c.offline(&mut client, relu, &b1, &r1).await.unwrap();
        let e2 = c.offline(&mut client, Gadget::Truncate(trunc), &b2, &r2).await.unwrap();
        let (v1, v2) = (e1.evaluate(&mut client).await.unwrap(), e2.evaluate(&mut client).await.unwrap());
        assert_eq!(v1.send(&mut client).await.unwrap(), r1);
        assert_eq!(v2.send(&mut client).await.unwrap(), r2);
        let (o1, o2, sent) = srv.await.unwrap();
        for i in 0..a1.len() {
            assert_eq!(o1[i], expected(&relu, a1[i], b1[i], r1[i]));
        }
        let g = Gadget::Truncate(trunc);
        for i in 0..n2 {
            let t = o2[i].wrapping_add(g.evaluator_share(b2[i], r2[i])) & trunc.mask();
            assert_eq!(t, fp.truncate(fp.from_i64(ys[i]), 12), "y={}", ys[i]);
        }
        let labels = |g: Gadget, n: usize| (n * 16 * g.garbler_bits() + n.div_ceil(g.chunk()) * HEADER_LEN) as u64;
        assert_eq!(sent.sent, labels(relu.into(), a1.len()) + labels(g, n2));
        assert_eq!(g.bytes_per_value(), (13 * 32 + 16 + 13 * 16, 13 * 16 + 8));
    }

    /// A stochastic-sign layer over a channel, several frames: the server's and client's shares
    /// reconstruct the plaintext gadget's value ([`crate::stochastic::stochastic_plain`], itself
    /// tested against `relu`), and online the server sends `m` labels and 8 bytes per ReLU.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stochastic_layer_over_memory_channel() {
        let (mut server, mut client) = Channel::memory_pair();
        let p = StochasticParams { l: 59, k: 24, sign_bits: 14 };
        let g = Gadget::Stochastic(p);
        let n = 2 * g.chunk() + 5;
        let mut rng = ChaCha12Rng::seed_from_u64(9);
        let fp = FixedPoint { l: p.l, f: 0 };
        let ys: Vec<i64> =
            (0..n).map(|i| if i % 3 == 0 { i as i64 % 5000 } else { rng.random::<i64>() >> 42 }).collect();
        let a: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
        let b: Vec<u64> = ys.iter().zip(&a).map(|(&y, &a)| fp.from_i64(y).wrapping_sub(a) & p.mask()).collect();
        let r: Vec<u64> = (0..n).map(|_| rng.random::<u64>() & p.mask()).collect();
        let sa = a.clone();
        let srv = tokio::spawn(async move {
            let mut s = GarblerSession::setup(&mut server).await.unwrap();
            let off = s.offline(&mut server, p, sa.len()).await.unwrap();
            let before = server.counters();
            let out = off.online(&mut server, &sa).await.unwrap();
            (out, server.counters().since(before))
        });
        let mut c = EvaluatorSession::setup(&mut client).await.unwrap();
        let off = c.offline(&mut client, p, &b, &r).await.unwrap();
        assert_eq!(off.online(&mut client).await.unwrap(), r);
        let (out, bytes) = srv.await.unwrap();
        let mut zeroed = 0;
        for i in 0..n {
            let got = out[i].wrapping_add(r[i]) & p.mask();
            assert_eq!(got, crate::stochastic::stochastic_plain(&p, a[i], b[i]), "i={i} y={}", ys[i]);
            let y = fp.to_i64(got);
            assert!(y == ys[i].max(0) || (y == 0 && (0..1 << 10).contains(&ys[i])), "y={} got {y}", ys[i]);
            zeroed += (y != ys[i].max(0)) as usize;
        }
        assert!(zeroed > 0, "some small positives hit the dead zone");
        let frames = n.div_ceil(g.chunk()) as u64;
        assert_eq!(bytes.sent, n as u64 * (16 * 14 + 8) + 2 * frames * HEADER_LEN as u64);
        assert_eq!(g.bytes_per_value(), (32 * 14 + 24 * 25 + 16 * 24, 16 * 14 + 16));
    }

    #[tokio::test]
    async fn mismatches_are_clean_errors() {
        let (mut server, mut client) = Channel::memory_pair();
        let p = ReluParams { l: 59, k: 32, shift: 12 };
        let srv = tokio::spawn(async move {
            let mut s = GarblerSession::setup(&mut server).await.unwrap();
            let _ = s.offline(&mut server, p, 10).await;
        });
        let mut c = EvaluatorSession::setup(&mut client).await.unwrap();
        // The client expects 11 ReLUs: the header check refuses.
        let e = c.offline(&mut client, p, &[0; 11], &[0; 11]).await;
        assert!(matches!(e, Err(GcError::Channel(pi_channel::ChannelError::Malformed { .. }))));
        drop(client);
        srv.await.unwrap();

        // Bad parameters and lengths are refused before anything is sent; a wrong online length too.
        assert!(ReluParams { l: 59, k: 13, shift: 12 }.validate().is_err());
        assert!(ReluParams { l: 30, k: 31, shift: 0 }.validate().is_err());
        let (mut server, mut client) = Channel::memory_pair();
        let srv = tokio::spawn(async move {
            let mut s = GarblerSession::setup(&mut server).await.unwrap();
            let bad = s.offline(&mut server, ReluParams { l: 59, k: 12, shift: 12 }, 4).await;
            assert!(matches!(bad, Err(GcError::Params(_))));
            let off = s.offline(&mut server, p, 4).await.unwrap();
            let e = off.online(&mut server, &[1, 2, 3]).await;
            assert!(matches!(e, Err(GcError::Params(_))));
        });
        let mut c = EvaluatorSession::setup(&mut client).await.unwrap();
        assert!(matches!(c.offline(&mut client, p, &[0; 4], &[0; 3]).await, Err(GcError::Params(_))));
        let _off = c.offline(&mut client, p, &[0; 4], &[0; 4]).await.unwrap();
        srv.await.unwrap();
    }
}
