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
//!
//! A direction is a small state machine polled by [`super::relay`] (no
//! async fn), so an idle connection stays small.
//!
//! `node.quiet_blocked_input` (issue 16): tokio registers each socket once,
//! edge-triggered, for reading and writing, so data arriving on the source
//! while the direction waits for its destination wakes the worker with no
//! task to run. With the switch on, the source's `SO_RCVLOWAT` is raised to
//! half its receive buffer while the direction waits for write space (the
//! kernel still signals EOF, errors, memory pressure and an almost closed
//! window) and set back to 1 before the next read.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::{Fail, Loan, Pump, Stock};
use crate::sys;
use crate::sys::pipe::Pipe;
use crate::sys::sockopt;

/// `node.quiet_blocked_input` (see the module doc), as the config says.
static QUIET_BLOCKED_INPUT: AtomicBool = AtomicBool::new(false);

/// Set from the config at start and on every reload.
pub fn set_quiet_blocked_input(on: bool) {
    QUIET_BLOCKED_INPUT.store(on, Ordering::Relaxed);
}

#[cfg(test)]
thread_local! {
    /// Tests turn the switch on for their own thread only (the switch is
    /// process-wide, and other tests install configs concurrently).
    pub(super) static FORCE_QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `node.quiet_blocked_input` is on (both engines).
pub(super) fn quiet_blocked_input() -> bool {
    #[cfg(test)]
    if FORCE_QUIET.with(|f| f.get()) {
        return true;
    }
    QUIET_BLOCKED_INPUT.load(Ordering::Relaxed)
}

/// Raise `src`'s `SO_RCVLOWAT` to half its receive buffer: above that the
/// kernel would grow the buffer and clamp the window to the value (the
/// first version of this experiment asked for the maximum and got a
/// several-MB receive buffer). `true` if it was raised.
pub(super) fn quiet(src: &TcpStream) -> bool {
    let Ok(buf) = sockopt::rcvbuf(src) else {
        return false;
    };
    let lowat = i32::try_from(buf / 2).unwrap_or(i32::MAX);
    lowat > PROBE_BYTES as i32 && sockopt::set_rcvlowat(src, lowat).is_ok()
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
    /// `n` bytes read, `off` of them written; what was not is in `rest`,
    /// to be written after an await.
    Moved {
        n: usize,
        off: usize,
        rest: Option<Vec<u8>>,
    },
}

/// Read up to [`PROBE_BYTES`] into the worker's scratch buffer and write
/// what `dst` takes at once; what it does not take is returned to be
/// written after an await.
fn probe(src: &TcpStream, dst: &TcpStream, first: bool) -> Result<Probe, Fail> {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        let (n, mut off) = if first {
            match super::first_burst(src, dst, &mut buf)? {
                None => return Ok(Probe::Empty),
                Some((0, _)) => return Ok(Probe::Eof),
                Some(moved) => moved,
            }
        } else {
            match sys::read_clearing(src, &mut buf).map_err(|_| Fail::Src)? {
                None => return Ok(Probe::Empty),
                Some(0) => return Ok(Probe::Eof),
                Some(n) => (n, 0),
            }
        };
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(m) => off += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(Fail::Dst),
            }
        }
        let rest = (off < n).then(|| buf[off..n].to_vec());
        Ok(Probe::Moved { n, off, rest })
    })
}

/// Where a direction of the splice engine is.
enum Step {
    /// Waiting for data.
    Read,
    /// A small burst `dst` did not take at once: `rest[off..]` is left to
    /// write; `n` bytes were read in all.
    Rest { rest: Vec<u8>, off: usize, n: usize },
    /// `left` of the `n` bytes in the pipe are still to go out.
    Drain { left: usize, n: usize },
}

/// One direction of the splice engine. The pipe is empty between bursts;
/// after an error it may hold bytes (`Resources::put` checks before reuse).
pub struct SplicePump<'a, S> {
    pipe: Loan<'a, Pipe, S>,
    step: Step,
    /// The last burst was large: start the next one in the pipe.
    streaming: bool,
    /// The first read is still to be tried at once (see
    /// [`super::first_burst`]).
    first: bool,
    /// The source's `SO_RCVLOWAT` is raised (`node.quiet_blocked_input`).
    quiet: bool,
}

impl<'a, S: Stock<Pipe>> SplicePump<'a, S> {
    /// `first`: try the first read at once (the client → next hop
    /// direction).
    pub fn new(pipe: Loan<'a, Pipe, S>, first: bool) -> SplicePump<'a, S> {
        SplicePump {
            pipe,
            step: Step::Read,
            streaming: false,
            first,
            quiet: false,
        }
    }
}

impl<S: Stock<Pipe>> Pump for SplicePump<'_, S> {
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut u64,
    ) -> Poll<Result<(), Fail>> {
        loop {
            match &mut self.step {
                Step::Rest { rest, off, n } => {
                    while *off < rest.len() {
                        match dst.try_write(&rest[*off..]) {
                            Ok(m) => {
                                *off += m;
                                *moved += m as u64;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                ready!(dst.poll_write_ready(cx)).map_err(|_| Fail::Dst)?;
                            }
                            Err(_) => return Poll::Ready(Err(Fail::Dst)),
                        }
                    }
                    self.streaming = *n == PROBE_BYTES;
                    self.step = Step::Read;
                }
                Step::Drain { left, n } => {
                    let Some(pipe) = self.pipe.held() else {
                        return Poll::Ready(Err(Fail::Engine));
                    };
                    while *left > 0 {
                        match dst
                            .try_io(Interest::WRITABLE, || pipe.drain_to(dst.as_raw_fd(), *left))
                        {
                            Ok(m) => {
                                *left -= m;
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
                    let n = *n;
                    let full = n == pipe.capacity();
                    self.step = Step::Read;
                    if !full {
                        self.pipe.end_burst();
                    }
                    // Small again: back to copying.
                    if n < PROBE_BYTES {
                        self.streaming = false;
                    }
                }
                Step::Read if !self.streaming => {
                    let first = std::mem::take(&mut self.first);
                    if !first {
                        ready!(src.poll_read_ready(cx)).map_err(|_| Fail::Src)?;
                    }
                    match probe(src, dst, first)? {
                        Probe::Empty => {}
                        Probe::Eof => return Poll::Ready(Ok(())),
                        Probe::Moved { n, off, rest } => {
                            *moved += off as u64;
                            match rest {
                                Some(rest) => self.step = Step::Rest { rest, off: 0, n },
                                // A full probe: more is coming, splice the rest.
                                None => self.streaming = n == PROBE_BYTES,
                            }
                        }
                    }
                }
                Step::Read => {
                    ready!(src.poll_read_ready(cx)).map_err(|_| Fail::Src)?;
                    let pipe = self.pipe.get().map_err(|_| Fail::Engine)?;
                    let chunk = pipe.capacity();
                    match src.try_io(Interest::READABLE, || {
                        pipe.fill_from(src.as_raw_fd(), chunk)
                    }) {
                        Ok(0) => {
                            self.pipe.end_burst();
                            return Poll::Ready(Ok(()));
                        }
                        Ok(n) => self.step = Step::Drain { left: n, n },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pipe.end_burst(),
                        Err(_) => return Poll::Ready(Err(Fail::Src)),
                    }
                }
            }
        }
    }
}
