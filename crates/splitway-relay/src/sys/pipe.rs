//! Pipes and `splice(2)`: the zero-copy engine's kernel plumbing.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};

/// A non-blocking pipe sized for one direction of one connection.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Create a pipe and try to size it to `bytes` (the kernel may round up,
    /// or refuse above `/proc/sys/fs/pipe-max-size`; then it keeps what it
    /// could get).
    pub fn new(bytes: usize) -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = match fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(bytes as i32)) {
            Ok(n) => n as usize,
            Err(_) => fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ)? as usize,
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes currently in the pipe (FIONREAD).
    pub fn pending(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let rc = unsafe { libc::ioctl(self.read.as_raw_fd(), libc::FIONREAD, &mut n) };
        if rc == 0 {
            Ok(n as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Move up to `len` bytes from socket `from` into the pipe.
    pub fn fill_from(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.write.as_raw_fd(), len)
    }

    /// Move up to `len` bytes from the pipe into socket `to`.
    pub fn drain_to(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    // SAFETY: both fds are open for the duration of the call (callers hold
    // the sockets and the pipe); splice does not retain them.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags.bits(),
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
