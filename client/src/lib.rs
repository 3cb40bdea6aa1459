//! The client party: connects to a server, runs private inferences on a dataset, and reports
//! latency (p50/p95), bytes per phase and direction, rounds, ReLUs and accuracy.
//!
//! [`Client`] is the embeddable API (connect, infer one image, close); [`run`] classifies a dataset
//! and builds a [`Report`]. Printing is the binary's business.

#![forbid(unsafe_code)]

use pi_channel::{Channel, Link, Shaped};
use pi_inference::{ClientSession, InferenceError, InferenceResult, LayerCost, PublicModel};
use pi_model::data::{self, Dataset, Normalization, Split};
use pi_model::engine::{RingModel, argmax, run_f32};
use pi_model::{Model, format};
use pi_tls::{ClientStream, Fingerprint, ServerTrust, TlsClient, TlsError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The TLS handshake with the server at `addr`, bounded by `timeout`.
async fn tls_connect<S>(
    tls: &TlsClient,
    addr: &str,
    stream: S,
    timeout: Duration,
) -> Result<ClientStream<S>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, tls.connect(pi_tls::host_of(addr), stream)).await {
        Ok(r) => r.map_err(|source| ClientError::Tls { addr: addr.to_string(), source }),
        Err(_) => Err(ClientError::TlsTimeout { addr: addr.to_string(), timeout }),
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// Server address, `HOST:PORT`.
    pub server: String,
    /// Dataset directory (test split) or a single images file (see [`load_images`]).
    pub data: PathBuf,
    /// Number of images (from the start of the set).
    pub count: usize,
    /// Plaintext model for the reference figures (f32 accuracy, fixed-point agreement). A real
    /// client does not have it; benchmarks and the demo do.
    pub reference_model: Option<PathBuf>,
    /// Read timeout, hash pin and emulated link of the connection.
    pub connection: ClientOptions,
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// TLS (and whom to trust) or bare TCP; it must match the server's.
    pub transport: ClientTransport,
    /// Refuse a server whose model hash differs.
    pub expected_hash: Option<String>,
    /// Longest wait for any message from the server (and for the TLS handshake).
    pub timeout: Duration,
    /// Emulated link between the parties (applied on the client's side), for LAN/WAN figures.
    pub link: Option<Link>,
}

impl ClientOptions {
    /// Connects over `transport`, no hash pin, a 120 s timeout and the real link.
    pub fn new(transport: ClientTransport) -> Self {
        Self { transport, expected_hash: None, timeout: Duration::from_secs(120), link: None }
    }
}

/// How the connection is secured.
#[derive(Clone, Debug)]
pub enum ClientTransport {
    /// TLS 1.3, trusting the server's certificate as the [`TlsClient`] says (pinned or by a CA).
    Tls(Arc<TlsClient>),
    /// Bare TCP, for benchmarks and tests on loopback: anyone on the path can read the masked
    /// messages and alter them undetected.
    Plaintext,
}

impl ClientTransport {
    /// Trusts exactly the certificate with this SHA-256 fingerprint (what `pi serve` prints).
    pub fn pinned(fingerprint: Fingerprint) -> Result<Self, ClientError> {
        Ok(ClientTransport::Tls(Arc::new(TlsClient::new(ServerTrust::Pinned(fingerprint))?)))
    }

    /// `"tls"` or `"plaintext"`, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            ClientTransport::Tls(_) => "tls",
            ClientTransport::Plaintext => "plaintext",
        }
    }
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("connecting to {addr}: {source}")]
    Tls { addr: String, source: TlsError },
    #[error(transparent)]
    TlsSetup(#[from] TlsError),
    #[error("connecting to {addr}: TLS handshake not finished within {timeout:?}")]
    TlsTimeout { addr: String, timeout: Duration },
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("reading {path}: {source}")]
    Data { path: PathBuf, source: pi_model::data::DataError },
    #[error("{0} is neither a dataset directory, a CIFAR .bin nor an IDX images file")]
    UnknownData(PathBuf),
    #[error("images are {images:?}, the served model takes {model:?}")]
    Shape { images: Vec<usize>, model: Vec<usize> },
    #[error("loading reference {path}: {source}")]
    Reference { path: PathBuf, source: pi_model::format::FormatError },
    #[error(
        "reference {path} normalises inputs with mean {:?} std {:?}, the served model with mean {:?} std {:?}: not the same function",
        reference.mean, reference.std, served.mean, served.std
    )]
    ReferenceNormalization { path: PathBuf, reference: Normalization, served: Normalization },
    #[error(transparent)]
    Engine(#[from] pi_model::engine::EngineError),
    #[error("inference {index}: {source}")]
    At { index: usize, source: InferenceError },
}

/// One private inference as a library user sees it.
#[derive(Clone, Debug)]
pub struct Inference {
    /// Index of the largest logit.
    pub prediction: usize,
    /// The decoded logits (see [`Inference::logits`]) and everything measured: ring logits, latency and bytes per phase, rounds, per-layer costs.
    pub costs: InferenceResult,
}

impl Inference {
    /// Decoded logits.
    pub fn logits(&self) -> &[f32] {
        &self.costs.logits
    }
}

/// A connected client session with a server.
///
/// ```no_run
/// # async fn f(image: &[f32]) -> Result<(), pi_client::ClientError> {
/// let fingerprint = "<64 hex digits printed by pi serve>".parse().unwrap();
/// let options = pi_client::ClientOptions::new(pi_client::ClientTransport::pinned(fingerprint)?);
/// let mut client = pi_client::Client::connect("127.0.0.1:7700", &options).await?;
/// let out = client.infer(image).await?;
/// println!("class {} in {:?} online", out.prediction, out.costs.online);
/// client.close().await?;
/// # Ok(()) }
/// ```
pub struct Client {
    ch: Channel,
    session: ClientSession,
}

impl Client {
    /// Connects, checks the greeting (version, and the hash when pinned) and sets up keys.
    pub async fn connect(addr: &str, options: &ClientOptions) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect { addr: addr.to_string(), source };
        let stream = TcpStream::connect(addr).await.map_err(connect_err)?;
        stream.set_nodelay(true).map_err(connect_err)?;
        let ch = match (&options.transport, options.link) {
            (ClientTransport::Plaintext, None) => Channel::new(stream),
            (ClientTransport::Plaintext, Some(link)) => Channel::new(Shaped::new(stream, link)),
            (ClientTransport::Tls(tls), None) => Channel::new(tls_connect(tls, addr, stream, options.timeout).await?),
            (ClientTransport::Tls(tls), Some(link)) => {
                Channel::new(tls_connect(tls, addr, Shaped::new(stream, link), options.timeout).await?)
            }
        };
        let mut ch = ch.with_timeout(options.timeout);
        let session = ClientSession::handshake(&mut ch, options.expected_hash.as_deref()).await?;
        Ok(Client { ch, session })
    }

    /// Bytes of protocol frames this connection has moved so far, per direction (TLS adds about
    /// 22 bytes per 16 KiB record and its handshake on top).
    pub fn counters(&self) -> pi_channel::Counters {
        self.ch.counters()
    }

    /// Inferences this session may still run; at 0, connect again (the server's limit, kept
    /// within the statistical budget of its HE replies).
    pub fn remaining_inferences(&self) -> u64 {
        self.session.remaining_inferences()
    }

    /// What the server announced: architecture, masks, fixed-point parameters, hash.
    pub fn public(&self) -> &PublicModel {
        self.session.public()
    }

    /// Classifies one image (`C x H x W`, normalised as `self.public().normalization` says)
    /// privately: offline then online phase.
    pub async fn infer(&mut self, image: &[f32]) -> Result<Inference, ClientError> {
        let costs = self.session.infer(&mut self.ch, image).await?;
        Ok(Inference { prediction: argmax(&costs.logits), costs })
    }

    /// Ends the session politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        Ok(self.session.close(&mut self.ch).await?)
    }
}

/// One inference as reported.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceRecord {
    pub index: usize,
    pub label: Option<u8>,
    pub prediction: usize,
    /// The logits the client decoded from the private inference.
    pub logits: Vec<f32>,
    pub offline_s: f64,
    pub online_s: f64,
    pub offline_bytes_sent: u64,
    pub offline_bytes_received: u64,
    pub online_bytes_sent: u64,
    pub online_bytes_received: u64,
    pub online_rounds: usize,
    pub relus: usize,
    /// Values truncated exactly (garbled) in this inference.
    pub truncations: usize,
    /// Prediction of the plaintext f32 model (with a reference model).
    pub prediction_f32: Option<usize>,
    /// Whether the PI prediction equals the fixed-point engine's (with a reference model).
    pub agrees_fixed_point: Option<bool>,
    /// Largest |PI logit - fixed-point logit| (with a reference model).
    pub max_logit_error: Option<f32>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub server: String,
    /// `tls` or `plaintext`.
    pub transport: String,
    pub model_hash: String,
    pub inferences: usize,
    pub accuracy_pi: Option<f64>,
    pub accuracy_f32: Option<f64>,
    pub agreement_fixed_point: Option<f64>,
    pub offline_s_p50: f64,
    pub offline_s_p95: f64,
    pub online_s_p50: f64,
    pub online_s_p95: f64,
    /// Total offline bytes (both directions) per inference, averaged.
    pub offline_bytes: u64,
    pub online_bytes: u64,
    pub offline_bytes_sent: u64,
    pub offline_bytes_received: u64,
    pub online_bytes_sent: u64,
    pub online_bytes_received: u64,
    pub online_rounds: usize,
    /// Garbled ReLUs per inference.
    pub relus: usize,
    /// How the server rescales shares: `local` or `exact` (`pi serve --truncation`).
    pub truncation: String,
    /// How kept ReLUs read the sign: `all` bits, or the top `M` (`pi serve --sign-bits`).
    pub sign_bits: String,
    /// Values truncated exactly by garbled circuits per inference (0 with `local`).
    pub truncations: usize,
    /// Per conv/linear and ReLU layer, averaged over the inferences: linearized ReLUs cost nothing.
    pub layers: Vec<LayerCost>,
    pub per_inference: Vec<InferenceRecord>,
}

/// Loads images: a dataset directory (its test split), a CIFAR `.bin` batch, or an IDX images file
/// with its labels file beside it (`*-images-idx3-ubyte[.gz]` / `*-labels-idx1-ubyte[.gz]`),
/// normalised as `normalization` (a model's; `None`: the data format's default).
pub fn load_images(path: &Path, normalization: Option<&Normalization>) -> Result<Dataset, ClientError> {
    let data_err = |source| ClientError::Data { path: path.to_path_buf(), source };
    if path.is_dir() {
        return data::load_dir_with(path, Split::Test, normalization.cloned()).map_err(data_err);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".bin") {
        let norm = normalization.cloned().unwrap_or_else(Normalization::cifar10);
        return data::load_cifar_bin_with(&[path], false, norm).map_err(data_err);
    }
    let labels = path.with_file_name(name.replace("images-idx3", "labels-idx1"));
    if labels == path {
        return Err(ClientError::UnknownData(path.to_path_buf()));
    }
    let norm = normalization.cloned().unwrap_or_else(Normalization::fashion_mnist);
    data::load_idx_with(path, &labels, norm).map_err(data_err)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

struct Reference {
    model: Model,
    ring: RingModel,
}

/// Connects, runs the inferences and builds the report; `progress(done, total)` is called after
/// each inference.
pub async fn run(opts: &InferOptions, mut progress: impl FnMut(usize, usize)) -> Result<Report, ClientError> {
    // Read once before connecting (a bad file fails fast), again with the served model's
    // normalisation when the data format's default is not it.
    let mut ds = load_images(&opts.data, None)?;
    let count = opts.count.min(ds.len());
    let mut client = Client::connect(&opts.server, &opts.connection).await?;
    let public = client.public().clone();
    if ds.shape.as_slice() != public.graph.input_shape.as_slice() {
        return Err(ClientError::Shape { images: ds.shape.to_vec(), model: public.graph.input_shape.clone() });
    }
    if ds.normalization != public.normalization {
        ds = load_images(&opts.data, Some(&public.normalization))?;
    }
    let reference = match &opts.reference_model {
        Some(p) => {
            let model =
                format::load(p).map_err(|source| ClientError::Reference { path: p.clone(), source })?.fold_batchnorm();
            if model.normalization != public.normalization {
                return Err(ClientError::ReferenceNormalization {
                    path: p.clone(),
                    reference: model.normalization,
                    served: public.normalization.clone(),
                });
            }
            let ring = RingModel::new(&model, public.fp)?;
            Some(Reference { model, ring })
        }
        None => None,
    };
    let mut records = Vec::with_capacity(count);
    let mut layers: Vec<LayerCost> = Vec::new();
    for i in 0..count {
        let x = ds.image(i);
        if client.remaining_inferences() == 0 {
            // The session's budget is spent: a new session (fresh keys and base OTs) goes on.
            client.close().await?;
            client = Client::connect(&opts.server, &opts.connection).await?;
        }
        let r = client.session.infer(&mut client.ch, x).await.map_err(|source| ClientError::At { index: i, source })?;
        let prediction = argmax(&r.logits);
        accumulate_layers(&mut layers, &r.layers, count);
        let (prediction_f32, agrees_fixed_point, max_logit_error) = match &reference {
            Some(rf) => {
                let f = run_f32(&rf.model, x)?;
                let fixed = rf.ring.decode_output(&rf.ring.run(x)?);
                let err = fixed.iter().zip(&r.logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                (Some(argmax(&f)), Some(argmax(&fixed) == prediction), Some(err))
            }
            None => (None, None, None),
        };
        records.push(InferenceRecord {
            index: i,
            label: Some(ds.label(i)),
            prediction,
            logits: r.logits.clone(),
            offline_s: r.offline.as_secs_f64(),
            online_s: r.online.as_secs_f64(),
            offline_bytes_sent: r.offline_bytes.sent,
            offline_bytes_received: r.offline_bytes.received,
            online_bytes_sent: r.online_bytes.sent,
            online_bytes_received: r.online_bytes.received,
            online_rounds: r.online_rounds,
            relus: r.relus,
            truncations: r.truncations,
            prediction_f32,
            agrees_fixed_point,
            max_logit_error,
        });
        progress(i + 1, count);
    }
    client.close().await?;
    Ok(summarise(opts, &public, records, layers))
}

/// Adds one inference's per-layer costs, divided by the number of inferences, into the average.
fn accumulate_layers(avg: &mut Vec<LayerCost>, one: &[LayerCost], count: usize) {
    if avg.is_empty() {
        *avg = one
            .iter()
            .map(|l| LayerCost {
                offline_bytes: 0,
                online_bytes: 0,
                offline_s: 0.0,
                online_s: 0.0,
                offline_io_s: 0.0,
                online_io_s: 0.0,
                ..l.clone()
            })
            .collect();
    }
    let n = count.max(1);
    for (a, l) in avg.iter_mut().zip(one) {
        a.offline_bytes += l.offline_bytes / n as u64;
        a.online_bytes += l.online_bytes / n as u64;
        a.offline_s += l.offline_s / n as f64;
        a.online_s += l.online_s / n as f64;
        a.offline_io_s += l.offline_io_s / n as f64;
        a.online_io_s += l.online_io_s / n as f64;
    }
}

fn summarise(
    opts: &InferOptions,
    public: &PublicModel,
    records: Vec<InferenceRecord>,
    layers: Vec<LayerCost>,
) -> Report {
    let n = records.len().max(1) as f64;
    let frac = |f: &dyn Fn(&InferenceRecord) -> Option<bool>| -> Option<f64> {
        let v: Vec<bool> = records.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64)
    };
    let avg =
        |f: &dyn Fn(&InferenceRecord) -> u64| -> u64 { (records.iter().map(f).sum::<u64>() as f64 / n).round() as u64 };
    let offline: Vec<f64> = records.iter().map(|r| r.offline_s).collect();
    let online: Vec<f64> = records.iter().map(|r| r.online_s).collect();
    Report {
        server: opts.server.clone(),
        transport: opts.connection.transport.name().to_string(),
        model_hash: public.hash.clone(),
        inferences: records.len(),
        accuracy_pi: frac(&|r| r.label.map(|l| l as usize == r.prediction)),
        accuracy_f32: frac(&|r| r.label.zip(r.prediction_f32).map(|(l, p)| l as usize == p)),
        agreement_fixed_point: frac(&|r| r.agrees_fixed_point),
        offline_s_p50: percentile(&offline, 0.5),
        offline_s_p95: percentile(&offline, 0.95),
        online_s_p50: percentile(&online, 0.5),
        online_s_p95: percentile(&online, 0.95),
        offline_bytes: avg(&|r| r.offline_bytes_sent + r.offline_bytes_received),
        online_bytes: avg(&|r| r.online_bytes_sent + r.online_bytes_received),
        offline_bytes_sent: avg(&|r| r.offline_bytes_sent),
        offline_bytes_received: avg(&|r| r.offline_bytes_received),
        online_bytes_sent: avg(&|r| r.online_bytes_sent),
        online_bytes_received: avg(&|r| r.online_bytes_received),
        online_rounds: records.first().map(|r| r.online_rounds).unwrap_or(0),
        relus: records.first().map(|r| r.relus).unwrap_or(0),
        truncation: public.truncation.name().to_string(),
        sign_bits: public.sign_bits.to_string(),
        truncations: records.first().map(|r| r.truncations).unwrap_or(0),
        layers,
        per_inference: records,
    }
}
