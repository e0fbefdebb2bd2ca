//! End-to-end tests of a delay line between real namespaces:
//! hostA — link — hostB. Needs root (skipped otherwise), `iptables-nft`
//! and `ping` (iputils).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use splitway_delayline::{DelayLine, LinkSpec, Options};
use splitway_netns::{link, unique_prefix, Netns};

/// The tests share two cores with everything else: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Topo {
    a: Netns,
    link: Netns,
    b: Netns,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn topo() -> Topo {
    let p = unique_prefix("dl");
    let a = Netns::create(&format!("{p}a")).expect("netns a");
    let l = Netns::create(&format!("{p}l")).expect("netns link");
    let b = Netns::create(&format!("{p}b")).expect("netns b");
    let (a4, a6) = (
        ["10.77.1.1/24", "fd77:1::1/64"],
        ["10.77.1.2/24", "fd77:1::2/64"],
    );
    let (b4, b6) = (
        ["10.77.2.2/24", "fd77:2::2/64"],
        ["10.77.2.1/24", "fd77:2::1/64"],
    );
    link(&a, "eth0", &a4, &l, "la", &a6).expect("veth a");
    link(&l, "lb", &b4, &b, "eth0", &b6).expect("veth b");
    l.enable_forwarding().expect("forwarding");
    for (ns, via) in [
        (&a, "10.77.1.2"),
        (&b, "10.77.2.2"),
        (&a, "fd77:1::2"),
        (&b, "fd77:2::2"),
    ] {
        ns.ip(["route", "add", "default", "via", via])
            .expect("route");
    }
    Topo { a, link: l, b }
}

/// Average RTT in ms of `ping -c count -i 0.2` from a to b, or None if no
/// reply came back.
fn ping_avg_ms(t: &Topo, count: u32) -> Option<f64> {
    ping_to(t, count, "10.77.2.1")
}

/// Average RTT in ms of `ping` from a to `dst` (v4 or v6).
fn ping_to(t: &Topo, count: u32, dst: &str) -> Option<f64> {
    let count = count.to_string();
    let args = ["-n", "-q", "-c", &count, "-i", "0.2", "-W", "1", dst];
    let out = t.a.command("ping").args(args).output().expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim();
    nums.split('/').nth(1)?.parse().ok()
}

fn iptables_rules(ns: &Netns) -> String {
    let mut s = String::new();
    for prog in ["iptables-nft", "ip6tables-nft"] {
        let out = ns
            .command(prog)
            .args(["-S", "FORWARD"])
            .output()
            .expect("iptables -S");
        s.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    s
}

#[test]
fn delay_rate_and_cleanup() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let spec = LinkSpec::with_bdp_queue(Duration::from_millis(50), 20_000_000);
    let line = DelayLine::start(t.link.name(), "la", "lb", 100, spec).expect("start delay line");
    assert!(iptables_rules(&t.link).contains("NFQUEUE"));

    // RTT: 50 ms configured; loose bound, the precise figure is in the docs.
    let avg = ping_avg_ms(&t, 5).expect("ping through the delay line");
    eprintln!(
        "ping avg {avg:.3} ms (configured 50 ms), stats {:?}",
        line.stats()
    );
    assert!((avg - 50.0).abs() < 3.0, "ping avg {avg} ms");

    // Bulk TCP a -> b for ~4 s; rate after the first second.
    let listener =
        t.b.run_in(|| TcpListener::bind("10.77.2.1:5001"))
            .expect("netns")
            .expect("listen");
    let mut conn =
        t.a.run_in(|| TcpStream::connect("10.77.2.1:5001"))
            .expect("netns")
            .expect("connect");
    let (mut srv, _) = listener.accept().expect("accept");
    let sender = std::thread::spawn(move || {
        let buf = vec![0x5au8; 64 * 1024];
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            if conn.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut counted = 0u64;
    let mut t1 = None;
    loop {
        let n = srv.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        if start.elapsed() >= Duration::from_secs(1) {
            t1.get_or_insert_with(Instant::now);
            counted += n as u64;
        }
    }
    let secs = t1.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    sender.join().expect("sender");
    let mbps = counted as f64 * 8.0 / secs / 1e6;
    let stats = line.stats();
    eprintln!("bulk {mbps:.2} Mbit/s payload over {secs:.2} s (configured 20), stats {stats:?}");
    assert!(mbps < 20.0 * 1.05, "rate {mbps} Mbit/s exceeds 20 Mbit/s");
    assert!(mbps > 10.0, "rate {mbps} Mbit/s: far below 20 Mbit/s");
    assert!(stats.running);
    assert_eq!(stats.a_to_b.enobufs, 0);

    drop(line);
    let rules = iptables_rules(&t.link);
    assert!(!rules.contains("NFQUEUE"), "rules left behind: {rules}");
    // With the rules gone the link forwards undelayed.
    let avg = ping_avg_ms(&t, 2).expect("ping after drop");
    assert!(avg < 10.0, "ping avg {avg} ms after drop");
}

#[test]
fn fails_closed_when_the_emulator_dies() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let spec = LinkSpec::with_bdp_queue(Duration::from_millis(10), 0);
    let mut line = DelayLine::start(t.link.name(), "la", "lb", 200, spec).expect("start");
    let avg = ping_avg_ms(&t, 2).expect("ping while running");
    assert!((avg - 10.0).abs() < 3.0, "ping avg {avg}");
    // IPv6 neighbour discovery through the router takes about a second the
    // first time: warm up before measuring.
    for _ in 0..5 {
        if ping_to(&t, 1, "fd77:2::1").is_some() {
            break;
        }
    }
    let avg6 = ping_to(&t, 2, "fd77:2::1").expect("ping6 while running");
    assert!((avg6 - 10.0).abs() < 3.0, "ping6 avg {avg6}");
    line.kill_emulator_keep_rules();
    assert!(!line.stats().running);
    assert_eq!(ping_avg_ms(&t, 2), None, "packets passed a dead emulator");
    assert_eq!(
        ping_to(&t, 2, "fd77:2::1"),
        None,
        "IPv6 passed a dead emulator"
    );
    drop(line);
    assert!(!iptables_rules(&t.link).contains("NFQUEUE"));
}

#[test]
fn bad_interface_is_an_error_and_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let spec = LinkSpec::with_bdp_queue(Duration::from_millis(10), 1_000_000);
    let err = DelayLine::start(t.link.name(), "la", "nope", 300, spec).expect_err("must fail");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!iptables_rules(&t.link).contains("NFQUEUE"));
    let err = DelayLine::start("no-such-netns-dl", "la", "lb", 300, spec).expect_err("must fail");
    eprintln!("{err}");
}

#[test]
fn kernel_queue_length_and_its_counters() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let spec = LinkSpec::with_bdp_queue(Duration::from_millis(100), 0);
    let opts = Options {
        queue_maxlen: Some(16),
        ..Options::default()
    };
    let line = DelayLine::start_with(t.link.name(), "la", "lb", 500, spec, opts).expect("start");
    let rx =
        t.b.run_in(|| UdpSocket::bind("10.77.2.1:5002"))
            .expect("netns")
            .expect("bind");
    let tx =
        t.a.run_in(|| UdpSocket::bind("10.77.1.1:0"))
            .expect("netns")
            .expect("bind");
    for _ in 0..100 {
        tx.send_to(&[1u8; 100], "10.77.2.1:5002").expect("send");
    }
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut got = 0;
    let mut buf = [0u8; 200];
    while rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    let s = line.stats();
    eprintln!("received {got} of 100, stats {:?}", s.a_to_b);
    assert!(got <= 16, "kernel queue longer than configured: {got}");
    assert!(got >= 1);
    assert_eq!(s.a_to_b.kernel_queue_dropped, 100 - got);
    assert_eq!(s.a_to_b.kernel_user_dropped, 0);
}

/// Send `n` numbered UDP datagrams a → b (10.77.2.1:7000), `gap` apart;
/// returns the sequence numbers b received, in arrival order, with each
/// one-way delay.
fn udp_blast(t: &Topo, n: u32, gap: Duration) -> Vec<(u32, Duration)> {
    let rx =
        t.b.run_in(|| UdpSocket::bind("10.77.2.1:7000"))
            .expect("enter b")
            .expect("bind in b");
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx =
        t.a.run_in(|| UdpSocket::bind("10.77.1.1:0"))
            .expect("enter a")
            .expect("bind in a");
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let due = start + gap * i;
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let sent = start.elapsed().as_nanos() as u64;
            let mut msg = [0u8; 12];
            msg[..4].copy_from_slice(&i.to_le_bytes());
            msg[4..].copy_from_slice(&sent.to_le_bytes());
            tx.send_to(&msg, "10.77.2.1:7000").expect("send");
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(k) = rx.recv(&mut buf) {
        if k == 12 {
            let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
            let sent = u64::from_le_bytes(buf[4..12].try_into().unwrap());
            let now = start.elapsed().as_nanos() as u64;
            got.push((seq, Duration::from_nanos(now.saturating_sub(sent))));
        }
    }
    sender.join().unwrap();
    got
}

#[test]
fn random_loss_and_jitter_order_kept() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = topo();
    let spec = LinkSpec::with_bdp_queue(Duration::from_millis(10), 0).loss_pct(10.0);
    let line = DelayLine::start(t.link.name(), "la", "lb", 130, spec).expect("start delay line");

    // 10 % of 4000: 400 expected, σ = 19: allow 5σ. What b did not get is
    // exactly what the emulator counted as lost (no rate, no tail drop).
    let n = 4000;
    let got = udp_blast(&t, n, Duration::from_micros(100));
    let s = line.stats();
    let missing = n as u64 - got.len() as u64;
    eprintln!(
        "loss 10 %: {missing} of {n} missing, emulator lost {}",
        s.a_to_b.lost
    );
    assert!((missing as i64 - 400).abs() < 95, "missing {missing}");
    assert_eq!(s.a_to_b.lost, missing);
    assert_eq!(s.a_to_b.drops, 0);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "order kept");

    // Switch to 8 ms of jitter, no loss, while running.
    let j = splitway_delayline::Impairments {
        loss_ppb: 0,
        jitter_ns: 8_000_000,
    };
    line.set_impairments(j, j).expect("set impairments");
    let got = udp_blast(&t, 400, Duration::from_millis(2));
    assert_eq!(got.len(), 400, "no loss any more");
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "jitter keeps order"
    );
    let mut d: Vec<f64> = got.iter().map(|g| g.1.as_secs_f64() * 1e3).collect();
    d.sort_by(f64::total_cmp);
    let (lo, med, hi) = (d[4], d[200], d[360]);
    eprintln!("jitter 8 ms on 5 ms one way: p1 {lo:.2} median {med:.2} p90 {hi:.2} ms");
    assert!(lo >= 5.0, "never before the delay: {lo}");
    assert!(hi - lo > 4.0, "spread {lo}..{hi} shows the jitter");
    // The emulator never holds a packet past delay + jitter; the slack is
    // for the probe threads' own wake-up on a busy machine.
    assert!(
        hi < 5.0 + 8.0 + 5.0,
        "p90 {hi} within delay + jitter (+5 ms slack)"
    );
    drop(line);
}
