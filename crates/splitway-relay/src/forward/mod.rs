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
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use crate::resources::Resources;
use crate::sys::pipe::Pipe;
use crate::sys::sockopt;

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
    /// From the start of forwarding to the first byte moved b→a.
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
    fn new() -> FlowState {
        FlowState {
            start: Instant::now(),
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

/// Drive both directions of a split connection to the end.
pub async fn relay(
    a: &TcpStream,
    b: &TcpStream,
    t: FlowTimeouts,
    engine: &mut EngineState,
) -> FlowReport {
    let flow = FlowState::new();
    let outcome = match engine {
        EngineState::Copy {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            let ab = pin!(copy::pump(a, b, a_to_b, stock, &flow, 0));
            let ba = pin!(copy::pump(b, a, b_to_a, stock, &flow, 1));
            drive(a, b, t, &flow, ab, ba).await
        }
        EngineState::Splice {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            let ab = pin!(splice::pump(a, b, a_to_b, stock, &flow, 0));
            let ba = pin!(splice::pump(b, a, b_to_a, stock, &flow, 1));
            drive(a, b, t, &flow, ab, ba).await
        }
    };
    FlowReport {
        a_to_b: flow.moved[0].load(Ordering::Relaxed),
        b_to_a: flow.moved[1].load(Ordering::Relaxed),
        outcome,
        first_b_to_a: match flow.first_back_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        },
    }
}

/// Reset both sockets: their next close sends RST.
pub fn reset_both(a: &TcpStream, b: &TcpStream) {
    let _ = sockopt::set_linger_zero(a);
    let _ = sockopt::set_linger_zero(b);
}

/// Both directions and the timers. The engines wait for readiness with
/// `poll_read_ready`/`poll_write_ready` (the socket's own waker slot: one
/// reader and one writer per socket, which is what a split connection has)
/// rather than `readable()`, whose futures carry a 150-byte waiter each. The pump futures are pinned by the
/// caller and borrowed here, so each lives once in the connection's task
/// (taken by value they would be stored twice: as arguments and pinned),
/// and one timer serves both the idle and the half-close deadline: the
/// per-connection task stays small.
async fn drive<AB, BA>(
    a: &TcpStream,
    b: &TcpStream,
    t: FlowTimeouts,
    flow: &FlowState,
    mut ab: Pin<&mut AB>,
    mut ba: Pin<&mut BA>,
) -> Outcome
where
    AB: Future<Output = io::Result<()>>,
    BA: Future<Output = io::Result<()>>,
{
    let (mut ab_done, mut ba_done) = (false, false);
    let mut half_close_at: Option<Instant> = None;
    let timer = sleep_until(flow.last_activity() + t.idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            r = ab.as_mut(), if !ab_done => match r {
                Ok(()) => ab_done = true,
                Err(_) => { reset_both(a, b); return Outcome::Reset; }
            },
            r = ba.as_mut(), if !ba_done => match r {
                Ok(()) => ba_done = true,
                Err(_) => { reset_both(a, b); return Outcome::Reset; }
            },
            _ = timer.as_mut() => {
                let now = Instant::now();
                if half_close_at.is_some_and(|h| h <= now) {
                    return Outcome::HalfCloseTimeout;
                }
                if flow.last_activity() + t.idle <= now {
                    reset_both(a, b);
                    return Outcome::Idle;
                }
            },
        }
        if ab_done && ba_done {
            return Outcome::Closed;
        }
        if half_close_at.is_none() && (ab_done || ba_done) {
            half_close_at = Some(Instant::now() + t.half_close);
        }
        let idle_at = flow.last_activity() + t.idle;
        let next = half_close_at.map_or(idle_at, |h| h.min(idle_at));
        timer.as_mut().reset(next);
    }
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
