//! The lab's path: four hosts in a chain, three emulated links between them.
//!
//! ```text
//! client ─[L1]─ ingress ─[L2]─ egress ─[L3]─ server
//! ```
//! Each link has a round-trip time, a rate and a queue limit. This module owns
//! the defaults (the KTCP paper's measured path), the topology file format, the
//! per-link flags, the addressing plan and the ideal-pipe bounds. Pure logic.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A topology that could not be read or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("topology file {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// One emulated link between two adjacent hosts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Link {
    pub a: &'static str,
    pub b: &'static str,
    /// Round-trip time the emulation adds (half each way).
    pub rtt_ms: f64,
    /// Rate in each direction, Mbit/s (10^6 bit/s).
    pub mbit: f64,
    /// Drop-tail queue limit per direction, bytes. Default: one
    /// bandwidth-delay product of the whole path (end-to-end RTT × this
    /// link's rate, the rule-of-thumb buffer for a flow crossing it), at
    /// least 128 KiB.
    pub queue_bytes: usize,
}

impl Link {
    /// The bandwidth-delay product in bytes.
    pub fn bdp_bytes(&self) -> usize {
        (self.mbit * 1e6 / 8.0 * self.rtt_ms / 1e3) as usize
    }
}

/// The three links, client side first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub links: [Link; 3],
}

/// Host names in chain order (hosts, not link routers).
pub const HOSTS: [&str; 4] = ["client", "ingress", "egress", "server"];

/// The smallest default queue, so short links still absorb a burst.
const MIN_QUEUE_BYTES: usize = 128 * 1024;

/// The topology file: one table per link, every key optional.
///
/// ```toml
/// [client_ingress]
/// rtt_ms = 32.7
/// mbit = 100
/// [ingress_egress]
/// rtt_ms = 215
/// queue_bytes = 4000000
/// [egress_server]
/// rtt_ms = 26
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    #[serde(default)]
    pub client_ingress: LinkFile,
    #[serde(default)]
    pub ingress_egress: LinkFile,
    #[serde(default)]
    pub egress_server: LinkFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    pub rtt_ms: Option<f64>,
    pub mbit: Option<f64>,
    pub queue_bytes: Option<usize>,
}

impl Default for Topology {
    /// The KTCP paper's path: 32.7 / 215 / 26 ms, 100 Mbit/s everywhere.
    fn default() -> Self {
        Topology::from_rtts([32.7, 215.0, 26.0], [100.0; 3], [None; 3])
    }
}

impl Topology {
    fn from_rtts(rtts: [f64; 3], mbits: [f64; 3], queues: [Option<usize>; 3]) -> Topology {
        let path_rtt_ms: f64 = rtts.iter().sum();
        let names = [
            ("client", "ingress"),
            ("ingress", "egress"),
            ("egress", "server"),
        ];
        let links = std::array::from_fn(|i| {
            let mut l = Link {
                a: names[i].0,
                b: names[i].1,
                rtt_ms: rtts[i],
                mbit: mbits[i],
                queue_bytes: 0,
            };
            let path_bdp = (l.mbit * 1e6 / 8.0 * path_rtt_ms / 1e3) as usize;
            l.queue_bytes = queues[i].unwrap_or_else(|| path_bdp.max(MIN_QUEUE_BYTES));
            l
        });
        Topology { links }
    }

    /// Build from an optional file, then per-link flags (`--rtt`, `--mbit`).
    pub fn build(
        file: Option<&Path>,
        rtt_flag: Option<&[f64]>,
        mbit_flag: Option<&[f64]>,
    ) -> Result<Topology, TopologyError> {
        let def = Topology::default();
        let mut rtts = def.links.each_ref().map(|l| l.rtt_ms);
        let mut mbits = def.links.each_ref().map(|l| l.mbit);
        let mut queues = [None; 3];
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let f = parse_file(&text).map_err(|msg| TopologyError::Parse {
                path: path.display().to_string(),
                msg,
            })?;
            for (i, l) in [f.client_ingress, f.ingress_egress, f.egress_server]
                .into_iter()
                .enumerate()
            {
                rtts[i] = l.rtt_ms.unwrap_or(rtts[i]);
                mbits[i] = l.mbit.unwrap_or(mbits[i]);
                queues[i] = l.queue_bytes;
            }
        }
        if let Some(v) = rtt_flag {
            rtts = spread(v, "--rtt")?;
        }
        if let Some(v) = mbit_flag {
            mbits = spread(v, "--mbit")?;
        }
        let t = Topology::from_rtts(rtts, mbits, queues);
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        for l in &self.links {
            let name = format!("link {}-{}", l.a, l.b);
            if !(l.rtt_ms.is_finite() && (0.0..=10_000.0).contains(&l.rtt_ms)) {
                return Err(TopologyError::Invalid(format!(
                    "{name}: rtt_ms must be 0..10000, got {}",
                    l.rtt_ms
                )));
            }
            if !(l.mbit.is_finite() && (0.01..=10_000.0).contains(&l.mbit)) {
                return Err(TopologyError::Invalid(format!(
                    "{name}: mbit must be 0.01..10000, got {}",
                    l.mbit
                )));
            }
            if l.queue_bytes < 3000 {
                return Err(TopologyError::Invalid(format!(
                    "{name}: queue_bytes must hold at least two full packets (3000), got {}",
                    l.queue_bytes
                )));
            }
        }
        Ok(())
    }

    /// r1: the client–ingress RTT.
    pub fn r1_ms(&self) -> f64 {
        self.links[0].rtt_ms
    }

    /// R: the end-to-end RTT (sum of the links).
    pub fn rtt_ms(&self) -> f64 {
        self.links.iter().map(|l| l.rtt_ms).sum()
    }

    /// B: the bottleneck rate in Mbit/s.
    pub fn bottleneck_mbit(&self) -> f64 {
        self.links
            .iter()
            .map(|l| l.mbit)
            .fold(f64::INFINITY, f64::min)
    }

    /// The index of the link with the longest RTT (for the throughput check).
    pub fn longest_link(&self) -> usize {
        (0..3)
            .max_by(|&a, &b| self.links[a].rtt_ms.total_cmp(&self.links[b].rtt_ms))
            .unwrap_or(1)
    }

    /// Ideal-pipe bounds (KTCP §1) for a download of `size` bytes.
    pub fn bounds(&self, size: u64) -> Bounds {
        let ttfb = self.r1_ms() + self.rtt_ms();
        Bounds {
            size_bytes: size,
            ttfb_ms: ttfb,
            total_ms: ttfb + size as f64 * 8.0 / (self.bottleneck_mbit() * 1e6) * 1e3,
        }
    }
}

fn parse_file(text: &str) -> Result<TopologyFile, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// One value for all three links, or exactly three.
fn spread(v: &[f64], flag: &str) -> Result<[f64; 3], TopologyError> {
    match v {
        [x] => Ok([*x; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(TopologyError::Invalid(format!(
            "{flag} takes one value for all links or three (client-ingress,ingress-egress,egress-server), got {}",
            v.len()
        ))),
    }
}

/// The ideal-pipe bounds for one size: TTFB ≥ r1 + R, total ≥ r1 + R + S/B.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bounds {
    pub size_bytes: u64,
    pub ttfb_ms: f64,
    pub total_ms: f64,
}

/// The addressing plan of the chain of namespaces.
///
/// Nodes in order: client, L1, ingress, L2, egress, L3, server (indices 0..7);
/// segment `k` (0..6) joins node `k` (address `10.77.k.1`) and node `k+1`
/// (address `10.77.k.2`). Extra server addresses (`10.77.5.10+n`) give each
/// configuration under test its own destination, so they never intercept each
/// other's traffic.
pub mod plan {
    use super::Ipv4Addr;

    pub const NODES: [&str; 7] = ["client", "l1", "ingress", "l2", "egress", "l3", "server"];
    pub const SEGMENTS: usize = 6;

    pub fn node_index(name: &str) -> Option<usize> {
        NODES.iter().position(|n| *n == name)
    }

    /// Address of node `node` on segment `seg` (must be adjacent).
    pub fn addr(node: usize, seg: usize) -> Ipv4Addr {
        debug_assert!(seg == node || seg + 1 == node);
        Ipv4Addr::new(10, 77, seg as u8, if seg == node { 1 } else { 2 })
    }

    pub fn subnet(seg: usize) -> String {
        format!("10.77.{seg}.0/24")
    }

    /// Interface name of node `node` on segment `seg`.
    pub fn ifname(node: usize, seg: usize) -> String {
        format!("swl{seg}{}", if seg == node { "l" } else { "r" })
    }

    /// The canonical address of a host (the one its neighbours use).
    pub fn host_addr(host: &str) -> Ipv4Addr {
        match host {
            "client" => addr(0, 0),
            "ingress" => addr(2, 1),
            "egress" => addr(4, 3),
            _ => addr(6, 5),
        }
    }

    /// The server's extra address number `n` (one per configuration that needs its own).
    pub fn server_alias(n: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 5, 10 + n as u8)
    }

    /// The address splitway variant `n` uses on `host`'s relay-leg side
    /// (ingress: segment 2, egress: segment 3). Each variant's legs run
    /// between their own pair of addresses, so per-destination route
    /// metrics (turbo-start windows) of one variant never touch another.
    pub fn leg_alias(host: &str, n: usize) -> Ipv4Addr {
        let seg = if host == "ingress" { 2 } else { 3 };
        Ipv4Addr::new(10, 77, seg, 10 + n as u8)
    }

    /// The interface of `host` on its relay-leg side.
    pub fn leg_ifname(host: &str) -> String {
        if host == "ingress" {
            ifname(2, 2)
        } else {
            ifname(4, 3)
        }
    }

    /// Static routes of node `i`: (subnet, via) for every segment not attached.
    pub fn routes(i: usize) -> Vec<(String, Ipv4Addr)> {
        let mut v = Vec::new();
        for seg in 0..SEGMENTS {
            if seg + 1 < i {
                v.push((subnet(seg), addr(i - 1, i - 1)));
            } else if seg > i {
                v.push((subnet(seg), addr(i + 1, i)));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_paper_path() {
        let t = Topology::default();
        assert_eq!(t.r1_ms(), 32.7);
        assert!((t.rtt_ms() - 273.7).abs() < 1e-9);
        assert_eq!(t.longest_link(), 1);
        // queues: 100 Mbit/s × 273.7 ms (the path's BDP) on every link
        assert_eq!(t.links[1].bdp_bytes(), 2_687_500);
        assert!(t.links.iter().all(|l| l.queue_bytes == 3_421_250));
        let short = Topology::build(None, Some(&[1.0]), None).unwrap();
        assert_eq!(short.links[0].queue_bytes, 128 * 1024);
    }

    #[test]
    fn bounds_match_design() {
        let t = Topology::default();
        let b = t.bounds(10 << 20);
        assert!((b.ttfb_ms - 306.4).abs() < 1e-9);
        // 10 MiB at 100 Mbit/s = 838.86 ms
        assert!((b.total_ms - (306.4 + 838.8608)).abs() < 1e-3);
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("swlab-topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.toml");
        std::fs::write(
            &p,
            "[ingress_egress]\nrtt_ms = 100\nqueue_bytes = 50000\n[egress_server]\nmbit = 10\n",
        )
        .unwrap();
        let t = Topology::build(Some(&p), None, None).unwrap();
        assert_eq!(t.links[1].rtt_ms, 100.0);
        assert_eq!(t.links[1].queue_bytes, 50_000);
        assert_eq!(t.links[0].rtt_ms, 32.7);
        assert_eq!(t.bottleneck_mbit(), 10.0);
        let t = Topology::build(Some(&p), Some(&[1.0, 2.0, 3.0]), Some(&[50.0])).unwrap();
        assert_eq!(t.rtt_ms(), 6.0);
        assert_eq!(t.links[2].mbit, 50.0);
        std::fs::write(&p, "[ingress_egress]\nrtt = 100\n").unwrap();
        let e = Topology::build(Some(&p), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_flags() {
        assert!(Topology::build(None, Some(&[1.0, 2.0]), None).is_err());
        assert!(Topology::build(None, Some(&[-1.0]), None).is_err());
        assert!(Topology::build(None, None, Some(&[0.0])).is_err());
    }

    #[test]
    fn addressing_plan_routes_everything() {
        use plan::*;
        assert_eq!(host_addr("ingress").to_string(), "10.77.1.2");
        assert_eq!(host_addr("egress").to_string(), "10.77.3.2");
        assert_eq!(host_addr("server").to_string(), "10.77.5.2");
        assert_eq!(ifname(2, 1), "swl1r");
        assert_eq!(ifname(2, 2), "swl2l");
        // every node reaches every segment: attached or routed
        for i in 0..NODES.len() {
            let routed = routes(i).len();
            let attached = [i.checked_sub(1), (i < SEGMENTS).then_some(i)]
                .iter()
                .flatten()
                .count();
            assert_eq!(routed + attached, SEGMENTS, "node {i}");
        }
        // the client routes everything via L1's address on segment 0
        assert!(routes(0)
            .iter()
            .all(|(_, via)| via.to_string() == "10.77.0.2"));
        // ingress: segment 0 to the left via L1 (10.77.1.1), 3.. to the right via L2 (10.77.2.2)
        let r = routes(2);
        assert!(r.contains(&(subnet(0), "10.77.1.1".parse().unwrap())));
        assert!(r.contains(&(subnet(5), "10.77.2.2".parse().unwrap())));
    }
}
