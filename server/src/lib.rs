//! The server party: loads and prepares a model, accepts clients over TCP and runs one private
//! inference session per connection. A failing session is logged and ends alone.

use anyhow::Context;
use pi_model::data::{self, Split};
use pi_model::engine::RingModel;
use pi_model::{FixedPoint, format};
use pi_protocol::Channel;
use pi_protocol::inference::server::{ServedModel, ServerSession};
use pi_protocol::public::{PublicModel, calibrate_relu_bits};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How wide the garbled ReLU circuits are.
#[derive(Clone, Debug, PartialEq)]
pub enum ReluBits {
    /// Calibrated per layer on sample inputs, plus a safety margin.
    Auto,
    /// Full ring width `l` (always correct, most AND gates).
    Full,
    /// The same `k` for every layer.
    Fixed(u32),
}

impl std::str::FromStr for ReluBits {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ReluBits::Auto),
            "full" => Ok(ReluBits::Full),
            n => n.parse().map(ReluBits::Fixed).map_err(|_| format!("expected auto, full or a bit count, got {n:?}")),
        }
    }
}

/// How a model is prepared for serving.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub fp: FixedPoint,
    pub relu_bits: ReluBits,
    /// Extra bits above the widest calibrated activation.
    pub margin_bits: u32,
    /// Dataset directory whose training split calibrates `auto` widths (random inputs otherwise).
    pub calibrate: Option<PathBuf>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self { fp: FixedPoint::DEFAULT, relu_bits: ReluBits::Auto, margin_bits: 4, calibrate: None }
    }
}

/// Loads a model file and prepares it for serving: fold, encode, choose circuit widths.
pub fn prepare(path: &Path, opts: &PrepareOptions) -> anyhow::Result<ServedModel> {
    let model = format::load(path).with_context(|| format!("loading {}", path.display()))?;
    let hash = format::content_hash(&model);
    let ring = RingModel::new(&model.fold_batchnorm(), opts.fp)?;
    let bits = match opts.relu_bits {
        ReluBits::Full => None,
        ReluBits::Fixed(k) => Some(
            ring.model
                .graph
                .nodes
                .iter()
                .map(|n| if matches!(n.op, pi_model::Op::Relu { .. }) { k } else { 0 })
                .collect(),
        ),
        ReluBits::Auto => {
            let inputs = calibration_inputs(&ring, opts.calibrate.as_deref())?;
            Some(calibrate_relu_bits(&ring, &inputs, opts.margin_bits))
        }
    };
    let public = PublicModel::new(&ring.model, hash, ring.fp, bits)?;
    Ok(ServedModel { ring, public })
}

fn calibration_inputs(ring: &RingModel, dir: Option<&Path>) -> anyhow::Result<Vec<Vec<f32>>> {
    let shape = &ring.model.graph.input_shape;
    if let Some(dir) = dir {
        let ds = data::load_dir(dir, Split::Train).with_context(|| format!("calibration data {}", dir.display()))?;
        anyhow::ensure!(ds.shape.as_slice() == shape.as_slice(), "calibration images are {:?}, the model takes {shape:?}", ds.shape);
        return Ok((0..ds.len().min(64)).map(|i| ds.image(i).to_vec()).collect());
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0);
    let n: usize = shape.iter().product();
    Ok((0..16).map(|_| (0..n).map(|_| rng.random_range(-2.5f32..2.5)).collect()).collect())
}

/// Transport limits of the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted frame.
    pub max_frame: usize,
    /// Longest wait for any read from, or write to, a client.
    pub read_timeout: Duration,
    /// Sessions served at once; further clients are refused with "server busy".
    pub max_sessions: usize,
    /// Inferences per session, so one connection cannot make the server work forever.
    pub max_inferences_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame: pi_protocol::channel::DEFAULT_MAX_FRAME,
            read_timeout: Duration::from_secs(60),
            max_sessions: 32,
            max_inferences_per_session: 10_000,
        }
    }
}

/// What the client is told when its session fails: protocol errors it caused are named; the
/// server's internal errors (which could describe the weights) are not.
fn client_reason(e: &anyhow::Error) -> String {
    use pi_protocol::inference::InferenceError;
    match e.downcast_ref::<InferenceError>() {
        Some(InferenceError::He(_) | InferenceError::Gc(_) | InferenceError::Task(_)) => "internal server error".into(),
        Some(other) => other.to_string(),
        None => "internal server error".into(),
    }
}

/// Serves clients forever (until the task is dropped). Each connection is its own task.
pub async fn serve(listener: TcpListener, model: Arc<ServedModel>, limits: Limits) -> anyhow::Result<()> {
    let counter = AtomicU64::new(0);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_sessions));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = counter.fetch_add(1, Ordering::Relaxed);
        let model = model.clone();
        let limits = limits.clone();
        let slot = slots.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut ch = Channel::new(stream).with_max_frame(limits.max_frame).with_timeout(limits.read_timeout);
            let Ok(_slot) = slot else {
                tracing::warn!(session = id, %peer, "refused: {} sessions already running", limits.max_sessions);
                ch.send_error("server busy: too many sessions, try again later").await;
                return;
            };
            tracing::info!(session = id, %peer, "client connected");
            match session(&mut ch, model, id, limits.max_inferences_per_session).await {
                Ok(n) => tracing::info!(session = id, inferences = n, "session ended"),
                Err(e) => {
                    tracing::warn!(session = id, "session failed: {e:#}");
                    ch.send_error(&client_reason(&e)).await;
                }
            }
        });
    }
}

async fn session(ch: &mut Channel, model: Arc<ServedModel>, id: u64, max_inferences: usize) -> anyhow::Result<usize> {
    let mut s = ServerSession::handshake(ch, model).await?;
    let mut served = 0;
    while s.next_request(ch).await?.is_some() {
        if served >= max_inferences {
            let reason = format!("session limit of {max_inferences} inferences reached");
            return Err(pi_protocol::inference::InferenceError::Limit(reason).into());
        }
        let stats = s.serve_inference(ch).await?;
        served += 1;
        tracing::info!(
            session = id,
            inference = served,
            offline_ms = stats.offline.as_millis() as u64,
            online_ms = stats.online.as_millis() as u64,
            offline_bytes = stats.offline_bytes.total(),
            online_bytes = stats.online_bytes.total(),
            "inference served"
        );
    }
    Ok(served)
}
