//! End-to-end private inference, measured: the server and the client run as separate tasks over a
//! real loopback TCP connection, optionally through an emulated link ([`pi_channel::Link`]), and
//! every figure comes from the parties' own clocks and byte counters.
//!
//! Per point: offline, online and total latency (median, min, max over the repeats), bytes per
//! phase and direction, online rounds, and a per-layer split of the time into HE, garbling + OT,
//! online plaintext linear work, online garbled evaluation and waiting on the link. Across points: a
//! least-squares line `latency = intercept + per_relu * relus` per phase ([`crate::fit`]).

use crate::BenchError;
use crate::fit::{LineFit, fit_line};
use crate::svg::{Panel, Series, Style};
use pi_channel::{Channel, Link};
use pi_client::{Client, ClientOptions, ClientTransport};
use pi_inference::{InferenceResult, ServedModel, ServerInferenceStats, ServerSession, SignBits, Truncation};
use pi_model::{Granularity, Model, Op, ValidGraph, arch};
use pi_server::{Calibration, PrepareOptions};
use pi_tls::TlsServer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How every point is measured.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// Emulated link on the client's connection (`None`: plain loopback).
    pub net: Option<Link>,
    /// Private inferences per point (one session; each inference has its own offline phase).
    pub repeat: usize,
    /// How the server prepares each model (fixed point, circuit widths).
    pub prepare: PrepareOptions,
    /// Longest wait for any message.
    pub timeout: Duration,
    /// Seed of the input image (and of generated weights and masks).
    pub seed: u64,
    /// Bare TCP (the default: the protocol's own cost) or TLS 1.3 (to measure what TLS adds).
    pub transport: Transport,
}

impl Default for E2eOptions {
    fn default() -> Self {
        Self {
            net: None,
            repeat: 3,
            // The measured images are random: size the circuits on inputs drawn alike.
            prepare: PrepareOptions { calibration: Calibration::RandomInputs, ..PrepareOptions::default() },
            timeout: Duration::from_secs(600),
            seed: 0,
            transport: Transport::Plaintext,
        }
    }
}

/// How the benchmark's connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Bare TCP.
    #[default]
    Plaintext,
    /// TLS 1.3 with a self-signed certificate the client pins, as `pi serve` does by default.
    Tls,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plaintext" => Ok(Transport::Plaintext),
            "tls" => Ok(Transport::Tls),
            _ => Err(format!("expected plaintext or tls, got {s:?}")),
        }
    }
}

/// Median, minimum and maximum of a measured quantity over the repeats.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Stat {
        if v.is_empty() {
            return Stat::default();
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let m = s.len() / 2;
        let median = if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 };
        Stat { median, min: s[0], max: s[s.len() - 1] }
    }
}

/// Bytes of one phase, per direction (headers included), per inference.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Bytes {
    pub client_to_server: u64,
    pub server_to_client: u64,
    pub total: u64,
}

/// Where one phase's time went, summed over the layers (mean over the repeats, seconds).
///
/// A layer's compute is the wall time of its step minus the time the party spent blocked on the
/// channel, for each party. Its link time is the layer's wall time that neither party spent
/// computing: `max(0, wall - client compute - server compute)`. Where the two parties compute at the
/// same time (the garbler streams tables while the client works), compute can exceed wall time and
/// link time is then a lower bound. `other_s` is the phase's wall time outside every layer (input
/// and logits messages, local steps), or negative when parties overlapped.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Breakdown {
    pub wall_s: f64,
    /// Offline: HE for conv/linear layers (client encrypt/decrypt + server evaluation).
    pub he_s: f64,
    /// Offline: garbling, table transfer handling and OT for ReLU layers (both parties).
    pub gc_ot_s: f64,
    /// Online: the server's plaintext ring arithmetic for conv/linear layers.
    pub linear_s: f64,
    /// Online: label transfer handling and garbled evaluation of ReLU layers (both parties).
    pub gc_eval_s: f64,
    /// Waiting on the link (transfer time and latency no computation covered).
    pub link_s: f64,
    pub other_s: f64,
}

/// One conv/linear or ReLU node's share of the time and bytes (mean over the repeats).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LayerBreakdown {
    pub node: String,
    pub kind: String,
    pub relus_total: usize,
    pub relus_kept: usize,
    pub offline_bytes: u64,
    pub online_bytes: u64,
    pub offline: Breakdown,
    pub online: Breakdown,
}

/// Everything measured for one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointReport {
    /// The model file, or `ARCH@RELUS` for a generated one.
    pub label: String,
    pub model_hash: String,
    /// Surviving (garbled) ReLUs, and all ReLU positions of the architecture.
    pub relus: usize,
    pub relus_total: usize,
    pub repeat: usize,
    /// `plaintext` or `tls`: bytes are the protocol's frames either way (TLS records add about
    /// 22 bytes per 16 KiB and a handshake of a few KB to the setup).
    pub transport: Transport,
    pub offline_s: Stat,
    pub online_s: Stat,
    pub total_s: Stat,
    pub offline_bytes: Bytes,
    pub online_bytes: Bytes,
    pub online_rounds: usize,
    /// How shares were rescaled (`--truncation`), and how many values garbled circuits truncated
    /// exactly per inference (0 with `local`).
    #[serde(default)]
    pub truncation: Truncation,
    #[serde(default)]
    pub truncations: usize,
    /// How kept ReLUs read the sign (`--sign-bits`: `all`, or the top bits' count).
    #[serde(default)]
    pub sign_bits: SignBits,
    /// Fractional bits of the fixed-point encoding (`--frac-bits`; with `auto`, the chosen one).
    #[serde(default)]
    pub frac_bits: u32,
    /// Once per session, before any inference: HE keys and base OTs.
    pub setup_s: f64,
    pub setup_bytes: u64,
    pub offline: Breakdown,
    pub online: Breakdown,
    pub layers: Vec<LayerBreakdown>,
}

/// Least-squares lines across the points, per phase (`None` with fewer than two ReLU counts).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fits {
    pub offline: Option<LineFit>,
    pub online: Option<LineFit>,
    pub total: Option<LineFit>,
}

/// The link the points were measured on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NetReport {
    /// `none`, `lan`, `wan` or `RATE,RTT`.
    pub name: String,
    pub bandwidth_bps: Option<f64>,
    pub rtt_ms: Option<f64>,
}

impl NetReport {
    pub fn of(net: Option<Link>) -> NetReport {
        match net {
            None => NetReport { name: "none".into(), bandwidth_bps: None, rtt_ms: None },
            Some(l) => NetReport {
                name: l.name(),
                bandwidth_bps: Some(l.bandwidth_bps()),
                rtt_ms: Some(l.rtt().as_secs_f64() * 1e3),
            },
        }
    }
}

/// Report of `pi bench e2e`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2eReport {
    pub net: NetReport,
    pub repeat: usize,
    pub points: Vec<PointReport>,
    pub fit: Fits,
}

/// A model of architecture `arch` with random weights and exactly `relus` surviving ReLUs, spread
/// over the ReLU layers in proportion to their sizes (every layer keeps the same fraction, rounded
/// by largest remainder), at random positions within each layer. The costs depend on how many ReLUs
/// survive per layer, not on which ones, so random positions measure what a learned mask costs.
pub fn model_with_relus(arch_name: &str, classes: usize, relus: usize, seed: u64) -> Result<Model, BenchError> {
    let graph = arch::build(arch_name, classes).map_err(|e| BenchError::Params(e.to_string()))?;
    let mut model = Model::random(graph, seed, None).map_err(|e| BenchError::Params(e.to_string()))?;
    let sites: Vec<(String, usize)> = relu_sites(&model.graph)?;
    let total: usize = sites.iter().map(|s| s.1).sum();
    if relus > total {
        return Err(BenchError::Params(format!("{arch_name} has {total} ReLUs, cannot keep {relus}")));
    }
    // Largest-remainder apportionment of `relus` over the layers.
    let quotas: Vec<f64> = sites.iter().map(|s| relus as f64 * s.1 as f64 / total.max(1) as f64).collect();
    let mut kept: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by(|&a, &b| (quotas[b] - quotas[b].floor()).total_cmp(&(quotas[a] - quotas[a].floor())));
    let short = relus - kept.iter().sum::<usize>();
    for &i in order.iter().take(short) {
        kept[i] += 1;
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6d61_736b);
    for ((node, n), k) in sites.iter().zip(kept) {
        let mask = model
            .tensors
            .get_mut(&format!("{node}.mask"))
            .ok_or_else(|| BenchError::Params(format!("ReLU {node} has no mask")))?;
        let mut idx: Vec<usize> = (0..*n).collect();
        idx.shuffle(&mut rng);
        let flat = mask.as_slice_mut().ok_or_else(|| BenchError::Params(format!("mask {node} not contiguous")))?;
        flat.iter_mut().for_each(|v| *v = 0.0);
        idx[..k].iter().for_each(|&i| flat[i] = 1.0);
    }
    debug_assert_eq!(model.kept_relus(), relus);
    Ok(model)
}

/// ReLU nodes and their element counts ([`ValidGraph::relu_sites`]); pixel masks only.
fn relu_sites(graph: &ValidGraph) -> Result<Vec<(String, usize)>, BenchError> {
    if let Some(n) = graph.nodes.iter().find(|n| matches!(n.op, Op::Relu { granularity: Granularity::Channel })) {
        return Err(BenchError::Params(format!("ReLU {} has channel masks; --relus spreads pixel masks", n.name)));
    }
    Ok(graph.relu_sites())
}

/// One measured session: the client's results and the server's stats per inference.
pub(crate) struct Session {
    hash: String,
    truncation: Truncation,
    sign_bits: SignBits,
    frac_bits: u32,
    transport: Transport,
    setup_s: f64,
    setup_bytes: u64,
    pub(crate) client: Vec<InferenceResult>,
    server: Vec<ServerInferenceStats>,
}

/// Runs one private inference per image on `served` in one session: server and client as separate
/// tasks over loopback TCP, the client's connection through `opts.net` when given.
/// `progress(done)` is called after each inference.
pub(crate) async fn session_images(
    served: ServedModel,
    images: &[Vec<f32>],
    opts: &E2eOptions,
    mut progress: impl FnMut(usize),
) -> Result<Session, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let served = Arc::new(served);
    let (truncation, sign_bits) = (served.public.truncation, served.public.sign_bits);
    let frac_bits = served.public.fp.f;
    let timeout = opts.timeout;
    let (tls_server, client_transport) = match opts.transport {
        Transport::Plaintext => (None, ClientTransport::Plaintext),
        Transport::Tls => {
            let tls = TlsServer::self_signed()?;
            let pinned = ClientTransport::pinned(tls.fingerprint())?;
            (Some(tls), pinned)
        }
    };
    // A session runs at most `session_inferences` (the statistical budget of the HE replies); the
    // client opens as many sessions as the images need, one after the other.
    let sessions = images.len().div_ceil(served.session_inferences()).max(1);
    let server = tokio::spawn(async move {
        let mut stats = Vec::new();
        for _ in 0..sessions {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let ch = match &tls_server {
                None => Channel::new(stream),
                Some(tls) => Channel::new(tls.accept(stream).await?),
            };
            let mut ch = ch.with_timeout(timeout);
            let mut session = ServerSession::handshake(&mut ch, served.clone(), usize::MAX).await?;
            while session.next_request(&mut ch).await?.is_some() {
                stats.push(session.serve_inference(&mut ch).await?);
            }
        }
        Ok::<_, BenchError>(stats)
    });
    let copts = ClientOptions { expected_hash: None, timeout, link: opts.net, transport: client_transport };
    let t0 = std::time::Instant::now();
    let client_side = async {
        let mut client = Client::connect(&addr, &copts).await?;
        let setup_s = t0.elapsed().as_secs_f64();
        let setup_bytes = client.counters().total();
        let hash = client.public().hash.clone();
        let mut results = Vec::with_capacity(images.len());
        for image in images {
            if client.remaining_inferences() == 0 {
                client.close().await?;
                client = Client::connect(&addr, &copts).await?;
            }
            results.push(client.infer(image).await?.costs);
            progress(results.len());
        }
        client.close().await?;
        Ok::<_, BenchError>((hash, setup_s, setup_bytes, results))
    };
    let client_result = client_side.await;
    let server_result = match client_result {
        Ok(_) => server.await.map_err(|e| BenchError::Params(format!("server task: {e}")))?,
        Err(_) => {
            server.abort();
            Ok(Vec::new())
        }
    };
    let (hash, setup_s, setup_bytes, client) = client_result?;
    Ok(Session {
        hash,
        truncation,
        sign_bits,
        frac_bits,
        transport: opts.transport,
        setup_s,
        setup_bytes,
        client,
        server: server_result?,
    })
}

/// Measures one model end to end (`opts.repeat` inferences of one random image in one session);
/// `progress(done)` is called after each inference.
pub async fn measure(
    model: &Model,
    label: &str,
    opts: &E2eOptions,
    progress: impl FnMut(usize),
) -> Result<PointReport, BenchError> {
    if opts.repeat == 0 {
        return Err(BenchError::Params("--repeat must be at least 1".into()));
    }
    let served = pi_server::prepare_model(model, &opts.prepare).map_err(|e| BenchError::Params(e.to_string()))?;
    let n: usize = model.graph.input_shape.iter().product();
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    let image: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let images = vec![image; opts.repeat];
    let s = session_images(served, &images, opts, progress).await?;
    Ok(summarise(label, model, s))
}

pub(crate) fn summarise(label: &str, model: &Model, s: Session) -> PointReport {
    let reps = s.client.len().max(1) as f64;
    let off: Vec<f64> = s.client.iter().map(|r| r.offline.as_secs_f64()).collect();
    let on: Vec<f64> = s.client.iter().map(|r| r.online.as_secs_f64()).collect();
    let tot: Vec<f64> = off.iter().zip(&on).map(|(a, b)| a + b).collect();
    let bytes = |f: &dyn Fn(&InferenceResult) -> (u64, u64)| {
        let (up, down) = s.client.iter().map(f).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let (up, down) = ((up as f64 / reps).round() as u64, (down as f64 / reps).round() as u64);
        Bytes { client_to_server: up, server_to_client: down, total: up + down }
    };
    let mut layers: Vec<LayerBreakdown> = Vec::new();
    let (mut offline, mut online) = (Breakdown::default(), Breakdown::default());
    for (c, sv) in s.client.iter().zip(&s.server) {
        let one = layer_breakdown(c, sv);
        if layers.is_empty() {
            layers = one
                .iter()
                .map(|l| LayerBreakdown { node: l.node.clone(), kind: l.kind.clone(), ..Default::default() })
                .collect();
        }
        for (acc, l) in layers.iter_mut().zip(&one) {
            acc.relus_total = l.relus_total;
            acc.relus_kept = l.relus_kept;
            acc.offline_bytes += l.offline_bytes;
            acc.online_bytes += l.online_bytes;
            add(&mut acc.offline, &l.offline, 1.0 / reps);
            add(&mut acc.online, &l.online, 1.0 / reps);
        }
        let (mut o, mut n) = (Breakdown::default(), Breakdown::default());
        one.iter().for_each(|l| {
            add(&mut o, &l.offline, 1.0);
            add(&mut n, &l.online, 1.0);
        });
        o.other_s = c.offline.as_secs_f64() - o.wall_s;
        o.wall_s = c.offline.as_secs_f64();
        n.other_s = c.online.as_secs_f64() - n.wall_s;
        n.wall_s = c.online.as_secs_f64();
        add(&mut offline, &o, 1.0 / reps);
        add(&mut online, &n, 1.0 / reps);
    }
    let k = s.client.len().max(1) as u64;
    layers.iter_mut().for_each(|l| {
        l.offline_bytes /= k;
        l.online_bytes /= k;
    });
    let relus_total = model.relu_counts().iter().map(|c| c.total).sum();
    PointReport {
        label: label.to_string(),
        model_hash: s.hash,
        relus: model.kept_relus(),
        relus_total,
        repeat: s.client.len(),
        transport: s.transport,
        offline_s: Stat::of(&off),
        online_s: Stat::of(&on),
        total_s: Stat::of(&tot),
        offline_bytes: bytes(&|r| (r.offline_bytes.sent, r.offline_bytes.received)),
        online_bytes: bytes(&|r| (r.online_bytes.sent, r.online_bytes.received)),
        online_rounds: s.client.first().map(|r| r.online_rounds).unwrap_or(0),
        truncation: s.truncation,
        truncations: s.client.first().map(|r| r.truncations).unwrap_or(0),
        sign_bits: s.sign_bits,
        frac_bits: s.frac_bits,
        setup_s: s.setup_s,
        setup_bytes: s.setup_bytes,
        offline,
        online,
        layers,
    }
}

fn add(acc: &mut Breakdown, b: &Breakdown, w: f64) {
    acc.wall_s += b.wall_s * w;
    acc.he_s += b.he_s * w;
    acc.gc_ot_s += b.gc_ot_s * w;
    acc.linear_s += b.linear_s * w;
    acc.gc_eval_s += b.gc_eval_s * w;
    acc.link_s += b.link_s * w;
    acc.other_s += b.other_s * w;
}

/// Splits one inference's per-layer times (both parties' clocks) into the categories of [`Breakdown`].
fn layer_breakdown(c: &InferenceResult, s: &ServerInferenceStats) -> Vec<LayerBreakdown> {
    c.layers
        .iter()
        .map(|l| {
            let sv = s.layers.iter().find(|t| t.node == l.node).cloned().unwrap_or_default();
            let linear = l.kind != "relu";
            // Offline: the client's step spans the exchange (it starts it and ends after the answer).
            let (cc, sc) = ((l.offline_s - l.offline_io_s).max(0.0), (sv.offline_s - sv.offline_io_s).max(0.0));
            let mut offline = Breakdown { wall_s: l.offline_s, ..Default::default() };
            if linear {
                offline.he_s = cc + sc;
            } else {
                offline.gc_ot_s = cc + sc;
            }
            offline.link_s = (l.offline_s - cc - sc).max(0.0);
            // Online: the server walks every layer (ring arithmetic for linear ones; for ReLU layers it
            // sends its labels and waits for the client's evaluated outputs), so its step spans the layer.
            let (cc, sc) = ((l.online_s - l.online_io_s).max(0.0), (sv.online_s - sv.online_io_s).max(0.0));
            let mut online = Breakdown { wall_s: sv.online_s, ..Default::default() };
            if linear {
                online.linear_s = sc;
            } else {
                online.gc_eval_s = cc + sc;
                online.link_s = (sv.online_s - cc - sc).max(0.0);
            }
            LayerBreakdown {
                node: l.node.clone(),
                kind: l.kind.to_string(),
                relus_total: l.relus_total,
                relus_kept: l.relus_kept,
                offline_bytes: l.offline_bytes,
                online_bytes: l.online_bytes,
                offline,
                online,
            }
        })
        .collect()
}

/// Fits a line per phase through the points' medians.
pub fn fits(points: &[PointReport]) -> Fits {
    let line =
        |f: &dyn Fn(&PointReport) -> f64| fit_line(&points.iter().map(|p| (p.relus as f64, f(p))).collect::<Vec<_>>());
    Fits {
        offline: line(&|p| p.offline_s.median),
        online: line(&|p| p.online_s.median),
        total: line(&|p| p.total_s.median),
    }
}

/// The SVG panels: total and offline latency (medians) against surviving ReLUs, and online latency
/// on its own scale, each with its fitted line dashed in the same colour.
pub fn plot(report: &E2eReport, title: &str) -> Vec<Panel> {
    let xmax = report.points.iter().map(|p| p.relus as f64).fold(0.0, f64::max);
    type Phase = (&'static str, fn(&PointReport) -> f64, Option<LineFit>);
    let phases: [Phase; 3] = [
        ("total", |p| p.total_s.median, report.fit.total),
        ("offline", |p| p.offline_s.median, report.fit.offline),
        ("online", |p| p.online_s.median, report.fit.online),
    ];
    let panel = |which: &[usize], name: &str| {
        let mut series = Vec::new();
        for &i in which {
            let (phase, f, fit) = &phases[i];
            let mut s =
                Series::new(*phase, report.points.iter().map(|p| (p.relus as f64, f(p))).collect(), Style::LinePoints);
            s.color = Some(i);
            series.push(s);
            if let Some(fit) = fit {
                let line = vec![(0.0, fit.intercept_s), (xmax, fit.intercept_s + fit.per_relu_s * xmax)];
                let label = format!("fit {:.3} s + {:.2} us/ReLU", fit.intercept_s, fit.per_relu_s * 1e6);
                let mut s = Series::new(format!("{phase} {label}"), line, Style::Dashed);
                s.color = Some(i);
                series.push(s);
            }
        }
        Panel {
            title: format!("{title}: {name} latency, net {}", report.net.name),
            x_label: "surviving ReLUs".into(),
            y_label: "latency (s, median)".into(),
            series,
        }
    };
    vec![panel(&[0, 1], "total and offline"), panel(&[2], "online")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_spread_exactly() {
        let m = model_with_relus("small-cnn", 10, 1234, 3).unwrap();
        assert_eq!(m.kept_relus(), 1234);
        let counts = m.relu_counts();
        let total: usize = counts.iter().map(|c| c.total).sum();
        for c in &counts {
            let want = 1234.0 * c.total as f64 / total as f64;
            assert!((c.kept as f64 - want).abs() < 1.0, "{} keeps {} of {}", c.node, c.kept, c.total);
        }
        assert!(model_with_relus("small-cnn", 10, total + 1, 0).is_err());
        assert_eq!(model_with_relus("small-cnn", 10, 0, 0).unwrap().kept_relus(), 0);
    }

    #[test]
    fn stats_are_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Stat::of(&[4.0]).median, 4.0);
    }
}
