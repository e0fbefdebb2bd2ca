//! Turns the link router namespaces into WAN links: one
//! [`splitway_delayline::DelayLine`] per link (NFQUEUE delay, rate and
//! drop-tail queue), or nothing at all (`--emulation none`: plain veth, for
//! developing the lab itself). Stopped and its rules removed on drop.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use splitway_delayline::{DelayLine, LinkSpec};

use crate::testbed::Testbed;
use crate::topology::{plan, Topology};

/// How links are emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// splitway's own user-space delay line (NFQUEUE).
    Delayline,
    /// No emulation: plain veth links (development only; the numbers mean nothing).
    None,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Delayline => "delayline",
            Kind::None => "none",
        }
    }
}

/// Counters of one link's emulator, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStats {
    pub link: String,
    pub packets: u64,
    pub drops: u64,
    pub enobufs: u64,
    pub max_lateness_us: u64,
    pub realtime: bool,
    pub running: bool,
}

pub struct Emulation {
    lines: Vec<(String, DelayLine)>,
}

impl Emulation {
    pub fn start(tb: &Testbed, topo: &Topology, kind: Kind) -> Result<Emulation> {
        let mut lines = Vec::new();
        if kind == Kind::Delayline {
            for (k, l) in topo.links.iter().enumerate() {
                // link router k sits at node 2k+1, between segments 2k and 2k+1
                let node = 2 * k + 1;
                let spec = LinkSpec {
                    rtt: Duration::from_secs_f64(l.rtt_ms / 1e3),
                    rate_bps: (l.mbit * 1e6) as u64,
                    queue_limit_bytes: l.queue_bytes,
                };
                let ns = tb.ns(plan::NODES[node]).name().to_string();
                let dl = DelayLine::start(
                    &ns,
                    &plan::ifname(node, 2 * k),
                    &plan::ifname(node, 2 * k + 1),
                    7700 + 10 * k as u16,
                    spec,
                )
                .with_context(|| format!("starting the delay line of link {}-{}", l.a, l.b))?;
                lines.push((format!("{}-{}", l.a, l.b), dl));
            }
        }
        Ok(Emulation { lines })
    }

    pub fn stats(&self) -> Vec<LinkStats> {
        self.lines
            .iter()
            .map(|(name, dl)| {
                let s = dl.stats();
                LinkStats {
                    link: name.clone(),
                    packets: s.a_to_b.packets + s.b_to_a.packets,
                    drops: s.a_to_b.drops + s.b_to_a.drops,
                    enobufs: s.a_to_b.enobufs + s.b_to_a.enobufs,
                    max_lateness_us: s.a_to_b.max_lateness.max(s.b_to_a.max_lateness).as_micros()
                        as u64,
                    realtime: s.realtime,
                    running: s.running,
                }
            })
            .collect()
    }

    /// A link whose emulator died (its packets are dropped: fail closed).
    pub fn dead(&self) -> Option<String> {
        self.lines
            .iter()
            .find(|(_, dl)| !dl.stats().running)
            .map(|(n, _)| n.clone())
    }
}
