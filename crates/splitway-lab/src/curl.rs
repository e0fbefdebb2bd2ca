//! The client: the real `curl` in the `client` namespace, one process (and so
//! one fresh connection) per run; times are curl's own (`time_starttransfer`,
//! `time_total`).

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
    prepare(tb, source, extra, timeout)?.go(url)
}

/// A curl process that has started (exec, libraries, its set-up) and waits
/// for its URL on stdin (`-K -`, a config read to its end before any
/// transfer). Many downloads prepared first and then released with
/// [`Ready::go`] start within a few milliseconds of each other, however
/// long a hundred process start-ups take on the lab's cores.
pub struct Ready {
    child: std::process::Child,
}

/// Start curl in the client namespace, waiting for [`Ready::go`].
pub fn prepare(
    tb: &Testbed,
    source: Option<&str>,
    extra: &[&str],
    timeout: Duration,
) -> Result<Ready> {
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
        "-K",
        "-",
    ]);
    if let Some(a) = source {
        cmd.args(["--interface", a]);
    }
    cmd.args(extra);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().context("running curl")?;
    Ok(Ready { child })
}

impl Ready {
    /// Give curl its URL: the download starts now.
    pub fn go(mut self, url: &str) -> Result<std::process::Child> {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().context("curl's stdin")?;
        let line = format!(
            "url = \"{}\"\n",
            url.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Err(e) = stdin.write_all(line.as_bytes()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(e).context("giving curl its URL");
        }
        drop(stdin);
        Ok(self.child)
    }
}

/// Wait for a download started by [`spawn`] and read its times.
pub fn finish(
    mut child: std::process::Child,
    url: &str,
    size: u64,
    timeout: Duration,
) -> Result<Sample> {
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
    let out = child.wait_with_output()?;
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
}
