//! What the SOCKS5 and HTTP CONNECT ingresses share: the destination a
//! client names ([`Target`]: an address, or a host name the ingress
//! resolves), host-name checks, and the user list with its password check.
//!
//! Sans-IO: nothing here resolves or connects.

use std::net::{IpAddr, SocketAddr};

/// The longest host name accepted (RFC 1035: 253 characters in text form).
pub const MAX_HOST_LEN: usize = 253;

/// Where a proxy client asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address given as such (SOCKS5 IPv4/IPv6, an IP literal).
    Addr(SocketAddr),
    /// A host name, to be resolved by the ingress before routing.
    Name { host: String, port: u16 },
}

impl Target {
    /// `host` as a client wrote it (a name or an IP literal) and `port`;
    /// `None` if `host` is not a valid host name. An IP literal (also in
    /// brackets) becomes [`Target::Addr`].
    pub fn from_host(host: &[u8], port: u16) -> Option<Target> {
        let text = std::str::from_utf8(host).ok()?;
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(Target::Addr(SocketAddr::new(ip, port)));
        }
        if bare.len() != text.len() || !valid_host_name(text) {
            return None;
        }
        Some(Target::Name {
            host: text.to_ascii_lowercase(),
            port,
        })
    }

    pub fn port(&self) -> u16 {
        match self {
            Target::Addr(a) => a.port(),
            Target::Name { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A DNS host name: 1-253 characters, dot-separated labels of 1-63 ASCII
/// letters, digits, '-' or '_' (no label starts or ends with '-'), an
/// optional trailing dot.
pub fn valid_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > MAX_HOST_LEN {
        return false;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// The users a listener accepts. Empty: no authentication. `Debug` masks
/// the passwords.
#[derive(Clone, Default)]
pub struct Users(Vec<(String, Vec<u8>)>);

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| format!("{n}:<redacted>")))
            .finish()
    }
}

impl Users {
    pub fn new(users: impl IntoIterator<Item = (String, Vec<u8>)>) -> Users {
        Users(users.into_iter().collect())
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `name` / `password` is one of the users. The password is
    /// compared in time independent of where it differs; every user is
    /// compared, so the time does not tell which names exist.
    pub fn check(&self, name: &[u8], password: &[u8]) -> bool {
        let mut ok = false;
        for (n, p) in &self.0 {
            let hit = ct_eq(n.as_bytes(), name) & ct_eq(p, password);
            ok |= hit;
        }
        ok
    }
}

/// Constant-time equality for equal lengths (a length mismatch returns at
/// once: lengths are not secret here).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decode standard base64 (with padding, RFC 4648 §4); `None` on any
/// other character or a bad length. Used for `Proxy-Authorization: Basic`.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let chunks = s.len() / 4;
    for (i, c) in s.chunks(4).enumerate() {
        let last = i + 1 == chunks;
        let pad = c.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &b in &c[..4 - pad] {
            n = (n << 6) | val(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn host_names_and_literals() {
        assert_eq!(
            Target::from_host(b"Example.COM", 443),
            Some(Target::Name {
                host: "example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            Target::from_host(b"10.1.2.3", 80),
            Some(Target::Addr("10.1.2.3:80".parse().unwrap()))
        );
        assert_eq!(
            Target::from_host(b"[fd10::2]", 80),
            Some(Target::Addr("[fd10::2]:80".parse().unwrap()))
        );
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"-a.b",
            b"a b",
            b"a/b",
            b"[a.b]",
            b"\xff",
            b"a\0b",
            &[b'a'; 254],
        ] {
            assert_eq!(Target::from_host(bad, 1), None, "{bad:?}");
        }
        assert!(valid_host_name("server.test."));
        assert!(!valid_host_name(&"a".repeat(64)));
    }

    #[test]
    fn users_check_name_and_password() {
        let u = Users::new([
            ("alice".to_string(), b"s3cret".to_vec()),
            ("bob".to_string(), b"hunter2".to_vec()),
        ]);
        assert!(u.required());
        assert!(u.check(b"alice", b"s3cret"));
        assert!(u.check(b"bob", b"hunter2"));
        assert!(!u.check(b"alice", b"hunter2"));
        assert!(!u.check(b"alice", b"s3cre"));
        assert!(!u.check(b"", b""));
        assert!(!Users::default().required());
        assert!(!Users::default().check(b"", b""));
    }

    #[test]
    fn base64_known_values() {
        assert_eq!(base64_decode(b"YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        for bad in [&b"YQ="[..], b"Y===", b"YQ==YQ==", b"YW!=", b"YWJj\n"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    fn encode(b: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    proptest! {
        #[test]
        fn base64_round_trips(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(base64_decode(encode(&b).as_bytes()), Some(b));
        }

        #[test]
        fn from_host_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300), p: u16) {
            if let Some(Target::Name { host, .. }) = Target::from_host(&b, p) {
                prop_assert!(valid_host_name(&host));
            }
        }
    }
}
