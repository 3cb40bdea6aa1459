//! Stand-alone entry point of the linearizer (`pi train|linearize|import` does the same).

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pi-linearizer",
    about = "Train, linearize (SNL) and import networks for private inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a network with all its ReLUs.
    Train(pi_linearizer::TrainArgs),
    /// Learn which ReLUs to keep under a budget (SNL or a baseline), finetune, export.
    Linearize(pi_linearizer::LinearizeArgs),
    /// Convert a PyTorch checkpoint (.pt/.pth/.safetensors) of ResNet-18 or WRN-22-8.
    Import(pi_linearizer::ImportArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Train(a) => pi_linearizer::train(&a),
        Command::Linearize(a) => pi_linearizer::linearize(&a),
        Command::Import(a) => pi_linearizer::import(&a),
    }
}
