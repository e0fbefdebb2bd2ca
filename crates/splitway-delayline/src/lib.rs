//! splitway's user-space WAN emulator: one emulated link per [`DelayLine`].
//!
//! Owns the public API the lab uses to turn a router namespace into a WAN
//! link with a given round-trip time, rate and queue. The namespace forwards
//! between two interfaces; every forwarded packet is queued to NFQUEUE (one
//! queue number per direction, see [`rules`]), a thread inside the namespace
//! receives only its metadata ([`nfq`]), computes when it may leave
//! ([`schedule`]: FIFO serialization at the link rate, drop-tail queue,
//! then half the RTT of propagation delay) and accepts it at that time with
//! a batch verdict ([`engine`]). Both directions have their own rate and
//! queue (full duplex). The link fails closed: if the emulator dies, the
//! kernel drops the link's packets instead of passing them undelayed.
//!
//! ```no_run
//! use std::time::Duration;
//! use splitway_delayline::{DelayLine, LinkSpec};
//! let spec = LinkSpec::with_bdp_queue(Duration::from_micros(32_700), 100_000_000);
//! let link = DelayLine::start("lab-link1", "l1a", "l1b", 10, spec)?;
//! // ... run traffic ...
//! println!("{:?}", link.stats());
//! drop(link); // stops the thread and removes the rules
//! # Ok::<(), splitway_delayline::DelayLineError>(())
//! ```

pub mod engine;
pub mod nfq;
mod rules;
pub mod schedule;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use engine::{Direction, Shared, LATE_BUCKETS_NS};
use nfq::NfqSocket;
pub use schedule::Impairments;
use schedule::Schedule;

/// Errors from starting a delay line.
#[derive(Debug, thiserror::Error)]
pub enum DelayLineError {
    #[error("invalid link spec: {0}")]
    InvalidSpec(String),
    #[error("queue numbers {0} and {0}+1 do not fit in 16 bits")]
    QueueRange(u16),
    #[error("interface {ifname} not found in namespace {netns}")]
    NoInterface { netns: String, ifname: String },
    #[error("entering namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("NFQUEUE setup in {netns}: {source}")]
    Netlink {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("emulator thread: {0}")]
    Thread(String),
}

/// One link: round-trip time, rate, queue, random loss and jitter, the same
/// in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkSpec {
    /// Round-trip propagation delay added by the link (half each way; an
    /// odd nanosecond goes to the b→a direction). Serialization and queueing
    /// delay come on top.
    pub rtt: Duration,
    /// Rate of each direction in bits per second of IP packets (headers
    /// included, no link-layer overhead). 0 = unlimited (pure delay).
    pub rate_bps: u64,
    /// Drop-tail limit per direction: bytes accepted but not yet serialized.
    pub queue_limit_bytes: usize,
    /// Random loss of each direction, parts per billion (see
    /// [`schedule::Impairments`]; [`LinkSpec::loss_pct`] to set it in per cent).
    pub loss_ppb: u32,
    /// Jitter of each direction: every packet's one-way delay gains a
    /// uniform random extra in `[0, jitter]`, order kept.
    pub jitter: Duration,
}

impl LinkSpec {
    /// A link whose queue holds one bandwidth-delay product (rate × RTT),
    /// but at least 64 KiB.
    pub fn with_bdp_queue(rtt: Duration, rate_bps: u64) -> LinkSpec {
        let bdp = u128::from(rate_bps) * rtt.as_nanos() / 8 / 1_000_000_000;
        LinkSpec {
            rtt,
            rate_bps,
            queue_limit_bytes: usize::try_from(bdp).unwrap_or(usize::MAX).max(64 * 1024),
            ..LinkSpec::default()
        }
    }

    /// Set random loss in per cent (0–100) of each direction.
    pub fn loss_pct(mut self, pct: f64) -> LinkSpec {
        self.loss_ppb = Impairments::from_pct(pct, 0).loss_ppb;
        self
    }

    fn impairments(&self) -> Impairments {
        Impairments {
            loss_ppb: self.loss_ppb,
            jitter_ns: u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn one_way_ns(&self) -> Result<(u64, u64), DelayLineError> {
        let rtt = u64::try_from(self.rtt.as_nanos())
            .ok()
            .filter(|&n| n <= 3_600_000_000_000)
            .ok_or_else(|| DelayLineError::InvalidSpec(format!("rtt {:?} too large", self.rtt)))?;
        Ok((rtt / 2, rtt - rtt / 2))
    }
}

/// Tuning knobs beyond the link itself; `Default` is what the lab wants.
#[derive(Debug, Clone)]
pub struct Options {
    /// `SCHED_FIFO` priority of the emulator thread; `None` keeps the
    /// normal scheduler. Failure to get it is not an error (see
    /// [`DelayLineStats::realtime`]).
    pub rt_priority: Option<i32>,
    /// Kernel queue length per direction (packets held in NFQUEUE);
    /// `None` sizes it from the spec (queue limit + one-way BDP, in
    /// 64-byte packets, at least 8192).
    pub queue_maxlen: Option<u32>,
    /// Netlink receive buffer per direction, bytes (`SO_RCVBUFFORCE`).
    pub rcvbuf_bytes: usize,
    /// Queue IPv6 too (otherwise forwarded IPv6 passes undelayed).
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rt_priority: Some(50),
            queue_maxlen: None,
            rcvbuf_bytes: 16 << 20,
            ipv6: true,
        }
    }
}

/// Counters of one direction since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DirectionStats {
    /// Packets and bytes (IP length) that arrived at the queue.
    pub packets: u64,
    pub bytes: u64,
    /// Packets accepted at their scheduled time.
    pub released: u64,
    /// Packets tail-dropped because the queue was full.
    pub drops: u64,
    /// Packets lost at random (the link's loss rate).
    pub lost: u64,
    /// Times the netlink receive buffer overflowed (packet messages lost;
    /// those packets are released with the next batch, unscheduled).
    pub enobufs: u64,
    /// Netlink errors (failed sends, error replies to verdicts).
    pub netlink_errors: u64,
    /// Kernel counters of the queue: packets dropped because the kernel
    /// queue was full (`queue_maxlen`), and packet messages that could not
    /// be delivered to the emulator's socket (those packets stay queued and
    /// go out with a later batch verdict).
    pub kernel_queue_dropped: u64,
    pub kernel_user_dropped: u64,
    /// Packets without a kernel receive stamp (their arrival time is when
    /// the emulator read them, so wake-up latency adds to their delay).
    pub unstamped: u64,
    /// How late verdicts were issued versus the scheduled release time.
    pub max_lateness: Duration,
    pub mean_lateness: Duration,
    /// Lateness histogram: `(upper bound, count)`; the last bound is
    /// `Duration::MAX`.
    pub lateness_histogram: Vec<(Duration, u64)>,
    /// Bytes waiting for serialization, and packets held, at the last event.
    pub backlog_bytes: u64,
    pub held_packets: u64,
}

/// Counters of a link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DelayLineStats {
    /// Packets that entered on `if_a` (going to `if_b`), and back.
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
    /// The emulator thread got `SCHED_FIFO`.
    pub realtime: bool,
    /// The emulator thread is running (false after it died: the link then
    /// drops everything).
    pub running: bool,
}

/// A running emulated link. Dropping it removes its rules and stops its
/// thread.
pub struct DelayLine {
    netns: String,
    queue_base: u16,
    spec: LinkSpec,
    shared: Arc<Shared>,
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
    rules: Option<rules::Rules>,
}

impl std::fmt::Debug for DelayLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLine")
            .field("netns", &self.netns)
            .field("queue_base", &self.queue_base)
            .field("spec", &self.spec)
            .finish()
    }
}

fn eventfd() -> Result<OwnedFd, DelayLineError> {
    // SAFETY: plain eventfd(2) call; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(DelayLineError::Thread(format!(
            "eventfd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn enter_netns(netns: &str) -> Result<(), DelayLineError> {
    let err = |source| DelayLineError::Netns {
        netns: netns.to_string(),
        source,
    };
    let f = File::open(format!("/run/netns/{netns}")).map_err(err)?;
    // SAFETY: setns on a namespace fd we hold open, for this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl DelayLine {
    /// Start emulating `spec` between `if_a` and `if_b` of the router
    /// namespace `netns` (as in `ip netns`), using NFQUEUE numbers
    /// `queue_base` (a→b) and `queue_base + 1` (b→a), with default
    /// [`Options`].
    pub fn start(
        netns: &str,
        if_a: &str,
        if_b: &str,
        queue_base: u16,
        spec: LinkSpec,
    ) -> Result<DelayLine, DelayLineError> {
        Self::start_with(netns, if_a, if_b, queue_base, spec, Options::default())
    }

    /// [`DelayLine::start`] with explicit [`Options`].
    pub fn start_with(
        netns: &str,
        if_a: &str,
        if_b: &str,
        queue_base: u16,
        spec: LinkSpec,
        opts: Options,
    ) -> Result<DelayLine, DelayLineError> {
        let (d_ab, d_ba) = spec.one_way_ns()?;
        if spec.loss_ppb > schedule::PPB {
            return Err(DelayLineError::InvalidSpec(format!(
                "loss {} ppb above 100 %",
                spec.loss_ppb
            )));
        }
        let impair = spec.impairments();
        let seed = engine::now_ns() ^ u64::from(queue_base) << 32;
        let q_b = queue_base
            .checked_add(1)
            .ok_or(DelayLineError::QueueRange(queue_base))?;
        if !std::path::Path::new(&format!("/run/netns/{netns}")).exists() {
            return Err(DelayLineError::Netns {
                netns: netns.to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        rules::check_interface(netns, if_a)?;
        rules::check_interface(netns, if_b)?;
        let limit = u64::try_from(spec.queue_limit_bytes).unwrap_or(u64::MAX);
        let maxlen = opts.queue_maxlen.unwrap_or_else(|| {
            let bdp = u128::from(spec.rate_bps) * u128::from(d_ba) / 8 / 1_000_000_000;
            let pkts = (u128::from(limit) + bdp) / 64 + 1024;
            u32::try_from(pkts.clamp(8192, 1 << 20)).unwrap_or(1 << 20)
        });

        let shared = Arc::new(Shared::default());
        for k in 0..2 {
            shared.loss_ppb[k].store(impair.loss_ppb, Relaxed);
            shared.jitter_ns[k].store(impair.jitter_ns, Relaxed);
        }
        let wake = eventfd()?;
        let wake_thread = wake
            .try_clone()
            .map_err(|e| DelayLineError::Thread(format!("dup eventfd: {e}")))?;
        let (tx, rx) = mpsc::channel::<Result<(), DelayLineError>>();
        let ns = netns.to_string();
        let sh = shared.clone();
        let rcvbuf = opts.rcvbuf_bytes;
        let prio = opts.rt_priority;
        let thread = std::thread::Builder::new()
            .name(format!("delayline-{queue_base}"))
            .spawn(move || {
                let setup = (|| {
                    enter_netns(&ns)?;
                    let nl = |source| DelayLineError::Netlink {
                        netns: ns.clone(),
                        source,
                    };
                    if let Some(f) = nfq::open_proc_queue() {
                        let _ = sh.proc_queue.set(f);
                    }
                    let a = NfqSocket::open(queue_base, maxlen, rcvbuf).map_err(nl)?;
                    let b = NfqSocket::open(q_b, maxlen, rcvbuf).map_err(nl)?;
                    Ok([
                        Direction {
                            sock: a,
                            sched: Schedule::new(spec.rate_bps, d_ab, limit)
                                .with_impairments(impair, seed),
                            held: Default::default(),
                        },
                        Direction {
                            sock: b,
                            sched: Schedule::new(spec.rate_bps, d_ba, limit)
                                .with_impairments(impair, seed.rotate_left(17) ^ 1),
                            held: Default::default(),
                        },
                    ])
                })();
                match setup {
                    Ok(dirs) => {
                        sh.realtime.store(engine::make_realtime(prio), Relaxed);
                        let _ = tx.send(Ok(()));
                        engine::run(dirs, sh, wake_thread);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| DelayLineError::Thread(format!("spawn: {e}")))?;
        let mut line = DelayLine {
            netns: netns.to_string(),
            queue_base,
            spec,
            shared,
            wake,
            thread: Some(thread),
            rules: None,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(DelayLineError::Thread("did not start".into())),
        }
        // Queues are bound before the rules exist, so no packet meets a
        // queue without a listener (which would drop it).
        line.rules = Some(rules::Rules::install(
            netns, if_a, if_b, queue_base, opts.ipv6,
        )?);
        Ok(line)
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn spec(&self) -> LinkSpec {
        self.spec
    }

    /// The two queue numbers: (a→b, b→a).
    pub fn queues(&self) -> (u16, u16) {
        (self.queue_base, self.queue_base + 1)
    }

    /// Change random loss and jitter while the link runs, per direction
    /// (`a_to_b`, `b_to_a`); packets arriving from the next loop turn on
    /// (within microseconds) are subject to them.
    pub fn set_impairments(
        &self,
        a_to_b: Impairments,
        b_to_a: Impairments,
    ) -> Result<(), DelayLineError> {
        if a_to_b.loss_ppb > schedule::PPB || b_to_a.loss_ppb > schedule::PPB {
            return Err(DelayLineError::InvalidSpec("loss above 100 %".into()));
        }
        for (k, i) in [a_to_b, b_to_a].into_iter().enumerate() {
            self.shared.loss_ppb[k].store(i.loss_ppb, Relaxed);
            self.shared.jitter_ns[k].store(i.jitter_ns, Relaxed);
        }
        self.shared
            .impair_gen
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.wake_thread();
        Ok(())
    }

    /// Counters since start.
    pub fn stats(&self) -> DelayLineStats {
        let proc_text = self.shared.proc_queue.get().and_then(nfq::read_proc_queue);
        let dir = |k: usize| {
            let kq = proc_text
                .as_deref()
                .and_then(|t| nfq::parse_proc_queue(t, self.queue_base + k as u16))
                .unwrap_or_default();
            let c = &self.shared.dirs[k];
            let released = c.released.load(Relaxed);
            let sum = c.late_sum_ns.load(Relaxed);
            let mut hist = Vec::with_capacity(LATE_BUCKETS_NS.len() + 1);
            for (i, h) in c.late_hist.iter().enumerate() {
                let bound = LATE_BUCKETS_NS
                    .get(i)
                    .map(|&n| Duration::from_nanos(n))
                    .unwrap_or(Duration::MAX);
                hist.push((bound, h.load(Relaxed)));
            }
            DirectionStats {
                packets: c.packets.load(Relaxed),
                bytes: c.bytes.load(Relaxed),
                released,
                drops: c.drops.load(Relaxed),
                lost: c.lost.load(Relaxed),
                enobufs: c.enobufs.load(Relaxed),
                netlink_errors: c.netlink_errors.load(Relaxed),
                unstamped: c.unstamped.load(Relaxed),
                kernel_queue_dropped: kq.queue_dropped,
                kernel_user_dropped: kq.user_dropped,
                max_lateness: Duration::from_nanos(c.late_max_ns.load(Relaxed)),
                mean_lateness: Duration::from_nanos(sum.checked_div(released).unwrap_or(0)),
                lateness_histogram: hist,
                backlog_bytes: c.backlog_bytes.load(Relaxed),
                held_packets: c.held_packets.load(Relaxed),
            }
        };
        DelayLineStats {
            a_to_b: dir(0),
            b_to_a: dir(1),
            realtime: self.shared.realtime.load(Relaxed),
            running: self.shared.running.load(Relaxed),
        }
    }

    /// Zero the cumulative counters (packets, bytes, drops, errors,
    /// lateness), e.g. between a calibration and a measured run. Counts in
    /// flight at the moment of the reset may land on either side.
    pub fn reset_stats(&self) {
        for d in &self.shared.dirs {
            d.reset();
        }
    }

    /// CPU time the emulator thread has used so far (user + system; the
    /// system part includes forwarding the packets it releases, which runs
    /// in its verdict calls). `None` if the thread is not running.
    pub fn cpu_time(&self) -> Option<Duration> {
        let tid = self.shared.tid.load(Relaxed);
        if tid == 0 || !self.shared.running.load(Relaxed) {
            return None;
        }
        let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// Stop the emulator thread but leave the rules in place, as if the
    /// emulator had died: the link must then drop everything (fail closed).
    /// For tests of that property; `Drop` still removes the rules.
    #[doc(hidden)]
    pub fn kill_emulator_keep_rules(&mut self) {
        self.stop_thread();
    }

    /// Remove the rules and stop the thread (what `Drop` does).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut r) = self.rules.take() {
            r.remove();
        }
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.shared.stop.store(true, Relaxed);
        self.wake_thread();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn wake_thread(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
