//! The admin API: a small HTTP/1.1 server on a local address or Unix socket.
//!
//! Only what an operator's tools need, with no framework: one request per
//! connection, `Connection: close`, JSON bodies. Endpoints (see
//! `docs/operations.md`):
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`, `/peers`, `/routes`, `/connections` (per-leg TCP_INFO).
//! - `POST /reload`, `/drain`, `/features`, `/peers/NAME/pool`;
//!   `PUT /routes`, `/peers`; `DELETE /routes`, `/peers/NAME`.
//!
//! A bad request gets a 4xx with `{"error": ..., "field": ...}`; nothing
//! is half-applied (see [`crate::control`]).

use std::sync::Arc;

use splitway_core::config::{parse_admin_listen, AdminListen};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use serde_json::json;

use crate::control::{self, ControlError};
use crate::state::Shared;
use crate::sys::sockopt;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Parse the request line of an HTTP/1.x head; `None` if malformed.
pub fn parse_head(head: &[u8]) -> Option<(String, String, usize)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let line = lines.next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return None;
    }
    let mut len = 0;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    Some((method, path, len))
}

/// A response: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn json(status: u16, v: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{v:#}\n"),
        }
    }

    fn error(status: u16, field: &str, msg: impl Into<String>) -> Response {
        Response::json(status, json!({"error": msg.into(), "field": field}))
    }

    fn ok(msg: &str) -> Response {
        Response::json(200, json!({"ok": true, "message": msg}))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Error",
    }
}

fn from_control(r: Result<(), ControlError>, ok: &str) -> Response {
    match r {
        Ok(()) => Response::ok(ok),
        Err(e) if e.field == "apply" => Response::error(500, &e.field, e.reason),
        Err(e) if e.reason.contains("restart") => Response::error(409, &e.field, e.reason),
        Err(e) => Response::error(400, &e.field, e.reason),
    }
}

/// Parse a JSON body into `T`; the error names the field serde complains about.
fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(&req.body).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("body")
            .to_string();
        Response::error(400, &field, msg)
    })
}

fn tcp_info_json(s: &tokio::net::TcpStream) -> serde_json::Value {
    match sockopt::tcp_info(s) {
        Ok(i) => json!({
            "rtt_ms": i.rtt_us as f64 / 1000.0,
            "rttvar_ms": i.rttvar_us as f64 / 1000.0,
            "cwnd": i.snd_cwnd,
            "mss": i.snd_mss,
            "unacked": i.unacked,
            "bytes_in_flight": u64::from(i.unacked) * u64::from(i.snd_mss),
            "notsent_bytes": i.notsent_bytes,
            "delivery_rate_bps": i.delivery_rate_bps,
            "retrans_total": i.retrans_total,
            "bytes_acked": i.bytes_acked,
            "bytes_received": i.bytes_received,
        }),
        Err(e) => json!({"error": e.to_string()}),
    }
}

fn status(shared: &Shared) -> Response {
    let snap = shared.snapshot();
    let c = &snap.cfg;
    let uptime = shared
        .started
        .elapsed()
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Response::json(
        200,
        json!({
            "node": c.node.name,
            "version": env!("CARGO_PKG_VERSION"),
            "engine": c.node.engine.as_str(),
            "uptime_secs": uptime,
            "active": shared.metrics.active.get(),
            "tasks": shared.active(),
            "draining": shared.draining.load(std::sync::atomic::Ordering::SeqCst),
            "features": {
                "early_syn": c.features.early_syn,
                "worker_pools": c.features.worker_pools,
                "conn_pool": c.features.conn_pool,
                "turbo_start": c.features.turbo_start,
                "fast_open": c.features.fast_open,
            },
            "listeners": {
                "transparent": c.transparent.iter().map(|t| t.port).collect::<Vec<_>>(),
                "explicit": c.explicit.iter().map(|e| format!("{} -> {}", e.listen, e.target)).collect::<Vec<_>>(),
                "relay": c.relay.as_ref().map(|r| r.listen.to_string()),
            },
            "peers": c.peers.len(),
            "routes": c.routes.len(),
        }),
    )
}

fn peers(shared: &Shared) -> Response {
    let snap = shared.snapshot();
    let list: Vec<_> = snap
        .cfg
        .peers
        .iter()
        .map(|p| {
            let pool = shared.pools.get(&p.name);
            let pool_json = pool.map(|pool| {
                let [hits, misses, opened, failures, dead] = pool.counters();
                json!({
                    "idle": pool.idle_count(),
                    "low": pool.watermarks().low,
                    "high": pool.watermarks().high,
                    "hits": hits, "misses": misses, "refills": opened,
                    "failures": failures, "dead_discarded": dead,
                    "rtt_ms": pool.measured_rtt_us().map(|u| u as f64 / 1000.0),
                })
            });
            json!({
                "name": p.name, "addr": p.addr.to_string(),
                "pool_low": p.pool_low, "pool_high": p.pool_high,
                "bandwidth_mbit": p.bandwidth_mbit, "rtt_ms": p.rtt_ms,
                "pool": pool_json,
            })
        })
        .collect();
    Response::json(200, json!({ "peers": list }))
}

fn routes(shared: &Shared) -> Response {
    let snap = shared.snapshot();
    let list: Vec<_> = snap
        .routes
        .routes()
        .iter()
        .map(|r| {
            let backup: Vec<String> = r.backup.iter().map(|h| h.to_string()).collect();
            let down: Vec<&str> = r
                .hops()
                .filter_map(|h| h.peer())
                .filter(|p| shared.pools.health.is_down(p))
                .collect();
            json!({
                "prefix": r.prefix.to_string(), "ports": r.ports.to_string(),
                "via": r.via.to_string(), "backup": backup, "down": down,
            })
        })
        .collect();
    Response::json(200, json!({ "routes": list }))
}

fn connections(shared: &Shared) -> Response {
    let list = shared.with_flows(|flows| {
        flows
            .into_iter()
            .map(|(id, f)| {
                let age = f.started.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
                json!({
                    "id": id, "kind": f.kind, "peer": f.peer.to_string(), "dst": f.dst.to_string(),
                    "age_secs": age,
                    "down": tcp_info_json(&f.down),
                    "up": tcp_info_json(&f.up),
                })
            })
            .collect::<Vec<_>>()
    });
    Response::json(200, json!({ "connections": list }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBody {
    low: usize,
    high: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteKey {
    prefix: ipnet::IpNet,
    ports: Option<splitway_core::ports::PortRange>,
}

fn route(shared: &Shared, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r = |b: Result<Response, Response>| b.unwrap_or_else(|e| e);
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: shared.metrics.render(),
        },
        ("GET", ["status"]) => status(shared),
        ("GET", ["peers"]) => peers(shared),
        ("GET", ["routes"]) => routes(shared),
        ("GET", ["connections"]) => connections(shared),
        ("POST", ["reload"]) => match control::reload(shared) {
            Ok(msg) => Response::ok(&msg),
            Err(e) => from_control(Err(e), ""),
        },
        ("POST", ["drain"]) => {
            control::drain(shared);
            Response::ok("draining: new connections are refused, open ones finish")
        }
        ("POST", ["features"]) => r(body::<control::FeaturePatch>(req).map(|p| {
            from_control(
                control::set_features(shared, &p),
                "features changed for new connections",
            )
        })),
        ("POST", ["peers", name, "pool"]) => r(body::<PoolBody>(req).map(|b| {
            from_control(
                control::set_pool(shared, name, b.low, b.high),
                "pool watermarks changed",
            )
        })),
        ("PUT", ["routes"]) => r(body::<splitway_core::config::RouteConf>(req)
            .map(|b| from_control(control::put_route(shared, b), "route set"))),
        ("DELETE", ["routes"]) => r(body::<RouteKey>(req).map(|b| {
            from_control(
                control::delete_route(shared, b.prefix, b.ports),
                "route removed",
            )
        })),
        ("PUT", ["peers"]) => r(body::<splitway_core::config::Peer>(req)
            .map(|b| from_control(control::put_peer(shared, b), "peer set"))),
        ("DELETE", ["peers", name]) => {
            from_control(control::delete_peer(shared, name), "peer removed")
        }
        (
            _,
            ["metrics" | "status" | "peers" | "routes" | "connections" | "reload" | "drain"
            | "features"],
        ) => Response::error(
            405,
            "method",
            format!("{} not allowed on {}", req.method, path),
        ),
        _ => Response::error(404, "path", format!("no endpoint {path}")),
    }
}

async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let timeout = std::time::Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (method, path, len) = parse_head(&buf[..end])
                .ok_or_else(|| Response::error(400, "request", "malformed request"))?;
            if len > MAX_BODY {
                return Err(Response::error(413, "body", "body too large"));
            }
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                match tokio::time::timeout(timeout, s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                    _ => {
                        return Err(Response::error(
                            400,
                            "body",
                            "body shorter than content-length",
                        ))
                    }
                }
            }
            body.truncate(len);
            return Ok(Request { method, path, body });
        }
        if buf.len() > MAX_HEAD {
            return Err(Response::error(400, "request", "head too large"));
        }
        match tokio::time::timeout(timeout, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Err(Response::error(400, "request", "incomplete request")),
        }
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, shared: Arc<Shared>) {
    let resp = match read_request(&mut s).await {
        Ok(req) => route(&shared, &req),
        Err(resp) => resp,
    };
    let out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len(),
        resp.body
    );
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Pause after a failed admin `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Serve the admin API on `listen` until `stop` flips.
pub async fn serve(
    listen: &str,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    match parse_admin_listen(listen) {
        Some(AdminListen::Tcp(addr)) => {
            let l = TcpListener::bind(addr).await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok((s, _)) => { tokio::spawn(serve_one(s, shared.clone())); }
                            // Out of fds: the request stays queued; retry
                            // later instead of spinning on the error.
                            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
                        },
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        Some(AdminListen::Unix(path)) => {
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            // The API can change routes and drain the relay: owner only,
            // whatever the umask.
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok((s, _)) => { tokio::spawn(serve_one(s, shared.clone())); }
                            // Out of fds: the request stays queued; retry
                            // later instead of spinning on the error.
                            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
                        },
                        _ = stop.changed() => { let _ = std::fs::remove_file(&path); return; }
                    }
                }
            });
        }
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad admin listen address {listen}"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        assert_eq!(
            parse_head(b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 12"),
            Some(("POST".into(), "/features".into(), 12))
        );
        assert_eq!(parse_head(b"GET metrics HTTP/1.1"), None);
        assert_eq!(parse_head(b"\xff\xfe"), None);
        assert_eq!(parse_head(b"GET /x SPDY/3"), None);
        assert_eq!(parse_head(b"GET /x HTTP/1.1\r\ncontent-length: lots"), None);
    }
}
