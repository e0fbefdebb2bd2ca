//! The configuration file: typed, validated on load, documented key by key in
//! `docs/config.md`.
//!
//! Parsing rejects unknown keys and wrong types (the TOML error names the key
//! and the line); [`Config::validate`] then checks what types cannot express
//! and names the offending key, e.g. `route[2].via: no peer named "eu-west"`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::auth::{KeyRing, Secret};
use crate::ports::PortRange;
use crate::proxy_config::{HttpConnectListener, Socks5Listener};
use crate::route::{AllowList, NextHop, Route, RouteTable};

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    pub auth: Option<Auth>,
    /// The listener for legs from peer relays (transit and egress role).
    pub relay: Option<RelayListener>,
    #[serde(default)]
    pub transparent: Vec<Transparent>,
    #[serde(default)]
    pub explicit: Vec<Explicit>,
    /// SOCKS5 and HTTP CONNECT proxy listeners (`proxy_config.rs`).
    #[serde(default)]
    pub socks5: Vec<Socks5Listener>,
    #[serde(default)]
    pub http_connect: Vec<HttpConnectListener>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<Peer>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConf>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub firewall: Firewall,
    pub admin: Option<Admin>,
    /// `[metrics]`: a read-only listener for Prometheus.
    pub metrics: Option<MetricsListener>,
    /// Fleet mode: peers, routes, allow list, switches and keys from etcd.
    pub fleet: Option<crate::fleet::FleetConf>,
    #[serde(default)]
    pub modules: Modules,
}

/// `[node]`: this relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default = "d_buffer_bytes")]
    pub buffer_bytes: usize,
    #[serde(default = "d_pipe_bytes")]
    pub pipe_bytes: usize,
    /// `splice` engine (issue 16): while a direction waits for its
    /// destination to take what is in the pipe, raise the source's
    /// `SO_RCVLOWAT` to half its receive buffer, so data arriving meanwhile
    /// does not wake the relay for nothing. Both engines; off by default
    /// (fewer wake-ups, no CPU gain measurable here: docs/performance.md).
    #[serde(default)]
    pub quiet_blocked_input: bool,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log one line per connection when it ends.
    #[serde(default)]
    pub log_connections: bool,
}

/// The forwarding engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// read/write through a user-space buffer.
    Copy,
    /// splice(2) through a pipe per direction: bytes never enter user space.
    #[default]
    Splice,
}

impl Engine {
    pub fn as_str(&self) -> &'static str {
        match self {
            Engine::Copy => "copy",
            Engine::Splice => "splice",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[auth]`: pre-shared keys for relay legs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub keys: Vec<KeyConf>,
    /// Key id used to sign outgoing headers; default: the first key.
    pub send_key: Option<u8>,
    #[serde(default = "d_max_skew_ms")]
    pub max_skew_ms: u64,
    #[serde(default = "d_replay_capacity")]
    pub replay_capacity: usize,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConf {
    pub id: u8,
    /// Hex, at least 32 digits (16 bytes).
    pub secret: String,
}

impl std::fmt::Debug for KeyConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConf")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// `[relay]`: where legs from peers arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayListener {
    pub listen: SocketAddr,
    /// Destinations this relay will connect to for its peers.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    /// Time to receive a whole header once its first byte arrived.
    #[serde(default = "d_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// How long a pooled leg from a peer may wait for its header.
    #[serde(default = "d_idle_leg_secs")]
    pub idle_leg_timeout_secs: u64,
    /// Upper bound on legs waiting for their header.
    #[serde(default = "d_max_idle_legs")]
    pub max_idle_legs: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub prefix: IpNet,
    #[serde(default = "d_all_ports")]
    pub ports: PortRange,
}

/// `[[transparent]]`: intercept traffic to these prefixes with nftables TPROXY.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transparent {
    /// Local port of the TPROXY listener.
    pub port: u16,
    pub prefixes: Vec<IpNet>,
    #[serde(default = "d_all_ports_vec")]
    pub ports: Vec<PortRange>,
}

/// `[[explicit]]`: a listener with a fixed target, like `ssh -L`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explicit {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

/// `[[peer]]`: another relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    /// Idle pre-established legs kept at least / at most.
    #[serde(default = "d_pool_low")]
    pub pool_low: usize,
    #[serde(default = "d_pool_high")]
    pub pool_high: usize,
    /// Path to this peer, for turbo-start window sizing.
    #[serde(default = "d_peer_mbit")]
    pub bandwidth_mbit: f64,
    #[serde(default = "d_peer_rtt_ms")]
    pub rtt_ms: f64,
    /// Local address legs to this peer are sent from (default: chosen by
    /// the kernel). Lets a relay with several addresses keep per-peer routes
    /// (turbo-start windows) apart.
    #[serde(default)]
    pub source: Option<std::net::IpAddr>,
    /// How flows cross to this peer: a leg each (`per_flow`, v1) or as
    /// streams on a few warm multiplexed lanes (`mux`, v2).
    #[serde(default)]
    pub legs: LegMode,
    /// Lanes kept open to this peer when `legs = "mux"`.
    #[serde(default = "d_lanes")]
    pub lanes: usize,
    /// Flow-control window per stream and direction on lanes, KiB.
    #[serde(default = "d_stream_window_kib")]
    pub stream_window_kib: u32,
    /// Streams one lane carries at once (beyond: per-flow legs).
    #[serde(default = "d_lane_max_streams")]
    pub lane_max_streams: u32,
    /// TCP congestion control on lanes to this peer (`TCP_CONGESTION`),
    /// e.g. "bbr"; must be built into the kernel. Default: the system's.
    #[serde(default)]
    pub congestion: Option<String>,
    /// Pace this peer's lanes, together, at `bandwidth_mbit`
    /// (`SO_MAX_PACING_RATE`, shared by the lanes in proportion to their
    /// open streams), so the path's bottleneck queue stays short and the
    /// order of bytes is the lane scheduler's.
    #[serde(default)]
    pub lane_pacing: bool,
    /// Age weighting of the lane scheduler's shares (1: equal shares):
    /// the oldest stream still sending gets up to this many quanta per
    /// round, the youngest one, so a burst of downloads ends in arrival
    /// order rather than all at the end (`splitway_core::mux::sched`).
    #[serde(default = "d_lane_age_weight")]
    pub lane_age_weight: u32,
    /// On the relay that accepts this peer's lanes: bound the receive
    /// windows of the server connections its streams open to a shared
    /// budget (2 × the rate the lanes forward × the server's minimum RTT,
    /// split among the streams moving bytes), so those connections do not
    /// fill the server link's queue (`splitway_core::mux::window`).
    #[serde(default)]
    pub bound_server_windows: bool,
}

impl Peer {
    fn validate_lanes(&self, i: usize) -> Result<(), ConfigError> {
        if !(1..=16).contains(&self.lanes) {
            return Err(ConfigError::invalid(
                format!("peer[{i}].lanes"),
                "must be 1 to 16",
            ));
        }
        if !(16..=65536).contains(&self.stream_window_kib) {
            return Err(ConfigError::invalid(
                format!("peer[{i}].stream_window_kib"),
                "must be 16 to 65536 (64 MiB)",
            ));
        }
        if !(1..=4096).contains(&self.lane_max_streams) {
            return Err(ConfigError::invalid(
                format!("peer[{i}].lane_max_streams"),
                "must be 1 to 4096",
            ));
        }
        if !(1..=64).contains(&self.lane_age_weight) {
            return Err(ConfigError::invalid(
                format!("peer[{i}].lane_age_weight"),
                "must be 1 (equal shares) to 64",
            ));
        }
        if let Some(cc) = &self.congestion {
            // TCP_CA_NAME_MAX is 16 with the NUL.
            let ok = !cc.is_empty()
                && cc.len() < 16
                && cc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].congestion"),
                    "must be a congestion control name such as \"bbr\" or \"cubic\"",
                ));
            }
        }
        Ok(())
    }
}

/// `[[peer]].legs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegMode {
    #[default]
    PerFlow,
    Mux,
}

/// `[[route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    pub prefix: IpNet,
    #[serde(default = "d_all_ports")]
    pub ports: PortRange,
    /// A peer name, or "direct".
    pub via: String,
    /// Next hops to fail over to, in order, when the ones before them can
    /// not be connected to: peer names or "direct". Default: none.
    #[serde(default)]
    pub backup: Vec<String>,
    /// Stream modules run on this route's relay legs, in encoding order
    /// (issue 13): names from [`MODULE_NAMES`]. Default: none (zero copy).
    #[serde(default)]
    pub modules: Vec<String>,
}

/// The stream modules a route may list (`crates/splitway-modules`).
pub const MODULE_NAMES: [&str; 3] = ["null", "compress", "dedup"];

/// `[[route]].modules`: known names, each once, at most four, and a peer
/// next hop (modules run between two relays).
fn validate_route_modules(i: usize, r: &RouteConf) -> Result<(), ConfigError> {
    for (j, name) in r.modules.iter().enumerate() {
        let key = format!("route[{i}].modules[{j}]");
        if !MODULE_NAMES.contains(&name.as_str()) {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "unknown module \"{name}\" (known: {})",
                    MODULE_NAMES.join(", ")
                ),
            ));
        }
        if r.modules[..j].contains(name) {
            return Err(ConfigError::invalid(
                key,
                format!("\"{name}\" is listed twice"),
            ));
        }
    }
    if r.modules.len() > 4 {
        return Err(ConfigError::invalid(
            format!("route[{i}].modules"),
            "at most 4 modules",
        ));
    }
    if !r.modules.is_empty() && r.via == "direct" {
        return Err(ConfigError::invalid(
            format!("route[{i}].modules"),
            "modules need a peer relay as next hop (`via`), not \"direct\"",
        ));
    }
    Ok(())
}

/// `[modules]`: settings of the stream modules (issue 13).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Modules {
    /// Size of each dedup chunk store per peer relay (the received chunks,
    /// and the model of the peer's), MiB.
    #[serde(default = "d_dedup_store_mib")]
    pub dedup_store_mib: u64,
    /// The lowest zstd level adaptive compression goes down to; 0 lets it
    /// send raw when the leg drains faster than zstd produces.
    #[serde(default)]
    pub compress_min_level: i32,
    /// The highest zstd level adaptive compression goes up to when the leg
    /// is the bottleneck.
    #[serde(default = "d_compress_max_level")]
    pub compress_max_level: i32,
    /// TCP_NOTSENT_LOWAT on legs with modules: the kernel's unsent queue is
    /// kept below this, so bytes wait in splitway where modules still see
    /// them (revocation).
    #[serde(default = "d_notsent_lowat")]
    pub notsent_lowat_bytes: u32,
    /// Spliced pass-through records: bytes the chain passes unchanged
    /// (`null`; `compress` while it sends raw) go plain socket → pipe → leg
    /// with `splice(2)`, only the frame header through user space; the
    /// receiver splices them on. Off: every byte through user space.
    #[serde(default = "d_true")]
    pub splice: bool,
}

impl Default for Modules {
    fn default() -> Self {
        Modules {
            dedup_store_mib: d_dedup_store_mib(),
            compress_min_level: 0,
            compress_max_level: d_compress_max_level(),
            notsent_lowat_bytes: d_notsent_lowat(),
            splice: true,
        }
    }
}

fn d_dedup_store_mib() -> u64 {
    256
}
fn d_compress_max_level() -> i32 {
    9
}
fn d_notsent_lowat() -> u32 {
    128 * 1024
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "d_connect_ms")]
    pub connect_ms: u64,
    #[serde(default = "d_idle_secs")]
    pub idle_secs: u64,
    #[serde(default = "d_half_close_secs")]
    pub half_close_secs: u64,
    #[serde(default = "d_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: d_connect_ms(),
            idle_secs: d_idle_secs(),
            half_close_secs: d_half_close_secs(),
            shutdown_grace_secs: d_shutdown_grace_secs(),
        }
    }
}

/// The largest `limits.server_initial_window_segments`: above it the
/// window no longer cuts a server's first flight (10 segments) and the key
/// would only hide a typo.
pub const MAX_INITIAL_WINDOW_SEGMENTS: u32 = 64;

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    #[serde(default = "d_early_total")]
    pub early_syn_pending_total: usize,
    #[serde(default = "d_early_per_source")]
    pub early_syn_pending_per_source: usize,
    #[serde(default = "d_early_timeout_ms")]
    pub early_syn_timeout_ms: u64,
    /// The initial receive window, in segments, of the connections this
    /// relay opens to destinations (servers): their first flight is cut to
    /// it, so many answers at once interleave on the server's link. None:
    /// the kernel's default.
    #[serde(default)]
    pub server_initial_window_segments: Option<u32>,
    /// The small initial window applies to a server connection only when
    /// at least this many (this one included) opened within 100 ms
    /// (`splitway_core::mux::burst`); 1: to every one.
    #[serde(default = "d_initial_window_burst")]
    pub server_initial_window_burst: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: d_max_connections(),
            early_syn_pending_total: d_early_total(),
            early_syn_pending_per_source: d_early_per_source(),
            early_syn_timeout_ms: d_early_timeout_ms(),
            server_initial_window_segments: None,
            server_initial_window_burst: d_initial_window_burst(),
        }
    }
}

/// Feature switches to change (admin API, fleet); absent ones stay as they
/// are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturePatch {
    pub early_syn: Option<bool>,
    pub worker_pools: Option<bool>,
    pub conn_pool: Option<bool>,
    pub turbo_start: Option<bool>,
    pub fast_open: Option<bool>,
}

impl FeaturePatch {
    /// Set the switches this patch names.
    pub fn apply(&self, f: &mut Features) {
        f.early_syn = self.early_syn.unwrap_or(f.early_syn);
        f.worker_pools = self.worker_pools.unwrap_or(f.worker_pools);
        f.conn_pool = self.conn_pool.unwrap_or(f.conn_pool);
        f.turbo_start = self.turbo_start.unwrap_or(f.turbo_start);
        f.fast_open = self.fast_open.unwrap_or(f.fast_open);
    }
}

/// `[features]`: KTCP's improvements, each switchable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Start the next leg when the client's SYN is seen (NFQUEUE tap).
    #[serde(default = "d_true")]
    pub early_syn: bool,
    /// Take buffers and pipes from pools instead of creating them per connection.
    #[serde(default = "d_true")]
    pub worker_pools: bool,
    /// Keep pre-established legs to each peer.
    #[serde(default = "d_true")]
    pub conn_pool: bool,
    /// Large initial windows and buffers on relay legs only.
    #[serde(default = "d_true")]
    pub turbo_start: bool,
    /// TCP Fast Open on fresh relay legs (header in the SYN).
    #[serde(default = "d_true")]
    pub fast_open: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            early_syn: true,
            worker_pools: true,
            conn_pool: true,
            turbo_start: true,
            fast_open: true,
        }
    }
}

/// `[firewall]`: marks and routing table used by transparent mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// fwmark set on intercepted packets; routed to the local table.
    #[serde(default = "d_tproxy_mark")]
    pub tproxy_mark: u32,
    /// Policy routing table for intercepted packets.
    #[serde(default = "d_route_table")]
    pub route_table: u32,
    /// SO_MARK on the relay's own outbound sockets; never intercepted.
    #[serde(default = "d_own_mark")]
    pub own_mark: u32,
    /// NFQUEUE number for the early-SYN tap.
    #[serde(default = "d_syn_queue")]
    pub syn_queue: u16,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall {
            tproxy_mark: d_tproxy_mark(),
            route_table: d_route_table(),
            own_mark: d_own_mark(),
            syn_queue: d_syn_queue(),
        }
    }
}

/// `[admin]`: the control API.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `127.0.0.1:9900` or `unix:/run/splitway.sock`.
    pub listen: String,
    /// The bearer token every write (POST, PUT, DELETE) must carry.
    pub token: Option<AdminToken>,
    /// A file whose first line is the token, read at start.
    pub token_file: Option<std::path::PathBuf>,
}

/// The admin API's bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(s: impl Into<String>) -> AdminToken {
        AdminToken(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compare in time that does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<{} bytes>)", self.0.len())
    }
}

/// `[metrics]`: `/metrics` and `/health` only, read-only, for scrapers on
/// other hosts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsListener {
    /// `0.0.0.0:9901`, `[::]:9901`...
    pub listen: SocketAddr,
}

fn d_buffer_bytes() -> usize {
    64 * 1024
}
/// 64 KiB, the kernel's own pipe size (and HAProxy's): measured side by
/// side against 256 KiB and 1 MiB (docs/performance.md), the smallest moved
/// the most per CPU second.
fn d_pipe_bytes() -> usize {
    64 * 1024
}
fn d_max_skew_ms() -> u64 {
    30_000
}
fn d_replay_capacity() -> usize {
    1_000_000
}
fn d_header_timeout_ms() -> u64 {
    5_000
}
fn d_idle_leg_secs() -> u64 {
    120
}
fn d_max_idle_legs() -> usize {
    4096
}
fn d_all_ports() -> PortRange {
    PortRange::ALL
}
fn d_all_ports_vec() -> Vec<PortRange> {
    vec![PortRange::ALL]
}
fn d_pool_low() -> usize {
    4
}
fn d_pool_high() -> usize {
    16
}
fn d_peer_mbit() -> f64 {
    100.0
}
fn d_peer_rtt_ms() -> f64 {
    100.0
}
fn d_lanes() -> usize {
    2
}
fn d_stream_window_kib() -> u32 {
    1024
}
fn d_lane_age_weight() -> u32 {
    1
}

fn d_lane_max_streams() -> u32 {
    128
}
fn d_connect_ms() -> u64 {
    5_000
}
fn d_idle_secs() -> u64 {
    600
}
fn d_half_close_secs() -> u64 {
    60
}
fn d_shutdown_grace_secs() -> u64 {
    10
}
fn d_max_connections() -> usize {
    20_000
}
fn d_early_total() -> usize {
    1024
}
fn d_early_per_source() -> usize {
    32
}
fn d_early_timeout_ms() -> u64 {
    3_000
}
fn d_true() -> bool {
    true
}
fn d_tproxy_mark() -> u32 {
    0x5157_0001
}
fn d_route_table() -> u32 {
    5157
}
fn d_initial_window_burst() -> usize {
    1
}

fn d_own_mark() -> u32 {
    0x5157_0002
}
fn d_syn_queue() -> u16 {
    5157
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parse and validate config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(parse_message(text, &e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check everything serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if !valid_name(&n.name) {
            return Err(ConfigError::invalid(
                "node.name",
                "must be 1-32 characters of a-z, 0-9, '-' or '_'",
            ));
        }
        if !(16 * 1024..=16 * 1024 * 1024).contains(&n.buffer_bytes) {
            return Err(ConfigError::invalid(
                "node.buffer_bytes",
                "must be between 16384 and 16777216",
            ));
        }
        if !(4096..=64 * 1024 * 1024).contains(&n.pipe_bytes) {
            return Err(ConfigError::invalid(
                "node.pipe_bytes",
                "must be between 4096 and 67108864",
            ));
        }

        let needs_auth = !self.peers.is_empty() || self.relay.is_some();
        match &self.auth {
            None if needs_auth => {
                return Err(ConfigError::invalid(
                    "auth",
                    "required when [relay] or any [[peer]] is configured",
                ))
            }
            None => {}
            Some(a) => {
                if a.keys.is_empty() {
                    return Err(ConfigError::invalid(
                        "auth.keys",
                        "at least one key is required",
                    ));
                }
                let mut ids = HashSet::new();
                for (i, k) in a.keys.iter().enumerate() {
                    let bytes = hex::decode(k.secret.trim()).map_err(|_| {
                        ConfigError::invalid(format!("auth.keys[{i}].secret"), "must be hex digits")
                    })?;
                    if bytes.len() < 16 {
                        return Err(ConfigError::invalid(
                            format!("auth.keys[{i}].secret"),
                            format!(
                                "must be at least 16 bytes (32 hex digits), got {}",
                                bytes.len()
                            ),
                        ));
                    }
                    if !ids.insert(k.id) {
                        return Err(ConfigError::invalid(
                            format!("auth.keys[{i}].id"),
                            format!("key id {} appears twice", k.id),
                        ));
                    }
                }
                if let Some(s) = a.send_key {
                    if !ids.contains(&s) {
                        return Err(ConfigError::invalid(
                            "auth.send_key",
                            format!("no key with id {s} in auth.keys"),
                        ));
                    }
                }
                if a.max_skew_ms == 0 || a.max_skew_ms > 600_000 {
                    return Err(ConfigError::invalid(
                        "auth.max_skew_ms",
                        "must be between 1 and 600000",
                    ));
                }
                if a.replay_capacity == 0 {
                    return Err(ConfigError::invalid(
                        "auth.replay_capacity",
                        "must be positive",
                    ));
                }
            }
        }

        if let Some(r) = &self.relay {
            if r.header_timeout_ms == 0 {
                return Err(ConfigError::invalid(
                    "relay.header_timeout_ms",
                    "must be positive",
                ));
            }
            if r.idle_leg_timeout_secs == 0 {
                return Err(ConfigError::invalid(
                    "relay.idle_leg_timeout_secs",
                    "must be positive",
                ));
            }
            if r.max_idle_legs == 0 {
                return Err(ConfigError::invalid(
                    "relay.max_idle_legs",
                    "must be positive",
                ));
            }
        }

        let mut peer_names = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if !valid_name(&p.name) || p.name == "direct" {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].name"),
                    "must be 1-32 characters of a-z, 0-9, '-' or '_', and not \"direct\"",
                ));
            }
            if !peer_names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].name"),
                    format!("peer \"{}\" is defined twice", p.name),
                ));
            }
            if p.addr.port() == 0 || p.addr.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].addr"),
                    "must be a concrete address and port",
                ));
            }
            if p.pool_low > p.pool_high {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].pool_low"),
                    format!("{} is above pool_high {}", p.pool_low, p.pool_high),
                ));
            }
            if p.pool_high > 4096 {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].pool_high"),
                    "must be at most 4096",
                ));
            }
            if !(p.bandwidth_mbit > 0.0 && p.bandwidth_mbit.is_finite()) {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].bandwidth_mbit"),
                    "must be positive",
                ));
            }
            if p.source
                .is_some_and(|a| a.is_ipv4() != p.addr.is_ipv4() || a.is_unspecified())
            {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].source"),
                    "must be a concrete address of the same family as addr",
                ));
            }
            if !(p.rtt_ms > 0.0 && p.rtt_ms.is_finite()) {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].rtt_ms"),
                    "must be positive",
                ));
            }
            p.validate_lanes(i)?;
        }

        for (i, r) in self.routes.iter().enumerate() {
            if r.via != "direct" && !peer_names.contains(r.via.as_str()) {
                return Err(ConfigError::invalid(
                    format!("route[{i}].via"),
                    format!(
                        "no peer named \"{}\" (use a [[peer]] name or \"direct\")",
                        r.via
                    ),
                ));
            }
            for (j, b) in r.backup.iter().enumerate() {
                let key = format!("route[{i}].backup[{j}]");
                if b != "direct" && !peer_names.contains(b.as_str()) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("no peer named \"{b}\" (use a [[peer]] name or \"direct\")"),
                    ));
                }
                if *b == r.via || r.backup[..j].contains(b) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("\"{b}\" is already a next hop of this route"),
                    ));
                }
            }
            validate_route_modules(i, r)?;
        }

        self.validate_modules()?;

        let mut listens = HashSet::new();
        for (i, t) in self.transparent.iter().enumerate() {
            if t.port == 0 {
                return Err(ConfigError::invalid(
                    format!("transparent[{i}].port"),
                    "must not be 0",
                ));
            }
            if t.prefixes.is_empty() {
                return Err(ConfigError::invalid(
                    format!("transparent[{i}].prefixes"),
                    "at least one prefix is required",
                ));
            }
            if t.ports.is_empty() {
                return Err(ConfigError::invalid(
                    format!("transparent[{i}].ports"),
                    "at least one port range is required",
                ));
            }
            if !listens.insert(("transparent".to_string(), t.port)) {
                return Err(ConfigError::invalid(
                    format!("transparent[{i}].port"),
                    format!("port {} used twice", t.port),
                ));
            }
        }
        let table = self.route_table();
        for (i, e) in self.explicit.iter().enumerate() {
            if e.target.port() == 0 || e.target.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    format!("explicit[{i}].target"),
                    "must be a concrete address and port",
                ));
            }
            if table.lookup(&e.target).is_none() {
                return Err(ConfigError::invalid(
                    format!("explicit[{i}].target"),
                    format!("no [[route]] covers {}", e.target),
                ));
            }
        }
        crate::proxy_config::validate(&self.socks5, &self.http_connect, &table)?;
        if self.transparent.is_empty()
            && self.explicit.is_empty()
            && self.socks5.is_empty()
            && self.http_connect.is_empty()
            && self.relay.is_none()
        {
            return Err(ConfigError::invalid(
                "relay",
                "nothing to do: configure [relay], [[transparent]], [[explicit]], \
                 [[socks5]] or [[http_connect]]",
            ));
        }

        let t = &self.timeouts;
        for (key, v) in [
            ("timeouts.connect_ms", t.connect_ms),
            ("timeouts.idle_secs", t.idle_secs),
            ("timeouts.half_close_secs", t.half_close_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_connections", l.max_connections),
            ("limits.early_syn_pending_total", l.early_syn_pending_total),
            (
                "limits.early_syn_pending_per_source",
                l.early_syn_pending_per_source,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be positive"));
            }
        }
        if l.early_syn_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "limits.early_syn_timeout_ms",
                "must be positive",
            ));
        }
        if !(1..=MAX_INITIAL_WINDOW_SEGMENTS as usize).contains(&l.server_initial_window_burst) {
            return Err(ConfigError::invalid(
                "limits.server_initial_window_burst",
                format!("must be 1 to {MAX_INITIAL_WINDOW_SEGMENTS} (connections)"),
            ));
        }
        if let Some(n) = l.server_initial_window_segments {
            if !(1..=MAX_INITIAL_WINDOW_SEGMENTS).contains(&n) {
                return Err(ConfigError::invalid(
                    "limits.server_initial_window_segments",
                    format!("must be 1 to {MAX_INITIAL_WINDOW_SEGMENTS} (segments)"),
                ));
            }
        }
        let f = &self.firewall;
        if f.tproxy_mark == 0 || f.own_mark == 0 || f.tproxy_mark == f.own_mark {
            return Err(ConfigError::invalid(
                "firewall.own_mark",
                "tproxy_mark and own_mark must be non-zero and differ",
            ));
        }
        if f.route_table == 0 || f.route_table >= 252 && f.route_table <= 255 {
            return Err(ConfigError::invalid(
                "firewall.route_table",
                "must not be 0 or a reserved table (252-255)",
            ));
        }
        if let Some(f) = &self.fleet {
            f.validate()?;
            if self.auth.is_none() {
                return Err(ConfigError::invalid(
                    "auth",
                    "required in fleet mode: etcd supplies the keys, [auth] keeps max_skew_ms and replay_capacity (read at start)",
                ));
            }
        }
        if let Some(a) = &self.admin {
            validate_admin(a)?;
        }
        if let (Some(m), Some(a)) = (&self.metrics, &self.admin) {
            if parse_admin_listen(&a.listen) == Some(AdminListen::Tcp(m.listen)) {
                return Err(ConfigError::invalid(
                    "metrics.listen",
                    "must differ from admin.listen",
                ));
            }
        }
        Ok(())
    }

    /// `[modules]`, each key's range.
    fn validate_modules(&self) -> Result<(), ConfigError> {
        let m = &self.modules;
        if !(1..=65536).contains(&m.dedup_store_mib) {
            return Err(ConfigError::invalid(
                "modules.dedup_store_mib",
                "must be between 1 and 65536",
            ));
        }
        if !(0..=19).contains(&m.compress_min_level) {
            return Err(ConfigError::invalid(
                "modules.compress_min_level",
                "must be between 0 (raw) and 19",
            ));
        }
        if !(m.compress_min_level.max(1)..=19).contains(&m.compress_max_level) {
            return Err(ConfigError::invalid(
                "modules.compress_max_level",
                "must be between 1 and 19, and not below compress_min_level",
            ));
        }
        if !(4096..=64 << 20).contains(&m.notsent_lowat_bytes) {
            return Err(ConfigError::invalid(
                "modules.notsent_lowat_bytes",
                "must be between 4096 and 67108864",
            ));
        }
        Ok(())
    }

    /// The route table built from `[[route]]`.
    pub fn route_table(&self) -> RouteTable {
        RouteTable::new(
            self.routes
                .iter()
                .map(|r| Route {
                    prefix: r.prefix,
                    ports: r.ports,
                    via: NextHop::from_name(&r.via),
                    backup: r.backup.iter().map(|b| NextHop::from_name(b)).collect(),
                    modules: r.modules.clone(),
                })
                .collect(),
        )
    }

    /// The egress allow list from `[relay].allow` (empty: nothing allowed).
    pub fn allow_list(&self) -> AllowList {
        AllowList::new(
            self.relay
                .iter()
                .flat_map(|r| r.allow.iter().map(|a| (a.prefix.trunc(), a.ports)))
                .collect(),
        )
    }

    /// The key ring from `[auth]`, if configured. Call after `validate`.
    pub fn key_ring(&self) -> Option<KeyRing> {
        let a = self.auth.as_ref()?;
        let keys: HashMap<u8, Secret> = a
            .keys
            .iter()
            .filter_map(|k| Some((k.id, Secret::new(hex::decode(k.secret.trim()).ok()?))))
            .collect();
        let send = a.send_key.unwrap_or(a.keys.first()?.id);
        Some(KeyRing::new(keys, send))
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// A TOML error as the parser prints it (line, snippet, message), with the
/// value of every `secret = "..."` and `password = "..."` in the file masked: the snippet may be
/// the line that holds a key.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let mut msg = e.to_string();
    for word in ["secret", "password"] {
        msg = mask_values(msg, text, word);
    }
    msg
}

/// `msg` with the value of every `word = "..."` in `text` masked.
fn mask_values(mut msg: String, text: &str, word: &str) -> String {
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        rest = &rest[i + word.len()..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix('=') else {
            continue;
        };
        // Basic ("…") or literal ('…') string; a multi-line one opens with
        // three quotes, and its first line is what an error can quote.
        let after = after.trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        let v = after.trim_start_matches(quote);
        if let Some(end) = v.find([quote, '\n']) {
            let value = &v[..end];
            if !value.is_empty() {
                msg = msg.replace(value, "<redacted>");
            }
        }
    }
    msg
}

fn validate_admin(a: &Admin) -> Result<(), ConfigError> {
    let Some(listen) = parse_admin_listen(&a.listen) else {
        return Err(ConfigError::invalid(
            "admin.listen",
            "must be IP:PORT or unix:/path",
        ));
    };
    if a.token.is_some() && a.token_file.is_some() {
        return Err(ConfigError::invalid(
            "admin.token_file",
            "give admin.token or admin.token_file, not both",
        ));
    }
    if let Some(t) = &a.token {
        if t.0.trim().is_empty() || t.0.chars().any(|c| c.is_whitespace()) {
            return Err(ConfigError::invalid(
                "admin.token",
                "must be non-empty, without spaces",
            ));
        }
    }
    let local = match listen {
        AdminListen::Unix(_) => true,
        AdminListen::Tcp(addr) => addr.ip().is_loopback(),
    };
    if !local && a.token.is_none() && a.token_file.is_none() {
        return Err(ConfigError::invalid(
            "admin.token",
            "required when admin.listen is neither a loopback address nor a Unix socket \
             (anyone who reaches it could reroute traffic); or use [metrics] listen for scrapers",
        ));
    }
    Ok(())
}

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

pub fn parse_admin_listen(s: &str) -> Option<AdminListen> {
    if let Some(p) = s.strip_prefix("unix:") {
        return (!p.is_empty()).then(|| AdminListen::Unix(p.into()));
    }
    s.parse().ok().map(AdminListen::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn a_feature_patch_sets_only_the_switches_it_names() {
        let mut f = Features::default();
        let before = (f.worker_pools, f.conn_pool, f.turbo_start, f.fast_open);
        let p: FeaturePatch = serde_json::from_str(r#"{"early_syn": false}"#).unwrap();
        p.apply(&mut f);
        assert!(!f.early_syn);
        assert_eq!(
            (f.worker_pools, f.conn_pool, f.turbo_start, f.fast_open),
            before
        );
        FeaturePatch {
            early_syn: Some(true),
            fast_open: Some(!before.3),
            ..Default::default()
        }
        .apply(&mut f);
        assert!(f.early_syn);
        assert_eq!(f.fast_open, !before.3);
        assert!(serde_json::from_str::<FeaturePatch>(r#"{"early_syns": true}"#).is_err());
    }

    fn base() -> String {
        format!(
            r#"
[node]
name = "ingress"

[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]

[[transparent]]
port = 15001
prefixes = ["10.0.3.0/24"]

[[peer]]
name = "egress"
addr = "10.0.2.2:5565"

[[route]]
prefix = "10.0.3.0/24"
via = "egress"
"#
        )
    }

    fn err_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn base_config_is_valid_with_defaults() {
        let c = Config::parse(&base()).unwrap();
        assert_eq!(c.node.engine, Engine::Splice);
        assert!(c.features.early_syn && c.features.conn_pool);
        assert_eq!(c.peers[0].pool_low, 4);
        assert_eq!(c.key_ring().unwrap().send_key(), 1);
        assert_eq!(
            c.route_table()
                .lookup(&"10.0.3.9:80".parse().unwrap())
                .unwrap()
                .via,
            NextHop::Peer("egress".into())
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err_of(&base().replace("[node]\n", "[node]\nnmae = \"x\"\n"));
        assert!(e.contains("nmae"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err_of(&base().replace("port = 15001", "port = \"fast\""));
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn bad_engine_is_named() {
        let e =
            err_of(&base().replace("name = \"ingress\"", "name = \"ingress\"\nengine = \"dma\""));
        assert!(e.contains("engine") || e.contains("dma"), "{e}");
    }

    #[test]
    fn bad_node_name() {
        assert!(err_of(&base().replace("\"ingress\"", "\"In Gress\"")).contains("node.name"));
    }

    #[test]
    fn small_copy_buffer() {
        let e = err_of(&base().replace(
            "name = \"ingress\"",
            "name = \"ingress\"\nbuffer_bytes = 1024",
        ));
        assert!(e.contains("node.buffer_bytes"), "{e}");
    }

    #[test]
    fn missing_auth() {
        let text = base().replace(
            &format!("[auth]\nkeys = [{{ id = 1, secret = \"{KEY}\" }}]\n"),
            "",
        );
        assert!(err_of(&text).contains("`auth`"));
    }

    #[test]
    fn short_or_non_hex_secret() {
        assert!(err_of(&base().replace(KEY, "abcd")).contains("auth.keys[0].secret"));
        assert!(
            err_of(&base().replace(KEY, "not-hex-not-hex-not-hex-not-hex!"))
                .contains("auth.keys[0].secret")
        );
    }

    #[test]
    fn secret_never_printed() {
        let c = Config::parse(&base()).unwrap();
        assert!(!format!("{c:?}").contains(KEY));
        let e = err_of(&base().replace(KEY, "zz112233445566778899aabbccddeeff"));
        assert!(!e.contains("zz1122"), "{e}");
    }

    #[test]
    fn parse_errors_do_not_echo_the_secret_line() {
        let text = base().replace("keys = [{ id = 1,", "keys = [{ id = 1, ttl = 3,");
        let e = err_of(&text);
        assert!(e.contains("ttl") && e.contains("<redacted>"), "{e}");
        assert!(!e.contains(KEY), "{e}");
    }

    #[test]
    fn parse_errors_do_not_echo_a_single_quoted_secret() {
        let text = base()
            .replace(&format!("secret = \"{KEY}\""), &format!("secret = '{KEY}'"))
            .replace("keys = [{ id = 1,", "keys = [{ id = 1, ttl = 3,");
        assert!(text.contains(&format!("'{KEY}'")), "fixture changed");
        let e = err_of(&text);
        assert!(e.contains("ttl") && e.contains("<redacted>"), "{e}");
        assert!(!e.contains(KEY), "{e}");
    }

    #[test]
    fn send_key_must_exist() {
        let e = err_of(&base().replace("[auth]\n", "[auth]\nsend_key = 9\n"));
        assert!(e.contains("auth.send_key"), "{e}");
    }

    #[test]
    fn duplicate_key_ids() {
        let e = err_of(&base().replace(
            &format!("keys = [{{ id = 1, secret = \"{KEY}\" }}]"),
            &format!("keys = [{{ id = 1, secret = \"{KEY}\" }}, {{ id = 1, secret = \"{KEY}\" }}]"),
        ));
        assert!(e.contains("auth.keys[1].id"), "{e}");
    }

    #[test]
    fn route_to_unknown_peer() {
        let e = err_of(&base().replace("via = \"egress\"", "via = \"eu-west\""));
        assert!(e.contains("route[0].via") && e.contains("eu-west"), "{e}");
    }

    fn with_backup_peers() -> String {
        base()
            + "\n[[peer]]\nname = \"r3\"\naddr = \"10.0.2.3:5565\"\n\
               \n[[peer]]\nname = \"r4\"\naddr = \"10.0.2.4:5565\"\n"
    }

    #[test]
    fn route_backups_parse_in_order_and_default_to_none() {
        let c = Config::parse(&base()).unwrap();
        assert!(c.routes[0].backup.is_empty());
        let text = with_backup_peers().replace(
            "via = \"egress\"",
            "via = \"egress\"\nbackup = [\"r4\", \"direct\", \"r3\"]",
        );
        let c = Config::parse(&text).unwrap();
        let t = c.route_table();
        let r = t.lookup(&"10.0.3.9:80".parse().unwrap()).unwrap();
        assert_eq!(r.via, NextHop::Peer("egress".into()));
        assert_eq!(
            r.backup,
            [
                NextHop::Peer("r4".into()),
                NextHop::Direct,
                NextHop::Peer("r3".into())
            ]
        );
        assert_eq!(
            r.hops().map(|h| h.to_string()).collect::<Vec<_>>(),
            ["egress", "r4", "direct", "r3"]
        );
    }

    #[test]
    fn route_backup_unknown_peer_is_named() {
        let text = with_backup_peers().replace(
            "via = \"egress\"",
            "via = \"egress\"\nbackup = [\"r3\", \"eu-west\"]",
        );
        let e = err_of(&text);
        assert!(
            e.contains("route[0].backup[1]") && e.contains("no peer named \"eu-west\""),
            "{e}"
        );
    }

    #[test]
    fn route_backup_duplicates_are_refused() {
        for (backup, key) in [
            ("[\"egress\"]", "route[0].backup[0]"),
            ("[\"r3\", \"r4\", \"r3\"]", "route[0].backup[2]"),
            ("[\"direct\", \"direct\"]", "route[0].backup[1]"),
        ] {
            let text = with_backup_peers().replace(
                "via = \"egress\"",
                &format!("via = \"egress\"\nbackup = {backup}"),
            );
            let e = err_of(&text);
            assert!(
                e.contains(key) && e.contains("already a next hop"),
                "{backup}: {e}"
            );
        }
        // A direct primary with a direct backup is a duplicate too.
        let text = with_backup_peers().replace(
            "via = \"egress\"",
            "via = \"direct\"\nbackup = [\"r3\", \"direct\"]",
        );
        assert!(err_of(&text).contains("route[0].backup[1]"));
    }

    #[test]
    fn route_backup_wrong_type_is_a_parse_error() {
        let e = err_of(&base().replace("via = \"egress\"", "via = \"egress\"\nbackup = \"r3\""));
        assert!(e.contains("backup"), "{e}");
        let e = err_of(&base().replace("via = \"egress\"", "via = \"egress\"\nbackups = [\"r3\"]"));
        assert!(e.contains("backups"), "{e}");
    }

    #[test]
    fn duplicate_peer_and_bad_pool() {
        let dup = base() + "\n[[peer]]\nname = \"egress\"\naddr = \"10.0.9.9:5565\"\n";
        assert!(err_of(&dup).contains("peer[1].name"));
        let pool = base().replace(
            "addr = \"10.0.2.2:5565\"",
            "addr = \"10.0.2.2:5565\"\npool_low = 9\npool_high = 2",
        );
        assert!(err_of(&pool).contains("peer[0].pool_low"));
        let addr = base().replace("10.0.2.2:5565", "0.0.0.0:5565");
        assert!(err_of(&addr).contains("peer[0].addr"));
    }

    #[test]
    fn lane_keys_default_to_per_flow_and_are_checked_by_name() {
        let c = Config::parse(&base()).unwrap();
        assert_eq!(c.peers[0].legs, LegMode::PerFlow);
        assert_eq!(
            (c.peers[0].lanes, c.peers[0].congestion.as_deref()),
            (2, None)
        );
        let with = |extra: &str| {
            base().replace(
                "addr = \"10.0.2.2:5565\"",
                &format!("addr = \"10.0.2.2:5565\"\n{extra}"),
            )
        };
        let c = Config::parse(&with("legs = \"mux\"\nlanes = 3\ncongestion = \"bbr\"")).unwrap();
        assert!(!c.peers[0].lane_pacing, "off by default");
        let c2 = Config::parse(&with("legs = \"mux\"\nlane_pacing = true")).unwrap();
        assert!(c2.peers[0].lane_pacing);
        assert!(err_of(&with("lane_pacing = 1")).contains("lane_pacing"));
        assert!(!c.peers[0].bound_server_windows, "off by default");
        let c3 = Config::parse(&with("legs = \"mux\"\nbound_server_windows = true")).unwrap();
        assert!(c3.peers[0].bound_server_windows);
        assert!(err_of(&with("bound_server_windows = \"yes\"")).contains("bound_server_windows"));
        assert_eq!(c.peers[0].legs, LegMode::Mux);
        assert_eq!(c.peers[0].lanes, 3);
        assert_eq!(c.peers[0].congestion.as_deref(), Some("bbr"));
        assert!(err_of(&with("legs = \"many\"")).contains("legs"));
        assert!(err_of(&with("lanes = 0")).contains("peer[0].lanes"));
        assert!(err_of(&with("stream_window_kib = 1")).contains("peer[0].stream_window_kib"));
        assert!(err_of(&with("lane_max_streams = 0")).contains("peer[0].lane_max_streams"));
        assert_eq!(c.peers[0].lane_age_weight, 1, "equal shares by default");
        let aged = Config::parse(&with("legs = \"mux\"\nlane_age_weight = 8")).unwrap();
        assert_eq!(aged.peers[0].lane_age_weight, 8);
        assert!(err_of(&with("lane_age_weight = 0")).contains("peer[0].lane_age_weight"));
        assert!(err_of(&with("lane_age_weight = 65")).contains("peer[0].lane_age_weight"));
        assert!(err_of(&with("congestion = \"b b r\"")).contains("peer[0].congestion"));
    }

    #[test]
    fn peer_source_family_must_match() {
        let bad = base().replace(
            "addr = \"10.0.2.2:5565\"",
            "addr = \"10.0.2.2:5565\"\nsource = \"fd00::1\"",
        );
        assert!(err_of(&bad).contains("peer[0].source"));
        let good = base().replace(
            "addr = \"10.0.2.2:5565\"",
            "addr = \"10.0.2.2:5565\"\nsource = \"10.0.2.9\"",
        );
        assert_eq!(
            Config::parse(&good).unwrap().peers[0].source,
            Some("10.0.2.9".parse().unwrap())
        );
    }

    #[test]
    fn bad_prefix_is_named() {
        let e = err_of(&base().replace(
            "prefixes = [\"10.0.3.0/24\"]",
            "prefixes = [\"10.0.3.0/33\"]",
        ));
        assert!(e.contains("prefixes"), "{e}");
    }

    #[test]
    fn empty_prefixes_and_zero_port() {
        assert!(
            err_of(&base().replace("prefixes = [\"10.0.3.0/24\"]", "prefixes = []"))
                .contains("transparent[0].prefixes")
        );
        assert!(err_of(&base().replace("port = 15001", "port = 0")).contains("transparent[0].port"));
    }

    #[test]
    fn bad_port_range_is_named() {
        let e = err_of(&base().replace("via = \"egress\"", "via = \"egress\"\nports = \"90-80\""));
        assert!(e.contains("ports"), "{e}");
    }

    #[test]
    fn explicit_target_needs_route() {
        let e = err_of(
            &(base() + "\n[[explicit]]\nlisten = \"127.0.0.1:8080\"\ntarget = \"192.0.2.1:80\"\n"),
        );
        assert!(e.contains("explicit[0].target"), "{e}");
    }

    #[test]
    fn nothing_to_do() {
        let e = err_of("[node]\nname = \"x\"\n");
        assert!(e.contains("`relay`"), "{e}");
    }

    #[test]
    fn zero_timeout_and_limit() {
        assert!(
            err_of(&(base() + "\n[timeouts]\nconnect_ms = 0\n")).contains("timeouts.connect_ms")
        );
        assert!(err_of(&(base() + "\n[limits]\nmax_connections = 0\n"))
            .contains("limits.max_connections"));
    }

    #[test]
    fn server_initial_window_is_checked() {
        let with = |v: &str| base() + "\n[limits]\nserver_initial_window_segments = " + v + "\n";
        let c = Config::parse(&with("2")).unwrap();
        assert_eq!(c.limits.server_initial_window_segments, Some(2));
        assert_eq!(
            Config::parse(&base())
                .unwrap()
                .limits
                .server_initial_window_segments,
            None
        );
        for bad in ["0", "65"] {
            let e = err_of(&with(bad));
            assert!(e.contains("limits.server_initial_window_segments"), "{e}");
        }
        assert!(err_of(&with("-1")).contains("server_initial_window_segments"));
        assert_eq!(c.limits.server_initial_window_burst, 1);
        let b = |v: &str| with("2") + "server_initial_window_burst = " + v + "\n";
        assert_eq!(
            Config::parse(&b("8"))
                .unwrap()
                .limits
                .server_initial_window_burst,
            8
        );
        for bad in ["0", "65"] {
            let e = err_of(&b(bad));
            assert!(e.contains("limits.server_initial_window_burst"), "{e}");
        }
    }

    #[test]
    fn marks_must_differ() {
        let e = err_of(&(base() + "\n[firewall]\ntproxy_mark = 5\nown_mark = 5\n"));
        assert!(e.contains("firewall.own_mark"), "{e}");
    }

    #[test]
    fn admin_token_required_off_loopback_and_masked() {
        let with = |admin: &str| base() + "\n[admin]\n" + admin + "\n";
        assert!(err_of(&with("listen = \"0.0.0.0:9900\"")).contains("admin.token"));
        assert!(err_of(&with("listen = \"10.0.0.1:9900\"")).contains("admin.token"));
        let c =
            Config::parse(&with("listen = \"0.0.0.0:9900\"\ntoken = \"s3cr3t-t0ken\"")).unwrap();
        let t = c.admin.as_ref().unwrap().token.as_ref().unwrap();
        assert!(t.matches("s3cr3t-t0ken") && !t.matches("s3cr3t-t0keN") && !t.matches(""));
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "token masked in Debug"
        );
        assert!(Config::parse(&with("listen = \"[::1]:9900\"")).is_ok());
        assert!(Config::parse(&with("listen = \"unix:/run/x.sock\"")).is_ok());
        assert!(Config::parse(&with("listen = \"0.0.0.0:9900\"\ntoken_file = \"/etc/t\"")).is_ok());
        assert!(err_of(&with(
            "listen = \"0.0.0.0:9900\"\ntoken = \"a\"\ntoken_file = \"/t\""
        ))
        .contains("admin.token_file"));
        assert!(err_of(&with("listen = \"127.0.0.1:9900\"\ntoken = \"\"")).contains("admin.token"));
        let m = base()
            + "\n[admin]\nlisten = \"127.0.0.1:9900\"\n[metrics]\nlisten = \"127.0.0.1:9900\"\n";
        assert!(err_of(&m).contains("metrics.listen"));
        let m = base() + "\n[metrics]\nlisten = \"0.0.0.0:9901\"\n";
        assert!(Config::parse(&m).is_ok());
    }

    #[test]
    fn admin_listen_forms() {
        assert!(Config::parse(&(base() + "\n[admin]\nlisten = \"127.0.0.1:9900\"\n")).is_ok());
        assert!(Config::parse(&(base() + "\n[admin]\nlisten = \"unix:/run/x.sock\"\n")).is_ok());
        assert!(err_of(&(base() + "\n[admin]\nlisten = \"localhost\"\n")).contains("admin.listen"));
    }

    #[test]
    fn relay_listener_allow_list() {
        let text = base()
            + "\n[relay]\nlisten = \"0.0.0.0:5565\"\nallow = [{ prefix = \"10.0.3.0/24\", ports = 80 }]\n";
        let c = Config::parse(&text).unwrap();
        assert!(c.allow_list().permits(&"10.0.3.4:80".parse().unwrap()));
        assert!(!c.allow_list().permits(&"10.0.3.4:22".parse().unwrap()));
        let e = err_of(&(base() + "\n[relay]\nlisten = \"0.0.0.0:5565\"\nheader_timeout_ms = 0\n"));
        assert!(e.contains("relay.header_timeout_ms"), "{e}");
    }

    #[test]
    fn route_modules_are_checked_by_name_and_next_hop() {
        let with = |m: &str| {
            base().replace(
                "via = \"egress\"",
                &format!("via = \"egress\"\nmodules = {m}"),
            )
        };
        let c = Config::parse(&with("[\"dedup\", \"compress\"]")).unwrap();
        let r = c.route_table();
        let r = r.lookup(&"10.0.3.9:80".parse().unwrap()).unwrap();
        assert_eq!(r.modules, ["dedup", "compress"]);
        assert_eq!(c.modules.dedup_store_mib, 256);
        let e = err_of(&with("[\"dedup\", \"gzip\"]"));
        assert!(
            e.contains("route[0].modules[1]") && e.contains("unknown module \"gzip\""),
            "{e}"
        );
        let e = err_of(&with("[\"null\", \"null\"]"));
        assert!(
            e.contains("route[0].modules[1]") && e.contains("twice"),
            "{e}"
        );
        let e = err_of(&base().replace(
            "via = \"egress\"",
            "via = \"direct\"\nmodules = [\"compress\"]",
        ));
        assert!(
            e.contains("route[0].modules") && e.contains("peer relay"),
            "{e}"
        );
    }

    #[test]
    fn modules_settings_are_range_checked() {
        assert!(err_of(&(base() + "\n[modules]\ndedup_store_mib = 0\n"))
            .contains("modules.dedup_store_mib"));
        assert!(err_of(&(base() + "\n[modules]\ncompress_max_level = 22\n"))
            .contains("modules.compress_max_level"));
        assert!(err_of(
            &(base() + "\n[modules]\ncompress_min_level = 5\ncompress_max_level = 3\n")
        )
        .contains("modules.compress_max_level"));
        assert!(err_of(&(base() + "\n[modules]\nnotsent_lowat_bytes = 1\n"))
            .contains("modules.notsent_lowat_bytes"));
        assert!(err_of(&(base() + "\n[modules]\nlevel = 1\n")).contains("level"));
    }
}
