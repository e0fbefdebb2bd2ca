//! Small Linux helpers: CPU pinning, limits, /proc readers, splice/sendfile.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::RawFd;

/// Pin the calling thread (and what it spawns later) to `cpu`.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn ncpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Raise the fd limit (soft and hard; hard only as root) for us and children.
pub fn raise_nofile(want: u64) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in and out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(cur.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
            let soft = libc::rlimit {
                rlim_cur: cur.rlim_max,
                rlim_max: cur.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
    }
}

pub fn nofile() -> u64 {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct out.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    cur.rlim_cur
}

/// Move this process into a fresh network namespace with loopback up.
pub fn enter_netns() -> anyhow::Result<()> {
    // SAFETY: no threads yet; unshare only changes this process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
    }
    let st = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()?;
    anyhow::ensure!(st.success(), "ip link set lo up failed");
    Ok(())
}

pub fn sysctl_write(name: &str, v: &str) -> io::Result<()> {
    fs::write(format!("/proc/sys/{}", name.replace('.', "/")), v)
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (pid, ppid, utime+stime+cutime+cstime in ticks) for every process.
fn all_stats() -> Vec<(u32, u32, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, t)) = proc_stat(pid) {
            out.push((pid, ppid, t));
        }
    }
    out
}

/// ppid and cpu ticks (own + reaped children) of `pid`.
pub fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid = field 4, utime = 14 .. cstime = 17.
    let ppid = f.get(1)?.parse().ok()?;
    let t: u64 = (11..=14)
        .filter_map(|i| f.get(i)?.parse::<u64>().ok())
        .sum();
    Some((ppid, t))
}

/// `roots` and all their descendants.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let stats = all_stats();
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid, _) in &stats {
        kids.entry(*ppid).or_default().push(*pid);
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        if let Some(k) = kids.get(&p) {
            stack.extend(k);
        }
    }
    out
}

/// CPU seconds used by a process tree so far (live processes, plus the
/// children they reaped).
pub fn tree_cpu_secs(roots: &[u32]) -> f64 {
    let t: u64 = tree(roots)
        .iter()
        .filter_map(|p| proc_stat(*p).map(|x| x.1))
        .sum();
    t as f64 / clk_tck()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| field_kb(&s, key))
        .unwrap_or(0)
}

fn field_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l[key.len() + 1..].split_whitespace().next()?.parse().ok())
}

/// Sum of VmRSS over a process tree, bytes.
pub fn tree_rss(roots: &[u32]) -> u64 {
    tree_status_bytes(roots, "VmRSS")
}

/// Sum of a `/proc/PID/status` field in kB (VmRSS, RssAnon…) over a
/// process tree, bytes.
pub fn tree_status_bytes(roots: &[u32], field: &str) -> u64 {
    tree(roots)
        .iter()
        .map(|p| status_kb(*p, field))
        .sum::<u64>()
        * 1024
}

/// Sum of Pss over a process tree, bytes.
pub fn tree_pss(roots: &[u32]) -> u64 {
    tree(roots)
        .iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| field_kb(&s, "Pss"))
        .sum::<u64>()
        * 1024
}

/// Kernel memory that sockets and pipes use: Slab + KernelStack +
/// PageTables from /proc/meminfo, plus TCP buffer pages from sockstat.
pub fn kernel_bytes() -> u64 {
    let mi = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: u64 = ["Slab", "KernelStack", "PageTables"]
        .iter()
        .filter_map(|k| field_kb(&mi, k))
        .sum();
    kb * 1024 + tcp_mem_pages() * 4096
}

pub fn tcp_mem_pages() -> u64 {
    let s = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "mem")?;
            f.get(i + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Busy ticks per CPU (everything but idle and iowait).
pub fn cpu_busy() -> Vec<u64> {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            v.iter().sum::<u64>() - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0)
        })
        .collect()
}

/// CPU ticks of the kernel's worker threads (`kworker/*`, `ksoftirqd/*`)
/// by pid: where in-kernel forwarding (a sockmap's redirect backlog) and
/// deferred softirq work run. Compare two with [`kthread_delta_secs`]
/// (kworkers come and go).
pub fn kthread_ticks() -> HashMap<u32, u64> {
    let mut m = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm = s.split(['(', ')']).nth(1).unwrap_or("");
        if comm.starts_with("kworker") || comm.starts_with("ksoftirqd") {
            if let Some((_, t)) = proc_stat(pid) {
                m.insert(pid, t);
            }
        }
    }
    m
}

/// CPU seconds the kernel threads alive at `b` used since `a` (a thread
/// that exited in between is left out, one born in between counts whole).
pub fn kthread_delta_secs(a: &HashMap<u32, u64>, b: &HashMap<u32, u64>) -> f64 {
    let t: u64 = b
        .iter()
        .map(|(pid, t)| t.saturating_sub(*a.get(pid).unwrap_or(&0)))
        .sum();
    t as f64 / clk_tck()
}

pub fn self_cpu_secs() -> f64 {
    proc_stat(std::process::id())
        .map(|x| x.1 as f64 / clk_tck())
        .unwrap_or(0.0)
}

pub struct Pipe {
    pub r: RawFd,
    pub w: RawFd,
}

impl Pipe {
    pub fn new(size: i32) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a valid pipe fd.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size) };
        Ok(Pipe {
            r: fds[0],
            w: fds[1],
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: we own both fds.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: fds are open for the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A memfd of `len` bytes of a repeating pattern, for sendfile.
pub fn pattern_memfd(len: usize) -> io::Result<RawFd> {
    // SAFETY: name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut off = 0;
    while off < len {
        // SAFETY: buf outlives the call.
        let n = unsafe { libc::write(fd, buf[off..].as_ptr().cast(), len - off) };
        if n <= 0 {
            return Err(io::Error::last_os_error());
        }
        off += n as usize;
    }
    Ok(fd)
}

pub fn sendfile(sock: RawFd, file: RawFd, off: &mut i64, len: usize) -> io::Result<usize> {
    // SAFETY: off is a valid pointer for the call.
    let n = unsafe { libc::sendfile(sock, file, off, len) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
