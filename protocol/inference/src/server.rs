//! The server party of one session: greeting, key setup, then per inference an offline phase (HE
//! for every linear layer, garbling for every surviving ReLU) and an online phase on its shares.
//! Every public method tells the client why it failed, once ([`crate::tell_peer`]).

use crate::error::told;
use crate::plan::{Plan, StepGc, StepKind};
use crate::public::PublicModel;
use crate::share::{Role, truncate_share};
use crate::{Hello, HelloAck, InferenceError, Request};
use pi_channel::{Channel, Counters, MsgKind, PROTOCOL_VERSION, TaskFailed};
use pi_gc::relu_layer::{GarblerOffline, GarblerSession};
use pi_he::{EncodedLayer, HeParams, HeServer, KernelCache, KernelEncoder};
use pi_model::engine::RingModel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A model ready to serve: ring-encoded weights, the public view announced to clients, and every
/// linear layer's weights encoded for HE once (kernel plaintexts kept NTT-transformed within a budget).
pub struct ServedModel {
    pub ring: RingModel,
    pub public: PublicModel,
    /// Per plan step: the layer's HE encoding (`None` for steps that are not linear layers).
    he: Vec<Option<Arc<EncodedLayer>>>,
    /// The HE context, built once and shared by every session.
    encoder: KernelEncoder,
}

impl ServedModel {
    /// Encodes the linear layers for HE. Layers keep their kernel plaintexts transformed, in plan
    /// order, while the total stays within `he_cache_bytes`; later layers transform theirs per
    /// inference (same result, more server time). Fails if a layer's weights leave too little
    /// flooding margin.
    /// Online, a convolution that follows garbled ReLUs starts only when their results are back,
    /// unless `ring` has scatter kernels ([`RingModel::prepare_scatter`]): then it starts on the
    /// linearized neurons while the client evaluates, and adds the kept ones when they arrive.
    pub fn new(ring: RingModel, public: PublicModel, he_cache_bytes: usize) -> Result<Self, InferenceError> {
        let plan = Plan::compile(&public)?;
        let encoder = KernelEncoder::new(&HeParams::new(public.fp.l)?)?;
        let mut left = he_cache_bytes;
        let mut he = Vec::with_capacity(plan.steps.len());
        for (i, step) in plan.steps.iter().enumerate() {
            he.push(match &step.kind {
                StepKind::Linear { shape } => {
                    let mut layer = encoder.encode(shape, &ring.layers[i].weight, KernelCache::OnTheFly)?;
                    if layer.transformed_bytes() <= left {
                        left -= layer.transformed_bytes();
                        layer.transform_all();
                    }
                    Some(Arc::new(layer))
                }
                _ => None,
            });
        }
        Ok(Self { ring, public, he, encoder })
    }

    /// log2 of the statistical distance that all HE replies of one inference can add to the
    /// client's view of the weights (summed over every coefficient of every reply).
    pub fn distance_per_inference_log2(&self) -> f64 {
        let sum: f64 = self.he.iter().flatten().map(|l| l.reply_distance_log2().exp2()).sum();
        if sum > 0.0 { sum.log2() } else { f64::NEG_INFINITY }
    }

    /// Most inferences one session may run while the distance summed over the session stays
    /// within `2^-SESSION_STAT_SEC` (at least 1: each coefficient alone is within `2^-40` anyway).
    pub fn session_inferences(&self) -> usize {
        let room = -(SESSION_STAT_SEC as f64) - self.distance_per_inference_log2();
        if room >= 62.0 { usize::MAX } else { (room.exp2().floor() as usize).max(1) }
    }

    /// An upper bound of the memory one session holds at its peak, beyond what the served model
    /// holds for every session (for `pi serve --max-memory`): every step's output share (the
    /// online phase keeps them all) and the HE shares of the linear layers; per kept ReLU (and per
    /// exactly truncated value) the garbler's `k` zero-labels, output offset and (online) share, and, while a layer is garbled, both labels of
    /// each OT for the client's `k` input bits plus the extension matrix; the largest HE call
    /// (queries received and expanded, replies, share); the client's public key; and the
    /// channel's buffers with the largest frames both ways (8 MiB of HE ciphertexts); and the
    /// buffers of a convolution started while garbled ReLUs are out.
    pub fn session_memory_bytes(&self) -> usize {
        let plan = Plan::compile(&self.public).expect("validated when the model was prepared");
        let shapes = self.public.graph.shapes();
        let activations: usize =
            self.public.graph.nodes.iter().map(|n| shapes[&n.name].iter().product::<usize>()).sum();
        let mut he_shares = 0;
        let (mut garbled, mut garbling) = (0, 0);
        // A garbled layer of `n` values, `k` input bits each: kept until online (zero-labels and
        // offsets), and its peak while garbling (two label sets, a record, the choice bits).
        let mut layer = |k: usize, n: usize| {
            garbled += n * (16 * k + 16);
            garbling = garbling.max(n * k * (2 * 16 + 16 + 1));
        };
        for step in &plan.steps {
            match &step.kind {
                StepKind::Linear { shape } => he_shares += 8 * shape.output_len(),
                StepKind::Relu { kept, gc, linearized, .. } => {
                    if let Some(p) = gc {
                        layer(p.evaluator_bits(), kept.len());
                    }
                    if let Some((pos, t)) = linearized {
                        layer(t.bits(), pos.len());
                    }
                }
                _ => {}
            }
            if let Some(t) = step.exact_after {
                layer(t.bits(), step.out_len);
            }
        }
        let layers = self.he.iter().flatten();
        let he_call = layers.clone().map(|l| l.peak_call_bytes()).max().unwrap_or(0);
        let public_key = layers.map(|l| l.public_key_bytes()).max().unwrap_or(0);
        let channel = 2 * (64 << 10) + 2 * (8 << 20);
        // A convolution started while garbled ReLUs are out: its input without them, its output,
        // and the scatter's accumulator.
        let widest = self.public.graph.nodes.iter().map(|n| shapes[&n.name].iter().product::<usize>()).max();
        let overlap = 3 * 8 * widest.unwrap_or(0);
        8 * activations + he_shares + garbled + garbling + he_call + public_key + channel + overlap
    }

    /// Bytes of transformed kernel plaintexts kept, and the bytes keeping every layer's would take.
    pub fn he_cache_bytes(&self) -> (usize, usize) {
        let layers = self.he.iter().flatten();
        (layers.clone().map(|l| l.cached_bytes()).sum(), layers.map(|l| l.transformed_bytes()).sum())
    }
}

/// Statistical security of a whole session: the flooding of every HE reply of every inference
/// together is within `2^-40` of a reply that does not depend on the weights.
pub const SESSION_STAT_SEC: u32 = 40;

/// What one served inference cost the server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServerInferenceStats {
    pub offline: Duration,
    pub online: Duration,
    /// Of `offline` and `online`: time the server spent blocked on the channel.
    pub offline_io: Duration,
    pub online_io: Duration,
    pub offline_bytes: Counters,
    pub online_bytes: Counters,
    /// Per conv/linear and ReLU node, in plan order.
    pub layers: Vec<ServerStepTime>,
}

/// What one conv/linear or ReLU node took on the server: wall time per phase and, of it, the time
/// blocked on the channel (the rest is the server's own work: HE, garbling and OT offline; ring
/// arithmetic and label transfer online).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServerStepTime {
    pub node: String,
    pub offline_s: f64,
    pub offline_io_s: f64,
    pub online_s: f64,
    pub online_io_s: f64,
}

/// The server side of a connected, set-up session.
pub struct ServerSession {
    model: Arc<ServedModel>,
    plan: Plan,
    he: HeServer,
    gc: GarblerSession,
    served: usize,
    max_inferences: usize,
}

/// Per-inference offline material, consumed by the online phase.
struct Offline {
    /// Per step: the server's HE share term of a linear layer's output.
    he: Vec<Vec<u64>>,
    /// Per step: the garbled layers (ReLUs, exact truncations).
    gc: Vec<StepGc<GarblerOffline>>,
    /// Per step: wall and channel time, offline (online filled in later).
    times: Vec<ServerStepTime>,
}

impl ServerSession {
    /// Greets the client, checks its expected hash, and sets up HE keys and base OTs. The session
    /// serves at most `max_inferences` inferences, so one connection cannot make the server work forever.
    pub async fn handshake(
        ch: &mut Channel,
        model: Arc<ServedModel>,
        max_inferences: usize,
    ) -> Result<Self, InferenceError> {
        let r = Self::handshake_inner(ch, model, max_inferences).await;
        told(ch, r).await
    }

    async fn handshake_inner(
        ch: &mut Channel,
        model: Arc<ServedModel>,
        max_inferences: usize,
    ) -> Result<Self, InferenceError> {
        let plan = Plan::compile(&model.public)?;
        let max_inferences = max_inferences.min(model.session_inferences());
        let hello =
            Hello { version: PROTOCOL_VERSION, model: model.public.clone(), session_inferences: max_inferences as u64 };
        ch.send_msg(MsgKind::Hello, &hello).await?;
        let ack: HelloAck = ch.recv_msg(MsgKind::HelloAck).await?;
        if ack.hash != model.public.hash {
            return Err(InferenceError::HashMismatch { served: model.public.hash.clone(), expected: ack.hash });
        }
        let he = HeServer::setup(ch, &model.encoder).await?;
        let gc = GarblerSession::setup(ch).await?;
        Ok(Self { model, plan, he, gc, served: 0, max_inferences })
    }

    /// Inferences served in this session so far.
    pub fn served(&self) -> usize {
        self.served
    }

    /// Waits for the client's next request; `None` when it ends the session. A request beyond the
    /// session's inference limit is refused.
    pub async fn next_request(&mut self, ch: &mut Channel) -> Result<Option<()>, InferenceError> {
        let r = match ch.recv_msg::<Request>(MsgKind::Begin).await {
            Ok(Request::Bye) => Ok(None),
            Ok(Request::Infer) if self.served >= self.max_inferences => {
                Err(InferenceError::Limit(format!("session limit of {} inferences reached", self.max_inferences)))
            }
            Ok(Request::Infer) => Ok(Some(())),
            Err(e) => Err(e.into()),
        };
        told(ch, r).await
    }

    /// Serves one inference (offline then online).
    pub async fn serve_inference(&mut self, ch: &mut Channel) -> Result<ServerInferenceStats, InferenceError> {
        let r = self.serve_inference_inner(ch).await;
        told(ch, r).await
    }

    async fn serve_inference_inner(&mut self, ch: &mut Channel) -> Result<ServerInferenceStats, InferenceError> {
        let (c0, io0) = (ch.counters(), ch.io_time());
        let t0 = Instant::now();
        let offline = self.offline(ch).await?;
        let (offline_time, c1, io1) = (t0.elapsed(), ch.counters(), ch.io_time());
        let t1 = Instant::now();
        let times = self.online(ch, offline).await?;
        self.served += 1;
        let layers = (self.plan.steps.iter().zip(times))
            .filter(|(s, _)| !matches!(s.kind, StepKind::Local(_)) || s.exact_after.is_some())
            .map(|(_, t)| t)
            .collect();
        Ok(ServerInferenceStats {
            offline: offline_time,
            online: t1.elapsed(),
            offline_io: io1 - io0,
            online_io: ch.io_time() - io1,
            offline_bytes: c1.since(c0),
            online_bytes: ch.counters().since(c1),
            layers,
        })
    }

    async fn offline(&mut self, ch: &mut Channel) -> Result<Offline, InferenceError> {
        let n = self.plan.steps.len();
        let mut he = vec![Vec::new(); n];
        let mut gc: Vec<StepGc<GarblerOffline>> = (0..n).map(|_| StepGc::default()).collect();
        let mut times = Vec::with_capacity(n);
        for (i, step) in self.plan.steps.iter().enumerate() {
            let (t0, io0) = (Instant::now(), ch.io_time());
            match &step.kind {
                StepKind::Linear { .. } => {
                    let layer = self.model.he.get(i).cloned().flatten().ok_or_else(|| {
                        InferenceError::He(pi_he::HeError::Shape(format!("step {i} is linear but has no HE encoding")))
                    })?;
                    he[i] = self.he.linear_encoded(ch, &layer).await?.0
                }
                StepKind::Relu { gc: params, kept, linearized, .. } => {
                    if let Some(params) = params {
                        gc[i].relu = Some(self.gc.offline(ch, *params, kept.len()).await?);
                    }
                    if let Some((positions, t)) = linearized {
                        gc[i].linearized = Some(self.gc.offline(ch, *t, positions.len()).await?);
                    }
                }
                StepKind::Local(_) => {}
            }
            if let Some(t) = step.exact_after {
                gc[i].after = Some(self.gc.offline(ch, t, step.out_len).await?);
            }
            times.push(ServerStepTime {
                node: step.name.clone(),
                offline_s: t0.elapsed().as_secs_f64(),
                offline_io_s: (ch.io_time() - io0).as_secs_f64(),
                ..Default::default()
            });
        }
        Ok(Offline { he, gc, times })
    }

    /// The online phase; returns every step's times (offline and online).
    async fn online(&mut self, ch: &mut Channel, mut offline: Offline) -> Result<Vec<ServerStepTime>, InferenceError> {
        let plan = &self.plan;
        let fp = plan.fp;
        let input: Vec<u64> =
            ch.recv_u64s(MsgKind::OnlineInput, plan.input_len).await?.into_iter().map(|v| fp.reduce(v)).collect();
        let mut outs: Vec<Vec<u64>> = Vec::with_capacity(plan.steps.len());
        // A linear step's output computed while the garbled ReLUs before it were out (see below).
        let mut ahead: Option<(usize, Vec<u64>)> = None;
        for (i, step) in plan.steps.iter().enumerate() {
            let (t0, io0) = (Instant::now(), ch.io_time());
            let out = match &step.kind {
                StepKind::Linear { .. } => match ahead.take() {
                    Some((j, y)) if j == i => y,
                    _ => {
                        let x = plan.arg(&outs, &input, step.inputs[0]).to_vec();
                        let model = self.model.clone();
                        let he_share = std::mem::take(&mut offline.he[i]);
                        pi_channel::blocking(move || model.ring.linear_share(i, &x, &he_share)).await?
                    }
                },
                StepKind::Relu { shift, kept, linearized, gc_input_shift, .. } => {
                    let x = plan.arg(&outs, &input, step.inputs[0]);
                    let mut y: Vec<u64> = x.iter().map(|&v| truncate_share(&fp, Role::Server, v, *shift)).collect();
                    // Both layers' labels, then both results: one round trip.
                    let relu = match offline.gc[i].relu.take() {
                        Some(g) => Some(g.send_labels(ch, &kept.gather_shifted(&fp, x, *gc_input_shift)).await?),
                        None => None,
                    };
                    let lin = match (offline.gc[i].linearized.take(), linearized) {
                        (Some(g), Some((positions, _))) => {
                            Some((g.send_labels(ch, &positions.gather(x)).await?, positions))
                        }
                        _ => None,
                    };
                    // While the client evaluates, the next step, when it is a convolution of this
                    // output, starts on the linearized neurons (known now) with the kept ones at
                    // zero; the kept ones are added when they arrive. The convolution is linear, so
                    // the sum is the same ring element as in one pass.
                    let next = i + 1;
                    let overlap = relu.is_some()
                        && lin.is_none()
                        && plan.linear_after_relu(i) == Some(next)
                        && self.model.ring.scatters(next);
                    let dense = overlap.then(|| {
                        let mut rest = y.clone();
                        kept.scatter(&mut rest, std::iter::repeat(0));
                        let (model, he_share) = (self.model.clone(), std::mem::take(&mut offline.he[next]));
                        tokio::task::spawn_blocking(move || model.ring.linear_share(next, &rest, &he_share))
                    });
                    if let Some(p) = relu {
                        let shares = p.finish(ch).await?;
                        kept.scatter(&mut y, shares.iter().copied());
                        if let Some(task) = dense {
                            let mut out = task.await.map_err(TaskFailed::from)?;
                            let (model, idx, vals) = (self.model.clone(), kept.positions().to_vec(), shares);
                            let out = pi_channel::blocking(move || {
                                let added = model.ring.add_scattered(next, &idx, &vals, &mut out);
                                assert!(added, "scatter kernels checked before the overlap");
                                out
                            })
                            .await?;
                            ahead = Some((next, out));
                        }
                    }
                    if let Some((p, positions)) = lin {
                        positions.scatter(&mut y, p.finish(ch).await?);
                    }
                    y
                }
                StepKind::Local(op) => {
                    let args: Vec<&[u64]> = step.inputs.iter().map(|&s| plan.arg(&outs, &input, s)).collect();
                    plan.local(*op, &args)
                }
            };
            let out = match offline.gc[i].after.take() {
                Some(g) => g.online(ch, &out).await?,
                None => plan.finish(i, Role::Server, out),
            };
            outs.push(out);
            if let Some(t) = offline.times.get_mut(i) {
                t.online_s = t0.elapsed().as_secs_f64();
                t.online_io_s = (ch.io_time() - io0).as_secs_f64();
            }
        }
        let logits = outs.pop().unwrap_or_default();
        ch.send_u64s(MsgKind::OnlineLogits, &logits).await?;
        Ok(offline.times)
    }
}
