//! Lane pacing arithmetic: how fast each of a peer's lanes may send when
//! the lanes are paced, together, at the path's configured bandwidth.
//!
//! Paced at the path's rate, the lanes keep the bottleneck's queue short:
//! bytes wait in the relay, where the lane scheduler orders them (new
//! streams' first bytes first), not in a drop-tail queue on the path where
//! a new flow's first bytes would wait behind every earlier flow's bulk.
//! The peer's rate is split among its lanes by their open streams, so
//! every stream gets about the same share whichever lane it is on.

/// Share of the configured link rate the lanes are paced at: the pacing
/// rate counts TCP segments, the link also carries IP and link headers
/// (about 5 % at a 1448-byte MSS), and a little headroom keeps the queue
/// from growing when the configured rate is a bit high.
pub const LINK_SHARE: f64 = 0.92;

/// The peer's pacing budget in bytes per second for a path of `mbit`.
pub fn peer_rate(mbit: f64) -> u64 {
    let r = mbit * 1e6 / 8.0 * LINK_SHARE;
    if r.is_finite() && r >= 1.0 {
        r as u64
    } else {
        1
    }
}

/// The pacing rate (bytes/s) of a lane with `own` open streams among a
/// peer's lanes with `all` streams each (`own` included), out of `total`.
/// A busy lane gets `total × own / Σ all`; an idle lane, or every lane
/// when none is busy, a quarter of an even split (it sends only control
/// frames and, until the next update, a new stream's first bytes).
pub fn lane_rate(total: u64, own: usize, all: &[usize]) -> u64 {
    let n = all.len().max(1) as u64;
    let sum: u64 = all.iter().map(|s| *s as u64).sum();
    let r = if own == 0 || sum == 0 {
        total / n / 4
    } else {
        (total as u128 * own as u128 / sum.max(own as u64) as u128) as u64
    };
    r.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_rate_leaves_room_for_headers() {
        assert_eq!(peer_rate(100.0), 11_500_000);
        assert_eq!(peer_rate(f64::NAN), 1);
        assert_eq!(peer_rate(0.0), 1);
    }

    #[test]
    fn busy_lanes_split_the_rate_by_streams() {
        let t = 12_000_000;
        assert_eq!(lane_rate(t, 30, &[30, 10]), 9_000_000);
        assert_eq!(lane_rate(t, 10, &[30, 10]), 3_000_000);
        assert_eq!(lane_rate(t, 5, &[5]), t, "a lone lane gets it all");
        assert_eq!(lane_rate(t, 1, &[1, 0]), t, "the only busy lane: all");
        // idle lanes: a quarter of an even split each
        assert_eq!(lane_rate(t, 0, &[1, 0]), 1_500_000);
        assert_eq!(lane_rate(t, 0, &[0, 0]), 1_500_000);
        // the busy lanes' rates never sum above the total
        let all = [7, 3, 0, 11];
        let busy: u64 = all
            .iter()
            .filter(|s| **s > 0)
            .map(|s| lane_rate(t, *s, &all))
            .sum();
        assert!(busy <= t);
        assert_eq!(lane_rate(0, 0, &[]), 1, "never zero");
    }
}
