//! The two-party offline exchange for one linear layer over a [`Channel`]:
//!
//! 1. once per session the client sends its parameters and a public key (`HeKeys`);
//! 2. per layer the client sends a header and its encrypted, packed mask `r` (`HeQuery`);
//! 3. the server multiplies by its packed weights, re-randomises, floods, subtracts a fresh random share
//!    `s`, switches down and replies (`HeReply`);
//! 4. the client decrypts `L(r) - s`; the server keeps `s`. The two shares add up to `L(r)` mod `2^l`.
//!
//! Heavy work runs on rayon inside `tokio::task::spawn_blocking`, never on the async threads. Each
//! direction streams: the client sends its queries batch by batch as it encrypts them, the server
//! sends its replies group by group as it computes them, and the client decrypts each batch of
//! replies while the next arrives, so that both parties' work overlaps the transfer.

use super::HeError;
use super::engine::{self, LevelZeroCt};
use super::kernel::{EncodedLayer, KernelCache, KernelEncoder};
use super::layer::{LayerShape, ring_mask};
use super::pack::{Plan, WireCost};
use super::params::{HeContext, HeParams};
use super::secret::ClientKey;
use pi_channel::pipeline::{self, Frames};
use pi_channel::{Channel, MsgKind, TaskFailed};
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ciphertexts are grouped into frames of at most this many bytes.
const FRAME_BYTES: usize = 8 << 20;

/// A layer's queries (or reply groups) are computed and sent in about this many batches: enough
/// that the transfer of one overlaps the work on the next, few enough that each keeps every core
/// busy.
const BATCHES: usize = 8;

/// Consecutive batches of `0..n` for [`BATCHES`]-way streaming, each at least `min` long.
fn batches(n: usize, min: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = n.div_ceil(BATCHES).max(min).max(1);
    (0..n.div_ceil(size)).map(move |b| b * size..((b + 1) * size).min(n))
}

/// Hands ciphertexts to the sending side in frames of at most [`FRAME_BYTES`] (the last one short, so
/// that the peer gets the batch now). `false` if the sending side has given up.
fn send_frames(frames: &Frames, cts: impl IntoIterator<Item = Vec<u8>>) -> bool {
    let mut frame = frames.buffer();
    for ct in cts {
        if !frame.is_empty()
            && frame.len() + ct.len() > FRAME_BYTES
            && !frames.send(std::mem::replace(&mut frame, frames.buffer()))
        {
            return false;
        }
        frame.extend_from_slice(&ct);
    }
    frame.is_empty() || frames.send(frame)
}

/// Per-layer header the client sends before its query, so that a mismatch between the parties'
/// layer sequences is a clean error rather than garbage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LayerHeader {
    shape: LayerShape,
    queries: u64,
}

/// Where the client's time went for one layer.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ClientTimings {
    /// Packing and encrypting the mask.
    pub encrypt: Duration,
    /// Decrypting the replies and extracting the share.
    pub decrypt: Duration,
}

/// Where the server's time went for one layer.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ServerTimings {
    /// Parsing the queries, products, re-randomisation, flooding, switching and serialising.
    pub compute: Duration,
    /// Bits by which the flooding noise exceeds the worst-case product noise.
    pub flood_margin_bits: u32,
}

pub(crate) fn plan_for(ctx: &HeContext, shape: &LayerShape) -> Result<Plan, HeError> {
    shape.validate()?;
    let cost = WireCost {
        query: ctx.query_bytes(),
        reply_fixed: ctx.reply_fixed_bytes(),
        reply_coeff_bits: ctx.reply_coeff_bits(),
    };
    Plan::choose(shape.canonical(), ctx.degree(), cost)
        .ok_or_else(|| HeError::Shape(format!("{shape:?}: a kernel block does not fit in N = {}", ctx.degree())))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, HeError> + Send + 'static) -> Result<T, HeError> {
    pi_channel::blocking(f).await?
}

/// Receives frames of `kind` until exactly `total` bytes arrived.
async fn recv_exact(ch: &mut Channel, kind: MsgKind, total: usize) -> Result<Vec<u8>, HeError> {
    let mut buf = Vec::with_capacity(total);
    while buf.len() < total {
        buf.extend_from_slice(&recv_within(ch, kind, buf.len(), total).await?);
    }
    Ok(buf)
}

/// Receives the next frame of `kind` of a stream of `total` bytes of which `received` arrived:
/// a frame that is empty or runs past `total` is malformed.
async fn recv_within(ch: &mut Channel, kind: MsgKind, received: usize, total: usize) -> Result<Vec<u8>, HeError> {
    let frame = ch.recv(kind).await?;
    if frame.is_empty() || received + frame.len() > total {
        return Err(HeError::Malformed(format!(
            "{kind:?} frame of {} bytes after {received} of {total} expected bytes",
            frame.len()
        )));
    }
    Ok(frame)
}

/// The client's side: owns the secret key; obtains `L(r) - s` for its masks `r`.
pub struct HeClient {
    ctx: Arc<HeContext>,
    key: Arc<ClientKey>,
    public_key: Vec<u8>,
}

impl HeClient {
    /// Creates a fresh secret key and the public key used by the server for re-randomisation.
    pub fn new<R: RngCore + CryptoRng>(params: HeParams, rng: &mut R) -> Result<Self, HeError> {
        let ctx = params.context()?;
        let key = ClientKey::random(&ctx, rng)?;
        // The public key for re-randomisation: a seeded encryption of zero.
        let public_key = key.encrypt(&ctx, &[], rng)?;
        Ok(Self { ctx, key: Arc::new(key), public_key })
    }

    /// [`HeClient::new`] with a ChaCha20 generator seeded from the operating system.
    pub fn from_os_rng(params: HeParams) -> Result<Self, HeError> {
        Self::new(params, &mut ChaCha20Rng::from_os_rng())
    }

    /// The parameters in use.
    pub fn params(&self) -> &HeParams {
        &self.ctx.params
    }

    /// Sends the parameters and the public key (once per session).
    pub async fn setup(&self, ch: &mut Channel) -> Result<(), HeError> {
        ch.send_msg(MsgKind::HeKeys, &self.ctx.params).await?;
        ch.send_now(MsgKind::HeKeys, &self.public_key).await?;
        Ok(())
    }

    /// Runs one layer: returns the client's share of `L(r)` (layout of [`LayerShape`]).
    pub async fn linear(&self, ch: &mut Channel, shape: &LayerShape, r: &[u64]) -> Result<Vec<u64>, HeError> {
        self.linear_timed(ch, shape, r).await.map(|(share, _)| share)
    }

    /// [`HeClient::linear`] with the time spent encrypting and decrypting.
    pub async fn linear_timed(
        &self,
        ch: &mut Channel,
        shape: &LayerShape,
        r: &[u64],
    ) -> Result<(Vec<u64>, ClientTimings), HeError> {
        let plan = plan_for(&self.ctx, shape)?;
        if r.len() != shape.input_len() {
            return Err(HeError::Shape(format!("mask of {} elements, layer takes {}", r.len(), shape.input_len())));
        }
        let mut timings = ClientTimings::default();
        let (ctx, key, shape_c) = (self.ctx.clone(), self.key.clone(), *shape);
        let mask = ring_mask(ctx.l());
        let r: Vec<u64> = r.iter().map(|&x| x & mask).collect();
        ch.send_msg(MsgKind::HeQuery, &LayerHeader { shape: *shape, queries: plan.n_queries() as u64 }).await?;
        // Queries: encrypted batch by batch on the blocking pool, each batch sent while the next is
        // encrypted.
        let min = rayon::current_num_threads();
        timings.encrypt = pipeline::stream::<_, HeError, _>(ch, MsgKind::HeQuery, move |frames| {
            let start = Instant::now();
            let t = shape_c.canonical_input(&r);
            let mut busy = start.elapsed();
            for range in batches(plan.n_queries(), min) {
                let start = Instant::now();
                let cts = engine::client_queries(&ctx, &key, &plan, &t, range)?;
                busy += start.elapsed();
                if !send_frames(frames, cts) {
                    break; // the async side failed and reports why
                }
            }
            Ok::<_, HeError>(busy)
        })
        .await??;

        // Replies: each batch of complete replies is decrypted on the blocking pool while the next
        // frames arrive.
        let sizes: Vec<usize> = (0..plan.n_replies())
            .map(|i| self.ctx.reply_bytes(plan.outputs(i / plan.tiles(), i % plan.tiles()).len()))
            .collect();
        let total: usize = sizes.iter().sum();
        let mut share = vec![0u64; plan.cn.m * plan.cn.ho * plan.cn.wo];
        type Task = tokio::task::JoinHandle<Result<(Vec<(usize, u64)>, Duration), HeError>>;
        let mut pending: Option<Task> = None;
        let mut merge = |part: Vec<(usize, u64)>, busy: Duration| {
            for (idx, v) in part {
                share[idx] = v;
            }
            timings.decrypt += busy;
        };
        let (mut buf, mut received, mut next) = (Vec::new(), 0usize, 0usize);
        while received < total {
            let frame = recv_within(ch, MsgKind::HeReply, received, total).await?;
            received += frame.len();
            buf.extend_from_slice(&frame);
            let (mut end, mut len) = (next, 0);
            while end < sizes.len() && len + sizes[end] <= buf.len() {
                len += sizes[end];
                end += 1;
            }
            if end == next {
                continue;
            }
            let rest = buf.split_off(len);
            let batch = std::mem::replace(&mut buf, rest);
            if let Some(h) = pending.take() {
                let (part, busy) = h.await.map_err(TaskFailed::from)??;
                merge(part, busy);
            }
            let (ctx, key, lens, first) = (self.ctx.clone(), self.key.clone(), sizes[next..end].to_vec(), next);
            pending = Some(tokio::task::spawn_blocking(move || {
                let start = Instant::now();
                let mut parts = Vec::with_capacity(lens.len());
                let mut pos = 0;
                for len in lens {
                    parts.push(&batch[pos..pos + len]);
                    pos += len;
                }
                let part = engine::client_decrypt(&ctx, &key, &plan, first, &parts)?;
                Ok((part, start.elapsed()))
            }));
            next = end;
        }
        if let Some(h) = pending.take() {
            let (part, busy) = h.await.map_err(TaskFailed::from)??;
            merge(part, busy);
        }
        Ok((share, timings))
    }
}

/// The server's side: holds the client's public key; contributes its weights and a random share.
pub struct HeServer {
    ctx: Arc<HeContext>,
    public_key: Arc<LevelZeroCt>,
}

impl HeServer {
    /// Receives the client's parameters (which must equal the encoder's) and public key. The
    /// session shares the encoder's context (NTT tables for every level, tens of MB) instead of
    /// building its own.
    pub async fn setup(ch: &mut Channel, encoder: &super::kernel::KernelEncoder) -> Result<Self, HeError> {
        let expected = &encoder.ctx.params;
        let params: HeParams = ch.recv_msg(MsgKind::HeKeys).await?;
        if &params != expected {
            return Err(HeError::Params(format!(
                "client proposes HE parameters {params:?}, server expects {expected:?}"
            )));
        }
        let ctx = encoder.ctx.clone();
        let bytes = ch.recv(MsgKind::HeKeys).await?;
        let ctx_c = ctx.clone();
        let public_key = blocking(move || engine::parse_seeded(&ctx_c, &bytes)).await?;
        Ok(Self { ctx, public_key: Arc::new(public_key) })
    }

    /// The parameters in use.
    pub fn params(&self) -> &HeParams {
        &self.ctx.params
    }

    /// Runs one layer with the server's weights (ring elements, layout of [`LayerShape`]); returns
    /// the server's share, uniformly random, such that client share + server share = `L(r)` mod `2^l`.
    /// Encodes the weights for this call; a server that serves a model many times encodes each layer
    /// once ([`KernelEncoder`]) and calls [`HeServer::linear_encoded`].
    pub async fn linear(&self, ch: &mut Channel, shape: &LayerShape, weights: &[u64]) -> Result<Vec<u64>, HeError> {
        self.linear_timed(ch, shape, weights).await.map(|(share, _)| share)
    }

    /// [`HeServer::linear`] with the compute time.
    pub async fn linear_timed(
        &self,
        ch: &mut Channel,
        shape: &LayerShape,
        weights: &[u64],
    ) -> Result<(Vec<u64>, ServerTimings), HeError> {
        // On failure the detail (it may describe the weights) stays in the server's error: the
        // session boundary tells the peer only that something internal failed.
        let layer = KernelEncoder { ctx: self.ctx.clone() }.encode(shape, weights, KernelCache::OnTheFly)?;
        self.linear_encoded(ch, &Arc::new(layer)).await
    }

    /// Runs one layer whose weights were encoded beforehand; returns the server's share and the
    /// compute time.
    pub async fn linear_encoded(
        &self,
        ch: &mut Channel,
        layer: &Arc<EncodedLayer>,
    ) -> Result<(Vec<u64>, ServerTimings), HeError> {
        if layer.params() != self.params() {
            return Err(HeError::Params(format!(
                "layer encoded for {:?}, session uses {:?}",
                layer.params(),
                self.params()
            )));
        }
        let (plan, margin) = (layer.plan, layer.margin);
        let header: LayerHeader = ch.recv_msg(MsgKind::HeQuery).await?;
        let expected = LayerHeader { shape: layer.shape, queries: plan.n_queries() as u64 };
        if header != expected {
            return Err(HeError::Malformed(format!("client runs {header:?}, server expects {expected:?}")));
        }
        let qlen = self.ctx.query_bytes();
        let buf = recv_exact(ch, MsgKind::HeQuery, plan.n_queries() * qlen).await?;
        let (ctx, pk, layer) = (self.ctx.clone(), self.public_key.clone(), layer.clone());
        // Replies: computed a batch of output groups at a time on the blocking pool, each batch sent
        // while the next is computed. A batch holds enough replies to keep every core busy.
        let min = rayon::current_num_threads().div_ceil(plan.tiles()).max(1);
        let (share, compute) = pipeline::stream::<_, HeError, _>(ch, MsgKind::HeReply, move |frames| {
            use rayon::prelude::*;
            let start = Instant::now();
            let queries = buf.par_chunks(qlen).map(|b| engine::parse_seeded(&ctx, b)).collect::<Result<Vec<_>, _>>()?;
            drop(buf);
            let mut busy = start.elapsed();
            let mut share = vec![0u64; plan.cn.m * plan.cn.ho * plan.cn.wo];
            for groups in batches(plan.n_g, min) {
                let start = Instant::now();
                let replies = engine::server_replies(&layer, &queries, &pk, groups)?;
                let mut cts = Vec::with_capacity(replies.len());
                for (ct, part) in replies {
                    for (idx, v) in part {
                        share[idx] = v;
                    }
                    cts.push(ct);
                }
                busy += start.elapsed();
                if !send_frames(frames, cts) {
                    break; // the async side failed and reports why
                }
            }
            Ok::<_, HeError>((share, busy))
        })
        .await??;
        Ok((share, ServerTimings { compute, flood_margin_bits: margin }))
    }
}
