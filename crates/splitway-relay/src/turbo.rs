//! Turbo-start: large initial congestion and receive windows on the routes
//! to peer relays only.
//!
//! For each configured peer, the relay pins a host route (`/32` or `/128`)
//! with the same next hop the kernel uses now, plus `initcwnd` and
//! `initrwnd` sized to the peer path's bandwidth-delay product. Connections
//! to clients and servers use other routes and keep the kernel's defaults.
//! Whatever route existed for that exact prefix is put back on exit.

use std::net::IpAddr;
use std::process::Command;

use splitway_core::config::Config;
use splitway_core::turbo::{parse_route_get, window_segments};

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

struct Pinned {
    fam: &'static str,
    prefix: String,
    /// The route that existed for exactly this prefix before, if any.
    previous: Option<String>,
}

/// Routes pinned with large initial windows; restored on drop.
pub struct Turbo {
    pinned: Vec<Pinned>,
}

impl Turbo {
    /// Pin routes for every `[[peer]]`. A peer whose route can not be found
    /// is logged and skipped (its legs then start with default windows).
    pub fn install(cfg: &Config) -> Turbo {
        let mut pinned = Vec::new();
        for peer in &cfg.peers {
            let addr = peer.addr.ip();
            let (fam, len) = match addr {
                IpAddr::V4(_) => ("-4", 32),
                IpAddr::V6(_) => ("-6", 128),
            };
            let prefix = format!("{addr}/{len}");
            let s = |x: &str| x.to_string();
            let got = ip(&[s(fam), s("route"), s("get"), addr.to_string()])
                .ok()
                .and_then(|t| parse_route_get(&t));
            let Some(route) = got else {
                tracing::warn!(peer = %peer.name, %addr, "turbo-start: no route to peer; skipped");
                continue;
            };
            let previous = ip(&[s(fam), s("route"), s("show"), s("exact"), prefix.clone()])
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
            let win = window_segments(peer.bandwidth_mbit, peer.rtt_ms).to_string();
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
                win.clone(),
            ]);
            match ip(&args) {
                Ok(_) => {
                    tracing::info!(peer = %peer.name, %prefix, window = %win, "turbo-start route pinned");
                    pinned.push(Pinned {
                        fam,
                        prefix,
                        previous,
                    });
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.name, error = %e, "turbo-start: cannot pin route")
                }
            }
        }
        Turbo { pinned }
    }
}

impl Drop for Turbo {
    fn drop(&mut self) {
        for p in &self.pinned {
            let s = |x: &str| x.to_string();
            match &p.previous {
                Some(prev) => {
                    let mut args = vec![s(p.fam), s("route"), s("replace")];
                    args.extend(prev.split_whitespace().map(str::to_string));
                    let _ = ip(&args);
                }
                None => {
                    let _ = ip(&[s(p.fam), s("route"), s("del"), p.prefix.clone()]);
                }
            }
        }
    }
}
