//! A small initial receive window for chosen outbound sockets
//! (`[limits] server_initial_window_segments`): a `sock_ops` BPF program,
//! attached to the relay's cgroup, answers the kernel's
//! `BPF_SOCK_OPS_RWND_INIT` question for the sockets the relay tagged.
//!
//! Why a program: the window a connecting socket advertises in its SYN and
//! handshake ACK is the window the server may fill with its first flight,
//! and the kernel never shrinks an offered window afterwards. Per socket,
//! the only way to lower it without losing window scaling is the initial
//! receive window the kernel asks for in `tcp_connect_init` (a BPF answer,
//! else the route's `initrwnd` metric): it caps `rcv_wnd` only, while the
//! window scale is still chosen from `tcp_rmem[2]`/`rmem_max` and the buffer
//! keeps autotuning, so the window grows back as data arrives (measured:
//! 3 KiB at the handshake, 23 KiB after 10 KiB read, scale 10). The
//! alternatives fail: `SO_RCVBUF` before `connect` locks the buffer and sets
//! the window clamp from it, which makes the window scale 0 (64 KiB for the
//! connection's life); `TCP_WINDOW_CLAMP` before `connect` does the same;
//! a clamp set after `connect` is too late (the SYN's window stands).
//!
//! How a socket is tagged: its cookie (`SO_COOKIE`) goes into an LRU hash
//! map with the window in segments, before `connect`. The program looks the
//! cookie up at `RWND_INIT`, answers with the value, and deletes the entry;
//! entries of connects that never reached it (no route) age out of the LRU.
//! Every other socket in the cgroup gets no answer (the kernel default).
//! The program is attached through a BPF link, so it is detached when the
//! process exits, whatever the way.
//!
//! The cgroup: the process's own cgroup v2 directory. Under `ip netns exec`
//! (a mount namespace with `/sys` mounted afresh) no cgroup2 file system is
//! mounted; then one is mounted on a private temporary directory, the
//! cgroup opened, and the mount detached at once.
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (or root) and a kernel with cgroup v2
//! and `bpf_get_socket_cookie` for `sock_ops` (Linux ≥ 5.x).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Entries the tag map holds (least recently used go first).
const MAP_ENTRIES: u32 = 16_384;

/// Why the program could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum InitialWindowError {
    #[error("creating the BPF map: {0}")]
    Map(#[source] io::Error),
    #[error("loading the sock_ops program: {0} ({1})")]
    Load(#[source] io::Error, String),
    #[error("finding the process's cgroup v2: {0}")]
    Cgroup(String),
    #[error("attaching the program to cgroup {0}: {1}")]
    Attach(PathBuf, #[source] io::Error),
}

/// The loaded program's map and link; both live for the process.
struct Loaded {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// The program, once loaded: read without a lock on every tagged connect.
static LOADED: OnceLock<Loaded> = OnceLock::new();
/// Serialises loading (two relays' starts, or a start and a reload).
static LOADING: Mutex<()> = Mutex::new(());

/// Load and attach the program once per process (again if a previous try
/// failed).
pub fn ensure() -> Result<(), InitialWindowError> {
    let _g = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if LOADED.get().is_none() {
        // Under `LOADING`, nobody else sets it: this `set` cannot fail.
        let _ = LOADED.set(load()?);
    }
    Ok(())
}

/// Tag `sock` (before its `connect`): its SYN and handshake will offer
/// `segments` × MSS. Fails if [`ensure`] has not succeeded.
pub fn tag(sock: &socket2::Socket, segments: u32) -> io::Result<()> {
    let Some(l) = LOADED.get() else {
        return Err(io::Error::other("initial-window program not loaded"));
    };
    let cookie = socket_cookie(sock.as_raw_fd())?;
    map_update(
        l.map.as_raw_fd(),
        &cookie.to_ne_bytes(),
        &segments.to_ne_bytes(),
    )
}

fn socket_cookie(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

// bpf(2) commands, types and attach points (uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_PROG_TYPE_SOCK_OPS: u32 = 13;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// `bpf_sock_ops.op` value of the initial-window question.
const BPF_SOCK_OPS_RWND_INIT: i32 = 2;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_MAP_DELETE: i32 = 3;
const HELPER_SOCKET_COOKIE: i32 = 46;

/// `bpf(cmd, attr)`; `attr` is the command's leading part of `union bpf_attr`.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<RawFd> {
    // SAFETY: attr points to a live, initialised value of its size; the
    // kernel reads (and for some commands writes) at most that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: fd was just returned by bpf(2) or open(2) and is ours alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn map_update(map: RawFd, key: &[u8; 8], value: &[u8; 4]) -> io::Result<()> {
    let mut a = MapElem {
        map_fd: map as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// One eBPF instruction.
#[derive(Clone, Copy)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// The program, with the map's fd in its two map loads:
///
/// ```text
///  0  r6 = r1                      ; ctx
///  1  r2 = *(u32 *)(r6 + 0)        ; op
///  2  if r2 != RWND_INIT goto 19
///  3  r1 = r6
///  4  call get_socket_cookie
///  5  *(u64 *)(r10 - 8) = r0
///  6  r1 = map (two slots)
///  8  r2 = r10 - 8
/// 10  call map_lookup_elem
/// 11  if r0 == 0 goto 19
/// 12  r2 = *(u32 *)(r0 + 0)
/// 13  *(u32 *)(r6 + 4) = r2        ; ctx->reply: the window in segments
/// 14  r1 = map (two slots)
/// 16  r2 = r10 - 8
/// 18  call map_delete_elem
/// 19  r0 = 1
/// 20  exit
/// ```
fn program(map: RawFd) -> Vec<Insn> {
    const MOV64_X: u8 = 0xbf;
    const LDX_W: u8 = 0x61;
    const STX_W: u8 = 0x63;
    const STX_DW: u8 = 0x7b;
    const JNE_K: u8 = 0x55;
    const JEQ_K: u8 = 0x15;
    const CALL: u8 = 0x85;
    const ADD64_K: u8 = 0x07;
    const MOV64_K: u8 = 0xb7;
    const LD_IMM64: u8 = 0x18;
    const EXIT: u8 = 0x95;
    const PSEUDO_MAP_FD: u8 = 1;
    vec![
        insn(MOV64_X, 6, 1, 0, 0),
        insn(LDX_W, 2, 6, 0, 0),
        insn(JNE_K, 2, 0, 16, BPF_SOCK_OPS_RWND_INIT),
        insn(MOV64_X, 1, 6, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
        insn(JEQ_K, 0, 0, 7, 0),
        insn(LDX_W, 2, 0, 0, 0),
        insn(STX_W, 6, 2, 4, 0),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, HELPER_MAP_DELETE),
        insn(MOV64_K, 0, 0, 0, 1),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn load() -> Result<Loaded, InitialWindowError> {
    let mut m = MapCreate {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 8,
        value_size: 4,
        max_entries: MAP_ENTRIES,
        map_flags: 0,
    };
    let map = owned(bpf(BPF_MAP_CREATE, &mut m).map_err(InitialWindowError::Map)?);
    let insns = program(map.as_raw_fd());
    let license = b"Apache-2.0\0";
    let mut log = vec![0u8; 16 * 1024];
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"splitway_rwnd");
    let mut p = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCK_OPS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_SOCK_OPS,
    };
    let prog = match bpf(BPF_PROG_LOAD, &mut p) {
        Ok(fd) => owned(fd),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_string();
            return Err(InitialWindowError::Load(e, text));
        }
    };
    let (dir, path) = cgroup_dir()?;
    let mut l = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_SOCK_OPS,
        flags: 0,
    };
    let link =
        owned(bpf(BPF_LINK_CREATE, &mut l).map_err(|e| InitialWindowError::Attach(path, e))?);
    Ok(Loaded {
        map,
        _prog: prog,
        _link: link,
    })
}

/// The process's cgroup v2 directory, opened, and its path for messages.
fn cgroup_dir() -> Result<(OwnedFd, PathBuf), InitialWindowError> {
    let err = |m: String| InitialWindowError::Cgroup(m);
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| err(format!("/proc/self/cgroup: {e}")))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| err("no cgroup v2 entry in /proc/self/cgroup".into()))?
        .trim_start_matches('/')
        .to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| err(format!("/proc/self/mountinfo: {e}")))?;
    if let Some(root) = cgroup2_mount(&info) {
        let path = root.join(&rel);
        return open_dir(&path)
            .map(|fd| (fd, path.clone()))
            .map_err(|e| err(format!("{}: {e}", path.display())));
    }
    // No cgroup2 mount in this mount namespace: mount one privately.
    let tmp = std::env::temp_dir().join(format!("splitway-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    let r = mount_cgroup2(&tmp).and_then(|()| {
        let path = tmp.join(&rel);
        let fd = open_dir(&path);
        let _ = detach(&tmp);
        fd
    });
    let _ = std::fs::remove_dir(&tmp);
    let fd = r.map_err(|e| err(format!("no cgroup2 mount, and mounting one failed: {e}")))?;
    Ok((fd, PathBuf::from("/").join(rel)))
}

/// Where cgroup2 is mounted, from `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let root = left.split_whitespace().nth(3)?;
        let point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2" && root == "/").then(|| PathBuf::from(point))
    })
}

fn cstr(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path with a NUL byte"))
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    let c = cstr(p)?;
    // SAFETY: c is a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd))
}

fn mount_cgroup2(at: &Path) -> io::Result<()> {
    let target = cstr(at)?;
    let fs = c"cgroup2";
    // SAFETY: all pointers are valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn detach(at: &Path) -> io::Result<()> {
    let target = cstr(at)?;
    // SAFETY: target is a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let info = "25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw\n\
                    35 26 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount("25 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        // A bind mount of a subtree is not the hierarchy's root.
        let sub = "35 26 0:30 /user.slice /mnt rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(sub), None);
    }

    #[test]
    fn jumps_land_on_the_exit() {
        let p = program(3);
        assert_eq!(p.len(), 21);
        // Both conditional jumps go to `r0 = 1`.
        assert_eq!(2 + 1 + p[2].off as usize, 19);
        assert_eq!(11 + 1 + p[11].off as usize, 19);
        assert_eq!(p[19].code, 0xb7);
    }
}
