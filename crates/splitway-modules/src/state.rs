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
}

impl LegSnapshot {
    /// The sink is the bottleneck: bytes pile up in the kernel's unsent queue
    /// or in ours (ModNet: the congestion window is smaller than the data in
    /// the socket buffer).
    pub fn sink_backlogged(&self) -> bool {
        let waiting = self.sink.notsent_bytes + self.queued_bytes;
        waiting > 0 && (self.sink.cwnd_bytes == 0 || waiting >= self.sink.cwnd_bytes / 2)
    }

    /// The sink takes everything at once: no unsent bytes anywhere.
    pub fn sink_idle(&self) -> bool {
        self.sink.notsent_bytes == 0 && self.queued_bytes == 0
    }
}
