//! SOCKS5 and HTTP CONNECT ingress, in namespaces: real curl through the
//! ingress → egress overlay to a real HTTP server (python's http.server),
//! hashes of a large download, many concurrent SOCKS clients, and every
//! error reply (BIND, UDP ASSOCIATE, bad credentials, refused destinations,
//! malformed requests), each counted by reason.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};
use splitway_netns::{wait_until, ChildGuard};

const SOCKS: &str = "10.10.1.1:1080";
const SOCKS_AUTH: &str = "10.10.1.1:1081";
const HTTP: &str = "10.10.1.1:3128";
const HTTP_AUTH: &str = "10.10.1.1:3129";
const WEB_PORT: u16 = 7080;
/// The large download.
const BIG: usize = 48 << 20;

const INGRESS_PROXIES: &str = r#"
[[socks5]]
listen = "10.10.1.1:1080"
allow = [{ prefix = "10.10.3.2/32" }, { prefix = "fd10:3::2/128" }]
[[socks5]]
listen = "10.10.1.1:1081"
users = [{ name = "alice", password = "s3cret" }]
[[socks5]]
listen = "10.10.1.1:1082"
allow = [{ prefix = "10.10.3.2/32" }]
handshake_timeout_ms = 300
[[http_connect]]
listen = "10.10.1.1:3128"
allow = [{ prefix = "10.10.3.2/32" }, { prefix = "fd10:3::2/128" }]
[[http_connect]]
listen = "10.10.1.1:3129"
users = [{ name = "alice", password = "s3cret" }]
"#;

/// Host names the ingress resolves (from its own `/etc/hosts`: `ip netns
/// exec` mounts `/etc/netns/NAME/hosts` over it for the relay).
const HOSTS: &str =
    "10.10.3.2 server.test\nfd10:3::2 server6.test\n10.10.3.99 refused.test\n10.10.3.2 far.test\n";

/// `/etc/netns/NAME/`, removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn hosts(ns: &str, text: &str) -> NetnsEtc {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/NAME");
        std::fs::write(dir.join("hosts"), text).expect("write hosts");
        NetnsEtc(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_dir(self.0.parent().unwrap_or(&self.0));
    }
}

struct Setup {
    o: Overlay,
    _etc: NetnsEtc,
    _web: ChildGuard,
    big_sha: String,
}

/// The overlay with the proxy listeners on the ingress and a web server
/// (IPv4 and IPv6) holding a `BIG`-byte file on the server host.
fn setup() -> Setup {
    let mut o = Overlay::new();
    let etc = NetnsEtc::hosts(o.ingress.name(), HOSTS);
    o.start_relays("splice", INGRESS_PROXIES, "");
    let root = o.dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let mut f = std::fs::File::create(root.join("big")).unwrap();
    let big_sha = send_stream(&mut f, BIG, 42).unwrap();
    std::fs::write(root.join("small"), b"hello through the overlay\n").unwrap();
    let mut cmd = o.server.command("python3");
    cmd.args(["-m", "http.server", &WEB_PORT.to_string(), "--bind", "::"])
        .arg("--directory")
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let web = ChildGuard::spawn(&mut cmd).expect("start http.server");
    let addr = server_addr(false, WEB_PORT);
    wait_until(Duration::from_secs(10), "web server", || {
        o.server
            .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
            .unwrap_or(false)
    })
    .expect("web server up");
    Setup {
        o,
        _etc: etc,
        _web: web,
        big_sha,
    }
}

/// Run curl in the client host; returns (exit code, stdout).
fn curl(o: &Overlay, args: &[&str]) -> (i32, Vec<u8>) {
    let out = o
        .client
        .command("curl")
        .args(["-s", "--max-time", "60"])
        .args(args)
        .output()
        .expect("run curl");
    (out.status.code().unwrap_or(-1), out.stdout)
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn refused(o: &Overlay, kind: &str, reason: &str) -> f64 {
    o.metric(
        "ingress",
        &format!("splitway_proxy_refused_total{{kind=\"{kind}\",reason=\"{reason}\"}}"),
    )
}

#[test]
fn curl_through_socks5_and_http_connect_downloads_intact() {
    let s = setup();
    let o = &s.o;
    let big = format!("http://server.test:{WEB_PORT}/big");
    // socks5h: the name goes to the ingress, which resolves it.
    let (rc, body) = curl(o, &["--socks5-hostname", SOCKS, &big]);
    assert_eq!(rc, 0, "curl --socks5-hostname");
    assert_eq!((body.len(), sha(&body)), (BIG, s.big_sha.clone()));
    // socks5: curl resolves (an IPv4 address in the request).
    let ip = format!("http://{SERVER4}:{WEB_PORT}/big");
    let (rc, body) = curl(o, &["--socks5", SOCKS, &ip]);
    assert_eq!(rc, 0, "curl --socks5");
    assert_eq!(sha(&body), s.big_sha);
    // An IPv6 destination (ATYP 4) through an IPv4 proxy listener.
    let v6 = format!("http://[{SERVER6}]:{WEB_PORT}/small");
    let (rc, body) = curl(o, &["--socks5", SOCKS, &v6]);
    assert_eq!(
        (rc, body.as_slice()),
        (0, &b"hello through the overlay\n"[..])
    );
    // A name that resolves to IPv6 at the ingress.
    let (rc, body) = curl(
        o,
        &[
            "--socks5-hostname",
            SOCKS,
            &format!("http://server6.test:{WEB_PORT}/small"),
        ],
    );
    assert_eq!((rc, body.len()), (0, 26));
    // HTTP CONNECT (-p: tunnel even for http://).
    let (rc, body) = curl(o, &["-p", "-x", &format!("http://{HTTP}"), &big]);
    assert_eq!(rc, 0, "curl -p -x");
    assert_eq!(sha(&body), s.big_sha);
    // With credentials, both protocols.
    let (rc, body) = curl(
        o,
        &[
            "--socks5-hostname",
            SOCKS_AUTH,
            "--proxy-user",
            "alice:s3cret",
            &big,
        ],
    );
    assert_eq!((rc, sha(&body)), (0, s.big_sha.clone()));
    let (rc, body) = curl(
        o,
        &[
            "-p",
            "-x",
            &format!("http://alice:s3cret@{HTTP_AUTH}"),
            &big,
        ],
    );
    assert_eq!((rc, sha(&body)), (0, s.big_sha.clone()));
    // Every one went through the overlay: legs out of the ingress, and the
    // egress connected to the server for them.
    assert_eq!(
        o.metric(
            "ingress",
            "splitway_connections_accepted_total{kind=\"socks5\"}"
        ),
        5.0
    );
    assert_eq!(
        o.metric(
            "ingress",
            "splitway_connections_accepted_total{kind=\"http_connect\"}"
        ),
        2.0
    );
    let to_server = o.metric(
        "egress",
        "splitway_bytes_total{direction=\"downstream\",leg=\"server\"}",
    );
    assert!(
        to_server >= (5 * BIG) as f64,
        "egress moved {to_server} bytes"
    );
}

/// A SOCKS5 client: no-auth greeting, CONNECT to `dst`; returns the stream
/// after a successful reply.
fn socks_connect(o: &Overlay, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = o.connect(SOCKS.parse().unwrap())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = vec![5, 1, 0, 5, 1, 0];
    match dst {
        SocketAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
    }
    req.extend_from_slice(&dst.port().to_be_bytes());
    // Greeting and request in one write: the ingress answers both in turn.
    s.write_all(&req)?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply)?;
    if reply[..2] != [5, 0] || reply[2..4] != [5, 0] {
        return Err(std::io::Error::other(format!("reply {reply:?}")));
    }
    Ok(s)
}

#[test]
fn many_concurrent_socks_clients_move_bytes_intact_both_ways() {
    let s = setup();
    let o = &s.o;
    let n = 48;
    let (rx, _h) = serve_duplex(o.listen(server_addr(false, 7000)), n, 1 << 20, 5);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let st = socks_connect(o, server_addr(false, 7000)).expect("socks connect");
            std::thread::spawn(move || client_duplex(st, 512 << 10, i as u64))
        })
        .collect();
    let mut sent = Vec::new();
    for c in clients {
        let (ssha, got, rsha) = c.join().unwrap().expect("transfer");
        assert_eq!(got, 1 << 20);
        sent.push((ssha, rsha));
    }
    let mut seen = Vec::new();
    for _ in 0..n {
        let srv = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server side");
        assert_eq!(srv.received, 512 << 10);
        seen.push((srv.received_sha, srv.sent_sha));
    }
    sent.sort();
    seen.sort();
    assert_eq!(
        sent, seen,
        "every client's bytes arrived and came back intact"
    );
}

/// Send `bytes`, read until the relay closes; what it replied.
fn exchange(o: &Overlay, addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = o.connect(addr.parse().unwrap()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn every_refusal_gets_its_reply_and_is_counted() {
    let s = setup();
    let o = &s.o;
    let v4 = |cmd: u8, ip: [u8; 4], port: u16| {
        let mut r = vec![5, 1, 0, 5, cmd, 0, 1];
        r.extend_from_slice(&ip);
        r.extend_from_slice(&port.to_be_bytes());
        r
    };
    let code = |reply: &[u8]| reply.get(2..4).map(|r| r.to_vec());
    // BIND and UDP ASSOCIATE: command not supported (7).
    let r = exchange(o, SOCKS, &v4(2, [10, 10, 3, 2], 80));
    assert_eq!((&r[..2], code(&r)), (&[5u8, 0][..], Some(vec![5, 7])));
    let r = exchange(o, SOCKS, &v4(3, [10, 10, 3, 2], 80));
    assert_eq!(code(&r), Some(vec![5, 7]));
    assert_eq!(refused(o, "socks5", "unsupported_command"), 2.0);
    // A destination outside the listener's allow list: not allowed (2),
    // by address and by name; the egress never hears of it.
    let r = exchange(o, SOCKS, &v4(1, [10, 10, 3, 99], 80));
    assert_eq!(code(&r), Some(vec![5, 2]));
    let by_name = |host: &[u8]| {
        let mut r = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
        r.extend_from_slice(host);
        r.extend_from_slice(&80u16.to_be_bytes());
        r
    };
    let r = exchange(o, SOCKS, &by_name(b"refused.test"));
    assert_eq!(code(&r), Some(vec![5, 2]));
    assert_eq!(refused(o, "socks5", "not_allowed"), 2.0);
    // No route (the listener with users has no allow list of its own):
    // network unreachable (3).
    let mut r = b"\x05\x01\x02\x01\x05alice\x06s3cret".to_vec();
    r.extend_from_slice(&v4(1, [10, 10, 9, 9], 80)[3..]);
    let r = exchange(o, SOCKS_AUTH, &r);
    assert_eq!(r.get(..6), Some(&[5u8, 2, 1, 0, 5, 3][..]));
    assert_eq!(refused(o, "socks5", "no_route"), 1.0);
    // A name that does not resolve: host unreachable (4).
    let r = exchange(o, SOCKS, &by_name(b"nowhere.test"));
    assert_eq!(code(&r), Some(vec![5, 4]));
    assert_eq!(refused(o, "socks5", "resolve_failed"), 1.0);
    // Bad credentials: RFC 1929 failure; offering no-auth to a listener
    // that needs users: no acceptable method.
    let r = exchange(o, SOCKS_AUTH, b"\x05\x01\x02\x01\x05alice\x05wrong");
    assert_eq!(r, [5, 2, 1, 1]);
    let r = exchange(o, SOCKS_AUTH, b"\x05\x01\x00");
    assert_eq!(r, [5, 0xff]);
    assert_eq!(refused(o, "socks5", "bad_credentials"), 1.0);
    assert_eq!(refused(o, "socks5", "no_acceptable_method"), 1.0);
    // A client that stops mid-handshake is cut at handshake_timeout_ms.
    let mut slow = o.connect("10.10.1.1:1082".parse().unwrap()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(&[5, 1]).unwrap();
    let mut rest = Vec::new();
    let cut = slow.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "no reply to half a greeting: {rest:?} {cut:?}"
    );
    assert_eq!(refused(o, "socks5", "handshake_timeout"), 1.0);
    // Not SOCKS at all: closed without a reply, counted.
    assert!(exchange(o, SOCKS, b"GET / HTTP/1.1\r\n\r\n").is_empty());
    assert_eq!(refused(o, "socks5", "bad_version"), 1.0);

    // HTTP CONNECT: each refusal's status line.
    let status = |addr: &str, req: &str| {
        let r = exchange(o, addr, req.as_bytes());
        String::from_utf8_lossy(&r)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(status(HTTP, "CONNECT 10.10.3.99:80 HTTP/1.1\r\n\r\n").contains(" 403 "));
    assert!(status(HTTP, "CONNECT refused.test:80 HTTP/1.1\r\n\r\n").contains(" 403 "));
    assert!(status(HTTP, "GET http://server.test/ HTTP/1.1\r\n\r\n").contains(" 405 "));
    assert!(status(HTTP, "CONNECT server.test HTTP/1.1\r\n\r\n").contains(" 400 "));
    assert!(status(HTTP, "CONNECT nowhere.test:80 HTTP/1.1\r\n\r\n").contains(" 502 "));
    let huge = format!(
        "CONNECT server.test:80 HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert!(status(HTTP, &huge).contains(" 431 "));
    assert!(status(HTTP_AUTH, "CONNECT server.test:80 HTTP/1.1\r\n\r\n").contains(" 407 "));
    // alice:wrong
    let bad =
        "CONNECT server.test:80 HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n";
    assert!(status(HTTP_AUTH, bad).contains(" 407 "));
    for (reason, n) in [
        ("not_allowed", 2.0),
        ("unsupported_method", 1.0),
        ("bad_host_name", 1.0),
        ("resolve_failed", 1.0),
        ("too_large", 1.0),
        ("auth_required", 1.0),
        ("bad_credentials", 1.0),
    ] {
        assert_eq!(refused(o, "http_connect", reason), n, "{reason}");
    }
    // curl sees the 403 as a failed tunnel.
    let (rc, _) = curl(
        o,
        &[
            "-p",
            "-x",
            &format!("http://{HTTP}"),
            "http://10.10.3.99:80/",
        ],
    );
    assert_eq!(rc, 56, "curl: CONNECT refused");

    // A destination the ingress accepts but the egress's allow list does
    // not (port 10000 is outside it): the leg is refused at the egress,
    // also when the client named it by host name; the client is reset.
    let before = o.metric(
        "egress",
        "splitway_header_rejected_total{reason=\"not_allowed\"}",
    );
    let (rc, _) = curl(o, &["--socks5-hostname", SOCKS, "http://far.test:10000/"]);
    assert_ne!(rc, 0, "egress allow list holds for names");
    o.wait_metric(
        "egress",
        "splitway_header_rejected_total{reason=\"not_allowed\"}",
        |v| v > before,
    );
    // Nothing panicked; both relays still serve.
    let (rc, body) = curl(
        o,
        &[
            "--socks5-hostname",
            SOCKS,
            &format!("http://server.test:{WEB_PORT}/small"),
        ],
    );
    assert_eq!((rc, body.len()), (0, 26));
}
