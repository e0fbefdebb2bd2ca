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
//!
//! A receive error never makes the thread spin: it is counted
//! (`splitway_syn_tap_errors_total`), logged at most once a second, and
//! followed by a pause that grows to a second; the thread ends at shutdown.
//! Rules and queue are set up only by the kernel-state owner
//! ([`crate::kernel`]), on its own thread: `iptables` blocks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use splitway_core::config::Config;
use splitway_core::pairing::FourTuple;
use tokio::sync::mpsc;

use crate::ratelimit::RateLimit;

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

/// iptables' `multiport` match takes at most 15 ports, a range counting as
/// two: the largest weight one rule may carry.
const MULTIPORT_MAX: usize = 15;

/// The `--dports` lists for `ports`, split so that no list weighs more than
/// [`MULTIPORT_MAX`] (one queue rule each).
fn multiport_lists(ports: &[splitway_core::ports::PortRange]) -> Vec<String> {
    let mut lists: Vec<Vec<String>> = Vec::new();
    let mut weight = MULTIPORT_MAX;
    for p in ports {
        let (item, w) = if p.first == p.last {
            (p.first.to_string(), 1)
        } else {
            (format!("{}:{}", p.first, p.last), 2)
        };
        if weight + w > MULTIPORT_MAX {
            lists.push(Vec::new());
            weight = 0;
        }
        weight += w;
        if let Some(l) = lists.last_mut() {
            l.push(item);
        }
    }
    lists.into_iter().map(|l| l.join(",")).collect()
}

/// iptables arguments (after `-A PREROUTING`) for each queue rule: one per
/// prefix and per list of at most 15 ports.
pub fn rule_specs(cfg: &Config) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    let q = cfg.firewall.syn_queue.to_string();
    for t in &cfg.transparent {
        let all_ports = t.ports.iter().any(|p| p.first == 1 && p.last == 65535);
        let lists: Vec<Option<String>> = if all_ports {
            vec![None]
        } else {
            multiport_lists(&t.ports).into_iter().map(Some).collect()
        };
        for prefix in &t.prefixes {
            for ports in &lists {
                let mut a: Vec<String> = vec!["-p".into(), "tcp".into(), "--syn".into()];
                a.extend(["-d".into(), prefix.trunc().to_string()]);
                if let Some(ports) = ports {
                    a.extend([
                        "-m".into(),
                        "multiport".into(),
                        "--dports".into(),
                        ports.clone(),
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

/// Installed queue rules (exactly these); removed on drop.
#[derive(Debug)]
pub struct Rules {
    specs: Vec<(bool, Vec<String>)>,
}

impl Rules {
    /// The iptables arguments (after `-A PREROUTING`) of each rule.
    pub fn specs(&self) -> &[(bool, Vec<String>)] {
        &self.specs
    }
}

fn delete_rule(v6: bool, spec: &[String]) {
    let _ = Command::new(tool(v6))
        .args(["-t", "mangle", "-D", "PREROUTING"])
        .args(spec)
        .output();
}

impl Drop for Rules {
    fn drop(&mut self) {
        for (v6, spec) in &self.specs {
            delete_rule(*v6, spec);
        }
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

/// What the tap thread counts.
#[derive(Clone)]
pub struct TapMetrics {
    /// SYNs the relay had no room for (the packet itself was accepted).
    pub dropped: prometheus::IntCounter,
    /// Failed receives or verdicts on the queue.
    pub errors: prometheus::IntCounter,
}

/// Pause after a failed receive: doubles from [`Backoff::MIN`] up to
/// [`Backoff::MAX`], back to the minimum after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(1);
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Backoff {
        Backoff { next: Self::MIN }
    }

    /// The pause after one more failure.
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn ok(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

static TAP_ERROR_LOG: RateLimit = RateLimit::new(1);

/// How often a tap blocked in `recv` looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// The tap's loop: `recv` returns the next SYN's 4-tuple (`None`: a
/// packet that was no client SYN), or an error; a timeout (`WouldBlock`,
/// `TimedOut`) only gives the loop a look at `stop`. A persistent error
/// never spins: every failure is counted, logged (at most once a second)
/// and followed by a growing pause. Returns when `stop` is set or the relay
/// side of the channel is gone.
pub fn run_tap(
    mut recv: impl FnMut() -> std::io::Result<Option<FourTuple>>,
    tx: &mpsc::Sender<FourTuple>,
    m: &TapMetrics,
    stop: &AtomicBool,
    mut pause: impl FnMut(Duration),
) {
    let mut backoff = Backoff::new();
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        match recv() {
            Ok(t) => {
                backoff.ok();
                if let Some(t) = t {
                    if tx.try_send(t).is_err() {
                        m.dropped.inc();
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                m.errors.inc();
                let wait = backoff.fail();
                if let Some(suppressed) = TAP_ERROR_LOG.allow() {
                    tracing::warn!(error = %e, pause_ms = wait.as_millis() as u64, suppressed, "early-SYN tap: receive failed");
                }
                pause(wait);
            }
        }
    }
}

/// Bind the queue and start the reader thread (once per process). SYNs
/// arrive on the returned channel; when it is full they are dropped from
/// the tap only (the packet itself was already accepted) and counted. The
/// thread ends when `stop` is set (within [`STOP_CHECK`]).
pub fn start_queue(
    cfg: &Config,
    m: TapMetrics,
    stop: Arc<AtomicBool>,
) -> Result<mpsc::Receiver<FourTuple>, TapError> {
    let queue_num = cfg.firewall.syn_queue;
    let qerr = |source: std::io::Error| TapError::Queue {
        queue: queue_num,
        source,
    };
    let before = crate::sys::netlink::netfilter_sockets();
    let mut q = nfq::Queue::open().map_err(qerr)?;
    let ours: Vec<_> = crate::sys::netlink::netfilter_sockets()
        .into_iter()
        .filter(|fd| !before.contains(fd))
        .collect();
    q.bind(queue_num).map_err(qerr)?;
    q.set_copy_range(queue_num, 80).map_err(qerr)?;
    q.set_fail_open(queue_num, true).map_err(qerr)?;
    if let [fd] = ours.as_slice() {
        if let Err(e) = crate::sys::netlink::set_recv_timeout(*fd, STOP_CHECK) {
            tracing::warn!(error = %e, "early-SYN tap: no receive timeout; it stops with the process");
        }
    }
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("splitway-syn-tap".into())
        .spawn(move || {
            let recv = || {
                let mut msg = q.recv()?;
                let tuple = parse_syn(msg.get_payload());
                msg.set_verdict(nfq::Verdict::Accept);
                q.verdict(msg)?;
                Ok(tuple)
            };
            run_tap(recv, &tx, &m, &stop, std::thread::sleep);
        })
        .map_err(qerr)?;
    Ok(rx)
}

/// Add the queue rules for `cfg` next to whatever is installed; if one
/// fails, the ones added are taken out again and nothing changed.
pub fn install_rules(cfg: &Config) -> Result<Rules, TapError> {
    let mut rules = Rules { specs: Vec::new() };
    for (v6, spec) in rule_specs(cfg) {
        let out = Command::new(tool(v6))
            .args(["-t", "mangle", "-A", "PREROUTING"])
            .args(&spec)
            .output()
            .map_err(|e| TapError::Rule(tool(v6).into(), e.to_string()))?;
        if !out.status.success() {
            // `rules` drops here: the ones added are removed.
            return Err(TapError::Rule(
                format!("{} {}", tool(v6), spec.join(" ")),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        rules.specs.push((v6, spec));
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

    fn tap_metrics() -> TapMetrics {
        TapMetrics {
            dropped: prometheus::IntCounter::new("d", "d").unwrap(),
            errors: prometheus::IntCounter::new("e", "e").unwrap(),
        }
    }

    #[test]
    fn a_persistent_receive_error_pauses_growing_is_counted_and_stops() {
        let (tx, _rx) = mpsc::channel(4);
        let m = tap_metrics();
        let stop = AtomicBool::new(false);
        let mut pauses = Vec::new();
        run_tap(
            || Err(std::io::Error::from_raw_os_error(libc::ENOBUFS)),
            &tx,
            &m,
            &stop,
            |d| {
                pauses.push(d);
                if pauses.len() == 15 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
        );
        assert_eq!(m.errors.get(), 15, "every failure counted");
        assert_eq!(
            pauses.len(),
            15,
            "a pause after every failure, then stopped"
        );
        assert_eq!(pauses[0], Backoff::MIN);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), Backoff::MAX, "capped");
    }

    #[test]
    fn tap_delivers_syns_resets_its_pause_and_ignores_timeouts() {
        let (tx, mut rx) = mpsc::channel(4);
        let m = tap_metrics();
        let stop = AtomicBool::new(false);
        let t = parse_syn(&v4_syn(0x02)).unwrap();
        let mut script = vec![
            Err(std::io::Error::from_raw_os_error(libc::EIO)),
            Err(std::io::Error::from_raw_os_error(libc::EIO)),
            Ok(Some(t)),
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock)),
            Ok(None),
            Err(std::io::Error::from_raw_os_error(libc::EIO)),
        ]
        .into_iter();
        let mut pauses = Vec::new();
        run_tap(
            || {
                script.next().unwrap_or_else(|| {
                    stop.store(true, Ordering::Relaxed);
                    Ok(None)
                })
            },
            &tx,
            &m,
            &stop,
            |d| pauses.push(d),
        );
        assert_eq!(rx.try_recv().unwrap(), t);
        assert_eq!(m.errors.get(), 3, "a timeout is no error");
        assert_eq!(
            pauses,
            vec![Backoff::MIN, Backoff::MIN * 2, Backoff::MIN],
            "reset after a SYN"
        );
    }

    #[test]
    fn many_ports_are_split_into_multiport_lists_of_at_most_15() {
        use splitway_core::ports::PortRange;
        let one = |n: u16| PortRange { first: n, last: n };
        // 20 single ports and 3 ranges: weights 20 + 6 = 26 → two lists.
        let mut ports: Vec<PortRange> = (1000..1020).map(one).collect();
        ports.extend((0..3).map(|i| PortRange {
            first: 2000 + i * 10,
            last: 2005 + i * 10,
        }));
        let lists = multiport_lists(&ports);
        assert_eq!(lists.len(), 2, "{lists:?}");
        for l in &lists {
            let w: usize = l
                .split(',')
                .map(|p| if p.contains(':') { 2 } else { 1 })
                .sum();
            assert!(w <= MULTIPORT_MAX, "{l} weighs {w}");
        }
        let all: Vec<&str> = lists.iter().flat_map(|l| l.split(',')).collect();
        assert_eq!(all.len(), 23, "every port kept once");
        assert_eq!(multiport_lists(&ports[..15]).len(), 1);
        assert_eq!(multiport_lists(&ports[..16]).len(), 2);
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
