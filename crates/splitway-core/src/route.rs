//! The route table and the egress allow list.
//!
//! A route maps a destination prefix (and optionally a port range) to a next
//! hop: a named peer relay, or `direct` (this relay connects to the
//! destination itself). The most specific route wins: longest prefix first,
//! then the narrowest port range, then the earliest in the config. Every relay
//! uses the same table, so one relay can be ingress, transit and egress.
//!
//! A route may list backup next hops, tried in order when the ones before
//! them cannot be connected to ([`Route::hops`]); which of them a connection
//! takes is decided by the relay, not here.

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::ports::PortRange;

/// Where a connection goes next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Connect to the destination from this relay.
    Direct,
    /// Carry the connection to this peer relay.
    Peer(String),
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHop::Direct => f.write_str("direct"),
            NextHop::Peer(p) => f.write_str(p),
        }
    }
}

impl NextHop {
    /// `"direct"` or a peer name, as written in the config.
    pub fn from_name(name: &str) -> NextHop {
        if name == "direct" {
            NextHop::Direct
        } else {
            NextHop::Peer(name.to_string())
        }
    }

    /// The peer's name, `None` for `direct`.
    pub fn peer(&self) -> Option<&str> {
        match self {
            NextHop::Direct => None,
            NextHop::Peer(p) => Some(p),
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpNet,
    pub ports: PortRange,
    /// The primary next hop.
    pub via: NextHop,
    /// Next hops to fail over to, in order, when the ones before them can
    /// not be connected to. Empty: no failover.
    pub backup: Vec<NextHop>,
    /// Stream modules on this route's relay legs, in encoding order (names;
    /// checked by the config). Empty: none.
    pub modules: Vec<String>,
}

impl Route {
    pub fn matches(&self, dst: &SocketAddr) -> bool {
        self.prefix.contains(&dst.ip()) && self.ports.contains(dst.port())
    }

    /// Every next hop in the order they are tried: `via`, then `backup`.
    pub fn hops(&self) -> impl Iterator<Item = &NextHop> {
        std::iter::once(&self.via).chain(self.backup.iter())
    }
}

/// Routes kept most-specific first, so the first match is the answer.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let mut routes: Vec<Route> = routes
            .into_iter()
            .map(|mut r| {
                r.prefix = r.prefix.trunc();
                r
            })
            .collect();
        // Stable sort keeps config order among equals.
        routes.sort_by_key(|r| (std::cmp::Reverse(r.prefix.prefix_len()), r.ports.width()));
        RouteTable { routes }
    }

    /// The most specific route for `dst`, if any.
    pub fn lookup(&self, dst: &SocketAddr) -> Option<&Route> {
        let dst = canonical(dst);
        self.routes.iter().find(|r| r.matches(&dst))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4.
pub fn canonical(dst: &SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => *dst,
        },
        SocketAddr::V4(_) => *dst,
    }
}

/// Destinations an egress relay may connect to on behalf of a peer.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<(IpNet, PortRange)>,
}

impl AllowList {
    pub fn new(entries: Vec<(IpNet, PortRange)>) -> AllowList {
        AllowList { entries }
    }

    pub fn permits(&self, dst: &SocketAddr) -> bool {
        let dst = canonical(dst);
        self.entries
            .iter()
            .any(|(net, ports)| net.contains(&dst.ip()) && ports.contains(dst.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, ports: &str, via: &str) -> Route {
        Route {
            prefix: prefix.parse().unwrap(),
            ports: ports.parse().unwrap(),
            via: NextHop::from_name(via),
            backup: Vec::new(),
            modules: Vec::new(),
        }
    }

    fn with_backup(mut r: Route, backup: &[&str]) -> Route {
        r.backup = backup.iter().map(|b| NextHop::from_name(b)).collect();
        r
    }

    fn hops(t: &RouteTable, dst: &str) -> Vec<String> {
        t.lookup(&dst.parse().unwrap())
            .map(|r| r.hops().map(|h| h.to_string()).collect())
            .unwrap_or_default()
    }

    fn via(t: &RouteTable, dst: &str) -> Option<String> {
        t.lookup(&dst.parse().unwrap()).map(|r| r.via.to_string())
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let t = RouteTable::new(vec![
            route("0.0.0.0/0", "1-65535", "a"),
            route("10.0.0.0/8", "1-65535", "b"),
            route("10.1.0.0/16", "1-65535", "c"),
        ]);
        assert_eq!(via(&t, "10.1.2.3:80").as_deref(), Some("c"));
        assert_eq!(via(&t, "10.2.2.3:80").as_deref(), Some("b"));
        assert_eq!(via(&t, "192.0.2.1:80").as_deref(), Some("a"));
    }

    #[test]
    fn port_range_narrows_and_excludes() {
        let t = RouteTable::new(vec![
            route("10.0.0.0/8", "1-65535", "wide"),
            route("10.0.0.0/8", "443", "tls"),
            route("10.9.0.0/16", "22", "ssh"),
        ]);
        assert_eq!(via(&t, "10.1.1.1:443").as_deref(), Some("tls"));
        assert_eq!(via(&t, "10.1.1.1:80").as_deref(), Some("wide"));
        // The /16 only covers port 22; other ports fall back to the /8.
        assert_eq!(via(&t, "10.9.1.1:80").as_deref(), Some("wide"));
        assert_eq!(via(&t, "10.9.1.1:22").as_deref(), Some("ssh"));
    }

    #[test]
    fn no_route_is_none_and_families_do_not_mix() {
        let t = RouteTable::new(vec![route("fd00::/8", "1-65535", "direct")]);
        assert_eq!(via(&t, "10.0.0.1:80"), None);
        assert_eq!(via(&t, "[fd00::1]:80").as_deref(), Some("direct"));
    }

    #[test]
    fn mapped_v4_is_routed_as_v4() {
        let t = RouteTable::new(vec![route("10.0.0.0/8", "1-65535", "a")]);
        assert_eq!(via(&t, "[::ffff:10.0.0.1]:80").as_deref(), Some("a"));
    }

    #[test]
    fn equal_routes_keep_config_order_and_host_bits_are_ignored() {
        let t = RouteTable::new(vec![
            route("10.0.0.5/8", "1-65535", "first"),
            route("10.0.0.0/8", "1-65535", "second"),
        ]);
        assert_eq!(via(&t, "10.3.3.3:1").as_deref(), Some("first"));
    }

    #[test]
    fn hops_are_primary_then_backups_in_order() {
        let t = RouteTable::new(vec![
            with_backup(route("10.0.0.0/8", "1-65535", "r2"), &["r3", "direct"]),
            route("10.1.0.0/16", "1-65535", "r4"),
        ]);
        assert_eq!(hops(&t, "10.2.0.1:80"), ["r2", "r3", "direct"]);
        // A more specific route without backups wins over one with them:
        // backups belong to their route, they do not widen it.
        assert_eq!(hops(&t, "10.1.0.1:80"), ["r4"]);
        assert!(hops(&t, "192.0.2.1:80").is_empty());
        let r = t.lookup(&"10.2.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(r.via.peer(), Some("r2"));
        assert_eq!(r.backup[1].peer(), None);
    }

    #[test]
    fn backups_do_not_change_which_route_wins() {
        // Same prefix and ports: config order decides, backups or not.
        let t = RouteTable::new(vec![
            route("10.0.0.0/8", "443", "a"),
            with_backup(route("10.0.0.0/8", "443", "b"), &["c"]),
            with_backup(route("10.0.0.0/8", "1-65535", "d"), &["e"]),
        ]);
        assert_eq!(hops(&t, "10.0.0.1:443"), ["a"]);
        assert_eq!(hops(&t, "10.0.0.1:80"), ["d", "e"]);
        assert_eq!(hops(&t, "[::ffff:10.0.0.1]:80"), ["d", "e"]);
    }

    #[test]
    fn allow_list_checks_prefix_and_port() {
        let a = AllowList::new(vec![
            ("10.0.3.0/24".parse().unwrap(), "80".parse().unwrap()),
            ("fd00:3::/64".parse().unwrap(), PortRange::ALL),
        ]);
        assert!(a.permits(&"10.0.3.7:80".parse().unwrap()));
        assert!(!a.permits(&"10.0.3.7:81".parse().unwrap()));
        assert!(!a.permits(&"10.0.4.7:80".parse().unwrap()));
        assert!(a.permits(&"[fd00:3::9]:22".parse().unwrap()));
        assert!(!AllowList::default().permits(&"10.0.3.7:80".parse().unwrap()));
    }
}
