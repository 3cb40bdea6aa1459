//! The client party: checks the server's greeting, sets up keys and base OTs, and runs inferences:
//! offline it derives all its shares (HE replies, fresh ReLU masks, local steps), online it sends its
//! masked input, evaluates the garbled ReLU layers and reconstructs the logits. Every public method
//! tells the server why it failed, once ([`crate::tell_peer`]).

use crate::error::told;
use crate::plan::{Plan, StepGc, StepKind};
use crate::public::PublicModel;
use crate::share::{Role, truncate_share};
use crate::{Hello, HelloAck, InferenceError, Request};
use pi_channel::{Channel, Counters, MsgKind, PROTOCOL_VERSION};
use pi_gc::Gadget;
use pi_gc::relu_layer::{EvaluatorOffline, EvaluatorSession};
use pi_he::{HeClient, HeParams};
use pi_model::fixed::FixedPoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// The result and the costs of one private inference, as the client measured them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InferenceResult {
    /// Logits as ring elements (at the output's fixed-point scale).
    pub logits_ring: Vec<u64>,
    /// Decoded logits.
    pub logits: Vec<f32>,
    pub offline: Duration,
    pub online: Duration,
    /// Of `offline` and `online`: time the client spent blocked on the channel (waiting for the
    /// server's answers or for bytes to cross); the rest is its own computation.
    pub offline_io: Duration,
    pub online_io: Duration,
    pub offline_bytes: Counters,
    pub online_bytes: Counters,
    /// Online round trips: one per layer with surviving ReLUs, plus input/logits.
    pub online_rounds: usize,
    /// Garbled ReLUs evaluated.
    pub relus: usize,
    /// Values truncated exactly by garbled circuits (0 with local truncation).
    pub truncations: usize,
    /// Cost per layer (conv/linear and ReLU nodes): linearized ReLUs show zero bytes and no round.
    pub layers: Vec<LayerCost>,
}

/// What one conv/linear or ReLU node cost in this inference, measured on the client's channel.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerCost {
    pub node: String,
    pub kind: &'static str,
    /// ReLU nodes: activation elements, and how many are real ReLUs (garbled); 0 for linear nodes.
    pub relus_total: usize,
    pub relus_kept: usize,
    /// Values of this node truncated exactly (linearized neurons and rescaled outputs; 0 with
    /// local truncation).
    pub truncations: usize,
    pub offline_bytes: u64,
    /// Wall time of the node's offline step, and the part of it spent blocked on the channel.
    pub offline_s: f64,
    pub offline_io_s: f64,
    pub online_bytes: u64,
    /// Wall time of the node's online step (ReLU nodes: from the end of the previous garbled layer,
    /// so it includes waiting for the server's linear layers), and the part spent on the channel.
    pub online_s: f64,
    pub online_io_s: f64,
    /// Whether the node costs an online round trip.
    pub online_round: bool,
}

/// The client side of a connected, set-up session.
pub struct ClientSession {
    public: PublicModel,
    plan: Plan,
    he: HeClient,
    gc: EvaluatorSession,
    rng: ChaCha20Rng,
    /// Inferences the server still allows in this session.
    remaining: u64,
}

/// One inference's offline material and what producing it cost; consumed by the online phase.
pub struct Prepared {
    offline: Offline,
    time: Duration,
    io: Duration,
    bytes: Counters,
}

/// The client's offline material for one inference.
struct Offline {
    layers: Vec<LayerCost>,
    input_mask: Vec<u64>,
    logits_share: Vec<u64>,
    gc: Vec<StepGc<EvaluatorOffline>>,
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.input_mask.zeroize();
    }
}

impl ClientSession {
    /// Reads the greeting, checks version and (when given) the expected model hash, then sets up keys.
    pub async fn handshake(ch: &mut Channel, expected_hash: Option<&str>) -> Result<Self, InferenceError> {
        let r = Self::handshake_inner(ch, expected_hash).await;
        told(ch, r).await
    }

    async fn handshake_inner(ch: &mut Channel, expected_hash: Option<&str>) -> Result<Self, InferenceError> {
        let hello: Hello = ch.recv_msg(MsgKind::Hello).await?;
        if hello.version != PROTOCOL_VERSION {
            return Err(InferenceError::Version { server: hello.version, client: PROTOCOL_VERSION });
        }
        let public = hello.model;
        if let Some(h) = expected_hash
            && h != public.hash
        {
            return Err(InferenceError::HashMismatch { served: public.hash.clone(), expected: h.to_string() });
        }
        let plan = Plan::compile(&public)?;
        ch.send_msg(MsgKind::HelloAck, &HelloAck { hash: public.hash.clone() }).await?;
        let he = HeClient::from_os_rng(HeParams::new(public.fp.l)?)?;
        he.setup(ch).await?;
        let gc = EvaluatorSession::setup(ch).await?;
        Ok(Self { public, plan, he, gc, rng: ChaCha20Rng::from_os_rng(), remaining: hello.session_inferences })
    }

    /// The model the server announced.
    pub fn public(&self) -> &PublicModel {
        &self.public
    }

    /// Inferences this session may still run (the server announced its limit); at 0, open a new
    /// session.
    pub fn remaining_inferences(&self) -> u64 {
        self.remaining
    }

    /// One private inference on an image (already normalised, `C x H x W`): offline then online.
    /// An image of the wrong size is refused before any work, and the session stays usable.
    pub async fn infer(&mut self, ch: &mut Channel, x: &[f32]) -> Result<InferenceResult, InferenceError> {
        self.check_input(x)?;
        let prepared = self.prepare(ch).await?;
        self.run_online(ch, prepared, x).await
    }

    /// The offline phase of one inference, ahead of knowing the input.
    pub async fn prepare(&mut self, ch: &mut Channel) -> Result<Prepared, InferenceError> {
        let r = self.prepare_inner(ch).await;
        told(ch, r).await
    }

    async fn prepare_inner(&mut self, ch: &mut Channel) -> Result<Prepared, InferenceError> {
        ch.send_msg(MsgKind::Begin, &Request::Infer).await?;
        self.remaining = self.remaining.saturating_sub(1);
        let (c0, io0) = (ch.counters(), ch.io_time());
        let t0 = Instant::now();
        let offline = self.offline(ch).await?;
        Ok(Prepared { offline, time: t0.elapsed(), io: ch.io_time() - io0, bytes: ch.counters().since(c0) })
    }

    /// The online phase on prepared material (consumed: offline material is never reused).
    pub async fn run_online(
        &mut self,
        ch: &mut Channel,
        prepared: Prepared,
        x: &[f32],
    ) -> Result<InferenceResult, InferenceError> {
        let r = self.run_online_inner(ch, prepared, x).await;
        told(ch, r).await
    }

    async fn run_online_inner(
        &mut self,
        ch: &mut Channel,
        prepared: Prepared,
        x: &[f32],
    ) -> Result<InferenceResult, InferenceError> {
        self.check_input(x)?;
        let (c1, io1) = (ch.counters(), ch.io_time());
        let t1 = Instant::now();
        let (logits_ring, online_rounds, (relus, truncations), layers) = self.online(ch, x, prepared.offline).await?;
        let online_time = t1.elapsed();
        let logits = logits_ring.iter().map(|&v| self.public.fp.decode_with(v, self.plan.output_frac)).collect();
        Ok(InferenceResult {
            logits_ring,
            logits,
            offline: prepared.time,
            online: online_time,
            offline_io: prepared.io,
            online_io: ch.io_time() - io1,
            offline_bytes: prepared.bytes,
            online_bytes: ch.counters().since(c1),
            online_rounds,
            relus,
            truncations,
            layers,
        })
    }

    fn check_input(&self, x: &[f32]) -> Result<(), InferenceError> {
        let want = self.plan.input_len;
        if x.len() != want {
            return Err(InferenceError::Input(format!("image has {} values, the model expects {want}", x.len())));
        }
        Ok(())
    }

    /// Ends the session politely.
    pub async fn close(self, ch: &mut Channel) -> Result<(), InferenceError> {
        ch.send_msg(MsgKind::Begin, &Request::Bye).await?;
        Ok(())
    }

    async fn offline(&mut self, ch: &mut Channel) -> Result<Offline, InferenceError> {
        let plan = &self.plan;
        let fp = plan.fp;
        let input_mask: Vec<u64> = (0..plan.input_len).map(|_| fp.reduce(self.rng.random())).collect();
        let mut gc: Vec<StepGc<EvaluatorOffline>> = (0..plan.steps.len()).map(|_| StepGc::default()).collect();
        let mut outs: Vec<Vec<u64>> = Vec::with_capacity(plan.steps.len());
        let mut layers = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let (c0, t0, io0) = (ch.counters(), Instant::now(), ch.io_time());
            let out = match &step.kind {
                StepKind::Linear { shape } => {
                    let r = plan.arg(&outs, &input_mask, step.inputs[0]).to_vec();
                    self.he.linear(ch, shape, &r).await?
                }
                StepKind::Relu { shift, kept, gc: params, gc_input_shift, linearized, .. } => {
                    let x = plan.arg(&outs, &input_mask, step.inputs[0]);
                    let mut y: Vec<u64> = x.iter().map(|&v| truncate_share(&fp, Role::Client, v, *shift)).collect();
                    if let Some(params) = params {
                        let b = kept.gather_shifted(&fp, x, *gc_input_shift);
                        let (off, shares) = garbled_layer(&mut self.gc, &mut self.rng, &fp, ch, *params, &b).await?;
                        gc[i].relu = Some(off);
                        kept.scatter(&mut y, shares);
                    }
                    if let Some((positions, t)) = linearized {
                        let b = positions.gather(x);
                        let (off, shares) = garbled_layer(&mut self.gc, &mut self.rng, &fp, ch, *t, &b).await?;
                        gc[i].linearized = Some(off);
                        positions.scatter(&mut y, shares);
                    }
                    y
                }
                StepKind::Local(op) => {
                    let args: Vec<&[u64]> = step.inputs.iter().map(|&s| plan.arg(&outs, &input_mask, s)).collect();
                    plan.local(*op, &args)
                }
            };
            let out = match step.exact_after {
                Some(t) => {
                    let (off, shares) = garbled_layer(&mut self.gc, &mut self.rng, &fp, ch, t, &out).await?;
                    gc[i].after = Some(off);
                    shares
                }
                None => plan.finish(i, Role::Client, out),
            };
            let (relus_total, relus_kept, kind) = match &step.kind {
                StepKind::Linear { .. } => (0, 0, step.op_kind),
                StepKind::Relu { kept, total, .. } => (*total, kept.len(), "relu"),
                StepKind::Local(_) if step.exact_after.is_some() => (0, 0, step.op_kind),
                StepKind::Local(_) => (0, 0, ""),
            };
            let truncations = match &step.kind {
                StepKind::Relu { linearized: Some((positions, _)), .. } => positions.len(),
                _ => 0,
            } + step.exact_after.map_or(0, |_| step.out_len);
            if !kind.is_empty() {
                layers.push(LayerCost {
                    node: step.name.clone(),
                    kind,
                    relus_total,
                    relus_kept,
                    truncations,
                    offline_bytes: ch.counters().since(c0).total(),
                    offline_s: t0.elapsed().as_secs_f64(),
                    offline_io_s: (ch.io_time() - io0).as_secs_f64(),
                    ..Default::default()
                });
            }
            outs.push(out);
        }
        let logits_share = outs.pop().unwrap_or_default();
        Ok(Offline { layers, input_mask, logits_share, gc })
    }

    async fn online(
        &mut self,
        ch: &mut Channel,
        x: &[f32],
        mut offline: Offline,
    ) -> Result<(Vec<u64>, usize, (usize, usize), Vec<LayerCost>), InferenceError> {
        let fp = self.plan.fp;
        let masked: Vec<u64> =
            x.iter().zip(&offline.input_mask).map(|(&v, &r)| fp.reduce(fp.encode(v).wrapping_sub(r))).collect();
        ch.send_u64s(MsgKind::OnlineInput, &masked).await?;
        let (mut rounds, mut relus, mut truncations) = (1, 0, 0);
        let mut layers = std::mem::take(&mut offline.layers);
        for (i, g) in offline.gc.iter_mut().enumerate() {
            let (relu, lin, after) = (g.relu.take(), g.linearized.take(), g.after.take());
            if relu.is_none() && lin.is_none() && after.is_none() {
                continue;
            }
            let (c0, t0, io0) = (ch.counters(), Instant::now(), ch.io_time());
            relus += relu.as_ref().map_or(0, |e| e.len());
            truncations += lin.as_ref().map_or(0, |e| e.len()) + after.as_ref().map_or(0, |e| e.len());
            // The server sends both layers' labels before it reads: evaluate both, then send both.
            if relu.is_some() || lin.is_some() {
                rounds += 1;
                let relu = match relu {
                    Some(e) => Some(e.evaluate(ch).await?),
                    None => None,
                };
                let lin = match lin {
                    Some(e) => Some(e.evaluate(ch).await?),
                    None => None,
                };
                for e in relu.into_iter().chain(lin) {
                    e.send(ch).await?;
                }
            }
            if let Some(e) = after {
                rounds += 1;
                e.online(ch).await?;
            }
            if let Some(l) = layers.iter_mut().find(|l| l.node == self.plan.steps[i].name) {
                l.online_bytes = ch.counters().since(c0).total();
                l.online_s = t0.elapsed().as_secs_f64();
                l.online_io_s = (ch.io_time() - io0).as_secs_f64();
                l.online_round = true;
            }
        }
        let server_share = ch.recv_u64s(MsgKind::OnlineLogits, offline.logits_share.len()).await?;
        let logits =
            server_share.iter().zip(&offline.logits_share).map(|(&v, &s)| fp.reduce(v.wrapping_add(s))).collect();
        Ok((logits, rounds, (relus, truncations), layers))
    }
}

/// The offline half of one garbled layer on the client's shares `b`: fresh masks from `rng`, the
/// garbled material, and the client's shares of the layer's output.
async fn garbled_layer(
    gc: &mut EvaluatorSession,
    rng: &mut ChaCha20Rng,
    fp: &FixedPoint,
    ch: &mut Channel,
    gadget: impl Into<Gadget>,
    b: &[u64],
) -> Result<(EvaluatorOffline, Vec<u64>), pi_gc::GcError> {
    let gadget = gadget.into();
    let r: Vec<u64> = (0..b.len()).map(|_| fp.reduce(rng.random())).collect();
    let off = gc.offline(ch, gadget, b, &r).await?;
    let shares = b.iter().zip(&r).map(|(&b, &r)| gadget.evaluator_share(b, r)).collect();
    Ok((off, shares))
}
