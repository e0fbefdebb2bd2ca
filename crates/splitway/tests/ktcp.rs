//! KTCP's improvements in real relays: connection pools, early SYN,
//! turbo-start and worker pools, each visibly on when on and off when off.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::time::Duration;

use common::*;

const POOL: &str = "[[peer]]\nname = \"egress\"\naddr = \"10.10.2.2:5565\"\npool_low = 2\npool_high = 5\nbandwidth_mbit = 100\nrtt_ms = 50\n";

fn ingress_with(features: &str, pool: &str) -> String {
    format!("{pool}\n[features]\n{features}\n")
}

/// The standard ingress config has its own [[peer]]; tests that tune the
/// pool replace the whole ingress config through `start_relay`.
fn ingress_config(extra: &str) -> String {
    format!(
        r#"
[node]
name = "ingress"
[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]
[[transparent]]
port = 15001
prefixes = ["10.10.3.0/24"]
[[route]]
prefix = "10.10.3.0/24"
via = "egress"
[admin]
listen = "{ADMIN}"
{extra}
"#
    )
}

fn one_transfer(o: &Overlay, port: u16) {
    let (rx, _h) = serve_echo_hash(o.listen(server_addr(false, port)), 1, 10_000, 1);
    let mut s = o.connect(server_addr(false, port)).expect("connect");
    s.write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (n, _) = recv_stream(&mut s).unwrap();
    assert_eq!(n, 10_000);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server saw the flow");
}

#[test]
fn pool_fills_to_high_and_refills_below_low() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    o.start_relay(
        "ingress",
        &ingress_config(&ingress_with("early_syn = false", POOL)),
    );
    let idle = "splitway_pool_idle_legs{peer=\"egress\"}";
    o.wait_metric("ingress", idle, |v| v == 5.0);
    // Four one-shot legs used: 1 left, below low (2), so it refills to 5.
    for i in 0..4 {
        one_transfer(&o, 7000 + i);
    }
    assert_eq!(
        o.metric("ingress", "splitway_pool_hits_total{peer=\"egress\"}"),
        4.0
    );
    o.wait_metric("ingress", idle, |v| v == 5.0);
    assert!(
        o.metric(
            "ingress",
            "splitway_pool_legs_opened_total{peer=\"egress\"}"
        ) >= 9.0
    );
}

#[test]
fn dead_idle_legs_are_never_used() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    o.start_relay(
        "ingress",
        &ingress_config(&ingress_with("early_syn = false", POOL)),
    );
    o.wait_metric("ingress", "splitway_pool_idle_legs{peer=\"egress\"}", |v| {
        v == 5.0
    });
    // The egress restarts: every pooled leg dies.
    let egress_cfg = std::fs::read_to_string(o.dir.join("egress.toml")).unwrap();
    assert!(o.stop_relay("egress"));
    o.start_relay("egress", &egress_cfg);
    // The very next connection still works: no dead leg is handed out.
    one_transfer(&o, 7000);
    assert!(o.metric("ingress", "splitway_pool_dead_legs_total{peer=\"egress\"}") >= 1.0);
    let failed: f64 = o
        .metrics("ingress")
        .lines()
        .filter(|l| l.starts_with("splitway_connections_failed_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failed, 0.0, "no connection failed");
    // And the pool refills from the new egress.
    o.wait_metric("ingress", "splitway_pool_idle_legs{peer=\"egress\"}", |v| {
        v == 5.0
    });
}

/// `cwnd:` of established sockets whose local or peer address contains `addr`.
fn cwnds(o: &Overlay, role: &str, addr: &str) -> Vec<u32> {
    let out = o.sh(role, "ss", &["-tinH", "state", "established"]);
    let mut res = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        let info = lines.peek().copied().unwrap_or("");
        if l.contains(addr) {
            if let Some(c) = info
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cwnd:"))
            {
                if let Ok(c) = c.parse() {
                    res.push(c);
                }
            }
        }
    }
    res
}

#[test]
fn turbo_start_widens_relay_legs_only() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    o.start_relay(
        "ingress",
        &ingress_config(&ingress_with("early_syn = false", POOL)),
    );
    // 100 Mbit/s × 50 ms = 432 segments of 1448 bytes.
    let route = o.sh("ingress", "ip", &["route", "show", "10.10.2.2/32"]);
    assert!(
        route.contains("initcwnd 432") && route.contains("initrwnd 432"),
        "{route}"
    );
    o.wait_metric("ingress", "splitway_pool_idle_legs{peer=\"egress\"}", |v| {
        v == 5.0
    });
    let legs = cwnds(&o, "ingress", "10.10.2.2:5565");
    assert!(
        !legs.is_empty() && legs.iter().all(|c| *c == 432),
        "relay legs: {legs:?}"
    );
    // A client-facing connection keeps the default window.
    let _l = o.listen(server_addr(false, 7000));
    let _c = o.connect(server_addr(false, 7000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let client = cwnds(&o, "ingress", "10.10.1.2:");
    assert!(
        !client.is_empty() && client.iter().all(|c| *c == 10),
        "client legs: {client:?}"
    );
    let server = cwnds(&o, "egress", "10.10.3.2:7000");
    assert!(
        !server.is_empty() && server.iter().all(|c| *c == 10),
        "server legs: {server:?}"
    );
    // Restored on exit.
    drop(_c);
    assert!(o.stop_relay("ingress"));
    let route = o.sh("ingress", "ip", &["route", "show", "10.10.2.2/32"]);
    assert!(route.trim().is_empty(), "pinned route left: {route}");
}

#[test]
fn every_switch_off_is_visibly_off() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    let off = "early_syn = false\nworker_pools = false\nconn_pool = false\nturbo_start = false\nfast_open = false";
    o.start_relay("ingress", &ingress_config(&ingress_with(off, POOL)));
    for i in 0..3 {
        one_transfer(&o, 7000 + i);
    }
    let m = o.metrics("ingress");
    assert!(!m.contains("splitway_pool_idle_legs"), "no pool exists");
    // Every result is exported from the start (at 0): early SYN never ran
    // if every one of them is still 0.
    let early: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("splitway_early_syn_total{"))
        .collect();
    assert!(!early.is_empty(), "early-SYN results exported");
    assert!(
        early.iter().all(|l| l.ends_with(" 0")),
        "early SYN never ran: {early:?}"
    );
    let rules = o.sh(
        "ingress",
        "iptables-nft",
        &["-t", "mangle", "-S", "PREROUTING"],
    );
    assert!(!rules.contains("NFQUEUE"), "no SYN queue rule: {rules}");
    let route = o.sh("ingress", "ip", &["route", "show", "10.10.2.2/32"]);
    assert!(route.trim().is_empty(), "no turbo route: {route}");
    assert_eq!(
        o.metric("ingress", "splitway_resources_pooled"),
        0.0,
        "no resources pooled"
    );
}

/// `TcpExt<name>` of a relay's namespace (absolute value).
fn nstat(o: &Overlay, role: &str, name: &str) -> u64 {
    let out = o.sh(role, "nstat", &["-az", name]);
    out.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn fast_open_puts_the_header_in_the_syn_and_is_visibly_off_when_off() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    for role in ["ingress", "egress"] {
        o.sh(role, "sysctl", &["-qw", "net.ipv4.tcp_fastopen=3"]);
    }
    // Fresh legs only (no pool, no early SYN): each flow connects a leg.
    let fresh = "early_syn = false\nconn_pool = false";
    o.start_relay(
        "ingress",
        &ingress_config(&ingress_with(&format!("{fresh}\nfast_open = false"), POOL)),
    );
    for i in 0..3 {
        one_transfer(&o, 7000 + i);
    }
    assert_eq!(
        nstat(&o, "egress", "TcpExtTCPFastOpenPassive"),
        0,
        "off: no leg carried data in its SYN"
    );
    o.start_relay(
        "ingress",
        &ingress_config(&ingress_with(&format!("{fresh}\nfast_open = true"), POOL)),
    );
    // The first leg fetches the cookie; the next ones use it.
    for i in 0..3 {
        one_transfer(&o, 7010 + i);
    }
    let active = nstat(&o, "ingress", "TcpExtTCPFastOpenActive");
    let passive = nstat(&o, "egress", "TcpExtTCPFastOpenPassive");
    assert!(
        active >= 2 && passive >= 2,
        "on: headers rode in the SYN (active {active}, passive {passive})"
    );
}

#[test]
fn early_syn_tap_sees_syns_and_pairs_or_falls_back() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    o.start_relay("ingress", &ingress_config(&ingress_with("", POOL)));
    let rules = o.sh(
        "ingress",
        "iptables-nft",
        &["-t", "mangle", "-S", "PREROUTING"],
    );
    assert!(
        rules.contains("NFQUEUE") && rules.contains("--queue-bypass"),
        "{rules}"
    );
    let n = 5;
    for i in 0..n {
        one_transfer(&o, 7000 + i);
    }
    let started = o.metric("ingress", "splitway_early_syn_total{result=\"started\"}");
    let hit = o.metric("ingress", "splitway_early_syn_total{result=\"hit\"}");
    let miss = o.metric("ingress", "splitway_early_syn_total{result=\"miss\"}");
    assert_eq!(
        hit + miss,
        n as f64,
        "every accepted connection looked for its early leg"
    );
    let late = o.metric("ingress", "splitway_early_syn_total{result=\"late\"}");
    // Every SYN reached the tap: it either started a leg or found its
    // client already accepted (zero-delay namespaces make that race close).
    assert!(
        started + late >= n as f64,
        "the tap saw every SYN (started {started}, late {late})"
    );
    assert!(hit <= started);
    // Rules go away with the relay.
    assert!(o.stop_relay("ingress"));
    let rules = o.sh(
        "ingress",
        "iptables-nft",
        &["-t", "mangle", "-S", "PREROUTING"],
    );
    assert!(!rules.contains("splitway"), "{rules}");
}

/// A lone relay (Miniproxy's one-relay path) routes `direct`: its early SYN
/// connects to the server itself while the client's handshake completes,
/// and the accepted client takes that connection (`hit`). No leg, no egress.
#[test]
fn early_syn_connects_a_direct_route_to_the_server() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    let direct = ingress_config("").replace("via = \"egress\"", "via = \"direct\"");
    o.start_relay("ingress", &direct);
    let legs = "splitway_connections_accepted_total{kind=\"relay\"}";
    let legs0 = o.metric("egress", legs);
    // Zero-delay links: the tap and the accept race (a third to a half of
    // the SYNs win), so enough flows that some must.
    let n = 20;
    for i in 0..n {
        one_transfer(&o, 7000 + i);
    }
    let m = |r: &str| {
        o.metric(
            "ingress",
            &format!("splitway_early_syn_total{{result=\"{r}\"}}"),
        )
    };
    let (started, hit, miss, late) = (m("started"), m("hit"), m("miss"), m("late"));
    eprintln!("FIGURE early SYN, direct route, {n} flows: started {started}, hit {hit}, miss {miss}, late {late}");
    assert_eq!(hit + miss, n as f64, "every accepted client looked");
    assert!(started + late >= n as f64, "the tap saw every SYN");
    assert!(
        hit >= 1.0,
        "no accepted client took a server connection started at its SYN"
    );
    assert!(hit <= started);
    assert_eq!(
        o.metric("ingress", "splitway_early_syn_total{result=\"failed\"}"),
        0.0
    );
    assert_eq!(
        o.metric("egress", legs),
        legs0,
        "a direct route takes no relay leg"
    );
}
