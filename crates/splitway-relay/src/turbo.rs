//! Turbo-start: large initial congestion and receive windows on the routes
//! to peer relays only.
//!
//! For each configured peer, the relay pins a host route (`/32` or `/128`)
//! with the same next hop the kernel uses now, plus `initcwnd` and
//! `initrwnd` sized to the peer path's bandwidth-delay product, for the peer
//! as a whole: a `legs = "mux"` peer's lanes share it (each starts with
//! BDP / `lanes`, so together they start with one BDP, not one each).
//! Per-flow legs each get the whole BDP: the route is per address, so
//! legs to one peer can not be told apart. Connections
//! to clients and servers use other routes and keep the kernel's defaults.
//! Whatever route existed for that exact prefix is put back when the peer
//! goes away, when turbo-start is switched off, and on exit.
//!
//! Runs `ip`, which blocks: only the kernel-state owner
//! ([`crate::kernel`]) calls this, on its own thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;

use splitway_core::config::{Config, LegMode, Peer};
use splitway_core::turbo::{parse_route_get, shared_window_segments};

fn ip(args: &[String]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

struct Pinned {
    fam: &'static str,
    /// The `ip route replace` arguments it was pinned with.
    args: Vec<String>,
    /// The route that existed for exactly this prefix before we pinned
    /// it, if any.
    previous: Option<String>,
}

/// Routes pinned with large initial windows, by prefix; restored on drop.
#[derive(Default)]
pub struct Turbo {
    pinned: HashMap<String, Pinned>,
    /// What the last sync was for: the switch and each peer's address,
    /// bandwidth and RTT. A change that leaves these alone (a route, a
    /// pool watermark, a reload of the same file) runs no `ip` at all.
    synced: Option<SyncKey>,
}

type SyncKey = Vec<(String, String, u64, u64, usize)>;

/// How many connections share `peer`'s initial window: its lanes, or 1.
fn sharing(peer: &Peer) -> usize {
    match peer.legs {
        LegMode::Mux => peer.lanes,
        LegMode::PerFlow => 1,
    }
}

fn sync_key(cfg: &Config) -> SyncKey {
    if !cfg.features.turbo_start {
        return Vec::new();
    }
    cfg.peers
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.addr.to_string(),
                p.bandwidth_mbit.to_bits(),
                p.rtt_ms.to_bits(),
                sharing(p),
            )
        })
        .collect()
}

/// What one peer's pinned route should be.
struct Want {
    peer: String,
    fam: &'static str,
    args: Vec<String>,
}

fn wanted(cfg: &Config) -> HashMap<String, Want> {
    let mut out = HashMap::new();
    if !cfg.features.turbo_start {
        return out;
    }
    for peer in &cfg.peers {
        let addr = peer.addr.ip();
        let (fam, len) = match addr {
            IpAddr::V4(_) => ("-4", 32),
            IpAddr::V6(_) => ("-6", 128),
        };
        let prefix = format!("{addr}/{len}");
        let got = ip(&[s(fam), s("route"), s("get"), addr.to_string()])
            .ok()
            .and_then(|t| parse_route_get(&t));
        let Some(route) = got else {
            tracing::warn!(peer = %peer.name, %addr, "turbo-start: no route to peer; skipped");
            continue;
        };
        let win =
            shared_window_segments(peer.bandwidth_mbit, peer.rtt_ms, sharing(peer)).to_string();
        let mut args = vec![s(fam), s("route"), s("replace"), prefix.clone()];
        if let Some(via) = route.via {
            args.extend([s("via"), via.to_string()]);
        }
        args.extend([
            s("dev"),
            route.dev.clone(),
            s("initcwnd"),
            win.clone(),
            s("initrwnd"),
            win,
        ]);
        out.insert(
            prefix,
            Want {
                peer: peer.name.clone(),
                fam,
                args,
            },
        );
    }
    out
}

impl Turbo {
    /// Make the pinned routes follow `cfg`: pin new and changed ones first,
    /// then put back the routes of peers that went away. Best effort, as
    /// at start: a peer whose route can not be found or pinned is logged
    /// and skipped (its legs then start with default windows).
    pub fn sync(&mut self, cfg: &Config) {
        let key = sync_key(cfg);
        if self.synced.as_ref() == Some(&key) {
            return;
        }
        self.synced = Some(key);
        let want = wanted(cfg);
        for (prefix, w) in &want {
            if self.pinned.get(prefix).is_some_and(|p| p.args == w.args) {
                continue;
            }
            let previous = match self.pinned.get(prefix) {
                Some(p) => p.previous.clone(),
                None => ip(&[s(w.fam), s("route"), s("show"), s("exact"), prefix.clone()])
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty()),
            };
            match ip(&w.args) {
                Ok(_) => {
                    tracing::info!(peer = %w.peer, %prefix, "turbo-start route pinned");
                    self.pinned.insert(
                        prefix.clone(),
                        Pinned {
                            fam: w.fam,
                            args: w.args.clone(),
                            previous,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(peer = %w.peer, error = %e, "turbo-start: cannot pin route")
                }
            }
        }
        let gone: Vec<String> = self
            .pinned
            .keys()
            .filter(|p| !want.contains_key(*p))
            .cloned()
            .collect();
        for prefix in gone {
            if let Some(p) = self.pinned.remove(&prefix) {
                restore(&prefix, &p);
            }
        }
    }

    /// Prefixes pinned now.
    pub fn prefixes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pinned.keys().cloned().collect();
        v.sort();
        v
    }
}

fn restore(prefix: &str, p: &Pinned) {
    match &p.previous {
        Some(prev) => {
            let mut args = vec![s(p.fam), s("route"), s("replace")];
            args.extend(prev.split_whitespace().map(str::to_string));
            let _ = ip(&args);
        }
        None => {
            let _ = ip(&[s(p.fam), s("route"), s("del"), s(prefix)]);
        }
    }
}

impl Drop for Turbo {
    fn drop(&mut self) {
        for (prefix, p) in self.pinned.drain() {
            restore(&prefix, &p);
        }
    }
}
