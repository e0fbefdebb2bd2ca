//! splitway's sans-IO core: pure logic with no sockets and no clocks of its own.
//!
//! - [`wire`]: the relay-leg header, its encoding and decoding.
//! - [`frame`]: the frames of the relay-leg protocol v2 (framed legs and lanes).
//! - [`mux`]: streams multiplexed on a lane: stream states, flow control, scheduler.
//! - [`auth`]: the header's MAC, the key ring and the replay guard.
//! - [`route`]: the route table (destination → next hop) and the egress allow list.
//! - [`ports`]: port ranges as written in config.
//! - [`config`]: the typed, validated configuration file.
//! - [`fleet`]: fleet mode's etcd layout and rendering its keys into a config.
//! - [`failover`]: which next hop to try, when a peer counts as down, back-off.
//! - [`flow`]: the rules of one split connection (ends, half-close, idle,
//!   resets), driven with the time.
//! - [`lend`]: spares lent out and given back (buffers, pipes), between
//!   watermarks.
//! - [`pool`]: watermark bookkeeping of pre-established relay legs.
//! - [`pairing`]: early-SYN legs waiting for their accepted client, bounded.
//! - [`proxy`], [`socks5`], [`http_connect`], [`proxy_config`]: the proxy
//!   ingresses' handshakes (SOCKS5, HTTP CONNECT), their shared types and config.
//! - [`turbo`]: turbo-start window sizing and route parsing.
//!
//! Everything here is tested without a network; the daemon in `splitway-relay`
//! does the I/O.

pub mod auth;
pub mod config;
pub mod failover;
pub mod fleet;
pub mod flow;
pub mod frame;
pub mod http_connect;
pub mod lend;
pub mod mux;
pub mod pairing;
pub mod pool;
pub mod ports;
pub mod proxy;
pub mod proxy_config;
pub mod route;
pub mod socks5;
pub mod turbo;
pub mod wire;
