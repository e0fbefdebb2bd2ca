//! Rate-limited logging: at most N messages per second per limiter, the rest
//! counted and reported with the next message that gets through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct RateLimit {
    per_sec: u64,
    window: AtomicU64,
    count: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(per_sec: u64) -> RateLimit {
        RateLimit {
            per_sec,
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed_since_last)` if a message may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_sec {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_the_limit_then_counts() {
        let r = RateLimit::new(3);
        let allowed = (0..10).filter(|_| r.allow().is_some()).count();
        // A second boundary may fall inside the loop; never more than 2 windows' worth.
        assert!((3..=6).contains(&allowed), "{allowed}");
    }
}
