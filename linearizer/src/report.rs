//! Pieces shared by the JSON reports: peak memory, per-layer ReLU counts, and writing the report
//! to a file and/or stdout.

use std::path::Path;

use anyhow::{Context, Result};
use pi_model::Model;
use serde::Serialize;

/// Peak resident memory of this process in MiB (`VmHWM` of `/proc/self/status`); `None` where
/// that file does not exist.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// ReLUs of one layer before and after linearization.
#[derive(Clone, Debug, Serialize)]
pub struct LayerRelus {
    pub node: String,
    pub total: usize,
    pub before: usize,
    pub after: usize,
}

/// Pairs the per-layer counts of two models of the same graph.
pub fn layer_relus(before: &Model, after: &Model) -> Vec<LayerRelus> {
    before
        .relu_counts()
        .into_iter()
        .zip(after.relu_counts())
        .map(|(b, a)| LayerRelus {
            node: b.node,
            total: b.total,
            before: b.kept,
            after: a.kept,
        })
        .collect()
}

/// Writes `report` as pretty JSON to `path` (when given) and to stdout (when `stdout`).
pub fn emit<T: Serialize>(report: &T, path: Option<&Path>, stdout: bool) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if let Some(p) = path {
        std::fs::write(p, &text)
            .with_context(|| format!("writing the report to {}", p.display()))?;
    }
    if stdout {
        println!("{text}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_memory_is_read_on_linux() {
        if std::path::Path::new("/proc/self/status").exists() {
            let m = super::peak_memory_mib().unwrap();
            assert!(m > 0.1 && m < 1e6, "{m}");
        }
    }
}
