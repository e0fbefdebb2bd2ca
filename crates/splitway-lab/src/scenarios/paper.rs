//! `paper` (the default): the KTCP paper's path (or `--topology`), every
//! configuration side by side (end to end, DNAT, SSH, splitway's ablation),
//! sizes 10K–10M; the paper's Figures 3 and 4 and the table in docs/lab.md.

use anyhow::{bail, Result};

use crate::report::{self, ConfigInfo};
use crate::session::Session;
use crate::{configs, measure, runner, units, LabArgs};

/// Default configurations of a full run.
pub const DEFAULT_CONFIGS: &str =
    "e2e,nosplit,ssh,splitway-basic,+pool-workers,+early-syn,+conn-pool,splitway";
/// Default file sizes of a full run.
pub const DEFAULT_SIZES: &str = "10K,100K,1M,10M";

pub fn run(args: &LabArgs) -> Result<()> {
    let names: Vec<String> = match &args.configs {
        Some(v) => v
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => DEFAULT_CONFIGS.split(',').map(String::from).collect(),
    };
    let chosen = configs::select(&names)?;
    let sizes = args.sizes_or(DEFAULT_SIZES, "10K,100K")?;
    let runs = args.runs_or(20, 3)?;
    let topo = args.topology()?;
    let json = args.json.clone();
    let mut tools = Vec::new();
    if chosen.iter().any(|c| c.starts_with("ssh")) {
        tools.extend([
            ("sshd", "openssh-server"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ]);
    }
    let sess = Session::open(args, &tools)?;
    let json = json.unwrap_or_else(|| sess.out.join("results.json"));
    eprintln!(
        "lab: configs {}; sizes {}; {} runs each",
        chosen.join(","),
        sizes
            .iter()
            .map(|&s| units::size_label(s))
            .collect::<Vec<_>>()
            .join(","),
        runs
    );
    let chain = sess.chain("", &topo, &sizes)?;
    let mut running = Vec::new();
    let mut nth_split = 0;
    for &name in &chosen {
        eprintln!("lab: starting {name} ...");
        running.push(sess.start_config(&chain, 0, name, nth_split)?);
        if configs::is_splitway(name) {
            nth_split += 1;
        }
    }
    let infos: Vec<ConfigInfo> = running
        .iter()
        .map(|r| ConfigInfo {
            name: r.name.to_string(),
            description: configs::describe(r.name).to_string(),
            detail: r.detail.clone(),
        })
        .collect();
    let chains = [&chain.tb];
    let plan = runner::Plan {
        chains: &chains,
        chain_labels: &[],
        sizes: &sizes,
        runs,
        timeout: sess.timeout,
        flush_metrics: !sess.keep_tcp_metrics,
    };
    let outcome = runner::run(&mut running, &plan);
    let (probes, _, _) = sess.check_effort(&topo);
    let after = if outcome.stopped.is_none() {
        match measure::check_rtts(&chain.tb, &topo, probes) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("lab: RTT check after the runs failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    if let Some(dead) = chain.emu.dead() {
        eprintln!("lab: !!! the delay line of link {dead} died during the runs");
    }
    let emu_stats = chain.emu.stats();
    drop(running);

    let lab = sess.lab_info(runs, &sizes, outcome.stopped.is_some());
    let mut rep = report::Report::build(
        lab,
        &topo,
        chain.check.clone(),
        infos,
        &sizes,
        &outcome.points,
    );
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
    report::print_link_stats(&rep.emulation_stats);
    rep.write_json(&json)?;
    let charts = report::charts::write(&rep, &sess.out)?;
    println!(
        "\nwrote {} and {}; logs in {}",
        json.display(),
        charts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        sess.logs.display()
    );
    println!(
        "lab took {}; load average {:.1} at start, {:.1} at end, {} CPUs",
        runner::fmt_dur(sess.started.elapsed()),
        rep.lab.loadavg_start,
        rep.lab.loadavg_end,
        rep.lab.cpus
    );
    drop(chain);
    if let Some(why) = outcome.stopped {
        bail!("the lab stopped early ({why}); partial results were written");
    }
    Ok(())
}
