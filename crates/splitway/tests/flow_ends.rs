//! How a relay ends a flow (issue 12 §1), with real relays in network
//! namespaces: a flow that still moves bytes is never cut by a timeout
//! (half-close and idle are inactivity timeouts), and every end the relay
//! decides on its own (a timeout, an engine error, a shutdown past its
//! grace) resets both ends, so no peer takes a cut for a complete answer.
//! The rows of `docs/reliability.md`, *Ends the relay decides*.
//!
//! Timeouts here are whole seconds and every wait is several times longer
//! than the gap it must outlast (or bounded below by the rule itself), so
//! no outcome depends on a race of a few milliseconds.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const KIB: usize = 1024;

fn completed(o: &Overlay, role: &str, outcome: &str) -> f64 {
    o.metric(
        role,
        &format!("splitway_connections_completed_total{{outcome=\"{outcome}\"}}"),
    )
}

/// The explicit listener of the ingress (target: the server's port 7000).
fn explicit() -> SocketAddr {
    format!("{INGRESS4}:8080").parse().unwrap()
}

/// The repro: the client sends a request and its FIN; the server
/// answers 10 KiB at 1 KiB per 0.5 s (5 s) with `half_close_secs = 2` on
/// both relays. The answer never pauses for 2 s, so it arrives whole and
/// ends with the server's FIN. (Before: 4 096 bytes, then a clean EOF at 2 s.)
#[test]
fn a_half_closed_client_gets_a_slow_answer_longer_than_half_close_intact() {
    let mut o = Overlay::new();
    for engine in ["splice", "copy"] {
        let t = "[timeouts]\nhalf_close_secs = 2\n";
        o.start_relays(engine, t, t);
        let l = o.listen(server_addr(false, 7000));
        let server = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (n, _) = recv_stream(&mut s).unwrap();
            let mut stream = Stream::new(5);
            let mut chunk = [0u8; KIB];
            for _ in 0..10 {
                thread::sleep(Duration::from_millis(500));
                stream.fill(&mut chunk);
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = s.shutdown(Shutdown::Write);
            n
        });
        let mut c = o.connect(explicit()).unwrap();
        c.write_all(b"GET /slow\r\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        let r = c.read_to_end(&mut got);
        assert!(r.is_ok(), "{engine}: {r:?} after {} bytes", got.len());
        let mut want = vec![0u8; 10 * KIB];
        let mut stream = Stream::new(5);
        for chunk in want.chunks_mut(KIB) {
            stream.fill(chunk);
        }
        assert_eq!(got.len(), 10 * KIB, "{engine}: the whole answer, then FIN");
        assert!(got == want, "{engine}: the answer's bytes");
        assert_eq!(server.join().unwrap(), 11, "{engine}: request");
        assert_eq!(completed(&o, "ingress", "closed"), 1.0, "{engine}");
        assert_eq!(
            completed(&o, "ingress", "half_close_timeout"),
            0.0,
            "{engine}"
        );
    }
}

/// Half-close past its inactivity timeout: the client sent its request and
/// FIN, the server sent 1 000 bytes and then nothing for longer than
/// `half_close_secs = 1`. The ingress cuts the flow: the client reads the
/// 1 000 bytes and then a reset (not a FIN that would pass for the end of
/// the answer), and the reset reaches the server through the egress.
#[test]
fn half_close_inactivity_resets_both_ends() {
    let mut o = Overlay::new();
    // Both relays see the same silence; whichever cuts first, the other
    // carries its reset.
    let t = "[timeouts]\nhalf_close_secs = 1\n";
    o.start_relays("copy", t, t);
    let l = o.listen(server_addr(false, 7000));
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let (n, _) = recv_stream(&mut s).unwrap();
        s.write_all(&[7u8; 1000]).unwrap();
        tx.send(Instant::now()).unwrap();
        // Then silence, with the socket open: wait for the relay's reset.
        (n, was_reset_within(&s, Duration::from_secs(10)))
    });
    let mut c = o.connect(server_addr(false, 7000)).unwrap();
    c.write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (n, end, at) = read_until_end(c, Duration::from_secs(10));
    let last_byte = rx.recv().unwrap();
    let (req, server_reset) = server.join().unwrap();
    eprintln!(
        "FIGURE half-close inactivity: client {end:?} {:?} after the server's last byte",
        at - last_byte
    );
    assert_eq!(req, 7);
    assert_eq!(
        (n, end),
        (1000, End::Reset),
        "client: the answer, then a reset"
    );
    assert!(
        at - last_byte >= Duration::from_secs(1),
        "not before the timeout"
    );
    assert!(server_reset, "the server was reset too");
    let cuts = completed(&o, "ingress", "half_close_timeout")
        + completed(&o, "egress", "half_close_timeout");
    assert!(cuts >= 1.0, "counted as half_close_timeout");
}

/// Idle past its timeout with bytes still unsent: the server reads nothing,
/// the client writes until every buffer on the way is full, and nothing
/// moves for `idle_secs = 1`. Both ends get a reset: the client's write
/// fails, and the server, reading at last, reads what was queued and then
/// a reset, never an EOF.
#[test]
fn idle_timeout_with_bytes_unsent_resets_both_ends() {
    let mut o = Overlay::new();
    o.start_relays("splice", "[timeouts]\nidle_secs = 1\n", "");
    let l = o.listen(server_addr(false, 7000));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        // Read nothing until the client has seen its end.
        go_rx.recv().unwrap();
        read_until_end(s, Duration::from_secs(20))
    });
    let mut c = o.connect(server_addr(false, 7000)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let chunk = vec![1u8; 64 * KIB];
    let mut sent = 0usize;
    let err = loop {
        match c.write(&chunk) {
            Ok(k) => sent += k,
            Err(e) => break e,
        }
    };
    go_tx.send(()).unwrap();
    let (got, end, _) = server.join().unwrap();
    eprintln!(
        "FIGURE idle cut: client wrote {sent} B then {err}; server read {got} B then {end:?}"
    );
    assert_eq!(end_of(&err), End::Reset, "client: {err}");
    assert_eq!(
        end,
        End::Reset,
        "server: a reset after {got} of {sent} bytes"
    );
    assert!(got < sent);
    assert_eq!(completed(&o, "ingress", "idle_timeout"), 1.0);
}

/// Shutdown past its grace period: a download still running when the
/// ingress gets SIGTERM with `shutdown_grace_secs = 1`. The client sees a
/// reset, not an EOF; the server's next writes fail; the flow is logged as
/// `aborted`.
#[test]
fn shutdown_past_grace_resets_both_ends_of_a_running_flow() {
    let mut o = Overlay::new();
    o.start_relays("copy", "[timeouts]\nshutdown_grace_secs = 1\n", "");
    let logged = std::fs::read_to_string(o.dir.join("ingress.toml"))
        .unwrap()
        .replace(
            "engine = \"copy\"",
            "engine = \"copy\"\nlog_connections = true",
        );
    o.start_relay("ingress", &logged);
    let l = o.listen(server_addr(false, 7000));
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let t0 = Instant::now();
        // 1 KiB every 0.2 s until the write fails (at most 30 s).
        while t0.elapsed() < Duration::from_secs(30) {
            if let Err(e) = s.write_all(&[3u8; KIB]) {
                return end_of(&e);
            }
            thread::sleep(Duration::from_millis(200));
        }
        End::Hang
    });
    let mut c = o.connect(server_addr(false, 7000)).unwrap();
    let mut first = [0u8; KIB];
    c.read_exact(&mut first).unwrap();
    assert!(o.stop_relay("ingress"), "ingress stopped cleanly");
    let (n, end, _) = read_until_end(c, Duration::from_secs(10));
    let server_end = server.join().unwrap();
    eprintln!("FIGURE drain cut: client read {n} more B then {end:?}; server {server_end:?}");
    assert_eq!(end, End::Reset, "client: a reset, not an EOF");
    assert_eq!(server_end, End::Reset, "server: its writes fail");
    let log = o.log("ingress");
    assert!(
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains("aborted")),
        "the cut flow is counted as aborted:\n{log}"
    );
}

/// An engine error mid-flow: the splice engine needs a pipe for a large
/// burst and can not have one (lending switched off at run time so no spare
/// is left, and the ingress's fd limit lowered so none can be made). Both
/// ends are reset and the flow is counted as `engine_error`.
#[test]
fn an_engine_error_mid_flow_resets_both_ends() {
    let mut o = Overlay::new();
    o.start_relays("splice", "", "");
    let l = o.listen(server_addr(false, 7000));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"ok").unwrap();
        go_rx.recv().unwrap();
        // 32 MiB: more than every buffer on the way, so the writes fail
        // once the flow is reset.
        match send_stream(&mut s, 32 << 20, 9) {
            Ok(_) => End::Eof,
            Err(e) => end_of(&e),
        }
    });
    let c = o.client.run_in(move || {
        // A small receive buffer, so the ingress's writes to the client
        // block and the next read from the leg is a full burst (the splice
        // path, which needs a pipe).
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_recv_buffer_size(4096)?;
        s.connect_timeout(&server_addr(false, 7000).into(), Duration::from_secs(5))?;
        Ok::<TcpStream, std::io::Error>(s.into())
    });
    let mut c = c.unwrap().unwrap();
    c.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).unwrap();
    o.ctl("ingress", &["feature", "worker_pools", "off"]);
    let nofile = o.relay_nofile("ingress");
    // 0, 1 and 2 are open: no new fd can be had.
    o.set_relay_nofile_soft("ingress", 3);
    go_tx.send(()).unwrap();
    let (n, end, _) = read_until_end(c, Duration::from_secs(20));
    let server_end = server.join().unwrap();
    o.set_relay_nofile_soft("ingress", nofile);
    eprintln!("FIGURE engine error: client read {n} B then {end:?}; server {server_end:?}");
    assert_eq!(end, End::Reset, "client: a reset after {n} bytes");
    assert_eq!(server_end, End::Reset, "server: its writes fail");
    let v = o.wait_metric(
        "ingress",
        "splitway_connections_completed_total{outcome=\"engine_error\"}",
        |v| v >= 1.0,
    );
    assert_eq!(v, 1.0);
}
