//! One split connection from accept to close.
//!
//! [`client`] handles a connection accepted from a client (transparent or
//! explicit listener): route its destination, open the next hop, forward.
//! [`relay_leg`] handles a leg from a peer relay: authenticate its header,
//! check the destination, open the next hop, forward. Both reset the
//! accepted socket when the next hop can not be had, so the client sees what
//! it would see end to end.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use splitway_core::pairing::{FourTuple, Refused};
use splitway_core::route::{canonical, NextHop};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::dial::{self, Profile};
use crate::failover;
use crate::forward::{self, EngineState, FlowReport};
use crate::leg::{self, DEFAULT_HOP_LIMIT};
use crate::metrics::LegKind;
use crate::ratelimit::RateLimit;
use crate::resources::Resources;
use crate::state::{ActiveGuard, EarlyHop, FlowEntry, Shared, Snapshot};
use crate::sys::sockopt;

static CONNECT_FAIL_LOG: RateLimit = RateLimit::new(5);
static REJECT_LOG: RateLimit = RateLimit::new(5);

/// Close `s` with a RST.
pub(crate) fn reset(s: TcpStream) {
    let _ = sockopt::set_linger_zero(&s);
    drop(s);
}

/// Why the next hop could not be opened.
#[derive(Debug)]
pub enum HopError {
    NoRoute,
    UnknownPeer,
    NoKeys,
    HopLimit,
    NotAllowed,
    Connect(std::io::Error),
}

impl HopError {
    pub fn reason(&self) -> &'static str {
        match self {
            HopError::NoRoute => "no_route",
            HopError::UnknownPeer => "unknown_peer",
            HopError::NoKeys => "no_keys",
            HopError::HopLimit => "hop_limit",
            HopError::NotAllowed => "not_allowed",
            HopError::Connect(e) if e.kind() == std::io::ErrorKind::TimedOut => "connect_timeout",
            HopError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connect_refused"
            }
            HopError::Connect(_) => "connect_error",
        }
    }
}

/// Open a leg to peer `name` carrying a header for `dst`: a pooled leg if
/// the pool has a live one (retrying on a fresh leg if the pooled one fails
/// on the header write), else a fresh connect. A fresh leg's connect and
/// header share one deadline, `connect_ms` (with Fast Open the handshake is
/// waited for on the header write); its result marks the peer's health.
pub async fn open_leg(
    shared: &Shared,
    snap: &Snapshot,
    name: &str,
    dst: SocketAddr,
    hop_limit: u8,
    chain: &[u8],
) -> Result<TcpStream, HopError> {
    let cfg = &snap.cfg;
    let peer = cfg.peer(name).ok_or(HopError::UnknownPeer)?;
    let keys = snap.keys.as_ref().ok_or(HopError::NoKeys)?;
    if cfg.features.conn_pool {
        if let Some(pool) = shared.pools.get(name) {
            // Made on shard 0: moved to this flow's shard.
            if let Some(mut leg) = pool.take().and_then(|l| crate::shards::adopt(l).ok()) {
                if send_leg_header(&mut leg, keys, dst, hop_limit, chain)
                    .await
                    .is_ok()
                {
                    return Ok(leg);
                }
            }
        }
    }
    let profile = Profile::RelayLeg {
        turbo: cfg.features.turbo_start,
        fast_open: cfg.features.fast_open,
        source: peer.source,
    };
    let fresh = async {
        let mut leg = dial::connect(
            peer.addr,
            cfg.firewall.own_mark,
            profile,
            snap.connect_timeout(),
        )
        .await?;
        send_leg_header(&mut leg, keys, dst, hop_limit, chain).await?;
        Ok::<_, std::io::Error>(leg)
    };
    let fresh = match tokio::time::timeout(snap.connect_timeout(), fresh).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    };
    match fresh {
        Ok(leg) => {
            shared.pools.health.ok(name);
            Ok(leg)
        }
        Err(e) => {
            shared.pools.health.failed(name);
            Err(HopError::Connect(e))
        }
    }
}

/// A raw (v1) header, or with module ids in `chain`, a framed one and the
/// chain announcement (see `modules`).
async fn send_leg_header(
    leg: &mut TcpStream,
    keys: &splitway_core::auth::KeyRing,
    dst: SocketAddr,
    hop_limit: u8,
    chain: &[u8],
) -> std::io::Result<()> {
    if chain.is_empty() {
        leg::send_header(leg, keys, dst, hop_limit).await
    } else {
        leg::send_module_header(leg, keys, dst, hop_limit, chain).await
    }
}

/// Open the next hop toward `dst`: a direct connection, or a leg to the
/// routed peer carrying a header with `hop_limit` (already decremented for
/// the hop being taken). When a next hop can not be connected to (refused,
/// unreachable, timed out) the route's backups are tried in order, each
/// move counted and logged; peers marked down are skipped while a later
/// hop is not (see `failover`). Refusals by policy (`not_allowed`,
/// `hop_limit`) do not fail over.
pub(crate) async fn next_hop(
    shared: &Shared,
    snap: &Snapshot,
    dst: SocketAddr,
    hop_limit: u8,
    from_peer: bool,
    chain: &[u8],
) -> Result<(TcpStream, LegKind), HopError> {
    let route = snap.routes.lookup(&dst).ok_or(HopError::NoRoute)?;
    let skips = shared.pools.health.skips(route);
    let mut left: Option<(&NextHop, &'static str)> = None;
    let mut last_err = None;
    for (hop, skip) in route.hops().zip(skips) {
        if let Some((from, reason)) = left {
            failover::record(&shared.metrics, from, hop, dst, reason);
        }
        if skip {
            left = Some((hop, "peer_down"));
            continue;
        }
        match open_hop(shared, snap, hop, dst, hop_limit, from_peer, chain).await {
            Ok(up) => return Ok(up),
            Err(e @ HopError::Connect(_)) => {
                left = Some((hop, e.reason()));
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    // The last hop is never skipped, so some error was kept.
    Err(last_err.unwrap_or(HopError::NoRoute))
}

/// Open one next hop toward `dst` (see [`next_hop`]).
async fn open_hop(
    shared: &Shared,
    snap: &Snapshot,
    hop: &NextHop,
    dst: SocketAddr,
    hop_limit: u8,
    from_peer: bool,
    chain: &[u8],
) -> Result<(TcpStream, LegKind), HopError> {
    match hop {
        NextHop::Direct => {
            if from_peer && !snap.allow.permits(&dst) {
                return Err(HopError::NotAllowed);
            }
            dial::connect(
                dst,
                snap.cfg.firewall.own_mark,
                Profile::Internet {
                    initial_window: dial::server_window(&snap.cfg.limits),
                },
                snap.connect_timeout(),
            )
            .await
            .map(|s| (s, LegKind::Server))
            .map_err(HopError::Connect)
        }
        NextHop::Peer(name) => {
            if hop_limit == 0 {
                return Err(HopError::HopLimit);
            }
            open_leg(shared, snap, name, dst, hop_limit - 1, chain)
                .await
                .map(|s| (s, LegKind::PeerOut))
        }
    }
}

/// What the connection's two sockets are, and when it started (accept, or
/// a relay leg's header): for the metrics.
pub(crate) struct Legs {
    pub down: LegKind,
    pub up: LegKind,
    pub since: Instant,
}

/// A split connection whose next hop is open, ready to forward. Setting up
/// (routing, connecting, early-SYN pairing, header checks) runs in its own
/// boxed future that is freed once this exists, so the task an idle
/// connection keeps holds only this and the engine's state machine.
pub(crate) struct Split {
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    /// The two sockets and what the admin API shows; shared with the
    /// registry while forwarding.
    entry: Arc<FlowEntry>,
    legs: Legs,
    _permit: OwnedSemaphorePermit,
    _active: ActiveGuard,
}

impl Split {
    /// Forward until the connection ends, then account for it. What lives
    /// across the await is the idle connection's cost: `self`, the engine
    /// state, the registry id and the `Relay` state machine, nothing else.
    async fn run(self) {
        let Some(mut engine) = self.engine() else {
            return;
        };
        self.shared.metrics.active.inc();
        let id = self.shared.register(self.entry.clone());
        let (down, up, t) = (&self.entry.down, &self.entry.up, self.snap.flow_timeouts());
        let guarded = self.guard_relay_legs(true);
        let report = forward::relay(down, up, t, &mut engine, self.legs.since).await;
        if guarded && report.outcome.is_clean() {
            self.guard_relay_legs(false);
        }
        self.finish(id, engine, report);
    }

    /// A v1 relay leg carries no end mark, so a peer relay that dies (its
    /// kernel closes the leg, usually with a FIN) would look like the end of
    /// the stream. While a flow runs, its relay legs are armed to close with
    /// a RST (linger 0): if this process dies, the peer sees a reset, never
    /// a clean end; only a flow that ended cleanly disarms them (`on =
    /// false`) so its close is an orderly FIN after any unsent bytes.
    /// Returns whether the flow has a relay leg.
    fn guard_relay_legs(&self, on: bool) -> bool {
        let set = |s: &TcpStream| {
            let _ = if on {
                sockopt::set_linger_zero(s)
            } else {
                sockopt::clear_linger(s)
            };
        };
        let mut any = false;
        if self.legs.down == LegKind::PeerIn {
            set(&self.entry.down);
            any = true;
        }
        if self.legs.up == LegKind::PeerOut {
            set(&self.entry.up);
            any = true;
        }
        any
    }

    /// A flow with modules: the module engine, then the same accounting.
    async fn run_modules(self, plan: crate::modules::ModulePlan) {
        self.shared.metrics.active.inc();
        let id = self.shared.register(self.entry.clone());
        let (down, up) = (&self.entry.down, &self.entry.up);
        let report = plan
            .run(&self.shared, down, up, self.snap.flow_timeouts())
            .await;
        let m = &self.shared.metrics;
        self.shared.unregister(id);
        m.active.dec();
        m.hot.bytes_up[self.legs.down as usize].inc_by(report.a_to_b);
        m.hot.bytes_down[self.legs.up as usize].inc_by(report.b_to_a);
        if !self.aborted() {
            m.hot.completed[report.outcome.index()].inc();
        }
    }

    /// Shutdown's grace period is over: the daemon counted this flow as
    /// `aborted` when it cut it.
    fn aborted(&self) -> bool {
        self.shared.aborting.load(Ordering::SeqCst)
    }

    /// The engine's buffers or pipes; without them both sockets are reset.
    fn engine(&self) -> Option<EngineState<Resources>> {
        match self.shared.resources.get() {
            Ok(e) => Some(e),
            Err(e) => {
                let m = &self.shared.metrics;
                m.failed.with_label_values(&["engine_resources"]).inc();
                tracing::warn!(dst = %self.entry.dst, error = %e, "no pipe for connection");
                forward::reset_both(&self.entry.down, &self.entry.up);
                None
            }
        }
    }

    fn finish(&self, id: u64, engine: EngineState<Resources>, report: FlowReport) {
        let m = &self.shared.metrics;
        self.shared.unregister(id);
        m.active.dec();
        self.shared.resources.put(engine);
        m.hot.bytes_up[self.legs.down as usize].inc_by(report.a_to_b);
        m.hot.bytes_down[self.legs.up as usize].inc_by(report.b_to_a);
        if self.aborted() {
            return;
        }
        m.hot.completed[report.outcome.index()].inc();
        if let Some(ttfb) = report.first_b_to_a {
            m.ttfb_seconds.observe(ttfb.as_secs_f64());
        }
        if self.snap.cfg.node.log_connections {
            tracing::info!(
                peer = %self.entry.peer, dst = %self.entry.dst, up = report.a_to_b,
                down = report.b_to_a, outcome = report.outcome.as_str(), "connection closed"
            );
        }
    }
}

/// Set up with `setup` (boxed: its state is freed before forwarding
/// starts), then forward.
pub(crate) async fn set_up_and_run(setup: Pin<Box<impl Future<Output = Option<Split>>>>) {
    if let Some(split) = setup.await {
        split.run().await;
    }
}

/// A connection accepted from a client, bound for `dst`.
pub fn client(
    shared: Arc<Shared>,
    down: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    kind: &'static str,
) -> impl Future<Output = ()> + Send {
    set_up_and_run(Box::pin(set_up_client(shared, down, peer, dst, kind)))
}

async fn set_up_client(
    shared: Arc<Shared>,
    down: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    kind: &'static str,
) -> Option<Split> {
    let active = shared.track();
    let m = &shared.metrics;
    m.hot.accepted(kind).inc();
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        reset(down);
        return None;
    };
    // TCP_NODELAY (the Internet-facing profile) is inherited from the
    // listener (see `daemon::bind`).
    let snap = shared.snapshot();
    let start = Instant::now();
    // A route with modules takes a framed per-flow leg (not a lane).
    let chain = crate::modules::route_chain(&snap, &dst);
    let early = if kind == "transparent" && snap.cfg.features.early_syn {
        claim_early(&shared, &down, peer, dst).await
    } else {
        None
    };
    let early = match early {
        // The stream opened at the client's SYN.
        Some(EarlyHop::Stream(h)) => {
            shared
                .lanes
                .m
                .early_streams
                .with_label_values(&["claimed"])
                .inc();
            crate::lane::run_stream(&shared, &snap, down, h, start).await;
            return None;
        }
        Some(EarlyHop::Socket(up, kind)) => Some((up, kind)),
        None => None,
    };
    // A flow to a `legs = "mux"` peer goes as a stream on a warm lane.
    let down = if chain.is_some() || early.is_some() {
        down
    } else {
        match crate::lane::carry(&shared, &snap, down, dst, DEFAULT_HOP_LIMIT, start).await {
            Ok(()) => return None,
            Err(down) => down,
        }
    };
    let hop = match early {
        Some(up) => Ok(up),
        None => {
            let ids = chain.as_ref().map(|c| c.ids()).unwrap_or_default();
            next_hop(&shared, &snap, dst, DEFAULT_HOP_LIMIT + 1, false, &ids).await
        }
    };
    match hop {
        Ok((up, up_kind)) => {
            m.setup_seconds.observe(start.elapsed().as_secs_f64());
            // A failover to `direct` carries no modules.
            let plan = chain
                .filter(|_| up_kind == LegKind::PeerOut)
                .map(|spec| crate::modules::ModulePlan::new(&snap, &up, spec, true));
            let entry = FlowEntry::new(kind, peer, dst, down, up);
            let legs = Legs {
                down: LegKind::Client,
                up: up_kind,
                since: start,
            };
            Split::new(shared, snap, entry, legs, permit, active)
                .or_run_modules(plan)
                .await
        }
        Err(e) => {
            m.failed.with_label_values(&[e.reason()]).inc();
            if let Some(suppressed) = CONNECT_FAIL_LOG.allow() {
                tracing::warn!(%peer, %dst, reason = e.reason(), error = ?e, suppressed, "next hop failed");
            }
            reset(down);
            None
        }
    }
}

impl Split {
    /// With a module plan, runs the module engine here, inside the (boxed)
    /// set-up future, and returns `None`: a zero-copy flow's task does not
    /// grow by the module engine's state.
    pub(crate) async fn or_run_modules(
        self,
        plan: Option<crate::modules::ModulePlan>,
    ) -> Option<Split> {
        match plan {
            Some(plan) => {
                Box::pin(self.run_modules(plan)).await;
                None
            }
            None => Some(self),
        }
    }

    pub(crate) fn new(
        shared: Arc<Shared>,
        snap: Arc<Snapshot>,
        entry: FlowEntry,
        legs: Legs,
        permit: OwnedSemaphorePermit,
        active: ActiveGuard,
    ) -> Split {
        Split {
            shared,
            snap,
            entry: Arc::new(entry),
            legs,
            _permit: permit,
            _active: active,
        }
    }
}

/// A leg accepted from a peer relay.
pub fn relay_leg(
    shared: Arc<Shared>,
    leg: TcpStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    set_up_and_run(Box::pin(set_up_relay_leg(shared, leg, peer)))
}

async fn set_up_relay_leg(
    shared: Arc<Shared>,
    mut leg: TcpStream,
    peer: SocketAddr,
) -> Option<Split> {
    let active = shared.track();
    let m = &shared.metrics;
    m.hot.accepted("relay").inc();
    let snap = shared.snapshot();
    let Some(keys) = snap.keys.as_ref() else {
        reset(leg);
        return None;
    };
    let Some(listener) = snap.cfg.relay.as_ref() else {
        reset(leg);
        return None;
    };
    let _ = crate::profile::relay_leg(&leg, snap.cfg.features.turbo_start);
    let waiting = WaitingLeg::enter(&shared);
    if waiting.0 > listener.max_idle_legs {
        m.failed.with_label_values(&["idle_legs_bound"]).inc();
        reset(leg);
        return None;
    }
    // An idle pooled leg waits here; when the relay stops it is closed at
    // once instead of holding up the shutdown.
    let mut stop = shared.stop.clone();
    let read = leg::read_header(
        &mut leg,
        keys,
        &shared.replay,
        Duration::from_secs(listener.idle_leg_timeout_secs),
        Duration::from_millis(listener.header_timeout_ms),
    );
    let header = tokio::select! {
        r = read => r,
        _ = stop.wait_for(|s| *s) => Err(leg::HeaderError::ClosedIdle),
    };
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            if let Some(reason) = e.reject_reason() {
                m.header_rejected.with_label_values(&[reason]).inc();
                if let Some(suppressed) = REJECT_LOG.allow() {
                    tracing::warn!(%peer, reason, error = %e, suppressed, "relay leg refused");
                }
            }
            reset(leg);
            return None;
        }
    };
    drop(waiting);
    if header.leg == splitway_core::wire::LegKind::Lane {
        // Streams take their own permits; the lane lives in this task.
        crate::lane::egress::serve(shared.clone(), leg, peer).await;
        return None;
    }
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        m.failed.with_label_values(&["max_connections"]).inc();
        reset(leg);
        return None;
    };
    let start = Instant::now();
    let dst = header.dst;
    let chain = if header.leg == splitway_core::wire::LegKind::Framed {
        match crate::modules::read_chain(&mut leg, listener.header_timeout_ms).await {
            Ok(spec) => Some(spec),
            Err(reason) => {
                m.header_rejected.with_label_values(&[reason]).inc();
                if let Some(suppressed) = REJECT_LOG.allow() {
                    tracing::warn!(%peer, reason, suppressed, "module leg refused");
                }
                reset(leg);
                return None;
            }
        }
    } else {
        None
    };
    // A module leg whose next hop is another relay passes through: the
    // next leg announces the same chain and the frames cross untouched, so
    // the chain runs end to end between the first and the last relay.
    let ids = chain.as_ref().map(|c| c.ids()).unwrap_or_default();
    match next_hop(&shared, &snap, dst, header.hop_limit, true, &ids).await {
        Ok((up, up_kind)) => {
            m.setup_seconds.observe(start.elapsed().as_secs_f64());
            let plan = chain
                .filter(|_| up_kind != LegKind::PeerOut)
                .map(|spec| crate::modules::ModulePlan::new(&snap, &leg, spec, false));
            let entry = FlowEntry::new("relay", peer, dst, leg, up);
            let legs = Legs {
                down: LegKind::PeerIn,
                up: up_kind,
                since: start,
            };
            Split::new(shared, snap, entry, legs, permit, active)
                .or_run_modules(plan)
                .await
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
            None
        }
    }
}

/// Counts an inbound leg waiting for its header; `.0` is the count
/// including this one.
struct WaitingLeg<'a>(usize, &'a Shared);

impl<'a> WaitingLeg<'a> {
    fn enter(shared: &'a Shared) -> WaitingLeg<'a> {
        let n = shared.waiting_legs.fetch_add(1, Ordering::SeqCst) + 1;
        WaitingLeg(n, shared)
    }
}

impl Drop for WaitingLeg<'_> {
    fn drop(&mut self) {
        self.1.waiting_legs.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The next hop (leg or stream) the early-SYN tap started for this client's
/// SYN, if any: the 4-tuple and the SYN's sequence number (saved by the
/// listener) must both match, so a hop left over from an earlier
/// connection on the same ports is never taken. Without one, a mark is left
/// so a late report of this SYN starts nothing.
async fn claim_early(
    shared: &Shared,
    down: &TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) -> Option<EarlyHop> {
    let m = &shared.metrics;
    let Ok(isn) = sockopt::saved_syn_isn(down) else {
        m.early_syn.with_label_values(&["miss"]).inc();
        return None;
    };
    let key = FourTuple {
        src: canonical(&peer),
        dst: canonical(&dst),
        isn,
    };
    let Some(leg) = shared.pending.take_or_mark(&key, leg::now_ms()) else {
        m.early_syn.with_label_values(&["miss"]).inc();
        return None;
    };
    match leg.await {
        Ok(Ok(EarlyHop::Socket(up, kind))) => {
            // Opened on shard 0 (the tap's): moved to this flow's shard.
            match crate::shards::adopt(up) {
                Ok(up) => {
                    m.early_syn.with_label_values(&["hit"]).inc();
                    Some(EarlyHop::Socket(up, kind))
                }
                Err(_) => {
                    m.early_syn.with_label_values(&["failed"]).inc();
                    None
                }
            }
        }
        Ok(Ok(leg)) => {
            m.early_syn.with_label_values(&["hit"]).inc();
            Some(leg)
        }
        _ => {
            m.early_syn.with_label_values(&["failed"]).inc();
            None
        }
    }
}

/// Start the next hop for a SYN the tap saw (see `syn_tap`): a stream on a
/// lane when the routed peer is a `legs = "mux"` peer with a ready lane
/// that has room (its OPEN goes out now, so the far relay connects to the
/// server during the client's handshake), else a leg to the routed peer,
/// or, for a `direct` route (a one-relay Miniproxy path), the connection to
/// the server itself, so the server's handshake overlaps the client's.
/// Bounded by the pending map; past a bound the connection falls back to
/// connecting (or opening its stream) after accept.
pub fn on_syn(shared: &Arc<Shared>, tuple: FourTuple) {
    let snap = shared.snapshot();
    // A draining relay resets new clients: no leg for them.
    if !snap.cfg.features.early_syn || shared.draining.load(Ordering::SeqCst) {
        return;
    }
    let Some(route) = snap.routes.lookup(&tuple.dst) else {
        return;
    };
    // A module route's leg carries its chain (the framed header and the
    // chain frame go out when the leg opens, as on a leg opened after accept).
    let chain = crate::modules::route_chain(&snap, &tuple.dst)
        .map(|c| c.ids())
        .unwrap_or_default();
    // The primary, or the first backup if the primary is marked down.
    let hop = shared.pools.health.first_hop(route).clone();
    // Flows to a mux peer take a stream on a warm lane (a module route
    // takes a framed per-flow leg, as after accept).
    let mux = matches!(&hop, NextHop::Peer(name) if chain.is_empty() && shared.lanes.is_mux(name));
    let m = &shared.metrics;
    let (tx, rx) = tokio::sync::oneshot::channel();
    match shared.pending.try_insert(tuple, rx, leg::now_ms()) {
        Ok(()) => {}
        Err(Refused::Duplicate) => {
            // Its client was accepted first (or this is a retransmit).
            m.early_syn.with_label_values(&["late"]).inc();
            return;
        }
        Err(_) => {
            m.early_syn.with_label_values(&["fallback_bound"]).inc();
            return;
        }
    }
    m.early_syn.with_label_values(&["started"]).inc();
    if hop != route.via {
        failover::record(m, &route.via, &hop, tuple.dst, "peer_down");
    }
    if let (true, NextHop::Peer(name)) = (mux, &hop) {
        // No lane with room: a per-flow leg, as the flow would take after
        // accept (counted as a lane fallback).
        if let Some(h) = shared.lanes.open(name, tuple.dst, DEFAULT_HOP_LIMIT) {
            let lm = &shared.lanes.m;
            lm.early_streams.with_label_values(&["started"]).inc();
            let _ = tx.send(Ok(EarlyHop::Stream(h)));
            return;
        }
    }
    let sh = shared.clone();
    tokio::spawn(async move {
        let up = match hop {
            NextHop::Peer(name) => {
                open_leg(&sh, &snap, &name, tuple.dst, DEFAULT_HOP_LIMIT, &chain)
                    .await
                    .map(|s| EarlyHop::Socket(s, LegKind::PeerOut))
                    .map_err(|e| std::io::Error::other(e.reason()))
            }
            NextHop::Direct => dial::connect(
                tuple.dst,
                snap.cfg.firewall.own_mark,
                Profile::Internet {
                    initial_window: dial::server_window(&snap.cfg.limits),
                },
                snap.connect_timeout(),
            )
            .await
            .map(|s| EarlyHop::Socket(s, LegKind::Server)),
        };
        // If the entry expired meanwhile, the receiver is gone and the
        // connection is closed here.
        let _ = tx.send(up);
    });
}

/// Tear down early legs and streams whose client never completed its
/// handshake.
pub fn expire_early(shared: &Shared) {
    for (_, mut rx) in shared.pending.expire(leg::now_ms()) {
        // Dropping the receiver closes the leg (now, or when it connects);
        // a stream is reset (ABORT: the far relay resets its server side).
        if let Ok(Ok(EarlyHop::Stream(h))) = rx.try_recv() {
            let lm = &shared.lanes.m;
            lm.early_streams.with_label_values(&["expired"]).inc();
            drop(h);
        }
        shared
            .metrics
            .early_syn
            .with_label_values(&["expired"])
            .inc();
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::metrics::Metrics;
    use splitway_core::config::Config;

    pub fn shared() -> Arc<Shared> {
        shared_with("splice")
    }

    pub fn shared_with(engine: &str) -> Arc<Shared> {
        let cfg = Config::parse(&format!(
            "[node]\nname = \"t\"\nengine = \"{engine}\"\n\
             [[explicit]]\nlisten = \"127.0.0.1:1\"\ntarget = \"127.0.0.1:2\"\n\
             [[route]]\nprefix = \"127.0.0.1/32\"\nvia = \"direct\"\n"
        ))
        .expect("config");
        let metrics = Metrics::new();
        let resources = Resources::new(&cfg, metrics.resources_pooled.clone());
        let (_tx, rx) = tokio::sync::watch::channel(false);
        Arc::new(Shared::new(cfg, None, metrics, resources, rx))
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    /// What an idle connection costs in user space is mostly its task: the
    /// future `client` / `relay_leg` return. Setting up runs boxed and is
    /// freed, so the task is sized by the forwarding state alone (it was
    /// 1,760 bytes with async pumps and setup inline). With tokio's header
    /// and trailer, a future up to 656 bytes fits a 768-byte task (tasks are
    /// 128-byte aligned); rustc 1.95 makes 648 / 344 of it.
    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        let sh = shared();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = l.local_addr().expect("addr");
        let c = TcpStream::connect(a).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let snap = sh.snapshot();
        let mut engine = sh.resources.get().expect("engine");
        let relay = forward::relay(&c, &s, snap.flow_timeouts(), &mut engine, Instant::now());
        let relay_bytes = std::mem::size_of_val(&relay);
        drop(relay);
        let client = client(sh.clone(), c, a, a, "explicit");
        let leg = relay_leg(sh.clone(), s, a);
        let (client_bytes, leg_bytes) =
            (std::mem::size_of_val(&client), std::mem::size_of_val(&leg));
        eprintln!(
            "FIGURE relay {relay_bytes} B, client task future {client_bytes} B, leg {leg_bytes} B"
        );
        assert!(
            relay_bytes <= 400,
            "forwarding state machine is {relay_bytes} B"
        );
        assert!(client_bytes <= 656, "client task is {client_bytes} B");
        assert!(leg_bytes <= 656, "relay leg task is {leg_bytes} B");
    }
}

#[cfg(test)]
mod loopback_tests {
    use super::tests_support::*;
    use super::*;
    use crate::forward::Outcome;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request the client sent before the relay accepted goes out in the
    /// first burst (read at once, not on tokio's first readiness event),
    /// with a loopback next hop used as soon as connect(2) returns; the
    /// rest follows through the engine. Byte for byte, both engines, both
    /// directions, and the connection is accounted as closed with a TTFB.
    #[tokio::test]
    async fn a_loopback_flow_moves_the_first_burst_at_once_in_both_engines() {
        for engine in ["copy", "splice"] {
            let sh = shared_with(engine);
            let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let dst = server.local_addr().expect("addr");
            let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let c = TcpStream::connect(front.local_addr().expect("addr"))
                .await
                .expect("connect");
            let (mut c_rd, mut c_wr) = c.into_split();
            let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let req = request.clone();
            let writer = tokio::spawn(async move {
                c_wr.write_all(&req).await.expect("request");
                c_wr.shutdown().await.expect("fin");
            });
            let (down, peer) = front.accept().await.expect("accept");
            let flow = tokio::spawn(client(sh.clone(), down, peer, dst, "explicit"));
            let (mut s, _) = server.accept().await.expect("server accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("server read");
            assert!(
                got == request,
                "{engine}: request differs ({} of {} bytes)",
                got.len(),
                request.len()
            );
            let reply: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
            s.write_all(&reply).await.expect("reply");
            drop(s);
            let mut back = Vec::new();
            c_rd.read_to_end(&mut back).await.expect("client read");
            assert!(back == reply, "{engine}: reply differs");
            writer.await.expect("writer");
            flow.await.expect("flow task");
            let m = &sh.metrics;
            assert_eq!(
                m.hot.completed[Outcome::Closed.index()].get(),
                1,
                "{engine}"
            );
            assert_eq!(m.ttfb_seconds.get_sample_count(), 1, "{engine}");
            let up = m.hot.bytes_up[LegKind::Client as usize].get();
            let down = m.hot.bytes_down[LegKind::Server as usize].get();
            assert_eq!((up, down), (300_000, 50_000), "{engine}: bytes counted");
        }
    }
}
