//! Server-window arithmetic: how large a receive window each server
//! connection of the accepting relay's lane streams may advertise
//! (`[[peer]] bound_server_windows`).
//!
//! The accepting relay reads its server connections into lane streams. A
//! server connection over a short path ramps within a few round trips, and
//! a hundred of them together offer far more than the server link's
//! bandwidth-delay product plus its queue while the lanes drain them no
//! faster than the peer's path allows: the server link's drop-tail queue
//! fills, and a new flow's handshake and first bytes wait behind it. So the
//! server connections share one budget: `HEADROOM` × the rate the lanes
//! forward × the server path's *minimum* round trip (never the smoothed
//! one, which includes the very queue the bound is against; a budget that
//! grows with the queue lets it grow without end), split among the streams
//! that are moving bytes, so a lone bulk stream keeps the whole budget.

/// Budget = this many × rate × minimum RTT: one bandwidth-delay product
/// to keep the path full, one to ride out scheduling and ACK delays.
pub const HEADROOM: u64 = 2;
/// A stream's window never goes below this (about three segments), so a
/// stream among very many still moves and its first bytes pass at once.
pub const MIN_WINDOW: u32 = 4 * 1024;
/// Nor above this.
pub const MAX_WINDOW: u32 = 16 << 20;
/// Round trips below this count as this (a server on the same LAN would
/// otherwise get windows so small that every byte costs a wake-up).
pub const MIN_RTT_US: u32 = 5_000;

/// The receive window (bytes) one of `moving` streams' server connections
/// may advertise when the lanes forward `rate` bytes/s and the server
/// path's minimum round trip is `min_rtt_us` (0: unknown, counts as
/// [`MIN_RTT_US`]). `moving` counts the stream itself (0 is taken as 1).
pub fn server_window(rate: u64, min_rtt_us: u32, moving: usize) -> u32 {
    let rtt = u128::from(min_rtt_us.max(MIN_RTT_US));
    let budget = u128::from(HEADROOM) * u128::from(rate) * rtt / 1_000_000;
    let share = budget / moving.max(1) as u128;
    share.clamp(u128::from(MIN_WINDOW), u128::from(MAX_WINDOW)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_stream_gets_the_whole_budget() {
        // 11.5 MB/s × 26 ms × 2 = 598 kB: twice the path's BDP.
        assert_eq!(server_window(11_500_000, 26_000, 1), 598_000);
        assert_eq!(server_window(11_500_000, 26_000, 0), 598_000);
    }

    #[test]
    fn moving_streams_split_it() {
        assert_eq!(server_window(11_500_000, 26_000, 10), 59_800);
        // 100 streams: 5,980 each, ~600 kB in all.
        assert_eq!(server_window(11_500_000, 26_000, 100), 5_980);
        // Very many: each keeps the floor.
        assert_eq!(server_window(11_500_000, 26_000, 10_000), MIN_WINDOW);
    }

    #[test]
    fn short_and_unknown_round_trips_count_as_the_floor() {
        assert_eq!(server_window(11_500_000, 0, 1), 115_000);
        assert_eq!(server_window(11_500_000, 200, 1), 115_000);
    }

    #[test]
    fn large_products_stop_at_the_ceiling() {
        assert_eq!(server_window(u64::MAX, u32::MAX, 1), MAX_WINDOW);
        assert_eq!(server_window(0, 26_000, 1), MIN_WINDOW);
    }
}
