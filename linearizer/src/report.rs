//! Pieces shared by the JSON reports: peak memory, per-layer ReLU counts, and writing a report
//! file. (Printing reports is the caller's business: every command returns its report.)

use std::path::Path;

use pi_model::Model;
use serde::Serialize;

use crate::error::{LinearizeError, Result};

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
        .map(|(b, a)| LayerRelus { node: b.node, total: b.total, before: b.kept, after: a.kept })
        .collect()
}

/// Writes `report` as pretty JSON (`serde_json::to_string_pretty`) to `path`.
pub fn write_report<T: Serialize>(report: &T, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(LinearizeError::ReportJson)?;
    std::fs::write(path, text).map_err(|source| LinearizeError::WriteReport { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_written_as_pretty_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let report = serde_json::json!({"budget": 3000, "seconds": 1.5});
        write_report(&report, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, serde_json::to_string_pretty(&report).unwrap());
        let missing = dir.path().join("no/such/dir/r.json");
        let err = write_report(&report, &missing).unwrap_err();
        assert!(matches!(&err, LinearizeError::WriteReport { path, .. } if *path == missing), "{err}");
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        if std::path::Path::new("/proc/self/status").exists() {
            let m = super::peak_memory_mib().unwrap();
            assert!(m > 0.1 && m < 1e6, "{m}");
        }
    }
}
