//! What the lab touches on the host itself: the single-instance lock, the
//! Ctrl-C/TERM flag, the allowed congestion controls (changed only if needed
//! and restored, even after a crash: a note in /run is replayed next start),
//! and the Debian tools the lab drives.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

const LOCK_PATH: &str = "/run/splitway-lab.lock";
const RESTORE_NOTE: &str = "/run/splitway-lab.restore";
const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
const AVAILABLE_CC: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";

/// Holds `/run/splitway-lab.lock` (flock) for the life of the lab.
pub struct Lock {
    _lock: nix::fcntl::Flock<File>,
}

impl Lock {
    pub fn acquire() -> Result<Lock> {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOCK_PATH)
            .with_context(|| format!("cannot open {LOCK_PATH} (the lab must run as root)"))?;
        let mut holder = String::new();
        let _ = std::io::Read::read_to_string(&mut f, &mut holder);
        let mut lock = match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another `splitway lab` is running (pid {}, holding {LOCK_PATH}); wait for it or stop it",
                holder.trim_matches(|c: char| c.is_whitespace() || c == '\0')
            ),
            Err((_, e)) => bail!("cannot lock {LOCK_PATH}: {e}"),
        };
        let _ = lock.set_len(0);
        let _ = std::io::Seek::seek(&mut *lock, std::io::SeekFrom::Start(0));
        let _ = writeln!(&mut *lock, "{}", std::process::id());
        Ok(Lock { _lock: lock })
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Route SIGINT and SIGTERM to a flag that the lab polls; cleanup then runs
/// through the normal drop path.
pub fn install_signal_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &act) }.with_context(|| format!("installing a {sig} handler"))?;
    }
    Ok(())
}

/// Has Ctrl-C or SIGTERM arrived?
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fail with a clear error if the lab was asked to stop.
pub fn check_stop() -> Result<()> {
    if stopping() {
        bail!("interrupted");
    }
    Ok(())
}

/// Makes a congestion control usable inside namespaces (a namespace may only
/// pick one listed in the host's allowed list) and restores the list on drop.
pub struct CongestionGuard {
    original: Option<String>,
}

impl CongestionGuard {
    pub fn ensure(cc: &str) -> Result<CongestionGuard> {
        replay_restore_note();
        let available = std::fs::read_to_string(AVAILABLE_CC).unwrap_or_default();
        if !available.split_whitespace().any(|c| c == cc) {
            bail!(
                "congestion control {cc:?} is not available on this kernel (available: {})",
                available.trim()
            );
        }
        let allowed = std::fs::read_to_string(ALLOWED_CC)
            .context("reading the allowed congestion controls")?;
        let allowed = allowed.trim().to_string();
        if allowed.split_whitespace().any(|c| c == cc) {
            return Ok(CongestionGuard { original: None });
        }
        std::fs::write(RESTORE_NOTE, &allowed)
            .with_context(|| format!("writing {RESTORE_NOTE}"))?;
        let new = format!("{allowed} {cc}");
        std::fs::write(ALLOWED_CC, &new)
            .with_context(|| format!("adding {cc} to net.ipv4.tcp_allowed_congestion_control"))?;
        eprintln!("lab: net.ipv4.tcp_allowed_congestion_control: {allowed:?} -> {new:?} (restored on exit)");
        Ok(CongestionGuard {
            original: Some(allowed),
        })
    }
}

impl Drop for CongestionGuard {
    fn drop(&mut self) {
        if let Some(orig) = self.original.take() {
            if std::fs::write(ALLOWED_CC, &orig).is_ok() {
                let _ = std::fs::remove_file(RESTORE_NOTE);
            }
        }
    }
}

/// A previous lab died before restoring the host: do it now.
fn replay_restore_note() {
    if let Ok(orig) = std::fs::read_to_string(RESTORE_NOTE) {
        if !orig.trim().is_empty() && std::fs::write(ALLOWED_CC, orig.trim()).is_ok() {
            eprintln!("lab: restored net.ipv4.tcp_allowed_congestion_control to {:?} (left by a crashed lab)", orig.trim());
        }
        let _ = std::fs::remove_file(RESTORE_NOTE);
    }
}

/// Is `prog` on PATH (or an existing absolute path)?
pub fn have(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(prog).is_file())
}

/// Make sure the programs are there; install missing ones from Debian.
pub fn ensure_tools(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut pkgs = missing.clone();
    pkgs.sort_unstable();
    pkgs.dedup();
    eprintln!(
        "lab: installing missing Debian packages: {}",
        pkgs.join(" ")
    );
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let still: Vec<&str> = needed
        .iter()
        .filter(|(p, _)| !have(p))
        .map(|(p, _)| *p)
        .collect();
    if !ok || !still.is_empty() {
        bail!(
            "missing programs {:?}; install them with `apt-get update && apt-get install {}`",
            still,
            pkgs.join(" ")
        );
    }
    Ok(())
}

/// Resolve a program to its absolute path (sshd insists on one).
pub fn which(prog: &str) -> String {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(prog);
        if p.is_file() {
            return p.display().to_string();
        }
    }
    prog.to_string()
}
