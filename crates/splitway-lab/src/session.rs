//! One lab run's shared state, whatever the scenario: the host lock, the
//! signal flag, the tools, the congestion-control guard, the work and log
//! directories, the per-run key, and the chains (testbed + emulation +
//! web server, checked) a scenario builds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::configs::{self, Running};
use crate::emulation::{self, Emulation};
use crate::measure::{self, EmulationCheck};
use crate::nginx::Nginx;
use crate::report::LabInfo;
use crate::testbed::{self, Testbed};
use crate::topology::Topology;
use crate::LabArgs;

/// A work directory removed on drop.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir> {
        let p = std::env::temp_dir().join(format!("swlab-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Everything a scenario shares. Dropped last (after the chains and the
/// configurations of the scenario).
pub struct Session {
    pub out: PathBuf,
    pub logs: PathBuf,
    pub secret: String,
    pub splitway_bin: PathBuf,
    pub cc: String,
    pub emulation: emulation::Kind,
    pub quick: bool,
    pub keep_tcp_metrics: bool,
    pub timeout: Duration,
    pub started: Instant,
    pub started_unix: u64,
    pub load_start: f64,
    pub work: WorkDir,
    _cc: crate::host::CongestionGuard,
    _lock: crate::host::Lock,
}

/// Debian tools every scenario needs: (program, package).
pub const BASE_TOOLS: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("curl", "curl"),
    ("nft", "nftables"),
    ("iptables-nft", "iptables"),
];

impl Session {
    /// Check root, take the lock, install the signal handlers and the
    /// missing tools, set up the congestion control, sweep old namespaces.
    pub fn open(args: &LabArgs, tools: &[(&str, &str)]) -> Result<Session> {
        if !nix::unistd::geteuid().is_root() {
            bail!("`splitway lab` needs root (it creates network namespaces)");
        }
        let lock = crate::host::Lock::acquire()?;
        crate::host::install_signal_handlers()?;
        let mut all = BASE_TOOLS.to_vec();
        all.extend_from_slice(tools);
        crate::host::ensure_tools(&all)?;
        let cc = crate::host::CongestionGuard::ensure(&args.cc)?;
        testbed::sweep();
        let splitway_bin = match &args.splitway_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating the splitway binary")?,
        };
        // Absolute: nginx, started in its own prefix directory, writes its
        // error log under `out` and would resolve a relative path against it.
        let out = std::path::absolute(&args.out)
            .with_context(|| format!("--out {}", args.out.display()))?;
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Session {
            logs,
            out,
            secret: random_hex(32)?,
            splitway_bin,
            cc: args.cc.clone(),
            emulation: args.emulation,
            quick: args.quick,
            keep_tcp_metrics: args.keep_tcp_metrics,
            timeout: Duration::from_secs(args.timeout),
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            load_start: crate::report::loadavg(),
            work: WorkDir::create()?,
            _cc: cc,
            _lock: lock,
        })
    }

    /// RTT probes per link and bulk seconds of the emulation check.
    pub fn check_effort(&self, topo: &Topology) -> (usize, Duration, u64) {
        let longest = topo.links[topo.longest_link()].rtt_ms / 1e3;
        if self.quick {
            let bulk = Duration::from_secs_f64((15.0 * longest).clamp(1.5, 5.0));
            (5, bulk, 10_000)
        } else {
            let bulk = Duration::from_secs_f64((25.0 * longest).clamp(3.0, 10.0));
            (10, bulk, 40_000)
        }
    }

    /// Build, emulate, serve `sizes` and check one chain.
    pub fn chain(&self, label: &str, topo: &Topology, sizes: &[u64]) -> Result<Chain> {
        self.chain_with(label, topo, sizes, "")
    }

    /// [`Session::chain`] with more nginx `server { }` blocks.
    pub fn chain_with(
        &self,
        label: &str,
        topo: &Topology,
        sizes: &[u64],
        nginx_servers: &str,
    ) -> Result<Chain> {
        let tag = if label.is_empty() {
            String::new()
        } else {
            format!("{label}-")
        };
        let links: Vec<String> = topo
            .links
            .iter()
            .map(|l| {
                let mut s = format!("{}ms", l.rtt_ms);
                if l.loss_pct > 0.0 {
                    s += &format!(" {}%loss", l.loss_pct);
                }
                if l.jitter_ms > 0.0 {
                    s += &format!(" ±{}ms", l.jitter_ms);
                }
                s
            })
            .collect();
        eprintln!(
            "lab: {}{} relay(s), links {}, {} Mbit/s bottleneck, cc {}, emulation {}",
            if label.is_empty() {
                String::new()
            } else {
                format!("chain {label}: ")
            },
            topo.relays(),
            links.join(" / "),
            topo.bottleneck_mbit(),
            self.cc,
            self.emulation.as_str()
        );
        let tb = Testbed::build(&tag, topo, &self.cc)
            .with_context(|| format!("building the namespaces of chain {label:?}"))?;
        let emu = Emulation::start(&tb, topo, self.emulation)?;
        crate::host::check_stop()?;
        let dir = self.work.0.join(format!("chain-{tag}"));
        let logs = if label.is_empty() {
            self.logs.clone()
        } else {
            self.logs.join(label)
        };
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&logs)?;
        let nginx = Nginx::start_with(&tb, &dir, &logs, sizes, nginx_servers)?;
        crate::host::check_stop()?;
        let (probes, bulk, loss_cap) = self.check_effort(topo);
        eprintln!("lab: measuring the emulation ...");
        let mut check = measure::check(&tb, topo, self.emulation.as_str(), probes, bulk)?;
        if self.emulation == emulation::Kind::Delayline {
            let (imp, w) = measure::impairments(&tb, topo, loss_cap)?;
            check.impairments = imp;
            check.warnings.extend(w);
        }
        eprint!(
            "{}",
            crate::report::table::emulation(&check, "emulation check")
        );
        if self.emulation == emulation::Kind::None {
            eprintln!(
                "  !!! --emulation none: links are plain veth, the numbers below do not describe a WAN"
            );
        }
        emu.reset_stats();
        Ok(Chain {
            label: label.to_string(),
            topo: topo.clone(),
            check,
            logs,
            dir,
            nginx,
            emu,
            tb,
        })
    }

    /// Start configuration `name` in `chain` (index `idx` of the scenario's
    /// chains); `nth_split` numbers the splitway variants within the chain.
    pub fn start_config(
        &self,
        chain: &Chain,
        idx: usize,
        name: &'static str,
        nth_split: usize,
    ) -> Result<Running> {
        crate::host::check_stop()?;
        let ctx = configs::Ctx {
            tb: &chain.tb,
            topo: &chain.topo,
            work: &chain.dir,
            logs: &chain.logs,
            splitway_bin: &self.splitway_bin,
            secret: &self.secret,
        };
        let mut r = configs::start(name, &ctx, nth_split).with_context(|| {
            format!(
                "starting configuration {name}{}",
                if chain.label.is_empty() {
                    String::new()
                } else {
                    format!(" in chain {}", chain.label)
                }
            )
        })?;
        r.chain = idx;
        Ok(r)
    }

    /// The lab block of a report.
    pub fn lab_info(&self, runs: usize, sizes: &[u64], interrupted: bool) -> LabInfo {
        LabInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: self.started_unix,
            duration_s: self.started.elapsed().as_secs_f64(),
            runs,
            sizes: sizes.to_vec(),
            congestion_control: self.cc.clone(),
            tcp_metrics_flushed_per_run: !self.keep_tcp_metrics,
            interrupted,
            loadavg_start: self.load_start,
            loadavg_end: crate::report::loadavg(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
        }
    }

    pub fn out(&self) -> &Path {
        &self.out
    }
}

/// One chain of namespaces with its emulation and web server, checked.
/// Fields drop in order: the web server, then the delay lines, then the
/// namespaces.
pub struct Chain {
    pub label: String,
    pub topo: Topology,
    pub check: EmulationCheck,
    pub logs: PathBuf,
    pub dir: PathBuf,
    pub nginx: Nginx,
    pub emu: Emulation,
    pub tb: Testbed,
}
