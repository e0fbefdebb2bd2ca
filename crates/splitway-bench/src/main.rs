//! `splitway-bench`: splitway and the relays users would otherwise pick
//! (socat, HAProxy, nginx stream, ssh -L), side by side, one relay process
//! pinned to one core, load generator and sink pinned to the other.
//! See `docs/performance.md` for the method and the latest results.

mod load;
mod perf;
mod relays;
mod reload;
mod sockmap;
mod sys;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use relays::{Kind, Running, Setup};

/// `target-bench/<arch>-unknown-linux-gnu/release/splitway`: cargo's output
/// for the host tuple (`[build] target` in `.cargo/config.toml`).
fn default_splitway() -> PathBuf {
    PathBuf::from(format!(
        "target-bench/{}-unknown-linux-gnu/release/splitway",
        std::env::consts::ARCH
    ))
}

#[derive(Parser, Debug, Clone)]
#[command(name = "splitway-bench", about = "Side-by-side relay benchmark")]
struct Args {
    /// Rounds; every column is the median over rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of measurement for the long flow and the connection rate.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Idle connections held for the memory column (a relay needs two
    /// sockets each, and the hard fd limit here is 20,000 per process).
    #[arg(long, default_value_t = 9_000)]
    hold: usize,
    /// Idle connections for socat (one process per connection).
    #[arg(long, default_value_t = 2_000)]
    socat_hold: usize,
    /// Requests per latency sample.
    #[arg(long, default_value_t = 3000)]
    lat_n: usize,
    /// Concurrent connections in the connection-rate column.
    #[arg(long, default_value_t = 32)]
    conc: usize,
    /// Relays to run (comma separated keys: socat, haproxy, haproxy-splice,
    /// nginx, ssh, splitway-copy, splitway-splice); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Tests to run (comma separated: mem, lat, rate, flow); default all.
    #[arg(long, value_delimiter = ',')]
    tests: Vec<String>,
    #[arg(long, default_value_t = 0)]
    relay_cpu: usize,
    #[arg(long, default_value_t = 1)]
    load_cpu: usize,
    /// The splitway binary (default: where `scripts/bench.sh` builds it,
    /// `target-bench/<host tuple>/release/splitway`).
    #[arg(long, default_value_os_t = default_splitway())]
    splitway: PathBuf,
    /// Extra `[node]` TOML lines for splitway (e.g. "buffer_bytes = 16384").
    #[arg(long, default_value = "")]
    splitway_node: String,
    /// More `[node]` lines for the relays `splitway-copy-x` and
    /// `splitway-splice-x` only (an experiment side by side with the
    /// default engines), e.g. "quiet_blocked_input = true".
    #[arg(long, default_value = "")]
    splitway_node_x: String,
    /// Do not move into a private network namespace.
    #[arg(long)]
    no_netns: bool,
    /// Write the JSON results here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown table here.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Run the reload benchmark instead (issue 12 §2): a persistent
    /// ping-pong through a one-worker relay with and without SIGHUP reloads
    /// (see docs/performance.md). `--rounds`, `--secs` (per phase) apply.
    #[arg(long)]
    reload_bench: bool,
    /// Splitway binaries to compare in the reload benchmark (default:
    /// `--splitway`), e.g. an old and a new build.
    #[arg(long, value_delimiter = ',')]
    reload_binaries: Vec<PathBuf>,
    /// Reloads per second in the reload benchmark.
    #[arg(long, default_value_t = 20)]
    reload_rate: u32,
    /// Repeat a throughput / rate sample when more than this share of the
    /// machine's CPU went to processes outside the benchmark.
    #[arg(long, default_value_t = 0.15)]
    max_outside: f64,
    /// Count the relay's syscalls, context switches and CPU time with
    /// `perf stat` during each measured window (flow, rate, persistent
    /// latency) and report them per GB, per connection, per exchange.
    #[arg(long)]
    perf_stat: bool,
    /// Events for `--perf-stat` (default: CPU time, context switches, all
    /// syscalls and the relay-relevant ones by name).
    #[arg(long, value_delimiter = ',')]
    perf_events: Vec<String>,
    /// Record call graphs (`perf record -g`) of the relay in each measured
    /// window into this directory (`KEY-TEST-rN.data`).
    #[arg(long)]
    perf_record: Option<PathBuf>,
    /// Run the experimental in-kernel (BPF sockmap) relay from LISTEN to
    /// TARGET instead of benchmarking (what `--only sockmap` starts).
    #[arg(long, value_delimiter = ',', hide = true)]
    sockmap_relay: Vec<SocketAddr>,
}

#[derive(Serialize, Default, Clone, Debug)]
struct Sample {
    ready_ms: Option<f64>,
    idle_rss_bytes: Option<f64>,
    /// Of which private anonymous memory (RssAnon): what each instance
    /// costs on its own; the rest is file-backed (binary, shared libraries).
    idle_anon_bytes: Option<f64>,
    held: Option<f64>,
    user_bytes_per_conn: Option<f64>,
    kernel_bytes_per_conn: Option<f64>,
    lat_persist_p50_us: Option<f64>,
    lat_persist_p99_us: Option<f64>,
    lat_new_p50_us: Option<f64>,
    lat_new_p99_us: Option<f64>,
    add_persist_p50_us: Option<f64>,
    add_persist_p99_us: Option<f64>,
    add_new_p50_us: Option<f64>,
    add_new_p99_us: Option<f64>,
    conns_per_s: Option<f64>,
    conn_p50_us: Option<f64>,
    conn_p99_us: Option<f64>,
    conn_errors: Option<f64>,
    relay_cpu_per_kconn_ms: Option<f64>,
    gbit_s: Option<f64>,
    cpu_s_per_gb: Option<f64>,
    core_s_per_gb: Option<f64>,
    /// CPU time of the relay, the load and sink (with the softirq work
    /// charged to them) and the kernel's worker threads per GB: fair to a
    /// relay whose work runs outside its own processes (in-kernel
    /// forwarding).
    machine_s_per_gb: Option<f64>,
    /// The same per 1000 connections of the rate test.
    machine_ms_per_kconn: Option<f64>,
    repeats_disturbed: Option<f64>,
    /// `--perf-stat`: event counts per unit, keyed `TEST/EVENT` (flow: per
    /// GB, rate: per connection, lat: per exchange; task-clock in µs).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    perf: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct Row {
    key: String,
    name: String,
    median: Sample,
    samples: Vec<Sample>,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    date: String,
    command: String,
    machine: String,
    versions: Vec<(String, String)>,
    relay_cpu: usize,
    load_cpu: usize,
    rounds: usize,
    secs: f64,
    hold: usize,
    socat_hold: usize,
    direct: Sample,
    rows: Vec<Row>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Field-wise median of samples.
fn median_sample(s: &[Sample]) -> Sample {
    let vals: Vec<serde_json::Value> = s.iter().map(|x| serde_json::to_value(x).unwrap()).collect();
    let mut out = serde_json::Map::new();
    if let Some(serde_json::Value::Object(first)) = vals.first() {
        for k in first.keys() {
            let mut v: Vec<f64> = vals.iter().filter_map(|x| x[k].as_f64()).collect();
            out.insert(
                k.clone(),
                median(&mut v).map_or(serde_json::Value::Null, |m| m.into()),
            );
        }
    }
    let m: serde_json::Value = out.into();
    let mut med = sample_from(&m);
    let keys: std::collections::BTreeSet<&String> = s.iter().flat_map(|x| x.perf.keys()).collect();
    for k in keys {
        let mut v: Vec<f64> = s.iter().filter_map(|x| x.perf.get(k).copied()).collect();
        if let Some(m) = median(&mut v) {
            med.perf.insert(k.clone(), m);
        }
    }
    med
}

fn sample_from(v: &serde_json::Value) -> Sample {
    let g = |k: &str| v[k].as_f64();
    Sample {
        ready_ms: g("ready_ms"),
        idle_rss_bytes: g("idle_rss_bytes"),
        idle_anon_bytes: g("idle_anon_bytes"),
        held: g("held"),
        user_bytes_per_conn: g("user_bytes_per_conn"),
        kernel_bytes_per_conn: g("kernel_bytes_per_conn"),
        lat_persist_p50_us: g("lat_persist_p50_us"),
        lat_persist_p99_us: g("lat_persist_p99_us"),
        lat_new_p50_us: g("lat_new_p50_us"),
        lat_new_p99_us: g("lat_new_p99_us"),
        add_persist_p50_us: g("add_persist_p50_us"),
        add_persist_p99_us: g("add_persist_p99_us"),
        add_new_p50_us: g("add_new_p50_us"),
        add_new_p99_us: g("add_new_p99_us"),
        conns_per_s: g("conns_per_s"),
        conn_p50_us: g("conn_p50_us"),
        conn_p99_us: g("conn_p99_us"),
        conn_errors: g("conn_errors"),
        relay_cpu_per_kconn_ms: g("relay_cpu_per_kconn_ms"),
        gbit_s: g("gbit_s"),
        cpu_s_per_gb: g("cpu_s_per_gb"),
        core_s_per_gb: g("core_s_per_gb"),
        machine_s_per_gb: g("machine_s_per_gb"),
        machine_ms_per_kconn: g("machine_ms_per_kconn"),
        repeats_disturbed: g("repeats_disturbed"),
        perf: BTreeMap::new(),
    }
}

/// CPU use of everything on the machine, of us, and of the relay tree.
struct CpuSnap {
    busy: Vec<u64>,
    me: f64,
    relay: f64,
    kthreads: HashMap<u32, u64>,
    at: Instant,
}

fn cpu_snap(roots: &[u32]) -> CpuSnap {
    CpuSnap {
        busy: sys::cpu_busy(),
        me: sys::self_cpu_secs(),
        relay: sys::tree_cpu_secs(roots),
        kthreads: sys::kthread_ticks(),
        at: Instant::now(),
    }
}

struct CpuDelta {
    secs: f64,
    /// CPU seconds of the relay, of this benchmark (load and sink, and the
    /// softirq work charged to them) and of the kernel's worker threads.
    both: f64,
    relay: f64,
    relay_core: f64,
    outside_share: f64,
}

fn cpu_delta(a: &CpuSnap, b: &CpuSnap, relay_cpu: usize) -> CpuDelta {
    let tck = sys::clk_tck();
    let secs = (b.at - a.at).as_secs_f64();
    let all: f64 = b
        .busy
        .iter()
        .zip(&a.busy)
        .map(|(x, y)| (x - y) as f64 / tck)
        .sum();
    let relay = b.relay - a.relay;
    let me = b.me - a.me;
    let outside = (all - relay - me).max(0.0);
    let ncpu = b.busy.len().max(1) as f64;
    CpuDelta {
        secs,
        both: relay + me + sys::kthread_delta_secs(&a.kthreads, &b.kthreads),
        relay,
        relay_core: (b.busy.get(relay_cpu).unwrap_or(&0) - a.busy.get(relay_cpu).unwrap_or(&0))
            as f64
            / tck,
        outside_share: outside / (secs * ncpu),
    }
}

struct Bench {
    args: Args,
    setup: Setup,
    sink: load::Sink,
}

impl Bench {
    fn perf_opts(&self) -> perf::PerfOpts {
        let events = if !self.args.perf_events.is_empty() {
            self.args.perf_events.clone()
        } else if self.args.perf_stat {
            perf::DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect()
        } else {
            Vec::new()
        };
        perf::PerfOpts {
            stat_events: events,
            record_dir: self.args.perf_record.clone(),
        }
    }

    /// `perf` attached (disabled) to the relay's processes, if asked for.
    fn perf_attach(&self, roots: &[u32], tag: &str) -> anyhow::Result<Option<perf::Attached>> {
        let o = self.perf_opts();
        if !o.active() {
            return Ok(None);
        }
        let pids = sys::tree(roots);
        perf::Attached::start(&o, &pids, &self.setup.dir, tag).map(Some)
    }

    /// Stop `perf`; its counts per unit go into `s.perf` as `test/event`.
    fn perf_finish(
        &self,
        p: Option<perf::Attached>,
        tag: &str,
        test: &str,
        units: f64,
        s: &mut Sample,
    ) -> anyhow::Result<()> {
        let Some(p) = p else { return Ok(()) };
        let c = p.finish(&self.setup.dir, tag)?;
        for (k, v) in perf::per_unit(&c, units) {
            s.perf.insert(format!("{test}/{k}"), v);
        }
        Ok(())
    }
}

struct Hold {
    held: usize,
    user: f64,
    kernel: f64,
}

impl Bench {
    fn want(&self, t: &str) -> bool {
        self.args.tests.is_empty() || self.args.tests.iter().any(|x| x == t)
    }

    /// Hold `n` connections to `addr`; user bytes from the Pss of `roots`,
    /// kernel bytes from meminfo/sockstat.
    fn hold(&self, addr: SocketAddr, n: usize, roots: &[u32]) -> anyhow::Result<Hold> {
        std::thread::sleep(Duration::from_millis(300));
        let (u0, k0) = (sys::tree_pss(roots), sys::kernel_bytes());
        let (n, (u1, k1)) = load::hold(addr, n, || (sys::tree_pss(roots), sys::kernel_bytes()))?;
        anyhow::ensure!(n > 0, "no connection could be held");
        Ok(Hold {
            held: n,
            user: (u1 as f64 - u0 as f64) / n as f64,
            kernel: (k1 as f64 - k0 as f64) / n as f64,
        })
    }

    fn direct(&self) -> anyhow::Result<(Sample, Option<f64>)> {
        let mut s = Sample::default();
        let mut k = None;
        let a = self.sink.addr;
        if self.want("lat") {
            let h = load::latency_persistent(a, self.args.lat_n)?;
            s.lat_persist_p50_us = Some(us(h.value_at_quantile(0.5)));
            s.lat_persist_p99_us = Some(us(h.value_at_quantile(0.99)));
            let h = load::latency_newconn(a, self.args.lat_n / 2)?;
            s.lat_new_p50_us = Some(us(h.value_at_quantile(0.5)));
            s.lat_new_p99_us = Some(us(h.value_at_quantile(0.99)));
        }
        if self.want("mem") {
            let h = self.hold(a, self.args.hold, &[])?;
            s.kernel_bytes_per_conn = Some(h.kernel);
            k = Some(h.kernel);
        }
        Ok((s, k))
    }

    fn run_one(
        &self,
        kind: Kind,
        direct: &Sample,
        direct_kernel: Option<f64>,
        round: usize,
    ) -> anyhow::Result<Sample> {
        let tag = |test: &str| format!("{}-{test}-r{}", kind.key(), round + 1);
        let mut s = Sample::default();
        let mut r: Running = relays::start(kind, &self.setup)?;
        let roots = r.roots.clone();
        let l = self.setup.listen;
        s.ready_ms = Some(r.ready.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
        s.idle_rss_bytes = Some(sys::tree_rss(&roots) as f64);
        s.idle_anon_bytes = Some(sys::tree_status_bytes(&roots, "RssAnon") as f64);
        if self.want("mem") {
            let n = if kind == Kind::Socat {
                self.args.socat_hold.min(self.args.hold)
            } else {
                self.args.hold
            };
            let h = self.hold(l, n, &roots)?;
            s.held = Some(h.held as f64);
            s.user_bytes_per_conn = Some(h.user);
            // The client and sink sockets are the same with or without a
            // relay: subtract what the direct run cost.
            s.kernel_bytes_per_conn = Some(h.kernel - direct_kernel.unwrap_or(0.0));
        }
        if self.want("lat") {
            let mut p = self.perf_attach(&roots, &tag("lat"))?;
            if let Some(p) = &mut p {
                p.enable()?;
            }
            let h = load::latency_persistent(l, self.args.lat_n)?;
            if let Some(p) = &mut p {
                p.disable()?;
            }
            // 200 warm-up exchanges and the measured ones.
            let units = (self.args.lat_n + 200) as f64;
            self.perf_finish(p, &tag("lat"), "lat", units, &mut s)?;
            s.lat_persist_p50_us = Some(us(h.value_at_quantile(0.5)));
            s.lat_persist_p99_us = Some(us(h.value_at_quantile(0.99)));
            let h = load::latency_newconn(l, self.args.lat_n / 2)?;
            s.lat_new_p50_us = Some(us(h.value_at_quantile(0.5)));
            s.lat_new_p99_us = Some(us(h.value_at_quantile(0.99)));
            let sub = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
            s.add_persist_p50_us = sub(s.lat_persist_p50_us, direct.lat_persist_p50_us);
            s.add_persist_p99_us = sub(s.lat_persist_p99_us, direct.lat_persist_p99_us);
            s.add_new_p50_us = sub(s.lat_new_p50_us, direct.lat_new_p50_us);
            s.add_new_p99_us = sub(s.lat_new_p99_us, direct.lat_new_p99_us);
        }
        let dur = Duration::from_secs_f64(self.args.secs);
        let warm = Duration::from_millis(500);
        let mut disturbed = 0;
        if self.want("rate") {
            for attempt in 0..3 {
                let a = cpu_snap(&roots);
                // perf counts the window the connections are counted in.
                let p = self.perf_attach(&roots, &tag("rate"))?;
                let timer = std::thread::spawn(move || -> anyhow::Result<_> {
                    let mut p = p;
                    std::thread::sleep(warm);
                    if let Some(p) = &mut p {
                        p.enable()?;
                        std::thread::sleep(dur);
                        p.disable()?;
                    }
                    Ok(p)
                });
                let res = load::conn_rate(l, self.args.conc, warm, dur)?;
                let b = cpu_snap(&roots);
                let p = timer
                    .join()
                    .map_err(|_| anyhow::anyhow!("perf timer panicked"))??;
                self.perf_finish(p, &tag("rate"), "rate", res.conns as f64, &mut s)?;
                let d = cpu_delta(&a, &b, self.setup.relay_cpu);
                s.conns_per_s = Some(res.conns as f64 / res.secs);
                s.conn_p50_us = Some(us(res.hist.value_at_quantile(0.5)));
                s.conn_p99_us = Some(us(res.hist.value_at_quantile(0.99)));
                s.conn_errors = Some(res.errors as f64);
                // Includes the warm-up half second: relay CPU per 1000
                // connections over the whole call.
                let total = res.conns as f64 * (d.secs / res.secs);
                s.relay_cpu_per_kconn_ms = Some(d.relay / total.max(1.0) * 1e6);
                s.machine_ms_per_kconn = Some(d.both / total.max(1.0) * 1e6);
                if d.outside_share <= self.args.max_outside || attempt == 2 {
                    break;
                }
                disturbed += 1;
                eprintln!(
                    "  rate: {:.0}% CPU outside the benchmark; repeating",
                    d.outside_share * 100.0
                );
            }
        }
        if self.want("flow") {
            for attempt in 0..3 {
                let bytes = self.sink.bulk_bytes.clone();
                let total = warm + dur + Duration::from_millis(300);
                let sender = std::thread::spawn(move || load::bulk_send(l, total));
                let mut p = self.perf_attach(&roots, &tag("flow"))?;
                std::thread::sleep(warm);
                if let Some(p) = &mut p {
                    p.enable()?;
                }
                let (b0, c0) = (bytes.load(Ordering::Relaxed), cpu_snap(&roots));
                std::thread::sleep(dur);
                let (b1, c1) = (bytes.load(Ordering::Relaxed), cpu_snap(&roots));
                if let Some(p) = &mut p {
                    p.disable()?;
                }
                sender
                    .join()
                    .map_err(|_| anyhow::anyhow!("sender panicked"))??;
                let d = cpu_delta(&c0, &c1, self.setup.relay_cpu);
                let gb = (b1 - b0) as f64 / 1e9;
                self.perf_finish(p, &tag("flow"), "flow", gb, &mut s)?;
                s.gbit_s = Some(gb * 8.0 / d.secs);
                s.cpu_s_per_gb = Some(d.relay / gb.max(1e-9));
                s.core_s_per_gb = Some(d.relay_core / gb.max(1e-9));
                s.machine_s_per_gb = Some(d.both / gb.max(1e-9));
                if d.outside_share <= self.args.max_outside || attempt == 2 {
                    break;
                }
                disturbed += 1;
                eprintln!(
                    "  flow: {:.0}% CPU outside the benchmark; repeating",
                    d.outside_share * 100.0
                );
            }
        }
        s.repeats_disturbed = Some(disturbed as f64);
        r.stop();
        Ok(s)
    }
}

fn version(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).to_string();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("unavailable: {e}"))
}

fn fmt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "—".into())
}

fn table(rep: &Report) -> String {
    let mut t = String::new();
    t.push_str(
        "| relay | 1 flow Gbit/s | CPU s/GB (proc) | CPU s/GB (core) | new conns/s | conn p50/p99 µs | relay CPU ms/1k conns | +lat persistent p50/p99 µs | +lat new conn p50/p99 µs | idle RSS MB (anon) | user B/conn | kernel B/conn | exec→ready ms |\n",
    );
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let d = &rep.direct;
    t.push_str(&format!(
        "| *direct (no relay), absolute* | — | — | — | — | — | — | {} / {} | {} / {} | — | — | (client+sink {}) | — |\n",
        fmt(d.lat_persist_p50_us, |x| format!("{x:.0}")),
        fmt(d.lat_persist_p99_us, |x| format!("{x:.0}")),
        fmt(d.lat_new_p50_us, |x| format!("{x:.0}")),
        fmt(d.lat_new_p99_us, |x| format!("{x:.0}")),
        fmt(d.kernel_bytes_per_conn, |x| format!("{x:.0}")),
    ));
    for r in &rep.rows {
        let m = &r.median;
        let held = match m.held {
            Some(h) if (h as usize) != rep.hold => format!(" ({h:.0} held)"),
            _ => String::new(),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} / {} | {} | {}{} | {} | {} |\n",
            r.name,
            fmt(m.gbit_s, |x| format!("{x:.1}")),
            fmt(m.cpu_s_per_gb, |x| format!("{x:.3}")),
            fmt(m.core_s_per_gb, |x| format!("{x:.3}")),
            fmt(m.conns_per_s, |x| format!("{:.1} K", x / 1000.0)),
            fmt(m.conn_p50_us, |x| format!("{x:.0}")),
            fmt(m.conn_p99_us, |x| format!("{x:.0}")),
            fmt(m.relay_cpu_per_kconn_ms, |x| format!("{x:.0}")),
            fmt(m.add_persist_p50_us, |x| format!("{x:+.0}")),
            fmt(m.add_persist_p99_us, |x| format!("{x:+.0}")),
            fmt(m.add_new_p50_us, |x| format!("{x:+.0}")),
            fmt(m.add_new_p99_us, |x| format!("{x:+.0}")),
            fmt(m.idle_rss_bytes, |x| format!("{:.1}", x / 1048576.0))
                + &m.idle_anon_bytes
                    .map_or(String::new(), |x| format!(" ({:.1})", x / 1048576.0)),
            fmt(m.user_bytes_per_conn, |x| format!("{x:.0}")),
            held,
            fmt(m.kernel_bytes_per_conn, |x| format!("{x:.0}")),
            fmt(m.ready_ms, |x| format!("{x:.1}")),
        ));
    }
    t
}

/// `--perf-stat` counts: one table per test, a column per event that any
/// relay made (task-clock µs, then context switches, all syscalls, and the
/// syscalls by name).
fn perf_table(rep: &Report) -> String {
    let mut t = String::new();
    if rep
        .rows
        .iter()
        .any(|r| r.median.machine_s_per_gb.is_some() || r.median.machine_ms_per_kconn.is_some())
    {
        t.push_str("\n**Relay + load + sink + kernel threads CPU** (the relay's processes, the benchmark's with the softirq work charged to them, `kworker`/`ksoftirqd`; other processes not counted)\n\n| relay | relay+load CPU s/GB | relay+load CPU ms/1k conns |\n|---|---|---|\n");
        for r in &rep.rows {
            t.push_str(&format!(
                "| {} | {} | {} |\n",
                r.name,
                fmt(r.median.machine_s_per_gb, |x| format!("{x:.3}")),
                fmt(r.median.machine_ms_per_kconn, |x| format!("{x:.0}")),
            ));
        }
    }
    for (test, unit) in [
        ("flow", "per GB (1 flow)"),
        ("rate", "per connection (rate test)"),
        ("lat", "per exchange (persistent latency test)"),
    ] {
        let prefix = format!("{test}/");
        let mut cols: Vec<String> = Vec::new();
        for r in &rep.rows {
            for (k, v) in &r.median.perf {
                if let Some(ev) = k.strip_prefix(&prefix) {
                    if *v >= 0.005 && !cols.iter().any(|c| c == ev) {
                        cols.push(ev.to_string());
                    }
                }
            }
        }
        if cols.is_empty() {
            continue;
        }
        let rank = |c: &str| match c {
            "task-clock" => 0,
            "context-switches" => 1,
            "syscalls" => 2,
            _ => 3,
        };
        cols.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
        let head: Vec<String> = cols
            .iter()
            .map(|c| match c.as_str() {
                "task-clock" => "CPU µs".to_string(),
                "context-switches" => "sleeps".to_string(),
                other => other.to_string(),
            })
            .collect();
        t.push_str(&format!(
            "\n**{unit}**\n\n| relay | {} |\n",
            head.join(" | ")
        ));
        t.push_str(&format!("|---|{}\n", "---|".repeat(cols.len())));
        for r in &rep.rows {
            let cells: Vec<String> = cols
                .iter()
                .map(|c| {
                    let v = r.median.perf.get(&format!("{prefix}{c}")).copied();
                    fmt(v, |x| {
                        if x >= 100.0 {
                            format!("{x:.0}")
                        } else {
                            format!("{x:.2}")
                        }
                    })
                })
                .collect();
            t.push_str(&format!("| {} | {} |\n", r.name, cells.join(" | ")));
        }
    }
    t
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let [listen, target] = args.sockmap_relay[..] {
        return sockmap::run(listen, target);
    }
    let command: Vec<String> = std::env::args().collect();
    sys::raise_nofile(1 << 20);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !args.no_netns {
        anyhow::ensure!(
            root,
            "a private network namespace needs root (or pass --no-netns)"
        );
        sys::enter_netns()?;
        // Own namespace: ours to tune. Ephemeral ports away from ours.
        sys::sysctl_write("net.ipv4.ip_local_port_range", "20000 65000")?;
    }
    anyhow::ensure!(
        sys::ncpus() > args.relay_cpu.max(args.load_cpu),
        "needs CPUs {} and {}",
        args.relay_cpu,
        args.load_cpu
    );
    sys::pin_to(args.load_cpu).context("pinning the load generator")?;
    eprintln!(
        "splitway-bench: relay on CPU {}, load and sink on CPU {}, fd limit {}",
        args.relay_cpu,
        args.load_cpu,
        sys::nofile()
    );
    let dir = std::env::temp_dir().join(format!("splitway-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if args.reload_bench {
        let sink = load::start_sink(SocketAddr::from(([127, 0, 0, 1], 10000)))?;
        let binaries = if args.reload_binaries.is_empty() {
            vec![args.splitway.clone()]
        } else {
            args.reload_binaries.clone()
        };
        let md = reload::run(&reload::ReloadBench {
            binaries,
            rounds: args.rounds,
            secs: args.secs,
            rate: args.reload_rate,
            relay_cpu: args.relay_cpu,
            sink: sink.addr,
            dir: dir.clone(),
        })?;
        println!("{md}");
        if let Some(p) = &args.md {
            std::fs::write(p, &md)?;
        }
        return Ok(());
    }
    let splitway = std::fs::canonicalize(&args.splitway)
        .with_context(|| format!("splitway binary {}", args.splitway.display()))?;
    let sink = load::start_sink(SocketAddr::from(([127, 0, 0, 1], 10000)))?;
    let setup = Setup {
        relay_cpu: args.relay_cpu,
        listen: SocketAddr::from(([127, 0, 0, 1], 10001)),
        sink: sink.addr,
        ssh_port: 10022,
        dir: dir.clone(),
        splitway: splitway.clone(),
        splitway_node: args.splitway_node.replace("\\n", "\n"),
        splitway_node_x: args.splitway_node_x.replace("\\n", "\n"),
    };
    let kinds: Vec<Kind> = if args.only.is_empty() {
        relays::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|k| Kind::from_key(k).with_context(|| format!("unknown relay {k}")))
            .collect::<anyhow::Result<_>>()?
    };
    if kinds.contains(&Kind::Ssh) {
        relays::prepare_ssh(&setup)?;
    }
    let bench = Bench {
        args: args.clone(),
        setup,
        sink,
    };
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); kinds.len()];
    let mut errors: Vec<Vec<String>> = vec![Vec::new(); kinds.len()];
    let mut directs = Vec::new();
    for round in 0..args.rounds {
        let (d, dk) = bench.direct()?;
        eprintln!(
            "round {}/{}: direct {:?}/{:?} µs persistent, {:?} µs new",
            round + 1,
            args.rounds,
            d.lat_persist_p50_us,
            d.lat_persist_p99_us,
            d.lat_new_p50_us
        );
        for (i, k) in kinds.iter().enumerate() {
            let t = Instant::now();
            match bench.run_one(*k, &d, dk, round) {
                Ok(s) => {
                    eprintln!(
                        "  {:<28} {:>5.1} Gbit/s {:>6.3} s/GB {:>7.0} conn/s +{:?} µs mem {:?}/{:?} B ready {:.1} ms ({:.1} s)",
                        k.name(),
                        s.gbit_s.unwrap_or(0.0),
                        s.cpu_s_per_gb.unwrap_or(0.0),
                        s.conns_per_s.unwrap_or(0.0),
                        s.add_persist_p50_us.map(|x| x.round()),
                        s.user_bytes_per_conn.map(|x| x.round()),
                        s.kernel_bytes_per_conn.map(|x| x.round()),
                        s.ready_ms.unwrap_or(0.0),
                        t.elapsed().as_secs_f64()
                    );
                    samples[i].push(s);
                }
                Err(e) => {
                    eprintln!("  {:<28} FAILED: {e:#}", k.name());
                    errors[i].push(format!("round {}: {e:#}", round + 1));
                }
            }
        }
        directs.push(d);
    }
    let mut versions = vec![
        ("kernel".into(), version("uname", &["-r"])),
        ("socat".into(), {
            let o = Command::new("socat").arg("-V").output();
            o.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .find(|l| l.contains("version"))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
        }),
        ("haproxy".into(), version("haproxy", &["-v"])),
        ("nginx".into(), version("nginx", &["-v"])),
        ("ssh".into(), version("ssh", &["-V"])),
        (
            "splitway".into(),
            version(&splitway.to_string_lossy(), &["--version"]),
        ),
    ];
    versions.push((
        "splitway git".into(),
        version(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "rev-parse",
                "--short",
                "HEAD",
            ],
        ),
    ));
    let rows = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| Row {
            key: k.key().into(),
            name: k.name().into(),
            median: median_sample(&samples[i]),
            samples: samples[i].clone(),
            errors: errors[i].clone(),
        })
        .collect();
    let rep = Report {
        date: version("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        command: command.join(" "),
        machine: format!(
            "{} CPUs, {}",
            sys::ncpus(),
            version(
                "sh",
                &["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]
            )
        ),
        versions,
        relay_cpu: args.relay_cpu,
        load_cpu: args.load_cpu,
        rounds: args.rounds,
        secs: args.secs,
        hold: args.hold,
        socat_hold: args.socat_hold,
        direct: median_sample(&directs),
        rows,
    };
    let mut md = table(&rep);
    md.push_str(&perf_table(&rep));
    println!("{md}");
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&rep)?)?;
    }
    if let Some(p) = &args.md {
        std::fs::write(p, &md)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
