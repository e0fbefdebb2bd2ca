//! The config sections of the proxy ingresses, `[[socks5]]` and
//! `[[http_connect]]` (documented key by key in `docs/config.md`), and
//! their validation; [`crate::config::Config`] holds them and calls
//! [`validate`].

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{AllowEntry, ConfigError};
use crate::proxy::Users;
use crate::route::{AllowList, RouteTable};

/// `[[socks5]]`: a SOCKS5 listener (RFC 1928 CONNECT; RFC 1929 users).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socks5Listener {
    pub listen: SocketAddr,
    /// Who may use the listener; empty: anyone who can connect.
    #[serde(default)]
    pub users: Vec<ProxyUser>,
    /// Destinations this listener accepts (after name resolution); absent:
    /// every destination the route table routes.
    #[serde(default)]
    pub allow: Option<Vec<AllowEntry>>,
    /// Time a client has to finish its handshake (greeting, credentials,
    /// request) from accept.
    #[serde(default = "d_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
}

/// `[[http_connect]]`: an HTTP CONNECT proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectListener {
    pub listen: SocketAddr,
    /// As in [`Socks5Listener`].
    #[serde(default)]
    pub users: Vec<ProxyUser>,
    #[serde(default)]
    pub allow: Option<Vec<AllowEntry>>,
    #[serde(default = "d_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Bound on the request head (request line and header fields).
    #[serde(default = "d_max_head_bytes")]
    pub max_head_bytes: usize,
}

/// What both proxy listeners have, borrowed from either.
#[derive(Debug, Clone, Copy)]
pub struct ProxyCommon<'a> {
    pub listen: SocketAddr,
    pub users: &'a [ProxyUser],
    pub allow: Option<&'a [AllowEntry]>,
    pub handshake_timeout_ms: u64,
}

impl Socks5Listener {
    pub fn common(&self) -> ProxyCommon<'_> {
        ProxyCommon {
            listen: self.listen,
            users: &self.users,
            allow: self.allow.as_deref(),
            handshake_timeout_ms: self.handshake_timeout_ms,
        }
    }
}

impl HttpConnectListener {
    pub fn common(&self) -> ProxyCommon<'_> {
        ProxyCommon {
            listen: self.listen,
            users: &self.users,
            allow: self.allow.as_deref(),
            handshake_timeout_ms: self.handshake_timeout_ms,
        }
    }
}

impl ProxyCommon<'_> {
    /// The user list for the handshake parsers.
    pub fn user_list(&self) -> Users {
        Users::new(
            self.users
                .iter()
                .map(|u| (u.name.clone(), u.password.as_bytes().to_vec())),
        )
    }

    /// The listener's own allow list, if it has one.
    pub fn allow_list(&self) -> Option<AllowList> {
        self.allow
            .map(|a| AllowList::new(a.iter().map(|e| (e.prefix.trunc(), e.ports)).collect()))
    }
}

/// One user of a proxy listener. `Debug` masks the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

fn d_max_head_bytes() -> usize {
    crate::http_connect::DEFAULT_MAX_HEAD
}
fn d_handshake_timeout_ms() -> u64 {
    10_000
}

/// Check both kinds of listener; `routes` is the relay's route table.
pub fn validate(
    socks5: &[Socks5Listener],
    http: &[HttpConnectListener],
    routes: &RouteTable,
) -> Result<(), ConfigError> {
    let mut listens = HashSet::new();
    let all = socks5
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("socks5[{i}]"), s.common()))
        .chain(
            http.iter()
                .enumerate()
                .map(|(i, h)| (format!("http_connect[{i}]"), h.common())),
        );
    for (section, common) in all {
        let listen = common.listen;
        if listen.port() == 0 {
            return Err(invalid(format!("{section}.listen"), "port must not be 0"));
        }
        if !listens.insert(listen) {
            return Err(invalid(
                format!("{section}.listen"),
                format!("{listen} is used by another proxy listener"),
            ));
        }
        common_ok(&section, &common, routes)?;
    }
    for (i, h) in http.iter().enumerate() {
        if !(256..=65536).contains(&h.max_head_bytes) {
            return Err(invalid(
                format!("http_connect[{i}].max_head_bytes"),
                "must be between 256 and 65536",
            ));
        }
    }
    Ok(())
}

fn common_ok(section: &str, c: &ProxyCommon, routes: &RouteTable) -> Result<(), ConfigError> {
    let listen = c.listen;
    if c.handshake_timeout_ms == 0 {
        return Err(invalid(
            format!("{section}.handshake_timeout_ms"),
            "must be positive",
        ));
    }
    let mut names = HashSet::new();
    for (j, u) in c.users.iter().enumerate() {
        let key = |k: &str| format!("{section}.users[{j}].{k}");
        // RFC 1929 carries each in one length byte; HTTP Basic splits
        // name and password at the first ':'.
        if u.name.is_empty() || u.name.len() > 255 || u.name.contains(':') {
            return Err(invalid(key("name"), "must be 1-255 bytes without ':'"));
        }
        if u.password.is_empty() || u.password.len() > 255 {
            return Err(invalid(key("password"), "must be 1-255 bytes"));
        }
        if !names.insert(u.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("user \"{}\" appears twice", u.name),
            ));
        }
    }
    // Anyone who can reach a non-loopback listener without users or an
    // allow list could use the overlay (and a `direct` route) as an open
    // proxy.
    if !listen.ip().is_loopback() && c.users.is_empty() && c.allow.is_none() {
        return Err(invalid(
            format!("{section}.users"),
            format!(
                "{listen} is not a loopback address: set users or allow, \
                 or the listener is an open proxy"
            ),
        ));
    }
    if routes.routes().is_empty() {
        return Err(invalid(
            format!("{section}.listen"),
            "no [[route]]: a proxy listener needs routes for its destinations",
        ));
    }
    Ok(())
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
[node]
name = "ingress"
[[route]]
prefix = "10.0.3.0/24"
via = "direct"
"#;

    fn load(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn both_listeners_load_with_defaults() {
        let c = load(
            "[[socks5]]\nlisten = \"127.0.0.1:1080\"\n\
             [[http_connect]]\nlisten = \"10.0.1.1:3128\"\n\
             users = [{ name = \"alice\", password = \"s3cret\" }]\n\
             allow = [{ prefix = \"10.0.3.2/32\", ports = \"443\" }]\n",
        )
        .expect("valid");
        let s = &c.socks5[0];
        assert_eq!(s.handshake_timeout_ms, 10_000);
        assert!(s.users.is_empty() && s.allow.is_none());
        let h = &c.http_connect[0];
        assert_eq!(h.max_head_bytes, 8192);
        let common = h.common();
        assert!(common.user_list().check(b"alice", b"s3cret"));
        let allow = common.allow_list().expect("allow list");
        assert!(allow.permits(&"10.0.3.2:443".parse().unwrap()));
        assert!(!allow.permits(&"10.0.3.2:80".parse().unwrap()));
    }

    #[test]
    fn passwords_are_masked() {
        let c = load(
            "[[socks5]]\nlisten = \"127.0.0.1:1080\"\n\
             users = [{ name = \"alice\", password = \"hunter2\" }]\n",
        )
        .expect("valid");
        let dbg = format!("{:?} {:?}", c.socks5, c.socks5[0].common().user_list());
        assert!(!dbg.contains("hunter2"), "{dbg}");
        // A parse error quoting the line masks it too.
        let e = load(
            "[[socks5]]\nlisten = \"127.0.0.1:1080\"\n\
             users = [{ name = \"alice\", password = \"hunter2\", x = 1 }]\n",
        )
        .unwrap_err();
        assert!(!e.contains("hunter2") && e.contains('x'), "{e}");
    }

    #[test]
    fn bad_keys_are_named() {
        for (extra, key) in [
            (
                "[[socks5]]\nlisten = \"10.0.1.1:1080\"\n",
                "socks5[0].users",
            ),
            ("[[socks5]]\nlisten = \"127.0.0.1:0\"\n", "socks5[0].listen"),
            (
                "[[socks5]]\nlisten = \"127.0.0.1:1080\"\n[[http_connect]]\nlisten = \"127.0.0.1:1080\"\n",
                "http_connect[0].listen",
            ),
            (
                "[[socks5]]\nlisten = \"127.0.0.1:1080\"\nhandshake_timeout_ms = 0\n",
                "socks5[0].handshake_timeout_ms",
            ),
            (
                "[[socks5]]\nlisten = \"127.0.0.1:1080\"\nusers = [{ name = \"a:b\", password = \"x\" }]\n",
                "socks5[0].users[0].name",
            ),
            (
                "[[socks5]]\nlisten = \"127.0.0.1:1080\"\nusers = [{ name = \"a\", password = \"\" }]\n",
                "socks5[0].users[0].password",
            ),
            (
                "[[socks5]]\nlisten = \"127.0.0.1:1080\"\nusers = [{ name = \"a\", password = \"x\" }, { name = \"a\", password = \"y\" }]\n",
                "socks5[0].users[1].name",
            ),
            (
                "[[http_connect]]\nlisten = \"127.0.0.1:3128\"\nmax_head_bytes = 10\n",
                "http_connect[0].max_head_bytes",
            ),
        ] {
            let e = load(extra).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let e =
            load("[[socks5]]\nlisten = \"127.0.0.1:1080\"\nresolve = \"egress\"\n").unwrap_err();
        assert!(e.contains("resolve"), "{e}");
    }

    #[test]
    fn a_proxy_listener_needs_routes() {
        let e = Config::parse("[node]\nname = \"x\"\n[[socks5]]\nlisten = \"127.0.0.1:1080\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`socks5[0].listen`"), "{e}");
    }
}
