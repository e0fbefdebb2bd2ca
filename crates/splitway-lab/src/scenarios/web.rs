//! `web`: HTTPS and a real browser.
//!
//! nginx serves, over TLS 1.3 only with a certificate made for this run (a
//! per-run CA signs a server certificate for the server's addresses), a page
//! shaped like a median web page: HTML, 4 style sheets, 10 scripts and 24
//! images, about 2.5 MB in 39 requests, over HTTP/1.1 with keep-alive, so the
//! browser opens several connections. Headless Chromium (Debian's) loads it
//! end to end and through splitway, each run with a fresh profile; the page
//! writes its own Navigation Timing (load event, response start,
//! DOMContentLoaded, resources) into the DOM, which `--dump-dom` returns.
//! curl's HTTPS TTFB of the HTML (trusting the per-run CA) runs beside it,
//! and one screenshot per configuration proves the page rendered. Chromium
//! trusts the server certificate by its public key
//! (`--ignore-certificate-errors-spki-list`), curl by the CA (`--cacert`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::{fmt_ms, print_table, start_arms};
use crate::configs::Running;
use crate::report::lines::{self, Chart, Series};
use crate::report::scenario::{ChainOut, Row, ScenarioReport};
use crate::report::SampleOut;
use crate::session::{Chain, Session};
use crate::stats::{quantile, summarize};
use crate::topology::Topology;
use crate::LabArgs;

/// The page's objects: (path, bytes) besides the HTML.
pub fn objects() -> Vec<(String, usize)> {
    let mut v = Vec::new();
    for i in 0..4 {
        v.push((format!("/css/s{i}.css"), 16_000 + 4_000 * i));
    }
    for i in 0..10 {
        v.push((format!("/js/a{i}.js"), 30_000 + 5_000 * i));
    }
    for i in 0..24 {
        v.push((format!("/img/i{i}.svg"), 20_000 + 5_000 * i));
    }
    v
}

/// Filler text of `n` bytes (deterministic, printable, not very compressible).
fn filler(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 8 == 7 {
                ' '
            } else {
                (b'a' + (x % 26) as u8) as char
            }
        })
        .collect()
}

/// Write the page and its objects under `root`; returns the HTML's size.
pub fn write_page(root: &Path) -> Result<u64> {
    for d in ["css", "js", "img"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let mut head = String::new();
    let mut body = String::new();
    for (i, (path, size)) in objects().into_iter().enumerate() {
        let seed = i as u64 + 7;
        let text = if path.ends_with(".css") {
            head.push_str(&format!("<link rel=\"stylesheet\" href=\"{path}\">\n"));
            let rule = format!(".c{i} {{ color: #{:06x}; margin: 2px; }}\n", i * 40_000);
            format!(
                "{rule}/* {} */\n",
                filler(size.saturating_sub(rule.len() + 7), seed)
            )
        } else if path.ends_with(".js") {
            body.push_str(&format!("<script src=\"{path}\"></script>\n"));
            format!(
                "var swlab_{i} = \"{}\";\n",
                filler(size.saturating_sub(20), seed)
            )
        } else {
            body.push_str(&format!(
                "<img src=\"{path}\" width=\"160\" height=\"100\" alt=\"image {i}\">\n"
            ));
            let hue = (i * 37) % 360;
            let svg = format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"160\" height=\"100\">\
                 <rect width=\"160\" height=\"100\" fill=\"hsl({hue},60%,60%)\"/>\
                 <text x=\"10\" y=\"55\" font-size=\"20\">object {i}</text></svg>\n"
            );
            format!(
                "{svg}<!-- {} -->\n",
                filler(size.saturating_sub(svg.len() + 10), seed)
            )
        };
        std::fs::write(root.join(path.trim_start_matches('/')), text)?;
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>splitway lab page</title>\n{head}</head>\n<body>\n\
         <h1>splitway lab: a median-shaped web page</h1>\n{body}<p style=\"font-size:8px\">{}</p>\n\
         <script>\naddEventListener('load', function () {{\n  var t = performance.getEntriesByType('navigation')[0];\n  \
         var d = document.createElement('pre'); d.id = 'swlab-timing';\n  \
         d.textContent = 'SWLAB ' + JSON.stringify({{plt: t.loadEventStart - t.startTime, ttfb: t.responseStart - t.startTime, \
         dcl: t.domContentLoadedEventStart - t.startTime, resources: performance.getEntriesByType('resource').length}});\n  \
         document.body.appendChild(d);\n}});\n</script>\n</body></html>\n",
        filler(28_000, 1)
    );
    std::fs::write(root.join("index.html"), &html)?;
    Ok(html.len() as u64)
}

/// The Navigation Timing the page wrote into its DOM.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PageTiming {
    pub plt: f64,
    pub ttfb: f64,
    pub dcl: f64,
    pub resources: u64,
}

/// Find `SWLAB {...}` in the dumped DOM.
pub fn parse_timing(dom: &str) -> Option<PageTiming> {
    let i = dom.find("SWLAB {")?;
    let rest = &dom[i + 6..];
    let end = rest.find('}')?;
    let v: serde_json::Value = serde_json::from_str(&rest[..=end]).ok()?;
    Some(PageTiming {
        plt: v["plt"].as_f64()?,
        ttfb: v["ttfb"].as_f64()?,
        dcl: v["dcl"].as_f64()?,
        resources: v["resources"].as_u64()?,
    })
}

fn run_cmd(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Per-run CA and server certificate for `ips`; returns (cert, key, ca,
/// base64 SHA-256 of the server's public key).
fn make_certs(dir: &Path, ips: &[String]) -> Result<(PathBuf, PathBuf, PathBuf, String)> {
    std::fs::create_dir_all(dir)?;
    let p = |f: &str| dir.join(f).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_cmd(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &p("ca.key"), "-out", &p("ca.pem"), "-days", "2"])
            .args(["-subj", "/CN=splitway lab CA (this run only)"]),
        "openssl (CA)",
    )?;
    run_cmd(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-keyout", &p("server.key"), "-out", &p("server.csr")])
            .args(["-subj", "/CN=splitway lab server"]),
        "openssl (server key)",
    )?;
    let san: Vec<String> = ips.iter().map(|i| format!("IP:{i}")).collect();
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
            san.join(",")
        ),
    )?;
    run_cmd(
        Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("server.pem"),
            "-days",
            "2",
            "-extfile",
            &p("ext.cnf"),
        ]),
        "openssl (sign)",
    )?;
    let spki = run_cmd(
        Command::new("sh").args([
            "-c",
            &format!(
                "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
                p("server.pem")
            ),
        ]),
        "openssl (public key hash)",
    )?;
    Ok((
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
        spki.trim().to_string(),
    ))
}

/// Run Chromium in the client namespace with the mandated flags; returns stdout.
fn chromium(
    chain: &Chain,
    profile: &Path,
    spki: &str,
    extra: &[&str],
    url: &str,
    timeout: Duration,
) -> Result<String> {
    let _ = std::fs::remove_dir_all(profile);
    std::fs::create_dir_all(profile)?;
    let mut cmd = chain.tb.command("client", &crate::host::which("chromium"));
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        &format!("--user-data-dir={}", profile.display()),
        &format!("--ignore-certificate-errors-spki-list={spki}"),
    ])
    .args(extra)
    .arg(url)
    .env("HOME", profile)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting chromium")?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if crate::host::stopping() || Instant::now() > deadline {
            // its own process group: stop the browser and its helpers
            // SAFETY: kill(2) on the group we created for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            crate::host::check_stop()?;
            bail!("chromium did not finish loading {url} in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pgid = child.id() as i32;
    let out = child.wait_with_output()?;
    // SAFETY: kill(2) on the group we created: helpers the browser left.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(args: &LabArgs) -> Result<()> {
    let runs = args.runs_or(10, 2)?;
    let topo = if args.quick && args.topology.is_none() && args.rtt.is_none() {
        Topology::chain(&[4.0, 12.0, 4.0], 100.0)
    } else {
        args.topology()?
    };
    if topo.relays() == 0 {
        bail!("--scenario web compares end to end with splitway: the path needs a relay");
    }
    let sess = Session::open(args, &[("chromium", "chromium"), ("openssl", "openssl")])?;
    let web = sess.work.0.join("web");
    let root = web.join("www");
    std::fs::create_dir_all(&root)?;
    let html_bytes = write_page(&root)?;
    let plan = topo.plan();
    let ips: Vec<String> = std::iter::once(plan.server_addr())
        .chain((0..4).map(|n| plan.server_alias(n)))
        .map(|a| a.to_string())
        .collect();
    let (cert, key, ca, spki) = make_certs(&web.join("tls"), &ips)?;
    let servers = format!(
        "    server {{\n        listen 443 ssl backlog=4096;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
         ssl_protocols TLSv1.3;\n        keepalive_timeout 65;\n        \
         types {{ text/html html; text/css css; text/javascript js; image/svg+xml svg; }}\n        root {};\n    }}\n",
        cert.display(),
        key.display(),
        root.display()
    );
    let chains = vec![sess.chain_with("", &topo, &[], &servers)?];
    let running = start_arms(&sess, &chains, &[(0, "e2e"), (0, "splitway")])?;
    let https = |r: &Running| {
        format!(
            "https://{}/index.html",
            r.base_url.trim_start_matches("http://")
        )
    };
    let ca_s = ca.display().to_string();
    let nobj = objects().len() as u64;
    let mut pages: Vec<Vec<PageTiming>> = vec![Vec::new(); running.len()];
    let mut curls: Vec<Vec<crate::curl::Sample>> = vec![Vec::new(); running.len()];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); running.len()];
    let mut progress = crate::runner::Progress::new(runs * running.len());
    let mut stopped = None;
    'outer: for r in 0..runs {
        for k in 0..running.len() {
            let a = (k + r) % running.len();
            let url = https(&running[a]);
            progress.show(&format!("{} run {}", running[a].name, r + 1), None);
            if crate::host::stopping() {
                stopped = Some("interrupted".to_string());
                break 'outer;
            }
            if !sess.keep_tcp_metrics {
                chains[0].tb.flush_tcp_metrics();
            }
            let profile = web.join(format!("profile-{a}"));
            match chromium(
                &chains[0],
                &profile,
                &spki,
                &["--dump-dom"],
                &url,
                Duration::from_secs(90),
            )
            .and_then(|dom| {
                parse_timing(&dom).with_context(|| {
                    format!(
                        "no timing in the page Chromium loaded ({} bytes of DOM)",
                        dom.len()
                    )
                })
            }) {
                Ok(t) if t.resources >= nobj => pages[a].push(t),
                Ok(t) => failures[a].push(format!(
                    "page loaded only {} of {nobj} objects",
                    t.resources
                )),
                Err(e) => {
                    eprintln!("lab: {} run {}: {e:#}", running[a].name, r + 1);
                    failures[a].push(format!("{e:#}"));
                }
            }
            if !sess.keep_tcp_metrics {
                chains[0].tb.flush_tcp_metrics();
            }
            match crate::curl::spawn(
                &chains[0].tb,
                &url,
                None,
                &["--cacert", &ca_s],
                sess.timeout,
            )
            .and_then(|c| crate::curl::finish(c, &url, html_bytes, sess.timeout))
            {
                Ok(s) => curls[a].push(s),
                Err(e) => failures[a].push(format!("curl: {e:#}")),
            }
            progress.done += 1;
        }
    }
    progress.finish();
    // One screenshot per configuration: the page rendered.
    let mut shots = Vec::new();
    for r in &running {
        let png = sess.out.join(format!("web-{}.png", r.name));
        let _ = std::fs::remove_file(&png);
        let shot = chromium(
            &chains[0],
            &web.join("profile-shot"),
            &spki,
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1280,1400",
            ],
            &https(r),
            Duration::from_secs(90),
        );
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = &shot {
            eprintln!("lab: screenshot {}: {e:#}", r.name);
        }
        shots.push(json!({"config": r.name, "file": png.display().to_string(), "bytes": size}));
    }

    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut analysis = Vec::new();
    for (a, r) in running.iter().enumerate() {
        let plt: Vec<f64> = pages[a].iter().map(|t| t.plt).collect();
        let nav_ttfb: Vec<f64> = pages[a].iter().map(|t| t.ttfb).collect();
        let dcl: Vec<f64> = pages[a].iter().map(|t| t.dcl).collect();
        let c_ttfb: Vec<f64> = curls[a].iter().map(|s| s.ttfb_ms).collect();
        table.push(vec![
            r.name.to_string(),
            pages[a].len().to_string(),
            failures[a].len().to_string(),
            fmt_ms(quantile(&plt, 0.5)),
            format!(
                "{}–{}",
                fmt_ms(quantile(&plt, 0.1)),
                fmt_ms(quantile(&plt, 0.9))
            ),
            fmt_ms(quantile(&dcl, 0.5)),
            fmt_ms(quantile(&nav_ttfb, 0.5)),
            fmt_ms(quantile(&c_ttfb, 0.5)),
        ]);
        analysis.push(json!({
            "config": r.name,
            "page_load_ms": summarize(&plt), "dom_content_loaded_ms": summarize(&dcl),
            "navigation_ttfb_ms": summarize(&nav_ttfb), "curl_https_ttfb_ms": summarize(&c_ttfb),
            "curl_https_total_ms": summarize(&curls[a].iter().map(|s| s.total_ms).collect::<Vec<_>>()),
            "pages": pages[a], "failures": failures[a],
        }));
        let samples = pages[a]
            .iter()
            .map(|t| SampleOut {
                connect_ms: f64::NAN,
                ttfb_ms: t.ttfb,
                total_ms: t.plt,
            })
            .collect();
        let b = topo.bounds(html_bytes);
        rows.push(Row::new(
            "",
            "chromium",
            r.name,
            b,
            samples,
            failures[a].clone(),
        ));
    }
    print_table(
        &format!(
            "headless Chromium, HTTPS (TLS 1.3), {} objects + HTML; medians over {runs} runs, ms",
            nobj
        ),
        &[
            "config",
            "pages",
            "failed",
            "page load",
            "p10–p90",
            "DOMContentLoaded",
            "nav TTFB",
            "curl HTTPS TTFB",
        ],
        &table,
    );
    drop(running);
    let rep = ScenarioReport::new(
        "web",
        sess.lab_info(runs, &[html_bytes], stopped.is_some()),
        chains.iter().map(ChainOut::of).collect(),
        rows,
        json!({
            "objects": nobj + 1,
            "page_bytes": html_bytes + objects().iter().map(|o| o.1 as u64).sum::<u64>(),
            "configs": analysis, "screenshots": shots,
        }),
    );
    let json_path = rep.write_json(&sess.out)?;
    let mut c = Chart {
        title: "Headless Chromium, HTTPS: page load time per run (load event, Navigation Timing)"
            .into(),
        x_label: "page load time (ms)".into(),
        y_label: "share of runs done".into(),
        ..Default::default()
    };
    for row in &rep.rows {
        let v = row.samples.iter().map(|s| s.total_ms);
        c.series
            .push(Series::cdf(&row.config, v, row.config == "e2e"));
    }
    let chart = lines::write(&c, &sess.out, "web-plt.svg")?;
    drop(chains);
    // the screenshots are in the same folder, one per configuration
    rep.finish(&sess, &json_path, &[chart], stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_median_shaped_and_timing_parses() {
        let dir = std::env::temp_dir().join(format!("swlab-web-{}", std::process::id()));
        let html = write_page(&dir).unwrap();
        assert!(html > 28_000);
        let total: usize = objects().iter().map(|o| o.1).sum();
        assert!((1_500_000..3_000_000).contains(&total), "{total} bytes");
        assert_eq!(objects().len(), 38);
        for (p, size) in objects() {
            let got = std::fs::metadata(dir.join(p.trim_start_matches('/')))
                .unwrap()
                .len() as usize;
            assert!(got.abs_diff(size) < 200, "{p}: {got} vs {size}");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let dom = "<pre id=\"swlab-timing\">SWLAB {\"plt\":812.5,\"ttfb\":310.1,\"dcl\":700,\"resources\":38}</pre>";
        assert_eq!(
            parse_timing(dom),
            Some(PageTiming {
                plt: 812.5,
                ttfb: 310.1,
                dcl: 700.0,
                resources: 38
            })
        );
        assert_eq!(parse_timing("<html></html>"), None);
    }
}
