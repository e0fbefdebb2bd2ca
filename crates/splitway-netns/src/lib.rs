//! Network namespaces for splitway's lab and integration tests.
//!
//! Owns everything that builds throw-away hosts on one machine: named network
//! namespaces ([`Netns`]), veth links between them ([`link`]), running code or
//! commands inside one, and child processes that die with their guard
//! ([`ChildGuard`]). Every object removes what it created when dropped, so a
//! failing test still cleans up; [`sweep`] removes leftovers of a crashed run.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Errors from namespace and process handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setns into {ns}: {source}")]
    Setns {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("thread running in {0} panicked")]
    Panicked(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

pub type Result<T> = std::result::Result<T, NetnsError>;

/// Run a command to completion; a non-zero exit is an error carrying stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            cmd: desc,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Run `ip` with the given arguments.
pub fn ip<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(args))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A unique, short prefix for one test or lab run: `sw<pid>x<n>`.
///
/// Interface names are limited to 15 bytes, so prefixes stay short.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}{}", std::process::id() % 100_000, n)
}

/// A named network namespace that is deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `name`, replacing a stale namespace of the same name, with
    /// loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        let _ = ip(["netns", "del", name]);
        ip(["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `program args...` inside the namespace to completion.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command(program).args(args))
    }

    /// Run `ip args...` inside the namespace.
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Set a sysctl inside the namespace (`key` in dotted form).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", ["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Make this namespace a router: forwarding on for IPv4 and IPv6.
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Run `f` on a fresh thread that has entered this namespace and return
    /// its result. Sockets created inside `f` stay in the namespace after it
    /// returns, so tests can build listeners and clients here and use them
    /// anywhere.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let name = self.name.clone();
        let handle = std::thread::spawn(move || -> Result<T> {
            let file = File::open(&path).map_err(|source| NetnsError::Setns {
                ns: name.clone(),
                source,
            })?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Setns {
                    ns: name.clone(),
                    source: std::io::Error::from(e),
                }
            })?;
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| NetnsError::Panicked(self.name.clone()))?
    }

    /// Spawn `cmd` (built with [`Netns::command`]) and guard it.
    pub fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        ChildGuard::spawn(cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside, then delete the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Connect `a` and `b` with a veth pair named `a_if`/`b_if`, assign the given
/// addresses (CIDR strings, v4 or v6, any number) and bring both ends up.
pub fn link(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    ip([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(["-6", "addr", "add", addr, "dev", ifname, "nodad"])?;
            } else {
                ns.ip(["addr", "add", addr, "dev", ifname])?;
            }
        }
        ns.ip(["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Delete every namespace whose name starts with `prefix` (leftovers of a
/// run that was killed before its guards could drop).
pub fn sweep(prefix: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next() {
                if name.starts_with(prefix) {
                    drop(Netns {
                        name: name.to_string(),
                    });
                }
            }
        }
    }
}

/// A child process that is killed (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    desc: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let desc = describe(cmd);
        let child = cmd.spawn().map_err(|source| NetnsError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
        Ok(ChildGuard {
            child: Some(child),
            desc,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Send a signal to the child.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Has the child exited? Returns its status if so.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Send SIGTERM and wait up to `grace` for exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Take the child out of the guard (it is no longer killed on drop).
    pub fn into_inner(mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn describe(&self) -> &str {
        &self.desc
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Poll `check` every 10 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(NetnsError::Timeout(timeout, what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_prefixes_differ_and_fit_interface_names() {
        let a = unique_prefix("t");
        let b = unique_prefix("t");
        assert_ne!(a, b);
        // leaves room for a suffix like "-cli0" in a 15-byte interface name
        assert!(a.len() <= 10, "{a}");
    }
}
