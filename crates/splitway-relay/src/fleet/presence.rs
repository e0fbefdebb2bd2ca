//! This relay's record under `P/presence/NODE`, attached to a lease: its
//! address, version, features, leg key ids, the fleet revision it runs,
//! the last value it refused, and per peer the pool state and the RTT the
//! kernel measured on a pooled leg. Kept alive every TTL/3; re-written at
//! once when the applied state changes, else at most every 30 s. When the
//! relay dies the lease expires and the record goes with it (within the
//! TTL); a relay that stops revokes its lease at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, PutOptions};
use splitway_core::fleet::{FleetConf, PeerHealth, Presence, View};
use tokio::sync::{watch, Notify};

use super::{connect_to, within, FleetIoError};
use crate::state::Shared;

/// What the watch loop tells the presence record.
pub struct Status {
    inner: Mutex<(i64, Option<String>)>,
    changed: Notify,
}

impl Status {
    pub fn new(view: &View) -> Status {
        Status {
            inner: Mutex::new((view.revision, None)),
            changed: Notify::new(),
        }
    }

    /// The revision applied and the last refusal (`None`: the last change
    /// was applied).
    pub fn set(&self, revision: i64, refused: Option<String>) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = (revision, refused);
        self.changed.notify_one();
    }

    fn get(&self) -> (i64, Option<String>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The record as it is now.
pub fn record(shared: &Shared, status: &Status) -> Presence {
    let snap = shared.snapshot();
    let cfg = &snap.cfg;
    let f = &cfg.features;
    let (revision, refused) = status.get();
    Presence {
        node: cfg.node.name.clone(),
        addr: cfg.relay.as_ref().map(|r| r.listen.to_string()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        features: [
            ("early_syn", f.early_syn),
            ("worker_pools", f.worker_pools),
            ("conn_pool", f.conn_pool),
            ("turbo_start", f.turbo_start),
            ("fast_open", f.fast_open),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        key_ids: cfg
            .auth
            .as_ref()
            .map(|a| a.keys.iter().map(|k| k.id).collect())
            .unwrap_or_default(),
        send_key: snap.keys.as_ref().map(|k| k.send_key()),
        revision,
        refused,
        peers: cfg
            .peers
            .iter()
            .map(|p| {
                let pool = shared.pools.get(&p.name);
                PeerHealth {
                    name: p.name.clone(),
                    addr: p.addr.to_string(),
                    rtt_us: pool.as_ref().and_then(|l| l.measured_rtt_us()),
                    pool_idle: pool.as_ref().map(|l| l.idle_count()).unwrap_or(0),
                    pool_low: p.pool_low,
                    pool_high: p.pool_high,
                }
            })
            .collect(),
        updated: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// The parts whose change is worth a write at once (not RTT or time).
fn essence(p: &Presence) -> Presence {
    let mut p = p.clone();
    p.updated = 0;
    for h in &mut p.peers {
        h.rtt_us = None;
        h.pool_idle = 0;
    }
    p
}

const REFRESH: Duration = Duration::from_secs(30);

async fn put(
    client: &mut Client,
    key: &str,
    p: &Presence,
    lease: i64,
    t: Duration,
) -> Result<(), FleetIoError> {
    let body = serde_json::to_string(p).map_err(|e| FleetIoError::Protocol(e.to_string()))?;
    within(
        t,
        client.put(key, body, Some(PutOptions::new().with_lease(lease))),
    )
    .await?;
    Ok(())
}

async fn session(
    shared: &Shared,
    conf: &FleetConf,
    endpoint: &str,
    status: &Status,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), FleetIoError> {
    let t = Duration::from_millis(conf.connect_timeout_ms);
    let key = conf.layout().presence(&shared.snapshot().cfg.node.name);
    let mut client = connect_to(conf, endpoint).await?;
    let ttl = conf.lease_ttl_secs as i64;
    let lease = within(t, client.lease_grant(ttl, None)).await?.id();
    let (mut keeper, mut answers) = within(t, client.lease_keep_alive(lease)).await?;
    let mut last = record(shared, status);
    put(&mut client, &key, &last, lease, t).await?;
    let mut written = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(conf.lease_ttl_secs * 1000 / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                within(t, keeper.keep_alive()).await?;
                let a = within(t, answers.message()).await?
                    .ok_or_else(|| FleetIoError::Protocol("lease keep-alive stream ended".into()))?;
                if a.ttl() <= 0 {
                    return Err(FleetIoError::Protocol("the presence lease expired".into()));
                }
                let now = record(shared, status);
                if essence(&now) != essence(&last) || written.elapsed() >= REFRESH {
                    put(&mut client, &key, &now, lease, t).await?;
                    last = now;
                    written = Instant::now();
                }
            }
            _ = status.changed.notified() => {
                let now = record(shared, status);
                put(&mut client, &key, &now, lease, t).await?;
                last = now;
                written = Instant::now();
            }
            _ = stop.changed() => {
                // Leave the fleet at once rather than after the TTL.
                let _ = within(Duration::from_secs(1), client.lease_revoke(lease)).await;
                return Ok(());
            }
        }
    }
}

/// Keep the record alive until the relay stops; retry with backoff.
pub async fn run(
    shared: Arc<Shared>,
    conf: FleetConf,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut member = 0usize;
    loop {
        let began = Instant::now();
        let endpoint = &conf.endpoints[member % conf.endpoints.len()];
        member = member.wrapping_add(1);
        match session(&shared, &conf, endpoint, &status, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "fleet: presence session ended"),
        }
        if *stop.borrow() {
            return;
        }
        if began.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
