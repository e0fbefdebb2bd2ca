//! The accepting relay's bound on the receive windows of the server
//! connections its lane streams open (`[[peer]] bound_server_windows`; the
//! arithmetic is `splitway_core::mux::window`).
//!
//! Each stream's server socket gets `TCP_WINDOW_CLAMP` = its share of the
//! peer's budget (2 × the rate the lanes forward to that peer × the server
//! path's minimum RTT), split among the peer's streams that are moving
//! bytes (from their first byte read until the server's FIN). The clamp
//! is set before every read (the window update a read sends uses it) and
//! again after. The kernel's receive-buffer autotuning raises the clamp
//! whenever it grows the buffer, inside a read, and a window advertised
//! meanwhile is not taken back; so the buffer is locked at the first read
//! (`SO_RCVBUFFORCE` at twice the lone stream's budget, 128 KiB at least),
//! which stops autotuning for that socket.
//!
//! The RTT is the smallest `tcpi_min_rtt` seen toward the server's
//! address in the last [`RTT_KEEP`]: a connection opened while the queue
//! is long measures the queue in its handshake, and a budget that grows
//! with the queue does not bound it.
//!
//! With `lane_age_weight` > 1 the budget is split by age as the lane
//! scheduler's turns are (`aged_server_window`): the oldest moving stream
//! gets `w` shares, the youngest one, so the server link hands the lanes
//! the oldest downloads' bytes first instead of evening them out. A
//! stream's first [`AGE_AFTER`] bytes get at least the equal share, so a
//! burst of small answers is not slowed by the weighting.
//!
//! Not bounded: the window of the connection's SYN (up to 64 KiB, sent
//! before any read; a clamp set before `connect` small enough to lower it
//! would also fix the window scale for the connection's life, from the
//! clamp, and cap a later lone stream at 64 KiB per round trip).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use splitway_core::config::Peer;
use splitway_core::mux::pace::peer_rate;
use splitway_core::mux::window::{aged_server_window, server_window};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::sys::sockopt;

/// How long a server address's smallest RTT is trusted before a new
/// sample replaces it (routes change).
pub const RTT_KEEP: Duration = Duration::from_secs(10);
/// How often a stream reads its socket's `tcpi_min_rtt` again.
const RTT_EVERY: Duration = Duration::from_millis(100);
/// Server addresses remembered at most (beyond: forgotten all at once).
const MAX_ADDRS: usize = 4096;
/// The locked receive buffer's least size (`SO_RCVBUF`'s value; the
/// kernel doubles it).
const MIN_RCVBUF: usize = 128 * 1024;
/// Under age weighting a stream keeps at least the equal share until its
/// server has sent this much (the lane scheduler's first bytes, which go
/// first there too): a burst of small answers gets them as fast as
/// without the weighting.
pub const AGE_AFTER: u64 = 16 * 1024;

/// The relay's bounded server windows: a budget per peer, the smallest
/// RTT per server address.
#[derive(Default)]
pub struct ServerWindows {
    groups: Mutex<HashMap<String, Arc<WindowGroup>>>,
    rtts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// One peer's budget and the streams sharing it.
pub struct WindowGroup {
    /// Bytes/s the lanes forward to the peer.
    rate: u64,
    moving: AtomicUsize,
    /// The peer's `lane_age_weight`: with more than 1 the budget is split
    /// by age (`aged_server_window`), and `order` holds the opening numbers
    /// of the streams moving bytes.
    age_weight: u32,
    order: Mutex<BTreeSet<u64>>,
    opened: AtomicU64,
}

impl WindowGroup {
    fn new(rate: u64, age_weight: u32) -> Arc<WindowGroup> {
        Arc::new(WindowGroup {
            rate,
            moving: AtomicUsize::new(0),
            age_weight,
            order: Mutex::new(BTreeSet::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// Stream `seq` starts (`true`) or stops moving bytes: kept in the
    /// age order only when the budget is split by age.
    fn ordered(&self, seq: u64, moving: bool) {
        if self.age_weight <= 1 {
            return;
        }
        let mut o = self.order.lock().unwrap_or_else(|p| p.into_inner());
        if moving {
            o.insert(seq);
        } else {
            o.remove(&seq);
        }
    }

    /// Streams moving bytes now.
    pub fn moving(&self) -> usize {
        self.moving.load(Ordering::Relaxed)
    }
}

impl ServerWindows {
    /// The window bound for one stream of a lane from `peer` to a server
    /// at `dst`, if the peer asks for it. The rate is what the lanes
    /// forward: the paced rate with `lane_pacing`, else the peer's
    /// configured `bandwidth_mbit`.
    pub fn stream(self: &Arc<Self>, peer: &Peer, dst: IpAddr) -> Option<StreamWindow> {
        if !peer.bound_server_windows {
            return None;
        }
        let rate = if peer.lane_pacing {
            peer_rate(peer.bandwidth_mbit)
        } else {
            let r = peer.bandwidth_mbit * 125_000.0;
            if r.is_finite() && r >= 1.0 {
                r as u64
            } else {
                1
            }
        };
        let group = {
            let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            let w = peer.lane_age_weight;
            let e = g
                .entry(peer.name.clone())
                .or_insert_with(|| WindowGroup::new(rate, w));
            if e.rate != rate || e.age_weight != w {
                *e = WindowGroup::new(rate, w);
            }
            e.clone()
        };
        let seq = group.opened.fetch_add(1, Ordering::Relaxed);
        Some(StreamWindow {
            all: self.clone(),
            group,
            dst,
            rtt_us: 0,
            rtt_at: None,
            moving: false,
            seq,
            read: 0,
        })
    }

    /// The smallest RTT toward `dst` with `sample` (0: none) taken in.
    fn min_rtt(&self, dst: IpAddr, sample: u32) -> u32 {
        let now = Instant::now();
        let mut m = self.rtts.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_ADDRS && !m.contains_key(&dst) {
            m.clear();
        }
        let e = m.entry(dst).or_insert((sample, now));
        if sample != 0 && (e.0 == 0 || sample <= e.0 || now - e.1 > RTT_KEEP) {
            *e = (sample, now);
        }
        e.0
    }
}

/// One stream's server connection under its peer's budget.
pub struct StreamWindow {
    all: Arc<ServerWindows>,
    group: Arc<WindowGroup>,
    dst: IpAddr,
    rtt_us: u32,
    rtt_at: Option<Instant>,
    moving: bool,
    /// Opening order within the group (age weighting).
    seq: u64,
    /// Bytes read from the server so far.
    read: u64,
}

impl StreamWindow {
    /// The clamp this stream's socket gets now (bytes).
    pub fn window(&self) -> u32 {
        let g = &self.group;
        if g.age_weight <= 1 {
            return server_window(g.rate, self.rtt_us, g.moving().max(1));
        }
        let order = g.order.lock().unwrap_or_else(|p| p.into_inner());
        // Not moving yet: counted as the youngest of one more.
        let moving = order.len() + usize::from(!self.moving);
        let newer = order.range(self.seq + 1..).count();
        let aged = aged_server_window(g.rate, self.rtt_us, moving, newer, g.age_weight);
        if self.read < AGE_AFTER {
            aged.max(server_window(g.rate, self.rtt_us, moving))
        } else {
            aged
        }
    }

    /// Before a read of the server socket `s`: refresh the RTT now and
    /// then, set the clamp.
    pub fn before_read(&mut self, s: &TcpStream) {
        let first = self.rtt_at.is_none();
        if self.rtt_at.is_none_or(|t| t.elapsed() >= RTT_EVERY) {
            let sample = sockopt::tcp_info(s).map(|i| i.min_rtt_us).unwrap_or(0);
            self.rtt_us = self.all.min_rtt(self.dst, sample);
            self.rtt_at = Some(Instant::now());
        }
        if first {
            // A fixed buffer twice the lone stream's budget: autotuning
            // would grow it and raise the clamp with it, between our calls.
            let lone = server_window(self.group.rate, self.rtt_us, 1) as usize;
            let _ = sockopt::set_rcvbuf_force(s, (2 * lone).max(MIN_RCVBUF));
        }
        let _ = sockopt::set_window_clamp(s, self.window());
    }

    /// After a read of `n` bytes (0: the server's FIN): the stream moves
    /// from its first byte until the FIN; the clamp is set again.
    pub fn after_read(&mut self, s: &TcpStream, n: usize) {
        if n == 0 {
            self.stop();
            return;
        }
        self.read += n as u64;
        if !self.moving {
            self.moving = true;
            self.group.moving.fetch_add(1, Ordering::Relaxed);
            self.group.ordered(self.seq, true);
        }
        let _ = sockopt::set_window_clamp(s, self.window());
    }

    fn stop(&mut self) {
        if self.moving {
            self.moving = false;
            self.group.moving.fetch_sub(1, Ordering::Relaxed);
            self.group.ordered(self.seq, false);
        }
    }
}

impl Drop for StreamWindow {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_of(group: &Arc<WindowGroup>, seq: u64) -> StreamWindow {
        StreamWindow {
            all: Arc::new(ServerWindows::default()),
            group: group.clone(),
            dst: [10, 0, 0, 1].into(),
            rtt_us: 26_000,
            rtt_at: None,
            moving: false,
            seq,
            read: AGE_AFTER,
        }
    }

    fn start(w: &mut StreamWindow) {
        w.moving = true;
        w.group.moving.fetch_add(1, Ordering::Relaxed);
        w.group.ordered(w.seq, true);
    }

    #[test]
    fn aged_groups_give_older_streams_larger_windows_and_forget_stopped_ones() {
        let g = WindowGroup::new(11_500_000, 8);
        let mut ws: Vec<StreamWindow> = (0..3).map(|i| window_of(&g, i)).collect();
        for w in &mut ws {
            start(w);
        }
        let got: Vec<u32> = ws.iter().map(StreamWindow::window).collect();
        // 598 kB in 3 × 9 / 2 = 13.5 shares: 8, 4.5 and 1.
        assert_eq!(got, [354_370, 199_333, 44_296]);
        // A stream not moving yet counts as the youngest of one more.
        assert_eq!(window_of(&g, 3).window(), 598_000 * 2 / (4 * 9));
        // The oldest ends: the next in age takes the top share.
        ws.remove(0);
        assert_eq!(ws[0].window(), 598_000 * 2 * 8 / (2 * 9));
        assert_eq!(g.order.lock().unwrap().len(), 2);
        // A new stream's first bytes: at least the equal share (598 kB / 3
        // with the two still moving), then its share by age (one of 13.5).
        let mut fresh = window_of(&g, 4);
        fresh.read = 0;
        assert_eq!(fresh.window(), 199_333);
        fresh.read = AGE_AFTER;
        assert_eq!(fresh.window(), 44_296);
        // Unweighted groups keep no order.
        let flat = WindowGroup::new(11_500_000, 1);
        let mut f = window_of(&flat, 0);
        f.moving = true;
        f.group.moving.fetch_add(1, Ordering::Relaxed);
        f.group.ordered(0, true);
        assert!(flat.order.lock().unwrap().is_empty());
        assert_eq!(f.window(), 598_000);
    }

    #[test]
    fn the_smallest_recent_rtt_wins() {
        let w = ServerWindows::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(w.min_rtt(a, 0), 0);
        assert_eq!(w.min_rtt(a, 30_000), 30_000);
        assert_eq!(w.min_rtt(a, 26_000), 26_000);
        // A handshake that waited in the queue does not raise it.
        assert_eq!(w.min_rtt(a, 126_000), 26_000);
        assert_eq!(w.min_rtt(a, 0), 26_000);
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(w.min_rtt(b, 5_000), 5_000);
    }
}
