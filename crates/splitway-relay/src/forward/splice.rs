//! The splice engine: socket → pipe → socket, bytes never enter user space.
//!
//! A socket→pipe splice returns EAGAIN both when the socket has no data and
//! when the pipe is full, and the two can not be told apart. So this engine
//! splices into the pipe only when the pipe is empty: it drains everything it
//! moved in before reading again. EAGAIN on the way in then always means "no
//! data", and readiness is cleared through tokio's `try_io`, so nothing spins
//! or stalls. With a pool, the pipe is borrowed per burst: taken when the
//! socket has data, given back (empty) when the socket is drained, so an idle
//! connection holds no pipe.

use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::FlowState;
use crate::resources::Resources;
use crate::sys::pipe::Pipe;
use crate::sys::sockopt;

/// Give the (empty) pipe back to the pool, if it came from one.
fn lend_back(slot: &mut Option<Pipe>, stock: Option<&Resources>) {
    if let Some(stock) = stock {
        if let Some(p) = slot.take() {
            stock.give_pipe(p);
        }
    }
}

/// Move bytes `src` → `dst` through a pipe until EOF (then FIN on `dst`) or
/// an error. The pipe in `slot` is empty on entry and on a clean return; on
/// an error it may hold bytes and is dropped, never given back.
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    slot: &mut Option<Pipe>,
    stock: Option<&Resources>,
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    let r = run(src, dst, slot, stock, flow, dir).await;
    if r.is_err() {
        slot.take();
    }
    r
}

async fn run(
    src: &TcpStream,
    dst: &TcpStream,
    slot: &mut Option<Pipe>,
    stock: Option<&Resources>,
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    loop {
        let n = loop {
            src.readable().await?;
            let pipe = match (slot.as_ref(), stock) {
                (Some(p), _) => p,
                (None, Some(stock)) => slot.insert(stock.take_pipe()?),
                (None, None) => return Err(io::Error::other("splice engine without a pipe")),
            };
            let chunk = pipe.capacity();
            match src.try_io(Interest::READABLE, || {
                pipe.fill_from(src.as_raw_fd(), chunk)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    lend_back(slot, stock);
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            lend_back(slot, stock);
            return sockopt::shutdown_write(dst);
        }
        let pipe = slot.as_ref().expect("pipe held during a burst");
        let full = n == pipe.capacity();
        let mut left = n;
        while left > 0 {
            match dst.try_io(Interest::WRITABLE, || pipe.drain_to(dst.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
        flow.add(dir, n);
        if !full {
            lend_back(slot, stock);
        }
    }
}
