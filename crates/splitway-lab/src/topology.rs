//! The lab's path: a chain of hosts, an emulated link between each two.
//!
//! ```text
//! client ─[L1]─ relay 1 ─[L2]─ … ─ relay n ─[Ln+1]─ server
//! ```
//! Any number of relays (0 = end to end: client ─[L1]─ server). The relays
//! are named as a user would name them: one relay is `relay`; two are
//! `ingress` and `egress`; more are `ingress`, `transit1`, …, `egress`.
//! Each link has a round-trip time, a rate, a queue limit, random loss (per
//! cent, each direction) and jitter (order kept). This module owns the
//! defaults (the KTCP paper's measured path), the topology file format, the
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
    pub a: String,
    pub b: String,
    /// Round-trip time the emulation adds (half each way).
    pub rtt_ms: f64,
    /// Rate in each direction, Mbit/s (10^6 bit/s).
    pub mbit: f64,
    /// Drop-tail queue limit per direction, bytes. Default: one
    /// bandwidth-delay product of the whole path (end-to-end RTT × this
    /// link's rate, the rule-of-thumb buffer for a flow crossing it), at
    /// least 128 KiB.
    pub queue_bytes: usize,
    /// Random loss of each direction, per cent of packets.
    pub loss_pct: f64,
    /// Jitter of each direction: each packet's one-way delay gains a uniform
    /// random extra in [0, jitter_ms]; order is kept.
    pub jitter_ms: f64,
}

impl Link {
    /// The bandwidth-delay product in bytes.
    pub fn bdp_bytes(&self) -> usize {
        (self.mbit * 1e6 / 8.0 * self.rtt_ms / 1e3) as usize
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.a, self.b)
    }
}

/// The links, client side first; `links.len() - 1` relays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    pub links: Vec<Link>,
}

/// The most relays a chain may have: the relays' hop limit (8) counts
/// every relay after the first.
pub const MAX_RELAYS: usize = 8;

/// The smallest default queue, so short links still absorb a burst.
const MIN_QUEUE_BYTES: usize = 128 * 1024;

/// The topology file. Either a chain of any length:
///
/// ```toml
/// [[link]]          # client - first relay (or the server, for one link)
/// rtt_ms = 25
/// mbit = 100
/// loss_pct = 0.5    # each direction
/// jitter_ms = 2
/// [[link]]
/// rtt_ms = 25
/// ```
///
/// or the three named tables of the KTCP path (`[client_ingress]`,
/// `[ingress_egress]`, `[egress_server]`), every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    #[serde(default)]
    pub link: Vec<LinkFile>,
    pub client_ingress: Option<LinkFile>,
    pub ingress_egress: Option<LinkFile>,
    pub egress_server: Option<LinkFile>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    pub rtt_ms: Option<f64>,
    pub mbit: Option<f64>,
    pub queue_bytes: Option<usize>,
    pub loss_pct: Option<f64>,
    pub jitter_ms: Option<f64>,
}

/// Per-link values from flags: one value for every link, or one per link.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkFlags<'a> {
    pub rtt: Option<&'a [f64]>,
    pub mbit: Option<&'a [f64]>,
    pub loss: Option<&'a [f64]>,
    pub jitter: Option<&'a [f64]>,
}

/// The name of host `i` of a chain with `relays` relays (0 = client,
/// `relays + 1` = server).
pub fn host_name(i: usize, relays: usize) -> String {
    if i == 0 {
        "client".into()
    } else if i == relays + 1 {
        "server".into()
    } else if relays == 1 {
        "relay".into()
    } else if i == 1 {
        "ingress".into()
    } else if i == relays {
        "egress".into()
    } else {
        format!("transit{}", i - 1)
    }
}

impl Default for Topology {
    /// The KTCP paper's path: 32.7 / 215 / 26 ms, 100 Mbit/s everywhere.
    fn default() -> Self {
        Topology::chain(&[32.7, 215.0, 26.0], 100.0)
    }
}

impl Topology {
    /// A chain with these link RTTs, all at `mbit`, default queues, no loss.
    pub fn chain(rtts: &[f64], mbit: f64) -> Topology {
        let files: Vec<LinkFile> = rtts
            .iter()
            .map(|&r| LinkFile {
                rtt_ms: Some(r),
                mbit: Some(mbit),
                ..Default::default()
            })
            .collect();
        Topology::from_files(&files)
    }

    /// Build from link descriptions (missing values: 100 Mbit/s, no loss,
    /// no jitter, the path-BDP queue; a missing RTT is 0).
    fn from_files(files: &[LinkFile]) -> Topology {
        let relays = files.len().saturating_sub(1);
        let path_rtt_ms: f64 = files.iter().map(|l| l.rtt_ms.unwrap_or(0.0)).sum();
        let links = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mbit = f.mbit.unwrap_or(100.0);
                let path_bdp = (mbit * 1e6 / 8.0 * path_rtt_ms / 1e3) as usize;
                Link {
                    a: host_name(i, relays),
                    b: host_name(i + 1, relays),
                    rtt_ms: f.rtt_ms.unwrap_or(0.0),
                    mbit,
                    queue_bytes: f
                        .queue_bytes
                        .unwrap_or_else(|| path_bdp.max(MIN_QUEUE_BYTES)),
                    loss_pct: f.loss_pct.unwrap_or(0.0),
                    jitter_ms: f.jitter_ms.unwrap_or(0.0),
                }
            })
            .collect();
        Topology { links }
    }

    /// Build from an optional file, then per-link flags. A flag with one
    /// value sets every link; with several it sets one link each (and,
    /// for `--rtt`, defines how many links the chain has).
    pub fn build(file: Option<&Path>, flags: LinkFlags) -> Result<Topology, TopologyError> {
        let mut files: Vec<LinkFile> = [32.7, 215.0, 26.0]
            .iter()
            .map(|&r| LinkFile {
                rtt_ms: Some(r),
                ..Default::default()
            })
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                path: path.display().to_string(),
                source,
            })?;
            files = parse_file(&text).map_err(|msg| TopologyError::Parse {
                path: path.display().to_string(),
                msg,
            })?;
        }
        if let Some(v) = flags.rtt {
            if v.len() > 1 && v.len() != files.len() {
                let last = files.last().cloned().unwrap_or_default();
                files.resize(v.len(), last);
            }
        }
        let n = files.len();
        let set = |v: Option<&[f64]>,
                   flag: &str,
                   files: &mut Vec<LinkFile>,
                   put: fn(&mut LinkFile, f64)|
         -> Result<(), TopologyError> {
            let Some(v) = v else { return Ok(()) };
            let vals = spread(v, n, flag)?;
            for (f, x) in files.iter_mut().zip(vals) {
                put(f, x);
            }
            Ok(())
        };
        set(flags.rtt, "--rtt", &mut files, |f, x| f.rtt_ms = Some(x))?;
        set(flags.mbit, "--mbit", &mut files, |f, x| f.mbit = Some(x))?;
        set(flags.loss, "--loss", &mut files, |f, x| {
            f.loss_pct = Some(x)
        })?;
        set(flags.jitter, "--jitter", &mut files, |f, x| {
            f.jitter_ms = Some(x)
        })?;
        let t = Topology::from_files(&files);
        t.validate()?;
        Ok(t)
    }

    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.links.is_empty() {
            return Err(TopologyError::Invalid(
                "a topology needs at least one link".into(),
            ));
        }
        if self.relays() > MAX_RELAYS {
            return Err(TopologyError::Invalid(format!(
                "{} relays: at most {MAX_RELAYS} (the relays' hop limit)",
                self.relays()
            )));
        }
        for (i, l) in self.links.iter().enumerate() {
            let name = format!("link {} ({})", i + 1, l.name());
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
            if !(l.loss_pct.is_finite() && (0.0..=50.0).contains(&l.loss_pct)) {
                return Err(TopologyError::Invalid(format!(
                    "{name}: loss_pct must be 0..50 (per cent, each direction), got {}",
                    l.loss_pct
                )));
            }
            if !(l.jitter_ms.is_finite() && (0.0..=1000.0).contains(&l.jitter_ms)) {
                return Err(TopologyError::Invalid(format!(
                    "{name}: jitter_ms must be 0..1000, got {}",
                    l.jitter_ms
                )));
            }
        }
        Ok(())
    }

    /// Number of relays (0 = end to end).
    pub fn relays(&self) -> usize {
        self.links.len().saturating_sub(1)
    }

    /// Host names in chain order: client, relays…, server.
    pub fn hosts(&self) -> Vec<String> {
        (0..self.links.len() + 1)
            .map(|i| host_name(i, self.relays()))
            .collect()
    }

    /// r1: the client's RTT to the first relay (the server, with none).
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
        (0..self.links.len())
            .max_by(|&a, &b| self.links[a].rtt_ms.total_cmp(&self.links[b].rtt_ms))
            .unwrap_or(0)
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

    /// The addressing plan of this chain.
    pub fn plan(&self) -> plan::Plan {
        plan::Plan::new(self.links.len())
    }
}

fn parse_file(text: &str) -> Result<Vec<LinkFile>, String> {
    let f: TopologyFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let named =
        f.client_ingress.is_some() || f.ingress_egress.is_some() || f.egress_server.is_some();
    if !f.link.is_empty() {
        if named {
            return Err(
                "use either [[link]] entries or the tables [client_ingress], [ingress_egress], [egress_server], not both"
                    .into(),
            );
        }
        return Ok(f.link);
    }
    let def = [32.7, 215.0, 26.0];
    Ok([f.client_ingress, f.ingress_egress, f.egress_server]
        .into_iter()
        .zip(def)
        .map(|(l, d)| {
            let mut l = l.unwrap_or_default();
            l.rtt_ms = l.rtt_ms.or(Some(d));
            l
        })
        .collect())
}

/// One value for all `n` links, or exactly `n`.
fn spread(v: &[f64], n: usize, flag: &str) -> Result<Vec<f64>, TopologyError> {
    match v.len() {
        1 => Ok(vec![v[0]; n]),
        k if k == n => Ok(v.to_vec()),
        k => Err(TopologyError::Invalid(format!(
            "{flag} takes one value for all links or one per link ({n} links), got {k}"
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

/// The addressing plan of a chain of namespaces.
///
/// Nodes in order: host 0 (client), link router 1, host 1, …, host n
/// (server): host `i` is node `2i`, link `k` (0-based) is node `2k + 1`.
/// Segment `s` joins node `s` (address `10.77.s.1`) and node `s + 1`
/// (address `10.77.s.2`). Extra server addresses (`10.77.<last>.10+n`)
/// give each configuration under test its own destination, so they never
/// intercept each other's traffic; extra relay addresses on both sides of
/// each relay (`10.77.s.10+n`) keep each variant's relay legs apart.
pub mod plan {
    use super::Ipv4Addr;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Plan {
        links: usize,
    }

    impl Plan {
        pub fn new(links: usize) -> Plan {
            Plan { links }
        }

        pub fn links(&self) -> usize {
            self.links
        }

        pub fn nodes(&self) -> usize {
            2 * self.links + 1
        }

        pub fn segments(&self) -> usize {
            2 * self.links
        }

        /// The node of host `i`.
        pub fn host_node(&self, i: usize) -> usize {
            2 * i
        }

        /// The node of link `k` (0-based).
        pub fn link_node(&self, k: usize) -> usize {
            2 * k + 1
        }

        /// Address of node `node` on segment `seg` (must be adjacent).
        pub fn addr(&self, node: usize, seg: usize) -> Ipv4Addr {
            debug_assert!(seg == node || seg + 1 == node);
            Ipv4Addr::new(10, 77, seg as u8, if seg == node { 1 } else { 2 })
        }

        /// Interface name of node `node` on segment `seg`.
        pub fn ifname(&self, node: usize, seg: usize) -> String {
            format!("swl{seg}{}", if seg == node { "l" } else { "r" })
        }

        /// The canonical address of host `i`: the one its client-side
        /// neighbour uses (the client's: its only one).
        pub fn host_addr(&self, i: usize) -> Ipv4Addr {
            let n = self.host_node(i);
            if i == 0 {
                self.addr(0, 0)
            } else {
                self.addr(n, n - 1)
            }
        }

        /// The server's address.
        pub fn server_addr(&self) -> Ipv4Addr {
            self.host_addr(self.links)
        }

        /// The server's extra address number `n`.
        pub fn server_alias(&self, n: usize) -> Ipv4Addr {
            Ipv4Addr::new(10, 77, (self.segments() - 1) as u8, 10 + n as u8)
        }

        /// The client's extra address number `n` (for many clients).
        pub fn client_alias(&self, n: usize) -> Ipv4Addr {
            Ipv4Addr::new(10, 77, 0, 10 + n as u8)
        }

        /// Variant `n`'s address of host `i` on its server side (toward
        /// host `i + 1`) and its interface.
        pub fn right_alias(&self, i: usize, n: usize) -> (Ipv4Addr, String) {
            let node = self.host_node(i);
            (
                Ipv4Addr::new(10, 77, node as u8, 10 + n as u8),
                self.ifname(node, node),
            )
        }

        /// Variant `n`'s address of host `i` on its client side (toward
        /// host `i - 1`) and its interface.
        pub fn left_alias(&self, i: usize, n: usize) -> (Ipv4Addr, String) {
            let node = self.host_node(i);
            (
                Ipv4Addr::new(10, 77, (node - 1) as u8, 10 + n as u8),
                self.ifname(node, node - 1),
            )
        }

        pub fn subnet(&self, seg: usize) -> String {
            format!("10.77.{seg}.0/24")
        }

        /// Static routes of node `i`: (subnet, via) for every segment not attached.
        pub fn routes(&self, i: usize) -> Vec<(String, Ipv4Addr)> {
            let mut v = Vec::new();
            for seg in 0..self.segments() {
                if seg + 1 < i {
                    v.push((self.subnet(seg), self.addr(i - 1, i - 1)));
                } else if seg > i {
                    v.push((self.subnet(seg), self.addr(i + 1, i)));
                }
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(
        file: Option<&Path>,
        rtt: Option<&[f64]>,
        mbit: Option<&[f64]>,
    ) -> Result<Topology, TopologyError> {
        Topology::build(
            file,
            LinkFlags {
                rtt,
                mbit,
                ..Default::default()
            },
        )
    }

    #[test]
    fn default_is_the_paper_path() {
        let t = Topology::default();
        assert_eq!(t.r1_ms(), 32.7);
        assert!((t.rtt_ms() - 273.7).abs() < 1e-9);
        assert_eq!(t.longest_link(), 1);
        assert_eq!(t.relays(), 2);
        assert_eq!(t.hosts(), ["client", "ingress", "egress", "server"]);
        // queues: 100 Mbit/s × 273.7 ms (the path's BDP) on every link
        assert_eq!(t.links[1].bdp_bytes(), 2_687_500);
        assert!(t.links.iter().all(|l| l.queue_bytes == 3_421_250));
        let short = build(None, Some(&[1.0]), None).unwrap();
        assert_eq!(short.links[0].queue_bytes, 128 * 1024);
        assert_eq!(build(None, None, None).unwrap(), t);
    }

    #[test]
    fn chains_of_any_length_are_named_as_users_name_relays() {
        assert_eq!(
            Topology::chain(&[100.0], 100.0).hosts(),
            ["client", "server"]
        );
        assert_eq!(
            Topology::chain(&[50.0, 50.0], 100.0).hosts(),
            ["client", "relay", "server"]
        );
        let t = Topology::chain(&[25.0; 4], 100.0);
        assert_eq!(
            t.hosts(),
            ["client", "ingress", "transit1", "egress", "server"]
        );
        assert_eq!(t.relays(), 3);
        assert_eq!(t.links[2].name(), "transit1-egress");
        assert_eq!(Topology::chain(&[25.0; 5], 100.0).hosts()[3], "transit2");
        assert!(Topology::chain(&[1.0; 10], 100.0).validate().is_err());
        // --rtt with several values defines the chain
        let t = build(None, Some(&[10.0, 20.0]), Some(&[50.0])).unwrap();
        assert_eq!(t.links.len(), 2);
        assert_eq!(t.links[1].mbit, 50.0);
    }

    #[test]
    fn bounds_match_design() {
        let t = Topology::default();
        let b = t.bounds(10 << 20);
        assert!((b.ttfb_ms - 306.4).abs() < 1e-9);
        // 10 MiB at 100 Mbit/s = 838.86 ms
        assert!((b.total_ms - (306.4 + 838.8608)).abs() < 1e-3);
        // end to end: 2R
        assert_eq!(Topology::chain(&[100.0], 100.0).bounds(0).ttfb_ms, 200.0);
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
        let t = build(Some(&p), None, None).unwrap();
        assert_eq!(t.links[1].rtt_ms, 100.0);
        assert_eq!(t.links[1].queue_bytes, 50_000);
        assert_eq!(t.links[0].rtt_ms, 32.7);
        assert_eq!(t.bottleneck_mbit(), 10.0);
        let t = build(Some(&p), Some(&[1.0, 2.0, 3.0]), Some(&[50.0])).unwrap();
        assert_eq!(t.rtt_ms(), 6.0);
        assert_eq!(t.links[2].mbit, 50.0);
        std::fs::write(&p, "[ingress_egress]\nrtt = 100\n").unwrap();
        let e = build(Some(&p), None, None).unwrap_err().to_string();
        assert!(e.contains("rtt"), "{e}");
        // a chain file with loss and jitter
        std::fs::write(
            &p,
            "[[link]]\nrtt_ms = 20\nloss_pct = 0.5\n[[link]]\nrtt_ms = 30\njitter_ms = 2\n[[link]]\nrtt_ms = 30\n[[link]]\nrtt_ms = 20\n",
        )
        .unwrap();
        let t = build(Some(&p), None, None).unwrap();
        assert_eq!(t.relays(), 3);
        assert_eq!(t.links[0].loss_pct, 0.5);
        assert_eq!(t.links[1].jitter_ms, 2.0);
        assert_eq!(t.rtt_ms(), 100.0);
        let t = Topology::build(
            Some(&p),
            LinkFlags {
                loss: Some(&[1.0]),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(t.links.iter().all(|l| l.loss_pct == 1.0));
        std::fs::write(&p, "[[link]]\nrtt_ms = 20\nloss_pct = 60\n").unwrap();
        let e = build(Some(&p), None, None).unwrap_err().to_string();
        assert!(e.contains("loss_pct"), "{e}");
        std::fs::write(&p, "[[link]]\nrtt_ms = 20\n[egress_server]\nrtt_ms = 3\n").unwrap();
        assert!(build(Some(&p), None, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_flags() {
        assert!(build(None, Some(&[-1.0]), None).is_err());
        assert!(build(None, None, Some(&[0.0])).is_err());
        assert!(build(None, None, Some(&[1.0, 2.0])).is_err());
    }

    #[test]
    fn addressing_plan_routes_everything() {
        for links in 1..=4 {
            let p = plan::Plan::new(links);
            // every node reaches every segment: attached or routed
            for i in 0..p.nodes() {
                let routed = p.routes(i).len();
                let attached = [i.checked_sub(1), (i < p.segments()).then_some(i)]
                    .iter()
                    .flatten()
                    .count();
                assert_eq!(routed + attached, p.segments(), "node {i} of {links} links");
            }
        }
        let p = Topology::default().plan();
        assert_eq!(p.host_addr(1).to_string(), "10.77.1.2");
        assert_eq!(p.host_addr(2).to_string(), "10.77.3.2");
        assert_eq!(p.server_addr().to_string(), "10.77.5.2");
        assert_eq!(p.server_alias(0).to_string(), "10.77.5.10");
        assert_eq!(p.ifname(2, 1), "swl1r");
        assert_eq!(p.ifname(2, 2), "swl2l");
        assert_eq!(p.right_alias(1, 3).0.to_string(), "10.77.2.13");
        assert_eq!(p.left_alias(2, 3).0.to_string(), "10.77.3.13");
        // the client routes everything via L1's address on segment 0
        assert!(p
            .routes(0)
            .iter()
            .all(|(_, via)| via.to_string() == "10.77.0.2"));
        // ingress: segment 0 to the left via L1 (10.77.1.1), 3.. to the right via L2 (10.77.2.2)
        let r = p.routes(2);
        assert!(r.contains(&(p.subnet(0), "10.77.1.1".parse().unwrap())));
        assert!(r.contains(&(p.subnet(5), "10.77.2.2".parse().unwrap())));
    }
}
