//! nftables rules and policy routing for transparent interception.
//!
//! The relay owns one table, `inet splitway_<node>`, with a prerouting chain
//! that TPROXYs the configured prefixes and ports to the transparent
//! listener and marks those packets; a policy rule sends marked packets to a
//! routing table whose only route is `local default dev lo`, so the kernel
//! delivers them to the listener. Packets carrying the relay's own mark are
//! never intercepted. [`Firewall::install`] first removes anything a previous
//! (crashed) run left, and [`Firewall`] removes everything on drop.
//!
//! The ruleset is built as text by [`ruleset`] (pure, unit-tested) and
//! loaded atomically with `nft -f -`.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::IpNet;
use splitway_core::config::{Config, Transparent};

/// nft chain priority of the TPROXY chain: after mangle (-150) so the
/// early-SYN queue rule (iptables-nft mangle) sees SYNs first.
pub const TPROXY_PRIORITY: i32 = -140;

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("cannot run `{cmd}` (is it installed?): {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), FirewallError> {
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| FirewallError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|source| FirewallError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| FirewallError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The nftables table name for a node.
/// Node names are `[a-z0-9_-]` (checked on load), all valid in nft
/// identifiers, so the name is used as it is: two nodes on one host never
/// share a table (mapping `-` to `_` made `a-b` and `a_b` collide).
pub fn table_name(node: &str) -> String {
    format!("splitway_{node}")
}

fn set_of(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    format!("{{ {} }}", v.join(", "))
}

/// The nft script that (re)creates the relay's table.
pub fn ruleset(table: &str, rules: &[Transparent], tproxy_mark: u32, own_mark: u32) -> String {
    let mut s = String::new();
    s.push_str(&format!("table inet {table} {{\n"));
    s.push_str(&format!(
        "  chain divert {{\n    type filter hook prerouting priority {TPROXY_PRIORITY}; policy accept;\n"
    ));
    s.push_str(&format!("    meta mark {own_mark:#x} return\n"));
    for t in rules {
        let ports = set_of(t.ports.iter().map(|p| p.to_string()));
        let v4: Vec<String> = t
            .prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)))
            .map(|p| p.trunc().to_string())
            .collect();
        let v6: Vec<String> = t
            .prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)))
            .map(|p| p.trunc().to_string())
            .collect();
        if !v4.is_empty() {
            s.push_str(&format!(
                "    meta l4proto tcp ip daddr {} tcp dport {ports} tproxy ip to :{} meta mark set {tproxy_mark:#x} accept\n",
                set_of(v4),
                t.port
            ));
        }
        if !v6.is_empty() {
            s.push_str(&format!(
                "    meta l4proto tcp ip6 daddr {} tcp dport {ports} tproxy ip6 to :{} meta mark set {tproxy_mark:#x} accept\n",
                set_of(v6),
                t.port
            ));
        }
    }
    s.push_str("  }\n}\n");
    s
}

/// Installed rules; removed on drop.
#[derive(Debug)]
pub struct Firewall {
    table: String,
    mark: u32,
    route_table: u32,
    v4: bool,
    v6: bool,
}

impl Firewall {
    /// Install the table and policy routing for `cfg.transparent`, replacing
    /// whatever a previous run of the same node left behind.
    pub fn install(cfg: &Config) -> Result<Firewall, FirewallError> {
        let fw = &cfg.firewall;
        let prefixes = cfg.transparent.iter().flat_map(|t| t.prefixes.iter());
        let (mut v4, mut v6) = (false, false);
        for p in prefixes {
            match p {
                IpNet::V4(_) => v4 = true,
                IpNet::V6(_) => v6 = true,
            }
        }
        let me = Firewall {
            table: table_name(&cfg.node.name),
            mark: fw.tproxy_mark,
            route_table: fw.route_table,
            v4,
            v6,
        };
        me.remove();
        let script = ruleset(&me.table, &cfg.transparent, fw.tproxy_mark, fw.own_mark);
        run("nft", &["-f", "-"], Some(&script))?;
        let mark = format!("{:#x}", me.mark);
        let table = me.route_table.to_string();
        for (on, fam, local) in [(v4, "-4", "0.0.0.0/0"), (v6, "-6", "::/0")] {
            if on {
                run(
                    "ip",
                    &[fam, "rule", "add", "fwmark", &mark, "lookup", &table],
                    None,
                )?;
                run(
                    "ip",
                    &[
                        fam, "route", "replace", "local", local, "dev", "lo", "table", &table,
                    ],
                    None,
                )?;
            }
        }
        Ok(me)
    }

    /// Remove the table, the policy rules and the local routes (idempotent).
    fn remove(&self) {
        let _ = run("nft", &["delete", "table", "inet", &self.table], None);
        let mark = format!("{:#x}", self.mark);
        let table = self.route_table.to_string();
        for fam in ["-4", "-6"] {
            // A crashed run may have left several copies; delete until none.
            for _ in 0..64 {
                if run(
                    "ip",
                    &[fam, "rule", "del", "fwmark", &mark, "lookup", &table],
                    None,
                )
                .is_err()
                {
                    break;
                }
            }
            let _ = run("ip", &[fam, "route", "flush", "table", &table], None);
        }
        let _ = (self.v4, self.v6);
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_has_own_mark_bypass_and_both_families() {
        let t = Transparent {
            port: 15001,
            prefixes: vec![
                "10.0.3.7/24".parse().unwrap(),
                "fd00:3::/64".parse().unwrap(),
            ],
            ports: vec!["80".parse().unwrap(), "8000-8999".parse().unwrap()],
        };
        let s = ruleset("splitway_in", &[t], 0x10, 0x20);
        assert!(s.starts_with("table inet splitway_in {"));
        assert!(s.contains("priority -140"));
        assert!(s.contains("meta mark 0x20 return"));
        assert!(s.contains("ip daddr { 10.0.3.0/24 } tcp dport { 80, 8000-8999 } tproxy ip to :15001 meta mark set 0x10 accept"));
        assert!(s.contains("ip6 daddr { fd00:3::/64 }"));
        // The bypass comes before any tproxy rule.
        assert!(s.find("return").unwrap() < s.find("tproxy").unwrap());
    }

    #[test]
    fn table_name_is_nft_safe() {
        assert_eq!(table_name("eu-west_1"), "splitway_eu-west_1");
        assert_ne!(table_name("a-b"), table_name("a_b"));
    }
}
