//! The admin API's endpoints, and who may call them.
//!
//! - `GET /metrics` (Prometheus text), `GET /health`: on both listeners.
//! - `GET /status`, `/peers`, `/routes`, `/connections` (per-leg TCP_INFO).
//! - Writes, through [`Control`]: `POST /reload`, `/drain`, `/features`,
//!   `/peers/NAME/pool`; `PUT /routes`, `/peers`; `DELETE /routes`,
//!   `/peers/NAME`. With `[admin] token` set, a write without
//!   `Authorization: Bearer TOKEN` gets 401, with a wrong one 403, both
//!   counted in `splitway_admin_refused_total`.
//!
//! Every refusal is an [`ApiError`] whose kind picks the status; bodies are
//! `{"error": ..., "field": ...}`.

use std::sync::Arc;

use serde_json::json;
use splitway_core::config::AdminToken;

use super::http::{Request, Response};
use crate::control::{Change, Control, ControlError};
use crate::state::Shared;
use crate::sys::sockopt;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The admin API: everything.
    Admin,
    /// The metrics listener: `GET /metrics` and `GET /health` only.
    Metrics,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The JSON body does not fit; `field` is the path serde stopped at.
    #[error("{field}: {reason}")]
    Body { field: String, reason: String },
    #[error("no endpoint {0}")]
    NoEndpoint(String),
    #[error("{method} not allowed on {path}")]
    Method { method: String, path: String },
    #[error("the metrics listener serves GET /metrics and GET /health only")]
    ReadOnly,
    #[error("this write needs the admin token (Authorization: Bearer ...)")]
    NoToken,
    #[error("wrong admin token")]
    BadToken,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Control(e) => e.status(),
            ApiError::Body { .. } => 400,
            ApiError::NoEndpoint(_) => 404,
            ApiError::Method { .. } | ApiError::ReadOnly => 405,
            ApiError::NoToken => 401,
            ApiError::BadToken => 403,
        }
    }

    pub fn field(&self) -> &str {
        match self {
            ApiError::Control(e) => e.field(),
            ApiError::Body { field, .. } => field,
            ApiError::NoEndpoint(_) => "path",
            ApiError::Method { .. } | ApiError::ReadOnly => "method",
            ApiError::NoToken | ApiError::BadToken => "authorization",
        }
    }

    fn reason(&self) -> String {
        match self {
            ApiError::Control(e) => e.reason(),
            ApiError::Body { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }

    pub fn response(&self) -> Response {
        Response::error(self.status(), self.field(), self.reason())
    }
}

/// Everything the endpoints need.
pub struct Api {
    pub shared: Arc<Shared>,
    pub control: Control,
    pub token: Option<AdminToken>,
    /// Writes refused at the door, by reason (`no_token`, `bad_token`,
    /// `read_only`).
    pub refused: prometheus::IntCounterVec,
}

impl Api {
    pub fn new(shared: Arc<Shared>, control: Control, token: Option<AdminToken>) -> Api {
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "splitway_admin_refused_total",
                "Admin API writes refused before they ran, by reason",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let _ = shared
            .metrics
            .registry()
            .register(Box::new(refused.clone()));
        for r in ["no_token", "bad_token", "read_only"] {
            refused.with_label_values(&[r]);
        }
        Api {
            shared,
            control,
            token,
            refused,
        }
    }

    /// Answer one request that came in on `role`'s listener.
    pub async fn handle(&self, role: Role, req: &Request) -> Response {
        match self.route(role, req).await {
            Ok(r) => r,
            Err(e) => {
                match &e {
                    ApiError::NoToken => self.refused.with_label_values(&["no_token"]).inc(),
                    ApiError::BadToken => self.refused.with_label_values(&["bad_token"]).inc(),
                    ApiError::ReadOnly => self.refused.with_label_values(&["read_only"]).inc(),
                    _ => {}
                }
                e.response()
            }
        }
    }

    fn authorize(&self, req: &Request) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::NoToken)?;
        if token.matches(given.trim()) {
            Ok(())
        } else {
            Err(ApiError::BadToken)
        }
    }

    async fn route(&self, role: Role, req: &Request) -> Result<Response, ApiError> {
        let shared = &self.shared;
        let path = req.path.split('?').next().unwrap_or("");
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let read = req.method == "GET";
        match (read, segs.as_slice()) {
            (true, ["metrics"]) => {
                return Ok(Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4",
                    body: shared.metrics.render(),
                })
            }
            (true, ["health"]) => return Ok(health(shared)),
            _ if role == Role::Metrics => {
                return Err(if read {
                    ApiError::NoEndpoint(path.to_string())
                } else {
                    ApiError::ReadOnly
                })
            }
            (true, ["status"]) => return Ok(status(shared)),
            (true, ["peers"]) => return Ok(peers(shared)),
            (true, ["routes"]) => return Ok(routes(shared)),
            (true, ["lanes"]) => return Ok(lanes(shared)),
            (true, ["connections"]) => return Ok(connections(shared)),
            _ => {}
        }
        let change = match (req.method.as_str(), segs.as_slice()) {
            ("POST", ["reload"]) => Change::Reload,
            ("POST", ["drain"]) => Change::Drain,
            ("POST", ["features"]) => Change::SetFeatures(body(req)?),
            ("POST", ["peers", name, "pool"]) => {
                let b: PoolBody = body(req)?;
                Change::SetPool {
                    peer: name.to_string(),
                    low: b.low,
                    high: b.high,
                }
            }
            ("PUT", ["routes"]) => Change::PutRoute(body(req)?),
            ("DELETE", ["routes"]) => {
                let b: RouteKey = body(req)?;
                Change::DeleteRoute {
                    prefix: b.prefix,
                    ports: b.ports,
                }
            }
            ("PUT", ["peers"]) => Change::PutPeer(body(req)?),
            ("DELETE", ["peers", name]) => Change::DeletePeer(name.to_string()),
            (
                _,
                ["metrics" | "health" | "status" | "peers" | "routes" | "connections" | "reload"
                | "drain" | "features"],
            ) => {
                return Err(ApiError::Method {
                    method: req.method.clone(),
                    path: path.to_string(),
                })
            }
            _ => return Err(ApiError::NoEndpoint(path.to_string())),
        };
        self.authorize(req)?;
        let msg = self.control.apply(change).await?;
        Ok(Response::ok(&msg))
    }
}

/// Parse a JSON body into `T`; a misfit names the field by serde's path
/// to it (typed, not read from the message).
fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // "." is the whole body, "?" a syntax error before any field.
        let field = if path == "." || path == "?" {
            "body".into()
        } else {
            path
        };
        ApiError::Body {
            field,
            reason: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| ApiError::Body {
        field: "body".into(),
        reason: e.to_string(),
    })?;
    Ok(v)
}

fn health(shared: &Shared) -> Response {
    let draining = shared.draining.load(std::sync::atomic::Ordering::SeqCst);
    Response::json(
        if draining { 503 } else { 200 },
        json!({"ok": !draining, "draining": draining}),
    )
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
            "workers": shared.workers.load(std::sync::atomic::Ordering::Relaxed),
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

/// Lanes this relay keeps to `legs = "mux"` peers, slot by slot, and the
/// streams on lanes it accepted.
fn lanes(shared: &Shared) -> Response {
    let m = &shared.lanes.m;
    let list: Vec<_> = shared
        .lanes
        .summary()
        .into_iter()
        .map(|(peer, lanes)| json!({ "peer": peer, "lanes": lanes }))
        .collect();
    Response::json(
        200,
        json!({
            "peers": list,
            "accepted": {
                "lanes": m.lanes.with_label_values(&["acceptor"]).get(),
                "streams": m.streams.with_label_values(&["acceptor"]).get(),
            },
            "scheduler_queued_bytes": m.sched_queued_bytes.get(),
        }),
    )
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

#[derive(Debug, serde::Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            authorization: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn body_errors_name_the_field_by_path() {
        let e = body::<PoolBody>(&req("POST", "/", r#"{"low": 1, "hihg": 2}"#)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("hihg"), "{e}");
        assert_eq!(e.field(), "hihg");
        let e = body::<PoolBody>(&req("POST", "/", r#"{"low": "x", "high": 2}"#)).unwrap_err();
        assert_eq!(e.field(), "low");
        let e = body::<crate::control::FeaturePatch>(&req("POST", "/", r#"{"early_syn": 1}"#))
            .unwrap_err();
        assert_eq!(e.field(), "early_syn");
        let e = body::<PoolBody>(&req("POST", "/", "{not json")).unwrap_err();
        assert_eq!((e.status(), e.field()), (400, "body"));
        let e = body::<PoolBody>(&req("POST", "/", r#"{"low": 1, "high": 2} x"#)).unwrap_err();
        assert_eq!(e.field(), "body");
    }

    #[test]
    fn statuses_follow_error_kinds() {
        use splitway_core::config::ConfigError;
        let cases: Vec<(ApiError, u16)> = vec![
            (
                ControlError::Invalid {
                    field: "low".into(),
                    reason: "x".into(),
                }
                .into(),
                400,
            ),
            (
                ControlError::NotFound {
                    field: "peer",
                    reason: "x".into(),
                }
                .into(),
                404,
            ),
            (
                ControlError::Conflict {
                    field: "node.name".into(),
                    reason: "x".into(),
                }
                .into(),
                409,
            ),
            (
                ControlError::File(ConfigError::Parse("x".into())).into(),
                400,
            ),
            (
                ControlError::File(ConfigError::Read {
                    path: "/x".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })
                .into(),
                500,
            ),
            (
                ControlError::Kernel(crate::kernel::KernelError::Stopped).into(),
                500,
            ),
            (ControlError::Stopped.into(), 503),
            (ApiError::NoToken, 401),
            (ApiError::BadToken, 403),
            (ApiError::ReadOnly, 405),
            (ApiError::NoEndpoint("/x".into()), 404),
        ];
        for (e, want) in cases {
            assert_eq!(e.status(), want, "{e:?}");
            assert_eq!(e.response().status, want);
        }
    }
}
