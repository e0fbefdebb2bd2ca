//! The rules of one split connection, without sockets and without a clock.
//!
//! A split connection joins two sides: `A` (the accepted socket) and `B`
//! (the next hop). Bytes flow in two directions, each named by the side it
//! is read from. [`Flow`] is told what happened ([`Event`]: bytes moved, a
//! direction ended cleanly or not, a side reset, the relay failed or stops
//! the flow) and when ([`Flow::handle_event`], [`Flow::handle_timeout`], each
//! given `now`), and says what to do ([`Flow::poll_action`]: send a FIN on a
//! side, close both, reset both) and when to wake it ([`Flow::poll_timeout`]),
//! in the manner of quinn-proto. The engines in `splitway-relay` drive it with
//! sockets; a framed leg (frames for data, the clean end of a direction and
//! an abort) drives it the same way, mapping its frames to these events.
//!
//! The rules:
//! - A direction that ends cleanly (a FIN; on a framed leg, an end frame)
//!   becomes a FIN on the other side ([`Action::ShutdownWrite`]); when both
//!   have ended the flow is over and both sockets are closed
//!   ([`Action::Close`], whose close sends the last FIN).
//! - Timeouts are inactivity timeouts: while both directions are open, the
//!   flow ends when no byte moved either way for `idle`; once one direction
//!   has ended, when no byte moved in the one still open for `half_close`
//!   (counted from the later of its last byte and the other's end), like
//!   HAProxy's `timeout client-fin` / `server-fin`.
//! - Every end the relay did not see both peers agree on (a timeout, a reset
//!   or error on either side, a stream that stopped without its end mark, a
//!   fault of the relay, an abort at shutdown) resets both sides
//!   ([`Action::Reset`]): a peer must be able to tell a cut from a complete
//!   answer. No FIN is sent once the flow is cut.
//! - There is exactly one final action (`Close` or `Reset`); after it the
//!   flow ignores every event and asks for no timer.

mod rules;
#[cfg(test)]
mod tests;

pub use rules::Flow;

use std::time::Duration;

/// One end of a split connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The accepted socket (a client, or a leg from a peer relay).
    A = 0,
    /// The next hop (a server, or a leg to a peer relay).
    B = 1,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// 0 for `A`, 1 for `B`; also the index of the direction read from it.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The two timeouts of a flow, both inactivity timeouts (see the module
/// doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No byte in either direction for this long, both open.
    pub idle: Duration,
    /// No byte in the direction still open for this long, the other ended.
    pub half_close: Duration,
}

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `bytes` read from `from` were written to the other side.
    Moved { from: Side, bytes: u64 },
    /// The direction read from `from` ended. `clean`: its peer ended it (a
    /// FIN, or a framed leg's end frame whose byte count matches); not
    /// clean: it stopped without that (a framed leg closed without its end
    /// frame, or with a count that does not match).
    End { from: Side, clean: bool },
    /// `side` was reset or failed (an I/O error, a framed leg's abort).
    Reset(Side),
    /// The relay itself could not go on (no buffer or pipe, an engine
    /// error).
    Fault,
    /// The relay stops the flow (shutdown past its grace period).
    Abort,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a FIN on `side` (`shutdown(SHUT_WR)`, or a framed end frame):
    /// the direction toward it ended cleanly.
    ShutdownWrite(Side),
    /// Final: both directions ended cleanly and everything was handed to
    /// the sockets; close both (closing sends the FIN still due).
    Close,
    /// Final: the flow was cut; reset both sides (`SO_LINGER` 0, then
    /// close; on a framed leg an abort frame), never a FIN.
    Reset,
}

/// How a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions ended cleanly.
    Closed,
    /// A side reset or failed, or a direction ended without its end mark.
    Reset,
    /// No byte either way for the idle timeout.
    Idle,
    /// One direction ended and the other moved no byte for the half-close
    /// timeout.
    HalfCloseTimeout,
    /// The relay could not go on (resources, engine error).
    EngineError,
    /// The relay stopped the flow (shutdown past its grace period).
    Aborted,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Closed,
        Outcome::Reset,
        Outcome::Idle,
        Outcome::HalfCloseTimeout,
        Outcome::EngineError,
        Outcome::Aborted,
    ];

    /// Index into [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Reset => "reset",
            Outcome::Idle => "idle_timeout",
            Outcome::HalfCloseTimeout => "half_close_timeout",
            Outcome::EngineError => "engine_error",
            Outcome::Aborted => "aborted",
        }
    }

    /// Whether this end is a clean close (both FINs), not a cut.
    pub fn is_clean(self) -> bool {
        self == Outcome::Closed
    }
}

/// Bytes moved and how a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Read from `A`, written to `B`.
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// `None` while the flow runs.
    pub outcome: Option<Outcome>,
    /// From the flow's start to its first byte `B` → `A` (time to first
    /// byte).
    pub first_b_to_a: Option<Duration>,
}
