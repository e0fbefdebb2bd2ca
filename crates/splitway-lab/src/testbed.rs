//! The namespaces of one lab: four hosts and three link routers in a chain,
//! wired with veth pairs and static routes (see [`crate::topology::plan`]).
//!
//! Everything here is deleted when the [`Testbed`] drops (namespaces take
//! their interfaces, rules and remaining processes with them).

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use splitway_netns::{ChildGuard, Netns};

use crate::topology::plan;

/// Prefix of every namespace the lab creates (the lab lock makes it unique).
pub const PREFIX: &str = "swlab-";

pub struct Testbed {
    /// In chain order: client, l1, ingress, l2, egress, l3, server.
    nodes: Vec<Netns>,
}

impl Testbed {
    /// Build the chain. `cc` is the congestion control set in every namespace.
    pub fn build(cc: &str) -> Result<Testbed> {
        splitway_netns::sweep(PREFIX);
        let mut nodes = Vec::new();
        for name in plan::NODES {
            nodes.push(
                Netns::create(&format!("{PREFIX}{name}"))
                    .with_context(|| format!("creating namespace {name}"))?,
            );
        }
        let tb = Testbed { nodes };
        for seg in 0..plan::SEGMENTS {
            let (l, r) = (seg, seg + 1);
            let la = format!("{}/24", plan::addr(l, seg));
            let ra = format!("{}/24", plan::addr(r, seg));
            splitway_netns::link(
                &tb.nodes[l],
                &plan::ifname(l, seg),
                &[&la],
                &tb.nodes[r],
                &plan::ifname(r, seg),
                &[&ra],
            )
            .with_context(|| format!("linking {} and {}", plan::NODES[l], plan::NODES[r]))?;
        }
        for (i, ns) in tb.nodes.iter().enumerate() {
            for (subnet, via) in plan::routes(i) {
                ns.ip(["route", "add", &subnet, "via", &via.to_string()])?;
            }
            if i > 0 && i < plan::NODES.len() - 1 {
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

    pub fn ns(&self, node: &str) -> &Netns {
        let i = plan::node_index(node).unwrap_or(0);
        &self.nodes[i]
    }

    /// Give the server an extra address (one per configuration that needs its own).
    pub fn add_server_alias(&self, addr: Ipv4Addr) -> Result<()> {
        self.ns("server").ip([
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &plan::ifname(6, 5),
        ])?;
        Ok(())
    }

    /// Give `host` (ingress or egress) an extra address on its relay-leg side.
    pub fn add_leg_alias(&self, host: &str, addr: Ipv4Addr) -> Result<()> {
        self.ns(host).ip([
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &plan::leg_ifname(host),
        ])?;
        Ok(())
    }

    /// Forget cached per-destination TCP metrics (ssthresh, RTT) in every
    /// host, so each run starts as a fresh connection would on a fresh host.
    pub fn flush_tcp_metrics(&self) {
        for h in crate::topology::HOSTS {
            let _ = self.ns(h).ip(["tcp_metrics", "flush", "all"]);
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
