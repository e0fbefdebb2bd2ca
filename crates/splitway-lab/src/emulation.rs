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
    /// Packets released more than 1 ms after their scheduled time.
    pub late_over_1ms: u64,
    pub realtime: bool,
    pub running: bool,
}

/// Packets in histogram buckets that lie entirely above `limit`.
pub fn late_over(hist: &[(Duration, u64)], limit: Duration) -> u64 {
    let mut lower = Duration::ZERO;
    let mut n = 0;
    for &(upper, count) in hist {
        if lower >= limit {
            n += count;
        }
        lower = upper;
    }
    n
}

/// Share of late packets above which the report shouts.
pub const LATE_SHARE_TOLERANCE: f64 = 0.001;

impl LinkStats {
    /// A warning if this link's emulator died or was often late.
    pub fn warning(&self) -> Option<String> {
        if !self.running {
            return Some(format!(
                "delay line {}: the emulator died (the link dropped everything)",
                self.link
            ));
        }
        let share = self.late_over_1ms as f64 / self.packets.max(1) as f64;
        if share > LATE_SHARE_TOLERANCE || self.enobufs > 0 {
            return Some(format!(
                "delay line {}: {} packets ({:.2}%) released over 1 ms late (worst {:.1} ms), {} netlink overflows: \
                 the machine was too busy for the emulation",
                self.link,
                self.late_over_1ms,
                share * 100.0,
                self.max_lateness_us as f64 / 1e3,
                self.enobufs
            ));
        }
        None
    }
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
                    late_over_1ms: late_over(
                        &s.a_to_b.lateness_histogram,
                        Duration::from_millis(1),
                    ) + late_over(
                        &s.b_to_a.lateness_histogram,
                        Duration::from_millis(1),
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_packets_count_buckets_above_the_limit() {
        let ms = Duration::from_millis;
        let hist = vec![(ms(0), 0), (ms(1), 100), (ms(2), 3), (Duration::MAX, 2)];
        assert_eq!(late_over(&hist, ms(1)), 5);
        assert_eq!(late_over(&hist, ms(2)), 2);
        let s = LinkStats {
            link: "a-b".into(),
            packets: 1000,
            drops: 0,
            enobufs: 0,
            max_lateness_us: 3000,
            late_over_1ms: 5,
            realtime: true,
            running: true,
        };
        assert!(s.warning().is_some());
        assert!(LinkStats {
            late_over_1ms: 1,
            ..s.clone()
        }
        .warning()
        .is_none());
    }
}
