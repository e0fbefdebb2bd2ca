//! `loss`: random loss on the long haul, then on the last mile.
//!
//! One chain (the KTCP path, or `--topology`/`--rtt`); `e2e` and `splitway`
//! side by side. Phases: no loss; then 0.1, 0.5 and 1 % random loss (each
//! direction) on the longest link; then the same on the client's link. The
//! loss is changed on the running delay line between phases, checked with
//! UDP probes before each phase (measured rate within ±10 %, or 3 standard
//! errors of the probe count), and the delay lines' own loss counters over
//! the phase are reported with it. Downloads of 1 MiB and 10 MiB.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use super::{fmt_ms, measure, print_table, start_arms};
use crate::measure as check;
use crate::report::lines::{self, Chart, Series};
use crate::report::scenario::{self, median, ChainOut, Row, ScenarioReport};
use crate::session::{Chain, Session};
use crate::topology::Topology;
use crate::units::size_label;
use crate::LabArgs;

/// A phase: which link is lossy (index) and how much (per cent).
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    pub where_: &'static str,
    pub link: usize,
    pub loss_pct: f64,
}

/// The phases: none, then each loss on the long link, then on the client's.
pub fn phases(topo: &Topology, losses: &[f64]) -> Vec<Phase> {
    let long = topo.longest_link();
    let mut v = vec![Phase {
        name: "none".into(),
        where_: "none",
        link: long,
        loss_pct: 0.0,
    }];
    for (where_, link) in [("long", long), ("client", 0)] {
        for &l in losses.iter().filter(|&&l| l > 0.0) {
            v.push(Phase {
                name: format!("{where_}-{l}"),
                where_,
                link,
                loss_pct: l,
            });
        }
    }
    v
}

pub fn run(args: &LabArgs) -> Result<()> {
    let sizes = args.sizes_or("1M,10M", "1M")?;
    let runs = args.runs_or(5, 2)?;
    let losses: Vec<f64> = if args.quick {
        vec![0.0, 1.0]
    } else {
        vec![0.0, 0.1, 0.5, 1.0]
    };
    let mut topo = if args.quick && args.topology.is_none() && args.rtt.is_none() {
        Topology::chain(&[4.0, 12.0, 4.0], 100.0)
    } else {
        args.topology()?
    };
    if topo.relays() == 0 {
        bail!(
            "--scenario loss compares end to end with splitway: the path needs at least one relay"
        );
    }
    for l in &mut topo.links {
        l.loss_pct = 0.0;
    }
    let phases = phases(&topo, &losses);
    let mut sess = Session::open(args, &[])?;
    // A lossy 10 MiB download end to end can take minutes.
    sess.timeout = sess.timeout.max(Duration::from_secs(300));
    let mut chains = vec![sess.chain("", &topo, &sizes)?];
    let mut running = start_arms(&sess, &chains, &[(0, "e2e"), (0, "splitway")])?;
    let mut rows: Vec<Row> = Vec::new();
    let mut phase_out = Vec::new();
    let mut warnings = Vec::new();
    let mut stopped = None;
    for (pi, ph) in phases.iter().enumerate() {
        eprintln!(
            "lab: phase {}/{}: {} ({} % loss on link {})",
            pi + 1,
            phases.len(),
            ph.name,
            ph.loss_pct,
            topo.links[ph.link].name()
        );
        for k in 0..topo.links.len() {
            let l = if k == ph.link { ph.loss_pct } else { 0.0 };
            chains[0].emu.set_impairments(k, l, 0.0)?;
        }
        let mut t = topo.clone();
        t.links[ph.link].loss_pct = ph.loss_pct;
        let (_, _, cap) = sess.check_effort(&t);
        let (imp, w) = check::impairments(&chains[0].tb, &t, cap)?;
        for i in &imp {
            eprintln!(
                "  loss check {} {}: {:.3} % of {} probes (configured {} %, ±{:.3})",
                i.link,
                i.direction,
                i.loss_pct_measured,
                i.sent,
                i.loss_pct_configured,
                i.loss_tolerance_pct
            );
        }
        warnings.extend(w.iter().map(|w| format!("phase {}: {w}", ph.name)));
        chains[0].emu.reset_stats();
        let out = measure(&sess, &chains, &mut running, &sizes, runs);
        let refs: Vec<&Chain> = chains.iter().collect();
        rows.extend(scenario::rows(
            &out.points,
            &running,
            &refs,
            &sizes,
            &ph.name,
        ));
        let stats = chains[0].emu.stats();
        warnings.extend(
            stats
                .iter()
                .filter_map(|l| l.warning())
                .map(|w| format!("phase {}: {w}", ph.name)),
        );
        phase_out.push(json!({
            "phase": ph.name, "where": ph.where_, "link": topo.links[ph.link].name(),
            "loss_pct": ph.loss_pct, "loss_check": imp, "delay_line_stats": stats,
        }));
        if out.stopped.is_some() {
            stopped = out.stopped;
            break;
        }
    }
    drop(running);

    // Table: per phase and size, e2e and splitway medians and the speed-up.
    let mut table = Vec::new();
    let mut analysis = Vec::new();
    for ph in &phases {
        for &s in &sizes {
            let e = median(&rows, "", &ph.name, "e2e", s, false);
            let w = median(&rows, "", &ph.name, "splitway", s, false);
            let speedup = match (e, w) {
                (Some(e), Some(w)) if w > 0.0 => Some(e / w),
                _ => None,
            };
            table.push(vec![
                ph.name.clone(),
                size_label(s),
                fmt_ms(e),
                fmt_ms(w),
                speedup.map(|x| format!("{x:.2}x")).unwrap_or("-".into()),
            ]);
            analysis.push(json!({
                "phase": ph.name, "where": ph.where_, "loss_pct": ph.loss_pct,
                "size_bytes": s, "e2e_total_ms": e, "splitway_total_ms": w, "speedup": speedup,
            }));
        }
    }
    print_table(
        "download time, median ms: end to end vs splitway under random loss",
        &["phase", "size", "e2e", "splitway", "speed-up"],
        &table,
    );

    let mut chains_out: Vec<ChainOut> = chains.iter().map(ChainOut::of).collect();
    // the per-phase counters are in the analysis; the chain's are the last phase's
    for c in &mut chains_out {
        c.emulation_stats.clear();
    }
    let mut rep = ScenarioReport::new(
        "loss",
        sess.lab_info(runs, &sizes, stopped.is_some()),
        chains_out,
        rows,
        json!({ "phases": phase_out, "comparison": analysis }),
    );
    rep.warnings.extend(warnings);
    let json_path = rep.write_json(&sess.out)?;
    let mut charts = Vec::new();
    for where_ in ["long", "client"] {
        let link = phases
            .iter()
            .find(|p| p.where_ == where_)
            .map(|p| topo.links[p.link].name())
            .unwrap_or_default();
        let mut c = Chart {
            title: format!("Random loss on {link}: download time (e2e dashed)"),
            x_label: "random loss, % of packets each direction".into(),
            y_label: "download time, median (ms)".into(),
            x_ticks: Some(losses.iter().map(|&l| (l, format!("{l}"))).collect()),
            y_from_zero: true,
            ..Default::default()
        };
        for &s in &sizes {
            for cfg in ["splitway", "e2e"] {
                let pts = phases
                    .iter()
                    .filter(|p| p.where_ == where_ || p.where_ == "none")
                    .filter_map(|p| {
                        Some((p.loss_pct, median(&rep.rows, "", &p.name, cfg, s, false)?))
                    })
                    .collect();
                c.series.push(Series {
                    name: format!("{} {cfg}", size_label(s)),
                    points: pts,
                    dashed: cfg == "e2e",
                    ..Default::default()
                });
            }
        }
        charts.push(lines::write(&c, &sess.out, &format!("loss-{where_}.svg"))?);
    }
    drop(chains);
    rep.finish(&sess, &json_path, &charts, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cover_long_then_client_link() {
        let t = Topology::default();
        let p = phases(&t, &[0.0, 0.1, 1.0]);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["none", "long-0.1", "long-1", "client-0.1", "client-1"]
        );
        assert_eq!(p[1].link, 1);
        assert_eq!(p[3].link, 0);
        assert_eq!(p[0].loss_pct, 0.0);
    }
}
