//! Profiling the relay under a load: `perf stat` event counts (syscalls by
//! name, context switches, CPU time) and optionally `perf record -g` call
//! graphs, attached to the relay's processes and enabled only for the
//! measured window (`-D -1` plus a control fifo), so counts divide exactly
//! by what the window moved (bytes, connections, exchanges).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Events counted by `--perf-stat` unless others are given: every syscall
/// (`raw_syscalls:sys_enter`), the ones a relay makes by name, context
/// switches (a switch out is a sleep: each is one wake-up later) and CPU
/// time.
pub const DEFAULT_EVENTS: &[&str] = &[
    "task-clock",
    "context-switches",
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_splice",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_accept4",
    "syscalls:sys_enter_connect",
    "syscalls:sys_enter_socket",
    "syscalls:sys_enter_close",
    "syscalls:sys_enter_shutdown",
    "syscalls:sys_enter_setsockopt",
    "syscalls:sys_enter_getsockopt",
    "syscalls:sys_enter_getsockname",
    "syscalls:sys_enter_getpeername",
    "syscalls:sys_enter_fcntl",
    "syscalls:sys_enter_ioctl",
    "syscalls:sys_enter_poll",
    "syscalls:sys_enter_ppoll",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_clock_gettime",
    "syscalls:sys_enter_timerfd_settime",
];

/// What to profile, from the command line.
#[derive(Debug, Clone, Default)]
pub struct PerfOpts {
    /// `perf stat` these events (empty: not at all).
    pub stat_events: Vec<String>,
    /// `perf record -g` into this directory (one file per relay, test and
    /// round).
    pub record_dir: Option<PathBuf>,
}

impl PerfOpts {
    pub fn active(&self) -> bool {
        !self.stat_events.is_empty() || self.record_dir.is_some()
    }
}

/// One `perf` process attached, disabled until [`Attached::enable`].
struct One {
    child: Child,
    ctl: File,
    ack: BufReader<File>,
    out: PathBuf,
    stat: bool,
}

/// The perf processes of one window.
pub struct Attached {
    perfs: Vec<One>,
}

fn fifo(p: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(p);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; mkfifo only reads it.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context("mkfifo");
    }
    Ok(())
}

fn spawn(args: &[String], pids: &[u32], dir: &Path, tag: &str, stat: bool) -> anyhow::Result<One> {
    let ctl = dir.join(format!("{tag}.ctl"));
    let ack = dir.join(format!("{tag}.ack"));
    fifo(&ctl)?;
    fifo(&ack)?;
    let out = dir.join(format!("{tag}.out"));
    let pidlist: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let mut c = Command::new("perf");
    c.args(args)
        .arg("-D")
        .arg("-1")
        .arg(format!(
            "--control=fifo:{},{}",
            ctl.display(),
            ack.display()
        ))
        .arg("-p")
        .arg(pidlist.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join(format!("{tag}.log")))?);
    if stat {
        c.arg("-x").arg(",").arg("-o").arg(&out);
    } else {
        c.arg("-o").arg(&out);
    }
    let child = c
        .spawn()
        .context("starting perf (apt-get install linux-perf)")?;
    // Opening blocks until perf has opened its end: perf is set up then.
    let ctl_f = OpenOptions::new().write(true).open(&ctl)?;
    let ack_f = BufReader::new(File::open(&ack)?);
    Ok(One {
        child,
        ctl: ctl_f,
        ack: ack_f,
        out,
        stat,
    })
}

impl One {
    fn command(&mut self, what: &str) -> anyhow::Result<()> {
        writeln!(self.ctl, "{what}")?;
        self.ctl.flush()?;
        let mut line = String::new();
        self.ack.read_line(&mut line)?;
        Ok(())
    }
}

impl Attached {
    /// Attach to `pids` (a relay's whole process tree); counting starts at
    /// [`Attached::enable`]. `tag` names the output files in `dir` (and in
    /// the record directory).
    pub fn start(o: &PerfOpts, pids: &[u32], dir: &Path, tag: &str) -> anyhow::Result<Attached> {
        let mut perfs = Vec::new();
        if !o.stat_events.is_empty() {
            let args = vec!["stat".into(), "-e".into(), o.stat_events.join(",")];
            perfs.push(spawn(&args, pids, dir, &format!("{tag}-stat"), true)?);
        }
        if let Some(rd) = &o.record_dir {
            std::fs::create_dir_all(rd)?;
            let args = vec![
                "record".into(),
                "-g".into(),
                "-F".into(),
                "2999".into(),
                "-q".into(),
            ];
            let mut one = spawn(&args, pids, dir, &format!("{tag}-record"), false)?;
            one.out = rd.join(format!("{tag}.data"));
            // perf record was given the path in dir; move it after.
            perfs.push(one);
        }
        Ok(Attached { perfs })
    }

    pub fn enable(&mut self) -> anyhow::Result<()> {
        for p in &mut self.perfs {
            p.command("enable")?;
        }
        Ok(())
    }

    pub fn disable(&mut self) -> anyhow::Result<()> {
        for p in &mut self.perfs {
            p.command("disable")?;
        }
        Ok(())
    }

    /// Stop perf; the event counts of `perf stat` (empty without it).
    pub fn finish(mut self, dir: &Path, tag: &str) -> anyhow::Result<BTreeMap<String, f64>> {
        let mut counts = BTreeMap::new();
        for p in &mut self.perfs {
            // SAFETY: signalling the perf we started.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGINT) };
            let end = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break;
                }
                if std::time::Instant::now() > end {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if p.stat {
                counts = parse_stat(&std::fs::read_to_string(&p.out).unwrap_or_default());
            } else {
                let written = dir.join(format!("{tag}-record.out"));
                let _ = std::fs::rename(&written, &p.out)
                    .or_else(|_| std::fs::copy(&written, &p.out).map(|_| ()));
            }
        }
        Ok(counts)
    }
}

/// `perf stat -x ,` lines: `value,unit,event,...`; `<not counted>` and
/// `<not supported>` are left out. Counts summed per event (several pids).
pub fn parse_stat(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(v) = f[0].parse::<f64>() else { continue };
        *m.entry(short(f[2])).or_insert(0.0) += v;
    }
    m
}

/// `syscalls:sys_enter_splice` → `splice`; `raw_syscalls:sys_enter` →
/// `syscalls`; others as they are.
pub fn short(ev: &str) -> String {
    if let Some(s) = ev.strip_prefix("syscalls:sys_enter_") {
        s.to_string()
    } else if ev == "raw_syscalls:sys_enter" {
        "syscalls".into()
    } else {
        ev.to_string()
    }
}

/// Counts divided by `units` (GB, connections, exchanges); task-clock
/// (ms in perf's output) becomes µs per unit.
pub fn per_unit(c: &BTreeMap<String, f64>, units: f64) -> BTreeMap<String, f64> {
    c.iter()
        .map(|(k, v)| {
            let v = if k == "task-clock" { v * 1000.0 } else { *v };
            (k.clone(), v / units.max(1e-9))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_stat_csv() {
        let t = "# started on x\n\n1234,,syscalls:sys_enter_splice,100,100.00,,\n\
                 <not counted>,,syscalls:sys_enter_poll,0,0.00,,\n\
                 5.5,msec,task-clock,100,100.00,0.9,CPUs utilized\n\
                 10,,raw_syscalls:sys_enter,1,100.00,,\n10,,raw_syscalls:sys_enter,1,100.00,,\n";
        let m = parse_stat(t);
        assert_eq!(m.get("splice"), Some(&1234.0));
        assert_eq!(m.get("poll"), None);
        assert_eq!(m.get("task-clock"), Some(&5.5));
        assert_eq!(m.get("syscalls"), Some(&20.0));
        let u = per_unit(&m, 2.0);
        assert_eq!(u.get("task-clock"), Some(&2750.0));
        assert_eq!(u.get("splice"), Some(&617.0));
    }
}
