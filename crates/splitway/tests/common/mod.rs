//! Shared helpers for splitway's integration tests: a four-host overlay in
//! network namespaces (client — ingress — egress — server) with real relay
//! processes, test servers and clients that hash what they move, and metric
//! scraping. Everything is removed on drop, also when a test fails.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use splitway_netns::{link, unique_prefix, wait_until, ChildGuard, Netns};

pub const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const SERVER4: &str = "10.10.3.2";
pub const SERVER6: &str = "fd10:3::2";
pub const INGRESS4: &str = "10.10.1.1";
pub const EGRESS_LEG: &str = "10.10.2.2:5565";
pub const ADMIN: &str = "127.0.0.1:9900";

pub fn server_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        format!("[{SERVER6}]:{port}").parse().unwrap()
    } else {
        format!("{SERVER4}:{port}").parse().unwrap()
    }
}

/// The four hosts, linked and routed; relays are started separately.
pub struct Overlay {
    pub client: Netns,
    pub ingress: Netns,
    pub egress: Netns,
    pub server: Netns,
    pub dir: PathBuf,
    relays: Vec<(String, ChildGuard)>,
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_splitway")
}

impl Overlay {
    /// Build the namespaces and links (no relays yet).
    pub fn new() -> Overlay {
        // Floods and many-flow tests hold hundreds of sockets in this process
        // while other tests run beside them: a default soft limit of 1 024 is
        // not enough.
        raise_nofile(1 << 20);
        let p = unique_prefix("sw");
        let ns = |s: &str| Netns::create(&format!("{p}{s}")).expect("create netns");
        let (client, ingress, egress, server) = (ns("c"), ns("i"), ns("e"), ns("s"));
        let i = |s: &str| format!("{p}{s}");
        link(
            &client,
            &i("c0"),
            &["10.10.1.2/24", "fd10:1::2/64"],
            &ingress,
            &i("i0"),
            &["10.10.1.1/24", "fd10:1::1/64"],
        )
        .unwrap();
        link(
            &ingress,
            &i("i1"),
            &["10.10.2.1/24", "fd10:2::1/64"],
            &egress,
            &i("e0"),
            &["10.10.2.2/24", "fd10:2::2/64"],
        )
        .unwrap();
        link(
            &egress,
            &i("e1"),
            &["10.10.3.1/24", "fd10:3::1/64"],
            &server,
            &i("s0"),
            &["10.10.3.2/24", "fd10:3::2/64"],
        )
        .unwrap();
        client
            .ip(["route", "add", "default", "via", "10.10.1.1"])
            .unwrap();
        client
            .ip(["-6", "route", "add", "default", "via", "fd10:1::1"])
            .unwrap();
        server
            .ip(["route", "add", "default", "via", "10.10.3.1"])
            .unwrap();
        server
            .ip(["-6", "route", "add", "default", "via", "fd10:3::1"])
            .unwrap();
        ingress
            .ip(["route", "add", "10.10.3.0/24", "via", "10.10.2.2"])
            .unwrap();
        ingress
            .ip(["-6", "route", "add", "fd10:3::/64", "via", "fd10:2::2"])
            .unwrap();
        egress
            .ip(["route", "add", "10.10.1.0/24", "via", "10.10.2.1"])
            .unwrap();
        egress
            .ip(["-6", "route", "add", "fd10:1::/64", "via", "fd10:2::1"])
            .unwrap();
        ingress.enable_forwarding().unwrap();
        egress.enable_forwarding().unwrap();
        let dir = std::env::temp_dir().join(format!("splitway-test-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        Overlay {
            client,
            ingress,
            egress,
            server,
            dir,
            relays: Vec::new(),
        }
    }

    /// Build the overlay and start both relays with the standard configs.
    pub fn with_relays(engine: &str) -> Overlay {
        let mut o = Overlay::new();
        o.start_relays(engine, "", "");
        o
    }

    /// Start ingress and egress relays; `extra_*` is appended to each config.
    pub fn start_relays(&mut self, engine: &str, extra_ingress: &str, extra_egress: &str) {
        // The egress has a `[timeouts]` section of its own: keys of a
        // leading `[timeouts]` in `extra_egress` join it.
        let (egress_timeouts, extra_egress) = match extra_egress.strip_prefix("[timeouts]\n") {
            Some(rest) => rest.split_at(rest.find("\n[").map_or(rest.len(), |i| i + 1)),
            None => ("", extra_egress),
        };
        let egress = format!(
            r#"
[node]
name = "egress"
engine = "{engine}"
[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]
[relay]
listen = "0.0.0.0:5565"
header_timeout_ms = 1000
allow = [{{ prefix = "10.10.3.2/32", ports = "1-9999" }}, {{ prefix = "fd10:3::2/128", ports = "1-9999" }}]
[[route]]
prefix = "10.10.3.0/24"
via = "direct"
[[route]]
prefix = "fd10:3::/64"
via = "direct"
[timeouts]
connect_ms = 2000
{egress_timeouts}
[admin]
listen = "{ADMIN}"
{extra_egress}
"#
        );
        let ingress = format!(
            r#"
[node]
name = "ingress"
engine = "{engine}"
[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]
[[transparent]]
port = 15001
prefixes = ["10.10.3.0/24", "fd10:3::/64"]
[[explicit]]
listen = "0.0.0.0:8080"
target = "10.10.3.2:7000"
[[explicit]]
listen = "[::]:8080"
target = "[fd10:3::2]:7000"
[[peer]]
name = "egress"
addr = "{EGRESS_LEG}"
[[route]]
prefix = "10.10.3.0/24"
via = "egress"
[[route]]
prefix = "fd10:3::/64"
via = "egress"
[admin]
listen = "{ADMIN}"
{extra_ingress}
"#
        );
        self.start_relay("egress", &egress);
        self.start_relay("ingress", &ingress);
    }

    fn ns(&self, role: &str) -> &Netns {
        match role {
            "client" => &self.client,
            "ingress" => &self.ingress,
            "egress" | "transit" => &self.egress,
            _ => &self.server,
        }
    }

    /// Start a relay in the namespace named by `role` with config `text`.
    pub fn start_relay(&mut self, role: &str, text: &str) {
        // Replacing a running relay of the same role: stop it first.
        self.stop_relay(role);
        let cfg = self.dir.join(format!("{role}.toml"));
        let ready = self.dir.join(format!("{role}.ready"));
        let _ = std::fs::remove_file(&ready);
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("{role}.log"))).unwrap();
        let Some(guard) = spawn_relay(self.ns(role), &cfg, &ready, log, 2, Duration::from_secs(10))
        else {
            panic!("relay {role} did not start:\n{}", self.log(role));
        };
        self.relays.retain(|(r, _)| r != role);
        self.relays.push((role.to_string(), guard));
    }

    /// Stop a relay with SIGTERM; returns whether it exited cleanly.
    pub fn stop_relay(&mut self, role: &str) -> bool {
        let Some(pos) = self.relays.iter().position(|(r, _)| r == role) else {
            return false;
        };
        let (_, mut g) = self.relays.remove(pos);
        g.stop(Duration::from_secs(15))
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Kill a relay with SIGKILL (a crash: no cleanup runs).
    pub fn kill_relay(&mut self, role: &str) {
        if let Some(pos) = self.relays.iter().position(|(r, _)| r == role) {
            let (_, mut g) = self.relays.remove(pos);
            g.signal(nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = g.child_mut() {
                let _ = c.wait();
            }
        }
    }

    pub fn log(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{role}.log"))).unwrap_or_default()
    }

    /// Scrape `/metrics` of the relay in `role`.
    pub fn metrics(&self, role: &str) -> String {
        http_get(self.ns(role), ADMIN, "/metrics")
    }

    /// Value of one sample (`name{labels}` exactly as exposed), 0 if absent.
    pub fn metric(&self, role: &str, sample: &str) -> f64 {
        metric_value(&self.metrics(role), sample)
    }

    /// Connect from the client host.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.client
            .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .expect("run in client ns")
    }

    /// Listen on the server host.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        self.server
            .run_in(move || TcpListener::bind(addr))
            .expect("run in server ns")
            .expect("bind server")
    }

    /// Run `program args` in `role`'s namespace and return stdout.
    pub fn sh(&self, role: &str, program: &str, args: &[&str]) -> String {
        let out = self
            .ns(role)
            .command(program)
            .args(args)
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (role, _) in &self.relays {
                eprintln!("---- {role} log ----\n{}", self.log(role));
            }
        }
        for (_, g) in self.relays.iter_mut() {
            g.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Overlay {
    /// Wait up to 10 s for a metric of `role` to satisfy `want`; returns its
    /// last value, failing the test if it never did.
    pub fn wait_metric(&self, role: &str, sample: &str, want: impl Fn(f64) -> bool) -> f64 {
        self.wait_metric_for(role, sample, 10, want)
    }

    /// Wait up to `secs` for a metric of `role` to satisfy `want`. Counters
    /// of flow ends move after the client saw its last byte: a test reads
    /// them with this, never with one scrape.
    pub fn wait_metric_for(
        &self,
        role: &str,
        sample: &str,
        secs: u64,
        want: impl Fn(f64) -> bool,
    ) -> f64 {
        let ok = wait_until(Duration::from_secs(secs), sample, || {
            want(self.metric(role, sample))
        });
        let v = self.metric(role, sample);
        assert!(ok.is_ok(), "{role}: {sample} = {v}");
        v
    }
}

/// A minimal HTTP GET from inside a namespace.
pub fn http_get(ns: &Netns, addr: &str, path: &str) -> String {
    let addr: SocketAddr = addr.parse().unwrap();
    let path = path.to_string();
    ns.run_in(move || -> String {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return String::new();
        };
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// Start `splitway relay --config cfg --ready-file ready --workers N` in `ns`,
/// stderr to `log`, and wait up to `timeout` for its ready file. `None` if
/// it exited or did not get ready in time (the caller shows its log).
pub fn spawn_relay(
    ns: &Netns,
    cfg: &std::path::Path,
    ready: &std::path::Path,
    log: std::fs::File,
    workers: usize,
    timeout: Duration,
) -> Option<ChildGuard> {
    let mut cmd = ns.command(bin());
    cmd.arg("relay")
        .arg("--config")
        .arg(cfg)
        .arg("--ready-file")
        .arg(ready)
        .arg("--workers")
        .arg(workers.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut guard = ChildGuard::spawn(&mut cmd).expect("spawn relay");
    let ok = wait_until(timeout, "relay ready", || {
        ready.exists() || guard.try_wait().is_some()
    });
    (ok.is_ok() && ready.exists()).then_some(guard)
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == sample).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Deterministic pseudo-random bytes (xorshift), fast and seedable.
pub struct Stream {
    state: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream { state: seed | 1 }
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let b = self.state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// Write `len` deterministic bytes; return their SHA-256.
pub fn send_stream(w: &mut impl Write, len: usize, seed: u64) -> std::io::Result<String> {
    let mut s = Stream::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        s.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n;
    }
    Ok(hex::encode(h.finalize()))
}

/// Read to EOF; return (bytes, SHA-256).
pub fn recv_stream(r: &mut impl Read) -> std::io::Result<(usize, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n;
    }
    Ok((total, hex::encode(h.finalize())))
}

/// What a test server saw on one connection.
#[derive(Debug, Clone)]
pub struct ServerSide {
    pub received: usize,
    pub received_sha: String,
    pub sent_sha: String,
}

/// A server that, per connection, reads until EOF (hashing) and then sends
/// `reply_len` deterministic bytes (seed = `seed`) and closes. Reports each
/// connection on the returned channel. Runs `conns` connections, then stops.
pub fn serve_echo_hash(
    l: TcpListener,
    conns: usize,
    reply_len: usize,
    seed: u64,
) -> (mpsc::Receiver<ServerSide>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..conns {
            let Ok((mut s, _)) = l.accept() else { break };
            let tx = tx.clone();
            workers.push(std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let Ok((received, received_sha)) = recv_stream(&mut s) else {
                    return;
                };
                let Ok(sent_sha) = send_stream(&mut s, reply_len, seed) else {
                    return;
                };
                let _ = s.shutdown(Shutdown::Write);
                let _ = tx.send(ServerSide {
                    received,
                    received_sha,
                    sent_sha,
                });
            }));
        }
        for w in workers {
            let _ = w.join();
        }
    });
    (rx, h)
}

/// A server that sends `len` bytes while reading everything the client sends,
/// both at once (full duplex). Reports per connection.
pub fn serve_duplex(
    l: TcpListener,
    conns: usize,
    len: usize,
    seed: u64,
) -> (mpsc::Receiver<ServerSide>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        // Accept until `conns` transfers were reported. A connection that
        // closes without sending anything (an early-SYN leg whose client was
        // paired another way) is not a transfer.
        let reported = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        while reported.load(std::sync::atomic::Ordering::SeqCst) < conns {
            let Ok((s, _)) = l.accept() else { break };
            let tx = tx.clone();
            let reported = reported.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let writer = std::thread::spawn(move || {
                    let sha = send_stream(&mut w, len, seed);
                    let _ = w.shutdown(Shutdown::Write);
                    sha
                });
                let mut r = s;
                let Ok((received, received_sha)) = recv_stream(&mut r) else {
                    return;
                };
                let Ok(Ok(sent_sha)) = writer.join() else {
                    return;
                };
                if received == 0 {
                    return;
                }
                reported.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tx.send(ServerSide {
                    received,
                    received_sha,
                    sent_sha,
                });
            });
        }
    });
    (rx, h)
}

/// Client side of a full-duplex transfer: send `len` bytes (seed) while
/// reading the reply to EOF. Returns (sent_sha, received bytes, received_sha).
pub fn client_duplex(
    s: TcpStream,
    len: usize,
    seed: u64,
) -> std::io::Result<(String, usize, String)> {
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let sha = send_stream(&mut w, len, seed);
        let _ = w.shutdown(Shutdown::Write);
        sha
    });
    let mut r = s;
    let (n, rsha) = recv_stream(&mut r)?;
    let ssha = writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    Ok((ssha, n, rsha))
}

/// Nft tables and policy rules splitway left in a namespace.
pub fn leftovers(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(o) = ns.exec("nft", ["list", "tables"]) {
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("splitway"))
                .map(str::to_string),
        );
    }
    for fam in ["-4", "-6"] {
        if let Ok(o) = ns.ip([fam, "rule", "list"]) {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("fwmark"))
                    .map(str::to_string),
            );
        }
    }
    out
}

/// What `/proc` says about one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kb: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Of those, pipe ends.
    pub pipes: usize,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Read RSS, fd count and CPU time of `pid` from `/proc`.
pub fn proc_stat(pid: u32) -> ProcStat {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let mut fds = 0;
    let mut pipes = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().starts_with("pipe:"))
                .unwrap_or(false)
            {
                pipes += 1;
            }
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is
    // field 14, stime 15 (1-based), i.e. 11 and 12 after ") ".
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ProcStat {
        rss_kb,
        fds,
        pipes,
        cpu_secs: (ticks(11) + ticks(12)) / tck,
    }
}

impl Overlay {
    /// Pid of the relay running in `role` (written to its ready file).
    pub fn relay_pid(&self, role: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("{role}.ready")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `/proc` figures of the relay running in `role`.
    pub fn relay_stat(&self, role: &str) -> ProcStat {
        self.relay_pid(role).map(proc_stat).unwrap_or_default()
    }

    /// Set the relay's `RLIMIT_NOFILE` (soft and hard) with `prlimit`.
    pub fn set_relay_nofile(&self, role: &str, n: u64) {
        self.prlimit_nofile(role, &format!("{n}:{n}"));
    }

    /// Set only the relay's soft `RLIMIT_NOFILE` (up to its hard limit and
    /// back needs no privilege).
    pub fn set_relay_nofile_soft(&self, role: &str, n: u64) {
        self.prlimit_nofile(role, &format!("{n}:"));
    }

    fn prlimit_nofile(&self, role: &str, limits: &str) {
        let pid = self.relay_pid(role).expect("relay running");
        let st = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(pid.to_string())
            .arg(format!("--nofile={limits}"))
            .status()
            .expect("run prlimit");
        assert!(st.success(), "prlimit --nofile={limits} failed");
    }

    /// The namespace of `role` ("client", "ingress", "egress", "server").
    pub fn netns(&self, role: &str) -> &Netns {
        self.ns(role)
    }
}

/// Raise this process's soft `RLIMIT_NOFILE` to `n`, or to the hard limit
/// if that is lower (raising the hard limit needs `CAP_SYS_RESOURCE`); never
/// lowers it (tests run in parallel threads of one process). Returns the hard
/// limit.
pub fn raise_nofile(n: u64) -> u64 {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to rlimit structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        let want = libc::rlimit {
            rlim_cur: (n as libc::rlim_t).min(cur.rlim_max).max(cur.rlim_cur),
            rlim_max: cur.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &want);
    }
    cur.rlim_max
}

/// File descriptors this test process may hold beyond the few hundred any
/// test uses without asking: the hard `RLIMIT_NOFILE` less a reserve.
/// Tests run as parallel threads of one process and share one fd table, so
/// a test that holds thousands of sockets (idle connections, SYN floods)
/// first takes its share with [`fd_budget`]; two such tests then never
/// overrun the limit together, whatever order the harness runs them in.
const FD_RESERVE: u64 = 1_500;

static FD_BUDGET: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);
static FD_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// The whole budget [`fd_budget`] hands out (hard limit less the reserve).
pub fn fd_budget_total() -> u64 {
    raise_nofile(1 << 20).saturating_sub(FD_RESERVE)
}

/// Holds `n` fds of the process budget until dropped.
pub struct FdShare(u64);

impl Drop for FdShare {
    fn drop(&mut self) {
        let mut free = FD_BUDGET.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = free.as_mut() {
            *f += self.0;
        }
        FD_FREED.notify_all();
    }
}

/// Wait until `n` fds of the process budget are free and take them (a
/// request above the whole budget is cut to it).
pub fn fd_budget(n: u64) -> FdShare {
    let total = fd_budget_total();
    let n = n.min(total);
    let mut free = FD_BUDGET.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let f = free.get_or_insert(total);
        if *f >= n {
            *f -= n;
            return FdShare(n);
        }
        free = FD_FREED.wait(free).unwrap_or_else(|e| e.into_inner());
    }
}

/// How a stream ended for the side that watched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
    OtherError,
    Hang,
}

pub fn end_of(e: &std::io::Error) -> End {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            End::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => End::Hang,
        _ => End::OtherError,
    }
}

/// Read until the stream ends; returns (bytes, how, when).
pub fn read_until_end(mut s: TcpStream, timeout: Duration) -> (usize, End, std::time::Instant) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (n, End::Eof, std::time::Instant::now()),
            Ok(k) => n += k,
            Err(e) => return (n, end_of(&e), std::time::Instant::now()),
        }
    }
}

/// Make the next close of `s` send a RST.
pub fn linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// `TCP_CLOSE` of `include/net/tcp_states.h`.
pub const TCP_CLOSE: u8 = 7;

/// The kernel's TCP state of `s` (`TCP_INFO`'s `tcpi_state`).
pub fn tcp_state(s: &TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(r, 0, "TCP_INFO");
        info.tcpi_state
    }
}

/// Wait up to `within` for the peer of `s` to reset it: a socket this
/// process has not closed reaches CLOSE only by a RST (a FIN leaves it in
/// CLOSE_WAIT). Works also after a FIN was read, where a read no longer
/// reports the reset.
pub fn was_reset_within(s: &TcpStream, within: Duration) -> bool {
    wait_until(within, "peer reset", || tcp_state(s) == TCP_CLOSE).is_ok()
}

impl Overlay {
    /// `splitway ctl ARGS` against the admin API of the relay in `role`.
    pub fn ctl(&self, role: &str, args: &[&str]) -> String {
        let out = self
            .ns(role)
            .command(bin())
            .args(["ctl", "--admin", ADMIN])
            .args(args)
            .output()
            .expect("run ctl");
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The relay's `RLIMIT_NOFILE` hard limit, from `/proc/PID/limits`.
    pub fn relay_nofile(&self, role: &str) -> u64 {
        let pid = self.relay_pid(role).expect("relay running");
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4)?.parse().ok())
            .expect("Max open files")
    }
}

/// Send one bare SYN from the client host, `src` -> `dst`, with initial
/// sequence number `isn` (a raw socket: no client socket exists, so the
/// client host answers the SYN-ACK with a RST and the handshake never ends).
pub fn raw_syn(o: &Overlay, src: SocketAddr, dst: SocketAddr, isn: u32) {
    let (SocketAddr::V4(s4), SocketAddr::V4(d4)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&s4.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&d4.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&isn.to_be_bytes());
    tcp[12] = 5 << 4; // header length: 5 words, no options
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    // Checksum over the pseudo-header and the segment.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for w in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    };
    add(&s4.ip().octets());
    add(&d4.ip().octets());
    add(&[0, 6, 0, 20]);
    add(&tcp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    o.netns("client")
        .run_in(move || {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::TCP),
            )?;
            s.send_to(&tcp, &SocketAddr::V4(d4).into()).map(|_| ())
        })
        .unwrap()
        .unwrap();
}
