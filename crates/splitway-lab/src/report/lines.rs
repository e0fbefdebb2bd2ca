//! Line charts for the scenarios: a metric (y) against what the scenario
//! varies (x: relays, added delay, loss, load), one line per series, with
//! optional whiskers (p10–p90 or min–max) and a marked vertical line (e.g.
//! a break-even point). Plain SVG like [`super::charts`]: no font or
//! plotting library, text is left to the viewer's fonts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::charts::tick_step;

const COLORS: [&str; 9] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
    "#ff9da7",
];

/// One line: points (x, y) and optional whiskers (x, low, high).
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub whiskers: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

impl Series {
    /// The distribution of `values` as a line: each value against the share
    /// of values at or below it.
    pub fn cdf(name: &str, values: impl IntoIterator<Item = f64>, dashed: bool) -> Series {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(1) as f64;
        Series {
            name: name.to_string(),
            points: v
                .iter()
                .enumerate()
                .map(|(i, x)| (*x, (i + 1) as f64 / n))
                .collect(),
            dashed,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Tick labels at given x positions; `None`: numeric ticks.
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// A vertical marker: (x, label).
    pub marker: Option<(f64, String)>,
    /// The y axis starts at 0 (otherwise at the data's minimum, rounded down).
    pub y_from_zero: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Render the chart as SVG text.
pub fn svg(c: &Chart) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 200.0, 46.0, 56.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all_x = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let all_y = c.series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.whiskers.iter().flat_map(|w| [w.1, w.2]))
    });
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in all_x.filter(|v| v.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
    }
    if let Some(t) = &c.x_ticks {
        for (x, _) in t {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for y in all_y.filter(|v| v.is_finite()) {
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    let step = tick_step(if c.y_from_zero { y1 } else { y1 - y0 });
    y0 = if c.y_from_zero {
        0.0
    } else {
        (y0 / step).floor() * step
    };
    y1 = ((y1 / step).ceil() * step).max(y0 + step);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        left,
        esc(&c.title)
    );
    // y grid and ticks
    let mut y = y0;
    while y <= y1 + step * 1e-9 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            fmt_tick(y)
        );
        y += step;
    }
    // x ticks
    let ticks: Vec<(f64, String)> = match &c.x_ticks {
        Some(t) => t.clone(),
        None => {
            let st = tick_step(x1 - x0);
            let mut v = Vec::new();
            let mut x = (x0 / st).ceil() * st;
            while x <= x1 + st * 1e-9 {
                v.push((x, fmt_tick(x)));
                x += st;
            }
            v
        }
    };
    for (x, label) in &ticks {
        let xx = px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + ph,
            top + ph + 5.0,
            top + ph + 19.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 14.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        top + ph / 2.0,
        esc(&c.y_label)
    );
    if let Some((x, label)) = &c.marker {
        if x.is_finite() {
            let xx = px(x.clamp(x0, x1));
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="2 3"/><text x="{:.1}" y="{:.1}" fill="#c00">{}</text>"##,
                top + ph,
                xx + 4.0,
                top + 14.0,
                esc(label)
            );
        }
    }
    for (i, se) in c.series.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        let dash = if se.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        for (x, lo, hi) in &se.whiskers {
            if lo.is_finite() && hi.is_finite() {
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{col}" stroke-width="1"/>"#,
                    px(*x),
                    py(*lo),
                    px(*x),
                    py(*hi)
                );
            }
        }
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        if !pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{col}" stroke-width="2"{dash}/>"#,
                pts.join(" ")
            );
        }
        for p in se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
        {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{col}"/>"#,
                px(p.0),
                py(p.1)
            );
        }
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{col}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + pw + 12.0,
            left + pw + 34.0,
            left + pw + 40.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Write `chart` to `dir/name`.
pub fn write(chart: &Chart, dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, svg(chart)).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_markers_and_survives_empty_data() {
        let c = Chart {
            title: "TTFB <ms>".into(),
            x_label: "relays".into(),
            y_label: "ms".into(),
            series: vec![
                Series {
                    name: "e2e".into(),
                    points: vec![(0.0, 200.0), (1.0, 201.0)],
                    whiskers: vec![(0.0, 190.0, 210.0)],
                    dashed: true,
                },
                Series {
                    name: "splitway".into(),
                    points: vec![(0.0, 200.0), (1.0, f64::NAN)],
                    ..Default::default()
                },
            ],
            x_ticks: Some(vec![(0.0, "0".into()), (1.0, "1".into())]),
            marker: Some((0.5, "break-even".into())),
            y_from_zero: true,
        };
        let s = svg(&c);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("TTFB &lt;ms&gt;"));
        assert!(s.contains("break-even"));
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(!s.contains("NaN"));
        let empty = svg(&Chart::default());
        assert!(empty.contains("</svg>") && !empty.contains("NaN"));
    }
}
