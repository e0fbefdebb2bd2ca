//! One split connection from accept to close.
//!
//! [`client`] handles a connection accepted from a client (transparent or
//! explicit listener): route its destination, open the next hop, forward.
//! [`relay_leg`] handles a leg from a peer relay: authenticate its header,
//! check the destination, open the next hop, forward. Both reset the
//! accepted socket when the next hop can not be had, so the client sees what
//! it would see end to end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use splitway_core::config::Engine;
use splitway_core::route::NextHop;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::dial::{self, Profile};
use crate::forward::{self, EngineState, FlowReport};
use crate::leg::{self, DEFAULT_HOP_LIMIT};
use crate::ratelimit::RateLimit;
use crate::state::{Shared, Snapshot};
use crate::sys::pipe::Pipe;
use crate::sys::sockopt;

static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(5);
static REJECT_LOG: RateLimit = RateLimit::new(5);

/// Close `s` with a RST.
fn reset(s: TcpStream) {
    let _ = sockopt::set_linger_zero(&s);
    drop(s);
}

/// Why the next hop could not be opened.
#[derive(Debug)]
enum HopError {
    NoRoute,
    UnknownPeer,
    NoKeys,
    HopLimit,
    NotAllowed,
    Connect(std::io::Error),
}

impl HopError {
    fn reason(&self) -> &'static str {
        match self {
            HopError::NoRoute => "no_route",
            HopError::UnknownPeer => "unknown_peer",
            HopError::NoKeys => "no_keys",
            HopError::HopLimit => "hop_limit",
            HopError::NotAllowed => "not_allowed",
            HopError::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => "connect_timeout",
            HopError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "connect_refused",
            HopError::Connect(_) => "connect_error",
        }
    }
}

/// Open the next hop toward `dst`: a direct connection, or a leg to the
/// routed peer carrying a header with `hop_limit`.
async fn next_hop(
    snap: &Snapshot,
    dst: SocketAddr,
    hop_limit: u8,
    from_peer: bool,
) -> Result<TcpStream, HopError> {
    let route = snap.routes.lookup(&dst).ok_or(HopError::NoRoute)?;
    let cfg = &snap.cfg;
    let mark = cfg.firewall.own_mark;
    match &route.via {
        NextHop::Direct => {
            if from_peer && !snap.allow.permits(&dst) {
                return Err(HopError::NotAllowed);
            }
            dial::connect(dst, mark, Profile::Internet, snap.connect_timeout())
                .await
                .map_err(HopError::Connect)
        }
        NextHop::Peer(name) => {
            if hop_limit == 0 {
                return Err(HopError::HopLimit);
            }
            let peer = cfg.peer(name).ok_or(HopError::UnknownPeer)?;
            let keys = snap.keys.as_ref().ok_or(HopError::NoKeys)?;
            let profile = Profile::RelayLeg {
                turbo: cfg.features.turbo_start,
            };
            let mut leg = dial::connect(peer.addr, mark, profile, snap.connect_timeout())
                .await
                .map_err(HopError::Connect)?;
            leg::send_header(&mut leg, keys, dst, hop_limit - 1)
                .await
                .map_err(HopError::Connect)?;
            Ok(leg)
        }
    }
}

/// The buffers or pipes one connection forwards through.
fn engine_state(snap: &Snapshot) -> std::io::Result<EngineState> {
    let n = &snap.cfg.node;
    Ok(match n.engine {
        Engine::Copy => EngineState::Copy {
            a_to_b: vec![0; n.buffer_bytes],
            b_to_a: vec![0; n.buffer_bytes],
        },
        Engine::Splice => EngineState::Splice {
            a_to_b: Pipe::new(n.pipe_bytes)?,
            b_to_a: Pipe::new(n.pipe_bytes)?,
        },
    })
}

async fn forward(shared: &Shared, snap: &Snapshot, down: TcpStream, up: TcpStream, dst: SocketAddr, peer: SocketAddr) {
    let m = &shared.metrics;
    let mut engine = match engine_state(snap) {
        Ok(e) => e,
        Err(e) => {
            m.failed.with_label_values(&["engine_resources"]).inc();
            tracing::warn!(%dst, error = %e, "no pipe for connection");
            reset(down);
            reset(up);
            return;
        }
    };
    m.active.inc();
    let report: FlowReport = forward::relay(&down, &up, snap.flow_timeouts(), &mut engine).await;
    m.active.dec();
    m.bytes.with_label_values(&["upstream"]).inc_by(report.a_to_b);
    m.bytes.with_label_values(&["downstream"]).inc_by(report.b_to_a);
    m.completed.with_label_values(&[report.outcome.as_str()]).inc();
    if snap.cfg.node.log_connections {
        tracing::info!(
            %peer, %dst, up = report.a_to_b, down = report.b_to_a,
            outcome = report.outcome.as_str(), "connection closed"
        );
    }
}

/// A connection accepted from a client, bound for `dst`.
pub async fn client(shared: Arc<Shared>, down: TcpStream, peer: SocketAddr, dst: SocketAddr, kind: &'static str) {
    let _active = shared.track();
    let m = &shared.metrics;
    m.accepted.with_label_values(&[kind]).inc();
    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        reset(down);
        return;
    };
    let _ = crate::profile::internet(&down);
    let snap = shared.snapshot();
    let start = Instant::now();
    match next_hop(&snap, dst, DEFAULT_HOP_LIMIT + 1, false).await {
        Ok(up) => {
            m.setup_seconds.observe(start.elapsed().as_secs_f64());
            forward(&shared, &snap, down, up, dst, peer).await;
        }
        Err(e) => {
            m.failed.with_label_values(&[e.reason()]).inc();
            if let Some(suppressed) = CONNECT_FAIL_LOG.allow() {
                tracing::warn!(%peer, %dst, reason = e.reason(), error = ?e, suppressed, "next hop failed");
            }
            reset(down);
        }
    }
}

/// A leg accepted from a peer relay.
pub async fn relay_leg(shared: Arc<Shared>, mut leg: TcpStream, peer: SocketAddr) {
    let _active = shared.track();
    let m = &shared.metrics;
    m.accepted.with_label_values(&["relay"]).inc();
    let snap = shared.snapshot();
    let Some(keys) = snap.keys.as_ref() else {
        reset(leg);
        return;
    };
    let Some(listener) = snap.cfg.relay.as_ref() else {
        reset(leg);
        return;
    };
    let _ = crate::profile::relay_leg(&leg, snap.cfg.features.turbo_start);
    let header = match leg::read_header(
        &mut leg,
        keys,
        &shared.replay,
        Duration::from_secs(listener.idle_leg_timeout_secs),
        Duration::from_millis(listener.header_timeout_ms),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            if let Some(reason) = e.reject_reason() {
                m.header_rejected.with_label_values(&[reason]).inc();
                if let Some(suppressed) = REJECT_LOG.allow() {
                    tracing::warn!(%peer, reason, error = %e, suppressed, "relay leg refused");
                }
            }
            reset(leg);
            return;
        }
    };
    let Ok(_permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        reset(leg);
        return;
    };
    let start = Instant::now();
    let dst = header.dst;
    match next_hop(&snap, dst, header.hop_limit, true).await {
        Ok(up) => {
            m.setup_seconds.observe(start.elapsed().as_secs_f64());
            forward(&shared, &snap, leg, up, dst, peer).await;
        }
        Err(e) => {
            let reason = e.reason();
            if matches!(e, HopError::NotAllowed | HopError::HopLimit) {
                m.header_rejected.with_label_values(&[reason]).inc();
            } else {
                m.failed.with_label_values(&[reason]).inc();
            }
            if let Some(suppressed) = CONNECT_FAIL_LOG.allow() {
                tracing::warn!(%peer, %dst, reason, error = ?e, suppressed, "relay leg not forwarded");
            }
            reset(leg);
        }
    }
}
