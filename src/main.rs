//! `pi`: the one command-line entry point. Each subcommand is a thin layer over a library crate.

#![forbid(unsafe_code)]

mod bench;
mod eval;
mod init;
mod inspect;
mod npy;
mod serve;
#[cfg(feature = "train")]
mod train;

use clap::{Parser, Subcommand};
use std::io::Write;

/// Two-party private CNN inference with selective ReLU linearization.
///
/// Typical flow: `pi init` or `pi train` a network, `pi linearize` it to a ReLU budget, `pi inspect` and
/// `pi eval` it in plaintext, then `pi serve` it and `pi infer` against it privately (or `pi demo`,
/// which does both on one machine). Logs go to stderr; set RUST_LOG=debug for more.
#[derive(Parser)]
#[command(name = "pi", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a network with random weights (and optionally random ReLU masks) for tests and benchmarks.
    Init(init::InitArgs),
    /// Show a model file's layers, shapes, ReLUs per layer, parameters and content hash.
    Inspect(inspect::InspectArgs),
    /// Plaintext accuracy of a model on a dataset, with the f32 or the fixed-point engine.
    Eval(eval::EvalArgs),
    /// Serve a model privately over TCP (many clients at once, one session per connection).
    Serve(serve::ServeArgs),
    /// Classify images privately against a running `pi serve`; reports latency, bytes and accuracy.
    Infer(serve::InferArgs),
    /// Start a server on a free loopback port and run the client on the bundled model and images.
    Demo(serve::DemoArgs),
    /// Train a network of a built-in architecture (SGD, best checkpoint by validation accuracy).
    #[cfg(feature = "train")]
    Train(train::TrainArgs),
    /// Learn which ReLUs to keep under a budget (SNL, or the random/layer baselines), finetune, export.
    #[cfg(feature = "train")]
    Linearize(train::LinearizeArgs),
    /// Import a PyTorch (.pt/.pth) or safetensors checkpoint of ResNet-18 / WRN-22-8 (SNL parameter names).
    #[cfg(feature = "train")]
    Import(train::ImportArgs),
    /// Write a model for the SNL reference code (PyTorch) to finetune: its parameter names, alpha
    /// shapes and BatchNorm buffers, loadable with load_state_dict(strict=True).
    #[cfg(feature = "train")]
    Export(train::ExportArgs),
    /// Benchmarks: `pi bench gc`, `pi bench linear`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    let cli = Cli::parse();
    // Long-running commands (serve, train, linearize, import) log progress by default; the rest only
    // warnings, so their reports stay readable. RUST_LOG overrides.
    let quiet = matches!(
        cli.command,
        Command::Init(_)
            | Command::Inspect(_)
            | Command::Eval(_)
            | Command::Infer(_)
            | Command::Demo(_)
            | Command::Bench(_)
    );
    let default = if quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()))
        .with_writer(|| LogSink)
        .init();
    let result = match cli.command {
        Command::Init(a) => init::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Serve(a) => serve::serve(&a),
        Command::Infer(a) => serve::infer(&a),
        Command::Demo(a) => serve::demo(&a),
        Command::Bench(c) => bench::run(&c),
        #[cfg(feature = "train")]
        Command::Train(a) => train::train(&a),
        #[cfg(feature = "train")]
        Command::Linearize(a) => train::linearize(&a),
        #[cfg(feature = "train")]
        Command::Import(a) => train::import(&a),
        #[cfg(feature = "train")]
        Command::Export(a) => train::export(&a),
    };
    if let Err(e) = result {
        let _ = writeln!(std::io::stderr(), "error: {}", report(&e));
        std::process::exit(1);
    }
}

/// Stderr for the log that drops what it cannot write: a server whose log reader went away (a
/// closed pipe) goes on serving, where the default writer's failure report would panic it.
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// The error and its causes on one line, each cause once: library errors often include their
/// source in their own message, and printing the chain would repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.ends_with(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
