//! End-to-end check of `splitway lab --quick` on a short path: builds the
//! namespaces, emulates the links, downloads through the configurations and
//! checks `results.json` for shape and sane numbers. Needs root (skipped
//! otherwise). The splitway configuration runs when a built `splitway` binary
//! sits next to this test's target directory (or `SPLITWAY_BIN` names one).

use std::path::PathBuf;

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

#[test]
fn quick_lab_produces_sane_results() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
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
