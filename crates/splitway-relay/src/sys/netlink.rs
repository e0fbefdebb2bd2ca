//! The NFQUEUE socket of the early-SYN tap, found among the process's fds.
//!
//! The `nfq` crate does not hand out its netlink socket, and its `recv`
//! blocks for as long as no SYN arrives, so the tap thread could never
//! notice a shutdown. The relay opens no other `NETLINK_NETFILTER` socket
//! (the `iptables` it runs are child processes), so the one that appears
//! across `nfq::Queue::open` is the queue's: [`netfilter_sockets`] before
//! and after tells which, and [`set_recv_timeout`] makes its `recv` return
//! (`EAGAIN`) at least that often.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

fn getsockopt_int(fd: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes for the call; a closed or
    // non-socket fd only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// The process's `AF_NETLINK` / `NETLINK_NETFILTER` sockets.
pub fn netfilter_sockets() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| {
            getsockopt_int(*fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
                && getsockopt_int(*fd, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        })
        .collect();
    out.sort_unstable();
    out
}

/// `SO_RCVTIMEO` on `fd`.
pub fn set_recv_timeout(fd: RawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval for the call; fd is checked by the kernel.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
