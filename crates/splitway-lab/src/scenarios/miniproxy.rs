//! `miniproxy`: the Miniproxy paper's Figures 4 and 5 (Siracusano et al.,
//! "Miniproxy: on-the-fly TCP acceleration").
//!
//! Figure 4: a 100 ms end-to-end RTT split evenly over 0, 1, 2, 3 relays,
//! 100 Mbit/s, transfers of 10 KB to 500 KB: TTFB and time to complete
//! against the number of relays. The paper measured, with early SYN
//! forwarding only, TTFB −25 / −33.3 / −37.5 % and at 25 KB time to
//! complete −33 / −44 / −49 % with 1 / 2 / 3 proxies. We run `+early-syn`
//! (early SYN and Fast Open: Miniproxy's mechanism) and `splitway` (every
//! improvement) on each chain, and `e2e` on the relay-less one.
//!
//! Figure 5: one relay pushed off the path. The direct path keeps 100 ms;
//! through the relay each of the two links has a one-way delay `d` from
//! 25 ms (on the path) upward in 2.5 ms steps. The break-even delay, where
//! the relay stops paying off, is found per size by interpolating the
//! difference of the medians between the steps around its sign change.
//! All chains of a figure stand side by side and their runs interleave.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::json;

use super::{fmt_change, fmt_ms, measure, print_table, start_arms};
use crate::report::lines::{self, Chart, Series};
use crate::report::scenario::{self, median, ChainOut, Row, ScenarioReport};
use crate::session::{Chain, Session};
use crate::topology::Topology;
use crate::units::size_label;
use crate::LabArgs;

/// The paper's reductions with 1, 2, 3 proxies: TTFB, and time to complete at 25 KB.
pub const PAPER_TTFB_PCT: [f64; 3] = [-25.0, -33.3, -37.5];
pub const PAPER_TTC_25K_PCT: [f64; 3] = [-33.0, -44.0, -49.0];

const CONFIGS: [&str; 2] = ["+early-syn", "splitway"];

/// Where `f(x)` (sampled at increasing `xs`) first turns from negative to
/// non-negative, interpolated linearly; `None` if it never does (or the
/// first sample already is non-negative: then the break-even is at or
/// before the first x, reported as that x).
pub fn crossing(xs: &[f64], f: &[Option<f64>]) -> Option<f64> {
    let mut prev: Option<(f64, f64)> = None;
    for (&x, v) in xs.iter().zip(f) {
        let Some(v) = *v else { continue };
        if v >= 0.0 {
            return Some(match prev {
                Some((px, pv)) => px + (x - px) * (-pv) / (v - pv),
                None => x,
            });
        }
        prev = Some((x, v));
    }
    None
}

/// The chain label of Figure 5's step with one-way delay `d` ms.
fn dlabel(d: f64) -> String {
    format!("d{:03.0}", d * 10.0)
}

pub fn run(args: &LabArgs) -> Result<()> {
    if args.topology.is_some() || args.rtt.is_some() {
        bail!("--scenario miniproxy builds its own chains; --topology and --rtt do not apply");
    }
    let sizes = args.sizes_or("10K,25K,50K,100K,250K,500K", "10K,25K")?;
    let sizes5 = if args.sizes.is_some() {
        sizes.clone()
    } else {
        args.sizes_or("10K,25K,100K,500K", "10K,100K")?
    };
    let runs = args.runs_or(20, 3)?;
    // --quick: the same shapes on a 20 ms path
    let total = if args.quick { 20.0 } else { 100.0 };
    let mbit = args
        .mbit
        .as_ref()
        .and_then(|v| v.first().copied())
        .unwrap_or(100.0);
    let sess = Session::open(args, &[])?;
    let mut rows: Vec<Row> = Vec::new();
    let mut chains_out = Vec::new();
    let mut stopped = None;

    // ---- Figure 4: 0..3 relays, evenly split ----
    let max_relays = 3;
    let mut chains: Vec<Chain> = Vec::new();
    for k in 0..=max_relays {
        let topo = Topology::chain(&vec![total / (k + 1) as f64; k + 1], mbit);
        chains.push(sess.chain(&format!("r{k}"), &topo, &sizes)?);
    }
    let mut arms = vec![(0, "e2e")];
    for k in 1..=max_relays {
        arms.extend(CONFIGS.iter().map(|c| (k, *c)));
    }
    let mut running = start_arms(&sess, &chains, &arms)?;
    eprintln!(
        "lab: Figure 4: {} arms x {} sizes x {runs} runs",
        arms.len(),
        sizes.len()
    );
    let out4 = measure(&sess, &chains, &mut running, &sizes, runs);
    let refs: Vec<&Chain> = chains.iter().collect();
    rows.extend(scenario::rows(
        &out4.points,
        &running,
        &refs,
        &sizes,
        "fig4",
    ));
    drop(running);
    chains_out.extend(chains.iter().map(ChainOut::of));
    drop(chains);
    if let Some(s) = out4.stopped {
        stopped = Some(s);
    }

    // The comparison with the paper, per relay count.
    let s10 = sizes.first().copied().unwrap_or(10 << 10);
    let s25 = sizes
        .iter()
        .copied()
        .find(|&s| s == 25 << 10)
        .unwrap_or(s10);
    let base_ttfb = median(&rows, "r0", "fig4", "e2e", s10, true);
    let base_ttc = median(&rows, "r0", "fig4", "e2e", s25, false);
    let mut cmp = Vec::new();
    let mut table = Vec::new();
    for k in 1..=max_relays {
        let label = format!("r{k}");
        let mut entry = json!({
            "relays": k,
            "paper_ttfb_pct": PAPER_TTFB_PCT[k - 1],
            "paper_ttc_25k_pct": PAPER_TTC_25K_PCT[k - 1],
            "bound_ttfb_ms": total / (k + 1) as f64 + total,
        });
        let mut cells = vec![
            k.to_string(),
            format!("{:+.1}%", PAPER_TTFB_PCT[k - 1]),
            format!("{:+.0}%", PAPER_TTC_25K_PCT[k - 1]),
        ];
        for c in CONFIGS {
            let t = median(&rows, &label, "fig4", c, s10, true);
            let ttc = median(&rows, &label, "fig4", c, s25, false);
            let pct = |x: Option<f64>, b: Option<f64>| match (x, b) {
                (Some(x), Some(b)) if b > 0.0 => Some((x / b - 1.0) * 100.0),
                _ => None,
            };
            entry[c] = json!({
                "ttfb_ms": t, "ttfb_pct": pct(t, base_ttfb),
                "ttc_25k_ms": ttc, "ttc_25k_pct": pct(ttc, base_ttc),
            });
            cells.push(fmt_change(t, base_ttfb));
            cells.push(fmt_change(ttc, base_ttc));
        }
        cmp.push(entry);
        table.push(cells);
    }
    print_table(
        &format!(
            "Miniproxy Figure 4 vs splitway: change against end to end (e2e: TTFB {} ms at {}, time to complete {} ms at {})",
            fmt_ms(base_ttfb),
            size_label(s10),
            fmt_ms(base_ttc),
            size_label(s25)
        ),
        &[
            "relays",
            "paper TTFB",
            "paper TTC",
            "+early-syn TTFB",
            "+early-syn TTC",
            "splitway TTFB",
            "splitway TTC",
        ],
        &table,
    );
    let mut t4 = Vec::new();
    for &s in &sizes {
        let mut cells = vec![size_label(s)];
        cells.push(fmt_ms(median(&rows, "r0", "fig4", "e2e", s, false)));
        for k in 1..=max_relays {
            for c in CONFIGS {
                cells.push(fmt_ms(median(&rows, &format!("r{k}"), "fig4", c, s, false)));
            }
        }
        t4.push(cells);
    }
    print_table(
        "time to complete, median ms (relays: +early-syn / splitway)",
        &[
            "size", "e2e", "1 es", "1 sw", "2 es", "2 sw", "3 es", "3 sw",
        ],
        &t4,
    );

    // ---- Figure 5: one relay off the path ----
    let mut delays = Vec::new();
    if stopped.is_none() {
        let steps = if args.quick { 3 } else { 9 };
        let quarter = total / 4.0;
        for i in 0..steps {
            delays.push(quarter + i as f64 * total / 40.0);
        }
        let mut chains: Vec<Chain> = Vec::new();
        chains.push(sess.chain("direct", &Topology::chain(&[total], mbit), &sizes5)?);
        for &d in &delays {
            let topo = Topology::chain(&[2.0 * d, 2.0 * d], mbit);
            chains.push(sess.chain(&dlabel(d), &topo, &sizes5)?);
        }
        let mut arms = vec![(0, "e2e")];
        for i in 1..=delays.len() {
            arms.extend(CONFIGS.iter().map(|c| (i, *c)));
        }
        let mut running = start_arms(&sess, &chains, &arms)?;
        eprintln!(
            "lab: Figure 5: {} arms x {} sizes x {runs} runs",
            arms.len(),
            sizes5.len()
        );
        let out5 = measure(&sess, &chains, &mut running, &sizes5, runs);
        let refs: Vec<&Chain> = chains.iter().collect();
        rows.extend(scenario::rows(
            &out5.points,
            &running,
            &refs,
            &sizes5,
            "fig5",
        ));
        drop(running);
        chains_out.extend(chains.iter().map(ChainOut::of));
        drop(chains);
        stopped = out5.stopped;
    }
    let mut breakeven = Vec::new();
    let mut t5 = Vec::new();
    for &s in &sizes5 {
        let e2e = median(&rows, "direct", "fig5", "e2e", s, false);
        let mut cells = vec![size_label(s), fmt_ms(e2e)];
        for c in CONFIGS {
            let diffs: Vec<Option<f64>> = delays
                .iter()
                .map(|d| Some(median(&rows, &dlabel(*d), "fig5", c, s, false)? - e2e?))
                .collect();
            let be = crossing(&delays, &diffs);
            // Slower than end to end already with the relay on the path.
            let no_gain = diffs.first().copied().flatten().is_some_and(|d| d >= 0.0);
            let be = if no_gain { None } else { be };
            breakeven.push(json!({
                "config": c, "size_bytes": s, "e2e_ms": e2e,
                "gain_on_path": !no_gain,
                "breakeven_one_way_ms": be,
                "breakeven_extra_rtt_ms": be.map(|d| 4.0 * d - total),
                "diff_ms": diffs,
            }));
            cells.push(match be {
                _ if no_gain => "no gain on the path".to_string(),
                Some(d) => format!("{d:.1} ms (+{:.0} ms RTT)", 4.0 * d - total),
                None => format!("> {:.1} ms", delays.last().copied().unwrap_or(0.0)),
            });
        }
        t5.push(cells);
    }
    if !delays.is_empty() {
        print_table(
            "Miniproxy Figure 5: one relay off the path; per-link one-way delay where the relay stops paying off (time to complete)",
            &["size", "e2e ms", "+early-syn", "splitway"],
            &t5,
        );
    }

    // ---- report ----
    let rep = ScenarioReport::new(
        "miniproxy",
        sess.lab_info(runs, &sizes, stopped.is_some()),
        chains_out,
        rows,
        json!({
            "total_rtt_ms": total,
            "figure4": cmp,
            "figure5_one_way_delays_ms": delays,
            "figure5_breakeven": breakeven,
        }),
    );
    let json_path = rep.write_json(&sess.out)?;
    let charts = write_charts(&rep, &sizes, &sizes5, &delays, total, &sess)?;
    rep.finish(&sess, &json_path, &charts, stopped)
}

fn write_charts(
    rep: &ScenarioReport,
    sizes: &[u64],
    sizes5: &[u64],
    delays: &[f64],
    total: f64,
    sess: &Session,
) -> Result<Vec<PathBuf>> {
    let rows = &rep.rows;
    let xs: Vec<(f64, String)> = (0..=3).map(|k| (k as f64, k.to_string())).collect();
    let at = |k: usize, c: &str, s: u64, ttfb: bool| {
        if k == 0 {
            median(rows, "r0", "fig4", "e2e", s, ttfb)
        } else {
            median(rows, &format!("r{k}"), "fig4", c, s, ttfb)
        }
    };
    let s10 = sizes.first().copied().unwrap_or(10 << 10);
    let base = at(0, "", s10, true);
    let mut ttfb = Chart {
        title: format!(
            "Miniproxy Fig. 4: TTFB at {} vs relays ({total} ms RTT split evenly)",
            size_label(s10)
        ),
        x_label: "relays on the path".into(),
        y_label: "TTFB, median (ms)".into(),
        x_ticks: Some(xs.clone()),
        y_from_zero: true,
        ..Default::default()
    };
    for c in CONFIGS {
        ttfb.series.push(Series {
            name: c.into(),
            points: (0..=3)
                .filter_map(|k| Some((k as f64, at(k, c, s10, true)?)))
                .collect(),
            ..Default::default()
        });
    }
    ttfb.series.push(Series {
        name: "bound r1 + R".into(),
        points: (0..=3)
            .map(|k| (k as f64, total / (k + 1) as f64 + total))
            .collect(),
        dashed: true,
        ..Default::default()
    });
    if let Some(b) = base {
        let mut pts = vec![(0.0, b)];
        pts.extend((1..=3).map(|k| (k as f64, b * (1.0 + PAPER_TTFB_PCT[k - 1] / 100.0))));
        ttfb.series.push(Series {
            name: "Miniproxy (paper, scaled)".into(),
            points: pts,
            dashed: true,
            ..Default::default()
        });
    }
    let mut out = vec![lines::write(&ttfb, &sess.out, "miniproxy-ttfb.svg")?];
    let mut ttc = Chart {
        title: "Miniproxy Fig. 4: time to complete vs relays (splitway solid, +early-syn dashed)"
            .into(),
        x_label: "relays on the path".into(),
        y_label: "time to complete, median (ms)".into(),
        x_ticks: Some(xs),
        y_from_zero: true,
        ..Default::default()
    };
    for &s in sizes {
        for c in CONFIGS.iter().rev() {
            ttc.series.push(Series {
                name: format!(
                    "{} {}",
                    size_label(s),
                    if *c == "splitway" { "sw" } else { "es" }
                ),
                points: (0..=3)
                    .filter_map(|k| Some((k as f64, at(k, c, s, false)?)))
                    .collect(),
                dashed: *c != "splitway",
                ..Default::default()
            });
        }
    }
    out.push(lines::write(&ttc, &sess.out, "miniproxy-ttc.svg")?);
    if !delays.is_empty() {
        let mut off = Chart {
            title: "Miniproxy Fig. 5: one relay off the path (splitway solid, end to end dashed)"
                .into(),
            x_label: "one-way delay of each link via the relay (ms; direct path 50)".into(),
            y_label: "time to complete, median (ms)".into(),
            y_from_zero: true,
            ..Default::default()
        };
        for &s in sizes5 {
            let e2e = median(rows, "direct", "fig5", "e2e", s, false);
            off.series.push(Series {
                name: format!("{} splitway", size_label(s)),
                points: delays
                    .iter()
                    .filter_map(|&d| {
                        Some((d, median(rows, &dlabel(d), "fig5", "splitway", s, false)?))
                    })
                    .collect(),
                ..Default::default()
            });
            if let Some(e) = e2e {
                off.series.push(Series {
                    name: format!("{} e2e", size_label(s)),
                    points: vec![(delays[0], e), (delays[delays.len() - 1], e)],
                    dashed: true,
                    ..Default::default()
                });
            }
        }
        let first = rep.analysis["figure5_breakeven"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|b| b["config"] == "splitway" && b["breakeven_one_way_ms"].is_number())
            })
            .and_then(|b| {
                Some((
                    b["breakeven_one_way_ms"].as_f64()?,
                    format!(
                        "break-even {}: {:.1} ms",
                        size_label(b["size_bytes"].as_u64()?),
                        b["breakeven_one_way_ms"].as_f64()?
                    ),
                ))
            });
        off.marker = first;
        out.push(lines::write(&off, &sess.out, "miniproxy-offpath.svg")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_interpolates_the_sign_change() {
        let xs = [25.0, 27.5, 30.0, 32.5];
        // -20 at 27.5, +20 at 30: halfway
        let f = [Some(-40.0), Some(-20.0), Some(20.0), Some(50.0)];
        assert!((crossing(&xs, &f).unwrap() - 28.75).abs() < 1e-9);
        assert_eq!(crossing(&xs, &[Some(-1.0); 4]), None);
        assert_eq!(crossing(&xs, &[Some(1.0), None, None, None]), Some(25.0));
        // a missing point is skipped
        let f = [Some(-10.0), None, Some(10.0), None];
        assert!((crossing(&xs, &f).unwrap() - 27.5).abs() < 1e-9);
    }
}
