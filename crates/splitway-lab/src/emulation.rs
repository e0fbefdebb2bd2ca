//! Turns the link router namespaces into WAN links: one
//! [`splitway_delayline::DelayLine`] per link (NFQUEUE delay, rate and
//! drop-tail queue), or nothing at all (`--emulation none`: plain veth, for
//! developing the lab itself). Stopped and its rules removed on drop.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use splitway_delayline::{DelayLine, Impairments, LinkSpec};

use crate::testbed::Testbed;
use crate::topology::Topology;

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
    /// Packets lost at random by the emulator, and the loss set (per cent).
    pub lost: u64,
    pub loss_pct_configured: f64,
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
        if self.loss_pct_configured > 0.0 {
            // Over enough packets (≥ 1000 expected losses, σ ≈ 3 %) the
            // emulator's own rate must be within ±10 % of the target.
            let expected = self.packets as f64 * self.loss_pct_configured / 100.0;
            let got = self.lost as f64;
            if expected >= 1000.0 && (got - expected).abs() > 0.1 * expected {
                return Some(format!(
                    "delay line {}: lost {:.3} % of {} packets, configured {} %",
                    self.link,
                    got / self.packets as f64 * 100.0,
                    self.packets,
                    self.loss_pct_configured
                ));
            }
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
    /// (link name, its delay line, loss per cent now set).
    lines: Vec<(String, DelayLine, f64)>,
}

impl Emulation {
    pub fn start(tb: &Testbed, topo: &Topology, kind: Kind) -> Result<Emulation> {
        let mut lines = Vec::new();
        if kind == Kind::Delayline {
            let plan = tb.plan();
            for (k, l) in topo.links.iter().enumerate() {
                // link router k sits at node 2k+1, between segments 2k and 2k+1
                let node = plan.link_node(k);
                let spec = LinkSpec {
                    rtt: Duration::from_secs_f64(l.rtt_ms / 1e3),
                    rate_bps: (l.mbit * 1e6) as u64,
                    queue_limit_bytes: l.queue_bytes,
                    jitter: Duration::from_secs_f64(l.jitter_ms / 1e3),
                    ..LinkSpec::default()
                }
                .loss_pct(l.loss_pct);
                let ns = tb.link_ns(k).name().to_string();
                let dl = DelayLine::start(
                    &ns,
                    &plan.ifname(node, 2 * k),
                    &plan.ifname(node, 2 * k + 1),
                    7700 + 10 * k as u16,
                    spec,
                )
                .with_context(|| format!("starting the delay line of link {}", l.name()))?;
                lines.push((l.name(), dl, l.loss_pct));
            }
        }
        Ok(Emulation { lines })
    }

    pub fn stats(&self) -> Vec<LinkStats> {
        self.lines
            .iter()
            .map(|(name, dl, loss)| {
                let s = dl.stats();
                LinkStats {
                    link: name.clone(),
                    packets: s.a_to_b.packets + s.b_to_a.packets,
                    drops: s.a_to_b.drops + s.b_to_a.drops,
                    lost: s.a_to_b.lost + s.b_to_a.lost,
                    loss_pct_configured: *loss,
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
            .find(|(_, dl, _)| !dl.stats().running)
            .map(|(n, _, _)| n.clone())
    }

    /// Set link `k`'s random loss (per cent, both directions) and jitter
    /// while it runs. No-op without emulation.
    pub fn set_impairments(&mut self, k: usize, loss_pct: f64, jitter_ms: f64) -> Result<()> {
        if let Some((name, dl, loss)) = self.lines.get_mut(k) {
            let i = Impairments::from_pct(loss_pct, (jitter_ms * 1e6) as u64);
            dl.set_impairments(i, i)
                .with_context(|| format!("setting loss on link {name}"))?;
            *loss = loss_pct;
        }
        Ok(())
    }

    /// Zero every link's counters (e.g. between phases of a scenario).
    pub fn reset_stats(&self) {
        for (_, dl, _) in &self.lines {
            dl.reset_stats();
        }
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
            lost: 0,
            loss_pct_configured: 0.0,
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
        // loss: 1 % of 200,000 packets = 2000 expected; 2300 is off by 15 %
        let l = LinkStats {
            packets: 200_000,
            late_over_1ms: 0,
            lost: 2300,
            loss_pct_configured: 1.0,
            ..s.clone()
        };
        assert!(l.warning().unwrap().contains("lost"));
        assert!(LinkStats {
            lost: 2100,
            ..l.clone()
        }
        .warning()
        .is_none());
        // too few packets to judge
        assert!(LinkStats {
            packets: 50_000,
            ..l
        }
        .warning()
        .is_none());
    }
}
