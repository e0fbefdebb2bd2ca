//! [`Flow`]: the state machine of one split connection (see the module doc
//! of [`crate::flow`] for the rules).
//!
//! Kept small on purpose: a relay holds one per open connection for its
//! whole life, so times are nanoseconds after the start and timeouts
//! milliseconds (about 70 bytes in all).

use std::time::{Duration, Instant};

use super::{Action, Event, Outcome, Report, Side, Timeouts};

/// The rules of one split connection, driven with the time.
#[derive(Debug, Clone)]
pub struct Flow {
    start: Instant,
    /// Nanoseconds after `start` of the last activity: a byte moved, or a
    /// direction ended (its end starts the half-close count).
    last_ns: u64,
    /// Nanoseconds after `start` of the first byte `B` → `A` (0: none yet).
    first_back_ns: u64,
    /// Bytes read from `A`, then from `B`.
    moved: [u64; 2],
    idle_ms: u64,
    half_close_ms: u64,
    /// The direction read from each side is still open.
    open: [bool; 2],
    /// A FIN is due on each side.
    fin_due: [bool; 2],
    /// Decided once; the final action is then due until polled.
    end: Option<Outcome>,
    end_polled: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Flow {
    /// A flow that started at `start` (its first idle deadline counts from
    /// there) with both directions open.
    pub fn new(start: Instant, t: Timeouts) -> Flow {
        Flow {
            start,
            last_ns: 0,
            first_back_ns: 0,
            moved: [0, 0],
            idle_ms: ms(t.idle),
            half_close_ms: ms(t.half_close),
            open: [true, true],
            fin_due: [false, false],
            end: None,
            end_polled: false,
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the direction read from `from` is still open (the driver
    /// reads from it).
    pub fn is_open(&self, from: Side) -> bool {
        self.open[from.index()] && self.end.is_none()
    }

    /// Whether the flow has ended (its final action may still be due).
    pub fn is_finished(&self) -> bool {
        self.end.is_some()
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.end.is_none() {
            self.end = Some(outcome);
            // Closing sends what FIN is still due; a cut sends none.
            self.fin_due = [false, false];
        }
    }

    fn touch(&mut self, t: u64) {
        self.last_ns = self.last_ns.max(t);
    }

    /// Tell the flow what happened at `now`. Ignored once it has ended.
    pub fn handle_event(&mut self, now: Instant, ev: Event) {
        if self.end.is_some() {
            return;
        }
        let t = self.ns(now);
        match ev {
            Event::Moved { from, bytes } => {
                let i = from.index();
                if !self.open[i] || bytes == 0 {
                    return;
                }
                self.moved[i] = self.moved[i].saturating_add(bytes);
                self.touch(t);
                if from == Side::B && self.first_back_ns == 0 {
                    self.first_back_ns = t.max(1);
                }
            }
            Event::End { from, clean: true } => {
                let i = from.index();
                if !self.open[i] {
                    return;
                }
                self.open[i] = false;
                self.touch(t);
                if self.open[1 - i] {
                    self.fin_due[from.other().index()] = true;
                } else {
                    self.finish(Outcome::Closed);
                }
            }
            Event::End { clean: false, .. } | Event::Reset(_) => self.finish(Outcome::Reset),
            Event::Fault => self.finish(Outcome::EngineError),
            Event::Abort => self.finish(Outcome::Aborted),
        }
    }

    /// The time is `now` (a timer armed from [`Flow::poll_timeout`] fired,
    /// maybe early: then nothing happens and a later deadline is due).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if self.deadline_ns().is_some_and(|d| self.ns(now) >= d) {
            self.finish(if self.open == [true, true] {
                Outcome::Idle
            } else {
                Outcome::HalfCloseTimeout
            });
        }
    }

    fn deadline_ns(&self) -> Option<u64> {
        let ms = if self.open == [true, true] {
            self.idle_ms
        } else {
            self.half_close_ms
        };
        self.last_ns.checked_add(ms.checked_mul(1_000_000)?)
    }

    /// When to call [`Flow::handle_timeout`]; `None` once the flow has
    /// ended (or the deadline is past what an `Instant` holds).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        self.start
            .checked_add(Duration::from_nanos(self.deadline_ns()?))
    }

    /// The next thing to do, if any: FINs first, then the one final
    /// action.
    pub fn poll_action(&mut self) -> Option<Action> {
        for side in Side::BOTH {
            if std::mem::take(&mut self.fin_due[side.index()]) {
                return Some(Action::ShutdownWrite(side));
            }
        }
        match self.end {
            Some(o) if !self.end_polled => {
                self.end_polled = true;
                Some(if o.is_clean() {
                    Action::Close
                } else {
                    Action::Reset
                })
            }
            _ => None,
        }
    }

    /// How it ended (`None` while it runs).
    pub fn outcome(&self) -> Option<Outcome> {
        self.end
    }

    /// Bytes moved so far and, once ended, how.
    pub fn report(&self) -> Report {
        Report {
            a_to_b: self.moved[0],
            b_to_a: self.moved[1],
            outcome: self.end,
            first_b_to_a: match self.first_back_ns {
                0 => None,
                ns => Some(Duration::from_nanos(ns)),
            },
        }
    }
}
