//! The emulator loop of one link: clock, sleep, receive, schedule, verdict.
//!
//! Owns the thread body that runs inside the link namespace: it receives
//! packet metadata from the two queues (one per direction), asks each
//! direction's [`Schedule`] when the packet may leave, drops what the
//! schedule drops at once, and issues one batch `accept` verdict per
//! direction for everything that is due. Between events it sleeps in
//! `ppoll` with a nanosecond timeout until the earliest due release (or a
//! packet, or the stop signal), at real-time priority and with 1 ns timer
//! slack where the system allows. It also owns the counters that
//! [`crate::DelayLine::stats`] reads.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::nfq::{self, NfqSocket, PacketMeta};
use crate::schedule::{Decision, Impairments, Schedule};

/// Upper bounds (exclusive, ns) of the lateness histogram buckets; the last
/// bucket takes everything above.
pub(crate) const LATE_BUCKETS_NS: [u64; 7] = [
    20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_000_000,
];

/// Counters of one direction, written by the loop, read by `stats()`.
#[derive(Default)]
pub(crate) struct DirCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub released: AtomicU64,
    pub drops: AtomicU64,
    pub lost: AtomicU64,
    pub enobufs: AtomicU64,
    pub netlink_errors: AtomicU64,
    pub unstamped: AtomicU64,
    pub late_sum_ns: AtomicU64,
    pub late_max_ns: AtomicU64,
    pub late_hist: [AtomicU64; LATE_BUCKETS_NS.len() + 1],
    pub backlog_bytes: AtomicU64,
    pub held_packets: AtomicU64,
}

impl DirCounters {
    /// Zero the cumulative counters (not the gauges).
    pub(crate) fn reset(&self) {
        for a in [
            &self.packets,
            &self.bytes,
            &self.released,
            &self.drops,
            &self.lost,
            &self.enobufs,
            &self.netlink_errors,
            &self.unstamped,
            &self.late_sum_ns,
            &self.late_max_ns,
        ] {
            a.store(0, Relaxed);
        }
        for h in &self.late_hist {
            h.store(0, Relaxed);
        }
    }

    fn record_lateness(&self, ns: u64) {
        self.late_sum_ns.fetch_add(ns, Relaxed);
        self.late_max_ns.fetch_max(ns, Relaxed);
        let b = LATE_BUCKETS_NS
            .iter()
            .position(|&u| ns < u)
            .unwrap_or(LATE_BUCKETS_NS.len());
        self.late_hist[b].fetch_add(1, Relaxed);
    }
}

/// State shared between the loop and its handle.
#[derive(Default)]
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub running: AtomicBool,
    pub realtime: AtomicBool,
    /// Kernel thread id of the loop (0 until it runs).
    pub tid: std::sync::atomic::AtomicI32,
    /// The namespace's `/proc/net/netfilter/nfnetlink_queue`.
    pub proc_queue: std::sync::OnceLock<std::fs::File>,
    pub dirs: [DirCounters; 2],
    /// Impairments to apply, per direction (set by `DelayLine::set_impairments`),
    /// and a generation bumped after each change, so the loop picks them up.
    pub loss_ppb: [std::sync::atomic::AtomicU32; 2],
    pub jitter_ns: [AtomicU64; 2],
    pub impair_gen: AtomicU64,
}

/// One direction: its queue socket, its schedule, and the packets held.
pub(crate) struct Direction {
    pub sock: NfqSocket,
    pub sched: Schedule,
    /// (release time ns, packet id), in arrival order = release order.
    pub held: VecDeque<(u64, u32)>,
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_REALTIME` in nanoseconds.
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Arrival time on the monotonic clock: the kernel's receive stamp when it
/// is plausible (not in the future, not more than a second old), else
/// `now`.
fn arrival_ns(now: u64, now_real: u64, stamp: Option<u64>) -> u64 {
    match stamp {
        Some(t) if t <= now_real && now_real - t < 1_000_000_000 => now - (now_real - t),
        _ => now,
    }
}

/// Minimal timer slack and `SCHED_FIFO` at `prio` for the calling thread.
/// Returns whether real-time scheduling was granted.
pub(crate) fn make_realtime(prio: Option<i32>) -> bool {
    // SAFETY: prctl/sched_setscheduler on the calling thread with valid
    // arguments; failures are reported through the return values.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        match prio {
            Some(p) => {
                let param = libc::sched_param { sched_priority: p };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0
            }
            None => false,
        }
    }
}

const TX_FLUSH: usize = 32 * 1024;

fn flush(sock: &NfqSocket, tx: &mut Vec<u8>, c: &DirCounters) {
    if !tx.is_empty() {
        if sock.send(tx).is_err() {
            c.netlink_errors.fetch_add(1, Relaxed);
        }
        tx.clear();
    }
}

/// Run until `shared.stop` is set and `wake` is signalled.
pub(crate) fn run(mut dirs: [Direction; 2], shared: Arc<Shared>, wake: OwnedFd) {
    // SAFETY: gettid has no preconditions.
    shared.tid.store(unsafe { libc::gettid() }, Relaxed);
    shared.running.store(true, Relaxed);
    let mut txs: [Vec<u8>; 2] = [
        Vec::with_capacity(TX_FLUSH * 2),
        Vec::with_capacity(TX_FLUSH * 2),
    ];
    let mut rx: Vec<PacketMeta> = Vec::with_capacity(1024);
    // Consecutive failed receives: a socket that keeps failing would make
    // ppoll return at once forever, and a real-time thread spinning on it
    // would starve a CPU. Give up instead (the link then fails closed).
    let mut hard_errors = 0u32;
    let mut impair_gen = shared.impair_gen.load(Relaxed);
    while !shared.stop.load(Relaxed) {
        let g = shared.impair_gen.load(std::sync::atomic::Ordering::Acquire);
        if g != impair_gen {
            impair_gen = g;
            for (k, d) in dirs.iter_mut().enumerate() {
                d.sched.set_impairments(Impairments {
                    loss_ppb: shared.loss_ppb[k].load(Relaxed),
                    jitter_ns: shared.jitter_ns[k].load(Relaxed),
                });
            }
        }
        // Release everything that is due: one batch verdict per direction.
        let now = now_ns();
        for (k, d) in dirs.iter_mut().enumerate() {
            let c = &shared.dirs[k];
            let mut last = None;
            let mut n = 0u64;
            while let Some(&(at, id)) = d.held.front() {
                if at > now {
                    break;
                }
                c.record_lateness(now - at);
                last = Some(id);
                n += 1;
                d.held.pop_front();
            }
            if let Some(id) = last {
                nfq::push_verdict(&mut txs[k], d.sock.queue(), id, nfq::VERDICT_ACCEPT, true);
                c.released.fetch_add(n, Relaxed);
                c.held_packets.store(d.held.len() as u64, Relaxed);
            }
            flush(&d.sock, &mut txs[k], c);
        }

        // Sleep until the next release, a packet, or the stop signal.
        let next = dirs
            .iter()
            .filter_map(|d| d.held.front().map(|h| h.0))
            .min();
        let mut pfds = [
            libc::pollfd {
                fd: dirs[0].sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: dirs[1].sock.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts;
        let tsp = match next {
            Some(at) => {
                let wait = at.saturating_sub(now_ns());
                ts = libc::timespec {
                    tv_sec: (wait / 1_000_000_000) as libc::time_t,
                    tv_nsec: (wait % 1_000_000_000) as libc::c_long,
                };
                &ts as *const libc::timespec
            }
            None => std::ptr::null(),
        };
        // SAFETY: pfds is a valid array of 3 pollfds; tsp is null or points
        // to ts, which lives until the call returns.
        let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), 3, tsp, std::ptr::null()) };
        if r <= 0 {
            continue; // timeout (a release is due) or EINTR
        }
        if pfds[2].revents != 0 {
            // Stop or new impairments (both checked at the top): drain the
            // eventfd so it does not stay readable.
            let mut v: u64 = 0;
            // SAFETY: reading 8 bytes into a live u64 from our non-blocking eventfd.
            unsafe { libc::read(wake.as_raw_fd(), &mut v as *mut u64 as *mut libc::c_void, 8) };
            continue;
        }
        for (k, d) in dirs.iter_mut().enumerate() {
            if pfds[k].revents == 0 {
                continue;
            }
            let c = &shared.dirs[k];
            rx.clear();
            let out = d.sock.recv_all(&mut rx);
            if out.enobufs {
                c.enobufs.fetch_add(1, Relaxed);
            }
            if out.hard_error.is_some() {
                c.netlink_errors.fetch_add(1, Relaxed);
                hard_errors += 1;
                if hard_errors > 1000 {
                    shared.stop.store(true, Relaxed);
                }
            } else {
                hard_errors = 0;
            }
            if out.errors > 0 {
                c.netlink_errors.fetch_add(u64::from(out.errors), Relaxed);
            }
            let mut bytes = 0u64;
            let (now, now_real) = (now_ns(), realtime_ns());
            let unstamped = rx.iter().filter(|p| p.rx_realtime_ns.is_none()).count();
            if unstamped > 0 {
                c.unstamped.fetch_add(unstamped as u64, Relaxed);
            }
            for p in &rx {
                bytes += u64::from(p.len);
                match d
                    .sched
                    .arrive(arrival_ns(now, now_real, p.rx_realtime_ns), p.len)
                {
                    Decision::Release { at_ns } => d.held.push_back((at_ns, p.id)),
                    dec @ (Decision::Drop | Decision::Lose) => {
                        if dec == Decision::Drop {
                            c.drops.fetch_add(1, Relaxed);
                        } else {
                            c.lost.fetch_add(1, Relaxed);
                        }
                        // Dropped at once: the packet leaves the kernel
                        // queue before any later batch verdict covers its id.
                        nfq::push_verdict(
                            &mut txs[k],
                            d.sock.queue(),
                            p.id,
                            nfq::VERDICT_DROP,
                            false,
                        );
                        if txs[k].len() >= TX_FLUSH {
                            flush(&d.sock, &mut txs[k], c);
                        }
                    }
                }
            }
            flush(&d.sock, &mut txs[k], c);
            c.packets.fetch_add(rx.len() as u64, Relaxed);
            c.bytes.fetch_add(bytes, Relaxed);
            c.backlog_bytes.store(d.sched.backlog_bytes(), Relaxed);
            c.held_packets.store(d.held.len() as u64, Relaxed);
        }
    }
    shared.running.store(false, Relaxed);
}
