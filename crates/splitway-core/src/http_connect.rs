//! HTTP CONNECT (RFC 9110 §9.3.6) server side, sans-IO: the request head
//! (request line and header fields, bounded in size and count), an
//! optional `Proxy-Authorization: Basic` check, and the replies.
//!
//! [`parse`] is called with everything the client sent so far; it answers
//! "need more" until the blank line ending the head arrives, and consumes
//! exactly the head, so bytes after it (a TLS ClientHello sent without
//! waiting for the reply) stay with the caller. Nothing here panics on any
//! input (proptest and the `http_connect` fuzz target).

use crate::proxy::{base64_decode, Target, Users};

/// Default bound on the request head (request line + header fields).
pub const DEFAULT_MAX_HEAD: usize = 8 * 1024;
/// Bound on the number of header fields.
pub const MAX_HEADERS: usize = 64;

/// A complete CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the head, blank line included.
    pub used: usize,
    pub target: Target,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete: read more (the buffer is below the bound).
    NeedMore,
    Connect(Request),
}

/// Why a request was refused. [`HttpError::status`] is the reply to send,
/// [`HttpError::reason`] the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed request line")]
    RequestLine,
    #[error("unsupported HTTP version")]
    Version,
    #[error("method is not CONNECT")]
    Method,
    #[error("malformed authority (want host:port)")]
    Authority,
    #[error("malformed header field")]
    Header,
    #[error("proxy authentication required")]
    AuthRequired,
    #[error("bad credentials")]
    BadCredentials,
}

impl HttpError {
    pub fn status(&self) -> Status {
        match self {
            HttpError::TooLarge(_) | HttpError::TooManyHeaders => Status::HeadTooLarge,
            HttpError::Version => Status::VersionNotSupported,
            HttpError::Method => Status::MethodNotAllowed,
            HttpError::AuthRequired | HttpError::BadCredentials => Status::ProxyAuthRequired,
            HttpError::RequestLine | HttpError::Authority | HttpError::Header => Status::BadRequest,
        }
    }

    /// Label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::TooLarge(_) | HttpError::TooManyHeaders => "too_large",
            HttpError::Version => "bad_version",
            HttpError::Method => "unsupported_method",
            HttpError::AuthRequired => "auth_required",
            HttpError::BadCredentials => "bad_credentials",
            HttpError::Authority => "bad_host_name",
            HttpError::RequestLine | HttpError::Header => "malformed",
        }
    }
}

/// The replies the ingress sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Established,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    ProxyAuthRequired,
    HeadTooLarge,
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Established => 200,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::MethodNotAllowed => 405,
            Status::ProxyAuthRequired => 407,
            Status::HeadTooLarge => 431,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::VersionNotSupported => 505,
        }
    }

    /// The whole reply, head only (error replies close the connection).
    pub fn reply(self) -> &'static [u8] {
        match self {
            Status::Established => b"HTTP/1.1 200 Connection established\r\n\r\n",
            Status::BadRequest => {
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::Forbidden => {
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::MethodNotAllowed => {
                b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::ProxyAuthRequired => {
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"splitway\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::HeadTooLarge => {
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::BadGateway => {
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::ServiceUnavailable => {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::GatewayTimeout => {
                b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            Status::VersionNotSupported => {
                b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
        }
    }
}

/// Parse the request head in `buf` (everything received so far), at most
/// `max_head` bytes of it; clients must authenticate as one of `users` if
/// it is not empty. Lines end in CRLF (a bare LF is accepted too).
pub fn parse(buf: &[u8], max_head: usize, users: &Users) -> Result<Parsed, HttpError> {
    let Some(used) = head_end(&buf[..buf.len().min(max_head)]) else {
        if buf.len() >= max_head {
            return Err(HttpError::TooLarge(max_head));
        }
        return Ok(Parsed::NeedMore);
    };
    let mut lines = buf[..used].split(|&b| b == b'\n').map(trim_cr);
    let target = request_line(lines.next().unwrap_or_default())?;
    let mut auth: Option<&[u8]> = None;
    let mut n = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        n += 1;
        if n > MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = header(line)?;
        if name.eq_ignore_ascii_case(b"proxy-authorization") {
            auth = Some(value);
        }
    }
    if users.required() {
        let Some(value) = auth else {
            return Err(HttpError::AuthRequired);
        };
        if !basic_ok(value, users) {
            return Err(HttpError::BadCredentials);
        }
    }
    Ok(Parsed::Connect(Request { used, target }))
}

/// Offset just past the blank line that ends the head, if it is there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => i = next,
        }
    }
    None
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn request_line(line: &[u8]) -> Result<Target, HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(authority), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine);
    };
    if !method.iter().all(|b| b.is_ascii_alphabetic()) || method.is_empty() {
        return Err(HttpError::RequestLine);
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(if version.starts_with(b"HTTP/") {
            HttpError::Version
        } else {
            HttpError::RequestLine
        });
    }
    if method != b"CONNECT" {
        return Err(HttpError::Method);
    }
    authority_target(authority).ok_or(HttpError::Authority)
}

/// `host:port` or `[v6]:port`, port 1-65535.
fn authority_target(a: &[u8]) -> Option<Target> {
    let colon = a.iter().rposition(|&b| b == b':')?;
    let (host, port) = (&a[..colon], &a[colon + 1..]);
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let port: u16 = std::str::from_utf8(port).ok()?.parse().ok()?;
    if port == 0 {
        return None;
    }
    // A bare IPv6 address must be bracketed.
    if host.contains(&b':') && !host.starts_with(b"[") {
        return None;
    }
    Target::from_host(host, port)
}

fn header(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Header)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // RFC 9110 token characters; no whitespace before the colon, no
    // obsolete line folding.
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(tchar) {
        return Err(HttpError::Header);
    }
    if value
        .iter()
        .any(|&b| b == 0 || b == b'\r' || b == b'\n' || (b < 0x20 && b != b'\t'))
    {
        return Err(HttpError::Header);
    }
    Ok((name, value.trim_ascii()))
}

/// `Basic <base64 of user:password>` naming one of `users`.
fn basic_ok(value: &[u8], users: &Users) -> bool {
    let Some(sp) = value.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, cred) = (&value[..sp], value[sp + 1..].trim_ascii());
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return false;
    }
    let Some(plain) = base64_decode(cred) else {
        return false;
    };
    let Some(colon) = plain.iter().position(|&b| b == b':') else {
        return false;
    };
    users.check(&plain[..colon], &plain[colon + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn users() -> Users {
        Users::new([("alice".to_string(), b"s3cret".to_vec())])
    }

    fn connect(buf: &[u8], users: &Users) -> Result<Parsed, HttpError> {
        parse(buf, DEFAULT_MAX_HEAD, users)
    }

    #[test]
    fn curl_style_request_with_early_data() {
        let req = b"CONNECT server.test:443 HTTP/1.1\r\nHost: server.test:443\r\nUser-Agent: curl/8\r\nProxy-Connection: Keep-Alive\r\n\r\n\x16\x03\x01";
        assert_eq!(
            connect(req, &Users::default()),
            Ok(Parsed::Connect(Request {
                used: req.len() - 3,
                target: Target::Name {
                    host: "server.test".into(),
                    port: 443
                }
            }))
        );
        for partial in 0..req.len() - 3 {
            assert_eq!(
                connect(&req[..partial], &Users::default()),
                Ok(Parsed::NeedMore)
            );
        }
    }

    #[test]
    fn ip_literals_and_bare_lf() {
        let p = |b: &[u8]| match connect(b, &Users::default()) {
            Ok(Parsed::Connect(r)) => r.target,
            r => panic!("{r:?}"),
        };
        assert_eq!(
            p(b"CONNECT 10.10.3.2:7000 HTTP/1.0\n\n"),
            Target::Addr("10.10.3.2:7000".parse().unwrap())
        );
        assert_eq!(
            p(b"CONNECT [fd10:3::2]:7000 HTTP/1.1\r\n\r\n"),
            Target::Addr("[fd10:3::2]:7000".parse().unwrap())
        );
    }

    #[test]
    fn basic_auth() {
        let u = users();
        // alice:s3cret
        let ok =
            b"CONNECT a.test:1 HTTP/1.1\r\nproxy-authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n";
        assert!(matches!(connect(ok, &u), Ok(Parsed::Connect(_))));
        // alice:wrong
        let bad =
            b"CONNECT a.test:1 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n";
        assert_eq!(connect(bad, &u), Err(HttpError::BadCredentials));
        let none = b"CONNECT a.test:1 HTTP/1.1\r\n\r\n";
        assert_eq!(connect(none, &u), Err(HttpError::AuthRequired));
        assert_eq!(HttpError::AuthRequired.status().code(), 407);
        let garbage = b"CONNECT a.test:1 HTTP/1.1\r\nProxy-Authorization: Bearer x\r\n\r\n";
        assert_eq!(connect(garbage, &u), Err(HttpError::BadCredentials));
    }

    #[test]
    fn bad_requests_get_their_status() {
        let u = Users::default();
        let status = |b: &[u8]| connect(b, &u).map_err(|e| e.status().code());
        assert_eq!(status(b"GET http://a.test/ HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(status(b"CONNECT a.test:1 HTTP/2.0\r\n\r\n"), Err(505));
        assert_eq!(status(b"CONNECT a.test HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"CONNECT a.test:0 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"CONNECT a.test:99999 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"CONNECT fd10::2:80 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"CONNECT a b:1 HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(
            status(b"CONNECT a.test:1 HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status(b"CONNECT a.test:1 HTTP/1.1\r\n folded\r\n\r\n"),
            Err(400)
        );
        assert_eq!(status(b"\x16\x03\x01\r\n\r\n"), Err(400));
        let many = format!("CONNECT a.test:1 HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(65));
        assert_eq!(status(many.as_bytes()), Err(431));
    }

    #[test]
    fn the_head_is_bounded() {
        let u = Users::default();
        let long = vec![b'A'; 100];
        assert_eq!(parse(&long, 100, &u), Err(HttpError::TooLarge(100)));
        assert_eq!(parse(&long[..99], 100, &u), Ok(Parsed::NeedMore));
        // A complete head past the bound is refused too.
        let req = b"CONNECT a.test:1 HTTP/1.1\r\n\r\n";
        assert_eq!(parse(req, 20, &u), Err(HttpError::TooLarge(20)));
        assert!(matches!(parse(req, req.len(), &u), Ok(Parsed::Connect(_))));
    }

    #[test]
    fn every_reply_is_a_complete_head() {
        for s in [
            Status::Established,
            Status::BadRequest,
            Status::Forbidden,
            Status::MethodNotAllowed,
            Status::ProxyAuthRequired,
            Status::HeadTooLarge,
            Status::BadGateway,
            Status::ServiceUnavailable,
            Status::GatewayTimeout,
            Status::VersionNotSupported,
        ] {
            let r = s.reply();
            assert!(r.starts_with(format!("HTTP/1.1 {} ", s.code()).as_bytes()));
            assert_eq!(head_end(r), Some(r.len()));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            max in 1usize..512,
            auth: bool,
        ) {
            let u = if auth { users() } else { Users::default() };
            if let Ok(Parsed::Connect(r)) = parse(&bytes, max, &u) {
                prop_assert!(r.used <= bytes.len() && r.used <= max);
            }
        }

        #[test]
        fn headers_in_any_order_and_case(
            host in "[a-z]{1,20}(\\.[a-z0-9]{1,10}){0,3}",
            port in 1u16..,
            extra in proptest::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,30}", 0..8),
            upper: bool,
        ) {
            let name = if upper { "PROXY-AUTHORIZATION" } else { "proxy-authorization" };
            let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\n{name}: Basic YWxpY2U6czNjcmV0\r\n");
            for h in &extra {
                head.push_str(h);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let r = parse(head.as_bytes(), DEFAULT_MAX_HEAD, &users());
            prop_assert_eq!(
                r,
                Ok(Parsed::Connect(Request { used: head.len(), target: Target::Name { host, port } }))
            );
        }
    }
}
