//! The emulated-WAN laboratory behind `splitway lab`.
//!
//! Builds the KTCP paper's path from network namespaces (client — L1 —
//! ingress — L2 — egress — L3 — server, the L* namespaces emulating WAN links
//! with splitway's delay line), serves files with nginx, downloads them with
//! curl through each configuration under test (end to end, DNAT, SSH
//! forwarding, splitway and its ablation), and reports TTFB and download time
//! against the ideal-pipe bounds, with the emulation's own measured accuracy.
//!
//! Modules, one job each: [`topology`] (links, addressing, bounds),
//! [`host`] (lock, signals, congestion control, tools), [`testbed`]
//! (namespaces), [`emulation`] (delay lines), [`measure`] (emulation check),
//! [`nginx`] and [`curl`] (workload), [`configs`] (what is compared),
//! [`runner`] (interleaved runs, progress), [`report`] (table, JSON, charts),
//! [`stats`] and [`units`] (pure helpers).

pub mod configs;
pub mod curl;
pub mod emulation;
pub mod host;
pub mod measure;
pub mod nginx;
pub mod report;
pub mod runner;
pub mod stats;
pub mod testbed;
pub mod topology;
pub mod units;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::topology::Topology;

/// Default configurations of a full run.
pub const DEFAULT_CONFIGS: &str =
    "e2e,nosplit,ssh,splitway-basic,+pool-workers,+early-syn,+conn-pool,splitway";
/// Default file sizes of a full run.
pub const DEFAULT_SIZES: &str = "10K,100K,1M,10M";

/// Run the emulated-WAN laboratory: build the KTCP paper's path in network
/// namespaces, download files with curl through each configuration, report
/// TTFB and download time against the ideal-pipe bounds.
///
/// Needs root. Everything it creates (namespaces swlab-*, processes, rules)
/// is removed when it ends, also on Ctrl-C or failure.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Configurations to compare, comma-separated, from: e2e, nosplit, ssh,
    /// ssh-nagle, splitway-basic, +pool-workers, +early-syn, +conn-pool,
    /// splitway [default: e2e,nosplit,ssh,splitway-basic,+pool-workers,+early-syn,+conn-pool,splitway]
    #[arg(long, value_delimiter = ',')]
    pub configs: Option<Vec<String>>,

    /// File sizes, comma-separated. K, M, G (also KiB, MiB) are powers of 1024
    /// (10K = 10240 bytes, as in the paper); kB, MB, GB powers of 1000; a
    /// plain number is bytes [default: 10K,100K,1M,10M; --quick: 10K,100K]
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<String>>,

    /// Downloads per (configuration, size) [default: 20; --quick: 3]
    #[arg(long)]
    pub runs: Option<usize>,

    /// Quick end-to-end check: two small sizes, three runs, short emulation check
    #[arg(long)]
    pub quick: bool,

    /// Topology file (TOML): tables [client_ingress], [ingress_egress],
    /// [egress_server], each with optional rtt_ms, mbit, queue_bytes
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,

    /// Link RTTs in ms: one value for all links, or three
    /// (client-ingress,ingress-egress,egress-server); overrides the file
    /// [default: 32.7,215,26]
    #[arg(long, value_delimiter = ',', value_name = "MS")]
    pub rtt: Option<Vec<f64>>,

    /// Link rates in Mbit/s: one value for all links, or three [default: 100]
    #[arg(long, value_delimiter = ',', value_name = "MBIT")]
    pub mbit: Option<Vec<f64>>,

    /// Where to write the results JSON [default: OUT/results.json]
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Directory for charts (ttfb.svg, download.svg), results.json and logs
    #[arg(long, value_name = "DIR", default_value = "lab-results")]
    pub out: PathBuf,

    /// TCP congestion control in every namespace (the paper's hosts ran cubic).
    /// Added to the host's allowed list if needed, restored on exit
    #[arg(long, default_value = "cubic")]
    pub cc: String,

    /// Link emulation: delayline (splitway's NFQUEUE delay line) or none
    /// (plain veth links; only for developing the lab)
    #[arg(long, value_enum, default_value = "delayline")]
    pub emulation: emulation::Kind,

    /// Keep each host's cached per-destination TCP metrics between runs
    /// (by default they are flushed, so every run starts like a fresh host)
    #[arg(long)]
    pub keep_tcp_metrics: bool,

    /// Per-download timeout, seconds
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,

    /// The splitway binary that runs the relays [default: this executable]
    #[arg(long, value_name = "PATH")]
    pub splitway_bin: Option<PathBuf>,
}

/// Everything resolved from the arguments, before touching the system.
struct Settings {
    configs: Vec<&'static str>,
    sizes: Vec<u64>,
    runs: usize,
    topo: Topology,
    out: PathBuf,
    json: PathBuf,
    probes: usize,
    bulk: Duration,
    splitway_bin: PathBuf,
}

fn settings(args: &LabArgs) -> Result<Settings> {
    let names: Vec<String> = match &args.configs {
        Some(v) => v
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => DEFAULT_CONFIGS.split(',').map(String::from).collect(),
    };
    let configs = configs::select(&names)?;
    let size_strs: Vec<String> = match &args.sizes {
        Some(v) => v.clone(),
        None if args.quick => vec!["10K".into(), "100K".into()],
        None => DEFAULT_SIZES.split(',').map(String::from).collect(),
    };
    let mut sizes = Vec::new();
    for s in &size_strs {
        let b = units::parse_size(s)?;
        if !sizes.contains(&b) {
            sizes.push(b);
        }
    }
    let runs = args.runs.unwrap_or(if args.quick { 3 } else { 20 });
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let topo = Topology::build(
        args.topology.as_deref(),
        args.rtt.as_deref(),
        args.mbit.as_deref(),
    )?;
    let longest = topo.links[topo.longest_link()].rtt_ms / 1e3;
    let bulk = if args.quick {
        Duration::from_secs_f64((15.0 * longest).clamp(1.5, 5.0))
    } else {
        Duration::from_secs_f64((25.0 * longest).clamp(3.0, 10.0))
    };
    let splitway_bin = match &args.splitway_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the splitway binary")?,
    };
    // Absolute: nginx, started in its own prefix directory, writes its
    // error log under `out` and would resolve a relative path against it.
    let out =
        std::path::absolute(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    Ok(Settings {
        configs,
        sizes,
        runs,
        json: args
            .json
            .clone()
            .unwrap_or_else(|| out.join("results.json")),
        out,
        topo,
        probes: if args.quick { 5 } else { 10 },
        bulk,
        splitway_bin,
    })
}

/// A work directory removed on drop.
struct WorkDir(PathBuf);

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

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Run the lab with the given arguments.
pub fn run(args: LabArgs) -> Result<()> {
    let st = settings(&args)?;
    if !nix::unistd::geteuid().is_root() {
        bail!("`splitway lab` needs root (it creates network namespaces)");
    }
    let _lock = host::Lock::acquire()?;
    host::install_signal_handlers()?;
    let mut tools = vec![
        ("nginx", "nginx-light"),
        ("curl", "curl"),
        ("nft", "nftables"),
    ];
    if st.configs.iter().any(|c| c.starts_with("ssh")) {
        tools.extend([
            ("sshd", "openssh-server"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ]);
    }
    host::ensure_tools(&tools)?;
    let _cc = host::CongestionGuard::ensure(&args.cc)?;
    let started = Instant::now();
    let load_start = report::loadavg();
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let work = WorkDir::create()?;
    let logs = st.out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let t = &st.topo;
    eprintln!(
        "lab: path client -{}ms- ingress -{}ms- egress -{}ms- server, {}/{}/{} Mbit/s, cc {}, emulation {}",
        t.links[0].rtt_ms,
        t.links[1].rtt_ms,
        t.links[2].rtt_ms,
        t.links[0].mbit,
        t.links[1].mbit,
        t.links[2].mbit,
        args.cc,
        args.emulation.as_str()
    );
    eprintln!(
        "lab: configs {}; sizes {}; {} runs each",
        st.configs.join(","),
        st.sizes
            .iter()
            .map(|&s| units::size_label(s))
            .collect::<Vec<_>>()
            .join(","),
        st.runs
    );
    let tb = testbed::Testbed::build(&args.cc).context("building the namespaces")?;
    let emu = emulation::Emulation::start(&tb, &st.topo, args.emulation)?;
    host::check_stop()?;
    let _nginx = nginx::Nginx::start(&tb, &work.0, &logs, &st.sizes)?;
    host::check_stop()?;

    eprintln!("lab: measuring the emulation ...");
    let check = measure::check(&tb, &st.topo, args.emulation.as_str(), st.probes, st.bulk)?;
    eprint!("{}", report::table::emulation(&check, "emulation check"));
    if args.emulation == emulation::Kind::None {
        eprintln!(
            "  !!! --emulation none: links are plain veth, the numbers below do not describe a WAN"
        );
    }
    host::check_stop()?;

    let secret = random_hex(32)?;
    let ctx = configs::Ctx {
        tb: &tb,
        topo: &st.topo,
        work: &work.0,
        logs: &logs,
        splitway_bin: &st.splitway_bin,
        secret: &secret,
    };
    let mut running = Vec::new();
    let mut nth_split = 0;
    for &name in &st.configs {
        host::check_stop()?;
        eprintln!("lab: starting {name} ...");
        let r = configs::start(name, &ctx, nth_split)
            .with_context(|| format!("starting configuration {name}"))?;
        if configs::is_splitway(name) {
            nth_split += 1;
        }
        running.push(r);
    }
    let infos: Vec<report::ConfigInfo> = running
        .iter()
        .map(|r| report::ConfigInfo {
            name: r.name.to_string(),
            description: configs::describe(r.name).to_string(),
            detail: r.detail.clone(),
        })
        .collect();

    let plan = runner::Plan {
        sizes: &st.sizes,
        runs: st.runs,
        timeout: Duration::from_secs(args.timeout),
        flush_metrics: !args.keep_tcp_metrics,
    };
    let outcome = runner::run(&tb, &mut running, &plan);
    let after = if outcome.stopped.is_none() {
        match measure::check_rtts(&tb, &st.topo, st.probes) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("lab: RTT check after the runs failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let Some(dead) = emu.dead() {
        eprintln!("lab: !!! the delay line of link {dead} died during the runs");
    }
    let emu_stats = emu.stats();
    drop(running);

    let lab = report::LabInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix,
        duration_s: started.elapsed().as_secs_f64(),
        runs: st.runs,
        sizes: st.sizes.clone(),
        congestion_control: args.cc.clone(),
        tcp_metrics_flushed_per_run: !args.keep_tcp_metrics,
        interrupted: outcome.stopped.is_some(),
        loadavg_start: load_start,
        loadavg_end: report::loadavg(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
    };
    let mut rep = report::Report::build(lab, &st.topo, check, infos, &st.sizes, &outcome.points);
    rep.emulation_stats = emu_stats;
    rep.emulation_after = after;
    rep.warnings = rep.emulation.warnings.clone();
    if let Some(a) = &rep.emulation_after {
        rep.warnings
            .extend(a.warnings.iter().map(|w| format!("after the runs: {w}")));
    }
    rep.warnings
        .extend(rep.emulation_stats.iter().filter_map(|l| l.warning()));
    print!("{}", report::table::render(&rep));
    println!();
    print!(
        "{}",
        report::table::emulation(&rep.emulation, "emulation check (before the runs)")
    );
    if let Some(a) = &rep.emulation_after {
        print!("{}", report::table::rtt_after(a));
    }
    for l in &rep.emulation_stats {
        println!(
            "  delay line {}: {} packets, {} dropped by the queue limit, {} released over 1 ms late (worst {:.1} ms), realtime {}",
            l.link,
            l.packets,
            l.drops,
            l.late_over_1ms,
            l.max_lateness_us as f64 / 1e3,
            l.realtime
        );
        if let Some(w) = l.warning() {
            println!("  !!! EMULATION OFF during the runs: {w}");
        }
    }
    rep.write_json(&st.json)?;
    let charts = report::charts::write(&rep, &st.out)?;
    println!(
        "\nwrote {} and {}; logs in {}",
        st.json.display(),
        charts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        logs.display()
    );
    println!(
        "lab took {}; load average {:.1} at start, {:.1} at end, {} CPUs",
        runner::fmt_dur(started.elapsed()),
        rep.lab.loadavg_start,
        rep.lab.loadavg_end,
        rep.lab.cpus
    );
    if let Some(why) = outcome.stopped {
        bail!("the lab stopped early ({why}); partial results were written");
    }
    Ok(())
}
