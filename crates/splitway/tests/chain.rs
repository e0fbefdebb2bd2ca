//! A chain of three relays: ingress → transit → egress, with the transit
//! relay re-signing the header and spending one hop.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use splitway_core::auth::{KeyRing, Secret};
use splitway_core::wire::Header;

const TRANSIT_ADMIN: &str = "127.0.0.1:9901";

/// Ingress routes to the transit (egress host, port 5566); the transit
/// routes to the egress relay (port 5565), which connects to the server.
fn chain() -> Overlay {
    chain_with("")
}

/// [`chain`] with `ingress_extra` (routes, sections) in the ingress config.
fn chain_with(ingress_extra: &str) -> Overlay {
    let mut o = Overlay::new();
    o.start_relays("splice", ingress_extra, "");
    let transit = format!(
        r#"
[node]
name = "transit"
[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]
[relay]
listen = "0.0.0.0:5566"
[[peer]]
name = "egress"
addr = "{EGRESS_LEG}"
[[route]]
prefix = "10.10.3.0/24"
via = "egress"
[admin]
listen = "{TRANSIT_ADMIN}"
"#
    );
    o.start_relay("transit", &transit);
    let ingress = std::fs::read_to_string(o.dir.join("ingress.toml"))
        .unwrap()
        .replace("addr = \"10.10.2.2:5565\"", "addr = \"10.10.2.2:5566\"");
    o.start_relay("ingress", &ingress);
    o
}

#[test]
fn three_relay_chain_carries_bytes_intact_through_the_transit() {
    let o = chain();
    let (rx, _h) = serve_duplex(o.listen(server_addr(false, 7000)), 3, 3 << 20, 8);
    for i in 0..3 {
        let s = o.connect(server_addr(false, 7000)).unwrap();
        let (sent, n, got) = client_duplex(s, 2 << 20, i).unwrap();
        let srv = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((srv.received, srv.received_sha), (2 << 20, sent));
        assert_eq!((n, got), (3 << 20, srv.sent_sha));
    }
    // flow ends are counted after the client saw its last byte: wait
    let closed = "splitway_connections_completed_total{outcome=\"closed\"}";
    let transit = splitway_netns::wait_until(Duration::from_secs(10), "transit counted", || {
        metric_value(&http_get(&o.egress, TRANSIT_ADMIN, "/metrics"), closed) == 3.0
    });
    assert!(transit.is_ok(), "all three flows crossed the transit relay");
    o.wait_metric("egress", closed, |v| v == 3.0);
}

#[test]
fn a_module_chain_runs_end_to_end_through_the_transit() {
    const MB: usize = 1 << 20;
    let o = chain_with(
        r#"[modules]
dedup_store_mib = 64
[[route]]
prefix = "10.10.3.2/32"
ports = 7104
via = "egress"
modules = ["dedup", "compress"]
"#,
    );
    // Both flows get the same reply: the second crosses as references.
    let (rx, _h) = serve_duplex(o.listen(server_addr(false, 7104)), 2, 3 * MB, 21);
    for i in 0..2 {
        let s = o.connect(server_addr(false, 7104)).unwrap();
        let (sent, n, got) = client_duplex(s, MB, 30 + i).unwrap();
        let srv = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!((srv.received, srv.received_sha), (MB, sent), "request {i}");
        assert_eq!((n, got), (3 * MB, srv.sent_sha), "reply {i}");
    }
    // The chain ran at the ingress and the egress, not at the transit.
    let flows = "splitway_module_flows_total{chain=\"dedup+compress\",outcome=\"closed\"}";
    o.wait_metric("ingress", flows, |v| v == 2.0);
    o.wait_metric("egress", flows, |v| v == 2.0);
    let transit =
        |sample: &str| metric_value(&http_get(&o.egress, TRANSIT_ADMIN, "/metrics"), sample);
    assert_eq!(transit(flows), 0.0, "the transit passed the frames through");
    let closed = "splitway_connections_completed_total{outcome=\"closed\"}";
    let ok = splitway_netns::wait_until(Duration::from_secs(10), "transit counted", || {
        transit(closed) == 2.0
    });
    assert!(
        ok.is_ok(),
        "both flows crossed the transit: {}",
        transit(closed)
    );
    let bytes = |what: &str| {
        o.metric(
            "egress",
            &format!("splitway_module_bytes_total{{chain=\"dedup+compress\",what=\"{what}\"}}"),
        )
    };
    assert!(
        bytes("wire_out") < 0.6 * bytes("plain_in"),
        "the repeated reply was deduplicated end to end: {} of {}",
        bytes("wire_out"),
        bytes("plain_in")
    );
}

#[test]
fn transit_refuses_a_header_with_no_hops_left() {
    let o = chain();
    let l = o.listen(server_addr(false, 7000));
    l.set_nonblocking(true).unwrap();
    let ring = KeyRing::new(
        HashMap::from([(1, Secret::new(hex::decode(KEY).unwrap()))]),
        1,
    );
    let header = |hop_limit| {
        ring.seal(&Header {
            dst: server_addr(false, 7000),
            hop_limit,
            key_id: 1,
            timestamp_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
            nonce: rand::random(),
            leg: Default::default(),
        })
    };
    let send = |bytes: Vec<u8>| {
        let addr: SocketAddr = "10.10.2.2:5566".parse().unwrap();
        o.ingress
            .run_in(move || {
                // The relay may reset us as soon as it has read the header,
                // so neither the write's end nor the reply is awaited.
                let mut s = TcpStream::connect(addr).unwrap();
                let _ = s.write_all(&bytes);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut out = [0u8; 1];
                let _ = s.read(&mut out);
            })
            .unwrap()
    };
    send(header(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(l.accept().is_err(), "nothing reached the server");
    let m = http_get(&o.egress, TRANSIT_ADMIN, "/metrics");
    assert_eq!(
        metric_value(&m, "splitway_header_rejected_total{reason=\"hop_limit\"}"),
        1.0
    );
    // With one hop left it goes through (the transit spends it).
    send(header(1));
    let ok = splitway_netns::wait_until(Duration::from_secs(3), "server accept", || {
        l.accept().is_ok()
    });
    assert!(ok.is_ok(), "a header with a hop left is forwarded");
}
