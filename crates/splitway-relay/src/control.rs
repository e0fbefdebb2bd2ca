//! Runtime control: every change an operator can make to a running relay,
//! used by the admin API and by SIGHUP.
//!
//! Each operation builds a whole new config from the running one, validates
//! it like a file on load, and only then applies it ([`Shared::apply`]), so
//! a bad request changes nothing. New connections see the change; existing
//! ones keep the snapshot they started with.

use std::sync::atomic::Ordering;

use serde::Deserialize;
use splitway_core::config::{Config, Peer, RouteConf};

use crate::state::Shared;

/// A refused change: the field it concerns and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ControlError {
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> ControlError {
    ControlError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn commit(shared: &Shared, cfg: Config) -> Result<(), ControlError> {
    cfg.validate().map_err(|e| match e {
        splitway_core::config::ConfigError::Invalid { key, reason } => err(&key, reason),
        other => err("config", other.to_string()),
    })?;
    shared.apply(cfg).map_err(|e| err("apply", e))
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
    if !same(&old.admin, &new.admin) {
        return Some("admin");
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

/// Re-read the config file and apply it to new connections.
pub fn reload(shared: &Shared) -> Result<String, ControlError> {
    let path = shared
        .config_path
        .as_ref()
        .ok_or_else(|| err("config", "this relay was started without a config file"))?;
    let new = Config::load(path).map_err(|e| match e {
        splitway_core::config::ConfigError::Invalid { key, reason } => err(&key, reason),
        other => err("config", other.to_string()),
    })?;
    let old = shared.snapshot();
    if let Some(key) = restart_only(&old.cfg, &new) {
        return Err(err(key, "changed, but only takes effect after a restart"));
    }
    shared.apply(new).map_err(|e| err("apply", e))?;
    Ok(format!("reloaded {}", path.display()))
}

/// Change a peer's pool watermarks.
pub fn set_pool(shared: &Shared, peer: &str, low: usize, high: usize) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    let Some(p) = cfg.peers.iter_mut().find(|p| p.name == peer) else {
        return Err(err("peer", format!("no peer named \"{peer}\"")));
    };
    p.pool_low = low;
    p.pool_high = high;
    commit(shared, cfg).map_err(|e| {
        if e.field.ends_with("pool_low") {
            err("low", e.reason)
        } else if e.field.ends_with("pool_high") {
            err("high", e.reason)
        } else {
            e
        }
    })
}

/// Feature switches to change; absent ones stay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePatch {
    pub early_syn: Option<bool>,
    pub worker_pools: Option<bool>,
    pub conn_pool: Option<bool>,
    pub turbo_start: Option<bool>,
    pub fast_open: Option<bool>,
}

pub fn set_features(shared: &Shared, p: &FeaturePatch) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    let f = &mut cfg.features;
    f.worker_pools = p.worker_pools.unwrap_or(f.worker_pools);
    f.early_syn = p.early_syn.unwrap_or(f.early_syn);
    f.conn_pool = p.conn_pool.unwrap_or(f.conn_pool);
    f.turbo_start = p.turbo_start.unwrap_or(f.turbo_start);
    f.fast_open = p.fast_open.unwrap_or(f.fast_open);
    commit(shared, cfg)
}

/// Add a route, or replace the one with the same prefix and ports.
pub fn put_route(shared: &Shared, r: RouteConf) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    let prefix = r.prefix.trunc();
    cfg.routes
        .retain(|x| !(x.prefix.trunc() == prefix && x.ports == r.ports));
    cfg.routes.push(r);
    commit(shared, cfg).map_err(|e| {
        if e.field.starts_with("route[") && e.field.contains(".backup") {
            err("backup", e.reason)
        } else if e.field.starts_with("route[") {
            err("via", e.reason)
        } else {
            e
        }
    })
}

/// Remove the route with this prefix (and ports, if given).
pub fn delete_route(
    shared: &Shared,
    prefix: ipnet::IpNet,
    ports: Option<splitway_core::ports::PortRange>,
) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    let before = cfg.routes.len();
    cfg.routes
        .retain(|x| !(x.prefix.trunc() == prefix.trunc() && ports.is_none_or(|p| p == x.ports)));
    if cfg.routes.len() == before {
        return Err(err("prefix", format!("no route for {prefix}")));
    }
    commit(shared, cfg)
}

/// Add a peer or replace the one with the same name.
pub fn put_peer(shared: &Shared, p: Peer) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    cfg.peers.retain(|x| x.name != p.name);
    cfg.peers.push(p);
    commit(shared, cfg).map_err(|e| match e.field.rsplit_once('.') {
        Some((head, field)) if head.starts_with("peer[") => err(field, e.reason),
        _ => e,
    })
}

/// Remove a peer; refused while a route uses it.
pub fn delete_peer(shared: &Shared, name: &str) -> Result<(), ControlError> {
    let mut cfg = shared.snapshot().cfg.clone();
    if cfg
        .routes
        .iter()
        .any(|r| r.via == name || r.backup.iter().any(|b| b == name))
    {
        return Err(err(
            "name",
            format!("routes still use peer \"{name}\"; remove them first"),
        ));
    }
    let before = cfg.peers.len();
    cfg.peers.retain(|x| x.name != name);
    if cfg.peers.len() == before {
        return Err(err("name", format!("no peer named \"{name}\"")));
    }
    commit(shared, cfg)
}

/// Stop taking new connections; open ones finish.
pub fn drain(shared: &Shared) {
    shared.draining.store(true, Ordering::SeqCst);
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
