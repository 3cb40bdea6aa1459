//! `pi serve`, `pi infer` and `pi demo`: the two parties over TCP.

use anyhow::Context;
use pi_model::FixedPoint;
use pi_protocol::channel::Shaping;
use pi_server::{Limits, PrepareOptions, ReluBits};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Fixed-point and circuit options shared by `serve` and `demo`.
#[derive(clap::Args, Clone)]
pub struct ModelOptions {
    /// Ring width l (shares live in Z_{2^l}; at most 61 for the HE parameters).
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Fractional bits f of activations and weights.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.f)]
    frac_bits: u32,
    /// Garbled ReLU input width: `auto` (calibrated per layer + margin), `full` (l bits) or a number.
    #[arg(long, default_value = "auto")]
    relu_bits: ReluBits,
    /// Headroom bits added to calibrated widths.
    #[arg(long, default_value_t = 4)]
    margin_bits: u32,
    /// Dataset directory whose training images calibrate `--relu-bits auto` (random inputs otherwise).
    #[arg(long)]
    calibrate: Option<PathBuf>,
}

impl ModelOptions {
    fn prepare(&self) -> PrepareOptions {
        PrepareOptions {
            fp: FixedPoint { l: self.ring_bits, f: self.frac_bits },
            relu_bits: self.relu_bits.clone(),
            margin_bits: self.margin_bits,
            calibrate: self.calibrate.clone(),
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
    /// Inferences one session may request.
    #[arg(long, default_value_t = 10_000)]
    max_inferences: usize,
}

pub fn serve(a: &ServeArgs) -> anyhow::Result<()> {
    let model = Arc::new(pi_server::prepare(&a.model, &a.options.prepare())?);
    let limits = Limits {
        max_frame: a.max_frame_mib << 20,
        read_timeout: Duration::from_secs(a.timeout_secs),
        max_sessions: a.max_sessions,
        max_inferences_per_session: a.max_inferences,
    };
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        println!("listening on {}", listener.local_addr()?);
        println!("model hash {}", model.public.hash);
        tracing::info!(relus = model.public.kept_relus(), "serving {}", a.model.display());
        pi_server::serve(listener, model, limits).await
    })
}

/// An emulated network link, to measure LAN/WAN figures on one machine.
#[derive(clap::Args, Clone)]
pub struct LinkOptions {
    /// Emulated bandwidth, e.g. 1gbit, 100mbit (default: the real link, unshaped).
    #[arg(long, value_parser = Shaping::parse_bandwidth)]
    bandwidth: Option<f64>,
    /// Emulated round-trip time in milliseconds (with or without --bandwidth).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
}

impl LinkOptions {
    fn shaping(&self) -> Option<Shaping> {
        (self.bandwidth.is_some() || self.rtt_ms > 0.0).then(|| Shaping {
            bandwidth_bps: self.bandwidth.unwrap_or(f64::INFINITY),
            rtt: Duration::from_secs_f64(self.rtt_ms.max(0.0) / 1e3),
        })
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
    /// Refuse the server unless it serves the model with this hash (see `pi inspect`).
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
    link: LinkOptions,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn infer(a: &InferArgs) -> anyhow::Result<()> {
    let opts = pi_client::InferOptions {
        server: a.server.clone(),
        data: a.data.clone(),
        count: a.count,
        expected_hash: a.expect_hash.clone(),
        reference_model: a.reference_model.clone(),
        timeout: Duration::from_secs(a.timeout_secs),
        progress: !a.json,
        shaping: a.link.shaping(),
    };
    let report = runtime()?.block_on(pi_client::run(&opts))?;
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
    if options.calibrate.is_none() && a.data.is_none() {
        options.calibrate = Some(data.clone());
    }
    let model = Arc::new(pi_server::prepare(&model_path, &options)?);
    let hash = model.public.hash.clone();
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        if !a.json {
            eprintln!("server on {addr} serving {} ({} garbled ReLUs per inference)", model_path.display(), model.public.kept_relus());
        }
        let server = tokio::spawn(pi_server::serve(listener, model, Limits::default()));
        let opts = pi_client::InferOptions {
            server: addr.to_string(),
            data,
            count: a.count,
            expected_hash: Some(hash),
            reference_model: Some(model_path.clone()),
            timeout: Duration::from_secs(120),
            progress: !a.json,
            shaping: a.link.shaping(),
        };
        let report = pi_client::run(&opts).await;
        server.abort();
        emit(&report?, a.json)
    })
}

fn emit(r: &pi_client::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        pi_client::print_layers(r);
        println!();
        pi_client::print_report(r);
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
