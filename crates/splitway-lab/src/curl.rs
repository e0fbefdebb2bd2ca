//! The client: the real `curl` in the `client` namespace, one process (and so
//! one fresh connection) per run, or one process for a burst of parallel
//! downloads (a connection each); times are curl's own
//! (`time_starttransfer`, `time_total`, per download).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::testbed::Testbed;

/// One download as curl saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub connect_ms: f64,
    pub ttfb_ms: f64,
    pub total_ms: f64,
}

/// curl's `-w` format that [`parse_output`] reads.
pub const FORMAT: &str =
    "%{http_code} %{time_connect} %{time_starttransfer} %{time_total} %{size_download}\\n";

/// Parse curl's `-w` output: code, connect, starttransfer, total (seconds), bytes.
pub fn parse_output(out: &str, expect_bytes: u64) -> Result<Sample> {
    let f: Vec<&str> = out.split_whitespace().collect();
    if f.len() != 5 {
        bail!("unexpected curl output {out:?}");
    }
    if f[0] != "200" {
        bail!("HTTP status {}", f[0]);
    }
    let num = |s: &str| -> Result<f64> {
        s.parse::<f64>()
            .map_err(|_| anyhow!("bad number {s:?} in curl output"))
    };
    let bytes = num(f[4])? as u64;
    if bytes != expect_bytes {
        bail!("downloaded {bytes} bytes, expected {expect_bytes}");
    }
    Ok(Sample {
        connect_ms: num(f[1])? * 1e3,
        ttfb_ms: num(f[2])? * 1e3,
        total_ms: num(f[3])? * 1e3,
    })
}

/// Download `url` once from the client; fails on non-200 or short body.
pub fn fetch(tb: &Testbed, url: &str, size: u64, timeout: Duration) -> Result<Sample> {
    let child = spawn(tb, url, None, &[], timeout)?;
    finish(child, url, size, timeout)
}

/// Start one download from the client (from address `source`, if given;
/// `extra` curl arguments, e.g. `--cacert`), without waiting.
pub fn spawn(
    tb: &Testbed,
    url: &str,
    source: Option<&str>,
    extra: &[&str],
    timeout: Duration,
) -> Result<std::process::Child> {
    let mut cmd = tb.command("client", "curl");
    cmd.args([
        "-s",
        "-S",
        "-o",
        "/dev/null",
        "--max-time",
        &format!("{}", timeout.as_secs().max(1)),
        "-w",
        FORMAT,
    ]);
    if let Some(a) = source {
        cmd.args(["--interface", a]);
    }
    cmd.args(extra);
    cmd.arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().context("running curl")
}

/// Wait for a download started by [`spawn`] and read its times.
pub fn finish(
    child: std::process::Child,
    url: &str,
    size: u64,
    timeout: Duration,
) -> Result<Sample> {
    let out = wait(child, url, timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "curl {url}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    parse_output(&stdout, size).with_context(|| format!("curl {url}"))
}

/// Start `n` downloads of `url` at once in one curl process (`--parallel
/// --parallel-immediate`: a connection each, all opened together), from
/// address `source`: a burst of clients without `n` processes competing for
/// the client's CPU while they start.
pub fn spawn_parallel(
    tb: &Testbed,
    url: &str,
    n: usize,
    source: &str,
    timeout: Duration,
) -> Result<std::process::Child> {
    let mut cmd = tb.command("client", "curl");
    cmd.args([
        "-s",
        "-S",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        &n.max(1).to_string(),
        "--max-time",
        &format!("{}", timeout.as_secs().max(1)),
        "--interface",
        source,
        "-w",
        FORMAT,
    ]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().context("running curl --parallel")
}

/// Wait for the downloads started by [`spawn_parallel`]: one result per
/// download (a download curl did not report is a failure too).
pub fn finish_parallel(
    child: std::process::Child,
    url: &str,
    n: usize,
    size: u64,
    timeout: Duration,
) -> Result<Vec<Result<Sample>>> {
    let out = wait(child, url, timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(parse_lines(
        &stdout,
        n,
        size,
        &format!("curl {url}"),
        stderr.trim(),
    ))
}

/// One result per `-w` line of a parallel curl, then a failure for each of
/// the `n` downloads it did not report.
fn parse_lines(stdout: &str, n: usize, size: u64, what: &str, stderr: &str) -> Vec<Result<Sample>> {
    let mut got: Vec<Result<Sample>> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_output(l, size).with_context(|| what.to_string()))
        .collect();
    while got.len() < n {
        got.push(Err(anyhow!("{what}: no report ({stderr})")));
    }
    got
}

/// Wait for a curl process (killing it past `timeout` + 5 s, or when the lab
/// is stopping) and collect its output.
fn wait(
    mut child: std::process::Child,
    url: &str,
    timeout: Duration,
) -> Result<std::process::Output> {
    let deadline = Instant::now() + timeout + Duration::from_secs(5);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if crate::host::stopping() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            crate::host::check_stop()?;
            bail!("curl {url} did not finish");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child.wait_with_output()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_write_out() {
        let s = parse_output("200 0.033 0.548123 0.549 10240\n", 10240).unwrap();
        assert!((s.ttfb_ms - 548.123).abs() < 1e-6);
        assert!((s.connect_ms - 33.0).abs() < 1e-9);
        assert!(parse_output("404 0.1 0.2 0.3 10", 10).is_err());
        assert!(parse_output("200 0.1 0.2 0.3 10", 11).is_err());
        assert!(parse_output("garbage", 11).is_err());
    }

    #[test]
    fn a_parallel_run_reports_every_download() {
        let out = "200 0.03 0.31 0.32 100\n000 0 0 1.5 0\n\n200 0.04 0.33 0.35 100\n";
        let r = parse_lines(out, 4, 100, "curl x", "timed out");
        assert_eq!(r.len(), 4);
        assert!((r[0].as_ref().unwrap().ttfb_ms - 310.0).abs() < 1e-6);
        assert!(r[1].is_err(), "HTTP 000: a failed download");
        assert!(r[2].is_ok());
        let e = r[3].as_ref().unwrap_err().to_string();
        assert!(e.contains("no report") && e.contains("timed out"), "{e}");
    }
}
