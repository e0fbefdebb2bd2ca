//! Every OS-specific socket and pipe trick splitway uses, in one place.
//!
//! - [`sockopt`]: socket options (transparent, marks, Nagle, keep-alive,
//!   buffers, linger-0 resets, TCP_INFO, Fast Open).
//! - [`pipe`]: pipes and `splice(2)` for the zero-copy engine.
//! - [`netlink`]: the early-SYN tap's NFQUEUE socket (its receive timeout).
//! - [`initial_window`]: a small initial receive window for the relay's
//!   server connections (a `sock_ops` BPF program).

pub mod initial_window;
pub mod netlink;
pub mod pipe;
pub mod sockopt;

use std::io;
use std::os::fd::RawFd;

/// `recv(2)` on a non-blocking socket into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes for the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` on a non-blocking socket (no SIGPIPE).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes for the call.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `send(2)` with `MSG_MORE`: the bytes wait for what follows (a frame
/// header for the payload spliced after it), so they do not leave as a
/// segment of their own.
pub fn send_more(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes for the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_MORE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Read from a tokio socket, and when the read came back short (a TCP
/// receive queue is then empty) clear the socket's read readiness at once,
/// as an EAGAIN would: saves the extra `recv` that only returns EAGAIN.
/// Safe with tokio: readiness is cleared only if no new event arrived since
/// it was observed, and a seen EOF/RDHUP is never cleared.
/// `Ok(None)`: no data (EAGAIN).
pub fn read_clearing(s: &tokio::net::TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use std::os::fd::AsRawFd;
    let len = buf.len();
    let mut got = 0;
    match s.try_io(tokio::io::Interest::READABLE, || {
        let n = recv(s.as_raw_fd(), buf)?;
        if n > 0 && n < len {
            got = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((got > 0).then_some(got)),
        Err(e) => Err(e),
    }
}
