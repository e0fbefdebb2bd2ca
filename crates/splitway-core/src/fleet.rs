//! Fleet mode, sans IO: the `[fleet]` config section, the etcd key layout,
//! and turning the keys a relay watches into the config it runs
//! ([`render`]), refusing any bad value with its etcd key named.
//!
//! The etcd client, the watch loop, the lease and the cache live in
//! `splitway-relay` (`fleet/`); everything here is tested without etcd.
//!
//! Layout under the prefix `P` (docs/operations.md, "The etcd layout"):
//! - `P/auth/keys/<id>`: a leg key, hex; `P/auth/send_key`: the id that signs.
//! - `P/all/{features, peers/<name>, routes/<name>, allow/<name>}`: every relay.
//! - `P/node/<node>/{features, peers/<name>, routes/<name>, allow/<name>}`:
//!   one relay; a name here replaces the same name under `P/all/`.
//! - `P/presence/<node>`: what a live relay reports, under its lease.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{
    AllowEntry, Auth, Config, ConfigError, FeaturePatch, KeyConf, Peer, RouteConf,
};

/// `[fleet]`: where the fleet's etcd is and how to reach it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetConf {
    /// etcd client URLs, e.g. `https://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet (several fleets may share one etcd).
    #[serde(default = "d_prefix")]
    pub prefix: String,
    /// PEM CA bundle that signs etcd's server certificates (enables TLS).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for etcd's client-cert auth.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// etcd user; its password is read from `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// The last applied fleet state, read at start when etcd is down.
    #[serde(default = "d_cache")]
    pub cache_path: std::path::PathBuf,
    /// TTL of this relay's presence lease.
    #[serde(default = "d_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// How long a start waits for etcd before using the cache.
    #[serde(default = "d_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn d_prefix() -> String {
    "/splitway".into()
}
fn d_cache() -> std::path::PathBuf {
    "/var/lib/splitway/fleet-cache.json".into()
}
fn d_lease_ttl() -> u64 {
    10
}
fn d_connect_timeout_ms() -> u64 {
    3_000
}

impl FleetConf {
    /// Check what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, r: &str| {
            Err(ConfigError::Invalid {
                key: format!("fleet.{k}"),
                reason: r.into(),
            })
        };
        if self.endpoints.is_empty() {
            return bad("endpoints", "at least one etcd endpoint is required");
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return bad("endpoints", "each must start with http:// or https://");
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.len() < 2 {
            return bad(
                "prefix",
                "must start with '/' and not end with one, e.g. \"/splitway\"",
            );
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("cert_file", "cert_file and key_file go together");
        }
        if self.user.is_some() != self.password_file.is_some() {
            return bad("user", "user and password_file go together");
        }
        if !(2..=3600).contains(&self.lease_ttl_secs) {
            return bad("lease_ttl_secs", "must be between 2 and 3600");
        }
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms", "must be positive");
        }
        Ok(())
    }

    pub fn layout(&self) -> Layout {
        Layout {
            prefix: self.prefix.clone(),
        }
    }
}

/// The etcd keys of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    /// `P/auth/`: leg keys and the signing key id.
    pub fn auth(&self) -> String {
        format!("{}/auth/", self.prefix)
    }
    pub fn key(&self, id: u8) -> String {
        format!("{}/auth/keys/{id}", self.prefix)
    }
    pub fn send_key(&self) -> String {
        format!("{}/auth/send_key", self.prefix)
    }
    /// `P/all/`: what every relay takes.
    pub fn all(&self) -> String {
        format!("{}/all/", self.prefix)
    }
    /// `P/node/NAME/`: what one relay takes.
    pub fn node(&self, name: &str) -> String {
        format!("{}/node/{name}/", self.prefix)
    }
    pub fn presence_dir(&self) -> String {
        format!("{}/presence/", self.prefix)
    }
    pub fn presence(&self, name: &str) -> String {
        format!("{}/presence/{name}", self.prefix)
    }
    /// The prefixes relay `name` watches.
    pub fn watched(&self, name: &str) -> [String; 3] {
        [self.auth(), self.all(), self.node(name)]
    }
}

/// The fleet keys one relay watches, with the etcd revision they were read
/// at: what is applied, and what the cache keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub revision: i64,
    pub kv: BTreeMap<String, String>,
}

/// A value refused: the etcd key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct FleetError {
    pub key: String,
    pub reason: String,
}

fn refuse(key: &str, reason: impl Into<String>) -> FleetError {
    FleetError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A peer as stored in etcd: the name is the key's last part.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerValue {
    addr: std::net::SocketAddr,
    #[serde(default)]
    pool_low: Option<usize>,
    #[serde(default)]
    pool_high: Option<usize>,
    #[serde(default)]
    bandwidth_mbit: Option<f64>,
    #[serde(default)]
    rtt_ms: Option<f64>,
    #[serde(default)]
    source: Option<IpAddr>,
}

/// Where each part of a rendered config came from, to name the etcd key
/// when whole-config validation refuses it.
#[derive(Default)]
struct Origins {
    peers: Vec<String>,
    routes: Vec<String>,
    keys: Vec<String>,
}

/// Is `p` an allow entry no fleet value may open: everything, the relay's
/// own host, or link-local and multicast space.
pub fn forbidden_allow(p: &IpNet) -> Option<&'static str> {
    let min = if p.addr().is_ipv4() { 8 } else { 16 };
    if p.prefix_len() < min {
        return Some("wider than /8 (IPv4) or /16 (IPv6): that would make an open relay");
    }
    let special: [&str; 7] = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "::1/128",
        "fe80::/10",
        "ff00::/8",
    ];
    for s in special {
        let Ok(s) = s.parse::<IpNet>() else { continue };
        if s.contains(p) || p.contains(&s) {
            return Some("covers loopback, unspecified, link-local or multicast addresses");
        }
    }
    None
}

/// Build the config relay `base.node.name` runs from its local file
/// (`base`: listeners, marks, name, timeouts...) and the fleet's keys
/// (`view`): peers, routes, allow list, features and leg keys come from
/// the view only. Any bad value refuses the whole view, naming its key.
pub fn render(base: &Config, layout: &Layout, view: &View) -> Result<Config, FleetError> {
    let me = base.node.name.as_str();
    let all = layout.all();
    let node = layout.node(me);
    let auth_dir = layout.auth();
    // name -> (etcd key, value), node-scoped entries replacing global ones.
    let mut peers: BTreeMap<String, (String, PeerValue)> = BTreeMap::new();
    let mut routes: BTreeMap<String, (String, RouteConf)> = BTreeMap::new();
    let mut allow: BTreeMap<String, (String, AllowEntry)> = BTreeMap::new();
    let mut features = [None, None];
    let mut keys: BTreeMap<u8, (String, String)> = BTreeMap::new();
    let mut send_key = None;

    for (key, value) in &view.kv {
        let (scope, rest) = if let Some(r) = key.strip_prefix(&node) {
            (1, r)
        } else if let Some(r) = key.strip_prefix(&all) {
            (0, r)
        } else if let Some(r) = key.strip_prefix(&auth_dir) {
            if r == "send_key" {
                let id = value
                    .trim()
                    .parse::<u8>()
                    .map_err(|_| refuse(key, "must be a key id, 0-255"))?;
                send_key = Some(id);
            } else if let Some(id) = r.strip_prefix("keys/") {
                let id = id
                    .parse::<u8>()
                    .map_err(|_| refuse(key, "the key's last part must be an id, 0-255"))?;
                keys.insert(id, (key.clone(), value.trim().to_string()));
            } else {
                return Err(refuse(key, "unknown key under auth/"));
            }
            continue;
        } else {
            // Another relay's keys, or presence: not ours to apply.
            continue;
        };
        let json = |what: &str| -> Result<serde_json::Value, FleetError> {
            serde_json::from_str(value)
                .map_err(|e| refuse(key, format!("not valid JSON for {what}: {e}")))
        };
        if rest == "features" {
            let f: FeaturePatch = serde_json::from_value(json("features")?)
                .map_err(|e| refuse(key, e.to_string()))?;
            features[scope] = Some(f);
        } else if let Some(name) = rest.strip_prefix("peers/") {
            let v: PeerValue =
                serde_json::from_value(json("a peer")?).map_err(|e| refuse(key, e.to_string()))?;
            if scope == 0 && name == me {
                continue; // a relay is not its own peer
            }
            check_name(key, name)?;
            if scope == 1 || !peers.contains_key(name) {
                peers.insert(name.to_string(), (key.clone(), v));
            }
        } else if let Some(name) = rest.strip_prefix("routes/") {
            let v: RouteConf =
                serde_json::from_value(json("a route")?).map_err(|e| refuse(key, e.to_string()))?;
            check_name(key, name)?;
            if scope == 1 || !routes.contains_key(name) {
                routes.insert(name.to_string(), (key.clone(), v));
            }
        } else if let Some(name) = rest.strip_prefix("allow/") {
            let v: AllowEntry = serde_json::from_value(json("an allow entry")?)
                .map_err(|e| refuse(key, e.to_string()))?;
            check_name(key, name)?;
            if let Some(why) = forbidden_allow(&v.prefix) {
                return Err(refuse(key, format!("prefix {}: {why}", v.prefix)));
            }
            if scope == 1 || !allow.contains_key(name) {
                allow.insert(name.to_string(), (key.clone(), v));
            }
        } else {
            return Err(refuse(
                key,
                "unknown key (features, peers/NAME, routes/NAME, allow/NAME)",
            ));
        }
    }

    let mut cfg = base.clone();
    let mut origins = Origins::default();
    cfg.peers = peers
        .into_iter()
        .map(|(name, (key, v))| {
            origins.peers.push(key);
            let d = defaults();
            Peer {
                name,
                addr: v.addr,
                pool_low: v.pool_low.unwrap_or(d.pool_low),
                pool_high: v.pool_high.unwrap_or(d.pool_high),
                bandwidth_mbit: v.bandwidth_mbit.unwrap_or(d.bandwidth_mbit),
                rtt_ms: v.rtt_ms.unwrap_or(d.rtt_ms),
                source: v.source,
                // Lanes are not in the fleet schema: per-flow legs.
                legs: d.legs,
                lanes: d.lanes,
                stream_window_kib: d.stream_window_kib,
                lane_max_streams: d.lane_max_streams,
                congestion: d.congestion,
                lane_pacing: d.lane_pacing,
                lane_age_weight: d.lane_age_weight,
                bound_server_windows: d.bound_server_windows,
            }
        })
        .collect();
    cfg.routes = routes
        .into_values()
        .map(|(key, r)| {
            origins.routes.push(key);
            r
        })
        .collect();
    if let Some(r) = cfg.relay.as_mut() {
        r.allow = allow.into_values().map(|(_, a)| a).collect();
    } else if let Some((_, (key, _))) = allow.first_key_value() {
        return Err(refuse(
            key,
            "this relay has no [relay] listener to allow egress on",
        ));
    }
    for f in features.into_iter().flatten() {
        f.apply(&mut cfg.features);
    }
    if keys.is_empty() {
        return Err(refuse(
            &format!("{auth_dir}keys/"),
            "no leg keys in etcd; a fleet relay needs at least one",
        ));
    }
    if let Some(s) = send_key {
        if !keys.contains_key(&s) {
            return Err(refuse(
                &layout.send_key(),
                format!("no key with id {s} under {auth_dir}keys/"),
            ));
        }
    }
    let auth = cfg.auth.get_or_insert_with(|| Auth {
        keys: Vec::new(),
        send_key: None,
        max_skew_ms: 30_000,
        replay_capacity: 1_000_000,
    });
    auth.keys = keys
        .into_iter()
        .map(|(id, (key, secret))| {
            origins.keys.push(key);
            KeyConf { id, secret }
        })
        .collect();
    auth.send_key = send_key;

    cfg.validate().map_err(|e| match e {
        ConfigError::Invalid { key, reason } => refuse(&origin_of(&key, &origins), reason),
        other => refuse(&layout.prefix, other.to_string()),
    })?;
    Ok(cfg)
}

fn defaults() -> Peer {
    // The file's defaults for a peer, so etcd and TOML agree.
    #[derive(Deserialize)]
    struct One {
        peer: Peer,
    }
    toml::from_str::<One>("[peer]\nname = \"x\"\naddr = \"127.0.0.1:1\"\n")
        .map(|o| o.peer)
        .unwrap_or(Peer {
            name: String::new(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            pool_low: 4,
            pool_high: 16,
            bandwidth_mbit: 100.0,
            rtt_ms: 100.0,
            source: None,
            legs: crate::config::LegMode::PerFlow,
            lanes: 2,
            stream_window_kib: 1024,
            lane_max_streams: 128,
            congestion: None,
            lane_pacing: false,
            lane_age_weight: 1,
            bound_server_windows: false,
        })
}

fn check_name(key: &str, name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(refuse(
            key,
            "the name (last part) must be 1-64 of a-z, A-Z, 0-9, '-', '_', '.'",
        ))
    }
}

/// Map a config key (`route[2].via`) back to the etcd key it came from.
fn origin_of(config_key: &str, o: &Origins) -> String {
    let index = |head: &str| -> Option<usize> {
        let rest = config_key.strip_prefix(head)?;
        rest.split(']').next()?.parse().ok()
    };
    let found = if let Some(i) = index("route[") {
        o.routes.get(i)
    } else if let Some(i) = index("peer[") {
        o.peers.get(i)
    } else if let Some(i) = index("auth.keys[") {
        o.keys.get(i)
    } else {
        None
    };
    match found {
        Some(k) => format!("{k} ({config_key})"),
        None => config_key.to_string(),
    }
}

/// What a live relay reports under `P/presence/NAME` (with its lease).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub node: String,
    /// Where peers send legs (`[relay].listen`), if this relay takes any.
    pub addr: Option<String>,
    pub version: String,
    /// Feature switches in force.
    pub features: BTreeMap<String, bool>,
    /// Leg key ids held, and the one that signs.
    pub key_ids: Vec<u8>,
    pub send_key: Option<u8>,
    /// etcd revision of the fleet state applied (0: none yet).
    pub revision: i64,
    /// The last fleet value refused, if any (`key: reason`).
    pub refused: Option<String>,
    pub peers: Vec<PeerHealth>,
    /// Unix seconds of this report.
    pub updated: u64,
}

/// One peer as its relay sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerHealth {
    pub name: String,
    pub addr: String,
    /// Smoothed RTT of a pooled leg (TCP_INFO), microseconds.
    pub rtt_us: Option<u32>,
    pub pool_idle: usize,
    pub pool_low: usize,
    pub pool_high: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::parse(
            r#"
[node]
name = "r1"
[auth]
keys = [{ id = 9, secret = "00112233445566778899aabbccddeeff" }]
[relay]
listen = "0.0.0.0:5565"
[[explicit]]
listen = "127.0.0.1:8080"
target = "10.0.0.1:80"
[[route]]
prefix = "10.0.0.0/8"
via = "direct"
[fleet]
endpoints = ["http://127.0.0.1:2379"]
"#,
        )
        .expect("base parses")
    }

    fn view(kv: &[(&str, &str)]) -> View {
        View {
            revision: 1,
            kv: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const KEY1: (&str, &str) = ("/sw/auth/keys/1", "ffeeddccbbaa99887766554433221100");

    #[test]
    fn peers_routes_allow_features_and_keys_come_from_the_view() {
        let l = Layout::new("/sw");
        let v = view(&[
            KEY1,
            ("/sw/auth/send_key", "1"),
            ("/sw/all/peers/r1", r#"{"addr":"10.1.0.1:5565"}"#),
            ("/sw/all/peers/r2", r#"{"addr":"10.1.0.2:5565"}"#),
            (
                "/sw/all/routes/net",
                r#"{"prefix":"10.0.0.0/8","via":"r2"}"#,
            ),
            ("/sw/all/features", r#"{"turbo_start":false}"#),
            ("/sw/node/r1/features", r#"{"early_syn":false}"#),
            (
                "/sw/node/r1/peers/r2",
                r#"{"addr":"10.1.0.2:5565","pool_low":1,"pool_high":2}"#,
            ),
            (
                "/sw/node/r1/allow/web",
                r#"{"prefix":"10.9.0.0/16","ports":"80-443"}"#,
            ),
            (
                "/sw/node/r9/routes/x",
                r#"{"prefix":"0.0.0.0/0","via":"nobody"}"#,
            ),
            ("/sw/presence/r2", "{}"),
        ]);
        let c = render(&base(), &l, &v).expect("renders");
        assert_eq!(c.peers.len(), 1, "not its own peer");
        assert_eq!((c.peers[0].pool_low, c.peers[0].pool_high), (1, 2));
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].via, "r2");
        assert!(!c.features.turbo_start && !c.features.early_syn && c.features.conn_pool);
        let a = c.auth.as_ref().expect("auth");
        assert_eq!((a.keys.len(), a.keys[0].id, a.send_key), (1, 1, Some(1)));
        assert_eq!(c.relay.as_ref().expect("relay").allow.len(), 1);
    }

    #[test]
    fn a_bad_value_is_refused_with_its_key_named() {
        let l = Layout::new("/sw");
        for (kv, want) in [
            (
                vec![KEY1, ("/sw/all/routes/a", "{not json")],
                "/sw/all/routes/a",
            ),
            (
                vec![
                    KEY1,
                    (
                        "/sw/node/r1/routes/a",
                        r#"{"prefix":"10.0.0.0/8","via":"ghost"}"#,
                    ),
                ],
                "/sw/node/r1/routes/a (route[0].via)",
            ),
            (
                vec![
                    KEY1,
                    ("/sw/all/peers/r2", r#"{"addr":"10.1.0.2:5565","colour":1}"#),
                ],
                "/sw/all/peers/r2",
            ),
            (vec![KEY1, ("/sw/auth/send_key", "7")], "/sw/auth/send_key"),
            (
                vec![("/sw/auth/keys/1", "abcd")],
                "/sw/auth/keys/1 (auth.keys[0].secret)",
            ),
            (vec![], "/sw/auth/keys/"),
            (vec![KEY1, ("/sw/all/bogus", "1")], "/sw/all/bogus"),
        ] {
            let e = render(&base(), &l, &view(&kv)).expect_err(want);
            assert_eq!(e.key, want, "{e}");
        }
    }

    #[test]
    fn no_value_opens_the_relay_to_everything_or_to_itself() {
        let l = Layout::new("/sw");
        for p in [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "127.0.0.1/32",
            "::/0",
            "::1/128",
            "169.254.1.0/24",
        ] {
            let v = view(&[KEY1, ("/sw/all/allow/x", &format!(r#"{{"prefix":"{p}"}}"#))]);
            let e = render(&base(), &l, &v).expect_err(p);
            assert_eq!(e.key, "/sw/all/allow/x", "{p}: {e}");
        }
        assert!(forbidden_allow(&"10.9.0.0/16".parse().expect("net")).is_none());
    }

    #[test]
    fn fleet_section_is_validated_with_the_key_named() {
        let mut f = base().fleet.expect("fleet");
        assert!(f.validate().is_ok());
        let mut no_auth = base();
        no_auth.auth = None;
        match no_auth.validate() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "auth"),
            other => panic!("{other:?}"),
        }
        f.prefix = "splitway/".into();
        match f.validate() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "fleet.prefix"),
            other => panic!("{other:?}"),
        }
    }
}
