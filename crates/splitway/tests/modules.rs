//! Stream modules on relay legs (issue 13) with real relays in namespaces:
//! every chain carries many concurrent flows both ways byte for byte
//! (SHA-256), repeated content crosses as dedup references across flows,
//! bad module input resets the leg and is counted by reason, and a leg cut
//! without END resets the client instead of giving it a clean EOF.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use splitway_core::auth::{KeyRing, Secret};
use splitway_core::frame::{self, Frame, LEG_STREAM};
use splitway_core::wire::{Header, LegKind};

const MB: usize = 1024 * 1024;

/// Port → chain, one route each (more specific than the base routes).
const CHAINS: [(u16, &str); 4] = [
    (7101, r#"["null"]"#),
    (7102, r#"["compress"]"#),
    (7103, r#"["dedup"]"#),
    (7104, r#"["dedup", "compress"]"#),
];

fn module_routes() -> String {
    let mut s = String::from("[modules]\ndedup_store_mib = 64\n");
    for (port, chain) in CHAINS {
        s += &format!(
            "[[route]]\nprefix = \"10.10.3.2/32\"\nports = {port}\nvia = \"egress\"\nmodules = {chain}\n"
        );
    }
    s
}

fn label(chain: &str) -> String {
    chain
        .trim_matches(['[', ']'])
        .replace(['"', ' '], "")
        .replace(',', "+")
}

#[test]
fn every_chain_carries_concurrent_flows_both_ways_intact_and_dedups_across_flows() {
    let mut o = Overlay::new();
    o.start_relays("splice", &module_routes(), "");
    let flows = 5;
    let mut servers = Vec::new();
    for (port, _) in CHAINS {
        // Every connection of a server sends the same bytes (one seed):
        // later flows repeat earlier ones.
        servers.push(serve_duplex(
            o.listen(server_addr(false, port)),
            flows,
            3 * MB,
            40 + port as u64,
        ));
    }
    let mut clients = Vec::new();
    for (port, _) in CHAINS {
        for i in 0..flows {
            let s = o.connect(server_addr(false, port)).expect("connect");
            let seed = port as u64 * 100 + i as u64;
            clients.push((
                port,
                std::thread::spawn(move || client_duplex(s, 2 * MB, seed)),
            ));
        }
    }
    let mut got: HashMap<u16, Vec<(String, usize, String)>> = HashMap::new();
    for (port, c) in clients {
        let r = c
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("port {port}: {e}"));
        got.entry(port).or_default().push(r);
    }
    for ((port, chain), (rx, _h)) in CHAINS.iter().zip(servers.iter()) {
        let mut seen = Vec::new();
        for _ in 0..flows {
            seen.push(
                rx.recv_timeout(Duration::from_secs(60))
                    .expect("server side"),
            );
        }
        for (sent_sha, n, recv_sha) in &got[port] {
            assert_eq!(*n, 3 * MB, "{chain}: reply length");
            assert_eq!(*recv_sha, seen[0].sent_sha, "{chain}: reply bytes");
            assert!(
                seen.iter()
                    .any(|s| s.received_sha == *sent_sha && s.received == 2 * MB),
                "{chain}: request bytes"
            );
        }
        let l = label(chain);
        for role in ["ingress", "egress"] {
            // counted as each flow ends, after its client saw the last byte
            o.wait_metric(
                role,
                &format!("splitway_module_flows_total{{chain=\"{l}\",outcome=\"closed\"}}"),
                |v| v == flows as f64,
            );
        }
    }
    // The reply repeats per flow: dedup sends most of it as references.
    let m = |what: &str| {
        o.metric(
            "egress",
            &format!("splitway_module_bytes_total{{chain=\"dedup\",what=\"{what}\"}}"),
        )
    };
    let (plain, wire) = (m("plain_in"), m("wire_out"));
    assert_eq!(plain, (flows * 3 * MB) as f64);
    assert!(wire < plain * 0.6, "dedup sent {wire} of {plain}");
    assert_eq!(o.metric("egress", "splitway_module_errors_total"), 0.0);
    // Early SYN (on by default) opened module legs at the client's SYN,
    // carrying their chain.
    let hits = o.metric("ingress", "splitway_early_syn_total{result=\"hit\"}");
    assert!(hits > 0.0, "no module flow took its early leg");
}

/// SOCKS5 (no auth, IPv4 CONNECT) and HTTP CONNECT listeners at the ingress.
const PROXIES: &str = r#"
[[socks5]]
listen = "10.10.1.1:1080"
allow = [{ prefix = "10.10.3.2/32" }]
[[http_connect]]
listen = "10.10.1.1:3128"
allow = [{ prefix = "10.10.3.2/32" }]
"#;

fn socks5_connect(o: &Overlay, to: SocketAddr) -> TcpStream {
    let mut s = o
        .connect("10.10.1.1:1080".parse().unwrap())
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut r = [0u8; 2];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r, [5, 0]);
    let SocketAddr::V4(v4) = to else {
        panic!("IPv4 only")
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).unwrap();
    assert_eq!(rep[1], 0, "SOCKS5 reply: succeeded");
    s.set_read_timeout(None).unwrap();
    s
}

/// HTTP CONNECT with `early` bytes in the same write as the request.
fn http_connect(o: &Overlay, to: SocketAddr, early: &[u8]) -> TcpStream {
    let mut s = o
        .connect("10.10.1.1:3128".parse().unwrap())
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("CONNECT {to} HTTP/1.1\r\nHost: {to}\r\n\r\n").into_bytes();
    req.extend_from_slice(early);
    s.write_all(&req).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.set_read_timeout(None).unwrap();
    s
}

#[test]
fn proxy_ingress_flows_run_the_routes_module_chain() {
    let mut o = Overlay::new();
    o.start_relays("splice", &format!("{}{PROXIES}", module_routes()), "");
    let port = 7104; // dedup + compress
    let (rx, _h) = serve_duplex(o.listen(server_addr(false, port)), 2, 3 * MB, 99);
    let to = server_addr(false, port);
    let s = socks5_connect(&o, to);
    let (sent, n, got) = client_duplex(s, 2 * MB, 5).expect("SOCKS5 flow");
    let early = b"early bytes with the CONNECT request";
    let h = http_connect(&o, to, early);
    let (_, n2, got2) = client_duplex(h, 2 * MB, 6).expect("CONNECT flow");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(
            rx.recv_timeout(Duration::from_secs(60))
                .expect("server side"),
        );
    }
    assert_eq!((n, n2), (3 * MB, 3 * MB), "reply lengths");
    assert_eq!(got, seen[0].sent_sha, "reply bytes");
    assert_eq!(got2, seen[0].sent_sha, "reply bytes");
    assert!(
        seen.iter()
            .any(|x| x.received_sha == sent && x.received == 2 * MB),
        "the SOCKS5 client's bytes"
    );
    assert!(
        seen.iter().any(|x| x.received == 2 * MB + early.len()),
        "the CONNECT client's early bytes crossed the module leg first"
    );
    for role in ["ingress", "egress"] {
        // both proxy flows ran the chain (counted after the client's last byte)
        o.wait_metric(
            role,
            "splitway_module_flows_total{chain=\"dedup+compress\",outcome=\"closed\"}",
            |v| v == 2.0,
        );
    }
    // the second reply repeats the first: dedup sent most of it as references
    let m = |what: &str| {
        o.metric(
            "egress",
            &format!("splitway_module_bytes_total{{chain=\"dedup+compress\",what=\"{what}\"}}"),
        )
    };
    assert!(
        m("wire_out") < 0.6 * m("plain_in"),
        "{} of {}",
        m("wire_out"),
        m("plain_in")
    );
}

fn ring() -> KeyRing {
    KeyRing::new(
        HashMap::from([(1, Secret::new(hex::decode(KEY).unwrap()))]),
        1,
    )
}

fn framed_header(dst: &str) -> Vec<u8> {
    let h = Header {
        dst: dst.parse().unwrap(),
        hop_limit: 3,
        key_id: 0,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        nonce: rand::random(),
        leg: LegKind::Framed,
    };
    ring().seal(&h)
}

/// Sends `bytes` on a fresh leg from the ingress host; returns what came
/// back, or the error (a reset).
fn leg_exchange(o: &Overlay, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let addr: SocketAddr = EGRESS_LEG.parse().unwrap();
    o.ingress
        .run_in(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&bytes)?;
            s.shutdown(Shutdown::Write)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })
        .unwrap()
}

fn module_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::Module {
        stream: LEG_STREAM,
        flags,
        payload,
    }
    .encode(&mut out);
    out
}

fn data_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_data_head(&mut out, LEG_STREAM, 0, payload.len());
    out.extend_from_slice(payload);
    out
}

#[test]
fn bad_module_input_resets_the_leg_and_is_counted_by_reason() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    let l = o.listen(server_addr(false, 7100));
    l.set_nonblocking(true).unwrap();
    let dst = "10.10.3.2:7100";

    // An unknown module id in the chain: refused at the header.
    let mut b = framed_header(dst);
    b.extend(module_frame(0, &[3, 42]));
    let _ = leg_exchange(&o, b);
    o.wait_metric(
        "egress",
        "splitway_header_rejected_total{reason=\"module_unknown\"}",
        |v| v == 1.0,
    );

    // A framed leg whose first frame is not a chain.
    let mut b = framed_header(dst);
    b.extend(data_frame(b"hello"));
    let _ = leg_exchange(&o, b);
    o.wait_metric(
        "egress",
        "splitway_header_rejected_total{reason=\"module_chain_missing\"}",
        |v| v == 1.0,
    );

    // Garbage where compress records belong; a decompression bomb; a dedup
    // reference that extends nothing; an END that counts wrong.
    let cases: [(&[u8], Vec<u8>, &str); 4] = [
        (&[2], data_frame(&[0x07, 1, 0, 0, 0, 0]), "module_record"),
        (
            &[2],
            data_frame(&[0x01, 10, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            "compress_bomb",
        ),
        (&[3], data_frame(&[0x02]), "dedup_corrupt"),
        (
            &[1],
            {
                let mut v = data_frame(b"abc");
                Frame::End {
                    stream: LEG_STREAM,
                    total: 99,
                }
                .encode(&mut v);
                v
            },
            "end_mismatch",
        ),
    ];
    for (chain, body, reason) in cases {
        let mut b = framed_header(dst);
        b.extend(module_frame(0, chain));
        b.extend(body);
        let r = leg_exchange(&o, b);
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|v| v.is_empty()),
            "{reason}: {r:?}"
        );
        o.wait_metric(
            "egress",
            &format!("splitway_module_errors_total{{reason=\"{reason}\"}}"),
            |v| v == 1.0,
        );
    }
    // A module leg cut without END: its flow's server connection is reset.
    let mut b = framed_header(dst);
    b.extend(module_frame(0, &[1]));
    b.extend(data_frame(b"partial request"));
    let _ = leg_exchange(&o, b);
    o.wait_metric(
        "egress",
        "splitway_module_errors_total{reason=\"no_end\"}",
        |v| v >= 1.0,
    );
    drop(l);
}

#[test]
fn a_module_leg_cut_without_end_resets_the_client_not_a_clean_eof() {
    let mut o = Overlay::new();
    o.start_relays("splice", &module_routes(), "");
    let l = o.listen(server_addr(false, 7104));
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        // Half a reply, then the server waits: the egress is killed meanwhile.
        let mut st = Stream::new(9);
        let mut buf = vec![0u8; MB];
        st.fill(&mut buf);
        s.write_all(&buf).expect("write");
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut c = o.connect(server_addr(false, 7104)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"request").unwrap();
    let mut buf = vec![0u8; MB];
    let mut got = 0;
    while got < MB {
        let n = c.read(&mut buf[got..]).expect("first half");
        assert!(n > 0, "EOF before the first half");
        got += n;
    }
    o.kill_relay("egress");
    let mut rest = [0u8; 1024];
    let r = c.read(&mut rest);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client must see a reset, got {r:?}"
    );
    let _ = c.shutdown(Shutdown::Both);
    drop(server);
}

/// One flow on the route of `port`, 4 MiB up and 6 MiB down: the bytes
/// match end to end; returns the ingress's and the egress's `spliced_out` /
/// `spliced_in` counters for `chain`.
fn spliced_counts(o: &Overlay, port: u16, chain: &str) -> [f64; 4] {
    let (rx, _h) = serve_duplex(o.listen(server_addr(false, port)), 1, 6 * MB, 7);
    let s = o.connect(server_addr(false, port)).expect("connect");
    let (sent_sha, n, recv_sha) = client_duplex(s, 4 * MB, 8).expect("client");
    let seen = rx.recv_timeout(Duration::from_secs(60)).expect("server");
    assert_eq!(n, 6 * MB, "{chain}: reply length");
    assert_eq!(recv_sha, seen.sent_sha, "{chain}: reply bytes");
    assert_eq!(seen.received, 4 * MB, "{chain}: request length");
    assert_eq!(seen.received_sha, sent_sha, "{chain}: request bytes");
    let mut out = [0.0; 4];
    for (i, (role, what)) in [
        ("ingress", "spliced_out"),
        ("ingress", "spliced_in"),
        ("egress", "spliced_out"),
        ("egress", "spliced_in"),
    ]
    .into_iter()
    .enumerate()
    {
        o.wait_metric(
            role,
            &format!("splitway_module_flows_total{{chain=\"{chain}\",outcome=\"closed\"}}"),
            |v| v == 1.0,
        );
        out[i] = o.metric(
            role,
            &format!("splitway_module_bytes_total{{chain=\"{chain}\",what=\"{what}\"}}"),
        );
    }
    out
}

#[test]
fn null_payloads_cross_spliced_and_the_switch_turns_it_off() {
    let mut o = Overlay::new();
    o.start_relays("splice", &module_routes(), "");
    let [i_out, i_in, e_out, e_in] = spliced_counts(&o, 7101, "null");
    // Every byte of null crosses as plain records, both ways; the receiver
    // splices the large ones on (records under 16 KiB are copied, and how
    // many there are depends on how the sender's reads fell).
    assert_eq!(i_out, (4 * MB) as f64, "ingress spliced out");
    assert_eq!(e_out, (6 * MB) as f64, "egress spliced out");
    assert!(
        e_in > 0.0 && e_in <= (4 * MB) as f64,
        "egress spliced in: {e_in}"
    );
    assert!(
        i_in > 0.0 && i_in <= (6 * MB) as f64,
        "ingress spliced in: {i_in}"
    );
    // compress may transform: it never splices (bytes intact).
    let counts = spliced_counts(&o, 7102, "compress");
    assert_eq!(counts, [0.0; 4], "compress is not spliced");

    // A plain record cut short: the far relay resets the leg (no_end).
    let mut b = framed_header("10.10.3.2:7101");
    b.extend(module_frame(0, &[1]));
    frame::encode_data_head(&mut b, LEG_STREAM, 0x01, 1000);
    b.extend_from_slice(&[5u8; 10]);
    let _ = leg_exchange(&o, b);
    o.wait_metric(
        "egress",
        "splitway_module_errors_total{reason=\"no_end\"}",
        |v| v >= 1.0,
    );
    drop(o);

    // The ingress's switch off: it sends every byte through user space and
    // copies the plain records the egress still sends; bytes intact.
    let mut o = Overlay::new();
    let off = module_routes().replace("[modules]\n", "[modules]\nsplice = false\n");
    o.start_relays("splice", &off, "");
    let counts = spliced_counts(&o, 7101, "null");
    assert_eq!(counts, [0.0, 0.0, (6 * MB) as f64, 0.0], "ingress off");
    drop(o);

    // Off at both: nothing spliced.
    let mut o = Overlay::new();
    o.start_relays("splice", &off, "[modules]\nsplice = false\n");
    let counts = spliced_counts(&o, 7101, "null");
    assert_eq!(counts, [0.0; 4], "splice off: nothing spliced");
}
