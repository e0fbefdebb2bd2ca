//! Each emulated host gets its own CPU share: one cgroup per host (client,
//! each relay, server), all with the same weight. In the world the lab
//! emulates these are separate machines; on the lab's few cores the
//! kernel would otherwise share the CPU per process, so a hundred `curl`
//! clients would get a hundred shares against a relay's one, and the relay
//! would wait for a CPU as no relay on its own host does. With a cgroup per
//! host a busy client host gets one share, like every other host.
//!
//! The link routers' delay lines are not in these groups: they run as
//! realtime threads of the lab process itself, ahead of every host.
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu`, `cpu.shares`) and v2 (`cpu.weight`)
//! are both used as found. When neither can be set up the lab says why and
//! runs without (`--host-cpu none` does the same on purpose); the report
//! records which.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// Whether hosts get a cgroup each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One CPU cgroup per emulated host, equal weights.
    Cgroup,
    /// Every process shares the CPU as the kernel does by default.
    None,
}

/// Name prefix of the lab's cgroups (under the cpu hierarchy's root).
const PREFIX: &str = "swlab-";

/// Which cgroup interface this host offers for the cpu controller.
#[derive(Debug, Clone, Copy)]
enum Flavour {
    V1,
    V2,
}

fn find() -> Result<(Flavour, PathBuf), String> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.shares").exists() {
        return Ok((Flavour::V1, v1.to_path_buf()));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    match fs::read_to_string(v2.join("cgroup.controllers")) {
        Ok(c) if c.split_whitespace().any(|x| x == "cpu") => Ok((Flavour::V2, v2.to_path_buf())),
        Ok(_) => Err("cgroup v2 without the cpu controller".into()),
        Err(_) => Err("no cgroup cpu controller mounted".into()),
    }
}

/// The hosts' cgroups of one chain; removed on drop (processes still in
/// them are moved back to the root first).
pub struct HostCpu {
    base: PathBuf,
    dir: PathBuf,
    /// Host name → its open `cgroup.procs` (a child writes itself into it
    /// between fork and exec).
    hosts: Vec<(String, File)>,
    what: String,
}

impl HostCpu {
    /// Create `swlab-<tag>` with one group per host. An error is the reason
    /// the lab runs without.
    pub fn create(tag: &str, hosts: &[String]) -> Result<HostCpu, String> {
        let (flavour, base) = find()?;
        let dir = base.join(format!("{PREFIX}{tag}chain"));
        remove(&base, &dir);
        fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut me = HostCpu {
            base: base.clone(),
            dir: dir.clone(),
            hosts: Vec::new(),
            what: String::new(),
        };
        let (file, weight) = match flavour {
            Flavour::V1 => ("cpu.shares", "1024"),
            Flavour::V2 => {
                // The controller must be passed down to our group's children
                // (and to our group by the root, which systemd usually does).
                let _ = write(&base.join("cgroup.subtree_control"), "+cpu");
                write(&dir.join("cgroup.subtree_control"), "+cpu")?;
                ("cpu.weight", "100")
            }
        };
        for h in hosts {
            let g = dir.join(h);
            fs::create_dir(&g).map_err(|e| format!("creating {}: {e}", g.display()))?;
            write(&g.join(file), weight)?;
            let procs = OpenOptions::new()
                .write(true)
                .open(g.join("cgroup.procs"))
                .map_err(|e| format!("opening {}/cgroup.procs: {e}", g.display()))?;
            me.hosts.push((h.clone(), procs));
        }
        me.what = format!(
            "one cgroup per host ({} {file} {weight} each)",
            match flavour {
                Flavour::V1 => "cgroup v1",
                Flavour::V2 => "cgroup v2",
            }
        );
        Ok(me)
    }

    /// What the hosts' CPU sharing is, for the report.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Make `cmd`'s process join `host`'s group when it starts (a process
    /// of no host, e.g. of a link router, is left alone).
    pub fn enter(&self, cmd: &mut Command, host: &str) {
        let Some((_, f)) = self.hosts.iter().find(|(h, _)| h == host) else {
            return;
        };
        let fd: RawFd = f.as_raw_fd();
        // SAFETY: between fork and exec only `write(2)` on an fd this
        // process holds open (close-on-exec, so the program never sees it).
        // "0" moves the writing process. A failure leaves the child where it
        // was: sharing the CPU like any process, never a failed start.
        unsafe {
            cmd.pre_exec(move || {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                Ok(())
            });
        }
    }
}

impl Drop for HostCpu {
    fn drop(&mut self) {
        self.hosts.clear();
        remove(&self.base, &self.dir);
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Remove `dir` and its host groups, moving any process left in them back
/// to `base` (the hierarchy's root) first. Best effort.
fn remove(base: &Path, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let g = e.path();
        if !g.is_dir() {
            continue;
        }
        if let Ok(pids) = fs::read_to_string(g.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = write(&base.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&g);
    }
    let _ = fs::remove_dir(dir);
}

/// Remove groups an earlier (killed) lab left behind.
pub fn sweep() {
    let Ok((_, base)) = find() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&base) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(PREFIX) {
            remove(&base, &e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child started through `enter` runs in its host's group, a child of
    /// no host stays where it was, and nothing is left after drop.
    #[test]
    fn a_hosts_process_runs_in_its_group_and_the_groups_go_with_the_testbed() {
        if !nix::unistd::geteuid().is_root() || find().is_err() {
            eprintln!("skipped: needs root and a cgroup cpu controller");
            return;
        }
        let tag = format!("unit{}-", std::process::id());
        let cpu = HostCpu::create(&tag, &["client".into(), "server".into()])
            .expect("groups created");
        assert!(cpu.describe().starts_with("one cgroup per host"));
        let dir = cpu.dir.clone();
        let cgroup_of = |host: &str| {
            let mut c = Command::new("cat");
            c.arg("/proc/self/cgroup");
            cpu.enter(&mut c, host);
            String::from_utf8(c.output().expect("cat runs").stdout).expect("utf-8")
        };
        let want = format!("/{PREFIX}{tag}chain/server");
        assert!(
            cgroup_of("server").lines().any(|l| l.ends_with(&want)),
            "not in {want}"
        );
        assert!(!cgroup_of("l1").contains(PREFIX), "a router's process was moved");
        drop(cpu);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
