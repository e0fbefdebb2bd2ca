//! Pools of pre-established relay legs, one per peer that a route uses
//! (as `via` or as a `backup`).
//!
//! Each pool keeps idle, connected legs between its watermarks
//! ([`splitway_core::pool::Watermarks`]), refilled by a background task, so
//! a connection to a peer costs no handshake on the long leg. Legs are
//! one-shot. A leg that died while idle (peer restarted, keep-alive failed,
//! idle timeout at the peer) is detected before use by a non-blocking peek
//! and never handed out; a sweep also discards dead and old legs every
//! second. Watermarks can be changed at run time. Refill results and
//! pools found all dead feed [`PeerHealth`], which failover reads.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use splitway_core::config::Config;
use splitway_core::pool::Watermarks;
use splitway_core::route::NextHop;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::dial::{self, Profile};
use crate::failover::PeerHealth;
use crate::metrics::Metrics;
use crate::sys::sockopt;
use splitway_core::failover::Backoff;

/// Idle legs older than this are replaced (peers time idle legs out at
/// `relay.idle_leg_timeout_secs`, 120 s by default).
pub const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

/// Pool metrics, labelled by peer.
#[derive(Clone)]
pub struct PoolMetrics {
    pub hits: IntCounterVec,
    pub misses: IntCounterVec,
    pub opened: IntCounterVec,
    pub open_failures: IntCounterVec,
    pub dead: IntCounterVec,
    pub idle: IntGaugeVec,
    pub low: IntGaugeVec,
    pub high: IntGaugeVec,
}

impl PoolMetrics {
    pub fn new(m: &Metrics) -> PoolMetrics {
        let r = m.registry();
        let c = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["peer"]).expect("static metric");
            let _ = r.register(Box::new(v.clone()));
            v
        };
        let g = |name: &str, help: &str| {
            let v = IntGaugeVec::new(Opts::new(name, help), &["peer"]).expect("static metric");
            let _ = r.register(Box::new(v.clone()));
            v
        };
        PoolMetrics {
            hits: c(
                "splitway_pool_hits_total",
                "Connections that got a pooled leg",
            ),
            misses: c(
                "splitway_pool_misses_total",
                "Connections that found the pool empty",
            ),
            opened: c(
                "splitway_pool_legs_opened_total",
                "Legs opened by the refill task",
            ),
            open_failures: c(
                "splitway_pool_open_failures_total",
                "Refill connects that failed",
            ),
            dead: c(
                "splitway_pool_dead_legs_total",
                "Idle legs found dead and discarded",
            ),
            idle: g("splitway_pool_idle_legs", "Idle legs ready now"),
            low: g("splitway_pool_low_watermark", "Low watermark"),
            high: g("splitway_pool_high_watermark", "High watermark"),
        }
    }
}

/// The pool of one peer.
pub struct LegPool {
    pub peer: String,
    pub addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    own_mark: u32,
    turbo: bool,
    connect_timeout: Duration,
    marks: Mutex<Watermarks>,
    idle: Mutex<VecDeque<(Instant, TcpStream)>>,
    opening: AtomicUsize,
    wake: Notify,
    m: PoolMetrics,
    health: Arc<PeerHealth>,
}

impl LegPool {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, TcpStream)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn watermarks(&self) -> Watermarks {
        *self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the watermarks; the refill task follows at once.
    pub fn set_watermarks(&self, w: Watermarks) {
        *self.marks.lock().unwrap_or_else(|p| p.into_inner()) = w;
        self.m
            .low
            .with_label_values(&[&self.peer])
            .set(w.low as i64);
        self.m
            .high
            .with_label_values(&[&self.peer])
            .set(w.high as i64);
        self.wake.notify_one();
    }

    /// Counters of this pool: (hits, misses, opened, open failures, dead).
    pub fn counters(&self) -> [u64; 5] {
        let p = [self.peer.as_str()];
        [
            self.m.hits.with_label_values(&p).get(),
            self.m.misses.with_label_values(&p).get(),
            self.m.opened.with_label_values(&p).get(),
            self.m.open_failures.with_label_values(&p).get(),
            self.m.dead.with_label_values(&p).get(),
        ]
    }

    /// Smoothed RTT (µs) measured on the newest idle leg, if any.
    pub fn measured_rtt_us(&self) -> Option<u32> {
        let idle = self.lock_idle();
        idle.back()
            .and_then(|(_, leg)| sockopt::tcp_info(leg).ok())
            .map(|i| i.rtt_us)
    }

    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    /// Take a live idle leg, newest first. Dead legs met on the way are
    /// discarded and counted.
    pub fn take(&self) -> Option<TcpStream> {
        let mut got = None;
        let mut dead = 0;
        {
            let mut idle = self.lock_idle();
            while let Some((_, leg)) = idle.pop_back() {
                if sockopt::idle_alive(&leg) {
                    got = Some(leg);
                    break;
                }
                dead += 1;
            }
            self.m
                .idle
                .with_label_values(&[&self.peer])
                .set(idle.len() as i64);
        }
        if dead > 0 {
            self.m.dead.with_label_values(&[&self.peer]).inc_by(dead);
            if got.is_none() {
                // Every idle leg died: the peer likely went away.
                self.health.failed(&self.peer);
            }
        }
        match got {
            Some(_) => self.m.hits.with_label_values(&[&self.peer]).inc(),
            None => self.m.misses.with_label_values(&[&self.peer]).inc(),
        }
        self.wake.notify_one();
        got
    }

    /// Discard dead, old and surplus idle legs.
    fn sweep(&self) {
        let w = self.watermarks();
        let mut dead = 0;
        let mut idle = self.lock_idle();
        idle.retain(|(since, leg)| {
            let ok = since.elapsed() < MAX_IDLE_AGE && sockopt::idle_alive(leg);
            if !ok {
                dead += 1;
            }
            ok
        });
        for _ in 0..w.to_close(idle.len()) {
            idle.pop_front();
        }
        self.m
            .idle
            .with_label_values(&[&self.peer])
            .set(idle.len() as i64);
        drop(idle);
        if dead > 0 {
            self.m.dead.with_label_values(&[&self.peer]).inc_by(dead);
        }
    }

    /// Keep the pool between its watermarks until `stop` flips.
    async fn refill_loop(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        mut retire: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            self.sweep();
            let n = self
                .watermarks()
                .to_open(self.idle_count(), self.opening.load(Ordering::SeqCst));
            let mut failed = false;
            if n > 0 {
                self.opening.fetch_add(n, Ordering::SeqCst);
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..n {
                    let me = self.clone();
                    tasks.spawn(async move {
                        let r = dial::connect(
                            me.addr,
                            me.own_mark,
                            Profile::RelayLeg {
                                turbo: me.turbo,
                                fast_open: false,
                                source: me.source,
                            },
                            me.connect_timeout,
                        )
                        .await;
                        me.opening.fetch_sub(1, Ordering::SeqCst);
                        match r {
                            Ok(leg) => {
                                me.health.ok(&me.peer);
                                me.m.opened.with_label_values(&[&me.peer]).inc();
                                let mut idle = me.lock_idle();
                                idle.push_back((Instant::now(), leg));
                                me.m.idle
                                    .with_label_values(&[&me.peer])
                                    .set(idle.len() as i64);
                                true
                            }
                            Err(_) => {
                                me.health.failed(&me.peer);
                                me.m.open_failures.with_label_values(&[&me.peer]).inc();
                                false
                            }
                        }
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    failed |= !r.unwrap_or(false);
                }
            }
            let wait = if failed {
                // The peer is down: retry with backoff, not in a loop.
                backoff.failed()
            } else {
                backoff.ok();
                Duration::from_secs(1)
            };
            tokio::select! {
                _ = self.wake.notified(), if !failed => {},
                _ = tokio::time::sleep(wait) => {},
                _ = stop.changed() => return,
                _ = retire.changed() => {
                    self.lock_idle().clear();
                    return;
                }
            }
        }
    }
}

/// A running pool and the switch that retires it.
type PoolHandle = (Arc<LegPool>, watch::Sender<bool>);

/// All pools of a relay, by peer name. [`Pools::sync`] brings them in line
/// with a config: pools for peers that routes use (when `conn_pool` is on),
/// retired pools for peers no longer used, new watermarks for the rest.
pub struct Pools {
    by_peer: RwLock<HashMap<String, PoolHandle>>,
    m: PoolMetrics,
    stop: watch::Receiver<bool>,
    /// Which peers recently failed to connect (also without a pool).
    pub health: Arc<PeerHealth>,
}

impl Pools {
    pub fn new(metrics: &Metrics, stop: &watch::Receiver<bool>) -> Pools {
        Pools {
            by_peer: RwLock::new(HashMap::new()),
            m: PoolMetrics::new(metrics),
            stop: stop.clone(),
            health: Arc::new(PeerHealth::default()),
        }
    }

    /// Start, retire or retune pools to match `cfg`.
    pub fn sync(&self, cfg: &Config) {
        let mut wanted: HashMap<String, &splitway_core::config::Peer> = HashMap::new();
        if cfg.features.conn_pool {
            // Backups too: a failover then finds legs ready.
            for route in cfg.route_table().routes() {
                for hop in route.hops() {
                    if let NextHop::Peer(name) = hop {
                        if let Some(peer) = cfg.peer(name) {
                            wanted.insert(name.clone(), peer);
                        }
                    }
                }
            }
        }
        let mut map = self.by_peer.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|name, (pool, retire)| {
            let keep = wanted.get(name).is_some_and(|p| {
                p.addr == pool.addr
                    && p.source == pool.source
                    && pool.turbo == cfg.features.turbo_start
            });
            if !keep {
                let _ = retire.send(true);
                pool.lock_idle().clear();
                self.m.idle.with_label_values(&[name]).set(0);
            }
            keep
        });
        for (name, peer) in wanted {
            let w = Watermarks::new(peer.pool_low, peer.pool_high);
            if let Some((pool, _)) = map.get(&name) {
                if pool.watermarks() != w {
                    pool.set_watermarks(w);
                }
                continue;
            }
            let pool = Arc::new(LegPool {
                peer: name.clone(),
                addr: peer.addr,
                source: peer.source,
                own_mark: cfg.firewall.own_mark,
                turbo: cfg.features.turbo_start,
                connect_timeout: Duration::from_millis(cfg.timeouts.connect_ms),
                marks: Mutex::new(w),
                idle: Mutex::new(VecDeque::new()),
                opening: AtomicUsize::new(0),
                wake: Notify::new(),
                m: self.m.clone(),
                health: self.health.clone(),
            });
            pool.set_watermarks(w);
            // Every series of the peer exists from the start, at 0.
            for c in [
                &self.m.hits,
                &self.m.misses,
                &self.m.opened,
                &self.m.open_failures,
                &self.m.dead,
            ] {
                c.with_label_values(&[&name]);
            }
            let (retire_tx, retire_rx) = watch::channel(false);
            tokio::spawn(pool.clone().refill_loop(self.stop.clone(), retire_rx));
            map.insert(name, (pool, retire_tx));
        }
    }

    pub fn get(&self, peer: &str) -> Option<Arc<LegPool>> {
        let map = self.by_peer.read().unwrap_or_else(|p| p.into_inner());
        map.get(peer).map(|(p, _)| p.clone())
    }

    pub fn all(&self) -> Vec<Arc<LegPool>> {
        let map = self.by_peer.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map.values().map(|(p, _)| p.clone()).collect();
        v.sort_by(|a, b| a.peer.cmp(&b.peer));
        v
    }
}
