//! Is a new server connection part of a burst? The egress's small initial
//! server window (`limits.server_initial_window_segments`) helps only when
//! many answers meet on the server's link, and costs a lone answer one
//! round trip; with `limits.server_initial_window_burst = n` it applies to
//! a connection only when at least `n` server connections, this one
//! included, were opened within [`BURST_SPAN`].
//!
//! Sans-IO: the caller passes the instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How close together connections must open to count as one burst.
pub const BURST_SPAN: Duration = Duration::from_millis(100);

/// The last `n` connection instants.
#[derive(Debug)]
pub struct Burst {
    n: usize,
    recent: VecDeque<Instant>,
}

impl Burst {
    /// A burst is `n` connections (at least 1: then every one is) within
    /// [`BURST_SPAN`].
    pub fn new(n: usize) -> Burst {
        let n = n.max(1);
        Burst {
            n,
            recent: VecDeque::with_capacity(n),
        }
    }

    /// The threshold.
    pub fn threshold(&self) -> usize {
        self.n
    }

    /// A connection opens at `now`: is it part of a burst?
    pub fn open(&mut self, now: Instant) -> bool {
        if self.recent.len() == self.n {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() == self.n
            && self
                .recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) <= BURST_SPAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_always_a_burst() {
        let mut b = Burst::new(1);
        let t = Instant::now();
        assert!(b.open(t));
        assert!(b.open(t + Duration::from_secs(5)));
        assert_eq!(Burst::new(0).threshold(), 1);
    }

    #[test]
    fn n_within_the_span_make_a_burst() {
        let mut b = Burst::new(3);
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert!(!b.open(t));
        assert!(!b.open(t + ms(10)));
        assert!(b.open(t + ms(20)), "third within 100 ms");
        assert!(b.open(t + ms(30)));
        // Spread out: each alone.
        assert!(!b.open(t + ms(500)));
        assert!(!b.open(t + ms(700)));
        assert!(!b.open(t + ms(900)));
        // The span counts from the n-th last one.
        assert!(!b.open(t + ms(950)));
        assert!(b.open(t + ms(1000)), "900, 950, 1000");
        assert!(!b.open(t + ms(1101)), "950 .. 1101 is over the span");
    }
}
