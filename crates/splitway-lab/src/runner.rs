//! The measurement loop: every (configuration, size) point N times, with
//! configurations interleaved run by run (and their order rotated each round)
//! so drift hits all alike; live progress with an ETA.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::configs::Running;
use crate::curl::{self, Sample};
use crate::testbed::Testbed;

/// All samples of one (configuration, size) point.
#[derive(Debug, Default, Clone)]
pub struct Point {
    pub samples: Vec<Sample>,
    pub failures: Vec<String>,
    pub secs: f64,
}

/// Samples keyed by (config index, size index).
pub type Points = BTreeMap<(usize, usize), Point>;

/// Give up on a configuration after this many failed downloads in a row.
const MAX_CONSECUTIVE_FAILURES: usize = 3;

pub struct Plan<'a> {
    /// The chains the configurations run in (`Running::chain` indexes it).
    pub chains: &'a [&'a Testbed],
    /// A label per chain for the progress line (may be empty).
    pub chain_labels: &'a [String],
    pub sizes: &'a [u64],
    pub runs: usize,
    pub timeout: Duration,
    pub flush_metrics: bool,
}

/// The progress line: bar, counts, current point, ETA.
pub struct Progress {
    total: usize,
    pub done: usize,
    start: Instant,
    pub tty: bool,
    last_print: Instant,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            tty,
            last_print: Instant::now() - Duration::from_secs(60),
        }
    }

    pub fn show(&mut self, what: &str, eta: Option<Duration>) {
        let pct = self.done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = (pct * width as f64).round() as usize;
        let eta = eta.map(fmt_dur).unwrap_or_else(|| "?".into());
        let line = format!(
            "[{}{}] {:>4}/{} {:>3.0}%  {:<34} elapsed {}  ETA {}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.done,
            self.total,
            pct * 100.0,
            what,
            fmt_dur(self.start.elapsed()),
            eta
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if self.last_print.elapsed() >= Duration::from_secs(10) || self.done == self.total {
            eprintln!("{line}");
            self.last_print = Instant::now();
        }
    }

    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

pub fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Expected remaining time: mean duration so far of each remaining point (or
/// of all points, for points not yet seen).
fn eta(points: &Points, remaining: &[(usize, usize)]) -> Option<Duration> {
    let mut all = (0.0, 0usize);
    for p in points.values() {
        all.0 += p.secs;
        all.1 += p.samples.len() + p.failures.len();
    }
    if all.1 == 0 {
        return None;
    }
    let overall = all.0 / all.1 as f64;
    let secs: f64 = remaining
        .iter()
        .map(|k| match points.get(k) {
            Some(p) if !p.samples.is_empty() => {
                p.secs / (p.samples.len() + p.failures.len()) as f64
            }
            _ => overall,
        })
        .sum();
    Some(Duration::from_secs_f64(secs))
}

/// What the loop measured, and why it stopped early (if it did).
pub struct Outcome {
    pub points: Points,
    pub stopped: Option<String>,
}

/// Run every point. Stops early (keeping what it has) when interrupted or
/// when a configuration breaks for good.
pub fn run(configs: &mut [Running], plan: &Plan) -> Outcome {
    let mut points = Points::new();
    let stopped = run_into(configs, plan, &mut points)
        .err()
        .map(|e| format!("{e:#}"));
    Outcome { points, stopped }
}

fn run_into(configs: &mut [Running], plan: &Plan, points: &mut Points) -> Result<()> {
    let nc = configs.len();
    let mut order: Vec<(usize, usize)> = Vec::new();
    for r in 0..plan.runs {
        for s in 0..plan.sizes.len() {
            for i in 0..nc {
                order.push(((i + r) % nc, s));
            }
        }
    }
    let mut progress = Progress::new(order.len());
    let mut streak = vec![0usize; nc];
    for (idx, &(c, s)) in order.iter().enumerate() {
        if crate::host::stopping() {
            progress.finish();
            bail!("interrupted");
        }
        let size = plan.sizes[s];
        let cfg = &mut configs[c];
        if let Some(dead) = cfg.dead_child() {
            progress.finish();
            bail!("configuration {}: {dead}; logs: {:?}", cfg.name, cfg.logs);
        }
        let tb = plan.chains[cfg.chain];
        let label = plan
            .chain_labels
            .get(cfg.chain)
            .map(|l| format!("{l} "))
            .unwrap_or_default();
        progress.show(
            &format!("{label}{} {}", cfg.name, crate::units::size_label(size)),
            eta(points, &order[idx..]),
        );
        if plan.flush_metrics {
            tb.flush_tcp_metrics();
        }
        let t0 = Instant::now();
        let res = curl::fetch(tb, &cfg.url(size), size, plan.timeout);
        let p = points.entry((c, s)).or_default();
        p.secs += t0.elapsed().as_secs_f64();
        match res {
            Ok(sample) => {
                p.samples.push(sample);
                streak[c] = 0;
            }
            Err(e) => {
                if crate::host::stopping() {
                    progress.finish();
                    bail!("interrupted");
                }
                let msg = format!("{e:#}");
                if progress.tty {
                    eprintln!();
                }
                eprintln!(
                    "lab: {label}{} {}: download failed: {msg}",
                    cfg.name,
                    crate::units::size_label(size)
                );
                p.failures.push(msg);
                streak[c] += 1;
                if streak[c] >= MAX_CONSECUTIVE_FAILURES {
                    progress.finish();
                    let logs: Vec<String> = cfg
                        .logs
                        .iter()
                        .map(|l| format!("--- {}\n{}", l.display(), crate::configs::tail(l, 10)))
                        .collect();
                    bail!(
                        "configuration {label}{}: {MAX_CONSECUTIVE_FAILURES} downloads in a row failed\n{}",
                        cfg.name,
                        logs.join("\n")
                    );
                }
            }
        }
        progress.done += 1;
    }
    progress.show("done", Some(Duration::ZERO));
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            connect_ms: 1.0,
            ttfb_ms: 2.0,
            total_ms: 3.0,
        }
    }

    #[test]
    fn eta_uses_per_point_means_then_overall() {
        let mut pts = Points::new();
        assert_eq!(eta(&pts, &[(0, 0)]), None);
        pts.insert(
            (0, 0),
            Point {
                samples: vec![sample(), sample()],
                failures: vec![],
                secs: 2.0,
            },
        );
        pts.insert(
            (1, 0),
            Point {
                samples: vec![sample()],
                failures: vec![],
                secs: 4.0,
            },
        );
        // (0,0): 1 s each; (1,0): 4 s; unseen (2,0): overall 6 s / 3 = 2 s
        let e = eta(&pts, &[(0, 0), (1, 0), (2, 0)]).unwrap();
        assert!((e.as_secs_f64() - 7.0).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(fmt_dur(Duration::from_secs(65)), "1m05s");
        assert_eq!(fmt_dur(Duration::from_secs(3725)), "1h02m");
    }
}
