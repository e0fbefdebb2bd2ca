//! Charts like the KTCP paper's Figures 3 and 4: per file size, one bar per
//! configuration (median, with a p90 whisker), the ideal-pipe bound marked as
//! a dashed line. Written as plain SVG (no font or plotting library needed:
//! text is left to the viewer's fonts).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Report;
use crate::units::size_label;

const COLORS: [&str; 9] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
    "#ff9da7",
];

/// Which metric a chart shows.
#[derive(Clone, Copy)]
pub enum Metric {
    Ttfb,
    Total,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" tick step for a range up to `max`.
pub fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 2.5 {
        2.5
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Render one chart as SVG text.
pub fn svg(r: &Report, metric: Metric) -> String {
    let (title, file_title) = match metric {
        Metric::Ttfb => (
            "Time to first byte (s), median of runs; whisker: p90",
            "TTFB",
        ),
        Metric::Total => (
            "Download completion time (s), median of runs; whisker: p90",
            "total",
        ),
    };
    let get = |row: &super::ResultRow| match metric {
        Metric::Ttfb => row.ttfb_ms,
        Metric::Total => row.total_ms,
    };
    let bound_of = |b: &crate::topology::Bounds| match metric {
        Metric::Ttfb => b.ttfb_ms,
        Metric::Total => b.total_ms,
    };
    let nconf = r.configs.len().max(1);
    let nsize = r.bounds.len().max(1);
    let bar_w = 16.0;
    let group_w = bar_w * nconf as f64 + 24.0;
    let (left, right, top, bottom) = (60.0, 190.0, 52.0, 50.0);
    let plot_w = group_w * nsize as f64;
    let plot_h = 320.0;
    let width = left + plot_w + right;
    let height = top + plot_h + bottom;
    let mut ymax: f64 = 0.0;
    for row in &r.results {
        if let Some(s) = get(row) {
            ymax = ymax.max(s.p90 / 1e3);
        }
    }
    for b in &r.bounds {
        ymax = ymax.max(bound_of(b) / 1e3);
    }
    let step = tick_step(ymax * 1.05);
    let ytop = (ymax * 1.05 / step).ceil().max(1.0) * step;
    let y = |v: f64| top + plot_h - v / ytop * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<title>splitway lab: {file_title}</title><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">{}</text>"#,
        esc(title)
    );
    let t = &r.topology;
    let rtts: Vec<String> = t.links.iter().map(|l| format!("{}", l.rtt_ms)).collect();
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="38" font-size="11" fill="#555">path RTT {} ms (client-ingress / ingress-egress / egress-server), {} Mbit/s bottleneck, cc {}, {} runs; bound {}</text>"##,
        rtts.join(" / "),
        t.bottleneck_mbit,
        esc(&r.lab.congestion_control),
        r.lab.runs,
        match metric {
            Metric::Ttfb => "r1 + R",
            Metric::Total => "r1 + R + S/B",
        }
    );
    // grid and y axis
    let mut v = 0.0;
    while v <= ytop + step * 0.01 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0,
            trim_num(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h,
        top + plot_h,
        left + plot_w,
        top + plot_h
    );
    for (si, b) in r.bounds.iter().enumerate() {
        let gx = left + si as f64 * group_w + 12.0;
        for (ci, c) in r.configs.iter().enumerate() {
            let row = r
                .results
                .iter()
                .find(|x| x.config == c.name && x.size_bytes == b.size_bytes);
            if let Some(sm) = row.and_then(get) {
                let x = gx + ci as f64 * bar_w;
                let (ym, yp) = (y(sm.median / 1e3), y(sm.p90 / 1e3));
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{ym:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: median {:.1} ms, p90 {:.1} ms</title></rect>"#,
                    bar_w - 2.0,
                    top + plot_h - ym,
                    COLORS[ci % COLORS.len()],
                    esc(&c.name),
                    size_label(b.size_bytes),
                    sm.median,
                    sm.p90
                );
                let cx = x + (bar_w - 2.0) / 2.0;
                let _ = writeln!(
                    s,
                    r##"<line x1="{cx:.1}" y1="{ym:.1}" x2="{cx:.1}" y2="{yp:.1}" stroke="#222"/><line x1="{:.1}" y1="{yp:.1}" x2="{:.1}" y2="{yp:.1}" stroke="#222"/>"##,
                    cx - 3.0,
                    cx + 3.0
                );
            }
        }
        let yb = y(bound_of(b) / 1e3);
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{yb:.1}" x2="{:.1}" y2="{yb:.1}" stroke="#000" stroke-width="2" stroke-dasharray="5,3"><title>bound {:.1} ms</title></line>"##,
            gx - 6.0,
            gx + bar_w * nconf as f64 + 4.0,
            bound_of(b)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + bar_w * nconf as f64 / 2.0,
            top + plot_h + 18.0,
            size_label(b.size_bytes)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">file size</text>"#,
        left + plot_w / 2.0,
        top + plot_h + 38.0
    );
    // legend
    let lx = left + plot_w + 16.0;
    for (ci, c) in r.configs.iter().enumerate() {
        let ly = top + 8.0 + ci as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 10.0,
            COLORS[ci % COLORS.len()],
            lx + 18.0,
            ly,
            esc(&c.name)
        );
    }
    let ly = top + 8.0 + nconf as f64 * 18.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000" stroke-width="2" stroke-dasharray="5,3"/><text x="{:.1}" y="{ly:.1}">ideal-pipe bound</text>"##,
        ly - 4.0,
        lx + 12.0,
        ly - 4.0,
        lx + 18.0
    );
    s.push_str("</svg>\n");
    s
}

fn trim_num(v: f64) -> String {
    let t = format!("{v:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Write `ttfb.svg` and `download.svg` into `dir`; returns their paths.
pub fn write(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (m, name) in [(Metric::Ttfb, "ttfb.svg"), (Metric::Total, "download.svg")] {
        let p = dir.join(name);
        std::fs::write(&p, svg(r, m)).with_context(|| format!("writing {}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks() {
        assert_eq!(tick_step(3.3), 1.0);
        assert_eq!(tick_step(2.5), 0.5);
        assert_eq!(tick_step(0.6), 0.1);
        assert_eq!(tick_step(12.0), 2.0);
        assert_eq!(tick_step(0.0), 1.0);
    }
}
