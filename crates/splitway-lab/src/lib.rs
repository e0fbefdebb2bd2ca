//! The emulated-WAN laboratory behind `splitway lab`.
//!
//! Builds paths from network namespaces (client — L1 — relay … — server,
//! the L* namespaces emulating WAN links with splitway's delay line: RTT,
//! rate, queue, random loss, jitter), serves files with nginx, downloads
//! them through each configuration under test (end to end, DNAT, SSH
//! forwarding, splitway and its ablation), and reports TTFB and download
//! time against the ideal-pipe bounds, with the emulation's own measured
//! accuracy. What is run is a *scenario* ([`scenarios`]): the KTCP paper's
//! path by default, Miniproxy's relay chains, loss, many clients.
//!
//! Modules, one job each: [`topology`] (chains, addressing, bounds),
//! [`host`] (lock, signals, congestion control, tools), [`session`] (one
//! lab's shared state, chains built and checked), [`testbed`] (namespaces),
//! [`emulation`] (delay lines), [`measure`] (emulation check), [`nginx`]
//! and [`curl`] (workload), [`configs`] (what is compared), [`runner`]
//! (interleaved runs, progress), [`content`] (corpus files for the
//! `modules` scenario), [`scenarios`] (what a run measures),
//! [`report`] (tables, JSON, charts), [`stats`] and [`units`] (pure helpers).

pub mod configs;
pub mod content;
pub mod curl;
pub mod emulation;
pub mod host;
pub mod measure;
pub mod nginx;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod scrape;
pub mod session;
pub mod stats;
pub mod testbed;
pub mod topology;
pub mod units;

use std::path::PathBuf;

use anyhow::Result;

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
    /// What to run: paper (the KTCP paper's path, all configurations),
    /// miniproxy (relay chains of 0-3 relays and a relay off the path),
    /// loss (random loss on the long link, then the client's), many
    /// (100 concurrent downloads from 10 clients through one ingress), web
    /// (HTTPS and headless Chromium loading a median-shaped page), proxy
    /// (curl through splitway's SOCKS5 / CONNECT ingress against ssh -D),
    /// modules (random, a real corpus, it again and its new version, with
    /// and without the stream modules on the relay-to-relay legs)
    #[arg(long, default_value = "paper")]
    pub scenario: String,

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

    /// Topology file (TOML): a chain of [[link]] entries (client side
    /// first; n links = n-1 relays), or the tables [client_ingress],
    /// [ingress_egress], [egress_server]; each with optional rtt_ms, mbit,
    /// queue_bytes, loss_pct, jitter_ms
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,

    /// Link RTTs in ms: one value for all links, or one per link (client
    /// side first; as many values as links make the chain); overrides the
    /// file [default: 32.7,215,26]
    #[arg(long, value_delimiter = ',', value_name = "MS")]
    pub rtt: Option<Vec<f64>>,

    /// Link rates in Mbit/s: one value for all links, or one per link [default: 100]
    #[arg(long, value_delimiter = ',', value_name = "MBIT")]
    pub mbit: Option<Vec<f64>>,

    /// Random loss in per cent of packets, each direction: one value for
    /// all links, or one per link [default: 0]
    #[arg(long, value_delimiter = ',', value_name = "PCT")]
    pub loss: Option<Vec<f64>>,

    /// Jitter in ms (each packet's one-way delay gains a uniform extra in
    /// [0, jitter], order kept): one value for all links, or one per link
    /// [default: 0]
    #[arg(long, value_delimiter = ',', value_name = "MS")]
    pub jitter: Option<Vec<f64>>,

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

impl LabArgs {
    /// The topology from `--topology`, `--rtt`, `--mbit`, `--loss`, `--jitter`.
    pub fn topology(&self) -> Result<topology::Topology> {
        Ok(topology::Topology::build(
            self.topology.as_deref(),
            topology::LinkFlags {
                rtt: self.rtt.as_deref(),
                mbit: self.mbit.as_deref(),
                loss: self.loss.as_deref(),
                jitter: self.jitter.as_deref(),
            },
        )?)
    }

    /// `--sizes`, or the scenario's defaults (full, quick), parsed and deduplicated.
    pub fn sizes_or(&self, full: &str, quick: &str) -> Result<Vec<u64>> {
        let strs: Vec<String> = match &self.sizes {
            Some(v) => v.clone(),
            None if self.quick => quick.split(',').map(String::from).collect(),
            None => full.split(',').map(String::from).collect(),
        };
        let mut sizes = Vec::new();
        for s in &strs {
            let b = units::parse_size(s)?;
            if !sizes.contains(&b) {
                sizes.push(b);
            }
        }
        Ok(sizes)
    }

    /// `--runs`, or the scenario's defaults (full, quick); at least 1.
    pub fn runs_or(&self, full: usize, quick: usize) -> Result<usize> {
        let runs = self.runs.unwrap_or(if self.quick { quick } else { full });
        if runs == 0 {
            anyhow::bail!("--runs must be at least 1");
        }
        Ok(runs)
    }
}

/// Run the lab with the given arguments: the scenario `--scenario` names.
pub fn run(args: LabArgs) -> Result<()> {
    scenarios::run(args)
}
