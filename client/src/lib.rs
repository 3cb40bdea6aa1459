//! The client party: connects to a server, runs private inferences on a dataset, and reports
//! latency (p50/p95), bytes per phase and direction, rounds, ReLUs and accuracy.

use anyhow::Context;
use pi_model::data::{self, Dataset, Split};
use pi_model::engine::{RingModel, argmax, run_f32};
use pi_model::{Model, format};
use pi_protocol::Channel;
use pi_protocol::inference::client::{ClientSession, InferenceResult, LayerCost};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;

/// What to run.
#[derive(Clone, Debug)]
pub struct InferOptions {
    /// Server address, `HOST:PORT`.
    pub server: String,
    /// Dataset directory (test split) or a single images file (see [`load_images`]).
    pub data: PathBuf,
    /// Number of images (from the start of the set).
    pub count: usize,
    /// Refuse a server whose model hash differs.
    pub expected_hash: Option<String>,
    /// Plaintext model for the reference figures (f32 accuracy, fixed-point agreement). A real
    /// client does not have it; benchmarks and the demo do.
    pub reference_model: Option<PathBuf>,
    /// Read timeout.
    pub timeout: Duration,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Emulated link between the parties (applied on the client's side).
    pub shaping: Option<pi_protocol::channel::Shaping>,
}

/// One inference as reported.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceRecord {
    pub index: usize,
    pub label: Option<u8>,
    pub prediction: usize,
    pub offline_s: f64,
    pub online_s: f64,
    pub offline_bytes_sent: u64,
    pub offline_bytes_received: u64,
    pub online_bytes_sent: u64,
    pub online_bytes_received: u64,
    pub online_rounds: usize,
    pub relus: usize,
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
    /// Per conv/linear and ReLU layer, averaged over the inferences: linearized ReLUs cost nothing.
    pub layers: Vec<LayerCost>,
    pub per_inference: Vec<InferenceRecord>,
}

/// Loads images: a dataset directory (its test split), a CIFAR `.bin` batch, or an IDX images file
/// with its labels file beside it (`*-images-idx3-ubyte[.gz]` / `*-labels-idx1-ubyte[.gz]`).
pub fn load_images(path: &Path) -> anyhow::Result<Dataset> {
    if path.is_dir() {
        return Ok(data::load_dir(path, Split::Test)?);
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".bin") {
        return Ok(data::load_cifar_bin(&[path], false)?);
    }
    let labels = path.with_file_name(name.replace("images-idx3", "labels-idx1"));
    anyhow::ensure!(labels != path, "{} is neither a dataset directory, a CIFAR .bin nor an IDX images file", path.display());
    Ok(data::load_idx(path, &labels)?)
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

/// Connects, runs the inferences and builds the report.
pub async fn run(opts: &InferOptions) -> anyhow::Result<Report> {
    let ds = load_images(&opts.data).with_context(|| format!("reading {}", opts.data.display()))?;
    let count = opts.count.min(ds.len());
    let stream = TcpStream::connect(&opts.server).await.with_context(|| format!("connecting to {}", opts.server))?;
    stream.set_nodelay(true)?;
    let mut ch = Channel::new(stream).with_timeout(opts.timeout).with_shaping(opts.shaping);
    let mut session = ClientSession::handshake(&mut ch, opts.expected_hash.as_deref()).await?;
    let public = session.public().clone();
    anyhow::ensure!(
        ds.shape.as_slice() == public.graph.input_shape.as_slice(),
        "images are {:?}, the served model takes {:?}",
        ds.shape,
        public.graph.input_shape
    );
    let reference = match &opts.reference_model {
        Some(p) => {
            let model = format::load(p).with_context(|| format!("loading reference {}", p.display()))?.fold_batchnorm();
            let ring = RingModel::new(&model, public.fp)?;
            Some(Reference { model, ring })
        }
        None => None,
    };
    let bar = indicatif::ProgressBar::new(count as u64);
    if !opts.progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} private inference {pos}/{len} [{elapsed}] {wide_bar} {msg}")
            .expect("template"),
    );
    let mut records = Vec::with_capacity(count);
    let mut layers: Vec<LayerCost> = Vec::new();
    for i in 0..count {
        let x = ds.image(i);
        let r: InferenceResult = session.infer(&mut ch, x).await.with_context(|| format!("inference {i}"))?;
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
            offline_s: r.offline.as_secs_f64(),
            online_s: r.online.as_secs_f64(),
            offline_bytes_sent: r.offline_bytes.sent,
            offline_bytes_received: r.offline_bytes.received,
            online_bytes_sent: r.online_bytes.sent,
            online_bytes_received: r.online_bytes.received,
            online_rounds: r.online_rounds,
            relus: r.relus,
            prediction_f32,
            agrees_fixed_point,
            max_logit_error,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    session.close(&mut ch).await?;
    Ok(summarise(&opts.server, &public.hash, records, layers))
}

/// Adds one inference's per-layer costs, divided by the number of inferences, into the average.
fn accumulate_layers(avg: &mut Vec<LayerCost>, one: &[LayerCost], count: usize) {
    if avg.is_empty() {
        *avg = one.iter().map(|l| LayerCost { offline_bytes: 0, online_bytes: 0, offline_s: 0.0, online_s: 0.0, ..l.clone() }).collect();
    }
    let n = count.max(1);
    for (a, l) in avg.iter_mut().zip(one) {
        a.offline_bytes += l.offline_bytes / n as u64;
        a.online_bytes += l.online_bytes / n as u64;
        a.offline_s += l.offline_s / n as f64;
        a.online_s += l.online_s / n as f64;
    }
}

fn summarise(server: &str, hash: &str, records: Vec<InferenceRecord>, layers: Vec<LayerCost>) -> Report {
    let n = records.len().max(1) as f64;
    let frac = |f: &dyn Fn(&InferenceRecord) -> Option<bool>| -> Option<f64> {
        let v: Vec<bool> = records.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64)
    };
    let avg = |f: &dyn Fn(&InferenceRecord) -> u64| -> u64 { (records.iter().map(f).sum::<u64>() as f64 / n).round() as u64 };
    let offline: Vec<f64> = records.iter().map(|r| r.offline_s).collect();
    let online: Vec<f64> = records.iter().map(|r| r.online_s).collect();
    Report {
        server: server.to_string(),
        model_hash: hash.to_string(),
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
        layers,
        per_inference: records,
    }
}

/// Per-layer table: what each conv/linear and ReLU layer cost (linearized ReLUs cost nothing).
pub fn print_layers(r: &Report) {
    println!("{:<22} {:<7} {:>15} {:>12} {:>12} {:>12} {:>6}", "layer", "kind", "ReLUs kept/all", "offline MB", "online KB", "online ms", "round");
    for l in &r.layers {
        let relus = if l.kind == "relu" { format!("{}/{}", l.relus_kept, l.relus_total) } else { String::new() };
        println!(
            "{:<22} {:<7} {:>15} {:>12.3} {:>12.1} {:>12.2} {:>6}",
            l.node,
            l.kind,
            relus,
            l.offline_bytes as f64 / 1e6,
            l.online_bytes as f64 / 1e3,
            1e3 * l.online_s,
            if l.online_round { "yes" } else { "-" }
        );
    }
}

/// Human-readable summary table.
pub fn print_report(r: &Report) {
    let pct = |v: Option<f64>| v.map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into());
    let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
    println!("server {}  model {}", r.server, r.model_hash.get(..16).unwrap_or(&r.model_hash));
    println!("{:<34} {}", "inferences", r.inferences);
    println!("{:<34} {}", "garbled ReLUs per inference", r.relus);
    println!("{:<34} {}", "online rounds per inference", r.online_rounds);
    println!("{:<34} p50 {:.3} s   p95 {:.3} s", "offline latency", r.offline_s_p50, r.offline_s_p95);
    println!("{:<34} p50 {:.3} s   p95 {:.3} s", "online latency", r.online_s_p50, r.online_s_p95);
    println!(
        "{:<34} {} (client sent {}, received {})",
        "offline bytes per inference",
        mb(r.offline_bytes),
        mb(r.offline_bytes_sent),
        mb(r.offline_bytes_received)
    );
    println!(
        "{:<34} {} (client sent {}, received {})",
        "online bytes per inference",
        mb(r.online_bytes),
        mb(r.online_bytes_sent),
        mb(r.online_bytes_received)
    );
    println!("{:<34} {}", "accuracy under PI", pct(r.accuracy_pi));
    println!("{:<34} {}", "accuracy plaintext f32", pct(r.accuracy_f32));
    println!("{:<34} {}", "agreement with fixed-point engine", pct(r.agreement_fixed_point));
}
