//! `pi inspect`: what a model file holds.

use anyhow::Context;
use pi_model::{Op, format};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Model file (.safetensors).
    file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Layer {
    name: String,
    kind: &'static str,
    inputs: Vec<String>,
    output_shape: Vec<usize>,
    parameters: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    relus_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relus_kept: Option<usize>,
}

#[derive(Serialize)]
struct Report {
    file: String,
    arch: String,
    format_version: u32,
    /// Unsalted content hash: for the operator's own records, never announced to clients.
    hash: String,
    /// What `pi serve` announces, when the model's salt file exists (MODEL.salt).
    #[serde(skip_serializing_if = "Option::is_none")]
    commitment: Option<String>,
    input_shape: Vec<usize>,
    /// Inputs are `(pixel / 255 - mean) / std` per channel.
    normalization: pi_model::data::Normalization,
    /// False for format-version-1 files, whose normalisation is implied by the input and class
    /// count (the data format's default at the time).
    normalization_stored: bool,
    classes: usize,
    parameters: usize,
    relus_total: usize,
    relus: usize,
    relu_fraction: f64,
    layers: Vec<Layer>,
}

pub fn run(a: &InspectArgs) -> anyhow::Result<()> {
    let (model, version) = format::load_versioned(&a.file).with_context(|| format!("loading {}", a.file.display()))?;
    let shapes = model.graph.shapes();
    let counts = model.relu_counts();
    let layers: Vec<Layer> = model
        .graph
        .nodes
        .iter()
        .map(|n| {
            let c = counts.iter().find(|c| c.node == n.name);
            let parameters = if matches!(n.op, Op::Relu { .. }) {
                0
            } else {
                ["weight", "bias"].iter().filter_map(|p| model.try_tensor(&n.name, p)).map(|t| t.len()).sum()
            };
            Layer {
                name: n.name.clone(),
                kind: n.op.kind(),
                inputs: n.inputs.clone(),
                output_shape: shapes[&n.name].clone(),
                parameters,
                relus_total: c.map(|c| c.total),
                relus_kept: c.map(|c| c.kept),
            }
        })
        .collect();
    let relus_total: usize = counts.iter().map(|c| c.total).sum();
    let relus = model.kept_relus();
    let r = Report {
        file: a.file.display().to_string(),
        arch: model.graph.arch.clone(),
        format_version: version,
        hash: format::content_hash(&model),
        commitment: commitment(&a.file, &format::content_hash(&model))?,
        input_shape: model.graph.input_shape.clone(),
        normalization: model.normalization.clone(),
        normalization_stored: version >= 2,
        classes: model.graph.classes,
        parameters: model.parameter_count(),
        relus_total,
        relus,
        relu_fraction: relus as f64 / relus_total.max(1) as f64,
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("{}  ({}, input {:?}, {} classes)", r.file, r.arch, r.input_shape, r.classes);
    println!(
        "normalisation: (pixel/255 - mean) / std, mean {:?} std {:?}{}",
        r.normalization.mean,
        r.normalization.std,
        if r.normalization_stored { "" } else { "  (format version 1: implied by input and classes)" }
    );
    println!("hash {}  (unsalted: for your records, not for clients)", r.hash);
    if let Some(c) = &r.commitment {
        println!("commitment {c}  (what pi serve announces with {})", pi_server::default_salt_path(&a.file).display());
    }
    println!("{:<28} {:<16} {:>16} {:>10} {:>18}", "layer", "kind", "output", "params", "ReLUs kept/total");
    for l in &r.layers {
        let relu = match (l.relus_kept, l.relus_total) {
            (Some(k), Some(t)) => format!("{k}/{t}"),
            _ => String::new(),
        };
        println!(
            "{:<28} {:<16} {:>16} {:>10} {:>18}",
            l.name,
            l.kind,
            format!("{:?}", l.output_shape),
            l.parameters,
            relu
        );
    }
    println!(
        "total: {} parameters, {} of {} ReLUs kept ({:.2}%)",
        r.parameters,
        r.relus,
        r.relus_total,
        100.0 * r.relu_fraction
    );
    Ok(())
}

/// The commitment `pi serve` announces for this file, if its default salt file exists.
fn commitment(file: &std::path::Path, hash: &str) -> anyhow::Result<Option<String>> {
    let salt = pi_server::default_salt_path(file);
    if !salt.exists() {
        return Ok(None);
    }
    Ok(Some(pi_server::Salt::read(&salt)?.commit(hash)))
}
