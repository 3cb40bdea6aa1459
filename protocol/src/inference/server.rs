//! The server party of one session: greeting, key setup, then per inference an offline phase (HE
//! for every linear layer, garbling for every surviving ReLU) and an online phase on its shares.

use super::{Hello, HelloAck, InferenceError, Request, Walk, finish_node, local_node, relu_params, relu_shift};
use crate::channel::{Channel, Counters, MsgKind, PROTOCOL_VERSION};
use crate::he::{HeParams, HeServer};
use crate::public::PublicModel;
use crate::relu_layer::{GarblerOffline, GarblerSession};
use crate::share::{Role, truncate_share};
use pi_model::engine::RingModel;
use pi_model::graph::Op;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A model ready to serve: ring-encoded weights and the public view announced to clients.
pub struct ServedModel {
    pub ring: RingModel,
    pub public: PublicModel,
}

/// What one served inference cost the server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerInferenceStats {
    pub offline: Duration,
    pub online: Duration,
    pub offline_bytes: Counters,
    pub online_bytes: Counters,
}

/// The server side of a connected, set-up session.
pub struct ServerSession {
    model: Arc<ServedModel>,
    walk: Walk,
    he: HeServer,
    gc: GarblerSession,
}

/// Per-inference offline material, consumed by the online phase.
struct Offline {
    /// Per node: the server's HE share term of a linear layer's output.
    he: Vec<Vec<u64>>,
    /// Per node: the garbled ReLU layer.
    gc: Vec<Option<GarblerOffline>>,
}

impl ServerSession {
    /// Greets the client, checks its expected hash, and sets up HE keys and base OTs.
    pub async fn handshake(ch: &mut Channel, model: Arc<ServedModel>) -> Result<Self, InferenceError> {
        let walk = Walk::new(&model.public)?;
        ch.send_msg(MsgKind::Hello, &Hello { version: PROTOCOL_VERSION, model: model.public.clone() }).await?;
        let ack: HelloAck = ch.recv_msg(MsgKind::HelloAck).await?;
        if ack.hash != model.public.hash {
            let e = InferenceError::HashMismatch { served: model.public.hash.clone(), expected: ack.hash };
            ch.send_error(&e.to_string()).await;
            return Err(e);
        }
        let he = HeServer::setup(ch, &HeParams::new(model.public.fp.l)?).await?;
        let gc = GarblerSession::setup(ch).await?;
        Ok(Self { model, walk, he, gc })
    }

    /// Waits for the client's next request; `None` when it ends the session.
    pub async fn next_request(&mut self, ch: &mut Channel) -> Result<Option<()>, InferenceError> {
        let req: Request = ch.recv_msg(MsgKind::Begin).await?;
        Ok((req == Request::Infer).then_some(()))
    }

    /// Serves one inference (offline then online).
    pub async fn serve_inference(&mut self, ch: &mut Channel) -> Result<ServerInferenceStats, InferenceError> {
        let c0 = ch.counters();
        let t0 = Instant::now();
        let offline = self.offline(ch).await?;
        let (offline_time, c1) = (t0.elapsed(), ch.counters());
        let t1 = Instant::now();
        self.online(ch, offline).await?;
        Ok(ServerInferenceStats {
            offline: offline_time,
            online: t1.elapsed(),
            offline_bytes: c1.since(c0),
            online_bytes: ch.counters().since(c1),
        })
    }

    async fn offline(&mut self, ch: &mut Channel) -> Result<Offline, InferenceError> {
        let public = &self.model.public;
        let n = public.graph.nodes.len();
        let mut he = vec![Vec::new(); n];
        let mut gc: Vec<Option<GarblerOffline>> = (0..n).map(|_| None).collect();
        for (i, node) in public.graph.nodes.iter().enumerate() {
            if let Some(shape) = self.walk.layer_shape(node) {
                he[i] = self.he.linear(ch, &shape, &self.model.ring.layers[i].weight).await?;
            } else if matches!(node.op, Op::Relu { .. }) {
                let kept = public.masks[i].iter().filter(|&&b| b).count();
                if kept > 0 {
                    gc[i] = Some(self.gc.offline(ch, relu_params(public, &self.walk, i), kept).await?);
                }
            }
        }
        Ok(Offline { he, gc })
    }

    async fn online(&mut self, ch: &mut Channel, mut offline: Offline) -> Result<(), InferenceError> {
        let public = &self.model.public;
        let fp = public.fp;
        let input_len: usize = public.graph.input_shape.iter().product();
        let bytes = ch.recv(MsgKind::OnlineInput).await?;
        if bytes.len() != 8 * input_len {
            return Err(crate::channel::ChannelError::Malformed {
                kind: MsgKind::OnlineInput,
                reason: format!("expected {} bytes, got {}", 8 * input_len, bytes.len()),
            }
            .into());
        }
        let input: Vec<u64> =
            bytes.chunks_exact(8).map(|c| fp.reduce(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
        let mut outs: Vec<Vec<u64>> = Vec::with_capacity(public.graph.nodes.len());
        for (i, node) in public.graph.nodes.iter().enumerate() {
            let out = match node.op {
                Op::Conv2d { .. } | Op::Linear { .. } => {
                    let x = self.walk.arg(&outs, &input, &node.inputs[0]).to_vec();
                    let model = self.model.clone();
                    let he_share = std::mem::take(&mut offline.he[i]);
                    tokio::task::spawn_blocking(move || {
                        let mut y = model.ring.linear_no_bias(i, &x);
                        model.ring.add_bias(i, &mut y);
                        y.iter_mut().zip(&he_share).for_each(|(v, s)| *v = model.public.fp.reduce(v.wrapping_add(*s)));
                        y
                    })
                    .await?
                }
                Op::Relu { .. } => {
                    let x = self.walk.arg(&outs, &input, &node.inputs[0]);
                    let shift = relu_shift(public, &self.walk, i);
                    let mask = &public.masks[i];
                    let mut y: Vec<u64> = x.iter().map(|&v| truncate_share(&fp, Role::Server, v, shift)).collect();
                    if let Some(g) = offline.gc[i].take() {
                        let a: Vec<u64> = x.iter().zip(mask).filter(|(_, k)| **k).map(|(v, _)| *v).collect();
                        let z = g.online(ch, &a).await?;
                        for (slot, v) in y.iter_mut().zip(mask).filter(|(_, k)| **k).map(|(s, _)| s).zip(z) {
                            *slot = v;
                        }
                    }
                    y
                }
                _ => {
                    let args: Vec<&[u64]> = node.inputs.iter().map(|n| self.walk.arg(&outs, &input, n)).collect();
                    local_node(public, &self.walk, i, &args)
                }
            };
            outs.push(finish_node(public, &self.walk, i, Role::Server, out));
        }
        let logits = outs.pop().expect("non-empty graph");
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        ch.send_now(MsgKind::OnlineLogits, &bytes).await?;
        Ok(())
    }
}
