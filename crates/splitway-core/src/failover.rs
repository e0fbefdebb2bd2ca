//! Failover rules, without sockets or a clock: which next hop of a route
//! to try, when a peer counts as down, and how long to wait before trying a
//! failed peer again. Every rule takes `now`.
//!
//! [`PeerHealth`] remembers which peers recently failed to connect (a
//! flow's fresh leg, a pool refill) or whose pooled legs were all found
//! dead. A peer marked down is skipped while a later next hop of the route
//! is not marked down, so flows fail over at once instead of paying a
//! connect timeout each; the mark lasts [`HOLD_MIN`], doubling per
//! consecutive failure up to [`HOLD_MAX`], and any successful connect to
//! the peer clears it. `direct` is never marked: its failures belong to the
//! destination, not to a path. [`Backoff`] spaces retries of something
//! that keeps failing (a pool refilling toward a dead peer).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::route::{NextHop, Route};

/// How long a peer stays marked down after its first failure.
pub const HOLD_MIN: Duration = Duration::from_secs(1);
/// Upper bound of the mark after consecutive failures.
pub const HOLD_MAX: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy)]
struct Down {
    failures: u32,
    until: Instant,
}

/// Recent connect failures per peer name.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    peers: HashMap<String, Down>,
    hold_min: Duration,
    hold_max: Duration,
}

impl Default for PeerHealth {
    fn default() -> Self {
        PeerHealth::new(HOLD_MIN, HOLD_MAX)
    }
}

impl PeerHealth {
    pub fn new(hold_min: Duration, hold_max: Duration) -> PeerHealth {
        PeerHealth {
            peers: HashMap::new(),
            hold_min,
            hold_max,
        }
    }

    /// A connect to `peer` failed at `now` (or every pooled leg was found
    /// dead): marked down for `hold_min`, doubled per failure in a row (a
    /// failure more than `hold_max` after the mark ended starts the count
    /// again), at most `hold_max`.
    pub fn failed(&mut self, peer: &str, now: Instant) {
        let d = self.peers.entry(peer.to_string()).or_insert(Down {
            failures: 0,
            until: now,
        });
        if d.until.checked_add(self.hold_max).is_some_and(|t| now > t) {
            d.failures = 0;
        }
        d.failures = d.failures.saturating_add(1);
        let hold = self
            .hold_min
            .saturating_mul(1 << (d.failures - 1).min(8))
            .min(self.hold_max);
        d.until = now.checked_add(hold).unwrap_or(now);
    }

    /// A connect to `peer` succeeded: the mark and the count are gone.
    pub fn ok(&mut self, peer: &str) {
        if !self.peers.is_empty() {
            self.peers.remove(peer);
        }
    }

    /// Whether `peer` is marked down at `now`.
    pub fn is_down(&self, peer: &str, now: Instant) -> bool {
        self.peers.get(peer).is_some_and(|d| now < d.until)
    }

    /// Whether `hop` is marked down (never for `direct`).
    fn hop_down(&self, hop: &NextHop, now: Instant) -> bool {
        hop.peer().is_some_and(|p| self.is_down(p, now))
    }

    /// For each of `route`'s next hops in order: skip it? A hop is skipped
    /// when it is marked down and a later one is not, so when every hop is
    /// marked down they are all still tried. A bit set (asked once per
    /// connection: no allocation); zip it with `route.hops()`.
    pub fn skips(&self, route: &Route, now: Instant) -> Skips {
        if route.backup.is_empty() || self.peers.is_empty() {
            return Skips { mask: 0, next: 0 };
        }
        let (mut down, mut up) = (0u64, 0u64);
        for (i, hop) in route.hops().enumerate().take(64) {
            if self.hop_down(hop, now) {
                down |= 1 << i;
            } else {
                up |= 1 << i;
            }
        }
        let mut mask = 0;
        for i in 0..64 {
            let later_up = up.checked_shr(i + 1).unwrap_or(0) != 0;
            if down >> i & 1 == 1 && later_up {
                mask |= 1 << i;
            }
        }
        Skips { mask, next: 0 }
    }

    /// The first next hop of `route` that would be tried at `now`.
    pub fn first_hop<'r>(&self, route: &'r Route, now: Instant) -> &'r NextHop {
        route
            .hops()
            .zip(self.skips(route, now))
            .find(|(_, skip)| !skip)
            .map(|(h, _)| h)
            .unwrap_or(&route.via)
    }
}

/// Which of a route's next hops to skip, in order (see
/// [`PeerHealth::skips`]): `true` for a hop to skip; never ends (hops past
/// the 64th are never skipped).
#[derive(Debug, Clone, Copy)]
pub struct Skips {
    mask: u64,
    next: u32,
}

impl Iterator for Skips {
    type Item = bool;

    fn next(&mut self) -> Option<bool> {
        let skip = self.next < 64 && self.mask >> self.next & 1 == 1;
        self.next = self.next.saturating_add(1);
        Some(skip)
    }
}

/// Waits between retries of something that keeps failing: `min`, doubling
/// per failure in a row, at most `max`; a success starts again at `min`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            next: min,
            min,
            max: max.max(min),
        }
    }

    /// Another failure: how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let w = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        w
    }

    /// A success: the next failure waits `min` again.
    pub fn ok(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(via: &str, backup: &[&str]) -> Route {
        Route {
            prefix: "10.0.0.0/8".parse().unwrap(),
            ports: crate::ports::PortRange::ALL,
            via: NextHop::from_name(via),
            backup: backup.iter().map(|b| NextHop::from_name(b)).collect(),
            modules: Vec::new(),
        }
    }

    fn skips(h: &PeerHealth, r: &Route, now: Instant, n: usize) -> Vec<bool> {
        h.skips(r, now).take(n).collect()
    }

    #[test]
    fn down_peers_are_skipped_while_a_later_hop_is_not() {
        let now = Instant::now();
        let mut h = PeerHealth::default();
        let r = route("a", &["b", "direct"]);
        assert_eq!(skips(&h, &r, now, 3), [false, false, false]);
        h.failed("a", now);
        assert_eq!(skips(&h, &r, now, 3), [true, false, false]);
        assert_eq!(h.first_hop(&r, now).to_string(), "b");
        h.failed("b", now);
        assert_eq!(skips(&h, &r, now, 3), [true, true, false]);
        assert_eq!(h.first_hop(&r, now).to_string(), "direct");
        // Every peer hop down and nothing after them: all are tried.
        let r2 = route("a", &["b"]);
        assert_eq!(skips(&h, &r2, now, 2), [false, false]);
        assert_eq!(h.first_hop(&r2, now).to_string(), "a");
        // Without backups nothing is ever skipped.
        assert_eq!(skips(&h, &route("a", &[]), now, 1), [false]);
        h.ok("a");
        assert_eq!(skips(&h, &r, now, 3), [false, true, false]);
        // `direct` is never down.
        h.failed("direct", now);
        assert_eq!(skips(&h, &route("direct", &["c"]), now, 2), [false, false]);
    }

    #[test]
    fn the_mark_expires_and_doubles_with_failures_in_a_row_up_to_the_cap() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut h = PeerHealth::new(Duration::from_millis(40), Duration::from_millis(400));
        h.failed("a", at(0));
        assert!(h.is_down("a", at(39)) && !h.is_down("b", at(0)));
        assert!(!h.is_down("a", at(40)), "expired after hold_min");
        // The second failure in a row holds 80 ms, then 160, 320, 400 (cap).
        let mut t = 100;
        for hold in [80, 160, 320, 400, 400] {
            h.failed("a", at(t));
            assert!(h.is_down("a", at(t + hold - 1)), "held {hold} ms");
            assert!(!h.is_down("a", at(t + hold)), "not longer than {hold} ms");
            t += hold + 10;
        }
        // A failure long after the last mark ended counts as the first.
        t += 1000;
        h.failed("a", at(t));
        assert!(!h.is_down("a", at(t + 40)), "back to hold_min");
        // A success clears the mark and the count.
        h.failed("a", at(t + 50));
        h.ok("a");
        assert!(!h.is_down("a", at(t + 51)));
        h.failed("a", at(t + 60));
        assert!(!h.is_down("a", at(t + 100)), "count restarted");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_restarts_after_a_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(2000));
        let waits: Vec<_> = (0..8).map(|_| b.failed()).collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        b.ok();
        assert_eq!(b.failed(), ms(50));
    }
}
