//! The accepting end of lanes: a lane that arrived on the relay listener
//! (v2 header with the lane flag), and each stream on it connected onward
//! as a v1 relay leg would be (the same routing, allow-list and hop-limit
//! checks, on the stream's OPEN).

use std::net::SocketAddr;
use std::sync::Arc;

use splitway_core::frame::AbortCode;
use splitway_core::mux::{Lane, Role};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{LaneConn, OnOpen, StreamHandle, NOTSENT_LOWAT};
use super::pump::{pump, PumpEnd};
use super::{lane_config, LaneMetrics};
use crate::flow::{self, HopError};
use crate::forward::Outcome;
use crate::metrics::LegKind;
use crate::state::Shared;
use crate::sys::sockopt;

/// Serve a lane accepted from `peer` until it ends (every stream on it is
/// reset then).
pub async fn serve(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr) {
    let snap = shared.snapshot();
    // Tuned as the peer's own lanes: the peer (by address) names the
    // congestion control and the stream window.
    let conf = snap.cfg.peers.iter().find(|p| p.addr.ip() == peer.ip());
    if let Some(cc) = conf.and_then(|p| p.congestion.as_deref()) {
        let _ = sockopt::set_congestion(&sock, cc);
    }
    let _ = sockopt::set_notsent_lowat(&sock, NOTSENT_LOWAT);
    let m = LaneMetrics::clone(&shared.lanes.m);
    let conn = LaneConn::new(Lane::new(Role::Acceptor, lane_config(conf)), m.clone());
    if let Some(g) = conf.and_then(|p| shared.lanes.accepted_pacing.group(p)) {
        conn.pace_with(g);
    }
    let sh = shared.clone();
    let on_open: OnOpen = Arc::new(move |h: StreamHandle, dst: SocketAddr, hop: u8| {
        tokio::spawn(stream(sh.clone(), h, dst, hop, peer));
    });
    let (reason, _) = conn.run(sock, Some(on_open), shared.stop.clone()).await;
    tracing::debug!(%peer, reason, "lane from peer ended");
}

/// One stream of an accepted lane: connect onward, then forward.
async fn stream(
    shared: Arc<Shared>,
    h: StreamHandle,
    dst: SocketAddr,
    hop_limit: u8,
    peer: SocketAddr,
) {
    let m = &shared.metrics;
    m.hot.accepted("relay").inc();
    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        h.reset(AbortCode::Refused);
        return;
    };
    let _active = shared.track();
    let snap = shared.snapshot();
    let start = Instant::now();
    let up = match flow::next_hop(&shared, &snap, dst, hop_limit, true, &[]).await {
        Ok((up, _)) => up,
        Err(e) => {
            let reason = e.reason();
            if matches!(e, HopError::NotAllowed | HopError::HopLimit) {
                m.header_rejected.with_label_values(&[reason]).inc();
            } else {
                m.failed.with_label_values(&[reason]).inc();
            }
            tracing::debug!(%peer, %dst, reason, "stream not forwarded");
            h.reset(match e {
                HopError::Connect(_) => AbortCode::ConnectFailed,
                _ => AbortCode::Refused,
            });
            return;
        }
    };
    m.setup_seconds.observe(start.elapsed().as_secs_f64());
    m.active.inc();
    let idle = snap.flow_timeouts().idle;
    let window = snap
        .cfg
        .peers
        .iter()
        .find(|p| p.addr.ip() == peer.ip())
        .and_then(|p| shared.lanes.server_windows.stream(p, dst.ip()));
    let r = pump(up, h, start, idle, window).await;
    m.active.dec();
    m.hot.bytes_up[LegKind::PeerIn as usize].inc_by(r.down);
    m.hot.bytes_down[LegKind::Server as usize].inc_by(r.up);
    let outcome = match r.end {
        PumpEnd::Closed => Outcome::Closed,
        PumpEnd::Reset => Outcome::Reset,
        PumpEnd::Idle => Outcome::Idle,
    };
    m.hot.completed[outcome.index()].inc();
}
