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
use crate::topology::{plan, Topology};

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
        host: &str,
        addr: SocketAddr,
        sink: Option<Arc<AtomicU64>>,
    ) -> Result<ProbeListener> {
        let l = tb
            .ns(host)
            .run_in(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding probe listener {addr} in {host}"))?;
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
fn connect_times(tb: &Testbed, from: &str, to: SocketAddr, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        crate::host::check_stop()?;
        let t = tb.ns(from).run_in(move || -> std::io::Result<f64> {
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

fn rtt_of(tb: &Testbed, a: &str, b: &str, configured: f64, n: usize) -> Result<LinkRtt> {
    let to = SocketAddr::new(plan::host_addr(b).into(), PROBE_PORT);
    let xs = connect_times(tb, a, to, n).with_context(|| format!("probing RTT {a} -> {b}"))?;
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
fn throughput(tb: &Testbed, a: &str, b: &str, dur: Duration) -> Result<f64> {
    let baddr: Ipv4Addr = plan::host_addr(b);
    let to = SocketAddr::new(baddr.into(), SINK_PORT);
    let counter = Arc::new(AtomicU64::new(0));
    let _sink = ProbeListener::start(tb, b, to, Some(counter.clone()))?;
    let stream = tb
        .ns(a)
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
    for h in crate::topology::HOSTS {
        let addr = SocketAddr::new(plan::host_addr(h).into(), PROBE_PORT);
        listeners.push(ProbeListener::start(tb, h, addr, None)?);
    }
    let mut links = Vec::new();
    let mut warnings = Vec::new();
    for l in &topo.links {
        let r = rtt_of(tb, l.a, l.b, l.rtt_ms, probes)?;
        if r.rtt_err_ms_max > RTT_TOLERANCE_MS {
            warnings.push(format!(
                "link {}-{}: RTT error up to {:.2} ms (median measured {:.2} ms vs {:.2} ms configured; goal ≤ {RTT_TOLERANCE_MS} ms)",
                l.a, l.b, r.rtt_err_ms_max, r.rtt_ms_measured, l.rtt_ms
            ));
        }
        links.push(r);
    }
    let e2e = rtt_of(tb, "client", "server", topo.rtt_ms(), probes)?;
    if e2e.rtt_err_ms_max > 3.0 * RTT_TOLERANCE_MS {
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
    let mbit = throughput(tb, l.a, l.b, bulk)?;
    if mbit < THROUGHPUT_TOLERANCE * l.mbit {
        warnings.push(format!(
            "link {}-{}: bulk TCP throughput {mbit:.1} Mbit/s, below {:.0}% of the configured {} Mbit/s",
            l.a,
            l.b,
            THROUGHPUT_TOLERANCE * 100.0,
            l.mbit
        ));
    }
    if mbit > 1.02 * l.mbit {
        warnings.push(format!(
            "link {}-{}: bulk TCP throughput {mbit:.1} Mbit/s exceeds the configured {} Mbit/s: the rate limit is not working",
            l.a, l.b, l.mbit
        ));
    }
    Ok(EmulationCheck {
        kind: kind.to_string(),
        links,
        end_to_end: e2e,
        throughput_link: format!("{}-{}", l.a, l.b),
        throughput_mbit: mbit,
        throughput_mbit_configured: l.mbit,
        warnings,
    })
}
