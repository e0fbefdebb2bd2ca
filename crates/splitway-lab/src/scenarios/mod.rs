//! What a lab run measures: one module per scenario, each a function from
//! the arguments to a finished report. Adding a scenario is a new file here
//! and one line in [`SCENARIOS`].
//!
//! Shared by all: [`crate::session::Session`] (lock, tools, chains built
//! and checked) and [`crate::report::scenario`] (rows, JSON, line charts).

mod bulk;
mod loss;
mod many;
mod miniproxy;
mod modules;
mod paper;
mod proxy;
mod web;

use anyhow::{bail, Result};

use crate::LabArgs;

/// A scenario: name, one-line description, entry point.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&LabArgs) -> Result<()>,
}

/// Every scenario `--scenario` accepts; the first is the default.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "paper",
        about: "the KTCP paper's path and figures: every configuration, 10K-10M",
        run: paper::run,
    },
    Scenario {
        name: "miniproxy",
        about: "Miniproxy's Figures 4 and 5: 0-3 relays over 100 ms, and one relay pushed off the path",
        run: miniproxy::run,
    },
    Scenario {
        name: "loss",
        about: "random loss 0/0.1/0.5/1 % on the long link, then on the client's link: e2e vs splitway",
        run: loss::run,
    },
    Scenario {
        name: "many",
        about: "100 concurrent downloads from 10 client addresses through one ingress, pool smaller than the load",
        run: many::run,
    },
    Scenario {
        name: "bulk",
        about: "10 KiB requests' TTFB unloaded and while a 100 MB download fills the path",
        run: bulk::run,
    },
    Scenario {
        name: "web",
        about: "HTTPS (TLS 1.3, per-run certificate) and headless Chromium loading a median-shaped page: e2e vs splitway",
        run: web::run,
    },
    Scenario {
        name: "proxy",
        about: "curl --socks5-hostname and curl -x through splitway's proxy ingress vs ssh -D, TTFB and total",
        run: proxy::run,
    },
    Scenario {
        name: "modules",
        about: "stream modules on the relay legs: random, a real corpus, it again, its new version; with and without modules",
        run: modules::run,
    },
];

/// Names of the scenarios, for messages.
pub fn known() -> String {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: LabArgs) -> Result<()> {
    match SCENARIOS.iter().find(|s| s.name == args.scenario) {
        Some(s) => (s.run)(&args),
        None => bail!("unknown scenario {:?}; known: {}", args.scenario, known()),
    }
}

/// Start `arms` (chain index, configuration), numbering the splitway
/// variants per chain.
pub(crate) fn start_arms(
    sess: &crate::session::Session,
    chains: &[crate::session::Chain],
    arms: &[(usize, &'static str)],
) -> Result<Vec<crate::configs::Running>> {
    let mut nth = vec![0usize; chains.len()];
    let mut running = Vec::new();
    for &(c, name) in arms {
        let label = &chains[c].label;
        eprintln!("lab: starting {name} in chain {label} ...");
        running.push(sess.start_config(&chains[c], c, name, nth[c])?);
        if crate::configs::is_splitway(name) {
            nth[c] += 1;
        }
    }
    Ok(running)
}

/// Run every (arm, size) `runs` times, interleaved; progress on stderr.
pub(crate) fn measure(
    sess: &crate::session::Session,
    chains: &[crate::session::Chain],
    running: &mut [crate::configs::Running],
    sizes: &[u64],
    runs: usize,
) -> crate::runner::Outcome {
    let tbs: Vec<&crate::testbed::Testbed> = chains.iter().map(|c| &c.tb).collect();
    let labels: Vec<String> = chains.iter().map(|c| c.label.clone()).collect();
    let plan = crate::runner::Plan {
        chains: &tbs,
        chain_labels: &labels,
        sizes,
        runs,
        timeout: sess.timeout,
        flush_metrics: !sess.keep_tcp_metrics,
    };
    crate::runner::run(running, &plan)
}

/// Print a plain table: header, then rows.
pub(crate) fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    println!("\n{title}");
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:>width$}", c, width = w.get(i).copied().unwrap_or(0)))
            .collect();
        println!("  {}", s.join("  "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// `x` in ms with one decimal, or `-`.
pub(crate) fn fmt_ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// Change in per cent from `base` to `x`, or `-`.
pub(crate) fn fmt_change(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:+.1}%", (x / b - 1.0) * 100.0),
        _ => "-".into(),
    }
}
