//! What every connection task of one relay shares: the current config
//! snapshot (routes, allow list, keys), pools, the replay guard, metrics,
//! the connection limit and the registry of live flows. Kernel state
//! (routes, queue rules) has its own owner, [`crate::kernel`].
//!
//! A connection takes a [`Snapshot`] when it starts and keeps it, so a
//! reload or an admin change affects new connections only. Changes come
//! only through [`crate::control::Control`], which calls
//! [`Shared::install`] once the kernel state is in place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use splitway_core::auth::{KeyRing, ReplayGuard};
use splitway_core::config::Config;
use splitway_core::pairing::Pending;
use splitway_core::route::{AllowList, RouteTable};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};

use crate::forward::FlowTimeouts;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::resources::Resources;

/// An immutable view of the config, with its derived tables.
#[derive(Debug)]
pub struct Snapshot {
    pub cfg: Config,
    pub routes: RouteTable,
    pub allow: AllowList,
    pub keys: Option<KeyRing>,
}

impl Snapshot {
    pub fn new(cfg: Config) -> Snapshot {
        Snapshot {
            routes: cfg.route_table(),
            allow: cfg.allow_list(),
            keys: cfg.key_ring(),
            cfg,
        }
    }

    pub fn flow_timeouts(&self) -> FlowTimeouts {
        FlowTimeouts {
            idle: Duration::from_secs(self.cfg.timeouts.idle_secs),
            half_close: Duration::from_secs(self.cfg.timeouts.half_close_secs),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeouts.connect_ms)
    }
}

/// A live split connection, for the admin API.
pub struct FlowEntry {
    pub kind: &'static str,
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    pub started: SystemTime,
    /// The accepted socket and the next hop.
    pub down: TcpStream,
    pub up: TcpStream,
}

impl FlowEntry {
    pub fn new(
        kind: &'static str,
        peer: SocketAddr,
        dst: SocketAddr,
        down: TcpStream,
        up: TcpStream,
    ) -> FlowEntry {
        FlowEntry {
            kind,
            peer,
            dst,
            started: SystemTime::now(),
            down,
            up,
        }
    }
}

/// What the early-SYN tap started for a client's SYN.
pub enum EarlyHop {
    /// A relay leg (pooled or fresh), or the server itself for a `direct`
    /// route.
    Socket(TcpStream, crate::metrics::LegKind),
    /// A stream on a warm lane to a `legs = "mux"` peer: its OPEN went out
    /// at SYN time, so the far relay connects onward during the client's
    /// handshake. Dropped unclaimed, the stream is reset.
    Stream(crate::lane::conn::StreamHandle),
}

/// The early-SYN pending map: each entry waits for the next hop the tap
/// started. A client accepted before its SYN reached the tap leaves a mark
/// instead, so a late SYN report starts nothing nobody will claim.
pub type EarlyLegs = Pending<tokio::sync::oneshot::Receiver<std::io::Result<EarlyHop>>>;

/// State shared by all tasks of one relay.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// The file SIGHUP and `ctl reload` read.
    pub config_path: Option<PathBuf>,
    pub pools: Pools,
    /// Warm multiplexed lanes to `legs = "mux"` peers.
    pub lanes: crate::lane::Lanes,
    pub resources: Arc<Resources>,
    pub pending: EarlyLegs,
    /// Inbound legs waiting for their header (bounded).
    pub waiting_legs: AtomicUsize,
    pub replay: Mutex<ReplayGuard>,
    pub metrics: Metrics,
    /// Stream modules: dedup stores per peer relay, module metrics.
    pub modules: crate::modules::ModuleState,
    pub limit: Arc<Semaphore>,
    /// Draining: new connections are refused, open ones finish.
    pub draining: AtomicBool,
    /// Shutdown's grace period is over: the flows still open are being cut,
    /// and end as `aborted` (not `reset`: the relay chose to).
    pub aborting: AtomicBool,
    pub started: SystemTime,
    /// Worker shards accepting connections (`--workers`), set at start.
    pub workers: AtomicUsize,
    /// Live flows in [`FLOW_SLOTS`] maps by flow id, so shards registering
    /// and ending flows at once rarely take the same lock.
    flows: Box<[FlowSlot]>,
    next_flow: AtomicU64,
    active: AtomicUsize,
    idle_notify: Notify,
    /// Flips when the daemon stops; background tasks watch it.
    pub stop: watch::Receiver<bool>,
}

/// One slot of the flow registry: live flows by id.
type FlowSlot = Mutex<HashMap<u64, Arc<FlowEntry>>>;

/// Maps the flow registry is split into (a power of two): a few per core
/// of a large machine; the readers (`ctl connections`, shutdown) merge.
const FLOW_SLOTS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new(
        cfg: Config,
        config_path: Option<PathBuf>,
        metrics: Metrics,
        resources: Arc<Resources>,
        stop: watch::Receiver<bool>,
    ) -> Shared {
        let (window, cap) = cfg
            .auth
            .as_ref()
            .map(|a| (a.max_skew_ms, a.replay_capacity))
            .unwrap_or((30_000, 1_000_000));
        let limit = Arc::new(Semaphore::new(cfg.limits.max_connections));
        crate::forward::splice::set_quiet_blocked_input(cfg.node.quiet_blocked_input);
        metrics
            .engine
            .with_label_values(&[cfg.node.engine.as_str()])
            .set(1);
        let l = &cfg.limits;
        let pending = Pending::new(
            l.early_syn_pending_total,
            l.early_syn_pending_per_source,
            l.early_syn_timeout_ms,
        );
        Shared {
            pools: Pools::new(&metrics, &stop),
            lanes: crate::lane::Lanes::new(crate::lane::LaneMetrics::new(&metrics), &stop),
            modules: crate::modules::ModuleState::new(metrics.registry()),
            config_path,
            resources,
            pending,
            waiting_legs: AtomicUsize::new(0),
            replay: Mutex::new(ReplayGuard::new(window, cap)),
            metrics,
            limit,
            draining: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            started: SystemTime::now(),
            workers: AtomicUsize::new(1),
            flows: (0..FLOW_SLOTS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            next_flow: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            idle_notify: Notify::new(),
            snapshot: RwLock::new(Arc::new(Snapshot::new(cfg))),
            stop,
        }
    }

    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Make `cfg` (already validated, its kernel state in place) the
    /// running config: pools and worker pools follow it, then the snapshot
    /// new connections use. Only [`crate::control`] calls this.
    pub fn install(&self, cfg: Config) {
        self.pools.sync(&cfg);
        self.lanes.sync(&cfg);
        self.resources.set_enabled(cfg.features.worker_pools);
        crate::forward::splice::set_quiet_blocked_input(cfg.node.quiet_blocked_input);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot::new(cfg));
    }

    /// Mark a connection task as running until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Wait until no connection task is running.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle_notify.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Register a live flow; returns its id for [`Shared::unregister`].
    pub fn register(&self, e: Arc<FlowEntry>) -> u64 {
        let id = self.next_flow.fetch_add(1, Ordering::Relaxed);
        lock(self.flow_slot(id)).insert(id, e);
        id
    }

    pub fn unregister(&self, id: u64) {
        lock(self.flow_slot(id)).remove(&id);
    }

    fn flow_slot(&self, id: u64) -> &FlowSlot {
        &self.flows[id as usize & (FLOW_SLOTS - 1)]
    }

    /// Run `f` over the live flows (id order), every slot held meanwhile.
    pub fn with_flows<R>(&self, f: impl FnOnce(Vec<(&u64, &Arc<FlowEntry>)>) -> R) -> R {
        let slots: Vec<_> = self.flows.iter().map(lock).collect();
        let mut v: Vec<_> = slots.iter().flat_map(|m| m.iter()).collect();
        v.sort_by_key(|(id, _)| **id);
        f(v)
    }
}

/// Counts one running connection task.
pub struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle_notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flows registered across every slot of the registry are all listed,
    /// in id order, and the ended ones are gone.
    #[tokio::test]
    async fn the_flow_registry_lists_every_live_flow_in_id_order() {
        let shared = crate::flow::tests_support::shared();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let entry = || {
            let c = std::net::TcpStream::connect(a).unwrap();
            let (s, _) = l.accept().unwrap();
            let tokio = |t: std::net::TcpStream| {
                t.set_nonblocking(true).unwrap();
                TcpStream::from_std(t).unwrap()
            };
            Arc::new(FlowEntry::new("explicit", a, a, tokio(c), tokio(s)))
        };
        let ids: Vec<u64> = (0..3 * FLOW_SLOTS)
            .map(|_| shared.register(entry()))
            .collect();
        for id in ids.iter().step_by(3) {
            shared.unregister(*id);
        }
        let listed = shared.with_flows(|v| v.iter().map(|(id, _)| **id).collect::<Vec<_>>());
        let live: Vec<u64> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(listed, live);
    }
}
