//! `splitway ctl`: talk to a running relay's admin API (HTTP over TCP or a
//! Unix socket), with human output or `--json`.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

mod fleet;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API address: IP:PORT or unix:/path (env SPLITWAY_ADMIN).
    #[arg(long, env = "SPLITWAY_ADMIN", default_value = "127.0.0.1:9900")]
    admin: String,
    /// Bearer token for writes, if the relay sets `[admin] token`
    /// (env SPLITWAY_ADMIN_TOKEN; prefer the file: a flag shows in `ps`).
    #[arg(long, env = "SPLITWAY_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file whose first line is the token (env SPLITWAY_ADMIN_TOKEN_FILE).
    #[arg(long, env = "SPLITWAY_ADMIN_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Debug, Subcommand)]
enum CtlCmd {
    /// Node status and config summary.
    Status,
    /// Peers with pool state.
    Peers,
    /// The route table, most specific first.
    Routes,
    /// Lanes to `legs = "mux"` peers: streams, scheduler queue, pacing.
    Lanes,
    /// Live split connections with both legs' TCP state (like `ss -ti`).
    #[command(alias = "ss")]
    Connections,
    /// Raw Prometheus metrics.
    Metrics,
    /// Re-read the config file (new connections only).
    Reload,
    /// Stop accepting; let open flows finish.
    Drain,
    /// Set a peer's pool watermarks.
    Pool {
        peer: String,
        low: usize,
        high: usize,
    },
    /// Switch a KTCP improvement: early_syn, conn_pool, turbo_start, fast_open.
    Feature { name: String, state: OnOff },
    /// Add/replace or delete a route.
    Route {
        #[command(subcommand)]
        op: RouteOp,
    },
    /// Add/replace or delete a peer.
    Peer {
        #[command(subcommand)]
        op: PeerOp,
    },
    /// The fleet from etcd (every relay, its peers, their health); key rotation.
    Fleet(Box<fleet::FleetArgs>),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum RouteOp {
    Add {
        prefix: String,
        via: String,
        #[arg(long)]
        ports: Option<String>,
        /// Next hops to fail over to, in order (repeat, or comma-separated).
        #[arg(long, value_delimiter = ',')]
        backup: Vec<String>,
    },
    Del {
        prefix: String,
        #[arg(long)]
        ports: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PeerOp {
    Add {
        name: String,
        addr: String,
        #[arg(long)]
        low: Option<usize>,
        #[arg(long)]
        high: Option<usize>,
    },
    Del {
        name: String,
    },
}

/// The token from `--token` or `--token-file`, if any.
fn token(a: &CtlArgs) -> anyhow::Result<Option<String>> {
    if let Some(t) = &a.token {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(p) = &a.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading the token file {}", p.display()))?;
    Ok(text.lines().next().map(|l| l.trim().to_string()))
}

/// One HTTP request; returns (status, body).
fn request(
    admin: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, String)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: splitway\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut resp = Vec::new();
    if let Some(p) = admin.strip_prefix("unix:") {
        let mut s = std::os::unix::net::UnixStream::connect(p)
            .with_context(|| format!("connecting to {admin}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        s.read_to_end(&mut resp)?;
    } else {
        let addr: std::net::SocketAddr = admin
            .parse()
            .with_context(|| format!("bad admin address {admin}"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| {
                format!("connecting to {admin} (is the relay's [admin] listen set?)")
            })?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        s.read_to_end(&mut resp)?;
    }
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").context("malformed response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    Ok((status, body.to_string()))
}

fn f(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

fn print_human(cmd: &CtlCmd, v: &Value) {
    match cmd {
        CtlCmd::Status => {
            for (k, val) in v.as_object().into_iter().flatten() {
                println!("{k:<12} {}", f(val));
            }
        }
        CtlCmd::Peers => {
            println!(
                "{:<12} {:<22} {:>5} {:>4} {:>5} {:>7} {:>7} {:>8} {:>6} {:>7}",
                "PEER",
                "ADDR",
                "IDLE",
                "LOW",
                "HIGH",
                "HITS",
                "MISSES",
                "REFILLS",
                "DEAD",
                "RTT_MS"
            );
            for p in v["peers"].as_array().into_iter().flatten() {
                let pool = &p["pool"];
                println!(
                    "{:<12} {:<22} {:>5} {:>4} {:>5} {:>7} {:>7} {:>8} {:>6} {:>7}",
                    f(&p["name"]),
                    f(&p["addr"]),
                    f(&pool["idle"]),
                    f(&p["pool_low"]),
                    f(&p["pool_high"]),
                    f(&pool["hits"]),
                    f(&pool["misses"]),
                    f(&pool["refills"]),
                    f(&pool["dead_discarded"]),
                    f(&pool["rtt_ms"])
                );
            }
        }
        CtlCmd::Lanes => {
            println!(
                "{:<12} {:>4} {:>6} {:>8} {:>12} {:>12}",
                "PEER", "LANE", "READY", "STREAMS", "QUEUED_B", "PACING_B/S"
            );
            for p in v["peers"].as_array().into_iter().flatten() {
                for (i, l) in p["lanes"].as_array().into_iter().flatten().enumerate() {
                    let paced = match l["pacing_bytes_per_sec"].as_u64() {
                        Some(0) | None => "-".to_string(),
                        Some(r) => r.to_string(),
                    };
                    println!(
                        "{:<12} {:>4} {:>6} {:>8} {:>12} {:>12}",
                        f(&p["peer"]),
                        i,
                        if l["ready"].as_bool() == Some(true) {
                            "yes"
                        } else {
                            "no"
                        },
                        f(&l["streams"]),
                        f(&l["queued_bytes"]),
                        paced
                    );
                }
            }
            let a = &v["accepted"];
            println!(
                "accepted: {} lane(s), {} stream(s); scheduler queue {} B",
                f(&a["lanes"]),
                f(&a["streams"]),
                f(&v["scheduler_queued_bytes"])
            );
        }
        CtlCmd::Routes => {
            println!(
                "{:<24} {:<12} {:<12} {:<24} DOWN",
                "PREFIX", "PORTS", "VIA", "BACKUP"
            );
            let list = |v: &Value| {
                let names: Vec<String> = v.as_array().into_iter().flatten().map(f).collect();
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                }
            };
            for r in v["routes"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<12} {:<12} {:<24} {}",
                    f(&r["prefix"]),
                    f(&r["ports"]),
                    f(&r["via"]),
                    list(&r["backup"]),
                    list(&r["down"])
                );
            }
        }
        CtlCmd::Connections => {
            let leg = |l: &Value| {
                format!(
                    "rtt:{}ms cwnd:{} inflight:{}B notsent:{}B rate:{}bps retrans:{}",
                    f(&l["rtt_ms"]),
                    f(&l["cwnd"]),
                    f(&l["bytes_in_flight"]),
                    f(&l["notsent_bytes"]),
                    f(&l["delivery_rate_bps"]),
                    f(&l["retrans_total"])
                )
            };
            for c in v["connections"].as_array().into_iter().flatten() {
                println!(
                    "#{} {} {} -> {} ({}s)",
                    f(&c["id"]),
                    f(&c["kind"]),
                    f(&c["peer"]),
                    f(&c["dst"]),
                    f(&c["age_secs"])
                );
                println!("    down  {}", leg(&c["down"]));
                println!("    up    {}", leg(&c["up"]));
            }
        }
        _ => println!("{}", v["message"].as_str().unwrap_or("ok")),
    }
}

pub fn run(a: CtlArgs) -> anyhow::Result<()> {
    let a = match a.cmd {
        CtlCmd::Fleet(f) => return fleet::run(*f, a.json),
        cmd => CtlArgs { cmd, ..a },
    };
    let (method, path, body): (&str, String, Option<Value>) = match &a.cmd {
        CtlCmd::Status => ("GET", "/status".into(), None),
        CtlCmd::Peers => ("GET", "/peers".into(), None),
        CtlCmd::Routes => ("GET", "/routes".into(), None),
        CtlCmd::Lanes => ("GET", "/lanes".into(), None),
        CtlCmd::Connections => ("GET", "/connections".into(), None),
        CtlCmd::Metrics => ("GET", "/metrics".into(), None),
        CtlCmd::Reload => ("POST", "/reload".into(), None),
        CtlCmd::Drain => ("POST", "/drain".into(), None),
        CtlCmd::Pool { peer, low, high } => (
            "POST",
            format!("/peers/{peer}/pool"),
            Some(json!({"low": low, "high": high})),
        ),
        CtlCmd::Feature { name, state } => {
            let mut m = serde_json::Map::new();
            m.insert(name.clone(), Value::Bool(matches!(state, OnOff::On)));
            ("POST", "/features".into(), Some(Value::Object(m)))
        }
        CtlCmd::Route {
            op:
                RouteOp::Add {
                    prefix,
                    via,
                    ports,
                    backup,
                },
        } => {
            let mut b = json!({"prefix": prefix, "via": via});
            if let Some(p) = ports {
                b["ports"] = json!(p);
            }
            if !backup.is_empty() {
                b["backup"] = json!(backup);
            }
            ("PUT", "/routes".into(), Some(b))
        }
        CtlCmd::Route {
            op: RouteOp::Del { prefix, ports },
        } => {
            let mut b = json!({"prefix": prefix});
            if let Some(p) = ports {
                b["ports"] = json!(p);
            }
            ("DELETE", "/routes".into(), Some(b))
        }
        CtlCmd::Peer {
            op:
                PeerOp::Add {
                    name,
                    addr,
                    low,
                    high,
                },
        } => {
            let mut b = json!({"name": name, "addr": addr});
            if let Some(l) = low {
                b["pool_low"] = json!(l);
            }
            if let Some(h) = high {
                b["pool_high"] = json!(h);
            }
            ("PUT", "/peers".into(), Some(b))
        }
        CtlCmd::Peer {
            op: PeerOp::Del { name },
        } => ("DELETE", format!("/peers/{name}"), None),
        CtlCmd::Fleet(_) => bail!("ctl fleet talks to etcd, not to the admin API"),
    };
    let token = token(&a)?;
    let (status, text) = request(&a.admin, token.as_deref(), method, &path, body.as_ref())?;
    if matches!(a.cmd, CtlCmd::Metrics) {
        print!("{text}");
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text).with_context(|| format!("HTTP {status}: {text}"))?;
    if status >= 400 {
        bail!(
            "HTTP {status}: {} (field `{}`)",
            v["error"].as_str().unwrap_or(&text),
            v["field"].as_str().unwrap_or("?")
        );
    }
    if a.json {
        println!("{v:#}");
    } else {
        print_human(&a.cmd, &v);
    }
    Ok(())
}
