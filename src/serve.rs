//! `pi serve`, `pi infer` and `pi demo`: the two parties over TCP.

use pi_channel::Link;
use pi_client::{ClientOptions, ClientTransport, Report};
use pi_model::FixedPoint;
use pi_server::{
    Calibration, FracBits, Limits, Overlap, PrepareOptions, ReluBits, SaltSource, Server, ServerOptions,
    ServerTransport, SignBits, SignBitsChoice, Truncation,
};
use pi_tls::{Fingerprint, ServerTrust, TlsClient, TlsServer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How `pi serve` secures its connections.
#[derive(clap::Args, Clone)]
pub struct ServeTls {
    /// The server's certificate chain (PEM, its own certificate first). Without --tls-cert and
    /// --tls-key the server makes a self-signed certificate at start and prints its SHA-256
    /// fingerprint (`tls certificate sha256 <hex>`) for clients to pin with --tls-fingerprint.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve bare TCP without TLS: anyone on the path can read and alter every message undetected.
    /// For loopback benchmarks; clients must pass --plaintext too.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    plaintext: bool,
}

impl ServeTls {
    fn transport(&self) -> anyhow::Result<ServerTransport> {
        if self.plaintext {
            return Ok(ServerTransport::Plaintext);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsServer::from_pem_files(cert, key)?,
            _ => TlsServer::self_signed()?,
        };
        Ok(ServerTransport::Tls(Arc::new(tls)))
    }
}

/// How `pi infer` trusts the server (exactly one is required).
#[derive(clap::Args, Clone)]
#[group(required = true, multiple = false)]
pub struct InferTls {
    /// Trust exactly the server certificate with this SHA-256 fingerprint: the hex that `pi serve`
    /// prints as `tls certificate sha256 <hex>` (colons between bytes are fine).
    #[arg(long, value_name = "HEX", value_parser = parse_fingerprint)]
    tls_fingerprint: Option<Fingerprint>,
    /// Trust a server certificate that names the --server host and chains to a CA in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Connect without TLS, to a server started with --plaintext.
    #[arg(long)]
    plaintext: bool,
}

fn parse_fingerprint(s: &str) -> Result<Fingerprint, String> {
    s.parse().map_err(|e: pi_tls::TlsError| e.to_string())
}

impl InferTls {
    fn transport(&self) -> anyhow::Result<ClientTransport> {
        let trust = match (&self.tls_fingerprint, &self.tls_ca) {
            (Some(fp), _) => ServerTrust::Pinned(*fp),
            (None, Some(ca)) => ServerTrust::CaFile(ca.clone()),
            (None, None) => return Ok(ClientTransport::Plaintext),
        };
        Ok(ClientTransport::Tls(Arc::new(TlsClient::new(trust)?)))
    }
}

/// Fixed-point and circuit options shared by `serve` and `demo`.
#[derive(clap::Args, Clone)]
pub struct ModelOptions {
    /// Ring width l (shares live in Z_{2^l}; at most 61 for the HE parameters).
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Fractional bits f of activations and weights: a number, or `auto`: the fewest (down to 6)
    /// at which the fixed-point engine still gives the f32 engine's top-1 and logits within 1% of
    /// their range on every calibration image (needs --calibrate; checked for every f on the way
    /// down). Each bit less is one input bit less per party in every garbled ReLU: fewer bytes and
    /// AND gates, online and offline.
    #[arg(long, default_value_t = FracBits::Fixed(FixedPoint::DEFAULT.f))]
    frac_bits: FracBits,
    /// Garbled ReLU input width: `auto` (calibrated per layer + margin), `full` (l bits) or a number.
    #[arg(long, default_value = "auto")]
    relu_bits: ReluBits,
    /// Headroom bits added to calibrated widths.
    #[arg(long, default_value_t = 4)]
    margin_bits: u32,
    /// Dataset directory whose training images size `--relu-bits auto` circuits (the first 64) and
    /// check them (the next 64, held out: the log says how many activations would wrap). Without
    /// it `auto` falls back to `full`.
    #[arg(long, value_name = "DIR")]
    calibrate: Option<PathBuf>,
    /// MiB of memory for kernel plaintexts kept NTT-transformed between inferences (HE then only
    /// multiplies). Layers are cached in order until the budget is spent; the others transform
    /// theirs per inference. ResNet-18 needs 3,931 MiB for all layers, the bundled model 9.
    #[arg(long, default_value_t = pi_server::DEFAULT_HE_CACHE_BYTES >> 20)]
    he_cache_mib: usize,
    /// How shares are rescaled after products and at linearized neurons. `local`: each party
    /// shifts its own share (free; the result is off by one unit with a probability set by the
    /// client's share, which lets a client correlate repeated queries, see docs/security.md); kept
    /// ReLUs that rescale then read only the shares' bits above f (a circuit f bits narrower, with
    /// the same off-by-one). `exact`: a small garbled circuit per truncated value (13 ANDs at
    /// f = 12) gives exactly the fixed-point engine's result, and kept ReLUs read their full width;
    /// it costs bytes and one more round trip per rescaled output.
    #[arg(long, default_value_t = Truncation::Local)]
    truncation: Truncation,
    /// How many top bits of each share decide a kept ReLU's sign. `all` (default): every bit of the
    /// circuit's width, exactly relu. A number m (14 keeps every prediction of models/family/): the
    /// server sends m labels and 8 bytes per ReLU online instead of one 16-byte label per bit of
    /// the width (about 20-29 bits), and a positive input below 2^(k - m) units may come out as 0
    /// (Circa's stochastic ReLU; see docs/gc.md). `auto`: the fewest m from 16 down to 8 at which
    /// the fixed-point engine, every such input zeroed, keeps its predictions on the calibration
    /// images. Needs calibrated widths (--calibrate) and `--truncation local`.
    #[arg(long, default_value_t = SignBitsChoice::Fixed(SignBits::All), value_name = "all|M|auto")]
    sign_bits: SignBitsChoice,
    /// `on`: a convolution that follows garbled ReLUs starts on the linearized neurons while the
    /// client evaluates the kept ones, whose part is added when their results arrive (same
    /// result; the kernels are kept transposed too, 4 bytes per weight: 45 MB for ResNet-18).
    /// Helps when the parties have their own cores (ResNet-18 at 10% on an emulated LAN: online
    /// 1.10-1.12x); hurts when both share two cores over loopback (0.74-0.93x).
    #[arg(long, default_value_t = Overlap::Off)]
    overlap: Overlap,
}

impl ModelOptions {
    pub fn prepare(&self) -> PrepareOptions {
        PrepareOptions {
            ring_bits: self.ring_bits,
            frac_bits: self.frac_bits,
            relu_bits: self.relu_bits.clone(),
            margin_bits: self.margin_bits,
            calibration: self.calibrate.clone().map_or(Calibration::None, Calibration::Dataset),
            // `pi serve` keeps its salt in a file; the demo and benchmarks use a fresh one.
            salt: SaltSource::Fresh,
            he_cache_bytes: self.he_cache_mib.saturating_mul(1 << 20),
            truncation: self.truncation,
            sign_bits: self.sign_bits,
            overlap: self.overlap,
        }
    }
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model file to serve (.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    #[command(flatten)]
    options: ModelOptions,
    /// Seconds to wait for any message from a client before ending its session.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Largest accepted frame, in MiB.
    #[arg(long, default_value_t = 64)]
    max_frame_mib: usize,
    /// Sessions served at once; more clients are refused with "server busy".
    #[arg(long, default_value_t = 32)]
    max_sessions: usize,
    /// Memory budget of the whole server, in MiB: the session limit becomes the smaller of
    /// --max-sessions and what fits beside the prepared model (its resident memory at start) at
    /// the most one session can hold (estimated from the model and logged). A budget that holds
    /// no session is refused at start.
    #[arg(long, value_name = "MIB")]
    max_memory: Option<usize>,
    /// Inferences one session may request.
    #[arg(long, default_value_t = 10_000)]
    max_inferences: usize,
    /// Seconds a client has from connecting to the end of the handshake; past it the session ends
    /// and its slot is freed, however steadily the client trickles bytes.
    #[arg(long, default_value_t = 60)]
    handshake_secs: u64,
    /// Seconds one inference (offline and online) may take before the session ends.
    #[arg(long, default_value_t = 600)]
    inference_secs: u64,
    /// The secret salt of the model commitment announced to clients, 64 hex digits (default:
    /// MODEL.salt beside the model, created from OS randomness on first use). The same salt gives
    /// the same commitment at every start; publish it out of band for `pi infer --expect-hash`.
    #[arg(long, value_name = "FILE")]
    salt_file: Option<PathBuf>,
    #[command(flatten)]
    tls: ServeTls,
}

pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    let max_frame = a
        .max_frame_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| anyhow::anyhow!("--max-frame-mib {} is beyond any frame size", a.max_frame_mib))?;
    let mut limits = Limits {
        max_frame,
        read_timeout: Duration::from_secs(a.timeout_secs),
        max_sessions: a.max_sessions,
        max_inferences_per_session: a.max_inferences,
        handshake_deadline: Duration::from_secs(a.handshake_secs),
        inference_deadline: Duration::from_secs(a.inference_secs),
    };
    // Settings that would make every session fail stop the server before the model is prepared.
    limits.validate()?;
    let transport = a.tls.transport()?;
    let salt_file = a.salt_file.clone().unwrap_or_else(|| pi_server::default_salt_path(&a.model));
    let options = PrepareOptions { salt: SaltSource::File(salt_file), ..a.options.prepare() };
    let model = pi_server::prepare(&a.model, &options)?;
    if let Some(mib) = a.max_memory {
        let budget =
            mib.checked_mul(1 << 20).ok_or_else(|| anyhow::anyhow!("--max-memory {mib} is beyond any memory"))?;
        let plan = pi_server::MemoryPlan::new(budget, &model)?;
        limits.max_sessions = limits.max_sessions.min(plan.sessions);
        tracing::info!(
            resident_mib = plan.resident >> 20,
            per_session_mib = format!("{:.1}", plan.per_session as f64 / (1 << 20) as f64),
            sessions = limits.max_sessions,
            "memory budget {mib} MiB: at most {} sessions at once",
            limits.max_sessions
        );
    }
    runtime()?.block_on(async {
        let server = Server::bind(model, &ServerOptions { listen: a.listen.clone(), limits, transport }).await?;
        println!("listening on {}", server.local_addr());
        match server.fingerprint() {
            Some(fp) => println!("tls certificate sha256 {fp}"),
            None => println!("plaintext: no TLS, messages cross the network unprotected"),
        }
        println!("model commitment {}", server.model().public.hash);
        let m = server.model();
        let sessions = m.session_inferences().min(a.max_inferences);
        tracing::info!(
            distance_per_inference_log2 = format!("{:.1}", m.distance_per_inference_log2()),
            session_inferences = sessions,
            "statistical budget: HE replies within 2^-{} per session; a session ends after {sessions} inferences",
            pi_inference::server::SESSION_STAT_SEC
        );
        let (cached, all) = server.model().he_cache_bytes();
        tracing::info!(
            relus = server.model().public.kept_relus(),
            he_cache_mib = cached >> 20,
            he_cache_all_layers_mib = all >> 20,
            "serving {}",
            a.model.display()
        );
        server.run().await;
        Ok(())
    })
}

/// A `--net` value: no emulation (`none`) or an emulated link.
#[derive(Clone, Copy, Debug)]
pub struct Net(pub Option<Link>);

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        Link::parse_net(s).map(Net)
    }
}

/// An emulated network link, to measure LAN/WAN figures on one machine.
#[derive(clap::Args, Clone)]
pub struct LinkOptions {
    /// Emulated network: none, lan (1 Gbit/s, 0.5 ms RTT), wan (100 Mbit/s, 40 ms RTT) or RATE,RTT
    /// (e.g. 10mbit,80ms). Transmission overlaps computation, as on a real wire.
    #[arg(long, value_parser = Net::parse, conflicts_with_all = ["bandwidth", "rtt_ms"])]
    net: Option<Net>,
    /// Emulated bandwidth, e.g. 1gbit, 100mbit (default: the real link, unshaped).
    #[arg(long, value_parser = Link::parse_bandwidth)]
    bandwidth: Option<f64>,
    /// Emulated round-trip time in milliseconds (with or without --bandwidth).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
}

impl LinkOptions {
    fn link(&self) -> anyhow::Result<Option<Link>> {
        if let Some(net) = &self.net {
            return Ok(net.0);
        }
        if self.bandwidth.is_none() && self.rtt_ms <= 0.0 {
            return Ok(None);
        }
        let rtt = Duration::try_from_secs_f64(self.rtt_ms.max(0.0) / 1e3)
            .map_err(|_| anyhow::anyhow!("bad --rtt-ms {}", self.rtt_ms))?;
        Ok(Some(Link::new(self.bandwidth.unwrap_or(f64::INFINITY), rtt).map_err(anyhow::Error::msg)?))
    }
}

#[derive(clap::Args)]
pub struct InferArgs {
    /// Server address HOST:PORT.
    #[arg(long)]
    server: String,
    /// Images: a dataset directory (test split), a CIFAR .bin batch, or an IDX images file.
    #[arg(long)]
    data: PathBuf,
    /// Number of images to classify.
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Refuse the server unless it announces this model commitment: the hex `pi serve` prints as
    /// `model commitment <hex>` (and `pi inspect` beside the model's salt file), obtained out of band.
    #[arg(long)]
    expect_hash: Option<String>,
    /// The plaintext model, for reference figures (f32 accuracy, fixed-point agreement); a real
    /// client does not have it.
    #[arg(long)]
    reference_model: Option<PathBuf>,
    /// Seconds to wait for any message from the server.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[command(flatten)]
    tls: InferTls,
    #[command(flatten)]
    link: LinkOptions,
    /// Also write the logits decoded under private inference to FILE.npy (float32,
    /// [images, classes]), for numpy: `numpy.load(FILE)`.
    #[arg(long, value_name = "FILE.npy")]
    logits: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn infer(a: &InferArgs) -> anyhow::Result<()> {
    let opts = pi_client::InferOptions {
        server: a.server.clone(),
        data: a.data.clone(),
        count: a.count,
        reference_model: a.reference_model.clone(),
        connection: ClientOptions {
            transport: a.tls.transport()?,
            expected_hash: a.expect_hash.clone(),
            timeout: Duration::from_secs(a.timeout_secs),
            link: a.link.link()?,
        },
    };
    let report = runtime()?.block_on(run_client(&opts, !a.json))?;
    if let Some(path) = &a.logits {
        let rows: Vec<Vec<f32>> = report.per_inference.iter().map(|r| r.logits.clone()).collect();
        crate::npy::write_logits(path, &rows)?;
    }
    emit(&report, a.json)
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Model to serve (default: the bundled linearized small CNN).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images (default: the bundled Fashion-MNIST test images).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of images to classify privately.
    #[arg(long, default_value_t = 20)]
    count: usize,
    #[command(flatten)]
    options: ModelOptions,
    #[command(flatten)]
    link: LinkOptions,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// The bundled model and data, found relative to the source tree.
fn bundled(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn demo(a: &DemoArgs) -> anyhow::Result<()> {
    let model_path = a.model.clone().unwrap_or_else(|| bundled("models/small-cnn-fmnist.safetensors"));
    let data = a.data.clone().unwrap_or_else(|| bundled("data/fashion-mnist"));
    let mut options = a.options.prepare();
    if options.calibration == Calibration::None && data.is_dir() {
        options.calibration = Calibration::Dataset(data.clone());
    }
    let model = pi_server::prepare(&model_path, &options)?;
    runtime()?.block_on(async {
        // The demo's client pins its own server's fresh self-signed certificate.
        let tls = Arc::new(TlsServer::self_signed()?);
        let pinned = ClientTransport::pinned(tls.fingerprint())?;
        let server = Server::bind(model, &ServerOptions::new("127.0.0.1:0", ServerTransport::Tls(tls))).await?;
        let addr = server.local_addr();
        let (hash, relus) = (server.model().public.hash.clone(), server.model().public.kept_relus());
        if !a.json {
            eprintln!("server on {addr} serving {} ({relus} garbled ReLUs per inference)", model_path.display());
        }
        let server = tokio::spawn(server.run());
        let opts = pi_client::InferOptions {
            server: addr.to_string(),
            data,
            count: a.count,
            reference_model: Some(model_path.clone()),
            connection: ClientOptions { expected_hash: Some(hash), link: a.link.link()?, ..ClientOptions::new(pinned) },
        };
        let report = run_client(&opts, !a.json).await;
        server.abort();
        emit(&report?, a.json)
    })
}

/// Runs the client over a dataset with a progress bar on stderr (unless `show` is false).
async fn run_client(opts: &pi_client::InferOptions, show: bool) -> anyhow::Result<Report> {
    let bar = indicatif::ProgressBar::new(opts.count as u64);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} private inference {pos}/{len} [{elapsed}] {wide_bar} {msg}")
            .expect("template"),
    );
    let report = pi_client::run(opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await;
    bar.finish_and_clear();
    Ok(report?)
}

fn emit(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        print_layers(r);
        println!();
        print_report(r);
    }
    Ok(())
}

/// Per-layer table: what each conv/linear and ReLU layer cost (linearized ReLUs cost nothing).
pub fn print_layers(r: &Report) {
    println!(
        "{:<22} {:<7} {:>15} {:>12} {:>12} {:>12} {:>6}",
        "layer", "kind", "ReLUs kept/all", "offline MB", "online KB", "online ms", "round"
    );
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
    println!("server {} ({})  model {}", r.server, r.transport, r.model_hash.get(..16).unwrap_or(&r.model_hash));
    println!("{:<34} {}", "inferences", r.inferences);
    println!("{:<34} {}", "garbled ReLUs per inference", r.relus);
    println!("{:<34} {} ({} values in garbled circuits)", "truncation", r.truncation, r.truncations);
    println!("{:<34} {}", "ReLU sign bits", r.sign_bits);
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
