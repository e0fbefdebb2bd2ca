//! What every connection task of one relay shares: the current config
//! snapshot (routes, allow list, keys), the replay guard, metrics, the
//! connection limit and the count of active flows.
//!
//! A connection takes a [`Snapshot`] when it starts and keeps it, so a
//! reload changes new connections only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use splitway_core::auth::{KeyRing, ReplayGuard};
use splitway_core::config::Config;
use splitway_core::pairing::Pending;
use splitway_core::route::{AllowList, RouteTable};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::pool::Pools;
use crate::resources::Resources;

use crate::forward::FlowTimeouts;
use crate::metrics::Metrics;

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

/// State shared by all tasks of one relay.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// Pre-established legs per peer.
    pub pools: Pools,
    /// Buffers and pipes kept ready.
    pub resources: Arc<Resources>,
    /// Early-SYN legs waiting for their client's accept. `None` is a
    /// tombstone: the client was accepted before its SYN reached the tap,
    /// so a late SYN report must not start a leg nobody will claim.
    pub pending: Pending<Option<JoinHandle<std::io::Result<TcpStream>>>>,
    /// Inbound legs waiting for their header (bounded).
    pub waiting_legs: AtomicUsize,
    pub replay: Mutex<ReplayGuard>,
    pub metrics: Metrics,
    pub limit: Arc<Semaphore>,
    active: AtomicUsize,
    idle_notify: Notify,
}

impl Shared {
    pub fn new(cfg: Config, metrics: Metrics, pools: Pools, resources: Arc<Resources>) -> Shared {
        let (window, cap) = cfg
            .auth
            .as_ref()
            .map(|a| (a.max_skew_ms, a.replay_capacity))
            .unwrap_or((30_000, 1_000_000));
        let limit = Arc::new(Semaphore::new(cfg.limits.max_connections));
        let l = &cfg.limits;
        let pending = Pending::new(
            l.early_syn_pending_total,
            l.early_syn_pending_per_source,
            l.early_syn_timeout_ms,
        );
        metrics
            .engine
            .with_label_values(&[cfg.node.engine.as_str()])
            .set(1);
        Shared {
            snapshot: RwLock::new(Arc::new(Snapshot::new(cfg))),
            pools,
            resources,
            pending,
            waiting_legs: AtomicUsize::new(0),
            replay: Mutex::new(ReplayGuard::new(window, cap)),
            metrics,
            limit,
            active: AtomicUsize::new(0),
            idle_notify: Notify::new(),
        }
    }

    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the snapshot (reload); existing connections keep theirs.
    pub fn replace(&self, cfg: Config) {
        let snap = Arc::new(Snapshot::new(cfg));
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
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
