//! End-to-end checks of `splitway lab --quick`, one per scenario, on short
//! paths: builds the namespaces, emulates the links, downloads through the
//! configurations and checks the JSON for shape and sane numbers. Needs
//! root (skipped otherwise). The splitway configurations run when a built
//! `splitway` binary sits next to this test's target directory (or
//! `SPLITWAY_BIN` names one); the scenarios that compare against splitway
//! are skipped without one. One lab at a time (the lab's lock): the tests
//! take a mutex. About 1–2 minutes in all on a busy 2-core machine.

use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    lab: splitway_lab::LabArgs,
}

fn splitway_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPLITWAY_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/quick_lab-* -> target/<profile>/splitway
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("splitway");
    p.exists().then_some(p)
}

const RTTS: [f64; 3] = [4.0, 12.0, 4.0];

/// The lab holds a host-wide lock: run one at a time.
static ONE_LAB: Mutex<()> = Mutex::new(());

/// Run `splitway lab` with `args` (after `lab`) into a fresh relative --out;
/// returns the out directory.
fn run_lab(name: &str, args: &[&str]) -> PathBuf {
    let out = PathBuf::from(format!(
        "../../target/swlab-test-{name}-{}",
        std::process::id()
    ));
    let mut argv: Vec<String> = vec!["lab".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend(["--out".into(), out.display().to_string()]);
    if let Some(b) = splitway_bin() {
        argv.extend(["--splitway-bin".into(), b.display().to_string()]);
    }
    let cli = Cli::try_parse_from(&argv).expect("arguments parse");
    splitway_lab::run(cli.lab).unwrap_or_else(|e| panic!("lab {args:?}: {e:#}"));
    out
}

fn read_json(p: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
        .expect("valid JSON")
}

fn no_namespace_left() {
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains("swlab-"));
}

/// The median of a row of a scenario report.
fn med(rows: &[Value], chain: &str, config: &str, size: u64, metric: &str) -> f64 {
    rows.iter()
        .find(|r| r["chain"] == chain && r["config"] == config && r["size_bytes"] == size)
        .and_then(|r| r[metric]["median"].as_f64())
        .unwrap_or_else(|| panic!("no {metric} for {chain} {config} {size}"))
}

/// Root and a splitway binary, or a reason to skip.
fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return false;
    }
    if splitway_bin().is_none() {
        eprintln!("skipped: no splitway binary (build it: cargo build -p splitway)");
        return false;
    }
    true
}

#[test]
fn quick_miniproxy_chains_of_relays() {
    if !ready() {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab("miniproxy", &["--scenario", "miniproxy", "--quick"]);
    let j = read_json(out.join("miniproxy.json"));
    // four chains for Figure 4 (0-3 relays) and four for Figure 5
    let chains = j["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 8, "r0..r3, direct, three off-path steps");
    for (k, c) in chains[..4].iter().enumerate() {
        assert_eq!(c["label"], format!("r{k}"));
        let links = c["topology"]["links"].as_array().unwrap();
        assert_eq!(links.len(), k + 1);
        let rtt: f64 = links.iter().map(|l| l["rtt_ms"].as_f64().unwrap()).sum();
        assert!((rtt - 20.0).abs() < 1e-9, "the 20 ms path split evenly");
    }
    let rows = j["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["failed"] == 0), "nothing failed");
    assert!(rows.iter().all(|r| r["runs"] == 3));
    let e2e = med(rows, "r0", "e2e", 10240, "ttfb_ms");
    assert!(e2e >= 2.0 * 20.0 - 0.5, "end to end needs 2R: {e2e}");
    for k in 1..=3 {
        let t = med(rows, &format!("r{k}"), "splitway", 10240, "ttfb_ms");
        let bound = 20.0 / (k + 1) as f64 + 20.0;
        assert!(
            t >= bound - 0.5,
            "{k} relays: TTFB {t} below the bound {bound}"
        );
    }
    // one relay: its early SYN connects to the server at SYN time (r1 + R
    // = 30 ms here, against 2R = 40 end to end)
    let t1 = med(rows, "r1", "splitway", 10240, "ttfb_ms");
    assert!(t1 < e2e - 4.0, "1 relay {t1} vs e2e {e2e}");
    // three relays with every improvement beat end to end on TTFB
    let t3 = med(rows, "r3", "splitway", 10240, "ttfb_ms");
    assert!(t3 < e2e, "3 relays {t3} vs e2e {e2e}");
    let f4 = j["analysis"]["figure4"].as_array().unwrap();
    assert_eq!(f4.len(), 3);
    assert_eq!(f4[2]["paper_ttfb_pct"], -37.5);
    assert!(f4[2]["splitway"]["ttfb_pct"].as_f64().unwrap() < 0.0);
    assert!(j["analysis"]["figure5_breakeven"].as_array().unwrap().len() >= 2);
    for f in [
        "miniproxy-ttfb.svg",
        "miniproxy-ttc.svg",
        "miniproxy-offpath.svg",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_loss_is_emulated_measured_and_compared() {
    if !ready() {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab("loss", &["--scenario", "loss", "--quick"]);
    let j = read_json(out.join("loss.json"));
    let phases = j["analysis"]["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "long-1", "client-1"]);
    for p in &phases[1..] {
        // the UDP probes saw about 1 % loss each way (10,000 probes: σ 0.1 %)
        let checks = p["loss_check"].as_array().unwrap();
        assert_eq!(checks.len(), 2, "both directions probed");
        for c in checks {
            let m = c["loss_pct_measured"].as_f64().unwrap();
            assert!((0.5..1.5).contains(&m), "{}: measured {m} %", p["phase"]);
        }
        // and the delay lines lost packets during the downloads
        let lost: u64 = p["delay_line_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["lost"].as_u64().unwrap())
            .sum();
        assert!(lost > 0, "{}: no packet lost", p["phase"]);
    }
    let none_lost: u64 = phases[0]["delay_line_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lost"].as_u64().unwrap())
        .sum();
    assert_eq!(none_lost, 0);
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        3 * 2,
        "three phases, e2e and splitway, one size"
    );
    assert!(rows.iter().all(|r| r["failed"] == 0 && r["runs"] == 2));
    assert!(out.join("loss-long.svg").exists() && out.join("loss-client.svg").exists());
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_many_clients_through_one_ingress() {
    if !ready() {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab("many", &["--scenario", "many", "--quick"]);
    let j = read_json(out.join("many.json"));
    let a = &j["analysis"];
    assert_eq!(a["concurrent"], 30);
    for c in a["configs"].as_array().unwrap() {
        assert_eq!(c["downloads"], 30, "{}", c["config"]);
        assert_eq!(c["failed"], 0, "nothing fails: {}", c["config"]);
        let jain = c["jain_per_round"][0].as_f64().unwrap();
        assert!(jain > 0.0 && jain <= 1.0 + 1e-9);
        assert!(c["ttfb_ms"]["p99"].as_f64().unwrap() >= c["ttfb_ms"]["p50"].as_f64().unwrap());
    }
    let sw = a["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["config"] == "splitway")
        .unwrap();
    // the relay's own counters were read: every flow is a hit or a miss
    let used = sw["pool_hits"].as_f64().unwrap() + sw["pool_misses"].as_f64().unwrap();
    assert!(used >= 30.0, "pool hits + misses {used}");
    // on lanes: no flow took a pooled leg, none fell back
    let mux = a["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["config"] == "splitway-mux")
        .expect("the mux arm runs by default");
    assert_eq!(mux["pool_hits"], 0.0, "mux flows ride lanes");
    assert_eq!(mux["lane_fallbacks"], 0.0);
    assert!(out.join("many-ttfb.svg").exists());
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_bulk_with_small_requests() {
    if !ready() {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab(
        "bulk",
        &[
            "--scenario",
            "bulk",
            "--quick",
            "--configs",
            "e2e,splitway-mux-paced",
        ],
    );
    let j = read_json(out.join("bulk.json"));
    let configs = j["analysis"]["configs"].as_array().unwrap();
    assert_eq!(configs.len(), 2);
    for c in configs {
        assert_eq!(c["failures"].as_array().map(Vec::len), Some(0), "{c}");
        assert!(c["bulk_total_ms"].as_f64().unwrap() > 0.0, "{c}");
        for phase in ["unloaded_ttfb_ms", "loaded_ttfb_ms"] {
            let p50 = c[phase]["p50"].as_f64().unwrap();
            assert!(p50 > 0.0 && p50 <= c[phase]["max"].as_f64().unwrap(), "{c}");
        }
    }
    // every request of both phases and the bulk download are rows
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["failed"] == 0));
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_lab_produces_sane_results() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    // A relative --out, as `scripts/lab.sh` passes by default (`lab-results`):
    // nginx runs in its own prefix and once resolved a relative log path
    // against it. Relative to the package root: the workspace's ignored target/.
    let out = PathBuf::from(format!("../../target/swlab-test-{}", std::process::id()));
    let mut configs = "e2e,nosplit".to_string();
    let bin = splitway_bin();
    if bin.is_some() {
        configs.push_str(",splitway");
    } else {
        eprintln!("note: no splitway binary found; testing without the splitway configuration");
    }
    let rtt = RTTS.map(|r| r.to_string()).join(",");
    let mut argv = vec![
        "lab".to_string(),
        "--quick".into(),
        "--configs".into(),
        configs.clone(),
        "--rtt".into(),
        rtt,
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(b) = &bin {
        argv.push("--splitway-bin".into());
        argv.push(b.display().to_string());
    }
    let cli = Cli::try_parse_from(&argv).expect("arguments parse");
    splitway_lab::run(cli.lab).expect("the quick lab runs");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let links = json["topology"]["links"].as_array().unwrap();
    assert_eq!(links.len(), 3);
    assert_eq!(links[0]["a"], "client");
    assert_eq!(links[1]["rtt_ms"], 12.0);
    let emu = &json["emulation"];
    assert_eq!(emu["links"].as_array().unwrap().len(), 3);
    for l in emu["links"].as_array().unwrap() {
        let m = l["rtt_ms_measured"].as_f64().unwrap();
        let c = l["rtt_ms_configured"].as_f64().unwrap();
        assert!((m - c).abs() < 3.0, "link RTT measured {m} vs {c}");
    }
    assert!(emu["throughput_mbit"].as_f64().unwrap() > 20.0);

    let sum: f64 = RTTS.iter().sum();
    let results = json["results"].as_array().unwrap();
    let nconf = configs.split(',').count();
    assert_eq!(results.len(), nconf * 2, "two sizes per configuration");
    for r in results {
        let runs = r["runs"].as_u64().unwrap();
        assert_eq!(runs, 3, "{r}");
        let ttfb = r["ttfb_ms"]["median"].as_f64().unwrap();
        let total = r["total_ms"]["median"].as_f64().unwrap();
        assert!(r["ttfb_ms"]["p90"].as_f64().unwrap() >= ttfb);
        assert!(total >= ttfb);
        assert!(ttfb < 2000.0, "{r}");
        if r["config"] == "e2e" || r["config"] == "nosplit" {
            // handshake + request/response: two end-to-end round trips at least
            assert!(ttfb >= 2.0 * sum - 0.5, "e2e TTFB {ttfb} < 2 x {sum}");
        } else {
            // any split still needs r1 + R
            assert!(
                ttfb >= RTTS[0] + sum - 0.5,
                "{}: TTFB {ttfb} below the bound",
                r["config"]
            );
        }
    }
    let bounds = json["bounds"].as_array().unwrap();
    assert_eq!(bounds.len(), 2);
    assert_eq!(bounds[0]["size_bytes"], 10240);
    assert!((bounds[0]["ttfb_ms"].as_f64().unwrap() - (RTTS[0] + sum)).abs() < 1e-9);
    assert!(out.join("ttfb.svg").exists() && out.join("download.svg").exists());
    // nothing left behind
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains("swlab-"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_web_https_and_chromium() {
    if !ready() {
        return;
    }
    if !splitway_lab::host::have("chromium") {
        eprintln!("skipped: no chromium (scripts/install-deps.sh installs it)");
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab("web", &["--scenario", "web", "--quick"]);
    let j = read_json(out.join("web.json"));
    let cfgs = j["analysis"]["configs"].as_array().unwrap();
    assert_eq!(cfgs.len(), 2);
    for c in cfgs {
        let pages = c["pages"].as_array().unwrap();
        assert_eq!(pages.len(), 2, "{}: {}", c["config"], c["failures"]);
        for p in pages {
            // every object loaded; the load event after the first byte
            assert!(p["resources"].as_u64().unwrap() >= 38);
            assert!(p["plt"].as_f64().unwrap() > p["ttfb"].as_f64().unwrap());
            // HTTPS over the 20 ms path: TCP + TLS 1.3 handshakes before the first byte
            assert!(p["ttfb"].as_f64().unwrap() > 20.0, "{p}");
        }
        assert!(c["curl_https_ttfb_ms"]["median"].as_f64().unwrap() > 20.0);
    }
    for s in j["analysis"]["screenshots"].as_array().unwrap() {
        assert!(s["bytes"].as_u64().unwrap() > 10_000, "screenshot {s}");
    }
    assert!(out.join("web-plt.svg").exists());
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn quick_modules_shrink_the_long_link_and_keep_every_byte() {
    if !ready() {
        return;
    }
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let out = run_lab("modules", &["--scenario", "modules", "--quick"]);
    let j = read_json(out.join("modules.json"));
    let a = &j["analysis"];
    let c = &a["contents"];
    assert!(c["files_changed"].as_u64().unwrap() >= 1);
    assert_ne!(c["corpus"]["sha256"], c["changed"]["sha256"]);
    // every download arrived whole (size and SHA-256 checked by the lab)
    let downloads = a["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 2 * 4 * 2, "2 rounds x 4 kinds x 2 configs");
    for d in downloads {
        assert!(d["error"].is_null(), "{d}");
    }
    let cmp = a["comparison"].as_array().unwrap();
    let wire = |kind: &str, config: &str| -> f64 {
        cmp.iter()
            .find(|r| r["kind"] == kind && r["config"] == config)
            .and_then(|r| r["wire_vs_size"].as_f64())
            .unwrap_or_else(|| panic!("no wire bytes for {kind} {config}"))
    };
    // without modules every byte crosses the long link (plus headers)
    for kind in ["random", "corpus", "again", "changed"] {
        let w = wire(kind, "splitway");
        assert!((1.0..1.15).contains(&w), "{kind} without modules: {w}");
    }
    // with them: random passes (≤ 3 % more), the corpus shrinks, its
    // repeat crosses as references, its new version mostly too
    assert!(wire("random", "splitway+modules") < 1.15);
    let corpus = wire("corpus", "splitway+modules");
    let again = wire("again", "splitway+modules");
    let changed = wire("changed", "splitway+modules");
    // The long link is the bottleneck: the corpus crosses at 0.36-0.38 of
    // its size and arrives within issue 13's goal, half the ideal pipe's
    // time (0.44-0.45 on a loaded host with the emulation flagged,
    // 2026-12-04). This short path (12 ms) does not show the controller
    // fault of 2026-12-03 (a full window read as idle: 0.47-0.66 of the
    // size on the 215 ms path, 0.39 here); the unit tests in
    // splitway-modules' compress::adapt replay that leg.
    assert!(corpus < 0.45, "corpus {corpus}");
    let corpus_time = cmp
        .iter()
        .find(|r| r["kind"] == "corpus" && r["config"] == "splitway+modules")
        .and_then(|r| r["vs_bound"].as_f64())
        .expect("corpus time vs the bound");
    assert!(corpus_time <= 0.5, "corpus {corpus_time} x the bound");
    // (0.31-0.34 with a flush per read; ~0.05 typical, one odd round in 2)
    assert!(again < 0.2, "again {again}");
    assert!(
        changed < 0.5 * corpus,
        "changed {changed} vs corpus {corpus}"
    );
    no_namespace_left();
    let _ = std::fs::remove_dir_all(&out);
}
