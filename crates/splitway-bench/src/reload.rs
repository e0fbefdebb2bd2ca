//! The reload benchmark (issue 12 §2): does a reload stall forwarding?
//!
//! One splitway relay with one runtime worker, pinned to the relay core,
//! forwards a persistent 100-byte ping-pong from the load core to the sink.
//! Its config has what a reload touches in the kernel: four peers with
//! turbo-start routes (on a veth pair), a transparent listener with
//! its nftables table and early-SYN queue rules. Phases alternate within one
//! run: `quiet` (no reloads) and `reload` (SIGHUP at `rate` per second,
//! the config unchanged). Each binary given is measured the same way, so an
//! old and a new build compare side by side on the same (possibly loaded)
//! machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::load::MSG;

pub struct ReloadBench {
    pub binaries: Vec<PathBuf>,
    pub rounds: usize,
    /// Seconds per phase.
    pub secs: f64,
    /// Reloads per second in the `reload` phase.
    pub rate: u32,
    pub relay_cpu: usize,
    pub sink: SocketAddr,
    pub dir: PathBuf,
}

/// One binary's result.
pub struct Row {
    pub binary: String,
    pub quiet: Histogram<u64>,
    pub reload: Histogram<u64>,
    pub reloads_sent: u64,
    pub reload_secs: f64,
}

const LISTEN: &str = "127.0.0.1:10101";

fn config(sink: SocketAddr) -> String {
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let mut c = format!(
        "[node]\nname = \"reloadbench\"\n\
         [auth]\nkeys = [{{ id = 1, secret = \"{key}\" }}]\n\
         [[explicit]]\nlisten = \"{LISTEN}\"\ntarget = \"{sink}\"\n\
         [[transparent]]\nport = 15001\nprefixes = [\"10.78.0.0/24\"]\n\
         [[route]]\nprefix = \"{ip}/32\"\nvia = \"direct\"\n\
         [[route]]\nprefix = \"10.78.0.0/24\"\nvia = \"p2\"\n",
        ip = sink.ip()
    );
    for i in 2..6 {
        c.push_str(&format!(
            "[[peer]]\nname = \"p{i}\"\naddr = \"10.77.0.{i}:5565\"\npool_low = 0\npool_high = 0\n"
        ));
    }
    c.push_str(
        "[features]\nearly_syn = true\nturbo_start = true\nconn_pool = false\nfast_open = false\n",
    );
    c
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(args[0]).args(&args[1..]).status()?;
    anyhow::ensure!(st.success(), "{args:?} failed");
    Ok(())
}

/// A veth pair with a /24 for the peers' routes (in the bench's own
/// network namespace).
fn prepare() -> anyhow::Result<()> {
    let _ = Command::new("ip")
        .args(["link", "del", "swbench0"])
        .stderr(Stdio::null())
        .status();
    sh(&[
        "ip", "link", "add", "swbench0", "type", "veth", "peer", "name", "swbench1",
    ])?;
    sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "swbench0"])?;
    sh(&["ip", "link", "set", "swbench1", "up"])?;
    sh(&["ip", "link", "set", "swbench0", "up"])
}

fn start(bin: &Path, b: &ReloadBench, tag: &str) -> anyhow::Result<Child> {
    let cfg = b.dir.join(format!("reload-{tag}.toml"));
    std::fs::write(&cfg, config(b.sink))?;
    let ready = b.dir.join(format!("reload-{tag}.ready"));
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(b.dir.join(format!("reload-{tag}.log")))?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(b.relay_cpu.to_string())
        .arg(bin)
        .args(["relay", "--workers", "1", "--config"])
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .env("SPLITWAY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting splitway")?;
    let t0 = Instant::now();
    while !ready.exists() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(15),
            "splitway did not get ready (see {})",
            b.dir.join(format!("reload-{tag}.log")).display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn exchange(s: &mut TcpStream) -> std::io::Result<()> {
    let req = [b'E'; MSG];
    let mut rep = [0u8; MSG];
    s.write_all(&req)?;
    s.read_exact(&mut rep)
}

fn phase(s: &mut TcpStream, secs: f64, h: &mut Histogram<u64>) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Instant::now();
        exchange(s)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    Ok(())
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")
}

fn one(bin: &Path, b: &ReloadBench, tag: &str) -> anyhow::Result<Row> {
    let mut child = start(bin, b, tag)?;
    let pid = child.id() as i32;
    let result = (|| -> anyhow::Result<Row> {
        let mut s = TcpStream::connect(LISTEN)?;
        s.set_nodelay(true)?;
        for _ in 0..500 {
            exchange(&mut s)?;
        }
        let (mut quiet, mut reload) = (hist(), hist());
        let sent = Arc::new(AtomicU64::new(0));
        let mut reload_secs = 0.0;
        for _ in 0..b.rounds {
            phase(&mut s, b.secs, &mut quiet)?;
            let on = Arc::new(AtomicBool::new(true));
            let (on2, sent2, rate) = (on.clone(), sent.clone(), b.rate);
            let hup = std::thread::spawn(move || {
                let every = Duration::from_secs_f64(1.0 / f64::from(rate));
                let mut next = Instant::now();
                while on2.load(Ordering::Relaxed) {
                    // SAFETY: kill(2) with a pid we started and SIGHUP.
                    unsafe { libc::kill(pid, libc::SIGHUP) };
                    sent2.fetch_add(1, Ordering::Relaxed);
                    next += every;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
            });
            let t = Instant::now();
            let r = phase(&mut s, b.secs, &mut reload);
            on.store(false, Ordering::Relaxed);
            let _ = hup.join();
            reload_secs += t.elapsed().as_secs_f64();
            r?;
        }
        Ok(Row {
            binary: bin.display().to_string(),
            quiet,
            reload,
            reloads_sent: sent.load(Ordering::Relaxed),
            reload_secs,
        })
    })();
    // SAFETY: as above, SIGTERM for a clean stop (rules removed).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = child.wait();
    result
}

/// Run every binary; returns a markdown table.
pub fn run(b: &ReloadBench) -> anyhow::Result<String> {
    prepare()?;
    let mut rows = Vec::new();
    for (i, bin) in b.binaries.iter().enumerate() {
        let bin = std::fs::canonicalize(bin).with_context(|| format!("{}", bin.display()))?;
        eprintln!("reload bench: {}", bin.display());
        rows.push(one(&bin, b, &i.to_string())?);
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut md = String::from(
        "| binary | phase | exchanges | p50 µs | p99 µs | p99.9 µs | max µs |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        for (name, h) in [("quiet", &r.quiet), ("reload", &r.reload)] {
            let phase = if name == "reload" {
                format!(
                    "{} reloads/s (SIGHUP)",
                    (r.reloads_sent as f64 / r.reload_secs).round()
                )
            } else {
                "no reloads".into()
            };
            md.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                r.binary,
                phase,
                h.len(),
                us(h, 0.5),
                us(h, 0.99),
                us(h, 0.999),
                h.max() as f64 / 1000.0
            ));
        }
        md.push_str(&format!(
            "| {} | p99 reload − quiet | | | {:+.0} | | |\n",
            r.binary,
            us(&r.reload, 0.99) - us(&r.quiet, 0.99)
        ));
    }
    let _ = Command::new("ip")
        .args(["link", "del", "swbench0"])
        .status();
    Ok(md)
}
