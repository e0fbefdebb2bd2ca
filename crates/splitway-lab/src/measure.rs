//! The lab measures its own emulation: per-link RTT by TCP connect timing
//! (SYN to SYN-ACK is one round trip; no ICMP tool needed) and bulk
//! throughput over the longest link, with a listener and a sender of its own
//! inside the namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

use crate::stats;
use crate::testbed::Testbed;
use crate::topology::Topology;

/// Port of the lab's probe listeners in every host.
const PROBE_PORT: u16 = 9;
/// Port of the throughput sink.
const SINK_PORT: u16 = 5001;

/// RTT error above which the report shouts.
pub const RTT_TOLERANCE_MS: f64 = 1.0;
/// Throughput below this share of the configured rate makes the report shout.
pub const THROUGHPUT_TOLERANCE: f64 = 0.90;

/// Measured RTT of one link (or of the whole path).
#[derive(Debug, Clone, Serialize)]
pub struct LinkRtt {
    pub a: String,
    pub b: String,
    pub rtt_ms_configured: f64,
    pub rtt_ms_measured: f64,
    pub rtt_err_ms_median: f64,
    pub rtt_err_ms_max: f64,
    pub probes: usize,
}

/// The emulation check reported with every lab run.
#[derive(Debug, Clone, Serialize)]
pub struct EmulationCheck {
    pub kind: String,
    pub links: Vec<LinkRtt>,
    pub end_to_end: LinkRtt,
    pub throughput_link: String,
    pub throughput_mbit: f64,
    pub throughput_mbit_configured: f64,
    /// Loss and jitter measured on every impaired link, each direction.
    pub impairments: Vec<Impairment>,
    pub warnings: Vec<String>,
}

impl EmulationCheck {
    pub fn ok(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// A listener in a namespace whose connections are accepted and dropped by a
/// background thread, until the probe is dropped.
struct ProbeListener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProbeListener {
    fn start(
        tb: &Testbed,
        host: usize,
        addr: SocketAddr,
        sink: Option<Arc<AtomicU64>>,
    ) -> Result<ProbeListener> {
        let l = tb
            .host(host)
            .run_in(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding probe listener {addr} in {}", tb.host_name(host)))?;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) if sink.is_some() => {
                        let st = st.clone();
                        let counter = sink.clone().unwrap_or_default();
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut buf = vec![0u8; 256 * 1024];
                            while !st.load(Ordering::Relaxed) {
                                match s.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        counter.fetch_add(n as u64, Ordering::Relaxed);
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(ProbeListener {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ProbeListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Time `n` TCP handshakes from `from` to `to`, in ms.
fn connect_times(tb: &Testbed, from: usize, to: SocketAddr, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        crate::host::check_stop()?;
        let t = tb.host(from).run_in(move || -> std::io::Result<f64> {
            let t0 = Instant::now();
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
            let dt = t0.elapsed().as_secs_f64() * 1e3;
            drop(s);
            Ok(dt)
        })??;
        out.push(t);
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(out)
}

fn rtt_of(tb: &Testbed, ai: usize, bi: usize, configured: f64, n: usize) -> Result<LinkRtt> {
    let (a, b) = (tb.host_name(ai), tb.host_name(bi));
    let to = SocketAddr::new(tb.plan().host_addr(bi).into(), PROBE_PORT);
    let xs = connect_times(tb, ai, to, n).with_context(|| format!("probing RTT {a} -> {b}"))?;
    let errs: Vec<f64> = xs.iter().map(|x| (x - configured).abs()).collect();
    Ok(LinkRtt {
        a: a.into(),
        b: b.into(),
        rtt_ms_configured: configured,
        rtt_ms_measured: stats::quantile(&xs, 0.5).unwrap_or(f64::NAN),
        rtt_err_ms_median: stats::quantile(&errs, 0.5).unwrap_or(f64::NAN),
        rtt_err_ms_max: errs.iter().copied().fold(0.0, f64::max),
        probes: xs.len(),
    })
}

/// Send as fast as possible from `a` to `b` for `dur`; goodput (Mbit/s of
/// TCP payload, counted by the receiver) over the second half, once slow
/// start is over.
fn throughput(tb: &Testbed, ai: usize, bi: usize, dur: Duration) -> Result<f64> {
    let (a, b) = (tb.host_name(ai), tb.host_name(bi));
    let baddr: Ipv4Addr = tb.plan().host_addr(bi);
    let to = SocketAddr::new(baddr.into(), SINK_PORT);
    let counter = Arc::new(AtomicU64::new(0));
    let _sink = ProbeListener::start(tb, bi, to, Some(counter.clone()))?;
    let stream = tb
        .host(ai)
        .run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(10)))??;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let sender = std::thread::spawn(move || {
        let mut s = stream;
        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
        let buf = vec![0x5au8; 128 * 1024];
        while !d2.load(Ordering::Relaxed) {
            if let Err(e) = s.write(&buf) {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    break;
                }
            }
        }
    });
    let t0 = Instant::now();
    std::thread::sleep(dur / 2);
    let (t_half, b_half) = (Instant::now(), counter.load(Ordering::Relaxed));
    while t0.elapsed() < dur && !crate::host::stopping() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t_end, b_end) = (Instant::now(), counter.load(Ordering::Relaxed));
    done.store(true, Ordering::Relaxed);
    let _ = sender.join();
    crate::host::check_stop()?;
    let secs = (t_end - t_half).as_secs_f64();
    if secs <= 0.0 || b_end <= b_half {
        return Err(anyhow!("throughput check {a} -> {b} moved no data"));
    }
    Ok((b_end - b_half) as f64 * 8.0 / secs / 1e6)
}

/// RTTs only (every link and the whole path), e.g. after the runs, to see drift.
#[derive(Debug, Clone, Serialize)]
pub struct RttCheck {
    pub links: Vec<LinkRtt>,
    pub end_to_end: LinkRtt,
    pub warnings: Vec<String>,
}

/// Probe every link's RTT and the whole path's.
pub fn check_rtts(tb: &Testbed, topo: &Topology, probes: usize) -> Result<RttCheck> {
    let mut listeners = Vec::new();
    for h in 0..tb.hosts() {
        let addr = SocketAddr::new(tb.plan().host_addr(h).into(), PROBE_PORT);
        listeners.push(ProbeListener::start(tb, h, addr, None)?);
    }
    let mut links = Vec::new();
    let mut warnings = Vec::new();
    for (k, l) in topo.links.iter().enumerate() {
        // jitter widens every probe by up to twice the link's jitter
        let tolerance = RTT_TOLERANCE_MS + 2.0 * l.jitter_ms;
        let r = rtt_of(tb, k, k + 1, l.rtt_ms + l.jitter_ms, probes)?;
        if r.rtt_err_ms_max > tolerance {
            warnings.push(format!(
                "link {}: RTT error up to {:.2} ms (median measured {:.2} ms vs {:.2} ms configured; goal ≤ {tolerance} ms)",
                l.name(), r.rtt_err_ms_max, r.rtt_ms_measured, l.rtt_ms
            ));
        }
        links.push(r);
    }
    let jitter: f64 = topo.links.iter().map(|l| l.jitter_ms).sum();
    let e2e = rtt_of(tb, 0, topo.links.len(), topo.rtt_ms() + jitter, probes)?;
    if e2e.rtt_err_ms_max > 3.0 * RTT_TOLERANCE_MS + 2.0 * jitter {
        warnings.push(format!(
            "path client-server: RTT error up to {:.2} ms (median {:.2} vs {:.2} ms)",
            e2e.rtt_err_ms_max,
            e2e.rtt_ms_measured,
            topo.rtt_ms()
        ));
    }
    Ok(RttCheck {
        links,
        end_to_end: e2e,
        warnings,
    })
}

/// Measure every link, the whole path and the longest link's throughput.
pub fn check(
    tb: &Testbed,
    topo: &Topology,
    kind: &str,
    probes: usize,
    bulk: Duration,
) -> Result<EmulationCheck> {
    let RttCheck {
        links,
        end_to_end: e2e,
        mut warnings,
    } = check_rtts(tb, topo, probes)?;
    let li = topo.longest_link();
    let l = &topo.links[li];
    let mbit = throughput(tb, li, li + 1, bulk)?;
    if mbit < THROUGHPUT_TOLERANCE * l.mbit && l.loss_pct == 0.0 {
        warnings.push(format!(
            "link {}: bulk TCP throughput {mbit:.1} Mbit/s, below {:.0}% of the configured {} Mbit/s",
            l.name(),
            THROUGHPUT_TOLERANCE * 100.0,
            l.mbit
        ));
    }
    if mbit > 1.02 * l.mbit {
        warnings.push(format!(
            "link {}: bulk TCP throughput {mbit:.1} Mbit/s exceeds the configured {} Mbit/s: the rate limit is not working",
            l.name(), l.mbit
        ));
    }
    Ok(EmulationCheck {
        kind: kind.to_string(),
        links,
        end_to_end: e2e,
        throughput_link: l.name(),
        throughput_mbit: mbit,
        throughput_mbit_configured: l.mbit,
        impairments: Vec::new(),
        warnings,
    })
}

/// Port of the UDP probe receivers.
const UDP_PROBE_PORT: u16 = 9999;

/// Loss, one-way delay spread and order measured over one direction of
/// one link with numbered, timestamped UDP probes.
#[derive(Debug, Clone, Serialize)]
pub struct Impairment {
    pub link: String,
    /// `"a->b"` or `"b->a"` (the link's own ends).
    pub direction: String,
    pub sent: u64,
    pub received: u64,
    pub loss_pct_configured: f64,
    pub loss_pct_measured: f64,
    /// The loss tolerance applied: ±10 % of the target, or three binomial
    /// standard errors of this many probes when that is wider.
    pub loss_tolerance_pct: f64,
    /// Probes that arrived after a later-numbered one (must be 0).
    pub reordered: u64,
    pub jitter_ms_configured: f64,
    /// One-way delay minus the configured half RTT: 1st, 50th, 99th percentile.
    pub extra_ms_p1: f64,
    pub extra_ms_median: f64,
    pub extra_ms_p99: f64,
}

impl Impairment {
    fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let what = format!("link {} {}", self.link, self.direction);
        if (self.loss_pct_measured - self.loss_pct_configured).abs() > self.loss_tolerance_pct {
            w.push(format!(
                "{what}: loss {:.3} % measured over {} probes, configured {} % (tolerance ±{:.3})",
                self.loss_pct_measured,
                self.sent,
                self.loss_pct_configured,
                self.loss_tolerance_pct
            ));
        }
        if self.reordered > 0 {
            w.push(format!("{what}: {} probes reordered", self.reordered));
        }
        let j = self.jitter_ms_configured;
        if self.extra_ms_p99 > j + RTT_TOLERANCE_MS {
            w.push(format!(
                "{what}: one-way delay p99 {:.2} ms over the configured delay (jitter {j} ms, goal ≤ jitter + {RTT_TOLERANCE_MS} ms)",
                self.extra_ms_p99
            ));
        }
        if j > 0.0 && self.extra_ms_p99 - self.extra_ms_p1 < 0.5 * j {
            w.push(format!(
                "{what}: one-way delay spread {:.2} ms, less than half the configured jitter {j} ms",
                self.extra_ms_p99 - self.extra_ms_p1
            ));
        }
        w
    }
}

/// How many probes measure a loss rate `pct`: enough for ±10 % at 3σ,
/// within `[2000, cap]`.
pub fn loss_probes(pct: f64, cap: u64) -> u64 {
    if pct <= 0.0 {
        return 2000.min(cap);
    }
    let p = pct / 100.0;
    (((0.1f64 / 3.0).powi(-2) * (1.0 - p) / p).ceil() as u64).clamp(2000, cap.max(2000))
}

/// The tolerance (per cent) for a loss of `pct` measured over `n` probes.
pub fn loss_tolerance(pct: f64, n: u64) -> f64 {
    let p = pct / 100.0;
    let se = (p * (1.0 - p) / n.max(1) as f64).sqrt() * 100.0;
    (0.1 * pct).max(3.0 * se).max(1e-9)
}

/// Send `n` probes from host `from` to host `to`, `gap` apart; returns
/// what arrived (sequence number, one-way delay in ms) and how many probes
/// the sender failed to send.
fn udp_probe(
    tb: &Testbed,
    from: usize,
    to: usize,
    n: u64,
    gap: Duration,
) -> Result<(Vec<(u64, f64)>, u64)> {
    use std::net::UdpSocket;
    let dst = SocketAddr::new(tb.plan().host_addr(to).into(), UDP_PROBE_PORT);
    let rx = tb
        .host(to)
        .run_in(move || UdpSocket::bind(dst))?
        .with_context(|| format!("binding UDP probe receiver {dst}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    // A receiver starved for a moment on a busy machine must not lose
    // probes in its own socket buffer (the default holds ~200 of them):
    // 16 MiB holds every probe of a check.
    let big: libc::c_int = 16 << 20;
    // SAFETY: setsockopt on a socket we own, with a valid c_int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&rx),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &big as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let tx = tb.host(from).run_in(|| UdpSocket::bind("0.0.0.0:0"))??;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    // Probes the sender could not hand to its kernel are not the link's loss.
    let unsent = Arc::new(AtomicU64::new(0));
    let un = unsent.clone();
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            if st.load(Ordering::Relaxed) {
                break;
            }
            let due = start + gap.mul_f64(i as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(&i.to_le_bytes());
            msg[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
            if tx.send_to(&msg, dst).is_err() {
                un.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut quiet = 0;
    // Read until the sender is done and the link has been quiet a while.
    loop {
        if crate::host::stopping() {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        match rx.recv(&mut buf) {
            Ok(16) => {
                quiet = 0;
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let sent = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
                let now = start.elapsed().as_nanos() as u64;
                got.push((seq, now.saturating_sub(sent) as f64 / 1e6));
            }
            Ok(_) => {}
            Err(_) => {
                if sender.is_finished() {
                    quiet += 1;
                    if quiet >= 5 {
                        break;
                    }
                }
            }
        }
    }
    let _ = sender.join();
    crate::host::check_stop()?;
    Ok((got, unsent.load(Ordering::Relaxed)))
}

/// Measure loss and jitter on every impaired link, both directions.
/// `cap` bounds the probes per direction.
pub fn impairments(
    tb: &Testbed,
    topo: &Topology,
    cap: u64,
) -> Result<(Vec<Impairment>, Vec<String>)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (k, l) in topo.links.iter().enumerate() {
        if l.loss_pct == 0.0 && l.jitter_ms == 0.0 {
            continue;
        }
        let n = loss_probes(l.loss_pct, cap);
        // at most 10,000 probes/s and 10 % of the link rate (60-byte packets)
        let gap = Duration::from_secs_f64((60.0 * 8.0 / (0.1 * l.mbit * 1e6)).max(1e-4));
        for (from, to, dir) in [(k, k + 1, "a->b"), (k + 1, k, "b->a")] {
            let (got, unsent) = udp_probe(tb, from, to, n, gap)
                .with_context(|| format!("probing loss on link {}", l.name()))?;
            let n = n - unsent.min(n);
            let mut reordered = 0;
            let mut top = None;
            for &(seq, _) in &got {
                if top.is_some_and(|t| seq < t) {
                    reordered += 1;
                }
                top = top.max(Some(seq));
            }
            let extra: Vec<f64> = got.iter().map(|g| g.1 - l.rtt_ms / 2.0).collect();
            let imp = Impairment {
                link: l.name(),
                direction: dir.into(),
                sent: n,
                received: got.len() as u64,
                loss_pct_configured: l.loss_pct,
                loss_pct_measured: (n - (got.len() as u64).min(n)) as f64 / n as f64 * 100.0,
                loss_tolerance_pct: loss_tolerance(l.loss_pct, n),
                reordered,
                jitter_ms_configured: l.jitter_ms,
                extra_ms_p1: stats::quantile(&extra, 0.01).unwrap_or(f64::NAN),
                extra_ms_median: stats::quantile(&extra, 0.5).unwrap_or(f64::NAN),
                extra_ms_p99: stats::quantile(&extra, 0.99).unwrap_or(f64::NAN),
            };
            warnings.extend(imp.warnings());
            out.push(imp);
        }
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_probe_counts_and_tolerances() {
        // 1 %: 900 × 99 = 89,100 probes resolve ±10 % at 3σ
        assert_eq!(loss_probes(1.0, 1_000_000), 89_100);
        assert_eq!(loss_probes(1.0, 20_000), 20_000);
        assert_eq!(loss_probes(0.0, 20_000), 2000);
        assert!((loss_tolerance(1.0, 89_100) - 0.1).abs() < 1e-3);
        // fewer probes: 3σ is wider than ±10 %
        assert!(loss_tolerance(0.1, 20_000) > 0.01);
    }

    #[test]
    fn impairment_warnings() {
        let i = Impairment {
            link: "a-b".into(),
            direction: "a->b".into(),
            sent: 100_000,
            received: 99_000,
            loss_pct_configured: 1.0,
            loss_pct_measured: 1.0,
            loss_tolerance_pct: 0.1,
            reordered: 0,
            jitter_ms_configured: 0.0,
            extra_ms_p1: 0.1,
            extra_ms_median: 0.2,
            extra_ms_p99: 0.4,
        };
        assert!(i.warnings().is_empty());
        assert_eq!(
            Impairment {
                loss_pct_measured: 1.2,
                ..i.clone()
            }
            .warnings()
            .len(),
            1
        );
        assert_eq!(
            Impairment {
                reordered: 2,
                ..i.clone()
            }
            .warnings()
            .len(),
            1
        );
        // jitter 5 ms but no spread
        assert_eq!(
            Impairment {
                jitter_ms_configured: 5.0,
                ..i
            }
            .warnings()
            .len(),
            1
        );
    }
}
