//! The initiating end of lanes: for every peer with `legs = "mux"`, a few
//! warm lanes kept open (one task per lane slot: connect, v2 header with
//! the lane flag, SETTINGS, serve, and on any end reconnect after a
//! backoff), and the choice of lane for a new flow.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use splitway_core::auth::KeyRing;
use splitway_core::config::{Config, LegMode, Peer};
use splitway_core::frame::Open;
use splitway_core::mux::{Lane, Role};
use splitway_core::wire::LegKind;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::conn::{LaneConn, StreamHandle, NOTSENT_LOWAT};
use super::pace::{AcceptedPacing, PaceGroup};
use super::server_window::ServerWindows;
use super::{lane_config, LaneMetrics};
use crate::dial::{self, Profile};
use crate::leg;
use crate::sys::sockopt;

/// What a peer's lanes are made with; a change restarts them.
#[derive(Debug, Clone, PartialEq)]
struct LaneSpec {
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    lanes: usize,
    congestion: Option<String>,
    window_kib: u32,
    max_streams: u32,
    own_mark: u32,
    turbo: bool,
    connect_ms: u64,
    /// Lanes paced together at this rate (bytes/s), if `lane_pacing`.
    pace: Option<u64>,
}

impl LaneSpec {
    fn of(p: &Peer, cfg: &Config) -> LaneSpec {
        LaneSpec {
            addr: p.addr,
            source: p.source,
            lanes: p.lanes,
            congestion: p.congestion.clone(),
            window_kib: p.stream_window_kib,
            max_streams: p.lane_max_streams,
            own_mark: cfg.firewall.own_mark,
            turbo: cfg.features.turbo_start,
            connect_ms: cfg.timeouts.connect_ms,
            pace: p
                .lane_pacing
                .then(|| splitway_core::mux::pace::peer_rate(p.bandwidth_mbit)),
        }
    }
}

struct PeerLanes {
    spec: LaneSpec,
    /// One slot per lane: the lane while it is ready.
    slots: Arc<Mutex<Vec<Option<Arc<LaneConn>>>>>,
    retire: watch::Sender<bool>,
}

/// All initiating lanes of a relay, by peer name.
pub struct Lanes {
    by_peer: RwLock<HashMap<String, PeerLanes>>,
    pub m: LaneMetrics,
    stop: watch::Receiver<bool>,
    /// Pacing groups of lanes accepted from peers.
    pub accepted_pacing: AcceptedPacing,
    /// Server-window budgets of streams on lanes accepted from peers.
    pub server_windows: Arc<ServerWindows>,
}

impl Lanes {
    pub fn new(m: LaneMetrics, stop: &watch::Receiver<bool>) -> Lanes {
        Lanes {
            by_peer: RwLock::new(HashMap::new()),
            m,
            stop: stop.clone(),
            accepted_pacing: AcceptedPacing::default(),
            server_windows: Arc::default(),
        }
    }

    /// Start, retire or restart lanes to match `cfg`: lanes for every peer
    /// with `legs = "mux"` that a route uses (as pools: a peer listed only
    /// so that its lanes to us are sized and tuned, e.g. the ingress in an
    /// egress's config, is not dialled).
    pub fn sync(&self, cfg: &Config) {
        let keys = cfg.key_ring();
        let used = routed_peers(cfg);
        let mut map = self.by_peer.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, pl| {
            let keep = used.contains(name.as_str())
                && cfg
                    .peer(name)
                    .is_some_and(|p| p.legs == LegMode::Mux && LaneSpec::of(p, cfg) == pl.spec);
            if !keep {
                let _ = pl.retire.send(true);
                self.m.ready.with_label_values(&[name]).set(0);
            }
            keep
        });
        let Some(keys) = keys else {
            return;
        };
        let keys = Arc::new(keys);
        for p in cfg
            .peers
            .iter()
            .filter(|p| p.legs == LegMode::Mux && used.contains(p.name.as_str()))
        {
            if map.contains_key(&p.name) {
                continue;
            }
            let spec = LaneSpec::of(p, cfg);
            let slots = Arc::new(Mutex::new(vec![None; spec.lanes]));
            let pace = PaceGroup::of(p);
            let (retire, retired) = watch::channel(false);
            self.m.ready.with_label_values(&[&p.name]).set(0);
            for i in 0..spec.lanes {
                let keeper = Keeper {
                    peer: p.name.clone(),
                    spec: spec.clone(),
                    cfg: lane_config(Some(p)),
                    keys: keys.clone(),
                    slots: slots.clone(),
                    slot: i,
                    m: self.m.clone(),
                    pace: pace.clone(),
                };
                tokio::spawn(keeper.run(self.stop.clone(), retired.clone()));
            }
            map.insert(
                p.name.clone(),
                PeerLanes {
                    spec,
                    slots,
                    retire,
                },
            );
        }
    }

    /// Open a stream to `dst` on the ready lane of `peer` with the fewest
    /// streams. `None`: no lane ready or all full (the caller takes a
    /// per-flow leg).
    pub fn open(&self, peer: &str, dst: SocketAddr, hop_limit: u8) -> Option<StreamHandle> {
        let map = self.by_peer.read().unwrap_or_else(|p| p.into_inner());
        let pl = map.get(peer)?;
        let mut ready: Vec<Arc<LaneConn>> = pl
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flatten()
            .filter(|c| c.is_ready())
            .cloned()
            .collect();
        drop(map);
        ready.sort_by_key(|c| c.streams());
        let open = Open {
            dst,
            hop_limit,
            ext: b"",
        };
        let h = ready.iter().find_map(|c| c.open(open.clone()).ok());
        if h.is_none() {
            self.m.fallback.with_label_values(&[peer]).inc();
        }
        h
    }

    /// Whether `peer` is a mux peer (its flows try lanes first).
    pub fn is_mux(&self, peer: &str) -> bool {
        let map = self.by_peer.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(peer)
    }

    /// Every peer's lane slots, by peer name (for the admin API).
    pub fn summary(&self) -> Vec<(String, Vec<LaneView>)> {
        let map = self.by_peer.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(name, pl)| {
                let slots = pl.slots.lock().unwrap_or_else(|p| p.into_inner());
                let lanes = slots
                    .iter()
                    .map(|c| match c {
                        Some(c) if c.is_ready() => LaneView {
                            ready: true,
                            streams: c.streams(),
                            queued_bytes: c.queued(),
                            pacing_bytes_per_sec: c.pacing_rate(),
                        },
                        _ => LaneView::default(),
                    })
                    .collect();
                (name.clone(), lanes)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// One lane slot as the admin API shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LaneView {
    pub ready: bool,
    pub streams: usize,
    pub queued_bytes: usize,
    /// 0: not paced.
    pub pacing_bytes_per_sec: u64,
}

/// Names of the peers some route uses as a next hop (backups too).
fn routed_peers(cfg: &Config) -> std::collections::HashSet<&str> {
    let mut used = std::collections::HashSet::new();
    for route in cfg.route_table().routes() {
        for hop in route.hops() {
            if let splitway_core::route::NextHop::Peer(name) = hop {
                if let Some(p) = cfg.peer(name) {
                    used.insert(p.name.as_str());
                }
            }
        }
    }
    used
}

/// Keeps one lane slot of a peer open.
struct Keeper {
    peer: String,
    spec: LaneSpec,
    cfg: splitway_core::mux::LaneConfig,
    keys: Arc<KeyRing>,
    slots: Arc<Mutex<Vec<Option<Arc<LaneConn>>>>>,
    slot: usize,
    m: LaneMetrics,
    pace: Option<Arc<PaceGroup>>,
}

/// Wait between attempts: from 200 ms doubling to 10 s while attempts fail.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Keeper {
    async fn run(self, mut stop: watch::Receiver<bool>, mut retired: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *stop.borrow() || *retired.borrow() {
                return;
            }
            let stop_either = {
                let (tx, rx) = watch::channel(false);
                let (mut s, mut r) = (stop.clone(), retired.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.wait_for(|v| *v) => {}
                        _ = r.wait_for(|v| *v) => {}
                        _ = tx.closed() => return,
                    }
                    let _ = tx.send(true);
                });
                rx
            };
            let ok = self.once(stop_either).await;
            backoff = if ok {
                BACKOFF_MIN
            } else {
                (backoff * 2).min(BACKOFF_MAX)
            };
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|v| *v) => return,
                _ = retired.wait_for(|v| *v) => return,
            }
        }
    }

    /// One lane from connect to end. `true` if it became ready.
    async fn once(&self, stop: watch::Receiver<bool>) -> bool {
        let s = &self.spec;
        let profile = Profile::RelayLeg {
            turbo: s.turbo,
            fast_open: false,
            source: s.source,
        };
        let timeout = Duration::from_millis(s.connect_ms);
        let mut sock = match dial::connect(s.addr, s.own_mark, profile, timeout).await {
            Ok(sock) => sock,
            Err(_) => {
                self.m
                    .refused
                    .with_label_values(&[&self.peer, "connect"])
                    .inc();
                return false;
            }
        };
        if let Some(cc) = &s.congestion {
            if let Err(e) = sockopt::set_congestion(&sock, cc) {
                tracing::warn!(peer = %self.peer, congestion = %cc, error = %e, "congestion control not set on lane");
            }
        }
        let _ = sockopt::set_notsent_lowat(&sock, NOTSENT_LOWAT);
        let mut h = leg::new_header(s.addr, leg::DEFAULT_HOP_LIMIT);
        h.leg = LegKind::Lane;
        if sock.write_all(&self.keys.seal(&h)).await.is_err() {
            self.m
                .refused
                .with_label_values(&[&self.peer, "reset"])
                .inc();
            return false;
        }
        let conn = LaneConn::new(Lane::new(Role::Initiator, self.cfg), self.m.clone());
        if let Some(g) = &self.pace {
            conn.pace_with(g.clone());
        }
        // Published in the slot once ready (flows only use ready lanes).
        let publish = {
            let conn = conn.clone();
            let slots = self.slots.clone();
            let slot = self.slot;
            let ready_g = self.m.ready.with_label_values(&[&self.peer]);
            async move {
                conn.wait_ready().await;
                lock(&slots)[slot] = Some(conn.clone());
                ready_g.inc();
            }
        };
        let run = conn.clone().run(sock, None, stop);
        tokio::pin!(run);
        let settings_wait = Duration::from_millis(s.connect_ms.max(1000));
        let published = tokio::select! {
            _ = publish => true,
            r = &mut run => {
                self.m.refused.with_label_values(&[&self.peer, refusal(r.0)]).inc();
                tracing::warn!(peer = %self.peer, reason = r.0, "lane refused before SETTINGS (v1 peer?): flows use per-flow legs");
                return false;
            }
            _ = tokio::time::sleep(settings_wait) => false,
        };
        if !published {
            self.m
                .refused
                .with_label_values(&[&self.peer, "timeout"])
                .inc();
            return false;
        }
        let (reason, _) = run.await;
        lock(&self.slots)[self.slot] = None;
        self.m.ready.with_label_values(&[&self.peer]).dec();
        tracing::info!(peer = %self.peer, reason, "lane ended");
        true
    }
}

fn refusal(reason: &str) -> &'static str {
    match reason {
        "reset" | "eof" => "reset",
        "stopped" => "stopped",
        "io_error" => "io_error",
        _ => "bad_frame",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
