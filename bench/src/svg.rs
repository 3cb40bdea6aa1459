//! Minimal SVG line and scatter plots for the benchmark reports: axes with round ticks, one colour
//! per series, a legend. (Plotting crates need a font backend to lay out labels; an SVG viewer
//! already has fonts, so the text is left to it.)

use std::fmt::Write;

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Points joined by a line, in x order.
    LinePoints,
    /// A dashed line without markers (reference curves).
    Dashed,
    /// Markers only.
    Points,
}

/// One named series of `(x, y)` points; `highlight` marks points drawn larger (e.g. Pareto-optimal).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    pub highlight: Vec<bool>,
    /// Colour slot (default: the series' position), so that a fit can share its data's colour.
    pub color: Option<usize>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Series { name: name.into(), points, style, highlight: Vec::new(), color: None }
    }
}

/// One panel: title, axis labels and series.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const W: f64 = 560.0;
const H: f64 = 430.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 40.0;
const MB: f64 = 140.0;

/// Renders panels side by side into one SVG document.
pub fn render(panels: &[Panel]) -> String {
    let width = W * panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" viewBox="0 0 {width} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{width}" height="{H}" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        let _ = writeln!(s, r#"<g transform="translate({},0)">"#, i as f64 * W);
        panel(&mut s, p);
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// Round tick positions covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= 6.0).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 20 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{}k", v / 1e3)
    } else if a == 0.0 || a >= 1.0 {
        format!("{}", (v * 1000.0).round() / 1000.0)
    } else {
        format!("{v:.3}").trim_end_matches('0').to_string()
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn panel(s: &mut String, p: &Panel) {
    let pts = p.series.iter().flat_map(|x| x.points.iter()).filter(|q| q.0.is_finite() && q.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // The x axis (ReLUs, latency) starts at zero; the y axis too unless the data sit far above it.
    if x0 >= 0.0 {
        x0 = 0.0;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-9);
    let (y0, y1) = if y0 >= 0.0 && y0 < (y1 - y0) { (0.0, y1 + pad) } else { (y0 - pad, y1 + pad) };
    let x1 = if x1 <= x0 { x0 + 1.0 } else { x1 + (x1 - x0) * 0.04 };
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let sx = |x: f64| ML + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| MT + ph - (y - y0) / (y1 - y0) * ph;
    let _ =
        writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#, W / 2.0, escape(&p.title));
    let _ = writeln!(s, r##"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
    for t in ticks(x0, x1) {
        let x = format!("{:.1}", sx(t));
        let _ = writeln!(s, r##"<line x1="{x}" y1="{MT}" x2="{x}" y2="{}" stroke="#eee"/>"##, MT + ph);
        let _ = writeln!(s, r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#, MT + ph + 16.0, label(t));
    }
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = writeln!(s, r##"<line x1="{ML}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##, ML + pw);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, ML - 6.0, y + 4.0, label(t));
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        ML + pw / 2.0,
        MT + ph + 34.0,
        escape(&p.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        MT + ph / 2.0,
        escape(&p.y_label)
    );
    for (i, ser) in p.series.iter().enumerate() {
        let c = COLORS[ser.color.unwrap_or(i) % COLORS.len()];
        let mut line: Vec<(f64, f64)> =
            ser.points.iter().copied().filter(|q| q.0.is_finite() && q.1.is_finite()).collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        if ser.style != Style::Points && line.len() > 1 {
            let d: Vec<String> = line.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
            let dash = if ser.style == Style::Dashed { r#" stroke-dasharray="6,4""# } else { "" };
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="1.8"{dash}/>"#,
                d.join(" ")
            );
        }
        if ser.style != Style::Dashed {
            for (j, &(x, y)) in ser.points.iter().enumerate() {
                if !(x.is_finite() && y.is_finite()) {
                    continue;
                }
                let big = ser.highlight.get(j).copied().unwrap_or(false);
                let (r, stroke) = if big { (5.5, r##" stroke="#000" stroke-width="1.5""##) } else { (3.5, "") };
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{c}"{stroke}/>"#, sx(x), sy(y));
            }
        }
        // Legend under the plot: one column up to five entries, then two.
        let cols = if p.series.len() > 5 { 2 } else { 1 };
        let (lx, ly) = (ML + (i % cols) as f64 * pw / 2.0, MT + ph + 54.0 + (i / cols) as f64 * 16.0);
        let dash = if ser.style == Style::Dashed { r#" stroke-dasharray="6,4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&ser.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_well_formed_svg_with_every_series() {
        let p = Panel {
            title: "t <1>".into(),
            x_label: "ReLUs".into(),
            y_label: "s".into(),
            series: vec![
                Series::new("online", vec![(0.0, 0.1), (1000.0, 0.3)], Style::LinePoints),
                Series::new("ref", vec![(0.0, 0.2), (1000.0, 0.9)], Style::Dashed),
            ],
        };
        let svg = render(&[p.clone(), p]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("t &lt;1&gt;") && svg.contains(">online<") && svg.contains(">ref<"));
        let t = ticks(0.0, 1.0);
        assert_eq!((t.len(), t[0], t[5]), (6, 0.0, 1.0));
    }
}
