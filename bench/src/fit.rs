//! Least-squares line through measured points: `latency = intercept + per_relu * relus`, with R².

use serde::{Deserialize, Serialize};

/// A fitted line and how well it explains the points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineFit {
    /// Latency at zero ReLUs: what linearization cannot remove (seconds).
    pub intercept_s: f64,
    /// Latency each surviving ReLU adds (seconds per ReLU).
    pub per_relu_s: f64,
    /// Coefficient of determination (1 = the line explains every point; 0 = no better than the mean).
    pub r2: f64,
    pub points: usize,
}

/// Ordinary least squares of `y` on `x`. `None` with fewer than two distinct `x` values (no line is
/// determined). With all `y` equal the line is flat and R² is 1.
pub fn fit_line(points: &[(f64, f64)]) -> Option<LineFit> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if points.len() < 2 || sxx <= 0.0 || !sxx.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let ss_res: f64 = points.iter().map(|p| (p.1 - intercept - slope * p.0).powi(2)).sum();
    let r2 = if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { 1.0 };
    Some(LineFit { intercept_s: intercept, per_relu_s: slope, r2, points: points.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_line_is_recovered() {
        let pts: Vec<(f64, f64)> = [0.0, 1000.0, 5000.0].iter().map(|&x| (x, 0.25 + 2e-6 * x)).collect();
        let f = fit_line(&pts).unwrap();
        assert!((f.intercept_s - 0.25).abs() < 1e-12 && (f.per_relu_s - 2e-6).abs() < 1e-15);
        assert!((f.r2 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn degenerate_inputs_give_no_line() {
        assert!(fit_line(&[]).is_none());
        assert!(fit_line(&[(1.0, 2.0)]).is_none());
        assert!(fit_line(&[(3.0, 2.0), (3.0, 5.0)]).is_none());
    }
}
