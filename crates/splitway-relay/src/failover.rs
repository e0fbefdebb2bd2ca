//! Failover between a route's next hops (`[[route]].via`, then `backup`):
//! the rules of [`splitway_core::failover`] behind a lock and the clock,
//! and the failover counter and log.
//!
//! Flows and pool refills report connects to a peer here ([`PeerHealth`]);
//! a new flow asks which of its route's hops to skip.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use splitway_core::failover;
use splitway_core::route::{NextHop, Route};

pub use splitway_core::failover::{Skips, HOLD_MAX, HOLD_MIN};

use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;

static FAILOVER_LOG: RateLimit = RateLimit::new(5);

/// Recent connect failures per peer name, shared by all tasks.
#[derive(Debug, Default)]
pub struct PeerHealth(Mutex<failover::PeerHealth>);

impl PeerHealth {
    pub fn new(hold_min: Duration, hold_max: Duration) -> PeerHealth {
        PeerHealth(Mutex::new(failover::PeerHealth::new(hold_min, hold_max)))
    }

    fn lock(&self) -> MutexGuard<'_, failover::PeerHealth> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connect to `peer` failed (or every pooled leg was found dead).
    pub fn failed(&self, peer: &str) {
        self.lock().failed(peer, Instant::now());
    }

    /// A connect to `peer` succeeded.
    pub fn ok(&self, peer: &str) {
        self.lock().ok(peer);
    }

    /// Whether `peer` is marked down now.
    pub fn is_down(&self, peer: &str) -> bool {
        self.lock().is_down(peer, Instant::now())
    }

    /// Which of `route`'s hops to skip now (see
    /// [`failover::PeerHealth::skips`]).
    pub fn skips(&self, route: &Route) -> Skips {
        self.lock().skips(route, Instant::now())
    }

    /// The first next hop of `route` that would be tried now.
    pub fn first_hop<'r>(&self, route: &'r Route) -> &'r NextHop {
        self.lock().first_hop(route, Instant::now())
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
