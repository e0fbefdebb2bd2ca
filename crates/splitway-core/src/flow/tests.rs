//! The flow rules under simulated time: every timeout, every order of ends,
//! resets and faults, and a property test over random event sequences.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const IDLE: Duration = Duration::from_secs(600);
const HALF: Duration = Duration::from_secs(2);

/// A flow and a simulated clock.
struct Sim {
    t0: Instant,
    now: Instant,
    flow: Flow,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(IDLE, HALF)
    }

    fn with(idle: Duration, half_close: Duration) -> Sim {
        let t0 = Instant::now();
        Sim {
            t0,
            now: t0,
            flow: Flow::new(t0, Timeouts { idle, half_close }),
        }
    }

    fn at(&mut self, secs: f64) -> &mut Sim {
        self.now = self.t0 + Duration::from_secs_f64(secs);
        self
    }

    fn ev(&mut self, ev: Event) -> Vec<Action> {
        self.flow.handle_event(self.now, ev);
        self.actions()
    }

    fn tick(&mut self) -> Vec<Action> {
        self.flow.handle_timeout(self.now);
        self.actions()
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.flow.poll_action()).collect()
    }

    fn deadline(&self) -> Option<Duration> {
        self.flow.poll_timeout().map(|d| d - self.t0)
    }
}

fn moved(from: Side, bytes: u64) -> Event {
    Event::Moved { from, bytes }
}

fn fin(from: Side) -> Event {
    Event::End { from, clean: true }
}

#[test]
fn a_fin_each_way_is_carried_then_the_flow_closes_cleanly_in_either_order() {
    for first in Side::BOTH {
        let mut s = Sim::new();
        assert_eq!(s.ev(moved(first, 10)), []);
        assert_eq!(s.ev(fin(first)), [Action::ShutdownWrite(first.other())]);
        assert!(!s.flow.is_open(first) && s.flow.is_open(first.other()));
        assert_eq!(s.ev(moved(first.other(), 5)), []);
        assert_eq!(s.ev(fin(first.other())), [Action::Close]);
        assert_eq!(s.flow.outcome(), Some(Outcome::Closed));
        assert_eq!(s.flow.poll_timeout(), None);
        assert_eq!(s.flow.poll_action(), None);
    }
}

#[test]
fn both_fins_before_the_driver_asks_give_one_close_and_no_shutdown() {
    let mut s = Sim::new();
    s.flow.handle_event(s.now, fin(Side::A));
    s.flow.handle_event(s.now, fin(Side::B));
    assert_eq!(s.actions(), [Action::Close]);
}

#[test]
fn the_idle_timeout_counts_from_the_last_byte_either_way_and_resets() {
    let mut s = Sim::new();
    assert_eq!(s.deadline(), Some(IDLE), "armed from the start");
    s.at(100.0).ev(moved(Side::A, 1));
    assert_eq!(s.deadline(), Some(Duration::from_secs(700)));
    s.at(300.0).ev(moved(Side::B, 1));
    assert_eq!(s.deadline(), Some(Duration::from_secs(900)));
    // A timer armed for an older deadline fires early: nothing happens.
    assert_eq!(s.at(700.0).tick(), []);
    assert_eq!(s.at(899.999).tick(), []);
    assert_eq!(s.at(900.0).tick(), [Action::Reset]);
    assert_eq!(s.flow.outcome(), Some(Outcome::Idle));
}

#[test]
fn half_close_is_an_inactivity_timeout_of_the_direction_still_open() {
    // The repro: a request and a FIN, then an answer of 1 KiB
    // every 0.5 s for 10 s with half_close = 2 s: never cut.
    let mut s = Sim::new();
    s.ev(moved(Side::A, 100));
    assert_eq!(s.ev(fin(Side::A)), [Action::ShutdownWrite(Side::B)]);
    assert_eq!(s.deadline(), Some(HALF), "half-close counts from the FIN");
    for i in 1..=20 {
        let t = i as f64 * 0.5;
        assert_eq!(s.at(t).tick(), [], "cut at {t} s");
        s.ev(moved(Side::B, 1024));
        assert_eq!(s.deadline(), Some(Duration::from_secs_f64(t) + HALF));
    }
    assert_eq!(s.at(11.0).ev(fin(Side::B)), [Action::Close]);
    assert_eq!(s.flow.report().b_to_a, 20 * 1024);
}

#[test]
fn half_close_without_a_byte_for_the_timeout_resets_both() {
    for first in Side::BOTH {
        let mut s = Sim::new();
        s.at(1.0).ev(moved(first.other(), 7));
        s.at(5.0).ev(fin(first));
        // The FIN starts the count even though the open direction's last
        // byte is older.
        assert_eq!(s.deadline(), Some(Duration::from_secs(7)));
        assert_eq!(s.at(6.999).tick(), []);
        assert_eq!(s.at(7.0).tick(), [Action::Reset]);
        assert_eq!(s.flow.outcome(), Some(Outcome::HalfCloseTimeout));
    }
}

#[test]
fn a_shorter_half_close_brings_the_deadline_forward_and_a_longer_one_back() {
    let mut s = Sim::with(Duration::from_secs(10), Duration::from_secs(60));
    s.at(1.0).ev(fin(Side::B));
    assert_eq!(s.deadline(), Some(Duration::from_secs(61)));
    let mut s = Sim::with(Duration::from_secs(600), Duration::from_secs(1));
    s.at(1.0).ev(fin(Side::B));
    assert_eq!(s.deadline(), Some(Duration::from_secs(2)));
}

#[test]
fn bytes_in_a_direction_that_ended_are_not_activity() {
    let mut s = Sim::new();
    s.ev(fin(Side::A));
    s.at(1.5).ev(moved(Side::A, 10));
    assert_eq!(s.deadline(), Some(HALF));
    assert_eq!(s.flow.report().a_to_b, 0);
}

#[test]
fn every_unclean_end_resets_both_in_every_state() {
    let cuts = [
        (Event::Reset(Side::A), Outcome::Reset),
        (Event::Reset(Side::B), Outcome::Reset),
        (
            Event::End {
                from: Side::A,
                clean: false,
            },
            Outcome::Reset,
        ),
        (
            Event::End {
                from: Side::B,
                clean: false,
            },
            Outcome::Reset,
        ),
        (Event::Fault, Outcome::EngineError),
        (Event::Abort, Outcome::Aborted),
    ];
    // Before anything, after bytes, and after either direction ended.
    let befores: [&[Event]; 4] = [
        &[],
        &[moved(Side::A, 1), moved(Side::B, 1)],
        &[fin(Side::A)],
        &[fin(Side::B)],
    ];
    for (cut, outcome) in cuts {
        for before in befores {
            let mut s = Sim::new();
            for e in before {
                s.flow.handle_event(s.now, *e);
            }
            let _ = s.actions();
            assert_eq!(
                s.at(1.0).ev(cut),
                [Action::Reset],
                "{cut:?} after {before:?}"
            );
            assert_eq!(s.flow.outcome(), Some(outcome));
            // Nothing after the end: no FIN, no second final, no timer.
            for e in [fin(Side::A), fin(Side::B), Event::Abort] {
                assert_eq!(s.ev(e), []);
            }
            assert_eq!(s.at(10_000.0).tick(), []);
            assert_eq!(s.flow.poll_timeout(), None);
        }
    }
}

#[test]
fn a_cut_before_the_driver_sent_a_due_fin_sends_no_fin() {
    let mut s = Sim::new();
    s.flow.handle_event(s.now, fin(Side::A));
    s.flow.handle_event(s.now, Event::Reset(Side::A));
    assert_eq!(s.actions(), [Action::Reset]);
}

#[test]
fn the_time_to_first_byte_is_the_first_byte_from_b() {
    let mut s = Sim::new();
    s.at(0.2).ev(moved(Side::A, 1));
    assert_eq!(s.flow.report().first_b_to_a, None);
    s.at(0.3).ev(moved(Side::B, 1));
    s.at(0.9).ev(moved(Side::B, 1));
    let r = s.flow.report();
    assert_eq!(r.first_b_to_a, Some(Duration::from_millis(300)));
    assert_eq!((r.a_to_b, r.b_to_a, r.outcome), (1, 2, None));
}

#[test]
fn huge_timeouts_never_fire_and_never_overflow() {
    let mut s = Sim::with(Duration::MAX, Duration::MAX);
    assert_eq!(s.flow.poll_timeout(), None);
    assert_eq!(s.at(1e9).tick(), []);
    s.ev(fin(Side::A));
    assert_eq!(s.at(2e9).tick(), []);
}

#[test]
fn outcome_index_matches_its_place_in_all() {
    for (i, o) in Outcome::ALL.iter().enumerate() {
        assert_eq!(o.index(), i, "{}", o.as_str());
    }
}

/// An event or a tick, at a time step of 0–3 s.
#[derive(Debug, Clone)]
enum Step {
    Ev(Event),
    Tick,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (side(), 1u64..100_000).prop_map(|(from, bytes)| Step::Ev(moved(from, bytes))),
        2 => (side(), prop::bool::weighted(0.9))
            .prop_map(|(from, clean)| Step::Ev(Event::End { from, clean })),
        1 => side().prop_map(|s| Step::Ev(Event::Reset(s))),
        1 => Just(Step::Ev(Event::Fault)),
        1 => Just(Step::Ev(Event::Abort)),
        3 => Just(Step::Tick),
    ]
}

proptest! {
    /// Whatever happens in whatever order: at most one final action; a
    /// clean close only when both directions ended cleanly and nothing
    /// unclean came first; at most one FIN per side and none after the
    /// end; activity always pushes the deadline to `now` + its timeout; a
    /// timer never ends a flow before its deadline; the byte counts add up.
    #[test]
    fn any_order_of_events_keeps_the_invariants(
        steps in prop::collection::vec((step(), 0u64..3_000), 1..60),
        idle_s in 1u64..5,
        half_s in 1u64..5,
    ) {
        let (idle, half) = (Duration::from_secs(idle_s), Duration::from_secs(half_s));
        let mut s = Sim::with(idle, half);
        let mut finals = 0;
        let mut fins = [0; 2];
        let mut unclean = false;
        let mut clean_ends = [false; 2];
        let mut sent = [0u64; 2];
        let mut t = Duration::ZERO;
        for (step, dt) in steps {
            t += Duration::from_millis(dt);
            s.now = s.t0 + t;
            let was_finished = s.flow.is_finished();
            let deadline = s.flow.poll_timeout();
            let actions = match step {
                Step::Tick => {
                    let a = s.tick();
                    if deadline.is_some_and(|d| s.now < d) {
                        prop_assert!(a.is_empty(), "ended before its deadline");
                    }
                    if !was_finished && s.flow.is_finished() {
                        unclean = true;
                    }
                    a
                }
                Step::Ev(ev) => {
                    let open = [s.flow.is_open(Side::A), s.flow.is_open(Side::B)];
                    let a = s.ev(ev);
                    if !was_finished {
                        match ev {
                            Event::Moved { from, bytes } if open[from.index()] => {
                                sent[from.index()] += bytes;
                                let want = if s.flow.is_open(Side::A) && s.flow.is_open(Side::B) { idle } else { half };
                                prop_assert_eq!(s.flow.poll_timeout(), Some(s.now + want), "re-armed on activity");
                            }
                            Event::End { from, clean: true } if open[from.index()] => {
                                clean_ends[from.index()] = true;
                                if !s.flow.is_finished() {
                                    prop_assert_eq!(s.flow.poll_timeout(), Some(s.now + half), "re-armed on a FIN");
                                }
                            }
                            Event::Moved { .. } | Event::End { clean: true, .. } => {}
                            _ => unclean = true,
                        }
                    }
                    a
                }
            };
            for a in actions {
                prop_assert_eq!(finals, 0, "an action after the final one: {:?}", a);
                match a {
                    Action::ShutdownWrite(side) => {
                        fins[side.index()] += 1;
                        prop_assert!(clean_ends[side.other().index()], "FIN without a clean end toward it");
                    }
                    Action::Close => {
                        finals += 1;
                        prop_assert!(!unclean, "clean close after an unclean end");
                        prop_assert!(clean_ends == [true, true]);
                        prop_assert_eq!(s.flow.outcome(), Some(Outcome::Closed));
                    }
                    Action::Reset => {
                        finals += 1;
                        prop_assert!(unclean);
                        prop_assert!(s.flow.outcome().is_some_and(|o| !o.is_clean()));
                    }
                }
            }
            prop_assert!(fins.iter().all(|n| *n <= 1), "FIN twice");
            prop_assert_eq!(s.flow.poll_timeout().is_none(), s.flow.is_finished());
            let r = s.flow.report();
            prop_assert_eq!((r.a_to_b, r.b_to_a), (sent[0], sent[1]));
        }
        prop_assert!(finals <= 1);
        prop_assert_eq!(finals == 1, s.flow.is_finished());
    }
}
