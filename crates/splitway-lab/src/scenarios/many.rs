//! `many`: many clients at once through one ingress.
//!
//! 100 downloads start together from 10 client addresses (10 each), end to
//! end, through splitway with a leg per flow, and through splitway with
//! flows as streams on warm lanes (`splitway-mux`), in rotating rounds
//! (`--configs` picks others). The ingress's pool of
//! pre-established legs (`pool_high` 16 by default) is smaller than the
//! load, so most flows find it dry and open a fresh leg: the relay's own
//! `splitway_pool_hits_total` / `splitway_pool_misses_total` (read from its
//! admin API on the namespace's loopback) count how often; on lanes,
//! `splitway_lane_fallback_total` counts flows that found no lane room.
//! Reported: TTFB and total p50/p99, Jain's fairness index over the
//! downloads' rates in each round, pool hits and misses, lane fallbacks,
//! and failures (there must be none).

use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::{print_table, start_arms};
use crate::configs::Running;
use crate::curl::{self, Sample};
use crate::report::lines::{self, Chart, Series};
use crate::report::scenario::{ChainOut, Row, ScenarioReport};
use crate::report::SampleOut;
use crate::scrape;
use crate::session::{Chain, Session};
use crate::stats::quantile;
use crate::topology::Topology;
use crate::units::size_label;
use crate::LabArgs;

/// Jain's fairness index of `xs`: (Σx)² / (n·Σx²), 1 when all are equal,
/// 1/n when one takes everything.
pub fn jain(xs: &[f64]) -> Option<f64> {
    let n = xs.len() as f64;
    let s: f64 = xs.iter().sum();
    let s2: f64 = xs.iter().map(|x| x * x).sum();
    (n > 0.0 && s2 > 0.0).then(|| s * s / (n * s2))
}

/// The ingress relay's pool counters (hits, misses) and lane fallbacks,
/// via its admin API.
fn pool_counters(chain: &Chain, port: u16) -> Option<(f64, f64, f64)> {
    let text = scrape::ingress_metrics(&chain.tb, port)?;
    Some((
        scrape::sum(&text, "splitway_pool_hits_total"),
        scrape::sum(&text, "splitway_pool_misses_total"),
        scrape::sum(&text, "splitway_lane_fallback_total"),
    ))
}

/// One round of one arm: every download at once.
struct Round {
    samples: Vec<Sample>,
    failures: Vec<String>,
    jain: Option<f64>,
    pool_hits: Option<f64>,
    pool_misses: Option<f64>,
    lane_fallbacks: Option<f64>,
}

fn round(
    sess: &Session,
    chain: &Chain,
    r: &Running,
    sources: &[String],
    n: usize,
    size: u64,
    admin_port: Option<u16>,
) -> Result<Round> {
    let before = admin_port.and_then(|p| pool_counters(chain, p));
    if !sess.keep_tcp_metrics {
        chain.tb.flush_tcp_metrics();
    }
    let url = r.url(size);
    // Every client process is started first and then given its URL, so the
    // downloads start together (not one process start-up after another).
    let t0 = Instant::now();
    let mut ready = Vec::new();
    for i in 0..n {
        let src = &sources[i % sources.len()];
        ready.push(curl::prepare(&chain.tb, Some(src), &[], sess.timeout)?);
    }
    let t1 = Instant::now();
    let mut children = Vec::new();
    for r in ready {
        children.push(r.go(&url)?);
    }
    eprintln!(
        "  {n} clients started in {:.0} ms, released within {:.1} ms",
        (t1 - t0).as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for c in children {
        match curl::finish(c, &url, size, sess.timeout) {
            Ok(s) => samples.push(s),
            Err(e) => {
                crate::host::check_stop()?;
                failures.push(format!("{e:#}"));
            }
        }
    }
    let after = admin_port.and_then(|p| pool_counters(chain, p));
    let rates: Vec<f64> = samples
        .iter()
        .map(|s| size as f64 * 8.0 / s.total_ms / 1e3)
        .collect();
    let delta = |f: fn(&(f64, f64, f64)) -> f64| Some(f(after.as_ref()?) - f(before.as_ref()?));
    Ok(Round {
        jain: jain(&rates),
        pool_hits: delta(|c| c.0),
        pool_misses: delta(|c| c.1),
        lane_fallbacks: delta(|c| c.2),
        samples,
        failures,
    })
}

pub fn run(args: &LabArgs) -> Result<()> {
    let size = args.sizes_or("1M", "100K")?[0];
    let rounds = args.runs_or(3, 1)?;
    let (n, addrs) = if args.quick { (30, 10) } else { (100, 10) };
    let topo = if args.quick && args.topology.is_none() && args.rtt.is_none() {
        Topology::chain(&[4.0, 12.0, 4.0], 100.0)
    } else {
        args.topology()?
    };
    if topo.relays() == 0 {
        bail!("--scenario many needs at least one relay");
    }
    let sess = Session::open(args, &[])?;
    let chains = vec![sess.chain("", &topo, &[size])?];
    let plan = *chains[0].tb.plan();
    let mut sources = Vec::new();
    for i in 0..addrs {
        let a = plan.client_alias(i);
        chains[0].tb.add_client_alias(a)?;
        sources.push(a.to_string());
    }
    let names = match &args.configs {
        Some(c) => crate::configs::select(c)?,
        None => vec!["e2e", "splitway", "splitway-mux"],
    };
    let arms: Vec<(usize, &'static str)> = names.iter().map(|n| (0, *n)).collect();
    let running = start_arms(&sess, &chains, &arms)?;
    // Each splitway arm's admin port, in start order (start_arms numbers them).
    let mut nth = 0;
    let admin: Vec<Option<u16>> = names
        .iter()
        .map(|n| {
            crate::configs::is_splitway(n).then(|| {
                nth += 1;
                crate::configs::admin_port(nth - 1)
            })
        })
        .collect();
    let arms_n = running.len();
    eprintln!(
        "lab: {rounds} round(s) of {n} concurrent {} downloads from {addrs} addresses: {}",
        size_label(size),
        names.join(", ")
    );
    let mut results: Vec<Vec<Round>> = (0..arms_n).map(|_| Vec::new()).collect();
    let started = Instant::now();
    let mut stopped = None;
    'outer: for r in 0..rounds {
        for k in 0..arms_n {
            let a = (k + r) % arms_n;
            eprintln!(
                "lab: round {}/{rounds}: {} ({} elapsed)",
                r + 1,
                running[a].name,
                crate::runner::fmt_dur(started.elapsed())
            );
            let port = admin[a];
            match round(&sess, &chains[0], &running[a], &sources, n, size, port) {
                Ok(x) => {
                    for f in &x.failures {
                        eprintln!("lab: {}: download failed: {f}", running[a].name);
                    }
                    results[a].push(x)
                }
                Err(e) => {
                    stopped = Some(format!("{e:#}"));
                    break 'outer;
                }
            }
        }
    }

    let mut rows = Vec::new();
    let mut analysis = Vec::new();
    let mut table = Vec::new();
    for (a, rs) in results.iter().enumerate() {
        let name = running[a].name;
        let all: Vec<&Sample> = rs.iter().flat_map(|r| r.samples.iter()).collect();
        let ttfb: Vec<f64> = all.iter().map(|s| s.ttfb_ms).collect();
        let total: Vec<f64> = all.iter().map(|s| s.total_ms).collect();
        let failed: usize = rs.iter().map(|r| r.failures.len()).sum();
        let jains: Vec<f64> = rs.iter().filter_map(|r| r.jain).collect();
        let hits: Option<f64> = rs.iter().map(|r| r.pool_hits).sum();
        let misses: Option<f64> = rs.iter().map(|r| r.pool_misses).sum();
        let fallbacks: Option<f64> = rs.iter().map(|r| r.lane_fallbacks).sum();
        let q = |v: &[f64], p| quantile(v, p);
        table.push(vec![
            name.to_string(),
            all.len().to_string(),
            failed.to_string(),
            super::fmt_ms(q(&ttfb, 0.5)),
            super::fmt_ms(q(&ttfb, 0.99)),
            super::fmt_ms(q(&total, 0.5)),
            super::fmt_ms(q(&total, 0.99)),
            jains
                .iter()
                .copied()
                .reduce(f64::min)
                .map(|j| format!("{j:.3}"))
                .unwrap_or("-".into()),
            match (hits, misses) {
                (Some(h), Some(m)) => format!("{h:.0} / {m:.0}"),
                _ => "-".into(),
            },
            fallbacks
                .map(|f| format!("{f:.0}"))
                .unwrap_or_else(|| "-".into()),
        ]);
        analysis.push(json!({
            "config": name, "downloads": all.len(), "failed": failed,
            "ttfb_ms": {"p50": q(&ttfb, 0.5), "p99": q(&ttfb, 0.99)},
            "total_ms": {"p50": q(&total, 0.5), "p99": q(&total, 0.99)},
            "jain_per_round": jains,
            "pool_hits": hits, "pool_misses": misses, "lane_fallbacks": fallbacks,
            "pool_hits_per_round": rs.iter().map(|r| r.pool_hits).collect::<Vec<_>>(),
            "pool_misses_per_round": rs.iter().map(|r| r.pool_misses).collect::<Vec<_>>(),
        }));
        rows.push(Row::new(
            "",
            &format!("{n}x{addrs}"),
            name,
            topo.bounds(size),
            all.iter().map(|s| SampleOut::from(*s)).collect(),
            rs.iter().flat_map(|r| r.failures.clone()).collect(),
        ));
    }
    print_table(
        &format!(
            "{n} concurrent {} downloads from {addrs} client addresses, {} round(s); ms",
            size_label(size),
            results[0].len()
        ),
        &[
            "config",
            "downloads",
            "failed",
            "TTFB p50",
            "TTFB p99",
            "total p50",
            "total p99",
            "Jain min",
            "pool hits / misses",
            "lane fallbacks",
        ],
        &table,
    );
    drop(running);
    let rep = ScenarioReport::new(
        "many",
        sess.lab_info(rounds, &[size], stopped.is_some()),
        chains.iter().map(ChainOut::of).collect(),
        rows,
        json!({
            "concurrent": n, "client_addresses": addrs, "size_bytes": size,
            "rounds": rounds, "configs": analysis,
        }),
    );
    let json_path = rep.write_json(&sess.out)?;
    let mut charts = Vec::new();
    for (metric, file, ttfb) in [
        ("TTFB", "many-ttfb.svg", true),
        ("download time", "many-total.svg", false),
    ] {
        let mut c = Chart {
            title: format!(
                "{n} concurrent {} downloads: {metric}, distribution",
                size_label(size)
            ),
            x_label: format!("{metric} (ms)"),
            y_label: "share of downloads done".into(),
            ..Default::default()
        };
        for row in &rep.rows {
            let v = row
                .samples
                .iter()
                .map(|s| if ttfb { s.ttfb_ms } else { s.total_ms });
            c.series
                .push(Series::cdf(&row.config, v, row.config == "e2e"));
        }
        charts.push(lines::write(&c, &sess.out, file)?);
    }
    drop(chains);
    rep.finish(&sess, &json_path, &charts, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index() {
        assert_eq!(jain(&[5.0; 10]), Some(1.0));
        let one = jain(&[10.0, 0.0, 0.0, 0.0]).unwrap();
        assert!((one - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[]), None);
    }
}
