//! Multiplexed relay legs ("lanes", leg protocol v2 with the lane flag):
//! many flows to a peer as streams on a few warm, long-lived legs, so a new
//! flow pays no leg handshake on the long link and the sending relay, not
//! the kernel, decides whose bytes go next (docs/architecture.md, "Lanes
//! and streams"; docs/wire.md, "Version 2").
//!
//! - [`peers`]: the initiating end: lanes kept open per `legs = "mux"` peer,
//!   and the choice of lane for a new flow.
//! - [`egress`]: the accepting end: a lane from a peer, its streams
//!   connected onward.
//! - [`conn`]: one lane on its socket (the state machine of
//!   `splitway_core::mux` driven by a task), and a flow's stream handle.
//! - [`pump`]: forwarding between a flow's socket and its stream.
//! - [`pace`]: a peer's lanes paced together at its bandwidth (opt-in).
//! - [`server_window`]: the accepting end's server connections' receive
//!   windows bounded by what the lanes forward (opt-in).
//! - [`metrics`]: lane and stream metrics.

pub mod conn;
pub mod egress;
pub mod metrics;
pub mod pace;
pub mod peers;
pub mod pump;
pub mod server_window;

use std::net::SocketAddr;
use std::sync::Arc;

use splitway_core::config::Peer;
use splitway_core::mux::LaneConfig;
use splitway_core::route::NextHop;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use metrics::LaneMetrics;
pub use peers::Lanes;

use crate::forward::Outcome;
use crate::metrics::LegKind;
use crate::state::{Shared, Snapshot};
use pump::{pump, PumpEnd};

/// The state machine's limits for lanes with `peer` (defaults without one).
pub fn lane_config(peer: Option<&Peer>) -> LaneConfig {
    let mut c = LaneConfig::default();
    if let Some(p) = peer {
        c.initial_window = p.stream_window_kib.saturating_mul(1024);
        c.max_streams = p.lane_max_streams;
        c.age_weight = p.lane_age_weight;
    }
    c
}

/// Carry a client's flow to `dst` on a lane, if its route's first usable
/// hop is a `legs = "mux"` peer with a ready lane that has room: then the
/// flow is forwarded to its end here and `Ok(())` returned. Otherwise the
/// socket comes back for a per-flow leg (counted as a fallback when the
/// peer is a mux peer).
pub async fn carry(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    down: TcpStream,
    dst: SocketAddr,
    hop_limit: u8,
    start: Instant,
) -> Result<(), TcpStream> {
    let Some(h) = stream_for(shared, snap, dst, hop_limit) else {
        return Err(down);
    };
    run_stream(shared, snap, down, h, start).await;
    Ok(())
}

/// A stream to `dst` on a lane, if its route's first usable hop is a
/// `legs = "mux"` peer with a ready lane that has room (`None` otherwise;
/// counted as a fallback when the peer is a mux peer).
pub fn stream_for(
    shared: &Shared,
    snap: &Snapshot,
    dst: SocketAddr,
    hop_limit: u8,
) -> Option<conn::StreamHandle> {
    let route = snap.routes.lookup(&dst)?;
    let NextHop::Peer(name) = shared.pools.health.first_hop(route) else {
        return None;
    };
    if !shared.lanes.is_mux(name) {
        return None;
    }
    shared.lanes.open(name, dst, hop_limit)
}

/// Forward a client's flow on its stream until both ends are done.
pub async fn run_stream(
    shared: &Shared,
    snap: &Snapshot,
    down: TcpStream,
    h: conn::StreamHandle,
    start: Instant,
) {
    let m = &shared.metrics;
    m.setup_seconds.observe(start.elapsed().as_secs_f64());
    m.active.inc();
    let r = pump(down, h, start, snap.flow_timeouts().idle, None).await;
    m.active.dec();
    m.hot.bytes_up[LegKind::Client as usize].inc_by(r.up);
    m.hot.bytes_down[LegKind::PeerOut as usize].inc_by(r.down);
    let outcome = match r.end {
        PumpEnd::Closed => Outcome::Closed,
        PumpEnd::Reset => Outcome::Reset,
        PumpEnd::Idle => Outcome::Idle,
    };
    m.hot.completed[outcome.index()].inc();
    if let Some(t) = r.first_down {
        m.ttfb_seconds.observe(t.as_secs_f64());
    }
}

/// Every `congestion` of a mux peer must be one this kernel has: a process
/// can not load more (only built-ins and loaded modules count). The error
/// is the key and why.
pub fn check_congestion(cfg: &splitway_core::config::Config) -> Result<(), (String, String)> {
    let wanted: Vec<(usize, &str)> = cfg
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.congestion.as_deref().map(|c| (i, c)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let have = crate::sys::sockopt::available_congestion().map_err(|e| {
        let (i, _) = wanted[0];
        (
            format!("peer[{i}].congestion"),
            format!("reading tcp_available_congestion_control: {e}"),
        )
    })?;
    for (i, c) in wanted {
        if !have.iter().any(|h| h == c) {
            return Err((
                format!("peer[{i}].congestion"),
                format!(
                    "\"{c}\" is not available in this kernel (available: {})",
                    have.join(" ")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitway_core::config::Config;

    fn with_cc(cc: &str) -> Config {
        Config::parse(&format!(
            "[node]\nname = \"t\"\n[auth]\nkeys = [{{ id = 1, secret = \"{}\" }}]\n\
             [[explicit]]\nlisten = \"127.0.0.1:1\"\ntarget = \"10.0.0.1:2\"\n\
             [[peer]]\nname = \"p\"\naddr = \"10.0.0.9:5565\"\nlegs = \"mux\"\ncongestion = \"{cc}\"\n\
             [[route]]\nprefix = \"10.0.0.0/24\"\nvia = \"p\"\n",
            "00".repeat(32)
        ))
        .expect("config")
    }

    #[test]
    fn a_congestion_control_the_kernel_lacks_is_refused_by_key() {
        let (key, reason) = check_congestion(&with_cc("nosuchcc")).unwrap_err();
        assert_eq!(key, "peer[0].congestion");
        assert!(reason.contains("\"nosuchcc\" is not available"), "{reason}");
        // Every relay kernel has reno built in.
        assert_eq!(check_congestion(&with_cc("reno")), Ok(()));
    }

    #[test]
    fn lane_limits_follow_the_peer() {
        let cfg = with_cc("reno");
        let c = lane_config(cfg.peers.first());
        assert_eq!((c.initial_window, c.max_streams), (1024 * 1024, 128));
        assert_eq!(lane_config(None), LaneConfig::default());
    }
}
