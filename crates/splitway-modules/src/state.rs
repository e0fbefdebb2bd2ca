//! What a module may inspect: a snapshot of both legs' TCP state, filled by
//! the relay from `TCP_INFO` (ModNet's inspection), plus splitway's own queue
//! and the encoder's share of wall time ([`BusyMeter`]).

use std::time::{Duration, Instant};

/// One socket's `TCP_INFO`, the fields modules use. Zero means unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSnapshot {
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Congestion window in bytes (`tcpi_snd_cwnd` × `tcpi_snd_mss`).
    pub cwnd_bytes: u64,
    /// The kernel's delivery-rate estimate, bytes per second.
    pub delivery_rate: u64,
    /// Bytes written but not yet sent by the kernel (`tcpi_notsent_bytes`).
    pub notsent_bytes: u64,
    /// Bytes sent and not yet acknowledged (`tcpi_unacked` × mss).
    pub unacked_bytes: u64,
    /// Retransmitted segments in total (`tcpi_total_retrans`).
    pub retransmits: u32,
}

/// Both legs of one direction as the encoder sees them when it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegSnapshot {
    /// The socket this direction reads from (the client, or the previous leg).
    pub source: TcpSnapshot,
    /// The relay leg the encoded bytes go to.
    pub sink: TcpSnapshot,
    /// Encoded bytes waiting in splitway's own queue for the sink: they are
    /// not in the kernel yet, so they could still be revoked.
    pub queued_bytes: u64,
    /// Raw bytes read from the source and not yet encoded (this burst
    /// included): input that a module may still encode differently or drop.
    pub pending_bytes: u64,
    /// Share of wall time (per mille) the relay spent encoding this
    /// direction lately; 0: unknown.
    pub encoder_busy_permille: u32,
    /// Which window `encoder_busy_permille` was measured over (it changes
    /// when a new one closes: a reading acted on is not acted on again).
    pub encoder_busy_window: u32,
}

impl LegSnapshot {
    /// The sink is the bottleneck: bytes pile up in the kernel's unsent queue
    /// or in ours (ModNet: the congestion window is smaller than the data in
    /// the socket buffer), or bytes wait while the window is full (the leg
    /// is cwnd-limited: with `TCP_NOTSENT_LOWAT` the unsent queue stays
    /// short, so on a leg with a large window — a deep bottleneck queue,
    /// turbo-start — the waiting bytes alone never reach half of it). A
    /// full window is cwnd-limited also when nothing waits at the instant:
    /// in slow start each write leaves as soon as acknowledgements open the
    /// window, and the bytes queue at the bottleneck instead.
    pub fn sink_backlogged(&self) -> bool {
        let waiting = self.sink.notsent_bytes + self.queued_bytes;
        let cwnd = self.sink.cwnd_bytes;
        let window_full = cwnd > 0 && self.sink.unacked_bytes >= cwnd / 4 * 3;
        window_full || (waiting > 0 && (cwnd == 0 || waiting >= cwnd / 2))
    }

    /// The encoder is the bottleneck (it spends most of the time encoding):
    /// more CPU per byte would slow the flow down.
    pub fn encoder_saturated(&self) -> bool {
        self.encoder_busy_permille >= 800
    }

    /// The encoder has time to spare for a higher level.
    pub fn encoder_has_room(&self) -> bool {
        self.encoder_busy_permille < 500
    }

    /// The sink takes everything at once: no unsent bytes anywhere, room in
    /// the congestion window, and the leg has delivered (its rate is known).
    /// Nothing unsent is not enough: a leg whose window is full is
    /// cwnd-limited even when each write leaves at once (slow start opens
    /// the window as fast as a trickling source fills it, and the bytes wait
    /// in the bottleneck's queue instead of ours), and a new leg's first
    /// window (turbo-start: a whole BDP) takes anything before any of it
    /// has crossed the bottleneck.
    pub fn sink_idle(&self) -> bool {
        let cwnd = self.sink.cwnd_bytes;
        let window_full = cwnd > 0 && self.sink.unacked_bytes >= cwnd / 4 * 3;
        self.sink.notsent_bytes == 0
            && self.queued_bytes == 0
            && !window_full
            && self.sink.delivery_rate > 0
    }
}

/// The encoder's share of wall time, per mille, over windows of at least
/// [`BusyMeter::WINDOW`]. A window closes only after an encoding ends, so it
/// must be long against one wake-up's encoding (a burst of records, tens of
/// milliseconds at a high level on a loaded host): a window not much longer
/// than that closes inside bursts and reads close to 100 % on a leg that
/// waits most of the time.
#[derive(Debug, Clone, Copy)]
pub struct BusyMeter {
    busy: Duration,
    since: Instant,
    permille: u32,
    windows: u32,
}

impl BusyMeter {
    /// The shortest window the share is measured over.
    pub const WINDOW: Duration = Duration::from_millis(100);

    pub fn new(now: Instant) -> Self {
        BusyMeter {
            busy: Duration::ZERO,
            since: now,
            permille: 0,
            windows: 0,
        }
    }

    /// Counts an encoding that ran from `start` to `end`.
    pub fn encoded(&mut self, start: Instant, end: Instant) {
        self.busy += end.saturating_duration_since(start);
        let window = end.saturating_duration_since(self.since);
        if window >= Self::WINDOW {
            self.permille =
                (self.busy.as_micros() * 1000 / window.as_micros().max(1)).min(1000) as u32;
            self.busy = Duration::ZERO;
            self.since = end;
            self.windows = self.windows.wrapping_add(1);
        }
    }

    /// How many windows have closed (the number of the last one).
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// The share of the last full window; 0 before the first.
    pub fn permille(&self) -> u32 {
        self.permille
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(cwnd: u64, unacked: u64, notsent: u64, queued: u64) -> LegSnapshot {
        LegSnapshot {
            sink: TcpSnapshot {
                cwnd_bytes: cwnd,
                unacked_bytes: unacked,
                notsent_bytes: notsent,
                delivery_rate: 2_500_000,
                ..Default::default()
            },
            queued_bytes: queued,
            ..Default::default()
        }
    }

    #[test]
    fn backlogged_when_bytes_wait_behind_a_full_window_or_half_a_window() {
        // a large window, full, and bytes waiting: cwnd-limited
        assert!(leg(1 << 20, 1 << 20, 16 << 10, 0).sink_backlogged());
        // the same window mostly empty: bytes wait only for this write
        assert!(!leg(1 << 20, 100 << 10, 16 << 10, 0).sink_backlogged());
        // half a window waiting (here in our own queue)
        assert!(leg(100 << 10, 0, 0, 60 << 10).sink_backlogged());
        // nothing waits and the window has room: idle, not backlogged
        assert!(!leg(1 << 20, 100 << 10, 0, 0).sink_backlogged());
        assert!(leg(1 << 20, 100 << 10, 0, 0).sink_idle());
        // nothing waits, the window full: cwnd-limited, not idle
        assert!(leg(1 << 20, 1 << 20, 0, 0).sink_backlogged());
        assert!(!leg(1 << 20, 1 << 20, 0, 0).sink_idle());
        // unknown window: any wait counts
        assert!(leg(0, 0, 1, 0).sink_backlogged());
    }

    #[test]
    fn a_leg_with_a_full_window_or_no_delivery_yet_is_not_idle() {
        // slow start on a deep bottleneck: every write leaves at once, the
        // window is full (the 2026-12-04 slow-long trace: unacked 99 % of
        // cwnd, notsent 0)
        assert!(!leg(1_028_080, 1_020_840, 0, 0).sink_idle());
        // a new leg's first window: nothing delivered yet
        let mut fresh = leg(538_656, 200_000, 0, 0);
        fresh.sink.delivery_rate = 0;
        assert!(!fresh.sink_idle());
        fresh.sink.delivery_rate = 1;
        assert!(fresh.sink_idle());
    }

    #[test]
    fn the_busy_share_is_not_fooled_by_a_burst_of_records() {
        // every 100 ms one wake-up encodes two records of 12 ms back to
        // back (level 5 on the loaded lab host): the encoder is busy 24 % of
        // the time (a 10 ms window read 1000 per mille: it closed on the
        // second record alone)
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut m = BusyMeter::new(t0);
        for round in 0..20 {
            let at = 100 * round + 90;
            m.encoded(ms(at), ms(at + 12));
            m.encoded(ms(at + 12), ms(at + 24));
        }
        let p = m.permille();
        assert!((150..=350).contains(&p), "busy {p} per mille");
        // encoding back to back all the time: saturated
        let mut m = BusyMeter::new(t0);
        for i in 0..100 {
            m.encoded(ms(5 * i), ms(5 * i + 5));
        }
        assert!(m.permille() >= 950, "{}", m.permille());
    }
}
