//! `pi bench`: the measurements users compare implementations by.

use crate::serve::{ModelOptions, Net};
use anyhow::{Context, bail};
use clap::Subcommand;
use pi_bench::e2e::{E2eOptions, E2eReport, NetReport, PointReport};
use pi_bench::pareto::{ParetoOptions, ParetoReport};
use pi_model::{FixedPoint, Model, arch, format};
use pi_server::{Calibration, PrepareOptions};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Garbled ReLUs and OT: AND gates and bytes per ReLU, garbling/evaluation speed against the same
    /// run's raw fixed-key-AES bound, OT rate, and ReLUs per second end to end over loopback TCP.
    Gc(GcArgs),
    /// HE preprocessing of every conv/linear layer of an architecture: client encrypt, server compute,
    /// client decrypt, bytes each way, and the plaintext ring time of the same layer for scale.
    Linear(LinearArgs),
    /// The plaintext engines on one image: the fixed-point forward pass (the PI server's online linear
    /// work) with Winograd 3x3 convolutions and with direct convolution only, alternating in one run,
    /// against this CPU's u64 multiply-add bound measured in the same run; the f32 engine for scale.
    Engine(EngineArgs),
    /// Private inference end to end over TCP (server and client as separate tasks), one point per
    /// model or ReLU count: offline/online/total latency (median, min, max), bytes per phase and
    /// direction, rounds, where the time goes per layer (HE, garbling + OT, online linear, online
    /// garbled evaluation, link), and a least-squares line latency = intercept + per-ReLU cost.
    #[command(
        after_help = "Examples:\n  pi bench e2e --arch resnet18 --relus 491520,100000,50000,25000,12900 --net wan --svg r18-wan.svg\n  \
                            pi bench e2e --model models/small-cnn-fmnist.safetensors --net lan --repeat 5 --json"
    )]
    E2e(E2eArgs),
    /// The accuracy-latency frontier of a family of models: accuracy under private inference on
    /// --count test images (and agreement with the f32 engine), f32 accuracy on the whole test set,
    /// online and total latency and bytes on an emulated link; marks the Pareto-optimal models.
    #[command(
        after_help = "Example:\n  pi bench pareto --models models/family/*.safetensors --data data/fashion-mnist --net lan --count 20 --svg frontier.svg"
    )]
    Pareto(ParetoArgs),
    /// Redraws the SVG of a saved `pi bench e2e --json` or `pi bench pareto --json` report.
    Plot(PlotArgs),
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// The JSON report.
    report: PathBuf,
    /// SVG file to write.
    #[arg(long, value_name = "FILE")]
    svg: PathBuf,
    /// Title of an e2e plot.
    #[arg(long, default_value = "private inference")]
    title: String,
}

#[derive(clap::Args)]
pub struct E2eArgs {
    /// Model files, one point each (.safetensors). Or use --arch with --relus.
    #[arg(long, num_args = 1.., value_delimiter = ',', conflicts_with_all = ["arch", "relus"])]
    model: Vec<PathBuf>,
    /// Architecture with random weights: small-cnn, resnet18 or wrn22-8 (with --relus).
    #[arg(long, requires = "relus")]
    arch: Option<String>,
    /// Surviving ReLU counts, one point each (with --arch). Every ReLU layer keeps the same
    /// fraction (largest-remainder rounding), at random positions: the cost depends on how many
    /// ReLUs survive per layer, not which.
    #[arg(long, value_delimiter = ',', requires = "arch")]
    relus: Vec<usize>,
    /// Classes of a generated model.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Network: none (loopback), lan (1 Gbit/s, 0.5 ms RTT), wan (100 Mbit/s, 40 ms RTT) or
    /// RATE,RTT such as 10mbit,80ms. The link is emulated on the client's connection; bytes on the
    /// wire overlap both parties' computation, as on a real link.
    #[arg(long, default_value = "none", value_parser = Net::parse)]
    net: Net,
    /// Private inferences per point (one session; each has its own offline phase).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Seed of the input image and of generated weights and masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Connection: plaintext (the protocol's own cost) or tls (TLS 1.3 with a pinned self-signed
    /// certificate, as `pi serve` runs by default), to measure what TLS adds.
    #[arg(long, default_value = "plaintext")]
    transport: pi_bench::e2e::Transport,
    #[command(flatten)]
    options: ModelOptions,
    /// Seconds to wait for any message before giving up.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Write an SVG plot of offline, online and total latency against surviving ReLUs.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ParetoArgs {
    /// Model files (.safetensors), comma-separated or repeated. Method and budget come from the
    /// JSON report beside each model (X.json or X.linearize.json).
    #[arg(long, num_args = 1.., value_delimiter = ',', required = true)]
    models: Vec<PathBuf>,
    /// Test data: a dataset directory (its test split), a CIFAR .bin or an IDX images file.
    #[arg(long)]
    data: PathBuf,
    /// Network: lan (1 Gbit/s, 0.5 ms RTT), wan (100 Mbit/s, 40 ms RTT) or RATE,RTT.
    #[arg(long, default_value = "lan", value_parser = Net::parse)]
    net: Net,
    /// Test images classified privately per model.
    #[arg(long, default_value_t = 20)]
    count: usize,
    #[command(flatten)]
    options: ModelOptions,
    /// Seconds to wait for any message before giving up.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Write an SVG: accuracy against online and against total latency, one series per method,
    /// Pareto-optimal models drawn larger, and the frontier at DELPHI's bytes per ReLU.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct GcArgs {
    /// ReLUs per measurement.
    #[arg(long, default_value_t = 100_000)]
    relus: usize,
    /// Ring width l.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Fractional bits dropped after the ReLU.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.f)]
    frac_bits: u32,
    /// Share bits the circuit reads (k).
    #[arg(long, default_value_t = 32)]
    relu_bits: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct LinearArgs {
    /// Architecture whose linear layers are measured: small-cnn, resnet18 or wrn22-8.
    #[arg(long, default_value = "small-cnn")]
    arch: String,
    /// Ring width l (HE plaintext modulus 2^l).
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Whether the server keeps each layer's kernel plaintexts NTT-transformed between inferences
    /// ("transformed", as `pi serve` does within its --he-cache-mib budget; the memory is reported)
    /// or transforms them per inference ("on-the-fly").
    #[arg(long, default_value = "transformed", value_name = "transformed|on-the-fly")]
    kernel_cache: pi_bench::linear::KernelCache,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct EngineArgs {
    /// Architecture: small-cnn, resnet18 or wrn22-8 (random weights: they do not change the time).
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// Forward passes per engine, alternating.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Ring width l (Winograd needs l <= 62).
    #[arg(long, default_value_t = FixedPoint::DEFAULT.l)]
    ring_bits: u32,
    /// Fractional bits f.
    #[arg(long, default_value_t = FixedPoint::DEFAULT.f)]
    frac_bits: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &BenchCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
        BenchCommand::E2e(a) => rt.block_on(e2e(a))?,
        BenchCommand::Pareto(a) => rt.block_on(pareto(a))?,
        BenchCommand::Plot(a) => plot(a)?,
        BenchCommand::Gc(a) => {
            let opts = pi_bench::gc::GcBenchOptions {
                relus: a.relus,
                l: a.ring_bits,
                f: a.frac_bits,
                k: a.relu_bits,
                ..Default::default()
            };
            let r = rt.block_on(pi_bench::gc::run(&opts))?;
            let v = serde_json::to_value(&r)?;
            if a.json {
                println!("{v}");
            } else {
                print_table(&v);
            }
        }
        BenchCommand::Engine(a) => {
            let opts = pi_bench::engine::EngineOptions {
                arch: a.arch.clone(),
                repeat: a.repeat,
                fp: FixedPoint { l: a.ring_bits, f: a.frac_bits },
                ..Default::default()
            };
            let v = serde_json::to_value(pi_bench::engine::run(&opts)?)?;
            if a.json {
                println!("{v}");
            } else {
                print_table(&v);
            }
        }
        BenchCommand::Linear(a) => {
            let classes = 10;
            let graph = Model::random(arch::build(&a.arch, classes)?, 0, None)?.fold_batchnorm().graph;
            let layers = pi_inference::linear_layers(&graph);
            let r = rt.block_on(pi_bench::linear::run_layers(&layers, a.ring_bits, a.kernel_cache))?;
            let v = serde_json::to_value(&r)?;
            if a.json {
                println!("{v}");
            } else {
                print_table(&v);
            }
        }
    }
    Ok(())
}

/// Prints a flat JSON object as `key value` lines, and arrays of objects as tables.
fn print_table(v: &serde_json::Value) {
    let Some(obj) = v.as_object() else {
        println!("{v}");
        return;
    };
    for (k, val) in obj {
        match val {
            serde_json::Value::Array(rows) if rows.iter().all(|r| r.is_object()) && !rows.is_empty() => {
                println!("{k}:");
                for r in rows {
                    let cells: Vec<String> = r.as_object().unwrap().iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("  {}", cells.join("  "));
                }
            }
            serde_json::Value::Object(_) => {
                println!("{k}:");
                for (k2, v2) in val.as_object().unwrap() {
                    println!("  {k2:<32} {v2}");
                }
            }
            _ => println!("{k:<34} {val}"),
        }
    }
}

fn bar(len: usize, show: bool) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {prefix} {pos}/{len} [{elapsed}] {wide_bar} {msg}")
            .expect("template"),
    );
    bar
}

async fn e2e(a: &E2eArgs) -> anyhow::Result<()> {
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let opts = E2eOptions {
        net: a.net.0,
        repeat: a.repeat,
        prepare: e2e_prepare(a.options.prepare()),
        timeout: Duration::from_secs(a.timeout_secs),
        seed: a.seed,
        transport: a.transport,
    };
    let mut jobs: Vec<(String, Model)> = Vec::new();
    if let Some(arch) = &a.arch {
        if a.relus.is_empty() {
            bail!("--relus needs at least one count");
        }
        arch::build(arch, a.classes)?;
        for &n in &a.relus {
            jobs.push((format!("{arch}@{n}"), pi_bench::e2e::model_with_relus(arch, a.classes, n, a.seed)?));
        }
    } else {
        if a.model.is_empty() {
            bail!("give --model FILE[,FILE...] or --arch ARCH --relus N[,N...]");
        }
        for p in &a.model {
            let m = format::load(p).with_context(|| format!("loading {}", p.display()))?;
            jobs.push((p.display().to_string(), m));
        }
    }
    let show = !a.json;
    let total = jobs.len() * a.repeat;
    let pb = bar(total, show);
    let mut points: Vec<PointReport> = Vec::new();
    for (i, (label, model)) in jobs.iter().enumerate() {
        pb.set_prefix(format!("{label} ({} ReLUs)", model.kept_relus()));
        let done_before = i * a.repeat;
        let p = pi_bench::e2e::measure(model, label, &opts, |d| pb.set_position((done_before + d) as u64))
            .await
            .with_context(|| format!("measuring {label}"))?;
        points.push(p);
    }
    pb.finish_and_clear();
    let fit = pi_bench::e2e::fits(&points);
    let report = E2eReport { net: NetReport::of(a.net.0), repeat: a.repeat, points, fit };
    if let Some(path) = &a.svg {
        let title = a.arch.clone().unwrap_or_else(|| "models".into());
        let svg = pi_bench::svg::render(&pi_bench::e2e::plot(&report, &title));
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_e2e(&report);
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.2}", b as f64 / 1e6)
}

fn print_e2e(r: &E2eReport) {
    println!(
        "net {}, {} inference(s) per point; latency median [min-max] in seconds, bytes in MB per inference",
        r.net.name, r.repeat
    );
    println!(
        "{:<28} {:>9} {:>24} {:>24} {:>9} {:>10} {:>10} {:>7}",
        "point", "ReLUs", "offline s", "online s", "total s", "offline MB", "online MB", "rounds"
    );
    for p in &r.points {
        let st = |s: &pi_bench::e2e::Stat| format!("{:.3} [{:.3}-{:.3}]", s.median, s.min, s.max);
        println!(
            "{:<28} {:>9} {:>24} {:>24} {:>9.3} {:>10} {:>10} {:>7}",
            p.label,
            p.relus,
            st(&p.offline_s),
            st(&p.online_s),
            p.total_s.median,
            mb(p.offline_bytes.total),
            mb(p.online_bytes.total),
            p.online_rounds
        );
    }
    println!();
    println!("where the time goes (seconds, mean per inference; link = waiting no computation covered)");
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
        "point", "HE", "GC+OT", "link", "other", "linear", "GC eval", "link", "other"
    );
    for p in &r.points {
        let (o, n) = (&p.offline, &p.online);
        println!(
            "{:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            p.label, o.he_s, o.gc_ot_s, o.link_s, o.other_s, n.linear_s, n.gc_eval_s, n.link_s, n.other_s
        );
    }
    println!();
    println!("least-squares fit, latency = intercept + per-ReLU cost x ReLUs");
    for (name, f) in [("offline", r.fit.offline), ("online", r.fit.online), ("total", r.fit.total)] {
        match f {
            Some(f) => println!(
                "  {name:<8} {:.4} s + {:.3} us/ReLU   (R^2 {:.4}, {} points)",
                f.intercept_s,
                f.per_relu_s * 1e6,
                f.r2,
                f.points
            ),
            None => println!("  {name:<8} needs two or more distinct ReLU counts"),
        }
    }
    if let Some(p) = r.points.last() {
        println!();
        println!("per layer, last point ({}): seconds per inference", p.label);
        println!(
            "{:<22} {:<7} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8}",
            "node", "kind", "ReLUs", "off MB", "HE", "GC+OT", "link", "on MB", "linear", "GC eval", "link"
        );
        for l in &p.layers {
            println!(
                "{:<22} {:<7} {:>8} {:>8} {:>8.4} {:>8.4} {:>8.4} | {:>8} {:>8.4} {:>8.4} {:>8.4}",
                l.node,
                l.kind,
                if l.kind == "relu" { format!("{}/{}", l.relus_kept, l.relus_total) } else { String::new() },
                mb(l.offline_bytes),
                l.offline.he_s,
                l.offline.gc_ot_s,
                l.offline.link_s,
                mb(l.online_bytes),
                l.online.linear_s,
                l.online.gc_eval_s,
                l.online.link_s
            );
        }
    }
}

/// `pi bench e2e` classifies random images, so without --calibrate its circuits are sized on
/// random inputs drawn the same way (as the server would on real data).
fn e2e_prepare(mut prepare: PrepareOptions) -> PrepareOptions {
    if prepare.calibration == Calibration::None {
        prepare.calibration = Calibration::RandomInputs;
    }
    prepare
}

async fn pareto(a: &ParetoArgs) -> anyhow::Result<()> {
    let Some(net) = a.net.0 else {
        bail!("pareto compares latency on a link: --net lan, wan or RATE,RTT (not none)");
    };
    // The models classify real images: their circuits are sized on the data's training split.
    let mut prepare = a.options.prepare();
    if prepare.calibration == Calibration::None && a.data.is_dir() {
        prepare.calibration = Calibration::Dataset(a.data.clone());
    }
    let opts = ParetoOptions {
        models: a.models.clone(),
        data: a.data.clone(),
        net,
        count: a.count,
        prepare,
        timeout: Duration::from_secs(a.timeout_secs),
    };
    let pb = bar(a.models.len() * a.count, !a.json);
    let mut seen: Vec<String> = Vec::new();
    let report = pi_bench::pareto::run(&opts, |model, done, count| {
        if seen.last().map(String::as_str) != Some(model) {
            seen.push(model.to_string());
            pb.set_prefix(model.to_string());
        }
        pb.set_position(((seen.len() - 1) * count + done) as u64);
    })
    .await?;
    pb.finish_and_clear();
    if let Some(path) = &a.svg {
        let svg = pi_bench::svg::render(&pi_bench::pareto::plot(&report));
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_pareto(&report);
    }
    Ok(())
}

fn print_pareto(r: &ParetoReport) {
    println!(
        "net {}, {} private inferences per model on {}; * = Pareto-optimal (f32 accuracy vs latency)",
        r.net.name, r.count, r.data
    );
    println!(
        "{:<36} {:<7} {:>7} {:>7} {:>8} {:>7} {:>8} {:>10} {:>10} {:>9} {:>9}",
        "model",
        "method",
        "budget",
        "ReLUs",
        "acc PI",
        "agree",
        "acc f32",
        "online s",
        "total s",
        "online MB",
        "total MB"
    );
    for m in &r.models {
        println!(
            "{:<36} {:<7} {:>7} {:>7} {:>7.1}% {:>6.1}% {:>7.2}% {:>9.3}{} {:>9.3}{} {:>9} {:>9}",
            m.model,
            m.method,
            m.budget.map(|b| b.to_string()).unwrap_or_default(),
            m.relus,
            m.accuracy_pi * 100.0,
            m.agreement_f32 * 100.0,
            m.accuracy_f32 * 100.0,
            m.online_s.median,
            if m.pareto_online { "*" } else { " " },
            m.total_s.median,
            if m.pareto_total { "*" } else { " " },
            mb(m.online_bytes.total),
            mb(m.online_bytes.total + m.offline_bytes.total)
        );
    }
}

fn plot(a: &PlotArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.report).with_context(|| format!("reading {}", a.report.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.report.display()))?;
    let panels = if v.get("models").is_some() {
        pi_bench::pareto::plot(&serde_json::from_value::<ParetoReport>(v).context("not a pi bench pareto report")?)
    } else {
        pi_bench::e2e::plot(&serde_json::from_value::<E2eReport>(v).context("not a pi bench e2e report")?, &a.title)
    };
    std::fs::write(&a.svg, pi_bench::svg::render(&panels)).with_context(|| format!("writing {}", a.svg.display()))
}
