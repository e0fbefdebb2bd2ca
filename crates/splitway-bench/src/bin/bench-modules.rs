//! `bench-modules`: the stream-module path on loopback (issue 13 §1, §5),
//! rows side by side in one run. Two splitway relays (ingress with an
//! explicit listener, egress connecting to a sink): the ingress (the
//! encoder) on one CPU, the egress (the decoder), load generator and sink
//! on the other; one flow of `--mib` MiB
//! uploads through them per sample. Rows: the zero-copy raw leg (no
//! modules), the `null` module (framed leg; with `[modules] splice` its
//! payload crosses as spliced plain records, the `-copy` rows turn that off
//! and move every byte through user space), and
//! `compress` adaptive, fixed level 1 and fixed high, on random bytes and on
//! a real corpus (a tar of Debian's Python standard library); `dedup` with
//! `compress` on random bytes. Columns: Gbit/s (bytes over wall time of
//! the flow) and CPU s/GB (both relays' user + system time per GB through
//! them), medians over rounds, rounds interleaved row by row; the ratios to
//! the raw and the null row of the same content; for module rows the wire
//! bytes per plain byte on the relay leg (the ingress's module counters,
//! read from its `[metrics]` listener).
//!
//! Separate from `splitway-bench` (the relays compared with other relays)
//! so the two evolve apart. Run: `scripts/bench-modules.sh` (release build).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "bench-modules",
    about = "Stream modules on loopback relay legs"
)]
struct Args {
    /// The splitway binary.
    #[arg(long)]
    splitway: PathBuf,
    /// MiB per flow.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Rounds; every column is the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rows to run (keys, comma separated; default all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The corpus (default: a tar of /usr/lib/python3.* made at start).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// CPU of the ingress relay (the encoder of the uploads measured).
    #[arg(long, default_value_t = 0)]
    relay_cpu: usize,
    /// CPU of the egress relay (the decoder), default: the load's.
    #[arg(long)]
    egress_cpu: Option<usize>,
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// Write the JSON results here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown table here.
    #[arg(long)]
    md: Option<PathBuf>,
}

/// A row: key, modules, (min, max) zstd level, content.
struct Row {
    key: &'static str,
    what: &'static str,
    modules: &'static str,
    levels: (i32, i32),
    corpus: bool,
    /// `[modules] splice`: bytes the chain passes unchanged cross as
    /// spliced plain records (off: every byte through user space).
    splice: bool,
    /// `[modules] notsent_lowat_bytes`, when not the default (128 KiB).
    lowat: Option<u32>,
}

const ROWS: &[Row] = &[
    Row {
        key: "raw-random",
        what: "raw leg, zero copy (no modules), random",
        modules: "",
        levels: (0, 9),
        corpus: false,
        splice: true,
        lowat: None,
    },
    Row {
        key: "null-random",
        what: "null module (framed leg, user space), random",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: false,
        splice: true,
        lowat: None,
    },
    Row {
        key: "adaptive-random",
        what: "compress adaptive (0..9), random",
        modules: r#"["compress"]"#,
        levels: (0, 9),
        corpus: false,
        splice: true,
        lowat: None,
    },
    Row {
        key: "dedup-compress-random",
        what: "dedup + compress adaptive, random",
        modules: r#"["dedup", "compress"]"#,
        levels: (0, 9),
        corpus: false,
        splice: true,
        lowat: None,
    },
    Row {
        key: "raw-corpus",
        what: "raw leg, zero copy (no modules), corpus",
        modules: "",
        levels: (0, 9),
        corpus: true,
        splice: true,
        lowat: None,
    },
    Row {
        key: "null-corpus",
        what: "null module, corpus",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: true,
        splice: true,
        lowat: None,
    },
    Row {
        key: "adaptive-corpus",
        what: "compress adaptive (0..9), corpus",
        modules: r#"["compress"]"#,
        levels: (0, 9),
        corpus: true,
        splice: true,
        lowat: None,
    },
    Row {
        key: "fixed1-corpus",
        what: "compress fixed level 1, corpus",
        modules: r#"["compress"]"#,
        levels: (1, 1),
        corpus: true,
        splice: true,
        lowat: None,
    },
    Row {
        key: "fixed9-corpus",
        what: "compress fixed level 9, corpus",
        modules: r#"["compress"]"#,
        levels: (9, 9),
        corpus: true,
        splice: true,
        lowat: None,
    },
    Row {
        key: "null-copy-random",
        what: "null module, splice off (every byte in user space), random",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: false,
        splice: false,
        lowat: None,
    },
    Row {
        key: "null-copy-corpus",
        what: "null module, splice off, corpus",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: true,
        splice: false,
        lowat: None,
    },
    Row {
        key: "adaptive-copy-corpus",
        what: "compress adaptive (0..9), splice off, corpus",
        modules: r#"["compress"]"#,
        levels: (0, 9),
        corpus: true,
        splice: false,
        lowat: None,
    },
    Row {
        key: "null-lowat64m-corpus",
        what: "null module, spliced, notsent_lowat 64 MiB (revocation off), corpus",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: true,
        splice: true,
        lowat: Some(64 << 20),
    },
    Row {
        key: "null-copy-lowat64m-corpus",
        what: "null module, splice off, notsent_lowat 64 MiB, corpus",
        modules: r#"["null"]"#,
        levels: (0, 9),
        corpus: true,
        splice: false,
        lowat: Some(64 << 20),
    },
];

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn relay_configs(
    row: &Row,
    listen: SocketAddr,
    leg: SocketAddr,
    sink: SocketAddr,
    metrics: SocketAddr,
) -> (String, String) {
    let modules = if row.modules.is_empty() {
        String::new()
    } else {
        format!("modules = {}\n", row.modules)
    };
    let common = format!(
        "[auth]\nkeys = [{{ id = 1, secret = \"{SECRET}\" }}]\n\n\
         [features]\nearly_syn = false\nconn_pool = false\nturbo_start = false\nfast_open = false\nworker_pools = true\n\n\
         [modules]\ncompress_min_level = {}\ncompress_max_level = {}\nsplice = {}\n{}\n\
         [limits]\nmax_connections = 1000\n",
        row.levels.0,
        row.levels.1,
        row.splice,
        row.lowat
            .map_or(String::new(), |b| format!("notsent_lowat_bytes = {b}\n"))
    );
    let ingress = format!(
        "[node]\nname = \"ingress\"\n\n[[explicit]]\nlisten = \"{listen}\"\ntarget = \"{sink}\"\n\n\
         [[peer]]\nname = \"egress\"\naddr = \"{leg}\"\n\n\
         [[route]]\nprefix = \"{ip}/32\"\nvia = \"egress\"\n{modules}\n\
         [metrics]\nlisten = \"{metrics}\"\n\n{common}",
        ip = sink.ip()
    );
    let egress = format!(
        "[node]\nname = \"egress\"\n\n[relay]\nlisten = \"{leg}\"\n\
         allow = [{{ prefix = \"{ip}/32\", ports = {port} }}]\n\n\
         [[route]]\nprefix = \"{ip}/32\"\nvia = \"direct\"\n\n{common}",
        ip = sink.ip(),
        port = sink.port()
    );
    (ingress, egress)
}

struct Relays {
    children: Vec<Child>,
}

impl Relays {
    fn start(
        a: &Args,
        dir: &Path,
        row: &Row,
        listen: SocketAddr,
        leg: SocketAddr,
        sink: SocketAddr,
        metrics: SocketAddr,
    ) -> Result<Relays> {
        let (ing, egr) = relay_configs(row, listen, leg, sink, metrics);
        let mut r = Relays {
            children: Vec::new(),
        };
        for (name, text) in [("egress", egr), ("ingress", ing)] {
            // Ready by file: a probe connection to the ingress would be a
            // flow, and reach the sink.
            let ready = dir.join(format!("{name}.ready"));
            let _ = std::fs::remove_file(&ready);
            let conf = dir.join(format!("{name}.toml"));
            std::fs::write(&conf, text)?;
            let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
            let cpu = if name == "egress" {
                a.egress_cpu.unwrap_or(a.load_cpu)
            } else {
                a.relay_cpu
            };
            let child = Command::new("taskset")
                .args(["-c", &cpu.to_string()])
                .arg(&a.splitway)
                .arg("relay")
                .arg("--config")
                .arg(&conf)
                .arg("--ready-file")
                .arg(&ready)
                .env("SPLITWAY_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting splitway under taskset")?;
            r.children.push(child);
            let t0 = Instant::now();
            while !ready.exists() {
                if t0.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "the {name} relay did not get ready; see {}",
                        dir.join(format!("{name}.log")).display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(r)
    }

    /// User + system seconds of both relays so far.
    fn cpu_secs(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        self.children
            .iter()
            .filter_map(|c| std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok())
            .filter_map(|s| {
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                // rest[0] is field 3; utime = 14, stime = 15
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .sum::<u64>() as f64
            / tck
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: plain signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The ingress's module byte counters: (plain bytes in, wire bytes out),
/// summed over chains; zeros when no module flow ran.
fn module_bytes(metrics: SocketAddr) -> Result<(u64, u64)> {
    let mut c = TcpStream::connect(metrics).context("connecting to the metrics listener")?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let (mut plain, mut wire) = (0u64, 0u64);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("splitway_module_bytes_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        if labels.contains("what=\"plain_in\"") {
            plain += v;
        } else if labels.contains("what=\"wire_out\"") {
            wire += v;
        }
    }
    Ok((plain, wire))
}

/// Wire bytes per plain byte of the flow that moved `total` plain bytes
/// since `before` (its counters land when the flow ends: waited for, ≤ 3 s);
/// `None` for a row without modules.
fn wire_ratio(metrics: SocketAddr, before: (u64, u64), total: usize) -> Result<Option<f64>> {
    let t0 = Instant::now();
    loop {
        let now = module_bytes(metrics)?;
        let plain = now.0 - before.0.min(now.0);
        if plain >= total as u64 {
            return Ok(Some((now.1 - before.1.min(now.1)) as f64 / plain as f64));
        }
        if t0.elapsed() > Duration::from_secs(3) {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One flow of `total` bytes (cycling `data`) through `listen` to the sink;
/// returns the wall time until the sink has everything and the client its EOF.
fn flow(listen: SocketAddr, sink: &TcpListener, data: &[u8], total: usize) -> Result<Duration> {
    let t0 = Instant::now();
    let mut c = TcpStream::connect(listen).context("connecting to the ingress")?;
    let (mut s, _) = sink.accept().context("sink accept")?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let mut buf = vec![0u8; 256 << 10];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => break,
                k => n += k,
            }
        }
        s.shutdown(Shutdown::Write)?;
        Ok(n)
    });
    let mut left = total;
    let mut off = 0;
    while left > 0 {
        let k = left.min(data.len() - off).min(256 << 10);
        c.write_all(&data[off..off + k])?;
        left -= k;
        off = (off + k) % data.len();
    }
    c.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    let dt = t0.elapsed();
    if got != total {
        bail!("the sink got {got} bytes, {total} were sent");
    }
    Ok(dt)
}

fn corpus(a: &Args, dir: &Path) -> Result<Vec<u8>> {
    if let Some(p) = &a.corpus {
        return std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    }
    let mut libs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3."))
        })
        .collect();
    libs.sort();
    let lib = libs.pop().context("no /usr/lib/python3.*: pass --corpus")?;
    let out = dir.join("corpus.tar");
    let st = Command::new("tar")
        .args(["-cf"])
        .arg(&out)
        .args(["--sort=name", "-C", "/usr/lib"])
        .arg(lib.file_name().unwrap_or_default())
        .status()
        .context("running tar")?;
    if !st.success() {
        bail!("tar failed ({st})");
    }
    Ok(std::fs::read(&out)?)
}

fn random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[derive(Serialize)]
struct Out {
    key: String,
    what: String,
    gbit_s: Vec<f64>,
    cpu_s_per_gb: Vec<f64>,
    /// Wire bytes per plain byte on the relay leg (module rows).
    wire_ratio: Vec<f64>,
    gbit_s_median: f64,
    cpu_s_per_gb_median: f64,
    wire_ratio_median: Option<f64>,
    errors: Vec<String>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|r| a.only.is_empty() || a.only.iter().any(|k| k == r.key))
        .collect();
    if rows.is_empty() {
        bail!(
            "--only names no row; rows: {}",
            ROWS.iter().map(|r| r.key).collect::<Vec<_>>().join(", ")
        );
    }
    let dir = std::env::temp_dir().join(format!("bench-modules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let corpus = corpus(&a, &dir)?;
    let random = random(64 << 20);
    pin(a.load_cpu);
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    let total = a.mib << 20;
    let mut outs: Vec<Out> = rows
        .iter()
        .map(|r| Out {
            key: r.key.into(),
            what: r.what.into(),
            gbit_s: vec![],
            cpu_s_per_gb: vec![],
            wire_ratio: vec![],
            gbit_s_median: f64::NAN,
            cpu_s_per_gb_median: f64::NAN,
            wire_ratio_median: None,
            errors: vec![],
        })
        .collect();
    for round in 0..a.rounds {
        for (i, row) in rows.iter().enumerate() {
            let listen: SocketAddr = format!("127.0.0.1:{}", 27100 + i).parse()?;
            let leg: SocketAddr = format!("127.0.0.1:{}", 27200 + i).parse()?;
            let metrics: SocketAddr = format!("127.0.0.1:{}", 27300 + i).parse()?;
            let rdir = dir.join(row.key);
            std::fs::create_dir_all(&rdir)?;
            let res =
                Relays::start(&a, &rdir, row, listen, leg, sink_addr, metrics).and_then(|relays| {
                    let data = if row.corpus { &corpus } else { &random };
                    // warm up: one short flow (the leg, the chain's buffers)
                    flow(listen, &sink, data, 4 << 20)?;
                    let m0 = if row.modules.is_empty() {
                        None
                    } else {
                        // the warm-up's counters first
                        wire_ratio(metrics, (0, 0), 4 << 20)?;
                        Some(module_bytes(metrics)?)
                    };
                    let c0 = relays.cpu_secs();
                    let dt = flow(listen, &sink, data, total)?;
                    let cpu = relays.cpu_secs() - c0;
                    let ratio = match m0 {
                        Some(m0) => wire_ratio(metrics, m0, total)?,
                        None => None,
                    };
                    Ok((dt, cpu, ratio))
                });
            match res {
                Ok((dt, cpu, ratio)) => {
                    let gb = total as f64 / 1e9;
                    let g = gb * 8.0 / dt.as_secs_f64();
                    let wire = ratio.map_or("-".to_string(), |r| format!("{r:.3}"));
                    eprintln!(
                        "round {round} {:<24} {g:6.2} Gbit/s {:6.2} CPU s/GB  wire/plain {wire}",
                        row.key,
                        cpu / gb
                    );
                    outs[i].gbit_s.push(g);
                    outs[i].cpu_s_per_gb.push(cpu / gb);
                    outs[i].wire_ratio.extend(ratio);
                }
                Err(e) => {
                    eprintln!("round {round} {}: {e:#}", row.key);
                    outs[i].errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let mut md = String::from(
        "| row | Gbit/s | CPU s/GB (both relays) | vs raw, same content: Gbit/s | CPU | vs null: Gbit/s | wire / plain |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in &mut outs {
        o.gbit_s_median = median(&o.gbit_s);
        o.cpu_s_per_gb_median = median(&o.cpu_s_per_gb);
        o.wire_ratio_median = (!o.wire_ratio.is_empty()).then(|| median(&o.wire_ratio));
    }
    for (o, r) in outs.iter().zip(&rows) {
        let raw = outs
            .iter()
            .zip(&rows)
            .find(|(_, x)| x.modules.is_empty() && x.corpus == r.corpus);
        let (vg, vc) = raw
            .map(|(x, _)| {
                (
                    o.gbit_s_median / x.gbit_s_median,
                    o.cpu_s_per_gb_median / x.cpu_s_per_gb_median,
                )
            })
            .unwrap_or((f64::NAN, f64::NAN));
        let vn = outs
            .iter()
            .zip(&rows)
            .find(|(_, x)| x.modules == r#"["null"]"# && x.corpus == r.corpus && x.splice)
            .map_or(f64::NAN, |(x, _)| o.gbit_s_median / x.gbit_s_median);
        let wire = o
            .wire_ratio_median
            .map_or("-".to_string(), |r| format!("{r:.3}"));
        md += &format!(
            "| {} | {:.2} | {:.2} | {:.2}× | {:.2}× | {vn:.2}× | {wire} |\n",
            o.what, o.gbit_s_median, o.cpu_s_per_gb_median, vg, vc
        );
    }
    print!("\n{md}");
    if let Some(p) = &a.md {
        std::fs::write(p, &md)?;
    }
    if let Some(p) = &a.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&serde_json::json!({
                "mib_per_flow": a.mib, "rounds": a.rounds, "corpus_bytes": corpus.len(),
                "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
                "rows": outs,
            }))?,
        )?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
