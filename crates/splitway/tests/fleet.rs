//! Fleet mode against a real etcd: a three-member etcd cluster and five
//! relays, each in its own network namespace, joined by a bridge in a hub
//! namespace (which also holds etcd and the test server):
//!
//! ```text
//!   hub: br0 10.77.0.1-3 (etcd m1-m3), 10.77.0.100:7000 (echo server)
//!   r0 10.77.0.10   explicit 127.0.0.1:8080 -> 10.77.0.100:7000, via r1
//!   r1 10.77.0.11   transit, via r4
//!   r2, r3          in the fleet, on no flow's path
//!   r4 10.77.0.14   egress, allow 10.77.0.100/32 port 7000
//! ```
//!
//! Everything a relay runs beyond its listeners (peers, routes, allow
//! list, keys) comes from etcd. Needs root and `etcd` (scripts/install-deps.sh).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use splitway_netns::{link, unique_prefix, wait_until, ChildGuard, Netns};

const RELAYS: usize = 5;
const MEMBERS: usize = 3;
const SERVER: &str = "10.77.0.100:7000";
const KEY2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_splitway")
}

fn member_ip(m: usize) -> String {
    format!("10.77.0.{}", m + 1)
}

fn relay_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}

struct Fleet {
    hub: Netns,
    relays: Vec<Netns>,
    members: Mutex<Vec<Option<ChildGuard>>>,
    procs: Mutex<Vec<Option<ChildGuard>>>,
    dir: PathBuf,
    prefix: String,
    endpoints: String,
    /// `user:password` for etcdctl once etcd's auth is on.
    root: Mutex<Option<String>>,
    /// Relays log in as user `relay` (read-only but for presence).
    relay_auth: bool,
    /// etcd's client URLs are https (a CA made by the test).
    tls: bool,
}

impl Fleet {
    /// The namespaces, etcd and the fleet's state in etcd; no relays yet.
    fn new() -> Fleet {
        Fleet::build(false, false)
    }

    /// etcd serving its clients over TLS with a certificate from a CA the
    /// test makes; relays trust that CA (`ca_file`).
    fn with_tls() -> Fleet {
        Fleet::build(false, true)
    }

    /// With etcd's auth on: the relays log in as a user whose role reads
    /// the fleet's keys and writes only presence.
    fn with_auth() -> Fleet {
        Fleet::build(true, false)
    }

    fn build(relay_auth: bool, tls: bool) -> Fleet {
        let p = unique_prefix("swf");
        let hub = Netns::create(&format!("{p}h")).expect("hub netns");
        hub.ip(["link", "add", "br0", "type", "bridge"]).unwrap();
        hub.ip(["link", "set", "br0", "up"]).unwrap();
        for a in [
            "10.77.0.1/24",
            "10.77.0.2/24",
            "10.77.0.3/24",
            "10.77.0.100/24",
        ] {
            hub.ip(["addr", "add", a, "dev", "br0"]).unwrap();
        }
        let mut relays = Vec::new();
        for i in 0..RELAYS {
            let ns = Netns::create(&format!("{p}r{i}")).expect("relay netns");
            let hub_if = format!("{p}b{i}");
            link(
                &ns,
                "eth0",
                &[&format!("{}/24", relay_ip(i))],
                &hub,
                &hub_if,
                &[],
            )
            .unwrap();
            hub.ip(["link", "set", &hub_if, "master", "br0"]).unwrap();
            relays.push(ns);
        }
        let dir = std::env::temp_dir().join(format!("splitway-fleet-{p}"));
        std::fs::create_dir_all(&dir).unwrap();
        if tls {
            make_certs(&dir);
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints = (0..MEMBERS)
            .map(|m| format!("{scheme}://{}:2379", member_ip(m)))
            .collect::<Vec<_>>()
            .join(",");
        let f = Fleet {
            hub,
            relays,
            members: Mutex::new((0..MEMBERS).map(|_| None).collect()),
            procs: Mutex::new((0..RELAYS).map(|_| None).collect()),
            dir,
            prefix: format!("/{p}"),
            endpoints,
            root: Mutex::new(None),
            relay_auth,
            tls,
        };
        for m in 0..MEMBERS {
            f.start_member(m);
        }
        wait_until(Duration::from_secs(20), "etcd cluster healthy", || {
            f.etcdctl(&["endpoint", "health"]).is_ok()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", f.etcd_logs()));
        f.seed();
        if relay_auth {
            f.enable_auth();
        }
        f
    }

    fn enable_auth(&self) {
        let p = &self.prefix;
        let run = |args: &[&str]| {
            self.etcdctl(args)
                .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
        };
        run(&["user", "add", "root:rootpw"]);
        run(&["role", "add", "relay"]);
        for dir in ["auth", "all", "node"] {
            run(&[
                "role",
                "grant-permission",
                "relay",
                "read",
                &format!("{p}/{dir}/"),
                "--prefix=true",
            ]);
        }
        run(&[
            "role",
            "grant-permission",
            "relay",
            "readwrite",
            &format!("{p}/presence/"),
            "--prefix=true",
        ]);
        run(&["user", "add", "relay:relaypw"]);
        run(&["user", "grant-role", "relay", "relay"]);
        run(&["auth", "enable"]);
        *self.root.lock().unwrap() = Some("root:rootpw".into());
        std::fs::write(self.dir.join("root-password"), "rootpw\n").unwrap();
        std::fs::write(self.dir.join("relay-password"), "relaypw\n").unwrap();
    }

    fn start_member(&self, m: usize) {
        let cluster = (0..MEMBERS)
            .map(|k| format!("m{k}=http://{}:2380", member_ip(k)))
            .collect::<Vec<_>>()
            .join(",");
        let ipm = member_ip(m);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("etcd-m{m}.log")))
            .unwrap();
        let mut cmd = self.hub.command("etcd");
        let scheme = if self.tls { "https" } else { "http" };
        if self.tls {
            // Clients must show a certificate from the test's CA.
            cmd.arg("--cert-file")
                .arg(self.dir.join("etcd.pem"))
                .arg("--key-file")
                .arg(self.dir.join("etcd.key"))
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(self.dir.join("ca.pem"));
        }
        cmd.args([
            "--name",
            &format!("m{m}"),
            "--data-dir",
            &self.dir.join(format!("m{m}.etcd")).display().to_string(),
            "--listen-client-urls",
            &format!("{scheme}://{ipm}:2379"),
            "--advertise-client-urls",
            &format!("{scheme}://{ipm}:2379"),
            "--listen-peer-urls",
            &format!("http://{ipm}:2380"),
            "--initial-advertise-peer-urls",
            &format!("http://{ipm}:2380"),
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            &self.prefix,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
        self.members.lock().unwrap()[m] = Some(ChildGuard::spawn(&mut cmd).expect("spawn etcd"));
    }

    fn kill_member(&self, m: usize) {
        let g = self.members.lock().unwrap()[m].take();
        if let Some(mut g) = g {
            g.signal(nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = g.child_mut() {
                let _ = c.wait();
            }
        }
    }

    fn etcd_logs(&self) -> String {
        (0..MEMBERS)
            .map(|m| {
                std::fs::read_to_string(self.dir.join(format!("etcd-m{m}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `etcdctl ARGS` against the live members, from the hub.
    fn etcdctl(&self, args: &[&str]) -> Result<String, String> {
        let members = self.members.lock().unwrap();
        let live: Vec<String> = (0..MEMBERS)
            .filter(|m| members[*m].is_some())
            .map(|m| format!("{}://{}:2379", self.scheme(), member_ip(m)))
            .collect();
        drop(members);
        let out = self
            .hub
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", live.join(",")))
            .arg("--command-timeout=3s")
            .args(if self.tls {
                let d = &self.dir;
                vec![
                    format!("--cacert={}", d.join("ca.pem").display()),
                    format!("--cert={}", d.join("client.pem").display()),
                    format!("--key={}", d.join("client.key").display()),
                ]
            } else {
                Vec::new()
            })
            .args(
                self.root
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|u| format!("--user={u}")),
            )
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Put, retried while the cluster elects a leader (a member was killed).
    fn put(&self, key: &str, value: &str) {
        let k = format!("{}/{key}", self.prefix);
        let mut last = String::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            match self.etcdctl(&["put", &k, value]) {
                Ok(_) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("put {k}: {last}");
    }

    fn del(&self, key: &str) {
        let k = format!("{}/{key}", self.prefix);
        self.etcdctl(&["del", &k])
            .unwrap_or_else(|e| panic!("del {k}: {e}"));
    }

    /// The fleet's state: keys, peers (every relay), the flow's path.
    fn seed(&self) {
        self.put("auth/keys/1", KEY);
        self.put("auth/send_key", "1");
        for i in 0..RELAYS {
            self.put(
                &format!("all/peers/r{i}"),
                &format!(
                    r#"{{"addr":"{}:5565","pool_low":1,"pool_high":2,"rtt_ms":1}}"#,
                    relay_ip(i)
                ),
            );
        }
        self.put(
            "node/r0/routes/server",
            r#"{"prefix":"10.77.0.100/32","via":"r1"}"#,
        );
        self.put(
            "node/r1/routes/server",
            r#"{"prefix":"10.77.0.100/32","via":"r4"}"#,
        );
        self.put(
            "node/r4/routes/server",
            r#"{"prefix":"10.77.0.100/32","via":"direct"}"#,
        );
        self.put(
            "node/r4/allow/server",
            r#"{"prefix":"10.77.0.100/32","ports":"7000"}"#,
        );
    }

    fn config(&self, i: usize) -> String {
        let eps: Vec<String> = self
            .endpoints
            .split(',')
            .map(|e| format!("\"{e}\""))
            .collect();
        // r0's explicit listener needs a route at validation; etcd's
        // replaces it (via r1) as soon as the fleet state is applied.
        let explicit = if i == 0 {
            format!(
                "[[explicit]]\nlisten = \"127.0.0.1:8080\"\ntarget = \"{SERVER}\"\n[[route]]\nprefix = \"10.77.0.100/32\"\nvia = \"direct\"\n"
            )
        } else {
            String::new()
        };
        let ca = if self.tls {
            let d = &self.dir;
            format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                d.join("ca.pem").display(),
                d.join("client.pem").display(),
                d.join("client.key").display()
            )
        } else {
            String::new()
        };
        let auth = if self.relay_auth {
            format!(
                "user = \"relay\"\npassword_file = \"{}\"\n",
                self.dir.join("relay-password").display()
            )
        } else {
            String::new()
        };
        format!(
            r#"
[node]
name = "r{i}"
[auth]
keys = [{{ id = 1, secret = "{KEY}" }}]
[relay]
listen = "0.0.0.0:5565"
header_timeout_ms = 2000
{explicit}
[features]
early_syn = false
turbo_start = false
[timeouts]
connect_ms = 2000
[admin]
listen = "{ADMIN}"
[fleet]
endpoints = [{eps}]
prefix = "{prefix}"
cache_path = "{cache}"
lease_ttl_secs = 3
connect_timeout_ms = 1000
{auth}{ca}"#,
            eps = eps.join(", "),
            prefix = self.prefix,
            cache = self.dir.join(format!("r{i}.cache.json")).display(),
        )
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("r{i}.log"))).unwrap_or_default()
    }

    fn start_relay(&self, i: usize) {
        let cfg = self.dir.join(format!("r{i}.toml"));
        let ready = self.dir.join(format!("r{i}.ready"));
        let _ = std::fs::remove_file(&ready);
        std::fs::write(&cfg, self.config(i)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("r{i}.log")))
            .unwrap();
        let Some(g) = spawn_relay(
            &self.relays[i],
            &cfg,
            &ready,
            log,
            1,
            Duration::from_secs(15),
        ) else {
            panic!("relay r{i} did not start:\n{}", self.log(i));
        };
        self.procs.lock().unwrap()[i] = Some(g);
    }

    fn start_all(&self) {
        for i in 0..RELAYS {
            self.start_relay(i);
        }
        // Pools to every peer filled: the first flows find legs waiting.
        wait_until(Duration::from_secs(10), "presence of every relay", || {
            self.presence().len() == RELAYS
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", self.presence()));
    }

    fn kill_relay(&self, i: usize) {
        let g = self.procs.lock().unwrap()[i].take();
        if let Some(mut g) = g {
            g.signal(nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = g.child_mut() {
                let _ = c.wait();
            }
        }
    }

    /// Write a direct route for `prefix` that every relay takes, and wait
    /// up to `secs` until each has applied it.
    fn route_everywhere(&self, key: &str, prefix: &str, secs: u64, what: &str) {
        self.put(
            &format!("all/routes/{key}"),
            &format!(r#"{{"prefix":"{prefix}","via":"direct"}}"#),
        );
        for i in 0..RELAYS {
            wait_until(Duration::from_secs(secs), what, || {
                self.admin(i, "/routes").contains(prefix)
            })
            .unwrap_or_else(|e| panic!("r{i}: {e}"));
        }
    }

    /// Wait up to 10 s for relay `i`'s `sample` to read `want`.
    fn wait_metric(&self, i: usize, sample: &str, want: f64) {
        let ok = wait_until(Duration::from_secs(10), sample, || {
            self.metric(i, sample) == want
        });
        assert!(ok.is_ok(), "r{i}: {sample} = {}", self.metric(i, sample));
    }

    fn admin(&self, i: usize, path: &str) -> String {
        http_get(&self.relays[i], ADMIN, path)
    }

    fn metric(&self, i: usize, sample: &str) -> f64 {
        metric_value(&self.admin(i, "/metrics"), sample)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `--user root --password-file F` once etcd's auth is on, and
    /// `--ca-file` with TLS, for `ctl fleet`.
    fn credentials(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.root.lock().unwrap().is_some() {
            v.extend([
                "--user".into(),
                "root".into(),
                "--password-file".into(),
                self.dir.join("root-password").display().to_string(),
            ]);
        }
        if self.tls {
            for (flag, file) in [
                ("--ca-file", "ca.pem"),
                ("--cert-file", "client.pem"),
                ("--key-file", "client.key"),
            ] {
                v.extend([flag.into(), self.dir.join(file).display().to_string()]);
            }
        }
        v
    }

    /// `splitway ctl fleet ARGS` from the hub.
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.hub
            .command(bin())
            .args([
                "ctl",
                "fleet",
                "--endpoints",
                &self.endpoints,
                "--prefix",
                &self.prefix,
            ])
            .args(self.credentials())
            .args(args)
            .output()
            .expect("run ctl fleet")
    }

    /// The presence records (`ctl fleet --json`).
    fn presence(&self) -> Vec<serde_json::Value> {
        let out = self
            .hub
            .command(bin())
            .args([
                "ctl",
                "--json",
                "fleet",
                "--endpoints",
                &self.endpoints,
                "--prefix",
                &self.prefix,
            ])
            .args(self.credentials())
            .output()
            .expect("run ctl fleet");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
    }

    /// Echo server in the hub; runs until the test process ends.
    fn serve(&self) {
        let addr: SocketAddr = SERVER.parse().unwrap();
        let l: TcpListener = self
            .hub
            .run_in(move || TcpListener::bind(addr))
            .unwrap()
            .expect("bind server");
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { break };
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut r = match s.try_clone() {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                    let _ = std::io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
    }

    /// A client connection through r0's explicit listener.
    fn connect(&self) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        self.relays[0]
            .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }

    /// One short flow: 32 KiB out, the same back.
    fn flow(&self, seed: u64) -> Result<(), String> {
        let s = self.connect().map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let (sent, n, got) = client_duplex(s, 32 * 1024, seed).map_err(|e| format!("io: {e}"))?;
        if n != 32 * 1024 || sent != got {
            return Err(format!("echo mismatch: {n} bytes"));
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..RELAYS {
                eprintln!("---- r{i} log ----\n{}", self.log(i));
            }
        }
        for g in self.procs.lock().unwrap().iter_mut().flatten() {
            g.stop(Duration::from_secs(3));
        }
        for m in 0..MEMBERS {
            self.kill_member(m);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Flows back to back through r0 -> r1 -> r4 until stopped: (ok, failed,
/// first failure).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(f: &Arc<Fleet>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None));
        let handle = {
            let (f, stop, ok, failed, first_error) = (
                f.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                first_error.clone(),
            );
            std::thread::spawn(move || {
                let mut seed = 1;
                while !stop.load(Ordering::SeqCst) {
                    seed += 1;
                    match f.flow(seed) {
                        Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            first_error.lock().unwrap().get_or_insert(e);
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Load {
            stop,
            ok,
            failed,
            first_error,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (u64, u64, Option<String>) {
        self.stop_thread();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            self.first_error.lock().unwrap().clone(),
        )
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A failed test still stops the load, so the fleet it holds is dropped
/// (namespaces and processes removed).
impl Drop for Load {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// A long-lived flow: a chunk out and back every 50 ms until stopped.
fn long_flow(
    f: &Fleet,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Result<u64, String>>,
) {
    let mut s = f.connect().expect("long flow connects");
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let h = std::thread::spawn(move || {
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut rounds = 0;
        let mut buf = [0u8; 1024];
        let mut back = [0u8; 1024];
        let mut gen = Stream::new(7);
        while !st.load(Ordering::SeqCst) {
            gen.fill(&mut buf);
            s.write_all(&buf)
                .map_err(|e| format!("round {rounds}: write {e}"))?;
            s.read_exact(&mut back)
                .map_err(|e| format!("round {rounds}: read {e}"))?;
            if buf != back {
                return Err(format!("round {rounds}: echo differs"));
            }
            rounds += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(rounds)
    });
    (stop, h)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_route_change_reaches_every_relay_within_a_second_and_a_dead_relay_leaves() {
    let f = Fleet::new();
    f.start_all();
    f.serve();
    f.flow(1)
        .expect("a flow through r0 -> r1 -> r4 with the fleet's routes");

    // Route changes, one at a time; each relay polled until it lists it.
    let mut lat = Vec::new();
    for n in 0..8 {
        let prefix = format!("10.200.{n}.0/24");
        let t0 = Instant::now();
        f.put(
            &format!("all/routes/probe{n}"),
            &format!(r#"{{"prefix":"{prefix}","via":"direct"}}"#),
        );
        let mut seen = [None; RELAYS];
        while seen.iter().any(|s| s.is_none()) && t0.elapsed() < Duration::from_secs(5) {
            for (i, s) in seen.iter_mut().enumerate() {
                if s.is_none() && f.admin(i, "/routes").contains(&prefix) {
                    *s = Some(t0.elapsed());
                }
            }
        }
        for (i, s) in seen.iter().enumerate() {
            let s = s.unwrap_or_else(|| panic!("r{i} never applied {prefix}"));
            lat.push(s.as_secs_f64() * 1000.0);
        }
    }
    let p50 = percentile(&mut lat, 0.5);
    let max = percentile(&mut lat, 1.0);
    eprintln!(
        "fleet: route change applied on all {RELAYS} relays: p50 {p50:.0} ms, max {max:.0} ms ({} samples, from etcdctl start to seen in /routes)",
        lat.len()
    );
    assert!(
        max < 1000.0,
        "a route change took {max:.0} ms to reach a relay"
    );

    // `ctl fleet` lists every relay with its peers; a killed relay's
    // record goes with its lease (TTL 3 s).
    let out = f.ctl(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..RELAYS {
        assert!(text.contains(&format!("r{i} ")), "r{i} listed:\n{text}");
    }
    eprintln!("fleet: ctl fleet:\n{text}");
    let p = f.presence();
    let r0 = p.iter().find(|p| p["node"] == "r0").expect("r0 present");
    assert_eq!(r0["peers"].as_array().map(|a| a.len()), Some(RELAYS - 1));
    assert_eq!(r0["key_ids"], serde_json::json!([1]));
    let t0 = Instant::now();
    f.kill_relay(3);
    wait_until(Duration::from_secs(6), "r3's presence expires", || {
        !f.presence().iter().any(|p| p["node"] == "r3")
    })
    .unwrap();
    eprintln!(
        "fleet: killed relay left the fleet after {:?} (TTL 3 s)",
        t0.elapsed()
    );
}

#[test]
fn etcd_down_member_then_all_then_back_drops_no_flow_and_a_restart_uses_the_cache() {
    let f = Arc::new(Fleet::new());
    f.start_all();
    f.serve();
    let load = Load::start(&f);
    let (long_stop, long) = long_flow(&f);
    std::thread::sleep(Duration::from_millis(500));

    // One member down: changes still reach every relay.
    f.kill_member(0);
    f.route_everywhere(
        "one-down",
        "10.201.0.0/24",
        5,
        "change with one member down",
    );
    // All down: relays keep forwarding with what they run.
    f.kill_member(1);
    f.kill_member(2);
    for i in 0..RELAYS {
        f.wait_metric(i, "splitway_fleet_connected", 0.0);
    }
    // A relay restarted during the outage starts from its cache.
    f.kill_relay(3);
    f.start_relay(3);
    assert!(
        f.log(3).contains("starting from the local cache"),
        "{}",
        f.log(3)
    );
    assert_eq!(f.metric(3, "splitway_fleet_from_cache"), 1.0);
    let routes = f.admin(3, "/routes");
    assert!(routes.contains("10.201.0.0/24"), "cached routes: {routes}");
    std::thread::sleep(Duration::from_secs(1));

    // etcd back: every relay resyncs, and a new change reaches them.
    for m in 0..MEMBERS {
        f.start_member(m);
    }
    wait_until(Duration::from_secs(20), "etcd back", || {
        f.etcdctl(&["endpoint", "health"]).is_ok()
    })
    .unwrap();
    f.route_everywhere("back", "10.202.0.0/24", 10, "resync");
    f.wait_metric(3, "splitway_fleet_from_cache", 0.0);
    // The outage was logged, rate-limited: a handful of lines, not one per retry.
    let warned = f.log(0).matches("etcd unavailable").count();
    assert!(
        (1..=5).contains(&warned),
        "r0 logged the outage {warned} times"
    );

    long_stop.store(true, Ordering::SeqCst);
    let rounds = long
        .join()
        .unwrap()
        .expect("the long flow lived through the outage");
    let (ok, failed, first) = load.finish();
    eprintln!("fleet: outage: {ok} flows ok, {failed} failed; long flow {rounds} rounds");
    assert_eq!(failed, 0, "first failure: {first:?}");
    assert!(ok > 20, "flows ran during the outage: {ok}");
}

#[test]
fn key_rotation_under_load_fails_no_flow() {
    let f = Arc::new(Fleet::new());
    f.start_all();
    f.serve();
    let load = Load::start(&f);
    std::thread::sleep(Duration::from_millis(500));
    let out = f.ctl(&["rotate-key", "2", "--secret", KEY2, "--grace-secs", "1"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3/3"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, first) = load.finish();
    eprintln!("fleet: key rotation under load: {ok} flows ok, {failed} failed");
    assert_eq!(failed, 0, "first failure: {first:?}");
    assert!(ok > 10, "flows ran during the rotation: {ok}");
    for p in f.presence() {
        assert_eq!(p["key_ids"], serde_json::json!([2]), "{p}");
        assert_eq!(p["send_key"], 2, "{p}");
    }
    for i in 0..RELAYS {
        let m = f.admin(i, "/metrics");
        let rejected: f64 = m
            .lines()
            .filter(|l| l.starts_with("splitway_header_rejected_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert_eq!(rejected, 0.0, "r{i} refused a leg header");
    }
    f.flow(99).expect("a flow with the new key only");
}

#[test]
fn invalid_values_are_refused_with_the_key_named_and_the_state_kept() {
    let f = Fleet::new();
    f.start_all();
    f.serve();
    f.flow(1).expect("flow before");
    let refused = |f: &Fleet, i: usize, key: &str| {
        f.metric(
            i,
            &format!("splitway_fleet_refused_total{{key=\"{}/{key}\"}}", f.prefix),
        )
    };
    // Malformed JSON for one relay.
    f.put("node/r0/routes/bad", "{not json");
    wait_until(Duration::from_secs(5), "r0 refuses", || {
        refused(&f, 0, "node/r0/routes/bad") >= 1.0
    })
    .unwrap();
    assert!(
        f.log(0)
            .contains(&format!("{}/node/r0/routes/bad", f.prefix)),
        "the log names the key"
    );
    f.flow(2).expect("previous state kept");
    f.del("node/r0/routes/bad");
    // An allow list that would open every relay to everything.
    f.put("all/allow/everything", r#"{"prefix":"0.0.0.0/0"}"#);
    for i in 0..RELAYS {
        wait_until(Duration::from_secs(5), "refused everywhere", || {
            refused(&f, i, "all/allow/everything") >= 1.0
        })
        .unwrap_or_else(|e| panic!("r{i}: {e}"));
    }
    let allow = f.admin(4, "/status");
    assert!(!allow.contains("0.0.0.0/0"), "{allow}");
    // The relay's own host is never an egress destination.
    f.del("all/allow/everything");
    f.put("node/r4/allow/self", r#"{"prefix":"127.0.0.1/32"}"#);
    wait_until(Duration::from_secs(5), "r4 refuses loopback", || {
        refused(&f, 4, "node/r4/allow/self") >= 1.0
    })
    .unwrap();
    // A route via a peer nobody defined names the route's key.
    f.del("node/r4/allow/self");
    f.put(
        "node/r2/routes/ghost",
        r#"{"prefix":"10.9.0.0/16","via":"ghost"}"#,
    );
    wait_until(Duration::from_secs(5), "r2 refuses", || {
        f.log(2)
            .contains(&format!("{}/node/r2/routes/ghost (route[", f.prefix))
    })
    .unwrap();
    // Presence shows the refusal; `ctl fleet` prints it.
    wait_until(Duration::from_secs(5), "presence names the refusal", || {
        f.presence().iter().any(|p| {
            p["node"] == "r2"
                && p["refused"]
                    .as_str()
                    .is_some_and(|r| r.contains("routes/ghost"))
        })
    })
    .unwrap();
    f.del("node/r2/routes/ghost");
    // Fixed: the next good change applies everywhere again.
    f.route_everywhere("after", "10.203.0.0/24", 5, "applied after the fix");
    f.flow(3).expect("flow after");
}

#[test]
fn relays_log_in_to_etcd_with_a_role_that_only_writes_presence() {
    let f = Fleet::with_auth();
    f.start_all();
    f.serve();
    f.flow(1).expect("the fleet's routes, read as user relay");
    f.route_everywhere("auth", "10.204.0.0/24", 5, "change seen with auth on");
    // The relays' role cannot change the fleet, only report in it.
    let relay_user = f
        .hub
        .command("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", f.endpoints))
        .args([
            "--user=relay:relaypw",
            "put",
            &format!("{}/all/routes/x", f.prefix),
            "{}",
        ])
        .output()
        .expect("etcdctl");
    assert!(
        !relay_user.status.success(),
        "user relay may not write the fleet"
    );
    // A relay with a wrong password keeps running on its cache, and says so.
    f.kill_relay(2);
    std::fs::write(f.dir.join("relay-password"), "wrong\n").unwrap();
    f.start_relay(2);
    assert!(
        f.log(2).contains("starting from the local cache"),
        "{}",
        f.log(2)
    );
    assert_eq!(f.metric(2, "splitway_fleet_connected"), 0.0);
    assert!(f.admin(2, "/routes").contains("10.204.0.0/24"));
}

/// A CA, a server certificate for the three members and a client
/// certificate (EC P-256, one day).
fn make_certs(dir: &std::path::Path) {
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=splitway-test-ca",
    ]);
    sh(&ca);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout", "etcd.key", "-out", "etcd.csr", "-subj", "/CN=etcd",
    ]);
    sh(&req);
    let sans = (0..MEMBERS)
        .map(|m| format!("IP:{}", member_ip(m)))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName={sans}\n")).unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "etcd.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "etcd.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=relay",
    ]);
    sh(&req);
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "1",
        "-extfile",
        "client.cnf",
    ]);
}

#[test]
fn relays_reach_etcd_over_tls_with_client_certificates() {
    let f = Fleet::with_tls();
    f.start_all();
    f.serve();
    f.flow(1).expect("the fleet's routes, read over TLS");
    f.route_everywhere("tls", "10.205.0.0/24", 5, "change seen over TLS");
    assert_eq!(f.metric(0, "splitway_fleet_connected"), 1.0);
    // Without a client certificate etcd refuses the relay: it runs its cache.
    f.kill_relay(2);
    let text = std::fs::read_to_string(f.dir.join("r2.toml")).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("cert_file") && !l.starts_with("key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let ready = f.dir.join("r2-nocert.ready");
    let log = std::fs::File::create(f.dir.join("r2-nocert.log")).unwrap();
    std::fs::write(f.dir.join("r2-nocert.toml"), without).unwrap();
    let mut g = ChildGuard::spawn(
        f.relays[2]
            .command(bin())
            .args(["relay", "--workers", "1", "--config"])
            .arg(f.dir.join("r2-nocert.toml"))
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
    .expect("spawn");
    wait_until(Duration::from_secs(15), "r2 ready", || {
        ready.exists() || g.try_wait().is_some()
    })
    .unwrap();
    let log = std::fs::read_to_string(f.dir.join("r2-nocert.log")).unwrap();
    assert!(log.contains("starting from the local cache"), "{log}");
    assert_eq!(f.metric(2, "splitway_fleet_connected"), 0.0);
}
