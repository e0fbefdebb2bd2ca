//! The watch loop: read the keys this relay watches at one revision, apply
//! them, then follow their changes; every change is rendered on the local
//! file ([`splitway_core::fleet::render`]) and applied through
//! [`crate::control::Control`] (`Change::Replace`), all or nothing: one
//! owner serializes it with the admin API's changes. A refused state names its
//! etcd key (log line and `splitway_fleet_refused_total{key}`) and the
//! previous state stays. When etcd goes away the relay keeps forwarding
//! with what it runs, retries with backoff (100 ms doubling to 2 s, jittered) and
//! logs at most once per 30 s; when etcd returns it re-reads everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions, WatchResponse};
use splitway_core::config::Config;
use splitway_core::fleet::{render, FleetConf, Layout, View};
use tokio::sync::watch;

use super::presence::Status;
use super::{cache, connect_to, read_view, within, FleetIoError, FleetMetrics, Start};
use crate::control::{Change, Control};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short enough that a leader election (about a second) costs at most
/// about two seconds more; each wait is jittered ±25 % so a fleet does
/// not retry in step.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const LOG_EVERY: Duration = Duration::from_secs(30);
/// Events arriving this close together are applied as one change (the
/// parts of one transaction come as one response per watched prefix).
const BATCH: Duration = Duration::from_millis(10);

struct Follower {
    control: Control,
    conf: FleetConf,
    layout: Layout,
    base: Config,
    /// What etcd holds now, as far as this relay knows.
    view: View,
    /// What was last applied.
    applied: View,
    metrics: FleetMetrics,
    status: Arc<Status>,
    /// The etcd member this relay talks to (index into `conf.endpoints`).
    member: usize,
}

impl Follower {
    /// Apply the current view if it differs from what runs.
    async fn apply(&mut self) {
        if self.view.kv == self.applied.kv {
            self.applied.revision = self.view.revision;
            return;
        }
        let result = match render(&self.base, &self.layout, &self.view) {
            Ok(cfg) => self
                .control
                .apply(Change::Replace(Box::new(cfg)))
                .await
                .map(|_| ())
                .map_err(|e| (format!("control {}", e.field()), e.reason())),
            Err(e) => Err((e.key, e.reason)),
        };
        match result {
            Ok(()) => {
                self.applied = self.view.clone();
                self.metrics.applied.inc();
                self.metrics.revision.set(self.view.revision);
                if let Err(e) = cache::store(&self.conf.cache_path, &self.applied) {
                    tracing::warn!(error = %e, "fleet: cannot write the cache");
                }
                tracing::info!(revision = self.view.revision, "fleet: state applied");
                self.status.set(self.view.revision, None);
            }
            Err((key, reason)) => {
                self.metrics.refused.with_label_values(&[&key]).inc();
                tracing::error!(key = %key, reason = %reason, revision = self.view.revision,
                    "fleet: value refused; the previous state stays");
                self.status
                    .set(self.applied.revision, Some(format!("{key}: {reason}")));
            }
        }
    }

    fn on_event(&mut self, r: &WatchResponse) {
        for ev in r.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match ev.event_type() {
                EventType::Put => {
                    let v = kv.value_str().unwrap_or("\u{fffd}not UTF-8");
                    self.view.kv.insert(key.to_string(), v.to_string());
                }
                EventType::Delete => {
                    self.view.kv.remove(key);
                }
            }
        }
        if let Some(h) = r.header() {
            self.view.revision = self.view.revision.max(h.revision());
        }
    }

    /// One connection to etcd: read everything, then follow the watch
    /// until it breaks. `connected` is called once the read succeeded.
    async fn session(&mut self, connected: &mut (dyn FnMut() + Send)) -> Result<(), FleetIoError> {
        let timeout = Duration::from_millis(self.conf.connect_timeout_ms);
        let endpoint = &self.conf.endpoints[self.member % self.conf.endpoints.len()];
        let mut client = connect_to(&self.conf, endpoint).await?;
        let view = read_view(&mut client, &self.layout, &self.base.node.name, timeout).await?;
        let from = view.revision + 1;
        self.view = view;
        let opts = || Some(WatchOptions::new().with_prefix().with_start_revision(from));
        let prefixes = self.layout.watched(&self.base.node.name);
        let mut ws = within(timeout, client.watch(prefixes[0].as_str(), opts())).await?;
        for p in &prefixes[1..] {
            within(timeout, ws.watch(p.as_str(), opts())).await?;
        }
        connected();
        self.apply().await;
        loop {
            let r = ws
                .message()
                .await?
                .ok_or_else(|| FleetIoError::Protocol("the watch stream ended".into()))?;
            self.check(&r)?;
            self.on_event(&r);
            // Take what else is already on its way, then apply once.
            while let Ok(next) = tokio::time::timeout(BATCH, ws.message()).await {
                let r =
                    next?.ok_or_else(|| FleetIoError::Protocol("the watch stream ended".into()))?;
                self.check(&r)?;
                self.on_event(&r);
            }
            self.apply().await;
        }
    }

    fn check(&self, r: &WatchResponse) -> Result<(), FleetIoError> {
        if r.canceled() {
            return Err(FleetIoError::Protocol(format!(
                "watch cancelled (compacted at {}): {}",
                r.compact_revision(),
                r.cancel_reason()
            )));
        }
        Ok(())
    }
}

/// Follow etcd until the relay stops.
pub async fn run(
    control: Control,
    conf: FleetConf,
    start: Start,
    metrics: FleetMetrics,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut f = Follower {
        control,
        layout: conf.layout(),
        conf,
        base: start.base,
        applied: start.view.clone(),
        view: start.view,
        metrics,
        status,
        member: 0,
    };
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    let mut failures = 0u64;
    loop {
        let metrics = f.metrics.clone();
        let mut was_down = down_since.take();
        let mut on_connected = || {
            metrics.connected.set(1);
            metrics.from_cache.set(0);
            backoff = BACKOFF_MIN;
            if let Some(t) = was_down.take() {
                tracing::info!(
                    down_secs = t.elapsed().as_secs(),
                    failures,
                    "fleet: etcd reachable again; resynced"
                );
                failures = 0;
                last_log = None;
            }
        };
        let r = tokio::select! {
            r = f.session(&mut on_connected) => r,
            _ = stop.changed() => return,
        };
        // The session ended: an etcd error or a broken watch. Next time,
        // the next member.
        f.member = f.member.wrapping_add(1);
        down_since = Some(was_down.unwrap_or_else(Instant::now));
        f.metrics.connected.set(0);
        f.metrics.etcd_errors.inc();
        failures += 1;
        let e = match r {
            Err(e) => e,
            Ok(()) => FleetIoError::Protocol("session ended".into()),
        };
        if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(error = %e, failures, revision = f.applied.revision,
                retry_ms = backoff.as_millis() as u64,
                "fleet: etcd unavailable; forwarding goes on with the last applied state");
            last_log = Some(Instant::now());
        }
        let wait = backoff.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
