//! The splice engine: socket → pipe → socket, bytes never enter user space.
//!
//! A socket→pipe splice returns EAGAIN both when the socket has no data and
//! when the pipe is full, and the two can not be told apart. So this engine
//! splices into the pipe only when the pipe is empty: it drains everything it
//! moved in before reading again. EAGAIN on the way in then always means "no
//! data", and readiness is cleared through tokio's `try_io`, so nothing spins
//! or stalls.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::FlowState;
use crate::sys::pipe::Pipe;
use crate::sys::sockopt;

/// Move bytes `src` → `dst` through `pipe` until EOF (then FIN on `dst`) or
/// an error. `pipe` is empty on entry and on a clean return.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    let chunk = pipe.capacity();
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                pipe.fill_from(src.as_raw_fd(), chunk)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return sockopt::shutdown_write(dst);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || pipe.drain_to(dst.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        flow.add(dir, n);
    }
}
