//! `bulk`: small requests while a bulk download fills the path.
//!
//! For each configuration in turn: `requests` 10 KiB downloads one after
//! another with the path idle (unloaded TTFB), then one 100 MB download
//! and, from 1 s after its start, the same 10 KiB downloads every 500 ms
//! while it runs (loaded TTFB; `--quick`: 10 MB, from 200 ms, every 150 ms). Issue 17's
//! goal: loaded TTFB p50 ≤ 1.1 × unloaded, max ≤ 400 ms on the paper path.
//! The bulk download's own time is reported too. Defaults: e2e, splitway
//! (a leg per flow), splitway-mux, splitway-mux-paced; `--configs` picks.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{fmt_ms, print_table, start_arms};
use crate::configs::Running;
use crate::curl::{self, Sample};
use crate::report::scenario::{ChainOut, Row, ScenarioReport};
use crate::report::SampleOut;
use crate::session::{Chain, Session};
use crate::stats::quantile;
use crate::topology::Topology;
use crate::units::size_label;
use crate::LabArgs;

const SMALL: u64 = 10 * 1024;

/// One configuration's measurements.
struct Arm {
    unloaded: Vec<Sample>,
    loaded: Vec<Sample>,
    bulk: Option<Sample>,
    failures: Vec<String>,
}

fn small_one(sess: &Session, chain: &Chain, r: &Running) -> Result<Sample> {
    let url = r.url(SMALL);
    let c = curl::spawn(&chain.tb, &url, None, &[], sess.timeout)?;
    curl::finish(c, &url, SMALL, sess.timeout)
}

/// When the loaded requests start after the bulk one, and their spacing.
struct Timing {
    first: Duration,
    every: Duration,
}

fn arm(
    sess: &Session,
    chain: &Chain,
    r: &Running,
    big: u64,
    requests: usize,
    t: &Timing,
) -> Result<Arm> {
    let mut a = Arm {
        unloaded: Vec::new(),
        loaded: Vec::new(),
        bulk: None,
        failures: Vec::new(),
    };
    if !sess.keep_tcp_metrics {
        chain.tb.flush_tcp_metrics();
    }
    for _ in 0..requests {
        match small_one(sess, chain, r) {
            Ok(s) => a.unloaded.push(s),
            Err(e) => {
                crate::host::check_stop()?;
                a.failures.push(format!("unloaded: {e:#}"));
            }
        }
    }
    let url = r.url(big);
    let bulk = curl::spawn(&chain.tb, &url, None, &[], sess.timeout)?;
    let start = Instant::now();
    for i in 0..requests {
        let at = t.first + t.every * i as u32;
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        match small_one(sess, chain, r) {
            Ok(s) => a.loaded.push(s),
            Err(e) => {
                crate::host::check_stop()?;
                a.failures.push(format!("loaded: {e:#}"));
            }
        }
    }
    match curl::finish(bulk, &url, big, sess.timeout) {
        Ok(s) => a.bulk = Some(s),
        Err(e) => {
            crate::host::check_stop()?;
            a.failures.push(format!("bulk: {e:#}"));
        }
    }
    Ok(a)
}

fn refs(v: &[Sample]) -> Vec<&Sample> {
    v.iter().collect()
}

fn row(config: &str, phase: &str, size: u64, samples: &[&Sample], topo: &Topology) -> Row {
    let samples = samples.iter().map(|s| SampleOut::from(*s)).collect();
    Row::new("", phase, config, topo.bounds(size), samples, Vec::new())
}

pub fn run(args: &LabArgs) -> Result<()> {
    let big = args.sizes_or("100MB", "10MB")?[0];
    let requests = args.runs_or(10, 3)?;
    let topo = if args.quick && args.topology.is_none() && args.rtt.is_none() {
        Topology::chain(&[4.0, 12.0, 4.0], 100.0)
    } else {
        args.topology()?
    };
    if topo.relays() == 0 {
        bail!("--scenario bulk needs at least one relay");
    }
    let sess = Session::open(args, &[])?;
    let chains = vec![sess.chain("", &topo, &[SMALL, big])?];
    let names = match &args.configs {
        Some(c) => crate::configs::select(c)?,
        None => vec!["e2e", "splitway", "splitway-mux", "splitway-mux-paced"],
    };
    let arms: Vec<(usize, &'static str)> = names.iter().map(|n| (0, *n)).collect();
    let running = start_arms(&sess, &chains, &arms)?;
    eprintln!(
        "lab: {requests} x 10K unloaded, then a {} download with {requests} x 10K during it: {}",
        size_label(big),
        names.join(", ")
    );
    let timing = if args.quick {
        Timing {
            first: Duration::from_millis(200),
            every: Duration::from_millis(150),
        }
    } else {
        Timing {
            first: Duration::from_secs(1),
            every: Duration::from_millis(500),
        }
    };
    let started = Instant::now();
    let mut results = Vec::new();
    let mut stopped = None;
    for r in &running {
        eprintln!(
            "lab: {} ({} elapsed)",
            r.name,
            crate::runner::fmt_dur(started.elapsed())
        );
        match arm(&sess, &chains[0], r, big, requests, &timing) {
            Ok(a) => {
                for f in &a.failures {
                    eprintln!("lab: {}: {f}", r.name);
                }
                results.push(a);
            }
            Err(e) => {
                stopped = Some(format!("{e:#}"));
                break;
            }
        }
    }
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut analysis = Vec::new();
    for (r, a) in running.iter().zip(&results) {
        let q = |v: &[Sample], p| quantile(&v.iter().map(|s| s.ttfb_ms).collect::<Vec<_>>(), p);
        let max = |v: &[Sample]| v.iter().map(|s| s.ttfb_ms).reduce(f64::max);
        let (u50, l50) = (q(&a.unloaded, 0.5), q(&a.loaded, 0.5));
        let ratio = u50.zip(l50).map(|(u, l)| l / u);
        table.push(vec![
            r.name.to_string(),
            fmt_ms(u50),
            fmt_ms(l50),
            ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            fmt_ms(max(&a.loaded)),
            fmt_ms(a.bulk.as_ref().map(|s| s.total_ms)),
            a.failures.len().to_string(),
        ]);
        analysis.push(json!({
            "config": r.name,
            "unloaded_ttfb_ms": {"p50": u50, "max": max(&a.unloaded)},
            "loaded_ttfb_ms": {"p50": l50, "max": max(&a.loaded)},
            "loaded_over_unloaded_p50": ratio,
            "bulk_total_ms": a.bulk.as_ref().map(|s| s.total_ms),
            "failures": a.failures,
        }));
        rows.push(row(r.name, "unloaded", SMALL, &refs(&a.unloaded), &topo));
        rows.push(row(r.name, "during bulk", SMALL, &refs(&a.loaded), &topo));
        if let Some(b) = &a.bulk {
            rows.push(row(r.name, "bulk", big, &[b], &topo));
        }
    }
    print_table(
        &format!(
            "10K TTFB unloaded vs during a {} download ({requests} each); ms",
            size_label(big)
        ),
        &[
            "config",
            "unloaded p50",
            "loaded p50",
            "loaded/unloaded",
            "loaded max",
            "bulk total",
            "failed",
        ],
        &table,
    );
    drop(running);
    let rep = ScenarioReport::new(
        "bulk",
        sess.lab_info(requests, &[SMALL, big], stopped.is_some()),
        chains.iter().map(ChainOut::of).collect(),
        rows,
        json!({"requests": requests, "bulk_bytes": big, "configs": analysis}),
    );
    let json_path = rep.write_json(&sess.out)?;
    drop(chains);
    rep.finish(&sess, &json_path, &[], stopped)
}
