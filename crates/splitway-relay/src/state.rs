//! What every connection task of one relay shares: the current config
//! snapshot (routes, allow list, keys), pools, the replay guard, metrics,
//! the connection limit, the registry of live flows, and the parts of the
//! kernel set up for features (turbo-start routes, SYN queue rules).
//!
//! A connection takes a [`Snapshot`] when it starts and keeps it, so a
//! reload or an admin change affects new connections only. [`Shared::apply`]
//! is the one way a new config takes effect.

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
use crate::syn_tap;
use crate::turbo::Turbo;

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

/// Early-SYN legs waiting for their client's accept. `None` is a tombstone:
/// the client was accepted before its SYN reached the tap, so a late SYN
/// report must not start a leg nobody will claim.
pub type EarlyLegs = Pending<tokio::sync::oneshot::Receiver<std::io::Result<TcpStream>>>;

/// State shared by all tasks of one relay.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// The file SIGHUP and `ctl reload` read.
    pub config_path: Option<PathBuf>,
    pub pools: Pools,
    pub resources: Arc<Resources>,
    pub pending: EarlyLegs,
    /// Inbound legs waiting for their header (bounded).
    pub waiting_legs: AtomicUsize,
    pub replay: Mutex<ReplayGuard>,
    pub metrics: Metrics,
    pub limit: Arc<Semaphore>,
    /// Draining: new connections are refused, open ones finish.
    pub draining: AtomicBool,
    pub started: SystemTime,
    flows: Mutex<HashMap<u64, Arc<FlowEntry>>>,
    next_flow: AtomicU64,
    active: AtomicUsize,
    idle_notify: Notify,
    turbo: Mutex<Option<Turbo>>,
    syn_rules: Mutex<Option<syn_tap::Rules>>,
    syn_queue: Mutex<Option<tokio::sync::mpsc::Receiver<splitway_core::pairing::FourTuple>>>,
    syn_queue_started: AtomicBool,
    /// Copies of the transparent listeners' fds, for TCP_SAVE_SYN (on
    /// while early SYN is on); dropped when the listeners close.
    transparent_listeners: Mutex<Vec<std::os::fd::OwnedFd>>,
    /// Signalled when the SYN queue is bound (at start, or when early SYN
    /// is first switched on at run time), for the task that serves it.
    syn_queue_ready: tokio::sync::Notify,
    /// Flips when the daemon stops; background tasks watch it.
    pub stop: watch::Receiver<bool>,
}

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
            config_path,
            resources,
            pending,
            waiting_legs: AtomicUsize::new(0),
            replay: Mutex::new(ReplayGuard::new(window, cap)),
            metrics,
            limit,
            draining: AtomicBool::new(false),
            started: SystemTime::now(),
            flows: Mutex::new(HashMap::new()),
            next_flow: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            idle_notify: Notify::new(),
            turbo: Mutex::new(None),
            syn_rules: Mutex::new(None),
            syn_queue: Mutex::new(None),
            syn_queue_started: AtomicBool::new(false),
            transparent_listeners: Mutex::new(Vec::new()),
            syn_queue_ready: tokio::sync::Notify::new(),
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

    /// Make `cfg` (already validated) the running config: kernel state for
    /// features first, then pools, then the snapshot new connections use.
    pub fn apply(&self, cfg: Config) -> Result<(), String> {
        // Turbo-start routes follow the peers and the switch.
        {
            let mut t = lock(&self.turbo);
            *t = None; // restore the old routes before pinning new ones
            if cfg.features.turbo_start && !cfg.peers.is_empty() {
                *t = Some(Turbo::install(&cfg));
            }
        }
        // The SYN queue is bound once; its rules come and go with the switch.
        {
            // Only SYNs that may be paired are kept by the kernel.
            for l in lock(&self.transparent_listeners).iter() {
                if let Err(e) = crate::sys::sockopt::set_save_syn(l, cfg.features.early_syn) {
                    tracing::warn!(error = %e, "TCP_SAVE_SYN on a transparent listener");
                }
            }
            let mut rules = lock(&self.syn_rules);
            *rules = None;
            if cfg.features.early_syn && !cfg.transparent.is_empty() {
                if !self.syn_queue_started.load(Ordering::SeqCst) {
                    let rx = syn_tap::start_queue(
                        &cfg,
                        self.metrics.early_syn.with_label_values(&["dropped"]),
                    )
                    .map_err(|e| e.to_string())?;
                    *lock(&self.syn_queue) = Some(rx);
                    self.syn_queue_started.store(true, Ordering::SeqCst);
                    self.syn_queue_ready.notify_one();
                }
                *rules = Some(syn_tap::install_rules(&cfg).map_err(|e| e.to_string())?);
            }
        }
        self.pools.sync(&cfg);
        self.resources.set_enabled(cfg.features.worker_pools);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot::new(cfg));
        Ok(())
    }

    /// The SYN channel, once, for the task that serves it: waits until
    /// the queue is bound (early SYN may be switched on only later).
    pub async fn take_syn_queue(
        &self,
    ) -> tokio::sync::mpsc::Receiver<splitway_core::pairing::FourTuple> {
        loop {
            if let Some(rx) = lock(&self.syn_queue).take() {
                return rx;
            }
            self.syn_queue_ready.notified().await;
        }
    }

    /// Remove kernel state (routes, queue rules) at exit.
    /// The transparent listeners (copies of their fds), whose TCP_SAVE_SYN
    /// follows the early-SYN switch; call before [`Shared::apply`].
    pub fn set_transparent_listeners(&self, fds: Vec<std::os::fd::OwnedFd>) {
        *lock(&self.transparent_listeners) = fds;
    }

    /// Drop the listener copies, so closing the listeners closes them.
    pub fn forget_listeners(&self) {
        lock(&self.transparent_listeners).clear();
    }

    pub fn teardown(&self) {
        *lock(&self.turbo) = None;
        *lock(&self.syn_rules) = None;
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
        lock(&self.flows).insert(id, e);
        id
    }

    pub fn unregister(&self, id: u64) {
        lock(&self.flows).remove(&id);
    }

    /// Run `f` over the live flows (id order).
    pub fn with_flows<R>(&self, f: impl FnOnce(Vec<(&u64, &Arc<FlowEntry>)>) -> R) -> R {
        let flows = lock(&self.flows);
        let mut v: Vec<_> = flows.iter().collect();
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
