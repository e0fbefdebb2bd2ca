//! Fleet mode: a relay with a `[fleet]` section takes its peers, routes,
//! allow list, feature switches, pool watermarks and leg keys from etcd,
//! watches them, and reports itself there under a lease.
//!
//! - [`bootstrap`]: the state a relay starts with (etcd, else the local
//!   cache, else the file), before its listeners open.
//! - [`sync`]: the watch loop; every change goes through
//!   [`crate::control::Control`] (`Change::Replace`), the admin API's
//!   all-or-nothing path.
//! - [`presence`]: the leased `P/presence/NODE` record.
//! - [`cache`]: the last applied state on disk, written atomically.
//! - [`ops`]: what `splitway ctl fleet` does (list, rotate the leg key).
//!
//! The pure part (layout, rendering, validation) is
//! [`splitway_core::fleet`]. When etcd fails, nothing here stops
//! forwarding: the last applied state stays, and the loops retry with
//! backoff and rate-limited logs.

pub mod cache;
pub mod ops;
pub mod presence;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use splitway_core::config::Config;
use splitway_core::fleet::{render, FleetConf, Layout, View};
use tokio::sync::watch;

use crate::control::Control;
use crate::state::Shared;

/// Talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetIoError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    #[error("fleet.{key}: {reason}")]
    Conf { key: &'static str, reason: String },
    #[error("etcd: {0}")]
    Protocol(String),
}

/// Connect to the first of the fleet's etcd members that answers (a read
/// its status), trying them in order; for short-lived uses (start, `ctl`).
pub async fn connect(conf: &FleetConf) -> Result<Client, FleetIoError> {
    let timeout = Duration::from_millis(conf.connect_timeout_ms);
    let mut last = FleetIoError::Protocol("no endpoints".into());
    for e in &conf.endpoints {
        let probe = async {
            let mut c = connect_to(conf, e).await?;
            // Maintenance status: answered to any user (a range read would
            // need a permission the caller may lack: relays read only
            // P/auth/, P/all/ and P/node/).
            within(timeout, c.status()).await?;
            Ok::<_, FleetIoError>(c)
        };
        match probe.await {
            Ok(c) => return Ok(c),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Connect to one etcd member (`endpoint`) with the fleet's TLS and
/// credentials. The long-lived loops hold one member at a time and move to
/// the next when it fails: a dead member costs one failed attempt, and a
/// watch never waits on a member that is gone.
pub async fn connect_to(conf: &FleetConf, endpoint: &str) -> Result<Client, FleetIoError> {
    let read = |key: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| FleetIoError::Conf {
            key,
            reason: format!("{}: {e}", p.display()),
        })
    };
    let timeout = Duration::from_millis(conf.connect_timeout_ms);
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(pw)) = (&conf.user, &conf.password_file) {
        let pw = String::from_utf8(read("password_file", pw)?).map_err(|_| FleetIoError::Conf {
            key: "password_file",
            reason: "not UTF-8".into(),
        })?;
        // etcd's auth tokens expire (simple tokens after 5 idle minutes).
        opts = opts
            .with_user(user.clone(), pw.trim().to_string())
            .with_auto_token_refresh(true);
    }
    if let Some(ca) = &conf.ca_file {
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read("ca_file", ca)?));
        if let (Some(c), Some(k)) = (&conf.cert_file, &conf.key_file) {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("cert_file", c)?,
                read("key_file", k)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    within(timeout, Client::connect([endpoint], Some(opts))).await
}

/// Run an etcd call with a deadline (a member may hang, not just fail).
pub async fn within<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetIoError> {
    match tokio::time::timeout(d, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FleetIoError::Timeout(d)),
    }
}

/// Read every key relay `node` watches, at one revision (one transaction).
pub async fn read_view(
    client: &mut Client,
    layout: &Layout,
    node: &str,
    timeout: Duration,
) -> Result<View, FleetIoError> {
    let ops: Vec<TxnOp> = layout
        .watched(node)
        .iter()
        .map(|p| TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix())))
        .collect();
    let resp = within(timeout, client.txn(Txn::new().and_then(ops))).await?;
    let revision = resp
        .header()
        .map(|h| h.revision())
        .ok_or_else(|| FleetIoError::Protocol("a response without a header".into()))?;
    let mut view = View {
        revision,
        ..View::default()
    };
    for r in resp.op_responses() {
        if let TxnOpResponse::Get(g) = r {
            for kv in g.kvs() {
                let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) else {
                    continue; // not UTF-8: refused when rendered? It cannot be named; skip
                };
                view.kv.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(view)
}

/// The fleet's metrics, registered with the relay's.
#[derive(Clone)]
pub struct FleetMetrics {
    /// Fleet states applied.
    pub applied: IntCounter,
    /// Fleet states refused, by the etcd key named.
    pub refused: IntCounterVec,
    /// Failed etcd calls and broken watches.
    pub etcd_errors: IntCounter,
    /// 1 while the watch is established.
    pub connected: IntGauge,
    /// etcd revision of the applied state.
    pub revision: IntGauge,
    /// 1 while the running state came from the local cache and etcd has
    /// not been reached since the start.
    pub from_cache: IntGauge,
}

impl FleetMetrics {
    pub fn new(m: &crate::metrics::Metrics) -> FleetMetrics {
        let r = m.registry();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("constant metric name");
            let _ = r.register(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("constant metric name");
            let _ = r.register(Box::new(g.clone()));
            g
        };
        let refused = IntCounterVec::new(
            Opts::new(
                "splitway_fleet_refused_total",
                "Fleet states refused (previous state kept), by the etcd key at fault",
            ),
            &["key"],
        )
        .expect("constant metric name");
        let _ = r.register(Box::new(refused.clone()));
        FleetMetrics {
            applied: counter("splitway_fleet_applied_total", "Fleet states applied"),
            refused,
            etcd_errors: counter(
                "splitway_fleet_etcd_errors_total",
                "Failed etcd calls and broken watches",
            ),
            connected: gauge(
                "splitway_fleet_connected",
                "1 while the fleet watch on etcd is established",
            ),
            revision: gauge(
                "splitway_fleet_revision",
                "etcd revision of the applied fleet state",
            ),
            from_cache: gauge(
                "splitway_fleet_from_cache",
                "1 while running the cached state and etcd not reached since start",
            ),
        }
    }
}

/// Where the starting state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Etcd,
    Cache,
    File,
}

/// The starting point of a fleet relay.
pub struct Start {
    /// The config file as read: what stays local, and the base every
    /// fleet state is rendered on.
    pub base: Config,
    /// The view applied (empty if none).
    pub view: View,
    pub source: Source,
}

/// Decide the state a fleet relay starts with: etcd if it answers within
/// `fleet.connect_timeout_ms`, else the local cache, else the file alone.
/// Returns the config to start with and what [`spawn`] needs.
pub async fn bootstrap(file: Config) -> (Config, Start) {
    let Some(conf) = file.fleet.clone() else {
        return (
            file.clone(),
            Start {
                base: file,
                view: View::default(),
                source: Source::File,
            },
        );
    };
    let layout = conf.layout();
    let timeout = Duration::from_millis(conf.connect_timeout_ms);
    let from_etcd = async {
        let mut c = connect(&conf).await?;
        read_view(&mut c, &layout, &file.node.name, timeout).await
    };
    match from_etcd.await {
        Ok(view) => match render(&file, &layout, &view) {
            Ok(cfg) => {
                if let Err(e) = cache::store(&conf.cache_path, &view) {
                    tracing::warn!(error = %e, "fleet: cannot write the cache");
                }
                tracing::info!(revision = view.revision, "fleet: starting from etcd");
                return (
                    cfg,
                    Start {
                        base: file,
                        view,
                        source: Source::Etcd,
                    },
                );
            }
            Err(e) => tracing::error!(key = %e.key, reason = %e.reason,
                "fleet: etcd's state refused at start; trying the cache"),
        },
        Err(e) => {
            tracing::warn!(error = %e, "fleet: etcd not reachable at start; trying the cache")
        }
    }
    match cache::load(&conf.cache_path) {
        Ok(Some(view)) => match render(&file, &layout, &view) {
            Ok(cfg) => {
                tracing::info!(revision = view.revision, path = %conf.cache_path.display(),
                    "fleet: starting from the local cache");
                return (
                    cfg,
                    Start {
                        base: file,
                        view,
                        source: Source::Cache,
                    },
                );
            }
            Err(e) => tracing::error!(key = %e.key, reason = %e.reason, "fleet: cache refused"),
        },
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "fleet: cannot read the cache"),
    }
    tracing::warn!("fleet: no fleet state yet; starting from the config file alone");
    (
        file.clone(),
        Start {
            base: file,
            view: View::default(),
            source: Source::File,
        },
    )
}

/// Start the watch loop and the presence record.
pub fn spawn(shared: Arc<Shared>, control: Control, start: Start, stop: watch::Receiver<bool>) {
    let Some(conf) = start.base.fleet.clone() else {
        return;
    };
    let metrics = FleetMetrics::new(&shared.metrics);
    metrics
        .from_cache
        .set(i64::from(start.source == Source::Cache));
    metrics.revision.set(start.view.revision);
    let status = Arc::new(presence::Status::new(&start.view));
    tokio::spawn(sync::run(
        control,
        conf.clone(),
        start,
        metrics,
        status.clone(),
        stop.clone(),
    ));
    tokio::spawn(presence::run(shared, conf, status, stop));
}
