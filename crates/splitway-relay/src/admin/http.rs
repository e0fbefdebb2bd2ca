//! The admin API's HTTP/1.1, with no framework: one request per
//! connection, `Connection: close`, bounded head and body, JSON replies.

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

/// The head of a request: method, path, `Authorization`, content length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_length: usize,
}

/// Parse an HTTP/1.x head (without the blank line); `None` if malformed.
pub fn parse_head(head: &[u8]) -> Option<Head> {
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
    let mut h = Head {
        method,
        path,
        authorization: None,
        content_length: 0,
    };
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                h.content_length = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("authorization") {
                h.authorization = Some(v.trim().to_string());
            }
        }
    }
    Some(h)
}

/// A response: status, content type, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn json(status: u16, v: serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: format!("{v:#}\n"),
        }
    }

    pub fn error(status: u16, field: &str, msg: impl Into<String>) -> Response {
        Response::json(status, json!({"error": msg.into(), "field": field}))
    }

    pub fn ok(msg: &str) -> Response {
        Response::json(200, json!({"ok": true, "message": msg}))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Why a request could not be read; each maps to a 4xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("malformed request")]
    Malformed,
    #[error("head too large")]
    HeadTooLarge,
    #[error("body too large")]
    BodyTooLarge,
    #[error("incomplete request")]
    Incomplete,
    #[error("body shorter than content-length")]
    ShortBody,
}

impl ReadError {
    pub fn response(self) -> Response {
        let (status, field) = match self {
            ReadError::Malformed | ReadError::HeadTooLarge | ReadError::Incomplete => {
                (400, "request")
            }
            ReadError::ShortBody => (400, "body"),
            ReadError::BodyTooLarge => (413, "body"),
        };
        Response::error(status, field, self.to_string())
    }
}

/// Read one request (5 s per read).
pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let timeout = std::time::Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_head(&buf[..end]).ok_or(ReadError::Malformed)?;
            let len = head.content_length;
            if len > MAX_BODY {
                return Err(ReadError::BodyTooLarge);
            }
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                match tokio::time::timeout(timeout, s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => body.extend_from_slice(&chunk[..n]),
                    _ => return Err(ReadError::ShortBody),
                }
            }
            body.truncate(len);
            return Ok(Request {
                method: head.method,
                path: head.path,
                authorization: head.authorization,
                body,
            });
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        match tokio::time::timeout(timeout, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Err(ReadError::Incomplete),
        }
    }
}

/// Write `resp` and close the write side.
pub async fn write_response<S: AsyncWrite + Unpin>(s: &mut S, resp: &Response) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_heads() {
        let h = parse_head(
            b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nAuthorization: Bearer abc",
        )
        .unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.content_length),
            ("POST", "/features", 12)
        );
        assert_eq!(h.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(parse_head(b"GET metrics HTTP/1.1"), None);
        assert_eq!(parse_head(b"\xff\xfe"), None);
        assert_eq!(parse_head(b"GET /x SPDY/3"), None);
        assert_eq!(parse_head(b"GET /x HTTP/1.1\r\ncontent-length: lots"), None);
    }
}
