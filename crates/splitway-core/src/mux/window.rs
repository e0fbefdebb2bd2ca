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

/// As [`server_window`], with the budget split by age as the lane
/// scheduler's turns are (`lane_age_weight` = `w`): the stream with
/// `newer` of the `moving` streams opened after it gets
/// `1 + (w − 1) × newer / (moving − 1)` shares of the `moving × (w + 1) / 2`
/// shares there are (the oldest `w`, the youngest one), so the server link
/// delivers the oldest downloads first too and the lanes' order is not
/// evened out again there. `w` ≤ 1 is [`server_window`].
pub fn aged_server_window(rate: u64, min_rtt_us: u32, moving: usize, newer: usize, w: u32) -> u32 {
    let n = moving.max(1);
    if w <= 1 || n == 1 {
        return server_window(rate, min_rtt_us, n);
    }
    let rtt = u128::from(min_rtt_us.max(MIN_RTT_US));
    let budget = u128::from(HEADROOM) * u128::from(rate) * rtt / 1_000_000;
    let (n, newer, w) = (n as u128, newer.min(n - 1) as u128, u128::from(w));
    // share = budget × (1 + (w−1)·newer/(n−1)) / (n(w+1)/2), in integers.
    let share = budget * 2 * ((n - 1) + (w - 1) * newer) / ((n - 1) * n * (w + 1));
    share.clamp(u128::from(MIN_WINDOW), u128::from(MAX_WINDOW)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aged_windows_run_from_one_share_to_w_and_sum_to_the_budget() {
        // 11.5 MB/s × 26 ms × 2 = 598 kB among 10 streams, w = 8: 45 shares.
        let all: Vec<u32> = (0..10)
            .map(|newer| aged_server_window(11_500_000, 26_000, 10, newer, 8))
            .collect();
        assert_eq!(all[0], 13_288, "youngest: one share of 45");
        assert_eq!(all[9], 106_311, "oldest: eight");
        let sum: u64 = all.iter().map(|&x| u64::from(x)).sum();
        assert!((597_000..=598_000).contains(&sum), "{sum}");
        // Off, or alone: the plain split.
        assert_eq!(
            aged_server_window(11_500_000, 26_000, 10, 9, 1),
            server_window(11_500_000, 26_000, 10)
        );
        assert_eq!(aged_server_window(11_500_000, 26_000, 1, 0, 8), 598_000);
        // Floors and ceilings still hold.
        assert_eq!(
            aged_server_window(11_500_000, 26_000, 10_000, 0, 8),
            MIN_WINDOW
        );
        assert_eq!(aged_server_window(u64::MAX, u32::MAX, 2, 1, 64), MAX_WINDOW);
    }

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
