//! The early-SYN tap: learn of a client's SYN before the handshake ends.
//!
//! An `iptables-nft` rule in `mangle PREROUTING` (priority -150, before the
//! TPROXY chain at -140) queues only SYNs to the configured prefixes and
//! ports to NFQUEUE, with `--queue-bypass` so SYNs pass untouched when the
//! relay is not running. A thread reads each SYN's headers, gives the
//! `accept` verdict at once, and hands the 4-tuple to the relay, which
//! starts the next leg while the client is still in its handshake. Rules
//! carry a comment naming the node, so a restart removes a crashed run's
//! rules first, and they are removed on exit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;

use ipnet::IpNet;
use splitway_core::config::Config;
use splitway_core::pairing::FourTuple;
use tokio::sync::mpsc;

/// Parse the 4-tuple and initial sequence number of a TCP SYN from the
/// start of an IP packet.
pub fn parse_syn(p: &[u8]) -> Option<FourTuple> {
    let version = p.first()? >> 4;
    let (src, dst, l4) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < ihl + 14 || ihl < 20 || p[9] != 6 {
                return None;
            }
            let s = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let d = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            (IpAddr::V4(s), IpAddr::V4(d), &p[ihl..])
        }
        6 => {
            if p.len() < 40 + 14 || p[6] != 6 {
                return None;
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&p[8..24]);
            d.copy_from_slice(&p[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                &p[40..],
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let isn = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    let flags = l4[13];
    // SYN set, ACK clear.
    if flags & 0x02 == 0 || flags & 0x10 != 0 {
        return None;
    }
    Some(FourTuple {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        isn,
    })
}

fn comment(node: &str) -> String {
    format!("splitway:{node}")
}

/// iptables arguments (after `-A PREROUTING`) for each queue rule.
pub fn rule_specs(cfg: &Config) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let q = cfg.firewall.syn_queue.to_string();
    for t in &cfg.transparent {
        let all_ports = t.ports.iter().any(|p| p.first == 1 && p.last == 65535);
        let ports: Vec<String> = t
            .ports
            .iter()
            .map(|p| {
                if p.first == p.last {
                    p.first.to_string()
                } else {
                    format!("{}:{}", p.first, p.last)
                }
            })
            .collect();
        for prefix in &t.prefixes {
            let mut a: Vec<String> = vec!["-p".into(), "tcp".into(), "--syn".into()];
            a.extend(["-d".into(), prefix.trunc().to_string()]);
            if !all_ports {
                a.extend([
                    "-m".into(),
                    "multiport".into(),
                    "--dports".into(),
                    ports.join(","),
                ]);
            }
            a.extend([
                "-m".into(),
                "comment".into(),
                "--comment".into(),
                comment(&cfg.node.name),
            ]);
            a.extend([
                "-j".into(),
                "NFQUEUE".into(),
                "--queue-num".into(),
                q.clone(),
                "--queue-bypass".into(),
            ]);
            out.push((matches!(prefix, IpNet::V6(_)), a));
        }
    }
    out
}

fn tool(v6: bool) -> &'static str {
    if v6 {
        "ip6tables-nft"
    } else {
        "iptables-nft"
    }
}

/// Delete every queue rule carrying this node's comment.
pub fn remove_rules(node: &str) {
    let c = comment(node);
    for v6 in [false, true] {
        let Ok(out) = Command::new(tool(v6))
            .args(["-t", "mangle", "-S", "PREROUTING"])
            .output()
        else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.contains(&c) || !line.starts_with("-A ") {
                continue;
            }
            // `-S` prints rules in the syntax `-D` takes back; the comment
            // is quoted, so split respecting quotes.
            let args = shell_words(&line[3..]);
            let _ = Command::new(tool(v6))
                .args(["-t", "mangle", "-D"])
                .args(&args)
                .output();
        }
    }
}

fn shell_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Installed queue rules; removed on drop.
pub struct Rules {
    node: String,
}

impl Drop for Rules {
    fn drop(&mut self) {
        remove_rules(&self.node);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("NFQUEUE {queue}: {source}")]
    Queue {
        queue: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` failed: {1}")]
    Rule(String, String),
}

/// Bind the queue and start the reader thread (once per process). SYNs
/// arrive on the returned channel; when it is full they are dropped from
/// the tap only (the packet itself was already accepted) and counted in
/// `dropped`.
pub fn start_queue(
    cfg: &Config,
    dropped: prometheus::IntCounter,
) -> Result<mpsc::Receiver<FourTuple>, TapError> {
    let queue_num = cfg.firewall.syn_queue;
    let qerr = |source: std::io::Error| TapError::Queue {
        queue: queue_num,
        source,
    };
    let mut q = nfq::Queue::open().map_err(qerr)?;
    q.bind(queue_num).map_err(qerr)?;
    q.set_copy_range(queue_num, 80).map_err(qerr)?;
    q.set_fail_open(queue_num, true).map_err(qerr)?;
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("splitway-syn-tap".into())
        .spawn(move || loop {
            let Ok(mut msg) = q.recv() else { continue };
            let tuple = parse_syn(msg.get_payload());
            msg.set_verdict(nfq::Verdict::Accept);
            if q.verdict(msg).is_err() {
                continue;
            }
            if let Some(t) = tuple {
                if tx.try_send(t).is_err() {
                    dropped.inc();
                }
            }
        })
        .map_err(qerr)?;
    Ok(rx)
}

/// Install the queue rules for `cfg`, replacing any this node left.
pub fn install_rules(cfg: &Config) -> Result<Rules, TapError> {
    remove_rules(&cfg.node.name);
    let rules = Rules {
        node: cfg.node.name.clone(),
    };
    for (v6, spec) in rule_specs(cfg) {
        let out = Command::new(tool(v6))
            .args(["-t", "mangle", "-A", "PREROUTING"])
            .args(&spec)
            .output()
            .map_err(|e| TapError::Rule(tool(v6).into(), e.to_string()))?;
        if !out.status.success() {
            return Err(TapError::Rule(
                format!("{} {}", tool(v6), spec.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_syn(flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 1, 2]);
        p[16..20].copy_from_slice(&[10, 0, 3, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn parses_v4_syn_only() {
        let t = parse_syn(&v4_syn(0x02)).unwrap();
        assert_eq!(t.src, "10.0.1.2:40000".parse().unwrap());
        assert_eq!(t.dst, "10.0.3.2:80".parse().unwrap());
        assert_eq!(t.isn, 0xdead_beef);
        assert_eq!(
            parse_syn(&v4_syn(0x12)),
            None,
            "SYN-ACK is not a client SYN"
        );
        assert_eq!(parse_syn(&v4_syn(0x10)), None);
        assert_eq!(parse_syn(&v4_syn(0x02)[..30]), None, "truncated");
        assert_eq!(parse_syn(&[]), None);
    }

    #[test]
    fn parses_v6_syn() {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = 6;
        p[8..24].copy_from_slice(&"fd10:1::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd10:3::2".parse::<Ipv6Addr>().unwrap().octets());
        p[40..42].copy_from_slice(&1234u16.to_be_bytes());
        p[42..44].copy_from_slice(&443u16.to_be_bytes());
        p[53] = 0x02;
        let t = parse_syn(&p).unwrap();
        assert_eq!(t.dst, "[fd10:3::2]:443".parse().unwrap());
        p[6] = 17;
        assert_eq!(parse_syn(&p), None, "not TCP");
    }

    #[test]
    fn shell_words_keeps_quoted_comment() {
        assert_eq!(
            shell_words(r#"PREROUTING -m comment --comment "splitway:in" -j NFQUEUE"#),
            vec![
                "PREROUTING",
                "-m",
                "comment",
                "--comment",
                "splitway:in",
                "-j",
                "NFQUEUE"
            ]
        );
    }
}
