//! The terminal table: per size, the ideal-pipe bounds, then one line per
//! configuration with TTFB and total (median, p90, median/bound).

use std::fmt::Write as _;

use super::Report;
use crate::measure::EmulationCheck;
use crate::units::{ms, size_label};

fn cell(v: Option<f64>) -> String {
    v.map(ms).unwrap_or_else(|| "-".into())
}

fn ratio(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// The emulation check as text; warnings are loud.
pub fn emulation(e: &EmulationCheck, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{title} ({})", e.kind);
    let _ = writeln!(
        s,
        "  {:<18} {:>10} {:>10} {:>10} {:>10}",
        "link", "RTT conf", "measured", "err med", "err max"
    );
    for l in e.links.iter().chain(std::iter::once(&e.end_to_end)) {
        let _ = writeln!(
            s,
            "  {:<18} {:>10.2} {:>10.2} {:>10.3} {:>10.3}",
            format!("{}-{}", l.a, l.b),
            l.rtt_ms_configured,
            l.rtt_ms_measured,
            l.rtt_err_ms_median,
            l.rtt_err_ms_max
        );
    }
    let _ = writeln!(
        s,
        "  bulk TCP on {}: {:.1} Mbit/s of {} configured ({:.1}%)",
        e.throughput_link,
        e.throughput_mbit,
        e.throughput_mbit_configured,
        100.0 * e.throughput_mbit / e.throughput_mbit_configured
    );
    for i in &e.impairments {
        let _ = writeln!(
            s,
            "  {:<18} {}: loss {:.3}% of {} probes (configured {}%, ±{:.3}), reordered {}, one-way extra p1/median/p99 {:.2}/{:.2}/{:.2} ms (jitter {} ms)",
            i.link,
            i.direction,
            i.loss_pct_measured,
            i.sent,
            i.loss_pct_configured,
            i.loss_tolerance_pct,
            i.reordered,
            i.extra_ms_p1,
            i.extra_ms_median,
            i.extra_ms_p99,
            i.jitter_ms_configured
        );
    }
    if e.warnings.is_empty() {
        let _ = writeln!(
            s,
            "  emulation OK (RTT within {} ms, throughput ≥ {:.0}%)",
            crate::measure::RTT_TOLERANCE_MS,
            crate::measure::THROUGHPUT_TOLERANCE * 100.0
        );
    }
    for w in &e.warnings {
        let _ = writeln!(s, "  !!! EMULATION OFF: {w}");
    }
    s
}

/// The RTTs probed after the runs, compact.
pub fn rtt_after(a: &crate::measure::RttCheck) -> String {
    let mut s = String::from("after the runs: RTT measured (error max)");
    for l in a.links.iter().chain(std::iter::once(&a.end_to_end)) {
        let _ = write!(
            s,
            "  {}-{} {:.2} ms ({:.2})",
            l.a, l.b, l.rtt_ms_measured, l.rtt_err_ms_max
        );
    }
    s.push('\n');
    for w in &a.warnings {
        let _ = writeln!(s, "  !!! EMULATION OFF after the runs: {w}");
    }
    s
}

/// The results table.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let t = &r.topology;
    let _ = writeln!(
        s,
        "\nresults: ms, median / p90 over runs; x = median / ideal-pipe bound (r1 = {:.1} ms, R = {:.1} ms, B = {} Mbit/s)",
        t.r1_ms, t.rtt_ms, t.bottleneck_mbit
    );
    let name_w = r
        .configs
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    for b in &r.bounds {
        let _ = writeln!(
            s,
            "\n{:<name_w$}  {:>8} {:>8} {:>7}   {:>8} {:>8} {:>7}  {:>5}",
            format!("size {}", size_label(b.size_bytes)),
            "TTFB",
            "p90",
            "xbound",
            "total",
            "p90",
            "xbound",
            "runs"
        );
        let _ = writeln!(
            s,
            "{:<name_w$}  {:>8} {:>8} {:>7}   {:>8} {:>8} {:>7}",
            "bound",
            ms(b.ttfb_ms),
            "",
            "",
            ms(b.total_ms),
            "",
            ""
        );
        for row in r.results.iter().filter(|x| x.size_bytes == b.size_bytes) {
            let runs = if row.failed > 0 {
                format!("{} ({} failed)", row.runs, row.failed)
            } else {
                row.runs.to_string()
            };
            let _ = writeln!(
                s,
                "{:<name_w$}  {:>8} {:>8} {:>7}   {:>8} {:>8} {:>7}  {:>5}",
                row.config,
                cell(row.ttfb_ms.map(|x| x.median)),
                cell(row.ttfb_ms.map(|x| x.p90)),
                ratio(row.ttfb_ratio),
                cell(row.total_ms.map(|x| x.median)),
                cell(row.total_ms.map(|x| x.p90)),
                ratio(row.total_ratio),
                runs
            );
        }
    }
    s
}
