//! Pool bookkeeping for pre-established relay legs, without sockets.
//!
//! A pool keeps its idle legs between a low and a high watermark: whenever
//! idle plus in-flight opens drop below `low`, it opens enough to reach
//! `high` again. Legs are one-shot (each carries one connection), so a busy
//! pool refills continuously; an idle pool sits at `high`.

/// Watermarks of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: usize,
    pub high: usize,
}

impl Watermarks {
    /// `low` is clamped to `high`.
    pub fn new(low: usize, high: usize) -> Watermarks {
        Watermarks {
            low: low.min(high),
            high,
        }
    }

    /// How many legs to start opening now, given `idle` ready legs and
    /// `opening` connects in flight.
    pub fn to_open(&self, idle: usize, opening: usize) -> usize {
        let have = idle + opening;
        // An empty pool refills even when `low` is 0.
        if self.high > 0 && have < self.low.max(1) {
            self.high - have
        } else {
            0
        }
    }

    /// How many idle legs to close (after the high watermark was lowered).
    pub fn to_close(&self, idle: usize) -> usize {
        idle.saturating_sub(self.high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refills_to_high_when_below_low() {
        let w = Watermarks::new(4, 16);
        assert_eq!(w.to_open(0, 0), 16);
        assert_eq!(w.to_open(3, 0), 13);
        assert_eq!(w.to_open(2, 1), 13);
        assert_eq!(w.to_open(4, 0), 0, "at low: nothing to do");
        assert_eq!(w.to_open(10, 0), 0);
        assert_eq!(w.to_open(0, 16), 0, "enough in flight");
    }

    #[test]
    fn zero_high_disables_the_pool() {
        let w = Watermarks::new(0, 0);
        assert_eq!(w.to_open(0, 0), 0);
    }

    #[test]
    fn lowered_high_closes_the_excess() {
        let w = Watermarks::new(1, 2);
        assert_eq!(w.to_close(5), 3);
        assert_eq!(w.to_close(2), 0);
    }

    proptest! {
        #[test]
        fn never_overfills_and_never_starves(low in 0usize..64, high in 0usize..64, idle in 0usize..80, opening in 0usize..80) {
            let w = Watermarks::new(low, high);
            let n = w.to_open(idle, opening);
            // Never above high.
            prop_assert!(n == 0 || idle + opening + n <= w.high);
            // Below low (with a non-empty pool configured) always refills to high.
            if w.high > 0 && idle + opening < w.low.max(1) {
                prop_assert_eq!(idle + opening + n, w.high);
            }
        }
    }
}
