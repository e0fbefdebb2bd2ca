//! The splice engine: socket → pipe → socket, bytes never enter user space.
//!
//! A socket→pipe splice returns EAGAIN both when the socket has no data and
//! when the pipe is full, and the two can not be told apart. So this engine
//! splices into the pipe only when the pipe is empty: it drains everything it
//! moved in before reading again. EAGAIN on the way in then always means "no
//! data", and readiness is cleared through tokio's `try_io`, so nothing spins
//! or stalls. With a pool, the pipe is borrowed per burst: taken when the
//! socket has data, given back (empty) when the socket is drained, so an idle
//! connection holds no pipe. Small bursts (up to [`PROBE_BYTES`]) are copied
//! through a per-worker buffer instead: for a request of a few hundred bytes
//! one `recv` and one `send` are cheaper than two splices and a pipe.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::FlowState;
use crate::resources::Resources;
use crate::sys::pipe::Pipe;
use crate::sys::{self, sockopt};

/// Give the (empty) pipe back to the pool, if it came from one.
fn lend_back(slot: &mut Option<Pipe>, stock: Option<&Resources>) {
    if let Some(stock) = stock {
        if let Some(p) = slot.take() {
            stock.give_pipe(p);
        }
    }
}

/// Bursts up to this size are copied, not spliced (HAProxy measured splice
/// losing below about 4 KB): one `recv` and one `send`, no pipe.
pub const PROBE_BYTES: usize = 4096;

thread_local! {
    /// Per-worker buffer for small bursts; never held across an await.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; PROBE_BYTES].into_boxed_slice());
}

/// What a small-burst read did.
enum Probe {
    /// No data (readiness cleared).
    Empty,
    Eof,
    /// `n` bytes read and (but for `rest`) written.
    Moved {
        n: usize,
        rest: Option<Vec<u8>>,
    },
}

/// Read up to [`PROBE_BYTES`] into the worker's scratch buffer and write
/// what `dst` takes at once; what it does not take is returned to be
/// written after an await.
fn probe(src: &TcpStream, dst: &TcpStream) -> io::Result<Probe> {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        let n = match sys::read_clearing(src, &mut buf)? {
            None => return Ok(Probe::Empty),
            Some(0) => return Ok(Probe::Eof),
            Some(n) => n,
        };
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let rest = (off < n).then(|| buf[off..n].to_vec());
        Ok(Probe::Moved { n, rest })
    })
}

/// Move bytes `src` → `dst` through a pipe until EOF (then FIN on `dst`) or
/// an error. The pipe in `slot` is empty on entry and on a clean return; on
/// an error it may hold bytes (`Resources::put` checks before reuse).
pub async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    slot: &mut Option<Pipe>,
    stock: Option<&Resources>,
    flow: &FlowState,
    dir: usize,
) -> io::Result<()> {
    // Streaming: the last burst was large, so start the next in the pipe.
    let mut streaming = false;
    loop {
        if !streaming {
            poll_fn(|cx| src.poll_read_ready(cx)).await?;
            match probe(src, dst)? {
                Probe::Empty => continue,
                Probe::Eof => return sockopt::shutdown_write(dst),
                Probe::Moved { n, rest } => {
                    if let Some(rest) = rest {
                        let mut off = 0;
                        while off < rest.len() {
                            match dst.try_write(&rest[off..]) {
                                Ok(m) => off += m,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    poll_fn(|cx| dst.poll_write_ready(cx)).await?
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    flow.add(dir, n);
                    // A full probe: more is coming, splice the rest.
                    streaming = n == PROBE_BYTES;
                    continue;
                }
            }
        }
        let n = loop {
            poll_fn(|cx| src.poll_read_ready(cx)).await?;
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| dst.poll_write_ready(cx)).await?
                }
                Err(e) => return Err(e),
            }
        }
        flow.add(dir, n);
        if !full {
            lend_back(slot, stock);
        }
        // Small again: back to copying.
        if n < PROBE_BYTES {
            streaming = false;
        }
    }
}
