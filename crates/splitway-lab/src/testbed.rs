//! The namespaces of one chain: its hosts (client, relays, server) and a
//! link router between each two, wired with veth pairs and static routes
//! (see [`crate::topology::plan`]). A lab may build several chains side by
//! side (each under its own tag), so runs over them can interleave.
//!
//! Everything here is deleted when the [`Testbed`] drops (namespaces take
//! their interfaces, rules and remaining processes with them).

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use splitway_netns::{ChildGuard, Netns};

use crate::topology::{plan, Topology};

/// Prefix of every namespace the lab creates (the lab lock makes it unique).
pub const PREFIX: &str = "swlab-";

pub struct Testbed {
    plan: plan::Plan,
    /// Node names in chain order: client, l1, host 1, l2, …, server.
    names: Vec<String>,
    nodes: Vec<Netns>,
}

/// Delete namespaces an earlier (killed) lab left behind. Call once, before
/// building the first testbed of a lab.
pub fn sweep() {
    splitway_netns::sweep(PREFIX);
}

impl Testbed {
    /// Build the chain of `topo` as namespaces `swlab-<tag><node>`. `cc` is
    /// the congestion control set in every namespace.
    pub fn build(tag: &str, topo: &Topology, cc: &str) -> Result<Testbed> {
        let plan = topo.plan();
        let hosts = topo.hosts();
        let names: Vec<String> = (0..plan.nodes())
            .map(|j| {
                if j % 2 == 0 {
                    hosts[j / 2].clone()
                } else {
                    format!("l{}", j / 2 + 1)
                }
            })
            .collect();
        let mut nodes = Vec::new();
        for name in &names {
            nodes.push(
                Netns::create(&format!("{PREFIX}{tag}{name}"))
                    .with_context(|| format!("creating namespace {tag}{name}"))?,
            );
        }
        let tb = Testbed { plan, names, nodes };
        for seg in 0..plan.segments() {
            let (l, r) = (seg, seg + 1);
            let la = format!("{}/24", plan.addr(l, seg));
            let ra = format!("{}/24", plan.addr(r, seg));
            splitway_netns::link(
                &tb.nodes[l],
                &plan.ifname(l, seg),
                &[&la],
                &tb.nodes[r],
                &plan.ifname(r, seg),
                &[&ra],
            )
            .with_context(|| format!("linking {} and {}", tb.names[l], tb.names[r]))?;
        }
        for (i, ns) in tb.nodes.iter().enumerate() {
            for (subnet, via) in plan.routes(i) {
                ns.ip(["route", "add", &subnet, "via", &via.to_string()])?;
            }
            if i > 0 && i < plan.nodes() - 1 {
                ns.enable_forwarding()?;
            }
            ns.sysctl("net.ipv4.tcp_congestion_control", cc)
                .with_context(|| format!("setting congestion control {cc} in {}", ns.name()))?;
            // TCP Fast Open, client and server: only sockets that ask for
            // it use it (the relays' legs with `fast_open`; curl, nginx and
            // ssh here do not).
            ns.sysctl("net.ipv4.tcp_fastopen", "3")
                .with_context(|| format!("enabling TCP Fast Open in {}", ns.name()))?;
        }
        Ok(tb)
    }

    pub fn plan(&self) -> &plan::Plan {
        &self.plan
    }

    /// The namespace of node `node` (a host name or `l1`, `l2`, …).
    pub fn ns(&self, node: &str) -> &Netns {
        let i = self.names.iter().position(|n| n == node).unwrap_or(0);
        &self.nodes[i]
    }

    /// The namespace of host `i` (0 = client).
    pub fn host(&self, i: usize) -> &Netns {
        &self.nodes[self.plan.host_node(i)]
    }

    /// The name of host `i`.
    pub fn host_name(&self, i: usize) -> &str {
        &self.names[self.plan.host_node(i)]
    }

    /// Number of hosts (client, relays, server).
    pub fn hosts(&self) -> usize {
        self.plan.links() + 1
    }

    /// The namespace of link `k`'s router (0-based) and its name.
    pub fn link_ns(&self, k: usize) -> &Netns {
        &self.nodes[self.plan.link_node(k)]
    }

    /// Add an address to host `i`'s interface `ifname` (again is no error:
    /// a configuration may be restarted).
    pub fn add_addr(&self, i: usize, addr: Ipv4Addr, ifname: &str) -> Result<()> {
        self.host(i)
            .ip(["addr", "replace", &format!("{addr}/24"), "dev", ifname])?;
        Ok(())
    }

    /// Give the server an extra address (one per configuration that needs its own).
    pub fn add_server_alias(&self, addr: Ipv4Addr) -> Result<()> {
        let n = self.plan.host_node(self.plan.links());
        self.add_addr(self.plan.links(), addr, &self.plan.ifname(n, n - 1))
    }

    /// Give the client an extra address (for many clients).
    pub fn add_client_alias(&self, addr: Ipv4Addr) -> Result<()> {
        self.add_addr(0, addr, &self.plan.ifname(0, 0))
    }

    /// Forget cached per-destination TCP metrics (ssthresh, RTT) in every
    /// host, so each run starts as a fresh connection would on a fresh host.
    pub fn flush_tcp_metrics(&self) {
        for i in 0..self.hosts() {
            let _ = self.host(i).ip(["tcp_metrics", "flush", "all"]);
        }
    }

    /// Spawn `program args` in `node`, in its own process group (so Ctrl-C
    /// reaches only the lab, which then stops it), output to `log`.
    pub fn spawn(
        &self,
        node: &str,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> Result<ChildGuard> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = self.ns(node).command(program);
        cmd.args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        ChildGuard::spawn(&mut cmd).with_context(|| format!("starting {program} in {node}"))
    }

    /// A command for `program` in `node`, its own process group.
    pub fn command(&self, node: &str, program: &str) -> Command {
        let mut c = self.ns(node).command(program);
        c.process_group(0);
        c
    }
}
