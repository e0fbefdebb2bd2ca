//! Failover between a route's next hops (`[[route]].via`, then `backup`).
//!
//! [`PeerHealth`] remembers which peers recently failed to connect (a flow's
//! fresh leg, a pool refill) or whose pooled legs were all found dead. A
//! peer marked down is skipped while a later next hop of the route is not
//! marked down, so flows fail over at once instead of paying a connect
//! timeout each; the mark lasts [`HOLD_MIN`], doubling per consecutive
//! failure up to [`HOLD_MAX`], and any successful connect to the peer (a
//! pool refill probes it in the background) clears it. `direct` is never
//! marked: its failures belong to the destination, not to a path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use splitway_core::route::{NextHop, Route};
use std::time::Instant;

use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;

/// How long a peer stays marked down after its first failure.
pub const HOLD_MIN: Duration = Duration::from_secs(1);
/// Upper bound of the mark after consecutive failures.
pub const HOLD_MAX: Duration = Duration::from_secs(8);

static FAILOVER_LOG: RateLimit = RateLimit::new(5);

#[derive(Debug, Clone, Copy)]
struct Down {
    failures: u32,
    until: Instant,
}

/// Recent connect failures per peer name.
#[derive(Debug)]
pub struct PeerHealth {
    peers: Mutex<HashMap<String, Down>>,
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
            peers: Mutex::new(HashMap::new()),
            hold_min,
            hold_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Down>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connect to `peer` failed (or every pooled leg was found dead).
    pub fn failed(&self, peer: &str) {
        let mut map = self.lock();
        let d = map.entry(peer.to_string()).or_insert(Down {
            failures: 0,
            until: Instant::now(),
        });
        let now = Instant::now();
        if now > d.until + self.hold_max {
            // The last failure is long past: start counting again.
            d.failures = 0;
        }
        d.failures = d.failures.saturating_add(1);
        let hold = self
            .hold_min
            .saturating_mul(1 << (d.failures - 1).min(8))
            .min(self.hold_max);
        d.until = now + hold;
    }

    /// A connect to `peer` succeeded.
    pub fn ok(&self, peer: &str) {
        let mut map = self.lock();
        if !map.is_empty() {
            map.remove(peer);
        }
    }

    /// Whether `peer` is marked down now.
    pub fn is_down(&self, peer: &str) -> bool {
        self.lock()
            .get(peer)
            .is_some_and(|d| Instant::now() < d.until)
    }

    /// Whether `hop` is marked down (never for `direct`).
    fn hop_down(&self, hop: &NextHop) -> bool {
        hop.peer().is_some_and(|p| self.is_down(p))
    }

    /// For each of `route`'s next hops in order: skip it? A hop is skipped
    /// when it is marked down and a later one is not, so when every hop is
    /// marked down they are all still tried. A bit set (asked once per
    /// connection: no allocation); zip it with `route.hops()`.
    pub fn skips(&self, route: &Route) -> Skips {
        if route.backup.is_empty() {
            return Skips { mask: 0, next: 0 };
        }
        let (mut down, mut up) = (0u64, 0u64);
        for (i, hop) in route.hops().enumerate().take(64) {
            if self.hop_down(hop) {
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

    /// The first next hop of `route` that would be tried now.
    pub fn first_hop<'r>(&self, route: &'r Route) -> &'r NextHop {
        let skips = self.skips(route);
        route
            .hops()
            .zip(skips)
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

/// Count and log (rate-limited) one failover from `from` to `to` for a
/// connection to `dst`; `reason` is why `from` was left (`peer_down` when
/// it was skipped because it is marked down).
pub fn record(m: &Metrics, from: &NextHop, to: &NextHop, dst: SocketAddr, reason: &str) {
    m.failover
        .with_label_values(&[&from.to_string(), &to.to_string()])
        .inc();
    if let Some(suppressed) = FAILOVER_LOG.allow() {
        tracing::warn!(%dst, %from, %to, reason, suppressed, "next hop failed over");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(via: &str, backup: &[&str]) -> Route {
        Route {
            prefix: "10.0.0.0/8".parse().unwrap(),
            ports: splitway_core::ports::PortRange::ALL,
            via: NextHop::from_name(via),
            backup: backup.iter().map(|b| NextHop::from_name(b)).collect(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn down_peers_are_skipped_while_a_later_hop_is_not() {
        let h = PeerHealth::default();
        let r = route("a", &["b", "direct"]);
        assert_eq!(
            h.skips(&r).take(3).collect::<Vec<_>>(),
            [false, false, false]
        );
        h.failed("a");
        assert_eq!(
            h.skips(&r).take(3).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert_eq!(h.first_hop(&r).to_string(), "b");
        h.failed("b");
        assert_eq!(h.skips(&r).take(3).collect::<Vec<_>>(), [true, true, false]);
        assert_eq!(h.first_hop(&r).to_string(), "direct");
        // Every peer hop down and nothing after them: all are tried.
        let r2 = route("a", &["b"]);
        assert_eq!(h.skips(&r2).take(2).collect::<Vec<_>>(), [false, false]);
        assert_eq!(h.first_hop(&r2).to_string(), "a");
        // Without backups nothing is ever skipped.
        assert_eq!(
            h.skips(&route("a", &[])).take(1).collect::<Vec<_>>(),
            [false]
        );
        h.ok("a");
        assert_eq!(
            h.skips(&r).take(3).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn the_mark_expires_and_grows_with_consecutive_failures() {
        let ms = Duration::from_millis;
        let h = PeerHealth::new(ms(40), ms(400));
        h.failed("a");
        assert!(h.is_down("a") && !h.is_down("b"));
        std::thread::sleep(ms(60));
        assert!(!h.is_down("a"), "expired after hold_min");
        // Second failure in a row: 80 ms.
        h.failed("a");
        std::thread::sleep(ms(60));
        assert!(h.is_down("a"), "the hold doubled");
        for _ in 0..20 {
            h.failed("a");
        }
        std::thread::sleep(ms(300));
        assert!(h.is_down("a"));
        std::thread::sleep(ms(150));
        assert!(!h.is_down("a"), "capped at hold_max");
        h.failed("a");
        h.ok("a");
        assert!(!h.is_down("a"), "a success clears the mark");
        h.failed("a");
        std::thread::sleep(ms(60));
        assert!(!h.is_down("a"), "and the count");
    }
}
