//! Runtime control: every change an operator (admin API, SIGHUP,
//! `splitway ctl`) or a fleet store can make to a running relay, through
//! one owner.
//!
//! [`Control`] is a handle to one task that applies [`Change`]s one at a
//! time, so concurrent requests never lose one another's update. Each
//! change builds a whole new config from the running one, validates it like
//! a file on load, puts its kernel state in place ([`crate::kernel`], off
//! the runtime), and only then makes it the running config
//! ([`Shared::install`]). A refused change changes nothing; the error says
//! which field and why, typed ([`ControlError`]), so callers map it to a
//! status without reading its text. New connections see a change; existing
//! ones keep the snapshot they started with.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ipnet::IpNet;
use splitway_core::config::{Config, ConfigError, Peer, RouteConf};
use splitway_core::ports::PortRange;
use tokio::sync::{mpsc, oneshot};

use crate::kernel::{Kernel, KernelError};
use crate::state::Shared;

/// One change to a running relay.
#[derive(Debug)]
pub enum Change {
    /// Re-read the config file.
    Reload,
    /// Run this config (as if read from the file): for a fleet store.
    Replace(Box<Config>),
    /// A peer's pool watermarks.
    SetPool {
        peer: String,
        low: usize,
        high: usize,
    },
    /// Feature switches; absent ones stay.
    SetFeatures(FeaturePatch),
    /// Add a route, or replace the one with the same prefix and ports.
    PutRoute(RouteConf),
    /// Remove the route with this prefix (and ports, if given).
    DeleteRoute {
        prefix: IpNet,
        ports: Option<PortRange>,
    },
    /// Add a peer or replace the one with the same name.
    PutPeer(Peer),
    /// Remove a peer; refused while a route uses it.
    DeletePeer(String),
    /// Stop taking new connections; open ones finish.
    Drain,
}

/// A refused change: nothing was changed. [`ControlError::status`] is the
/// HTTP status the admin API answers with, [`ControlError::field`] the
/// request field (or config key) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A value in the request or the file is invalid.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// What the request names does not exist.
    #[error("{field}: {reason}")]
    NotFound { field: &'static str, reason: String },
    /// The change conflicts with the running relay: a key that only a
    /// restart changes, a peer routes still use, no config file to reload.
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    /// The config file could not be read or parsed.
    #[error("{0}")]
    File(#[source] ConfigError),
    /// The kernel state could not be changed (the running state stays).
    #[error("{0}")]
    Kernel(#[from] KernelError),
    /// The relay is stopping.
    #[error("the relay is stopping")]
    Stopped,
}

impl ControlError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ControlError::Invalid { .. } => 400,
            ControlError::NotFound { .. } => 404,
            ControlError::Conflict { .. } => 409,
            ControlError::File(ConfigError::Read { .. }) => 500,
            ControlError::File(_) => 400,
            ControlError::Kernel(_) => 500,
            ControlError::Stopped => 503,
        }
    }

    /// The request field or config key concerned.
    pub fn field(&self) -> &str {
        match self {
            ControlError::Invalid { field, .. } | ControlError::Conflict { field, .. } => field,
            ControlError::NotFound { field, .. } => field,
            ControlError::File(_) => "config",
            ControlError::Kernel(_) => "kernel",
            ControlError::Stopped => "relay",
        }
    }

    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlError::Invalid { .. } => "invalid",
            ControlError::NotFound { .. } => "not_found",
            ControlError::Conflict { .. } => "conflict",
            ControlError::File(_) => "file",
            ControlError::Kernel(_) => "kernel",
            ControlError::Stopped => "stopped",
        }
    }

    /// Why, without the field.
    pub fn reason(&self) -> String {
        match self {
            ControlError::Invalid { reason, .. }
            | ControlError::NotFound { reason, .. }
            | ControlError::Conflict { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A config error as a control error; `rename` maps a config key to the
/// request field it came from.
fn from_config(e: ConfigError, rename: impl Fn(&str) -> Option<&'static str>) -> ControlError {
    match e {
        ConfigError::Invalid { key, reason } => {
            let field = rename(&key).map(str::to_string).unwrap_or(key);
            invalid(field, reason)
        }
        other => ControlError::File(other),
    }
}

fn same_key(key: &str) -> Option<&'static str> {
    let _ = key;
    None
}

pub use splitway_core::config::FeaturePatch;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<String, ControlError>>,
}

/// Handle to the task that applies changes, one at a time. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    jobs: mpsc::Sender<Job>,
}

impl Control {
    /// Start the task. It ends when every handle is dropped.
    pub fn start(shared: Arc<Shared>, kernel: Arc<Kernel>) -> Control {
        let (tx, mut rx) = mpsc::channel::<Job>(256);
        let counted = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "splitway_control_changes_total",
                "Runtime changes (admin API, SIGHUP, ctl), by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let _ = shared
            .metrics
            .registry()
            .register(Box::new(counted.clone()));
        tokio::spawn(async move {
            let mut owner = Owner { shared, kernel };
            while let Some(job) = rx.recv().await {
                let r = owner.apply(job.change).await;
                let label = r.as_ref().map(|_| "applied").unwrap_or_else(|e| e.kind());
                counted.with_label_values(&[label]).inc();
                let _ = job.reply.send(r);
            }
        });
        Control { jobs: tx }
    }

    /// Apply one change after every change asked for before it; returns
    /// what was done, in words.
    pub async fn apply(&self, change: Change) -> Result<String, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job { change, reply: tx })
            .await
            .map_err(|_| ControlError::Stopped)?;
        rx.await.map_err(|_| ControlError::Stopped)?
    }
}

/// What the control task owns.
struct Owner {
    shared: Arc<Shared>,
    kernel: Arc<Kernel>,
}

impl Owner {
    async fn apply(&mut self, change: Change) -> Result<String, ControlError> {
        let running = self.shared.snapshot().cfg.clone();
        let (cfg, msg) = match change {
            Change::Reload => return self.reload(&running).await,
            Change::Replace(new) => {
                if let Some(key) = restart_only(&running, &new) {
                    return Err(needs_restart(key));
                }
                new.validate().map_err(|e| from_config(e, same_key))?;
                (*new, "config replaced".to_string())
            }
            Change::Drain => {
                self.shared.draining.store(true, Ordering::SeqCst);
                return Ok("draining: new connections are refused, open ones finish".into());
            }
            change => edit(running, change)?,
        };
        self.commit(cfg).await?;
        Ok(msg)
    }

    async fn reload(&mut self, running: &Config) -> Result<String, ControlError> {
        let path = self
            .shared
            .config_path
            .clone()
            .ok_or_else(|| ControlError::Conflict {
                field: "config".into(),
                reason: "this relay was started without a config file".into(),
            })?;
        let p = path.clone();
        if running.fleet.is_some() {
            // The file would replace the state etcd holds.
            return Err(ControlError::Conflict {
                field: "fleet".into(),
                reason: "fleet mode: the running state comes from etcd; change it there (restart for local keys)".into(),
            });
        }
        let new = tokio::task::spawn_blocking(move || Config::load(&p))
            .await
            .map_err(|_| ControlError::Stopped)?
            .map_err(|e| from_config(e, same_key))?;
        if let Some(key) = restart_only(running, &new) {
            return Err(needs_restart(key));
        }
        self.commit(new).await?;
        Ok(format!("reloaded {}", path.display()))
    }

    /// Kernel state first (nothing changes if it fails), then the config.
    async fn commit(&mut self, cfg: Config) -> Result<(), ControlError> {
        crate::lane::check_congestion(&cfg).map_err(|(key, reason)| invalid(key, reason))?;
        self.kernel.apply(&cfg).await?;
        self.shared.install(cfg);
        Ok(())
    }
}

fn needs_restart(key: &str) -> ControlError {
    ControlError::Conflict {
        field: key.into(),
        reason: "changed, but only takes effect after a restart".into(),
    }
}

/// Apply an edit to a copy of the running config and validate it.
fn edit(mut cfg: Config, change: Change) -> Result<(Config, String), ControlError> {
    let msg = match change {
        Change::SetPool { peer, low, high } => {
            let Some(p) = cfg.peers.iter_mut().find(|p| p.name == peer) else {
                return Err(ControlError::NotFound {
                    field: "peer",
                    reason: format!("no peer named \"{peer}\""),
                });
            };
            p.pool_low = low;
            p.pool_high = high;
            cfg.validate().map_err(|e| {
                from_config(e, |k| {
                    if k.ends_with("pool_low") {
                        Some("low")
                    } else if k.ends_with("pool_high") {
                        Some("high")
                    } else {
                        None
                    }
                })
            })?;
            "pool watermarks changed"
        }
        Change::SetFeatures(p) => {
            p.apply(&mut cfg.features);
            cfg.validate().map_err(|e| from_config(e, same_key))?;
            "features changed for new connections"
        }
        Change::PutRoute(r) => {
            let prefix = r.prefix.trunc();
            cfg.routes
                .retain(|x| !(x.prefix.trunc() == prefix && x.ports == r.ports));
            cfg.routes.push(r);
            cfg.validate().map_err(|e| {
                from_config(e, |k| {
                    if k.starts_with("route[") && k.contains(".backup") {
                        Some("backup")
                    } else if k.starts_with("route[") {
                        Some("via")
                    } else {
                        None
                    }
                })
            })?;
            "route set"
        }
        Change::DeleteRoute { prefix, ports } => {
            let before = cfg.routes.len();
            cfg.routes.retain(|x| {
                !(x.prefix.trunc() == prefix.trunc() && ports.is_none_or(|p| p == x.ports))
            });
            if cfg.routes.len() == before {
                return Err(ControlError::NotFound {
                    field: "prefix",
                    reason: format!("no route for {prefix}"),
                });
            }
            cfg.validate().map_err(|e| from_config(e, same_key))?;
            "route removed"
        }
        Change::PutPeer(p) => {
            cfg.peers.retain(|x| x.name != p.name);
            cfg.peers.push(p);
            cfg.validate().map_err(|e| match e {
                ConfigError::Invalid { key, reason } if key.starts_with("peer[") => {
                    let field = key.rsplit_once('.').map(|(_, f)| f).unwrap_or("name");
                    invalid(field, reason)
                }
                other => from_config(other, same_key),
            })?;
            "peer set"
        }
        Change::DeletePeer(name) => {
            if cfg
                .routes
                .iter()
                .any(|r| r.via == name || r.backup.contains(&name))
            {
                return Err(ControlError::Conflict {
                    field: "name".into(),
                    reason: format!("routes still use peer \"{name}\"; remove them first"),
                });
            }
            let before = cfg.peers.len();
            cfg.peers.retain(|x| x.name != name);
            if cfg.peers.len() == before {
                return Err(ControlError::NotFound {
                    field: "name",
                    reason: format!("no peer named \"{name}\""),
                });
            }
            cfg.validate().map_err(|e| from_config(e, same_key))?;
            "peer removed"
        }
        Change::Reload | Change::Replace(_) | Change::Drain => "",
    };
    Ok((cfg, msg.to_string()))
}

/// Keys that only take effect at start; a reload that changes them is
/// refused so nothing is half-applied.
fn restart_only(old: &Config, new: &Config) -> Option<&'static str> {
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    if old.node.name != new.node.name {
        return Some("node.name");
    }
    if old.node.engine != new.node.engine {
        return Some("node.engine");
    }
    if !same(&old.transparent, &new.transparent) {
        return Some("transparent");
    }
    if !same(&old.explicit, &new.explicit) {
        return Some("explicit");
    }
    if !same(
        &old.relay.as_ref().map(|r| r.listen),
        &new.relay.as_ref().map(|r| r.listen),
    ) {
        return Some("relay.listen");
    }
    if !same(&old.firewall, &new.firewall) {
        return Some("firewall");
    }
    // Proxy listeners are bound at start; a reload updates the users and
    // allow lists of the ones that stay, but adds or removes none.
    let socks = |c: &Config| c.socks5.iter().map(|l| l.listen).collect::<Vec<_>>();
    if socks(old) != socks(new) {
        return Some("socks5.listen");
    }
    let connect = |c: &Config| c.http_connect.iter().map(|l| l.listen).collect::<Vec<_>>();
    if connect(old) != connect(new) {
        return Some("http_connect.listen");
    }
    if old.fleet != new.fleet {
        return Some("fleet");
    }
    // Compared by value: the token's Debug is masked.
    if old.admin != new.admin {
        return Some("admin");
    }
    if old.metrics != new.metrics {
        return Some("metrics");
    }
    // Read once at start: sizes of the engine's resources, the log
    // format, the replay cache, the shutdown grace and the limits.
    if old.node.buffer_bytes != new.node.buffer_bytes {
        return Some("node.buffer_bytes");
    }
    if old.node.pipe_bytes != new.node.pipe_bytes {
        return Some("node.pipe_bytes");
    }
    if !same(&old.node.log_format, &new.node.log_format) {
        return Some("node.log_format");
    }
    let auth = |c: &Config| c.auth.as_ref().map(|a| (a.max_skew_ms, a.replay_capacity));
    if auth(old).map(|a| a.0) != auth(new).map(|a| a.0) {
        return Some("auth.max_skew_ms");
    }
    if auth(old).map(|a| a.1) != auth(new).map(|a| a.1) {
        return Some("auth.replay_capacity");
    }
    if old.timeouts.shutdown_grace_secs != new.timeouts.shutdown_grace_secs {
        return Some("timeouts.shutdown_grace_secs");
    }
    if !same(&old.limits, &new.limits) {
        return Some("limits");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Config {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ingress.toml");
        Config::load(std::path::Path::new(path)).expect("example loads")
    }

    #[test]
    fn keys_read_once_at_start_are_named_when_a_reload_changes_them() {
        let old = example();
        assert_eq!(restart_only(&old, &old.clone()), None);
        let mut new = old.clone();
        new.node.buffer_bytes *= 2;
        assert_eq!(restart_only(&old, &new), Some("node.buffer_bytes"));
        let listen: std::net::SocketAddr = ([127, 0, 0, 1], 1080).into();
        let mut new = old.clone();
        new.socks5
            .push(splitway_core::proxy_config::Socks5Listener {
                listen,
                users: Vec::new(),
                allow: None,
                handshake_timeout_ms: 5_000,
            });
        assert_eq!(restart_only(&old, &new), Some("socks5.listen"));
        let mut new = old.clone();
        new.http_connect
            .push(splitway_core::proxy_config::HttpConnectListener {
                listen,
                users: Vec::new(),
                allow: None,
                handshake_timeout_ms: 5_000,
                max_head_bytes: 8192,
            });
        assert_eq!(restart_only(&old, &new), Some("http_connect.listen"));
        let mut new = old.clone();
        new.timeouts.shutdown_grace_secs += 1;
        assert_eq!(
            restart_only(&old, &new),
            Some("timeouts.shutdown_grace_secs")
        );
        // What a reload is for stays allowed.
        let mut new = old.clone();
        new.features.early_syn = !new.features.early_syn;
        new.features.worker_pools = !new.features.worker_pools;
        new.timeouts.idle_secs += 1;
        assert_eq!(restart_only(&old, &new), None);
    }
}
