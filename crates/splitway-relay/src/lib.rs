//! The splitway relay daemon.
//!
//! Layout, following a connection:
//! - [`admin`]: the HTTP admin API and the read-only metrics listener.
//! - [`control`]: runtime changes (reload, pools, routes, peers, switches,
//!   drain), applied one at a time by one owner ([`control::Control`]).
//! - [`kernel`]: the one owner of run-time kernel state (turbo routes,
//!   early-SYN queue and rules), on its own thread.
//! - [`fleet`]: fleet mode (cargo feature `fleet`): state from etcd, presence, cache.
//! - [`daemon`]: listeners, accept loops, shutdown ([`daemon::run`] is the entry point).
//! - [`shards`]: per-core runtimes, each accepting on its own `SO_REUSEPORT` listener.
//! - [`firewall`]: nftables TPROXY rules and policy routing for transparent mode.
//! - [`flow`]: one split connection: route, next hop, forward.
//! - [`ingress`]: SOCKS5 and HTTP CONNECT listeners: handshake, then a flow.
//! - [`failover`]: which next hop of a route to try; peers that recently failed.
//! - [`syn_tap`]: early SYN: NFQUEUE tap that starts the next leg on the client's SYN.
//! - [`pool`]: pools of pre-established relay legs per peer.
//! - [`resources`]: buffers and pipes kept ready (worker pools).
//! - [`turbo`]: turbo-start: large initial windows on routes to peers only.
//! - [`leg`]: relay legs: sending a header, reading and authenticating one.
//! - [`lane`]: multiplexed relay legs (lanes): streams, per-peer warm lanes, their forwarding.
//! - [`dial`]: outbound connects with the right socket profile.
//! - [`profile`]: what Internet-facing legs and relay legs get.
//! - [`forward`]: the forwarding engines (`copy`, `splice`) and the rules they share.
//! - [`modules`]: stream modules on framed relay legs (chains, stores, the module engine).
//! - [`state`]: what all connections of a relay share (config snapshot, metrics...).
//! - [`metrics`]: Prometheus metrics.
//! - [`sys`]: every OS-specific socket and pipe call.

pub mod admin;
pub mod control;
pub mod daemon;
pub mod dial;
pub mod failover;
pub mod firewall;
#[cfg(feature = "fleet")]
pub mod fleet;
pub mod flow;
pub mod forward;
pub mod ingress;
pub mod kernel;
pub mod lane;
pub mod leg;
pub mod metrics;
pub mod modules;
pub mod pool;
pub mod profile;
pub mod ratelimit;
pub mod resources;
pub mod shards;
pub mod state;
pub mod syn_tap;
pub mod sys;
pub mod turbo;

pub use daemon::{run, RunOptions};
