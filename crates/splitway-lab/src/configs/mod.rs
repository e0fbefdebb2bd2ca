//! The configurations under test, side by side: what each sets up in the
//! relay namespaces and which URL the client fetches through it.
//!
//! All chosen configurations are set up once and coexist for the whole lab
//! (each on its own port or its own server address), so runs can be
//! interleaved without restarting anything between them.

mod e2e;
mod nosplit;
mod splitway;
pub mod ssh;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use splitway_netns::ChildGuard;

use crate::testbed::Testbed;
use crate::topology::Topology;

pub use self::splitway::{
    admin_port, modules_of as splitway_modules, ports as splitway_ports, Features,
};

/// Every configuration the lab knows, in report order, with a one-line description.
pub const CATALOGUE: &[(&str, &str)] = &[
    ("e2e", "end to end: the relays only route packets"),
    ("nosplit", "through both relays by DNAT, no split (the paper's Cloud NoSplit)"),
    ("ssh", "split by an SSH port forward ingress->egress, pty session so Nagle is off (the paper's Baseline)"),
    ("ssh-nagle", "as ssh, but a plain `ssh -N` tunnel: sshd leaves Nagle on (shows the artefact)"),
    ("splitway-basic", "splitway, transparent at the ingress, every KTCP improvement off"),
    ("+pool-workers", "splitway-basic + worker pools"),
    ("+early-syn", "+pool-workers + early SYN"),
    ("+conn-pool", "+early-syn + pool of pre-established relay legs"),
    ("splitway", "splitway with every improvement (+turbo-start, fast open)"),
    ("splitway-mux", "splitway, flows as streams on 2 warm lanes per peer (legs = \"mux\"), turbo-start shared by the lanes"),
    ("splitway-mux-bbr", "splitway-mux with BBR congestion control on the lanes"),
    ("splitway-mux-paced", "splitway-mux with the lanes paced together at the link's rate (lane_pacing)"),
    ("splitway-mux-bbr-paced", "splitway-mux with BBR on the lanes, paced together at the link's rate"),
    ("splitway-rwnd2", "splitway, the egress's server connections starting with a 2-segment receive window (limits.server_initial_window_segments)"),
    ("splitway-mux-paced-rwnd2", "splitway-mux-paced, the egress's server connections starting with a 2-segment receive window"),
    ("splitway-mux-paced-rwnd1", "splitway-mux-paced, the egress's server connections starting with a 1-segment receive window"),
    ("splitway-mux-paced-win", "splitway-mux-paced, the egress bounding its server connections' receive windows (bound_server_windows)"),
    ("splitway-mux-paced-winr2", "splitway-mux-paced-win with the 2-segment initial server window of splitway-mux-paced-rwnd2"),
    ("splitway-mux-paced-winb2", "splitway-mux-paced-winr2, the small window only for server connections opened 4 or more within 100 ms (server_initial_window_burst = 4)"),
    ("splitway-mux-bbr-age8", "splitway-mux-bbr with the age-weighted lane scheduler (lane_age_weight = 8)"),
    ("splitway-mux-bbr-age16", "splitway-mux-bbr with the age-weighted lane scheduler (lane_age_weight = 16)"),
    ("splitway-mux-bbr-win", "splitway-mux-bbr, the egress bounding its server connections' receive windows (bound_server_windows)"),
    ("splitway-mux-bbr-win-age16", "splitway-mux-bbr-win with the age-weighted lane scheduler and server windows (lane_age_weight = 16)"),
    ("splitway-mux-bbr-paced-winr2-age16", "splitway-mux-paced-winr2-age16 with BBR on the lanes: one configuration for clean and lossy paths"),
    ("splitway-mux-paced-winr2-age8", "splitway-mux-paced-winr2 with the age-weighted lane scheduler (lane_age_weight = 8)"),
    ("splitway-mux-paced-winr2-age16", "splitway-mux-paced-winr2 with the age-weighted lane scheduler (lane_age_weight = 16)"),
    ("splitway+compress", "splitway with the adaptive zstd module on the relay-to-relay legs"),
    ("splitway+modules", "splitway with the dedup and compress modules on the relay-to-relay legs"),
    ("splitway+null", "splitway with the null module on the relay-to-relay legs (the user-space framed path alone)"),
];

/// Known configuration names, for messages.
pub fn known() -> String {
    CATALOGUE
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check names and put them in catalogue order, without duplicates.
pub fn select(names: &[String]) -> Result<Vec<&'static str>> {
    for n in names {
        if !CATALOGUE.iter().any(|(c, _)| c == n) {
            bail!("unknown configuration {n:?}; known: {}", known());
        }
    }
    let picked: Vec<&'static str> = CATALOGUE
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| names.iter().any(|n| n == c))
        .collect();
    if picked.is_empty() {
        bail!("no configuration chosen; known: {}", known());
    }
    Ok(picked)
}

pub fn describe(name: &str) -> &'static str {
    CATALOGUE
        .iter()
        .find(|(c, _)| *c == name)
        .map(|(_, d)| *d)
        .unwrap_or("")
}

/// What a configuration needs from the lab.
pub struct Ctx<'a> {
    pub tb: &'a Testbed,
    pub topo: &'a Topology,
    pub work: &'a Path,
    pub logs: &'a Path,
    /// The `splitway` binary that runs the relays.
    pub splitway_bin: &'a Path,
    /// Per-run pre-shared key for relay legs (hex).
    pub secret: &'a str,
}

impl Ctx<'_> {
    /// The canonical address of the host named `name` (see
    /// [`crate::topology::host_name`]); the server's if unknown.
    pub fn addr(&self, name: &str) -> std::net::Ipv4Addr {
        let hosts = self.topo.hosts();
        let i = hosts
            .iter()
            .position(|h| h == name)
            .unwrap_or(hosts.len() - 1);
        self.tb.plan().host_addr(i)
    }
}

/// A configuration that is set up and ready for downloads.
pub struct Running {
    pub name: &'static str,
    /// Base URL, e.g. `http://10.77.5.2`; the file path is appended.
    pub base_url: String,
    /// What was actually run (for the report).
    pub detail: String,
    /// Processes to stop (in order) when the lab ends.
    pub children: Vec<(String, ChildGuard)>,
    /// Log files worth showing when something fails.
    pub logs: Vec<PathBuf>,
    /// Which of the lab's chains (testbeds) it runs in.
    pub chain: usize,
}

impl Running {
    pub fn url(&self, size: u64) -> String {
        format!("{}{}", self.base_url, crate::nginx::path_of(size))
    }

    /// A process of this configuration that exited by itself, if any.
    pub fn dead_child(&mut self) -> Option<String> {
        for (what, c) in &mut self.children {
            if let Some(st) = c.try_wait() {
                return Some(format!("{what} exited ({st})"));
            }
        }
        None
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            c.stop(std::time::Duration::from_secs(3));
        }
    }
}

/// Set up configuration `name`; `nth_split` numbers the splitway variants
/// (each gets its own server address, ports and firewall marks).
pub fn start(name: &'static str, ctx: &Ctx, nth_split: usize) -> Result<Running> {
    if matches!(name, "nosplit" | "ssh" | "ssh-nagle") && ctx.topo.relays() != 2 {
        bail!(
            "configuration {name} needs a path with two relays (ingress and egress); this one has {}",
            ctx.topo.relays()
        );
    }
    if !splitway::modules_of(name).is_empty() && ctx.topo.relays() < 2 {
        bail!(
            "configuration {name} runs modules between two relays; this path has {}",
            ctx.topo.relays()
        );
    }
    if is_splitway(name) && ctx.topo.relays() == 0 {
        bail!("configuration {name} needs at least one relay; this path has none");
    }
    match name {
        "e2e" => e2e::start(ctx),
        "nosplit" => nosplit::start(ctx),
        "ssh" => ssh::start(ctx, true),
        "ssh-nagle" => ssh::start(ctx, false),
        _ => match splitway::features_of(name) {
            Some(f) => splitway::start(ctx, name, f, nth_split),
            None => bail!("unknown configuration {name:?}"),
        },
    }
}

/// Does `name` run splitway relays?
pub fn is_splitway(name: &str) -> bool {
    splitway::features_of(name).is_some()
}

/// Last lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_orders_and_checks() {
        let s = select(&["splitway".into(), "e2e".into(), "e2e".into()]).unwrap();
        assert_eq!(s, vec!["e2e", "splitway"]);
        assert!(select(&["bogus".into()])
            .unwrap_err()
            .to_string()
            .contains("bogus"));
        assert!(select(&[]).is_err());
    }

    #[test]
    fn ablation_features_accumulate() {
        let f = |n| splitway::features_of(n).unwrap();
        assert_eq!(f("splitway-basic"), Features::default());
        assert!(f("+pool-workers").worker_pools && !f("+pool-workers").early_syn);
        assert!(
            f("+early-syn").worker_pools && f("+early-syn").early_syn && !f("+early-syn").conn_pool
        );
        assert!(f("+conn-pool").conn_pool && !f("+conn-pool").turbo_start);
        let all = f("splitway");
        assert!(
            all.early_syn && all.worker_pools && all.conn_pool && all.turbo_start && all.fast_open
        );
        assert!(!is_splitway("e2e"));
        let mux = f("splitway-mux");
        assert!(mux.lanes && !all.lanes);
        assert_eq!(
            Features {
                lanes: false,
                ..mux
            },
            all,
            "otherwise as splitway"
        );
    }
}
