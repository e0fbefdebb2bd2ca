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
//!
//! `node.quiet_blocked_input` applies here as in the splice engine: while
//! a burst waits for write space, the source's `SO_RCVLOWAT` is raised
//! ([`super::splice::quiet`]) and set back to 1 before the next read.

use std::io;
use std::task::{ready, Context, Poll};

use tokio::net::TcpStream;

use super::splice::{quiet, quiet_blocked_input};
use super::{Fail, Loan, Pump, Stock};
use crate::sys;
use crate::sys::sockopt;

/// One direction of the copy engine.
pub struct CopyPump<'a, S> {
    buf: Loan<'a, Vec<u8>, S>,
    /// A burst of `n` bytes read, of which `buf[off..n]` is not yet written
    /// (`n == 0`: none in flight).
    off: usize,
    n: usize,
    /// The first read is still to be tried at once (see
    /// [`super::first_burst`]).
    first: bool,
    /// The source's `SO_RCVLOWAT` is raised (`node.quiet_blocked_input`).
    quiet: bool,
}

impl<'a, S: Stock<Vec<u8>>> CopyPump<'a, S> {
    /// `first`: try the first read at once (the client → next hop
    /// direction).
    pub fn new(buf: Loan<'a, Vec<u8>, S>, first: bool) -> CopyPump<'a, S> {
        CopyPump {
            buf,
            off: 0,
            n: 0,
            first,
            quiet: false,
        }
    }
}

impl<S: Stock<Vec<u8>>> Pump for CopyPump<'_, S> {
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut u64,
    ) -> Poll<Result<(), Fail>> {
        loop {
            if self.n > 0 {
                let Some(buf) = self.buf.held() else {
                    return Poll::Ready(Err(Fail::Engine));
                };
                while self.off < self.n {
                    match dst.try_write(&buf[self.off..self.n]) {
                        Ok(m) => {
                            self.off += m;
                            *moved += m as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if !self.quiet && quiet_blocked_input() {
                                self.quiet = quiet(src);
                            }
                            ready!(dst.poll_write_ready(cx)).map_err(|_| Fail::Dst)?;
                        }
                        Err(_) => return Poll::Ready(Err(Fail::Dst)),
                    }
                }
                if std::mem::take(&mut self.quiet) && sockopt::set_rcvlowat(src, 1).is_err() {
                    return Poll::Ready(Err(Fail::Src));
                }
                // A short read drained the socket: the burst is over.
                if self.n < buf.len() {
                    self.buf.end_burst();
                }
                (self.off, self.n) = (0, 0);
                continue;
            }
            let first = std::mem::take(&mut self.first);
            if !first {
                ready!(src.poll_read_ready(cx)).map_err(|_| Fail::Src)?;
            }
            let buf = self.buf.get().map_err(|_| Fail::Engine)?;
            let got = if first {
                super::first_burst(src, dst, buf)?
            } else {
                sys::read_clearing(src, buf)
                    .map_err(|_| Fail::Src)?
                    .map(|n| (n, 0))
            };
            match got {
                None => self.buf.end_burst(),
                Some((0, _)) => {
                    self.buf.end_burst();
                    return Poll::Ready(Ok(()));
                }
                Some((n, written)) => {
                    *moved += written as u64;
                    (self.off, self.n) = (written, n);
                }
            }
        }
    }
}
