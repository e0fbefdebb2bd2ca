//! The lab's results as one serializable report, built from the raw samples,
//! and its three renderings: terminal table, `results.json`, SVG charts.

pub mod charts;
pub mod lines;
pub mod scenario;
pub mod table;

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::measure::EmulationCheck;
use crate::runner::Points;
use crate::stats::{summarize, Summary};
use crate::topology::{Bounds, Topology};

#[derive(Debug, Clone, Serialize)]
pub struct ConfigInfo {
    pub name: String,
    pub description: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleOut {
    pub connect_ms: f64,
    pub ttfb_ms: f64,
    pub total_ms: f64,
}

/// One (configuration, size) point.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub config: String,
    pub size_bytes: u64,
    /// Successful runs.
    pub runs: usize,
    pub failed: usize,
    pub ttfb_ms: Option<Summary>,
    pub total_ms: Option<Summary>,
    pub connect_ms: Option<Summary>,
    /// Median over the ideal-pipe bound.
    pub ttfb_ratio: Option<f64>,
    pub total_ratio: Option<f64>,
    pub samples: Vec<SampleOut>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopologyOut {
    pub links: Vec<crate::topology::Link>,
    pub r1_ms: f64,
    pub rtt_ms: f64,
    pub bottleneck_mbit: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabInfo {
    pub version: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub runs: usize,
    pub sizes: Vec<u64>,
    pub congestion_control: String,
    pub tcp_metrics_flushed_per_run: bool,
    pub interrupted: bool,
    /// The host's 1-minute load average at start and end (other work on
    /// the machine disturbs the emulation; see `warnings`).
    pub loadavg_start: f64,
    pub loadavg_end: f64,
    pub cpus: usize,
}

/// Print each delay line's counters, loudly when it was off.
pub fn print_link_stats(stats: &[crate::emulation::LinkStats]) {
    for l in stats {
        println!(
            "  delay line {}: {} packets, {} dropped by the queue limit, {} lost at random ({}% set), {} released over 1 ms late (worst {:.1} ms), realtime {}",
            l.link,
            l.packets,
            l.drops,
            l.lost,
            l.loss_pct_configured,
            l.late_over_1ms,
            l.max_lateness_us as f64 / 1e3,
            l.realtime
        );
        if let Some(w) = l.warning() {
            println!("  !!! EMULATION OFF during the runs: {w}");
        }
    }
}

/// The host's 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub lab: LabInfo,
    pub topology: TopologyOut,
    pub emulation: EmulationCheck,
    /// RTTs probed again after the runs (drift check).
    pub emulation_after: Option<crate::measure::RttCheck>,
    /// Every emulation warning (before, during and after the runs); empty
    /// when the emulation held its goals throughout.
    pub warnings: Vec<String>,
    /// Counters of each link's delay line over the whole lab.
    pub emulation_stats: Vec<crate::emulation::LinkStats>,
    pub configs: Vec<ConfigInfo>,
    pub results: Vec<ResultRow>,
    pub bounds: Vec<Bounds>,
}

impl Report {
    pub fn build(
        lab: LabInfo,
        topo: &Topology,
        emulation: EmulationCheck,
        configs: Vec<ConfigInfo>,
        sizes: &[u64],
        points: &Points,
    ) -> Report {
        let bounds: Vec<Bounds> = sizes.iter().map(|&s| topo.bounds(s)).collect();
        let mut results = Vec::new();
        for (ci, c) in configs.iter().enumerate() {
            for (si, &size) in sizes.iter().enumerate() {
                let empty = Default::default();
                let p = points.get(&(ci, si)).unwrap_or(&empty);
                let ttfb: Vec<f64> = p.samples.iter().map(|s| s.ttfb_ms).collect();
                let total: Vec<f64> = p.samples.iter().map(|s| s.total_ms).collect();
                let conn: Vec<f64> = p.samples.iter().map(|s| s.connect_ms).collect();
                let ttfb_s = summarize(&ttfb);
                let total_s = summarize(&total);
                results.push(ResultRow {
                    config: c.name.clone(),
                    size_bytes: size,
                    runs: p.samples.len(),
                    failed: p.failures.len(),
                    ttfb_ratio: ttfb_s.map(|s| s.median / bounds[si].ttfb_ms),
                    total_ratio: total_s.map(|s| s.median / bounds[si].total_ms),
                    ttfb_ms: ttfb_s,
                    total_ms: total_s,
                    connect_ms: summarize(&conn),
                    samples: p
                        .samples
                        .iter()
                        .map(|s| SampleOut {
                            connect_ms: s.connect_ms,
                            ttfb_ms: s.ttfb_ms,
                            total_ms: s.total_ms,
                        })
                        .collect(),
                    errors: p.failures.clone(),
                });
            }
        }
        Report {
            lab,
            topology: TopologyOut {
                links: topo.links.clone(),
                r1_ms: topo.r1_ms(),
                rtt_ms: topo.rtt_ms(),
                bottleneck_mbit: topo.bottleneck_mbit(),
            },
            emulation,
            emulation_after: None,
            warnings: Vec::new(),
            emulation_stats: Vec::new(),
            configs,
            results,
            bounds,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
