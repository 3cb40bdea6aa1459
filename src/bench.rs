//! `pi bench`: the measurements users compare implementations by.

use clap::Subcommand;
use pi_model::{FixedPoint, Model, arch};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Garbled ReLUs and OT: AND gates and bytes per ReLU, garbling/evaluation speed against the same
    /// run's raw fixed-key-AES bound, OT rate, and ReLUs per second end to end over loopback TCP.
    Gc(GcArgs),
    /// HE preprocessing of every conv/linear layer of an architecture: client encrypt, server compute,
    /// client decrypt, bytes each way, and the plaintext ring time of the same layer for scale.
    Linear(LinearArgs),
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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &BenchCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cmd {
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
        BenchCommand::Linear(a) => {
            let classes = 10;
            let graph = Model::random(arch::build(&a.arch, classes)?, 0, None)?.fold_batchnorm().graph;
            let layers = pi_inference::linear_layers(&graph);
            let r = rt.block_on(pi_bench::linear::run_layers(&layers, a.ring_bits))?;
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
