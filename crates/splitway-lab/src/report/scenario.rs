//! The report of a scenario other than `paper`: every chain with its
//! topology and emulation check, one row per (chain, configuration, size)
//! with its statistics and samples, and the scenario's own analysis (free
//! JSON: comparisons, break-even points, fairness). Written as
//! `OUT/<scenario>.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{LabInfo, SampleOut, TopologyOut};
use crate::configs::Running;
use crate::curl::Sample;
use crate::emulation::LinkStats;
use crate::measure::EmulationCheck;
use crate::runner::Points;
use crate::session::{Chain, Session};
use crate::stats::{summarize, Summary};
use crate::topology::{Bounds, Topology};

#[derive(Debug, Clone, Serialize)]
pub struct ChainOut {
    pub label: String,
    pub topology: TopologyOut,
    pub emulation: EmulationCheck,
    /// The delay lines' counters since the check (or the last reset).
    pub emulation_stats: Vec<LinkStats>,
}

pub fn topology_out(t: &Topology) -> TopologyOut {
    TopologyOut {
        links: t.links.clone(),
        r1_ms: t.r1_ms(),
        rtt_ms: t.rtt_ms(),
        bottleneck_mbit: t.bottleneck_mbit(),
    }
}

impl ChainOut {
    pub fn of(c: &Chain) -> ChainOut {
        ChainOut {
            label: c.label.clone(),
            topology: topology_out(&c.topo),
            emulation: c.check.clone(),
            emulation_stats: c.emu.stats(),
        }
    }
}

/// One (chain, configuration, size) point, with a scenario-defined phase
/// (e.g. the loss setting it ran under; empty if none).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub chain: String,
    pub phase: String,
    pub config: String,
    pub size_bytes: u64,
    pub runs: usize,
    pub failed: usize,
    pub ttfb_ms: Option<Summary>,
    pub total_ms: Option<Summary>,
    /// The ideal-pipe bounds of the chain for this size.
    pub bound_ttfb_ms: f64,
    pub bound_total_ms: f64,
    pub samples: Vec<SampleOut>,
    pub errors: Vec<String>,
}

impl Row {
    /// A row from its samples and errors: counts and summaries follow from
    /// them (`failed` is the number of errors), the bounds from the chain.
    pub fn new(
        chain: &str,
        phase: &str,
        config: &str,
        bounds: Bounds,
        samples: Vec<SampleOut>,
        errors: Vec<String>,
    ) -> Row {
        let ttfb: Vec<f64> = samples.iter().map(|s| s.ttfb_ms).collect();
        let total: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
        Row {
            chain: chain.to_string(),
            phase: phase.to_string(),
            config: config.to_string(),
            size_bytes: bounds.size_bytes,
            runs: samples.len(),
            failed: errors.len(),
            ttfb_ms: summarize(&ttfb),
            total_ms: summarize(&total),
            bound_ttfb_ms: bounds.ttfb_ms,
            bound_total_ms: bounds.total_ms,
            samples,
            errors,
        }
    }
}

impl From<&Sample> for SampleOut {
    fn from(s: &Sample) -> SampleOut {
        SampleOut {
            connect_ms: s.connect_ms,
            ttfb_ms: s.ttfb_ms,
            total_ms: s.total_ms,
        }
    }
}

/// Rows of one runner outcome: `running[i]` ran in `chains[running[i].chain]`.
pub fn rows(
    points: &Points,
    running: &[Running],
    chains: &[&Chain],
    sizes: &[u64],
    phase: &str,
) -> Vec<Row> {
    let mut out = Vec::new();
    for (ci, r) in running.iter().enumerate() {
        let chain = chains[r.chain];
        for (si, &size) in sizes.iter().enumerate() {
            let empty = Default::default();
            let p = points.get(&(ci, si)).unwrap_or(&empty);
            out.push(Row::new(
                &chain.label,
                phase,
                r.name,
                chain.topo.bounds(size),
                p.samples.iter().map(SampleOut::from).collect(),
                p.failures.clone(),
            ));
        }
    }
    out
}

/// The median of a metric at one point, if measured.
pub fn median(
    rows: &[Row],
    chain: &str,
    phase: &str,
    config: &str,
    size: u64,
    ttfb: bool,
) -> Option<f64> {
    rows.iter()
        .find(|r| {
            r.chain == chain && r.phase == phase && r.config == config && r.size_bytes == size
        })
        .and_then(|r| if ttfb { r.ttfb_ms } else { r.total_ms })
        .map(|s| s.median)
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    /// The command line that made it.
    pub command: String,
    pub lab: LabInfo,
    pub chains: Vec<ChainOut>,
    pub rows: Vec<Row>,
    /// The scenario's own analysis.
    pub analysis: serde_json::Value,
    /// Every emulation warning; empty when the emulation held its goals.
    pub warnings: Vec<String>,
}

impl ScenarioReport {
    /// A scenario's report: this process's command line, the session's
    /// facts, and every chain's emulation warnings collected.
    pub fn new(
        scenario: &str,
        lab: LabInfo,
        chains: Vec<ChainOut>,
        rows: Vec<Row>,
        analysis: serde_json::Value,
    ) -> ScenarioReport {
        let mut rep = ScenarioReport {
            scenario: scenario.to_string(),
            command: command_line(),
            lab,
            chains,
            rows,
            analysis,
            warnings: Vec::new(),
        };
        rep.collect_warnings();
        rep
    }

    /// The end of every scenario, after its JSON and charts were written:
    /// the emulation warnings, the files written, how long the lab took; a
    /// lab that stopped early is an error (its partial results are kept).
    pub fn finish(
        &self,
        sess: &Session,
        json: &Path,
        charts: &[PathBuf],
        stopped: Option<String>,
    ) -> Result<()> {
        self.print_warnings();
        let mut names = vec![json.display().to_string()];
        names.extend(charts.iter().map(|p| p.display().to_string()));
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                println!("\nwrote {} and {last}", rest.join(", "))
            }
            _ => println!("\nwrote {}", json.display()),
        }
        println!(
            "lab took {}; load average {:.1} at start, {:.1} at end",
            crate::runner::fmt_dur(sess.started.elapsed()),
            self.lab.loadavg_start,
            self.lab.loadavg_end
        );
        if let Some(why) = stopped {
            bail!("the lab stopped early ({why}); partial results were written");
        }
        Ok(())
    }

    /// Collect the warnings of every chain (check and counters).
    fn collect_warnings(&mut self) {
        for c in &self.chains {
            let tag = if c.label.is_empty() {
                String::new()
            } else {
                format!("chain {}: ", c.label)
            };
            self.warnings
                .extend(c.emulation.warnings.iter().map(|w| format!("{tag}{w}")));
            self.warnings.extend(
                c.emulation_stats
                    .iter()
                    .filter_map(|l| l.warning())
                    .map(|w| format!("{tag}{w}")),
            );
        }
    }

    pub fn write_json(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.scenario));
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Print the warnings loudly (or that there were none).
    pub fn print_warnings(&self) {
        if self.warnings.is_empty() {
            println!(
                "emulation OK throughout (checks before the runs, delay-line counters during them)"
            );
        }
        for w in &self.warnings {
            println!("!!! EMULATION OFF: {w}");
        }
    }
}

/// The command line of this process, for the report.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}
