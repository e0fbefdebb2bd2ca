//! Forwarding engines: move bytes both ways between two connected sockets.
//!
//! [`relay`] drives both directions of one split connection with the rules
//! every engine shares: a FIN on one side becomes `shutdown(WR)` on the other
//! and starts the half-close timer; an error (a reset) on either side resets
//! both; no traffic for the idle timeout closes both. The engines only move
//! bytes in one direction: [`copy`] through a user-space buffer, [`splice`]
//! through a pipe, never touching the bytes. Memory per connection is what
//! the engine was given (two buffers or two pipes): nothing queues beyond it.
//! With pooled resources (`worker_pools`) a direction borrows its buffer or
//! pipe only while a burst is in flight, so an idle connection holds none.

pub mod copy;
pub mod splice;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::resources::Resources;
use crate::sys::pipe::Pipe;
use crate::sys::{self, sockopt};
use copy::CopyPump;
use splice::SplicePump;

/// Limits that apply to one split connection.
#[derive(Debug, Clone, Copy)]
pub struct FlowTimeouts {
    pub idle: Duration,
    pub half_close: Duration,
}

/// How a split connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides sent FIN; everything was delivered.
    Closed,
    /// One side reset (or failed); the other was reset too.
    Reset,
    /// No bytes moved for the idle timeout.
    Idle,
    /// One side closed and the other did not within the half-close timeout.
    HalfCloseTimeout,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Closed,
        Outcome::Reset,
        Outcome::Idle,
        Outcome::HalfCloseTimeout,
    ];

    /// Index into [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::Idle => "idle_timeout",
            Outcome::HalfCloseTimeout => "half_close_timeout",
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowReport {
    /// From the first socket (`a`) to the second (`b`).
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub outcome: Outcome,
    /// From the connection's start (`since` of [`relay`]) to the first byte
    /// moved b→a: the time to first byte.
    pub first_b_to_a: Option<Duration>,
}

/// What one connection's engine works with: a buffer or a pipe per
/// direction. With a `stock`, a direction holds one only during a burst
/// (taken from and given back to the stock); without, both are owned for
/// the life of the connection.
pub enum EngineState {
    Copy {
        a_to_b: Option<Vec<u8>>,
        b_to_a: Option<Vec<u8>>,
        stock: Option<Arc<Resources>>,
    },
    Splice {
        a_to_b: Option<Pipe>,
        b_to_a: Option<Pipe>,
        stock: Option<Arc<Resources>>,
    },
}

/// Per-flow bookkeeping both directions share. Relaxed atomics: one task
/// touches them, atomics only make the future `Send`.
#[derive(Debug)]
pub struct FlowState {
    start: Instant,
    /// Nanoseconds after `start` of the last byte moved.
    last_ns: AtomicU64,
    /// Nanoseconds after `start` of the first byte moved b→a (0: none yet).
    first_back_ns: AtomicU64,
    /// Bytes a→b, then b→a.
    pub moved: [AtomicU64; 2],
}

impl FlowState {
    fn new(start: Instant) -> FlowState {
        FlowState {
            start,
            last_ns: AtomicU64::new(0),
            first_back_ns: AtomicU64::new(0),
            moved: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Record `n` bytes moved in direction `dir` (0: a→b, 1: b→a).
    pub fn add(&self, dir: usize, n: usize) {
        let before = self.moved[dir].fetch_add(n as u64, Ordering::Relaxed);
        let now = (self.start.elapsed().as_nanos() as u64).max(1);
        self.last_ns.store(now, Ordering::Relaxed);
        if dir == 1 && before == 0 && n > 0 {
            self.first_back_ns.store(now, Ordering::Relaxed);
        }
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// One direction of an engine: moves bytes `src` → `dst` until EOF on `src`
/// (then sends FIN on `dst`, unless `last`: the other direction is done
/// too and the caller closes both sockets, whose close sends the FIN) or an
/// error. Polled like a future; waits on the sockets' own readiness
/// (`poll_read_ready` / `poll_write_ready`: one reader and one writer per
/// socket, which is what a split connection has).
pub trait Pump {
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        flow: &FlowState,
        dir: usize,
        last: bool,
    ) -> Poll<io::Result<()>>;
}

/// The engine's two directions.
enum Pumps<'a> {
    Copy([CopyPump<'a>; 2]),
    Splice([SplicePump<'a>; 2]),
}

pin_project_lite::pin_project! {
    /// One split connection being forwarded: both directions and the timers,
    /// as one state machine (see [`relay`]). A few hundred bytes: this is
    /// what an idle connection's task holds.
    pub struct Relay<'a> {
        a: &'a TcpStream,
        b: &'a TcpStream,
        // The timeouts in milliseconds (two `Duration`s take 32 bytes).
        idle_ms: u64,
        half_close_ms: u64,
        flow: FlowState,
        pumps: Pumps<'a>,
        done: [bool; 2],
        half_close_at: Option<Instant>,
        // One timer for the idle and the half-close deadline. It is not
        // moved on every burst: when it fires early (there was traffic since
        // it was set) it is set again to the real deadline.
        #[pin]
        timer: Sleep,
    }
}

/// Drive both directions of a split connection (`a` the accepted side, `b`
/// the next hop) to the end with `engine`'s buffers or pipes. `since` is
/// when the connection started (accept, or a relay leg's header): the
/// report's times count from it, and so does the first idle deadline.
pub fn relay<'a>(
    a: &'a TcpStream,
    b: &'a TcpStream,
    t: FlowTimeouts,
    engine: &'a mut EngineState,
    since: Instant,
) -> Relay<'a> {
    let pumps = match engine {
        EngineState::Copy {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            Pumps::Copy([
                CopyPump::new(a_to_b, stock, true),
                CopyPump::new(b_to_a, stock, false),
            ])
        }
        EngineState::Splice {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            Pumps::Splice([
                SplicePump::new(a_to_b, stock, true),
                SplicePump::new(b_to_a, stock, false),
            ])
        }
    };
    let flow = FlowState::new(since);
    let timer = sleep_until(flow.last_activity() + t.idle);
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Relay {
        a,
        b,
        idle_ms: ms(t.idle),
        half_close_ms: ms(t.half_close),
        flow,
        pumps,
        done: [false, false],
        half_close_at: None,
        timer,
    }
}

impl Future for Relay<'_> {
    type Output = FlowReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlowReport> {
        let mut me = self.project();
        let (a, b, flow) = (*me.a, *me.b, &*me.flow);
        let outcome = 'end: loop {
            for dir in 0..2 {
                if me.done[dir] {
                    continue;
                }
                let (src, dst) = if dir == 0 { (a, b) } else { (b, a) };
                let last = me.done[1 - dir];
                let polled = match me.pumps {
                    Pumps::Copy(p) => p[dir].poll_pump(cx, src, dst, flow, dir, last),
                    Pumps::Splice(p) => p[dir].poll_pump(cx, src, dst, flow, dir, last),
                };
                match polled {
                    Poll::Pending => {}
                    Poll::Ready(Ok(())) if last => break 'end Outcome::Closed,
                    Poll::Ready(Ok(())) => {
                        me.done[dir] = true;
                        let at = Instant::now() + Duration::from_millis(*me.half_close_ms);
                        *me.half_close_at = Some(at);
                        let idle_at = flow.last_activity() + Duration::from_millis(*me.idle_ms);
                        me.timer.as_mut().reset(at.min(idle_at));
                    }
                    Poll::Ready(Err(_)) => {
                        reset_both(a, b);
                        break 'end Outcome::Reset;
                    }
                }
            }
            ready!(me.timer.as_mut().poll(cx));
            let now = Instant::now();
            if me.half_close_at.is_some_and(|h| h <= now) {
                break 'end Outcome::HalfCloseTimeout;
            }
            let idle_at = flow.last_activity() + Duration::from_millis(*me.idle_ms);
            if idle_at <= now {
                reset_both(a, b);
                break 'end Outcome::Idle;
            }
            // Traffic since the timer was set: wait for the real deadline.
            let next = me.half_close_at.map_or(idle_at, |h| h.min(idle_at));
            me.timer.as_mut().reset(next);
        };
        Poll::Ready(FlowReport {
            a_to_b: flow.moved[0].load(Ordering::Relaxed),
            b_to_a: flow.moved[1].load(Ordering::Relaxed),
            outcome,
            first_b_to_a: match flow.first_back_ns.load(Ordering::Relaxed) {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            },
        })
    }
}

/// EOF on a direction's source: FIN on `dst`, unless the other direction
/// is done too (`last`): the caller then closes both, and close sends the
/// FIN.
fn finish(dst: &TcpStream, last: bool) -> Poll<io::Result<()>> {
    Poll::Ready(if last {
        Ok(())
    } else {
        sockopt::shutdown_write(dst)
    })
}

/// The first burst of the client → next hop direction, tried at once: the
/// client has usually sent its request by the time the next hop is open,
/// but tokio has not seen the socket's first readiness event yet (and, for
/// a next hop that answered within `connect(2)`, no write readiness
/// either), so waiting for them would cost one more turn of the event
/// loop. Plain `recv`/`send`, leaving tokio's readiness alone (it is only
/// ever cleared by a read or write that saw EAGAIN through tokio).
/// `None`: nothing waiting; `Some((0, 0))`: EOF; `Some((n, written))`.
pub(crate) fn first_burst(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut [u8],
) -> io::Result<Option<(usize, usize)>> {
    use std::os::fd::AsRawFd;
    let n = match sys::recv(src.as_raw_fd(), buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut off = 0;
    while off < n {
        match sys::send(dst.as_raw_fd(), &buf[off..n]) {
            Ok(m) => off += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Some((n, off)))
}

/// Reset both sockets: their next close sends RST.
pub fn reset_both(a: &TcpStream, b: &TcpStream) {
    let _ = sockopt::set_linger_zero(a);
    let _ = sockopt::set_linger_zero(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_index_matches_its_place_in_all() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{}", o.as_str());
        }
    }
}
