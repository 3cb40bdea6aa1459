//! The client party: checks the server's greeting, sets up keys and base OTs, and runs inferences:
//! offline it derives all its shares (HE replies, fresh ReLU masks, local steps), online it sends its
//! masked input, evaluates the garbled ReLU layers and reconstructs the logits.

use super::{Hello, HelloAck, InferenceError, Request, Walk, finish_node, local_node, relu_params, relu_shift};
use crate::channel::{Channel, Counters, MsgKind, PROTOCOL_VERSION};
use crate::he::{HeClient, HeParams};
use crate::public::PublicModel;
use crate::relu_layer::{EvaluatorOffline, EvaluatorSession};
use crate::share::{Role, truncate_share};
use pi_model::graph::Op;
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
    pub offline_bytes: Counters,
    pub online_bytes: Counters,
    /// Online round trips: one per layer with surviving ReLUs, plus input/logits.
    pub online_rounds: usize,
    /// Garbled ReLUs evaluated.
    pub relus: usize,
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
    pub offline_bytes: u64,
    pub offline_s: f64,
    pub online_bytes: u64,
    pub online_s: f64,
    /// Whether the node costs an online round trip.
    pub online_round: bool,
}

/// The client side of a connected, set-up session.
pub struct ClientSession {
    public: PublicModel,
    walk: Walk,
    he: HeClient,
    gc: EvaluatorSession,
    rng: ChaCha20Rng,
}

/// One inference's offline material and what producing it cost; consumed by the online phase.
pub struct Prepared {
    offline: Offline,
    time: Duration,
    bytes: Counters,
}

/// The client's offline material for one inference.
struct Offline {
    layers: Vec<LayerCost>,
    input_mask: Vec<u64>,
    logits_share: Vec<u64>,
    gc: Vec<Option<EvaluatorOffline>>,
}

impl Drop for Offline {
    fn drop(&mut self) {
        self.input_mask.zeroize();
    }
}

impl ClientSession {
    /// Reads the greeting, checks version and (when given) the expected model hash, then sets up keys.
    pub async fn handshake(ch: &mut Channel, expected_hash: Option<&str>) -> Result<Self, InferenceError> {
        let hello: Hello = ch.recv_msg(MsgKind::Hello).await?;
        if hello.version != PROTOCOL_VERSION {
            let e = InferenceError::Version { server: hello.version, client: PROTOCOL_VERSION };
            ch.send_error(&e.to_string()).await;
            return Err(e);
        }
        let public = hello.model;
        if let Some(h) = expected_hash
            && h != public.hash
        {
            let e = InferenceError::HashMismatch { served: public.hash.clone(), expected: h.to_string() };
            ch.send_error(&e.to_string()).await;
            return Err(e);
        }
        let walk = match Walk::new(&public) {
            Ok(w) => w,
            Err(e) => {
                ch.send_error(&e.to_string()).await;
                return Err(e);
            }
        };
        ch.send_msg(MsgKind::HelloAck, &HelloAck { hash: public.hash.clone() }).await?;
        let he = HeClient::from_os_rng(HeParams::new(public.fp.l)?)?;
        he.setup(ch).await?;
        let gc = EvaluatorSession::setup(ch).await?;
        Ok(Self { public, walk, he, gc, rng: ChaCha20Rng::from_os_rng() })
    }

    /// The model the server announced.
    pub fn public(&self) -> &PublicModel {
        &self.public
    }

    /// One private inference on an image (already normalised, `C x H x W`): offline then online.
    pub async fn infer(&mut self, ch: &mut Channel, x: &[f32]) -> Result<InferenceResult, InferenceError> {
        let prepared = self.prepare(ch).await?;
        self.run_online(ch, prepared, x).await
    }

    /// The offline phase of one inference, ahead of knowing the input.
    pub async fn prepare(&mut self, ch: &mut Channel) -> Result<Prepared, InferenceError> {
        ch.send_msg(MsgKind::Begin, &Request::Infer).await?;
        let c0 = ch.counters();
        let t0 = Instant::now();
        let offline = self.offline(ch).await?;
        Ok(Prepared { offline, time: t0.elapsed(), bytes: ch.counters().since(c0) })
    }

    /// The online phase on prepared material (consumed: offline material is never reused).
    pub async fn run_online(&mut self, ch: &mut Channel, prepared: Prepared, x: &[f32]) -> Result<InferenceResult, InferenceError> {
        let input_len: usize = self.public.graph.input_shape.iter().product();
        if x.len() != input_len {
            return Err(InferenceError::Input(format!("image has {} values, the model expects {input_len}", x.len())));
        }
        let c1 = ch.counters();
        let t1 = Instant::now();
        let (logits_ring, online_rounds, relus, layers) = self.online(ch, x, prepared.offline).await?;
        let online_time = t1.elapsed();
        let frac = self.walk.plan.nodes.last().expect("non-empty").out_scale * self.public.fp.f;
        let logits = logits_ring.iter().map(|&v| self.public.fp.decode_with(v, frac)).collect();
        Ok(InferenceResult {
            logits_ring,
            logits,
            offline: prepared.time,
            online: online_time,
            offline_bytes: prepared.bytes,
            online_bytes: ch.counters().since(c1),
            online_rounds,
            relus,
            layers,
        })
    }

    /// Ends the session politely.
    pub async fn close(self, ch: &mut Channel) -> Result<(), InferenceError> {
        ch.send_msg(MsgKind::Begin, &Request::Bye).await?;
        Ok(())
    }

    async fn offline(&mut self, ch: &mut Channel) -> Result<Offline, InferenceError> {
        let public = &self.public;
        let fp = public.fp;
        let input_len: usize = public.graph.input_shape.iter().product();
        let input_mask: Vec<u64> = (0..input_len).map(|_| fp.reduce(self.rng.random())).collect();
        let mut gc: Vec<Option<EvaluatorOffline>> = (0..public.graph.nodes.len()).map(|_| None).collect();
        let mut outs: Vec<Vec<u64>> = Vec::with_capacity(public.graph.nodes.len());
        let mut layers = Vec::new();
        for (i, node) in public.graph.nodes.iter().enumerate() {
            let (c0, t0) = (ch.counters(), Instant::now());
            let out = if let Some(shape) = self.walk.layer_shape(node) {
                let r = self.walk.arg(&outs, &input_mask, &node.inputs[0]).to_vec();
                self.he.linear(ch, &shape, &r).await?
            } else if matches!(node.op, Op::Relu { .. }) {
                let x = self.walk.arg(&outs, &input_mask, &node.inputs[0]);
                let shift = relu_shift(public, &self.walk, i);
                let mask = &public.masks[i];
                let mut y: Vec<u64> = x.iter().map(|&v| truncate_share(&fp, Role::Client, v, shift)).collect();
                let b: Vec<u64> = x.iter().zip(mask).filter(|(_, k)| **k).map(|(v, _)| *v).collect();
                if !b.is_empty() {
                    let r: Vec<u64> = (0..b.len()).map(|_| fp.reduce(self.rng.random())).collect();
                    gc[i] = Some(self.gc.offline(ch, relu_params(public, &self.walk, i), &b, &r).await?);
                    for (slot, v) in y.iter_mut().zip(mask).filter(|(_, k)| **k).map(|(s, _)| s).zip(r) {
                        *slot = v;
                    }
                }
                y
            } else {
                let args: Vec<&[u64]> = node.inputs.iter().map(|n| self.walk.arg(&outs, &input_mask, n)).collect();
                local_node(public, &self.walk, i, &args)
            };
            if matches!(node.op, Op::Conv2d { .. } | Op::Linear { .. } | Op::Relu { .. }) {
                let is_relu = matches!(node.op, Op::Relu { .. });
                layers.push(LayerCost {
                    node: node.name.clone(),
                    kind: node.op.kind(),
                    relus_total: if is_relu { public.masks[i].len() } else { 0 },
                    relus_kept: public.masks[i].iter().filter(|&&b| b).count(),
                    offline_bytes: ch.counters().since(c0).total(),
                    offline_s: t0.elapsed().as_secs_f64(),
                    ..Default::default()
                });
            }
            outs.push(finish_node(public, &self.walk, i, Role::Client, out));
        }
        let logits_share = outs.pop().expect("non-empty graph");
        Ok(Offline { layers, input_mask, logits_share, gc })
    }

    async fn online(
        &mut self,
        ch: &mut Channel,
        x: &[f32],
        mut offline: Offline,
    ) -> Result<(Vec<u64>, usize, usize, Vec<LayerCost>), InferenceError> {
        let fp = self.public.fp;
        let masked: Vec<u8> = x
            .iter()
            .zip(&offline.input_mask)
            .flat_map(|(&v, &r)| fp.reduce(fp.encode(v).wrapping_sub(r)).to_le_bytes())
            .collect();
        ch.send_now(MsgKind::OnlineInput, &masked).await?;
        let (mut rounds, mut relus) = (1, 0);
        let mut layers = std::mem::take(&mut offline.layers);
        for (i, slot) in offline.gc.iter_mut().enumerate() {
            if let Some(ev) = slot.take() {
                let (c0, t0) = (ch.counters(), Instant::now());
                relus += ev.len();
                rounds += 1;
                ev.online(ch).await?;
                let name = &self.public.graph.nodes[i].name;
                if let Some(l) = layers.iter_mut().find(|l| &l.node == name) {
                    l.online_bytes = ch.counters().since(c0).total();
                    l.online_s = t0.elapsed().as_secs_f64();
                    l.online_round = true;
                }
            }
        }
        let bytes = ch.recv(MsgKind::OnlineLogits).await?;
        let n = offline.logits_share.len();
        if bytes.len() != 8 * n {
            return Err(crate::channel::ChannelError::Malformed {
                kind: MsgKind::OnlineLogits,
                reason: format!("expected {} bytes, got {}", 8 * n, bytes.len()),
            }
            .into());
        }
        let logits = bytes
            .chunks_exact(8)
            .zip(&offline.logits_share)
            .map(|(c, &s)| fp.reduce(u64::from_le_bytes(c.try_into().expect("8 bytes")).wrapping_add(s)))
            .collect();
        Ok((logits, rounds, relus, layers))
    }
}
