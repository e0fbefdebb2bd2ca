//! The admin API: a small HTTP/1.1 server on a local address or Unix socket.
//!
//! Only what an operator's tools need, with no framework: one request per
//! connection, `Connection: close`. Endpoints:
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`: node name, engine, active connections (JSON).

use std::sync::Arc;

use splitway_core::config::{parse_admin_listen, AdminListen};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::state::Shared;

const MAX_HEAD: usize = 16 * 1024;

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
}

/// Parse the request line of an HTTP/1.x head.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return None;
    }
    Some(Request { method, path })
}

/// A response: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

fn route(shared: &Shared, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: shared.metrics.render(),
        },
        ("GET", "/status") => {
            let snap = shared.snapshot();
            Response {
                status: 200,
                content_type: "application/json",
                body: format!(
                    "{{\"node\":\"{}\",\"engine\":\"{}\",\"active\":{}}}\n",
                    snap.cfg.node.name,
                    snap.cfg.node.engine.as_str(),
                    shared.active()
                ),
            }
        }
        (_, "/metrics") | (_, "/status") => Response::text(405, "method not allowed\n"),
        _ => Response::text(404, format!("no endpoint {}\n", req.path)),
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let req = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break parse_head(&head[..end]);
        }
        if head.len() > MAX_HEAD {
            break None;
        }
    };
    let resp = match req {
        Some(r) => route(&shared, &r),
        None => Response::text(400, "bad request\n"),
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
                        r = l.accept() => if let Ok((s, _)) = r { tokio::spawn(serve_one(s, shared.clone())); },
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        Some(AdminListen::Unix(path)) => {
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => if let Ok((s, _)) = r { tokio::spawn(serve_one(s, shared.clone())); },
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
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Some(Request {
                method: "GET".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(parse_head(b"GET metrics HTTP/1.1"), None);
        assert_eq!(parse_head(b"\xff\xfe"), None);
        assert_eq!(parse_head(b"GET /x SPDY/3"), None);
    }
}
