//! Pacing a peer's lanes together at the path's configured bandwidth
//! (`[[peer]] lane_pacing`): each lane's `SO_MAX_PACING_RATE` is its share
//! of the peer's rate by open streams (`splitway_core::mux::pace`), updated
//! by the lane's own task every [`PACE_EVERY`]. The initiating relay keeps
//! one group per peer's lanes; the accepting relay one per peer name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use splitway_core::config::Peer;
use splitway_core::mux::pace::{lane_rate, peer_rate};

use super::conn::LaneConn;

/// How often a paced lane recomputes its share.
pub const PACE_EVERY: Duration = Duration::from_millis(50);

/// The lanes of one peer that share its rate.
pub struct PaceGroup {
    total: u64,
    members: Mutex<Vec<Weak<LaneConn>>>,
}

impl PaceGroup {
    pub fn new(total: u64) -> PaceGroup {
        PaceGroup {
            total,
            members: Mutex::new(Vec::new()),
        }
    }

    /// A group for `peer`'s lanes, if it asks for pacing.
    pub fn of(peer: &Peer) -> Option<Arc<PaceGroup>> {
        peer.lane_pacing
            .then(|| Arc::new(PaceGroup::new(peer_rate(peer.bandwidth_mbit))))
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn join(&self, c: &Arc<LaneConn>) {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|w| w.strong_count() > 0);
        m.push(Arc::downgrade(c));
    }

    /// The pacing rate `me` should have now (bytes/s).
    pub fn rate_for(&self, me: &LaneConn) -> u64 {
        let live: Vec<Arc<LaneConn>> = {
            let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|w| w.strong_count() > 0);
            m.iter().filter_map(Weak::upgrade).collect()
        };
        let all: Vec<usize> = live
            .iter()
            .filter(|c| !c.is_dead())
            .map(|c| c.streams())
            .collect();
        lane_rate(self.total, me.streams(), &all)
    }
}

/// The accepting relay's groups, by peer name (a changed rate starts a new
/// group; lanes already running keep theirs until they end).
#[derive(Default)]
pub struct AcceptedPacing {
    groups: Mutex<HashMap<String, Arc<PaceGroup>>>,
}

impl AcceptedPacing {
    pub fn group(&self, peer: &Peer) -> Option<Arc<PaceGroup>> {
        if !peer.lane_pacing {
            return None;
        }
        let total = peer_rate(peer.bandwidth_mbit);
        let mut g = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let e = g
            .entry(peer.name.clone())
            .or_insert_with(|| Arc::new(PaceGroup::new(total)));
        if e.total() != total {
            *e = Arc::new(PaceGroup::new(total));
        }
        Some(e.clone())
    }
}
