//! The copy engine: read into a user-space buffer, write it out.
//!
//! The reference engine: simple, portable, and what modules that inspect or
//! change bytes need. One buffer per direction (at least 16 KiB), borrowed
//! from the pool for each burst when there is one: taken when the socket has
//! data, given back once what was read is written out and the socket is
//! drained.
//!
//! A direction is a small state machine polled by [`super::relay`] (no
//! async fn: its state is two integers, so an idle connection stays small).

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use super::{FlowState, Pump};
use crate::resources::Resources;
use crate::sys;

/// One direction of the copy engine. `slot` holds the buffer: always
/// (owned) without `stock`, only during a burst with it.
pub struct CopyPump<'a> {
    slot: &'a mut Option<Vec<u8>>,
    stock: Option<&'a Resources>,
    /// A burst of `n` bytes read, of which `buf[off..n]` is not yet written
    /// (`n == 0`: none in flight).
    off: usize,
    n: usize,
    /// The first read is still to be tried at once (see
    /// [`super::first_burst`]).
    first: bool,
}

impl<'a> CopyPump<'a> {
    /// `first`: try the first read at once (the client → next hop
    /// direction).
    pub fn new(
        slot: &'a mut Option<Vec<u8>>,
        stock: Option<&'a Resources>,
        first: bool,
    ) -> CopyPump<'a> {
        CopyPump {
            slot,
            stock,
            off: 0,
            n: 0,
            first,
        }
    }

    /// Give the buffer back to the pool (if it came from one).
    fn lend_back(&mut self) {
        if let Some(stock) = self.stock {
            if let Some(b) = self.slot.take() {
                stock.give_buf(b);
            }
        }
    }
}

impl Pump for CopyPump<'_> {
    /// Move bytes `src` → `dst` until EOF (then FIN on `dst`, unless
    /// `last`: the caller closes both) or an error.
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        flow: &FlowState,
        dir: usize,
        last: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.n > 0 {
                let Some(buf) = self.slot.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("copy engine lost its buffer")));
                };
                if self.off < self.n {
                    match dst.try_write(&buf[self.off..self.n]) {
                        Ok(m) => self.off += m,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(dst.poll_write_ready(cx))?;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if self.off == self.n {
                    flow.add(dir, self.n);
                    // A short read drained the socket: the burst is over.
                    if self.n < buf.len() {
                        self.lend_back();
                    }
                    (self.off, self.n) = (0, 0);
                }
                continue;
            }
            let first = std::mem::take(&mut self.first);
            if !first {
                ready!(src.poll_read_ready(cx))?;
            }
            let buf = match (self.slot.as_mut(), self.stock) {
                (Some(b), _) => b,
                (None, Some(stock)) => self.slot.insert(stock.take_buf()),
                (None, None) => {
                    return Poll::Ready(Err(io::Error::other("copy engine without a buffer")))
                }
            };
            let got = if first {
                super::first_burst(src, dst, buf)?
            } else {
                sys::read_clearing(src, buf)?.map(|n| (n, 0))
            };
            match got {
                None => self.lend_back(),
                Some((0, _)) => {
                    self.lend_back();
                    return super::finish(dst, last);
                }
                Some((n, written)) => (self.off, self.n) = (written, n),
            }
        }
    }
}
