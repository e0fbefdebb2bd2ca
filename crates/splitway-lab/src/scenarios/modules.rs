//! `modules`: the stream modules on the relay-to-relay legs (issue 13 §5).
//!
//! Content kinds ([`crate::content`]): random bytes, a real compressible
//! corpus (a tar of Debian's Python standard library), the same corpus
//! again, and its new version (≈ 3 % of the files changed). Configurations
//! side by side in each chain: `splitway` (every improvement, no modules)
//! and `splitway+modules` (`dedup` then `compress` on the ingress's route),
//! and (not in `--quick`) `splitway+compress`. Every round restarts the relays (empty
//! dedup stores), then downloads the kinds in order (corpus before its
//! repeat and its new version), the configurations interleaved per kind and
//! rotated per round. Each download's SHA-256 is checked against the
//! served file; the bytes that crossed the longest link (both directions,
//! with headers, from its router's interface counters) are recorded.
//!
//! Chains: the KTCP path with the long link five times slower than the ends
//! (`100,20,100` Mbit/s: the relay-to-relay link is the bottleneck) and the
//! paper's path as it is (all 100 Mbit/s); or the one path of
//! `--topology`/`--rtt`/`--mbit`. Goals (issue 13 §5, medians, against the
//! ideal-pipe bound r1 + R + S/B of the uncompressed size): where the long
//! link is the bottleneck, corpus ≤ 0.5×, again ≤ 0.35×, changed ≤ 0.5× the
//! bound; elsewhere no slower than `splitway`; random ≤ 1.03× `splitway`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::print_table;
use crate::configs::Running;
use crate::content::{self, Contents, Kind};
use crate::curl::{self, Sample};
use crate::report::scenario::{ChainOut, Row, ScenarioReport};
use crate::report::SampleOut;
use crate::scrape;
use crate::session::{Chain, Session};
use crate::stats::summarize;
use crate::testbed::Testbed;
use crate::topology::Topology;
use crate::LabArgs;

/// The configuration without modules every ratio is taken against.
pub const PLAIN: &str = "splitway";
/// The configuration the goals are about (both modules).
pub const BOTH: &str = "splitway+modules";
const DEFAULT_ARMS: [&str; 3] = [PLAIN, "splitway+compress", BOTH];

/// One download as measured.
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    pub chain: String,
    pub round: usize,
    pub kind: Kind,
    pub config: String,
    pub bytes: u64,
    /// Bytes through the longest link's router (both directions, headers).
    pub wire_bytes: u64,
    /// The ingress's module counters over the download (configurations
    /// with modules): DATA payload received on the leg, bytes decoded.
    pub module_wire_in: Option<u64>,
    pub module_plain_out: Option<u64>,
    pub connect_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub error: Option<String>,
}

/// What a goal compares the modules' median time with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// At most this share of the ideal-pipe bound.
    Bound(f64),
    /// At most this multiple of `splitway` without modules.
    Plain(f64),
}

/// The goal for `kind` on a path whose long link is (or is not) the
/// bottleneck.
pub fn goal(long_is_bottleneck: bool, kind: Kind) -> Goal {
    match (kind, long_is_bottleneck) {
        (Kind::Random, _) => Goal::Plain(1.03),
        (Kind::Corpus, true) => Goal::Bound(0.5),
        (Kind::Again, true) => Goal::Bound(0.35),
        (Kind::Changed, true) => Goal::Bound(0.5),
        (_, false) => Goal::Plain(1.0),
    }
}

/// Is ratio `r` within goal `f`, judged at the two decimals the goals are
/// stated in and the table prints (1.004 is 1.00: a median of 1.3 s
/// moves by more than 0.5 % between runs of the same configuration)?
pub fn within(r: f64, f: f64) -> bool {
    (r * 100.0).round() <= (f * 100.0).round()
}

/// Is the longest link slower than every other link?
pub fn long_is_bottleneck(t: &Topology) -> bool {
    let k = t.longest_link();
    t.links
        .iter()
        .enumerate()
        .all(|(i, l)| i == k || l.mbit > t.links[k].mbit)
}

/// The chains: the one of the flags if any is given, else the two the
/// issue names (the quick form: one short chain with a slow middle).
fn chains_of(args: &LabArgs) -> Result<Vec<(String, Topology)>> {
    let custom = args.topology.is_some()
        || args.rtt.is_some()
        || args.mbit.is_some()
        || args.loss.is_some()
        || args.jitter.is_some();
    if custom {
        return Ok(vec![("custom".into(), args.topology()?)]);
    }
    let slow = |rtts: &[f64]| {
        let mut t = Topology::chain(rtts, 100.0);
        t.links[1].mbit = 20.0;
        t
    };
    if args.quick {
        return Ok(vec![("slow-long".into(), slow(&[4.0, 12.0, 4.0]))]);
    }
    let paper = Topology::default();
    let rtts: Vec<f64> = paper.links.iter().map(|l| l.rtt_ms).collect();
    Ok(vec![
        ("slow-long".into(), slow(&rtts)),
        ("paper".into(), paper),
    ])
}

fn arms_of(args: &LabArgs) -> Result<Vec<&'static str>> {
    let arms = match &args.configs {
        Some(names) => crate::configs::select(names)?,
        None if args.quick => vec![PLAIN, BOTH],
        None => DEFAULT_ARMS.to_vec(),
    };
    if !arms.contains(&PLAIN) {
        bail!("--scenario modules compares with {PLAIN}: add it to --configs");
    }
    if let Some(n) = arms.iter().find(|n| !crate::configs::is_splitway(n)) {
        bail!("--scenario modules runs splitway configurations only, not {n}");
    }
    Ok(arms)
}

/// Bytes received by every interface of link `k`'s router so far.
fn link_bytes(tb: &Testbed, k: usize) -> Result<u64> {
    let out = tb.link_ns(k).ip(["-s", "-j", "link", "show"])?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -s -j link show`")?;
    let mut sum = 0;
    for i in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        if i["ifname"] == "lo" {
            continue;
        }
        sum += i["stats64"]["rx"]["bytes"]
            .as_u64()
            .context("no rx bytes in `ip -s -j link show`")?;
    }
    Ok(sum)
}

/// The ingress relay's module byte counters (wire_in, plain_out), summed
/// over chains, via its admin API on `port`.
fn module_counters(tb: &Testbed, port: u16) -> Option<(u64, u64)> {
    let text = scrape::ingress_metrics(tb, port)?;
    let sum = |what: &str| {
        scrape::sum_where(
            &text,
            "splitway_module_bytes_total",
            &format!("what=\"{what}\""),
        ) as u64
    };
    Some((sum("wire_in"), sum("plain_out")))
}

/// Download `path` through `cfg` into `dest`; checks size and SHA-256.
fn fetch(
    tb: &Testbed,
    cfg: &Running,
    served: &content::Served,
    dest: &Path,
    timeout: Duration,
) -> Result<Sample> {
    let _ = std::fs::remove_file(dest);
    let url = format!("{}{}", cfg.base_url, served.path);
    let mut cmd = tb.command("client", "curl");
    cmd.args(["-s", "-S", "-o"])
        .arg(dest)
        .args([
            "--max-time",
            &timeout.as_secs().max(1).to_string(),
            "-w",
            curl::FORMAT,
        ])
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().context("running curl")?;
    let s = curl::finish(child, &url, served.bytes, timeout)?;
    let got = content::sha256_file(dest)?;
    let _ = std::fs::remove_file(dest);
    if got != served.sha256 {
        bail!(
            "{url}: SHA-256 {got} differs from the served file's {}",
            served.sha256
        );
    }
    Ok(s)
}

/// Start every arm in chain `c` (fresh relays: empty dedup stores).
fn start(sess: &Session, chain: &Chain, c: usize, arms: &[&'static str]) -> Result<Vec<Running>> {
    arms.iter()
        .enumerate()
        .map(|(k, name)| sess.start_config(chain, c, name, k))
        .collect()
}

pub fn run(args: &LabArgs) -> Result<()> {
    let sizes = args.sizes_or("10M", "2M")?;
    let &[size] = sizes.as_slice() else {
        bail!(
            "--scenario modules takes one size (the corpus's), got {}",
            sizes.len()
        );
    };
    let runs = args.runs_or(5, 2)?;
    let arms = arms_of(args)?;
    let topos = chains_of(args)?;
    for (label, t) in &topos {
        if t.relays() < 2 {
            bail!(
                "--scenario modules needs two relays or more (chain {label} has {})",
                t.relays()
            );
        }
    }
    let mut sess = Session::open(args, &[("tar", "tar")])?;
    sess.timeout = sess.timeout.max(Duration::from_secs(120));
    let mut chains = Vec::new();
    for (label, t) in &topos {
        chains.push(sess.chain(label, t, &[size])?);
    }
    eprintln!(
        "lab: making the corpus (about {}) ...",
        crate::units::size_label(size)
    );
    let scratch = sess.work.0.join("content");
    let contents = content::prepare(&chains[0].dir.join("www"), &scratch, size, size)?;
    for c in &chains[1..] {
        for f in ["corpus-v1.tar", "corpus-v2.tar"] {
            std::fs::copy(chains[0].dir.join("www").join(f), c.dir.join("www").join(f))
                .with_context(|| format!("copying {f}"))?;
        }
    }
    eprintln!(
        "lab: corpus {} files of {} ({} B), version 2 changes {} files ({} B)",
        contents.files,
        contents.source,
        contents.corpus.bytes,
        contents.files_changed,
        contents.changed.bytes
    );
    let dest: PathBuf = sess.work.0.join("download");
    let mut downloads: Vec<Download> = Vec::new();
    let mut stopped = None;
    let total = runs * chains.len() * Kind::ALL.len() * arms.len();
    let mut progress = crate::runner::Progress::new(total);
    'rounds: for round in 0..runs {
        for (c, chain) in chains.iter().enumerate() {
            let mut running = match start(&sess, chain, c, &arms) {
                Ok(r) => r,
                Err(e) => {
                    stopped = Some(format!("{e:#}"));
                    break 'rounds;
                }
            };
            let long = chain.topo.longest_link();
            for kind in Kind::ALL {
                for j in 0..arms.len() {
                    let a = (j + round) % arms.len();
                    if crate::host::stopping() {
                        stopped = Some("interrupted".into());
                        break 'rounds;
                    }
                    if let Some(dead) = running[a].dead_child() {
                        stopped = Some(format!("{}: {dead}", arms[a]));
                        break 'rounds;
                    }
                    progress.show(
                        &format!("{} {} {}", chain.label, arms[a], kind.as_str()),
                        None,
                    );
                    if !sess.keep_tcp_metrics {
                        chain.tb.flush_tcp_metrics();
                    }
                    let served = contents.of(kind);
                    let with_modules = !crate::configs::splitway_modules(arms[a]).is_empty();
                    let port = crate::configs::admin_port(a);
                    let m0 = with_modules
                        .then(|| module_counters(&chain.tb, port))
                        .flatten();
                    let before = link_bytes(&chain.tb, long)?;
                    let res = fetch(&chain.tb, &running[a], served, &dest, sess.timeout);
                    let wire = link_bytes(&chain.tb, long)?.saturating_sub(before);
                    // The relay counts a flow when it ends (after curl's end:
                    // the leg's FINs cross the long link): wait for it.
                    let mut m1 = None;
                    if with_modules {
                        let t0 = std::time::Instant::now();
                        while t0.elapsed() < Duration::from_secs(3) {
                            m1 = module_counters(&chain.tb, port);
                            let done = m0.zip(m1).is_some_and(|(a, b)| b.1 >= a.1 + served.bytes);
                            if done || res.is_err() {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    let m = m0
                        .zip(m1)
                        .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
                    let (s, error) = match res {
                        Ok(s) => (Some(s), None),
                        Err(e) => {
                            eprintln!(
                                "\nlab: {} {} {}: {e:#}",
                                chain.label,
                                arms[a],
                                kind.as_str()
                            );
                            (None, Some(format!("{e:#}")))
                        }
                    };
                    downloads.push(Download {
                        chain: chain.label.clone(),
                        round,
                        kind,
                        config: arms[a].to_string(),
                        bytes: served.bytes,
                        wire_bytes: wire,
                        module_wire_in: m.map(|m| m.0),
                        module_plain_out: m.map(|m| m.1),
                        connect_ms: s.map(|s| s.connect_ms),
                        ttfb_ms: s.map(|s| s.ttfb_ms),
                        total_ms: s.map(|s| s.total_ms),
                        error,
                    });
                    progress.done += 1;
                }
            }
            drop(running);
        }
    }
    progress.finish();

    let rows = rows_of(&downloads, &chains, &arms, &contents);
    let (analysis, table) = analyse(&downloads, &chains, &arms, &contents);
    print_table(
        "modules: download time (median ms) and bytes on the longest link, vs splitway without modules and the ideal pipe",
        &[
            "chain", "kind", "config", "ok", "total", "/bound", "/splitway", "wire MiB", "wire/splitway",
            "goal", "met",
        ],
        &table,
    );
    let rep = ScenarioReport::new(
        "modules",
        sess.lab_info(runs, &[size], stopped.is_some()),
        chains.iter().map(ChainOut::of).collect(),
        rows,
        json!({
            "contents": contents,
            "comparison": analysis,
            "downloads": downloads,
        }),
    );
    let json_path = rep.write_json(&sess.out)?;
    drop(chains);
    rep.finish(&sess, &json_path, &[], stopped)
}

fn pick<'a>(
    d: &'a [Download],
    chain: &'a str,
    kind: Kind,
    config: &'a str,
) -> impl Iterator<Item = &'a Download> {
    d.iter()
        .filter(move |x| x.chain == chain && x.kind == kind && x.config == config)
}

fn median_of(xs: Vec<f64>) -> Option<f64> {
    summarize(&xs).map(|s| s.median)
}

/// Rows (phase = content kind) in the shared scenario report shape.
fn rows_of(d: &[Download], chains: &[Chain], arms: &[&str], contents: &Contents) -> Vec<Row> {
    let mut out = Vec::new();
    for chain in chains {
        for kind in Kind::ALL {
            let bytes = contents.of(kind).bytes;
            let b = chain.topo.bounds(bytes);
            for arm in arms {
                let ok: Vec<&Download> = pick(d, &chain.label, kind, arm)
                    .filter(|x| x.error.is_none())
                    .collect();
                let samples: Vec<SampleOut> = ok
                    .iter()
                    .map(|x| SampleOut {
                        connect_ms: x.connect_ms.unwrap_or(0.0),
                        ttfb_ms: x.ttfb_ms.unwrap_or(0.0),
                        total_ms: x.total_ms.unwrap_or(0.0),
                    })
                    .collect();
                out.push(Row::new(
                    &chain.label,
                    kind.as_str(),
                    arm,
                    b,
                    samples,
                    pick(d, &chain.label, kind, arm)
                        .filter_map(|x| x.error.clone())
                        .collect(),
                ));
            }
        }
    }
    out
}

/// Per chain, kind and configuration: medians, ratios, the goal and whether
/// it was met; and the same as table rows.
fn analyse(
    d: &[Download],
    chains: &[Chain],
    arms: &[&str],
    contents: &Contents,
) -> (Vec<serde_json::Value>, Vec<Vec<String>>) {
    let mut out = Vec::new();
    let mut table = Vec::new();
    for chain in chains {
        let bottleneck = long_is_bottleneck(&chain.topo);
        for kind in Kind::ALL {
            let bytes = contents.of(kind).bytes;
            let bound = chain.topo.bounds(bytes).total_ms;
            let stats = |arm: &str| {
                let ok = || pick(d, &chain.label, kind, arm).filter(|x| x.error.is_none());
                (
                    median_of(ok().filter_map(|x| x.total_ms).collect()),
                    median_of(ok().map(|x| x.wire_bytes as f64).collect()),
                    ok().count(),
                    pick(d, &chain.label, kind, arm).count(),
                )
            };
            let (plain_t, plain_w, _, _) = stats(PLAIN);
            for arm in arms {
                let (t, w, ok, all) = stats(arm);
                let vs_bound = t.map(|t| t / bound);
                let vs_plain = t.zip(plain_t).map(|(t, p)| t / p);
                let wire_vs_plain = w.zip(plain_w).map(|(w, p)| w / p);
                let g = (*arm == BOTH).then(|| goal(bottleneck, kind));
                let met = g.map(|g| match g {
                    Goal::Bound(f) => vs_bound.is_some_and(|r| within(r, f)),
                    Goal::Plain(f) => vs_plain.is_some_and(|r| within(r, f)),
                });
                let goal_s = match g {
                    Some(Goal::Bound(f)) => format!("<= {f} bound"),
                    Some(Goal::Plain(f)) => format!("<= {f} splitway"),
                    None => String::new(),
                };
                let f2 =
                    |x: Option<f64>| x.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
                table.push(vec![
                    chain.label.clone(),
                    kind.as_str().into(),
                    arm.to_string(),
                    format!("{ok}/{all}"),
                    super::fmt_ms(t),
                    f2(vs_bound),
                    f2(vs_plain),
                    w.map(|w| format!("{:.2}", w / 1048576.0))
                        .unwrap_or_else(|| "-".into()),
                    f2(wire_vs_plain),
                    goal_s,
                    match met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]);
                out.push(json!({
                    "chain": chain.label, "kind": kind, "config": arm, "bytes": bytes,
                    "downloads": all, "ok": ok,
                    "bound_total_ms": bound, "total_ms_median": t,
                    "vs_bound": vs_bound, "vs_splitway": vs_plain,
                    "wire_bytes_median": w, "wire_vs_splitway": wire_vs_plain,
                    "wire_vs_size": w.map(|w| w / bytes as f64),
                    "goal": g, "met": met,
                }));
            }
        }
    }
    (out, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_follow_the_bottleneck() {
        let mut t = Topology::default();
        assert!(!long_is_bottleneck(&t), "all links 100 Mbit/s");
        assert!(within(1.004, 1.0) && within(0.39, 0.4) && within(1.03, 1.03));
        assert!(!within(1.006, 1.0) && !within(1.01, 1.0) && !within(0.51, 0.5));
        assert_eq!(goal(false, Kind::Again), Goal::Plain(1.0));
        t.links[1].mbit = 20.0;
        assert!(long_is_bottleneck(&t));
        assert_eq!(goal(true, Kind::Again), Goal::Bound(0.35));
        assert_eq!(goal(true, Kind::Corpus), Goal::Bound(0.5));
        assert_eq!(goal(true, Kind::Random), Goal::Plain(1.03));
        t.links[0].mbit = 10.0;
        assert!(!long_is_bottleneck(&t), "the client's link is slower");
    }
}
