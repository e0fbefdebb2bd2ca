//! Turbo-start arithmetic: how large the initial windows on a relay leg
//! should be, and reading the kernel's route to a peer.
//!
//! A relay leg runs between our own relays over a path whose bandwidth and
//! RTT are configured, so slow start only wastes round trips there: the
//! initial congestion and receive windows are set to the path's
//! bandwidth-delay product, in segments.

use std::net::IpAddr;

/// Segment size assumed for window sizing.
pub const MSS: f64 = 1448.0;
/// Linux's default initial window.
pub const DEFAULT_IW: u32 = 10;
/// Upper bound on the window we ask for.
pub const MAX_IW: u32 = 8192;

/// Initial window (segments) for a path of `mbit` and `rtt_ms`.
pub fn window_segments(mbit: f64, rtt_ms: f64) -> u32 {
    let bdp_bytes = mbit * 1e6 / 8.0 * rtt_ms / 1e3;
    let segs = (bdp_bytes / MSS).ceil();
    if !segs.is_finite() {
        return DEFAULT_IW;
    }
    (segs as u64).clamp(DEFAULT_IW as u64, MAX_IW as u64) as u32
}

/// Initial window (segments) for each of `legs` connections that share
/// one peer's path: the path's bandwidth-delay product split between them,
/// so that together they start with one BDP, not `legs` of them (never
/// below the kernel's default per connection). A peer whose flows ride
/// on `lanes` warm lanes shares it among the lanes; a per-flow peer has
/// `legs` = 1 (each leg is sized alone: the route is per address, so the
/// kernel can not tell one per-flow leg from the next).
pub fn shared_window_segments(mbit: f64, rtt_ms: f64, legs: usize) -> u32 {
    let whole = window_segments(mbit, rtt_ms);
    let legs = legs.max(1) as u64;
    (whole as u64 / legs).max(DEFAULT_IW as u64) as u32
}

/// The parts of `ip route get ADDR` needed to pin a route to that address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteGet {
    pub via: Option<IpAddr>,
    pub dev: String,
}

/// Parse the first line of `ip route get ADDR` output, e.g.
/// `10.0.2.2 via 10.0.1.1 dev eth0 src 10.0.1.2 uid 0`.
pub fn parse_route_get(text: &str) -> Option<RouteGet> {
    let line = text.lines().next()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
    };
    let dev = after("dev")?.to_string();
    let via = after("via").and_then(|v| v.parse().ok());
    Some(RouteGet { via, dev })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_the_bdp_in_segments() {
        // 100 Mbit/s × 215 ms = 2.6875 MB = 1856 segments of 1448 bytes.
        assert_eq!(window_segments(100.0, 215.0), 1857);
        assert_eq!(
            window_segments(1.0, 1.0),
            DEFAULT_IW,
            "never below the default"
        );
        assert_eq!(window_segments(100_000.0, 1000.0), MAX_IW, "capped");
        assert_eq!(window_segments(f64::NAN, 1.0), DEFAULT_IW);
    }

    #[test]
    fn a_peers_window_is_shared_by_its_lanes() {
        let whole = window_segments(100.0, 215.0);
        assert_eq!(shared_window_segments(100.0, 215.0, 1), whole);
        assert_eq!(shared_window_segments(100.0, 215.0, 0), whole, "0 = 1");
        assert_eq!(shared_window_segments(100.0, 215.0, 2), whole / 2);
        let four = shared_window_segments(100.0, 215.0, 4);
        assert!(4 * four <= whole && 4 * four > whole - 4, "sums to the BDP");
        assert_eq!(
            shared_window_segments(1.0, 10.0, 16),
            DEFAULT_IW,
            "never below the default"
        );
    }

    #[test]
    fn parses_route_get() {
        assert_eq!(
            parse_route_get("10.0.2.2 via 10.0.1.1 dev eth0 src 10.0.1.2 uid 0 \n    cache \n"),
            Some(RouteGet {
                via: Some("10.0.1.1".parse().unwrap()),
                dev: "eth0".into()
            })
        );
        assert_eq!(
            parse_route_get("10.0.2.2 dev veth1 src 10.0.2.1 uid 0"),
            Some(RouteGet {
                via: None,
                dev: "veth1".into()
            })
        );
        assert_eq!(
            parse_route_get("RTNETLINK answers: Network is unreachable"),
            None
        );
    }
}
