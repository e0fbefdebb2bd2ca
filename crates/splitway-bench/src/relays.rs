//! The relays under test: how each is configured, started and stopped.
//! Every relay runs under `taskset -c <relay core>`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Socat,
    Haproxy,
    HaproxySplice,
    Nginx,
    Ssh,
    SplitwayCopy,
    SplitwaySplice,
    /// The splice engine with `worker_pools` off: buffers and pipes made
    /// per connection instead of lent from the pool.
    SplitwaySpliceNoPools,
    /// The engines with `--workers 2` on CPUs 0 and 1 (the load shares
    /// CPU 1): CPU per connection and per GB against one worker (issue 16,
    /// "all cores"). Not in the default run; `--only splitway-splice-2w`.
    SplitwayCopy2w,
    SplitwaySplice2w,
    /// The peers with two threads / worker processes on CPUs 0 and 1, for
    /// the same "all cores" comparison: `nbthread 2`, `worker_processes 2`.
    Haproxy2w,
    HaproxySplice2w,
    Nginx2w,
    /// The BPF sockmap experiment (`crate::sockmap`), not a splitway engine.
    Sockmap,
    /// The engines with `--splitway-node-x` added to `[node]`: an
    /// experiment measured side by side with the default in one run.
    SplitwayCopyX,
    SplitwaySpliceX,
}

/// Run only when named with `--only`.
pub const EXTRA: [Kind; 8] = [
    Kind::SplitwayCopy2w,
    Kind::SplitwaySplice2w,
    Kind::Haproxy2w,
    Kind::HaproxySplice2w,
    Kind::Nginx2w,
    Kind::Sockmap,
    Kind::SplitwayCopyX,
    Kind::SplitwaySpliceX,
];

pub const ALL: [Kind; 8] = [
    Kind::Socat,
    Kind::Haproxy,
    Kind::HaproxySplice,
    Kind::Nginx,
    Kind::Ssh,
    Kind::SplitwayCopy,
    Kind::SplitwaySplice,
    Kind::SplitwaySpliceNoPools,
];

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Socat => "socat (fork)",
            Kind::Haproxy => "HAProxy tcp",
            Kind::HaproxySplice => "HAProxy tcp, splice forced",
            Kind::Nginx => "nginx stream",
            Kind::Ssh => "ssh -L",
            Kind::SplitwayCopy => "splitway copy",
            Kind::SplitwaySplice => "splitway splice",
            Kind::SplitwaySpliceNoPools => "splitway splice, worker_pools off",
            Kind::SplitwayCopy2w => "splitway copy, 2 workers (CPUs 0,1)",
            Kind::SplitwaySplice2w => "splitway splice, 2 workers (CPUs 0,1)",
            Kind::Haproxy2w => "HAProxy tcp, 2 threads (CPUs 0,1)",
            Kind::HaproxySplice2w => "HAProxy splice, 2 threads (CPUs 0,1)",
            Kind::Nginx2w => "nginx stream, 2 workers (CPUs 0,1)",
            Kind::Sockmap => "BPF sockmap (experiment)",
            Kind::SplitwayCopyX => "splitway copy + --splitway-node-x",
            Kind::SplitwaySpliceX => "splitway splice + --splitway-node-x",
        }
    }
    pub fn key(&self) -> &'static str {
        match self {
            Kind::Socat => "socat",
            Kind::Haproxy => "haproxy",
            Kind::HaproxySplice => "haproxy-splice",
            Kind::Nginx => "nginx",
            Kind::Ssh => "ssh",
            Kind::SplitwayCopy => "splitway-copy",
            Kind::SplitwaySplice => "splitway-splice",
            Kind::SplitwaySpliceNoPools => "splitway-splice-nopools",
            Kind::SplitwayCopy2w => "splitway-copy-2w",
            Kind::SplitwaySplice2w => "splitway-splice-2w",
            Kind::Haproxy2w => "haproxy-2w",
            Kind::HaproxySplice2w => "haproxy-splice-2w",
            Kind::Nginx2w => "nginx-2w",
            Kind::Sockmap => "sockmap",
            Kind::SplitwayCopyX => "splitway-copy-x",
            Kind::SplitwaySpliceX => "splitway-splice-x",
        }
    }
    pub fn from_key(k: &str) -> Option<Kind> {
        ALL.iter().chain(&EXTRA).copied().find(|x| x.key() == k)
    }
}

pub struct Setup {
    pub relay_cpu: usize,
    pub listen: SocketAddr,
    pub sink: SocketAddr,
    pub ssh_port: u16,
    pub dir: PathBuf,
    pub splitway: PathBuf,
    /// Extra `[node]` lines for splitway (e.g. buffer sizes).
    pub splitway_node: String,
    /// More `[node]` lines for the `-x` relays only.
    pub splitway_node_x: String,
}

pub struct Running {
    pub roots: Vec<u32>,
    children: Vec<Child>,
    /// Exec of the relay to the first successful connect through it.
    pub ready: Duration,
    stopped: bool,
}

fn pinned(s: &Setup, prog: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &s.relay_cpu.to_string(), prog]);
    c.stdin(Stdio::null());
    c
}

/// On CPUs 0 and 1 (the "2 workers" variants; the load shares CPU 1).
fn on_two_cpus(prog: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0,1", prog]);
    c.stdin(Stdio::null());
    c
}

fn log_to(c: &mut Command, path: &Path) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)?;
    c.stdout(f.try_clone()?).stderr(f);
    Ok(())
}

fn wait_connect(addr: SocketAddr, since: Instant, limit: Duration) -> anyhow::Result<Duration> {
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            anyhow::bail!("{addr} not accepting after {limit:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// Keys and config for sshd, made once per run.
pub fn prepare_ssh(s: &Setup) -> anyhow::Result<()> {
    let d = &s.dir;
    for k in ["hostkey", "id"] {
        let p = d.join(k);
        if !p.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&p)
                .status()?;
            anyhow::ensure!(st.success(), "ssh-keygen failed");
        }
    }
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys"))?;
    std::fs::create_dir_all("/run/sshd")?;
    write(
        d,
        "sshd_config",
        &format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/hostkey\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPermitRootLogin yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             AllowTcpForwarding yes\nMaxStartups 100\nUseDNS no\n",
            port = s.ssh_port,
            dir = d.display()
        ),
    )?;
    Ok(())
}

pub fn start(kind: Kind, s: &Setup) -> anyhow::Result<Running> {
    let d = &s.dir;
    let (l, t) = (s.listen, s.sink);
    let mut children = Vec::new();
    let mut roots = Vec::new();
    let t0;
    match kind {
        Kind::Socat => {
            let mut c = pinned(s, "socat");
            c.arg(format!(
                "TCP-LISTEN:{},bind={},fork,reuseaddr,backlog=4096",
                l.port(),
                l.ip()
            ))
            .arg(format!("TCP:{t}"));
            log_to(&mut c, &d.join("socat.log"))?;
            t0 = Instant::now();
            children.push(c.spawn().context("socat")?);
        }
        Kind::Haproxy | Kind::HaproxySplice | Kind::Haproxy2w | Kind::HaproxySplice2w => {
            let splice = if matches!(kind, Kind::HaproxySplice | Kind::HaproxySplice2w) {
                "  option splice-request\n  option splice-response\n"
            } else {
                ""
            };
            let two = matches!(kind, Kind::Haproxy2w | Kind::HaproxySplice2w);
            let threads = if two { 2 } else { 1 };
            let cfg = write(
                d,
                "haproxy.cfg",
                &format!(
                    "global\n  maxconn 9500\n  maxpipes 256\n  nbthread {threads}\n\
                     defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n{splice}\
                     frontend fe\n  bind {l}\n  default_backend be\n\
                     backend be\n  server s1 {t}\n"
                ),
            )?;
            let mut c = if two {
                on_two_cpus("haproxy")
            } else {
                pinned(s, "haproxy")
            };
            c.arg("-db").arg("-f").arg(&cfg);
            log_to(&mut c, &d.join("haproxy.log"))?;
            t0 = Instant::now();
            children.push(c.spawn().context("haproxy")?);
        }
        Kind::Nginx | Kind::Nginx2w => {
            let two = kind == Kind::Nginx2w;
            let cfg = write(
                d,
                "nginx.conf",
                &format!(
                    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
                     worker_processes {workers};\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
                     worker_rlimit_nofile 20000;\n\
                     events {{ worker_connections 20000; }}\n\
                     stream {{ server {{ listen {l} backlog=4096; proxy_pass {t}; }} }}\n",
                    dir = d.display(),
                    workers = if two { 2 } else { 1 },
                ),
            )?;
            let mut c = if two {
                on_two_cpus("nginx")
            } else {
                pinned(s, "nginx")
            };
            c.arg("-c").arg(&cfg).arg("-p").arg(d);
            log_to(&mut c, &d.join("nginx.log"))?;
            t0 = Instant::now();
            children.push(c.spawn().context("nginx")?);
        }
        Kind::Sockmap => {
            let me = std::env::current_exe().context("own path")?;
            let mut c = pinned(s, &me.to_string_lossy());
            c.arg("--sockmap-relay").arg(format!("{l},{t}"));
            log_to(&mut c, &d.join("sockmap.log"))?;
            t0 = Instant::now();
            children.push(c.spawn().context("sockmap relay")?);
        }
        Kind::Ssh => {
            let mut c = pinned(s, "/usr/sbin/sshd");
            c.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
            log_to(&mut c, &d.join("sshd.log"))?;
            let sshd = c.spawn().context("sshd")?;
            roots.push(sshd.id());
            children.push(sshd);
            let sshd_at = SocketAddr::from(([127, 0, 0, 1], s.ssh_port));
            wait_connect(sshd_at, Instant::now(), Duration::from_secs(5))?;
            let mut c = pinned(s, "ssh");
            c.args([
                "-F",
                "/dev/null",
                "-N",
                "-T",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(d.join("id"))
            .args(["-p", &s.ssh_port.to_string(), "-L"])
            .arg(format!("{}:{}:{}:{}", l.ip(), l.port(), t.ip(), t.port()))
            .arg("root@127.0.0.1");
            log_to(&mut c, &d.join("ssh.log"))?;
            t0 = Instant::now();
            children.push(c.spawn().context("ssh")?);
        }
        Kind::SplitwayCopy
        | Kind::SplitwaySplice
        | Kind::SplitwaySpliceNoPools
        | Kind::SplitwayCopy2w
        | Kind::SplitwaySplice2w
        | Kind::SplitwayCopyX
        | Kind::SplitwaySpliceX => {
            let two = matches!(kind, Kind::SplitwayCopy2w | Kind::SplitwaySplice2w);
            let engine = if matches!(
                kind,
                Kind::SplitwayCopy | Kind::SplitwayCopy2w | Kind::SplitwayCopyX
            ) {
                "copy"
            } else {
                "splice"
            };
            let pools = kind != Kind::SplitwaySpliceNoPools;
            let cfg = write(
                d,
                &format!("{}.toml", kind.key()),
                &format!(
                    "[node]\nname = \"bench\"\nengine = \"{engine}\"\n{extra}\n\
                     [[explicit]]\nlisten = \"{l}\"\ntarget = \"{t}\"\n\n\
                     [[route]]\nprefix = \"{ip}/32\"\nvia = \"direct\"\n\n\
                     [features]\nearly_syn = false\nconn_pool = false\nturbo_start = false\n\
                     fast_open = false\nworker_pools = {pools}\n\n\
                     [limits]\nmax_connections = 100000\n",
                    extra = if matches!(kind, Kind::SplitwayCopyX | Kind::SplitwaySpliceX) {
                        format!("{}\n{}", s.splitway_node, s.splitway_node_x)
                    } else {
                        s.splitway_node.clone()
                    },
                    ip = t.ip()
                ),
            )?;
            let mut c = if two {
                on_two_cpus(&s.splitway.to_string_lossy())
            } else {
                pinned(s, &s.splitway.to_string_lossy())
            };
            c.arg("relay").arg("--config").arg(&cfg);
            if two {
                c.args(["--workers", "2"]);
            }
            c.env("SPLITWAY_LOG", "warn");
            log_to(&mut c, &d.join(format!("{}.log", kind.key())))?;
            t0 = Instant::now();
            children.push(c.spawn().context("splitway")?);
        }
    }
    if kind != Kind::Ssh {
        roots.push(children[0].id());
    } else {
        roots.push(children[1].id());
    }
    let mut r = Running {
        roots,
        children,
        ready: Duration::ZERO,
        stopped: false,
    };
    match wait_connect(l, t0, Duration::from_secs(10)) {
        Ok(d) => r.ready = d,
        Err(e) => {
            r.stop();
            return Err(e);
        }
    }
    Ok(r)
}

impl Running {
    /// SIGTERM the roots, then SIGKILL whatever of the tree is left.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let all = sys::tree(&self.roots);
        for p in &self.roots {
            // SAFETY: signalling a pid we started.
            unsafe { libc::kill(*p as i32, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(3);
        for c in &mut self.children {
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for p in all {
            // SAFETY: a pid from the tree we started.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
