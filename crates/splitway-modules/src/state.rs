//! What a module may inspect: a snapshot of both legs' TCP state, filled by
//! the relay from `TCP_INFO` (ModNet's inspection), plus splitway's own queue.

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
}

impl LegSnapshot {
    /// The sink is the bottleneck: bytes pile up in the kernel's unsent queue
    /// or in ours (ModNet: the congestion window is smaller than the data in
    /// the socket buffer), or bytes wait while the window is full (the leg
    /// is cwnd-limited: with `TCP_NOTSENT_LOWAT` the unsent queue stays
    /// short, so on a leg with a large window — a deep bottleneck queue,
    /// turbo-start — the waiting bytes alone never reach half of it).
    pub fn sink_backlogged(&self) -> bool {
        let waiting = self.sink.notsent_bytes + self.queued_bytes;
        let cwnd = self.sink.cwnd_bytes;
        waiting > 0 && (cwnd == 0 || waiting >= cwnd / 2 || self.sink.unacked_bytes >= cwnd / 4 * 3)
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

    /// The sink takes everything at once: no unsent bytes anywhere.
    pub fn sink_idle(&self) -> bool {
        self.sink.notsent_bytes == 0 && self.queued_bytes == 0
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
        // nothing waits: never backlogged, and idle
        assert!(!leg(1 << 20, 1 << 20, 0, 0).sink_backlogged());
        assert!(leg(1 << 20, 1 << 20, 0, 0).sink_idle());
        // unknown window: any wait counts
        assert!(leg(0, 0, 1, 0).sink_backlogged());
    }
}
