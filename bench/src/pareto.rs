//! The accuracy–latency frontier of a family of models: each model classifies `count` test images
//! privately over an emulated link (server and client as separate tasks over loopback TCP), its f32
//! accuracy is measured on the whole test set, and the models no other model beats on both accuracy
//! and latency are marked Pareto-optimal.

use crate::BenchError;
use crate::e2e::{self, Bytes, NetReport, Stat};
use crate::svg::{Panel, Series, Style};
use pi_channel::Link;
use pi_model::engine::{argmax, run_f32};
use pi_model::{Model, format};
use pi_server::PrepareOptions;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// DELPHI's published per-ReLU cost (garbled tables + OT offline, labels online), for the reference curve.
pub const DELPHI_OFFLINE_BYTES_PER_RELU: u64 = 17_000 + 2_000;
pub const DELPHI_ONLINE_BYTES_PER_RELU: u64 = 1_200;

#[derive(Clone, Debug)]
pub struct ParetoOptions {
    pub models: Vec<PathBuf>,
    /// Dataset directory (its test split).
    pub data: PathBuf,
    pub net: Link,
    /// Test images classified privately per model (from the start of the test set).
    pub count: usize,
    pub prepare: PrepareOptions,
    pub timeout: Duration,
}

/// One model's point on the frontier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelPoint {
    pub model: String,
    /// `snl`, `random`, `layer` (from the model's linearization report), `full` (a report-less model
    /// that keeps every ReLU) or `unknown`.
    pub method: String,
    pub budget: Option<u64>,
    pub relus: usize,
    pub relus_total: usize,
    /// Accuracy of the private inferences on the first `count` test images.
    pub accuracy_pi: f64,
    pub count: usize,
    /// Fraction of those images where the private prediction equals the f32 engine's.
    pub agreement_f32: f64,
    /// f32 accuracy on the whole test set (`test_images`): the accuracy axis of the frontier.
    pub accuracy_f32: f64,
    pub test_images: usize,
    pub offline_s: Stat,
    pub online_s: Stat,
    pub total_s: Stat,
    pub offline_bytes: Bytes,
    pub online_bytes: Bytes,
    pub online_rounds: usize,
    /// Fractional bits the model was served with (`--frac-bits auto` chooses them per model).
    #[serde(default)]
    pub frac_bits: u32,
    /// Bytes of the ReLU layers alone, per inference.
    pub relu_offline_bytes: u64,
    pub relu_online_bytes: u64,
    /// Modelled, not run: this model's measured latency with its ReLU bytes replaced by DELPHI's
    /// per-ReLU bytes on the same link (compute unchanged).
    pub delphi_online_s: f64,
    pub delphi_total_s: f64,
    /// No other model is at least as accurate (f32, whole test set) and at least as fast, and better in one.
    pub pareto_online: bool,
    pub pareto_total: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParetoReport {
    pub net: NetReport,
    pub data: String,
    pub count: usize,
    pub delphi_offline_bytes_per_relu: u64,
    pub delphi_online_bytes_per_relu: u64,
    pub models: Vec<ModelPoint>,
}

/// Method and budget of a model, from the JSON report beside it (`X.json` or `X.linearize.json` for
/// `X.safetensors`).
pub fn method_of(path: &Path, model: &Model) -> (String, Option<u64>) {
    let candidates = [path.with_extension("json"), path.with_extension("linearize.json")];
    for c in candidates {
        let Ok(text) = std::fs::read_to_string(&c) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        if let Some(m) = v.get("method").and_then(|m| m.as_str()) {
            return (m.to_string(), v.get("budget").and_then(|b| b.as_u64()));
        }
    }
    let total: usize = model.relu_counts().iter().map(|c| c.total).sum();
    if model.kept_relus() == total { ("full".into(), None) } else { ("unknown".into(), None) }
}

/// Marks the points that no other point dominates: `(latency, accuracy)`, lower latency and higher
/// accuracy better. Equal points do not dominate each other.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<bool> {
    points
        .iter()
        .map(|&(lat, acc)| !points.iter().any(|&(l2, a2)| l2 <= lat && a2 >= acc && (l2 < lat || a2 > acc)))
        .collect()
}

/// Runs the whole frontier; `progress(model, done, total)` is called after each private inference.
pub async fn run(
    opts: &ParetoOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<ParetoReport, BenchError> {
    if opts.models.is_empty() {
        return Err(BenchError::Params("no models given (--models FILE,...)".into()));
    }
    if opts.count == 0 {
        return Err(BenchError::Params("--count must be at least 1".into()));
    }
    let load = |norm| pi_client::load_images(&opts.data, norm).map_err(|e| BenchError::Params(e.to_string()));
    let ds = load(None)?;
    let mut models = Vec::new();
    for path in &opts.models {
        let model = format::load(path).map_err(|e| BenchError::Params(format!("{}: {e}", path.display())))?;
        if model.graph.input_shape.as_slice() != ds.shape.as_slice() {
            return Err(BenchError::Params(format!(
                "{} takes {:?} images, {} has {:?}",
                path.display(),
                model.graph.input_shape,
                opts.data.display(),
                ds.shape
            )));
        }
        models.push(model);
    }
    let count = opts.count.min(ds.len());
    // The images as each model normalises them (models of one family share one copy).
    let mut normalised: Vec<pi_model::data::Dataset> = vec![ds];
    for model in &models {
        if !normalised.iter().any(|d| d.normalization == model.normalization) {
            normalised.push(load(Some(&model.normalization))?);
        }
    }
    let eopts = e2e::E2eOptions {
        net: Some(opts.net),
        repeat: count,
        prepare: opts.prepare.clone(),
        timeout: opts.timeout,
        seed: 0,
        transport: e2e::Transport::Plaintext,
    };
    let mut points = Vec::new();
    for (path, model) in opts.models.iter().zip(&models) {
        let name = path.display().to_string();
        let ds = normalised.iter().find(|d| d.normalization == model.normalization).expect("loaded above");
        let images: Vec<Vec<f32>> = (0..count).map(|i| ds.image(i).to_vec()).collect();
        let folded = model.fold_batchnorm();
        let f32_pred: Vec<usize> = (0..ds.len())
            .into_par_iter()
            .map(|i| run_f32(&folded, ds.image(i)).map(|l| argmax(&l)))
            .collect::<Result<_, _>>()
            .map_err(|e| BenchError::Params(e.to_string()))?;
        let correct_f32 = f32_pred.iter().enumerate().filter(|&(i, &p)| p == ds.label(i) as usize).count();
        let served = pi_server::prepare_model(model, &eopts.prepare).map_err(|e| BenchError::Params(e.to_string()))?;
        let s = e2e::session_images(served, &images, &eopts, |done| progress(&name, done, count)).await?;
        let preds: Vec<usize> = s.client.iter().map(|r| argmax(&r.logits)).collect();
        let correct_pi = preds.iter().enumerate().filter(|&(i, &p)| p == ds.label(i) as usize).count();
        let agree = preds.iter().enumerate().filter(|&(i, &p)| p == f32_pred[i]).count();
        let pt = e2e::summarise(&name, model, s);
        let (relu_off, relu_on) = pt
            .layers
            .iter()
            .filter(|l| l.kind == "relu")
            .fold((0, 0), |a, l| (a.0 + l.offline_bytes, a.1 + l.online_bytes));
        let secs = |bytes: f64| bytes * 8.0 / opts.net.bandwidth_bps();
        let r = pt.relus as f64;
        let d_on = secs((DELPHI_ONLINE_BYTES_PER_RELU as f64) * r - relu_on as f64);
        let d_off = secs((DELPHI_OFFLINE_BYTES_PER_RELU as f64) * r - relu_off as f64);
        let (method, budget) = method_of(path, model);
        points.push(ModelPoint {
            model: name,
            method,
            budget,
            relus: pt.relus,
            relus_total: pt.relus_total,
            accuracy_pi: correct_pi as f64 / count as f64,
            count,
            agreement_f32: agree as f64 / count as f64,
            accuracy_f32: correct_f32 as f64 / ds.len() as f64,
            test_images: ds.len(),
            offline_s: pt.offline_s,
            online_s: pt.online_s,
            total_s: pt.total_s,
            offline_bytes: pt.offline_bytes,
            online_bytes: pt.online_bytes,
            online_rounds: pt.online_rounds,
            frac_bits: pt.frac_bits,
            relu_offline_bytes: relu_off,
            relu_online_bytes: relu_on,
            delphi_online_s: pt.online_s.median + d_on,
            delphi_total_s: pt.total_s.median + d_on + d_off,
            pareto_online: false,
            pareto_total: false,
        });
    }
    let on = pareto_front(&points.iter().map(|p| (p.online_s.median, p.accuracy_f32)).collect::<Vec<_>>());
    let tot = pareto_front(&points.iter().map(|p| (p.total_s.median, p.accuracy_f32)).collect::<Vec<_>>());
    for ((p, a), b) in points.iter_mut().zip(on).zip(tot) {
        (p.pareto_online, p.pareto_total) = (a, b);
    }
    Ok(ParetoReport {
        net: NetReport::of(Some(opts.net)),
        data: opts.data.display().to_string(),
        count,
        delphi_offline_bytes_per_relu: DELPHI_OFFLINE_BYTES_PER_RELU,
        delphi_online_bytes_per_relu: DELPHI_ONLINE_BYTES_PER_RELU,
        models: points,
    })
}

/// Two panels: f32 accuracy against online and against total latency, one series per method
/// (Pareto-optimal models drawn larger), and the DELPHI reference for the Pareto-optimal models.
pub fn plot(report: &ParetoReport) -> Vec<Panel> {
    let mut methods: Vec<&str> = report.models.iter().map(|m| m.method.as_str()).collect();
    methods.sort();
    methods.dedup();
    let panel = |online: bool| {
        let lat = |m: &ModelPoint| if online { m.online_s.median } else { m.total_s.median };
        let mut series: Vec<Series> = methods
            .iter()
            .map(|&meth| {
                let ms: Vec<&ModelPoint> = report.models.iter().filter(|m| m.method == meth).collect();
                let mut s = Series::new(
                    meth,
                    ms.iter().map(|m| (lat(m), m.accuracy_f32 * 100.0)).collect(),
                    if ms.len() > 1 { Style::LinePoints } else { Style::Points },
                );
                s.highlight = ms.iter().map(|m| if online { m.pareto_online } else { m.pareto_total }).collect();
                s
            })
            .collect();
        let front: Vec<(f64, f64)> = report
            .models
            .iter()
            .filter(|m| if online { m.pareto_online } else { m.pareto_total })
            .map(|m| (if online { m.delphi_online_s } else { m.delphi_total_s }, m.accuracy_f32 * 100.0))
            .collect();
        series.push(Series::new("frontier at DELPHI's bytes/ReLU (modelled)", front, Style::Dashed));
        let phase = if online { "online" } else { "total (offline + online)" };
        Panel {
            title: format!("accuracy vs {phase} latency, net {}", report.net.name),
            x_label: format!("{phase} latency (s, median of {} inferences)", report.count),
            y_label: "test accuracy (%, f32 engine, whole test set)".into(),
            series,
        }
    };
    vec![panel(true), panel(false)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominated_points_are_not_on_the_front() {
        // (latency, accuracy)
        let pts = [(1.0, 0.80), (2.0, 0.85), (2.0, 0.84), (3.0, 0.85), (0.5, 0.70), (1.0, 0.80)];
        assert_eq!(pareto_front(&pts), vec![true, true, false, false, true, true]);
        assert!(pareto_front(&[]).is_empty());
    }
}
