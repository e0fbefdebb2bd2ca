//! Measure a delay line's accuracy on this machine: builds hostA — link —
//! hostB (or a chain of links) from throw-away namespaces, starts a [`DelayLine`], and reports
//! ping RTT error, bulk TCP throughput and the emulator thread's CPU.
//! Needs root.
//!
//! ```text
//! measure [--rtt-ms 215[,RTT2,...]] [--rate-mbit 100] [--pings 100]
//!         [--ping-interval 0.05] [--bulk-secs 20] [--skip-secs 5] [--cc bbr]
//!         [--queue-bytes N] [--tcp-buf N] [--baseline]
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use splitway_delayline::{DelayLine, LinkSpec};
use splitway_netns::{link, unique_prefix, Netns};

struct Args {
    /// One RTT per link; several links make a chain a — l1 — l2 … — b.
    rtt_ms: Vec<f64>,
    rate_mbit: f64,
    pings: u32,
    ping_interval: String,
    bulk_secs: u64,
    skip_secs: u64,
    cc: String,
    queue_bytes: Option<usize>,
    baseline: bool,
    /// Max TCP buffer (tcp_rmem/tcp_wmem third value) in the two hosts;
    /// None keeps the namespace defaults.
    tcp_buf: Option<u64>,
}

/// Run the calling measurement thread at real-time priority (below the
/// emulator's), so the probes measure the link and not the scheduler.
fn rt() {
    let param = libc::sched_param { sched_priority: 40 };
    // SAFETY: sched_setscheduler on the calling thread with a valid param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        rtt_ms: vec![215.0],
        rate_mbit: 100.0,
        pings: 100,
        ping_interval: "0.05".into(),
        bulk_secs: 20,
        skip_secs: 5,
        cc: "bbr".into(),
        queue_bytes: None,
        baseline: false,
        tcp_buf: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--baseline" {
            a.baseline = true; // no delay line: the bare namespace path
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value for {k}: {v}: {e}");
        match k.as_str() {
            "--rtt-ms" => {
                a.rtt_ms = v
                    .split(',')
                    .map(|x| x.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&e))?
            }
            "--rate-mbit" => a.rate_mbit = v.parse().map_err(|e| bad(&e))?,
            "--pings" => a.pings = v.parse().map_err(|e| bad(&e))?,
            "--ping-interval" => a.ping_interval = v,
            "--bulk-secs" => a.bulk_secs = v.parse().map_err(|e| bad(&e))?,
            "--skip-secs" => a.skip_secs = v.parse().map_err(|e| bad(&e))?,
            "--cc" => a.cc = v,
            "--tcp-buf" => a.tcp_buf = Some(v.parse().map_err(|e| bad(&e))?),
            "--queue-bytes" => a.queue_bytes = Some(v.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

fn set_cc(s: &TcpStream, cc: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a buffer valid for its length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            cc.as_ptr() as *const libc::c_void,
            cc.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let p = unique_prefix("dm");
    let a = Netns::create(&format!("{p}a"))?;
    // Segment s (0..=n) joins node s and node s+1 in 10.77.(s+1).0/24: the
    // left node is .1, the right one .2. Nodes: a, link 1..n, b.
    let n = args.rtt_ms.len();
    let links: Vec<Netns> = (1..=n)
        .map(|k| Netns::create(&format!("{p}l{k}")))
        .collect::<Result<_, _>>()?;
    let b = Netns::create(&format!("{p}b"))?;
    let node = |i: usize| -> &Netns {
        match i {
            0 => &a,
            i if i <= n => &links[i - 1],
            _ => &b,
        }
    };
    let ifname = |i: usize, left: bool| -> String {
        match (i, left) {
            (0, _) => "eth0".into(),
            (i, _) if i > n => "eth0".into(),
            (i, true) => format!("l{i}a"),
            (i, false) => format!("l{i}b"),
        }
    };
    for seg in 0..=n {
        let net = seg + 1;
        link(
            node(seg),
            &ifname(seg, false),
            &[&format!("10.77.{net}.1/24")],
            node(seg + 1),
            &ifname(seg + 1, true),
            &[&format!("10.77.{net}.2/24")],
        )?;
    }
    a.ip(["route", "add", "default", "via", "10.77.1.2"])?;
    b.ip([
        "route",
        "add",
        "default",
        "via",
        &format!("10.77.{}.1", n + 1),
    ])?;
    for k in 1..=n {
        let ns = node(k);
        ns.enable_forwarding()?;
        for seg in 0..=n {
            let net = seg + 1;
            if seg + 1 < k {
                ns.ip([
                    "route",
                    "add",
                    &format!("10.77.{net}.0/24"),
                    "via",
                    &format!("10.77.{k}.1"),
                ])?;
            } else if seg > k {
                ns.ip([
                    "route",
                    "add",
                    &format!("10.77.{net}.0/24"),
                    "via",
                    &format!("10.77.{}.2", k + 1),
                ])?;
            }
        }
    }
    let dst = format!("10.77.{}.2", n + 1);
    if let Some(buf) = args.tcp_buf {
        for h in [&a, &b] {
            h.sysctl("net.ipv4.tcp_rmem", &format!("4096 131072 {buf}"))?;
            h.sysctl("net.ipv4.tcp_wmem", &format!("4096 16384 {buf}"))?;
        }
    }
    let total_rtt: f64 = args.rtt_ms.iter().sum();

    let rate = (args.rate_mbit * 1e6).round() as u64;
    let mut lines = Vec::new();
    for (k, &r) in args.rtt_ms.iter().enumerate() {
        let rtt = Duration::from_nanos((r * 1e6).round() as u64);
        let mut spec = LinkSpec::with_bdp_queue(rtt, rate);
        if let Some(q) = args.queue_bytes {
            spec.queue_limit_bytes = q;
        }
        if !args.baseline {
            let i = k + 1;
            let l = DelayLine::start(
                node(i).name(),
                &ifname(i, true),
                &ifname(i, false),
                400,
                spec,
            )?;
            println!(
                "link {i}: rtt {r:.3} ms, rate {} Mbit/s, queue {} B, realtime {}",
                args.rate_mbit,
                spec.queue_limit_bytes,
                l.stats().realtime
            );
            lines.push(l);
        }
    }
    let cpu =
        |lines: &[DelayLine]| -> Option<Duration> { lines.iter().map(|l| l.cpu_time()).sum() };

    // RTT
    let out = a
        .command("ping")
        .args([
            "-n",
            "-c",
            &args.pings.to_string(),
            "-i",
            &args.ping_interval,
        ])
        .args(["-W", "2", &dst])
        .output()?;
    let mut rtts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    if rtts.is_empty() {
        return Err("no ping replies".into());
    }
    let med = rtts[rtts.len() / 2];
    let errs: Vec<f64> = rtts.iter().map(|r| r - total_rtt).collect();
    let max_abs = errs.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    println!(
        "ping: n={} min {:.3} median {:.3} max {:.3} ms; median error {:+.3} ms, max |error| {:.3} ms",
        rtts.len(),
        rtts[0],
        med,
        rtts[rtts.len() - 1],
        med - total_rtt,
        max_abs
    );

    // RTT with microsecond resolution: UDP probes echoed by hostB.
    let echo = b
        .run_in({
            let dst = dst.clone();
            move || UdpSocket::bind(format!("{dst}:7007"))
        })?
        .map_err(|e| format!("udp bind: {e}"))?;
    let echo_thread = std::thread::spawn(move || {
        rt();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            if n == 1 {
                break; // stop marker
            }
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let probe = a
        .run_in(|| UdpSocket::bind("10.77.1.1:0"))?
        .map_err(|e| format!("udp bind: {e}"))?;
    probe.connect(format!("{dst}:7007"))?;
    let base = Instant::now();
    let n_probes = args.pings * 2;
    let tx = probe.try_clone()?;
    let interval = Duration::from_millis(10);
    let sender = std::thread::spawn(move || {
        rt();
        for i in 0..n_probes {
            let now = base.elapsed().as_nanos() as u64;
            let mut m = [0u8; 32];
            m[..8].copy_from_slice(&now.to_le_bytes());
            let _ = tx.send(&m);
            std::thread::sleep(
                (base + interval * (i + 1)).saturating_duration_since(Instant::now()),
            );
        }
    });
    rt();
    probe.set_read_timeout(Some(Duration::from_secs_f64(total_rtt / 1e3 + 1.0)))?;
    let mut udp: Vec<f64> = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok(n) = probe.recv(&mut buf) {
        if n >= 8 {
            let sent = u64::from_le_bytes(buf[..8].try_into()?);
            udp.push((base.elapsed().as_nanos() as u64 - sent) as f64 / 1e6);
        }
        if udp.len() as u32 == n_probes {
            break;
        }
    }
    sender.join().map_err(|_| "probe sender panicked")?;
    let _ = probe.send(&[0]);
    let _ = echo_thread.join();
    udp.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (udp.first(), udp.last()) {
        let med = udp[udp.len() / 2];
        let p99 = udp[(udp.len() * 99 / 100).min(udp.len() - 1)];
        println!(
            "udp rtt: n={}/{} min {:.3} median {:.3} p99 {:.3} max {:.3} ms; median error {:+.3} ms, max |error| {:.3} ms",
            udp.len(),
            n_probes,
            first,
            med,
            p99,
            last,
            med - total_rtt,
            (first - total_rtt).abs().max((last - total_rtt).abs())
        );
    }

    // Bulk TCP a -> b
    if args.bulk_secs > 0 {
        let listener = b
            .run_in({
                let dst = dst.clone();
                move || TcpListener::bind(format!("{dst}:5001"))
            })?
            .map_err(|e| format!("listen: {e}"))?;
        let mut conn = a
            .run_in({
                let dst = dst.clone();
                move || TcpStream::connect(format!("{dst}:5001"))
            })?
            .map_err(|e| format!("connect: {e}"))?;
        let (mut srv, _) = listener.accept()?;
        // Per socket (allowed to root even when the algorithm is not in
        // net.ipv4.tcp_allowed_congestion_control), so no sysctl changes.
        set_cc(&conn, &args.cc)?;
        set_cc(&srv, &args.cc)?;
        let secs = args.bulk_secs;
        let sender = std::thread::spawn(move || {
            let buf = vec![0x5au8; 128 * 1024];
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                if conn.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        let mut buf = vec![0u8; 256 * 1024];
        let start = Instant::now();
        let skip = Duration::from_secs(args.skip_secs);
        let (mut total, mut counted) = (0u64, 0u64);
        let mut t1: Option<(Instant, Option<Duration>)> = None;
        loop {
            let n = srv.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if start.elapsed() >= skip {
                t1.get_or_insert_with(|| (Instant::now(), cpu(&lines)));
                counted += n as u64;
            }
        }
        sender.join().map_err(|_| "sender panicked")?;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu_end = cpu(&lines);
        if let Some((t, cpu0)) = t1 {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "bulk ({}): {:.2} Mbit/s payload after {} s warm-up ({:.2} Mbit/s over all {:.1} s); \
                 emulator threads' CPU {:.1}% of a core",
                args.cc,
                counted as f64 * 8.0 / secs / 1e6,
                args.skip_secs,
                total as f64 * 8.0 / elapsed / 1e6,
                elapsed,
                match (cpu0, cpu_end) {
                    (Some(c0), Some(c1)) => (c1 - c0).as_secs_f64() / secs * 100.0,
                    _ => f64::NAN,
                }
            );
        }
    }
    for (k, line) in lines.iter().enumerate() {
        let s = line.stats();
        for (dir, d) in [("a->b", &s.a_to_b), ("b->a", &s.b_to_a)] {
            let name = format!("link {} {dir}", k + 1);
            println!(
            "{name}: packets {} bytes {} drops {} enobufs {} netlink_errors {} unstamped {} kernel q/user dropped {}/{} lateness mean {:?} max {:?} hist {:?}",
            d.packets,
            d.bytes,
            d.drops,
            d.enobufs,
            d.netlink_errors,
            d.unstamped,
            d.kernel_queue_dropped,
            d.kernel_user_dropped,
            d.mean_lateness,
            d.max_lateness,
            d.lateness_histogram
                .iter()
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
        );
        }
    }
    Ok(())
}
