//! A stock of spare things lent out and given back: the relay's buffers and
//! pipes (its "worker pools"), or anything else; tested with plain values.
//!
//! [`Spares`] keeps at most `high` spares. Taking says how many are left
//! and whether that is below `low` (time to make more ahead, for things
//! that are costly to make); giving back beyond `high` hands the thing back
//! to the caller, who drops it.

use std::sync::{Mutex, MutexGuard};

use crate::pool::Watermarks;

/// Spares kept between two watermarks. Thread-safe: one short lock per
/// take or give.
#[derive(Debug)]
pub struct Spares<T> {
    free: Mutex<Vec<T>>,
    marks: Watermarks,
}

/// What [`Spares::take`] found.
#[derive(Debug)]
pub struct Taken<T> {
    /// A spare, if there was one (else the caller makes one).
    pub spare: Option<T>,
    /// Spares left.
    pub left: usize,
    /// Fewer than `low` are left: make more ahead.
    pub low: bool,
}

impl<T> Spares<T> {
    pub fn new(marks: Watermarks) -> Spares<T> {
        Spares {
            free: Mutex::new(Vec::new()),
            marks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The freshest spare, if any.
    pub fn take(&self) -> Taken<T> {
        let (spare, left) = {
            let mut free = self.lock();
            (free.pop(), free.len())
        };
        Taken {
            spare,
            left,
            low: left < self.marks.low,
        }
    }

    /// Keep `t` as a spare unless `high` are kept already: `Ok(spares
    /// now)`, or `Err(t)` back to the caller (to drop outside the lock).
    pub fn give(&self, t: T) -> Result<usize, T> {
        let mut free = self.lock();
        if free.len() < self.marks.high {
            free.push(t);
            Ok(free.len())
        } else {
            Err(t)
        }
    }

    /// Remove every spare (returned, to drop outside the lock).
    pub fn clear(&self) -> Vec<T> {
        std::mem::take(&mut *self.lock())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many to make ahead now to be back at `high` (0 unless below
    /// `low`).
    pub fn to_make(&self) -> usize {
        self.marks.to_open(self.len(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_lent_freshest_first_and_kept_up_to_high() {
        let s = Spares::new(Watermarks::new(2, 3));
        assert_eq!(s.to_make(), 3, "empty: make up to high");
        let t = s.take();
        assert_eq!((t.spare, t.left, t.low), (None, 0, true));
        for i in 1..=3 {
            assert_eq!(s.give(i), Ok(i as usize));
        }
        assert_eq!(s.give(4), Err(4), "past high: handed back");
        assert_eq!(s.to_make(), 0);
        let t = s.take();
        assert_eq!((t.spare, t.left, t.low), (Some(3), 2, false));
        let t = s.take();
        assert_eq!((t.spare, t.left, t.low), (Some(2), 1, true), "below low");
        assert_eq!(s.to_make(), 2);
        assert_eq!(s.clear(), [1]);
        assert!(s.is_empty());
    }

    #[test]
    fn lent_from_many_threads_nothing_is_lost_or_duplicated() {
        let s = std::sync::Arc::new(Spares::new(Watermarks::new(0, 64)));
        for i in 0..64u32 {
            let _ = s.give(i);
        }
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(v) = s.take().spare {
                            assert!(s.give(v).is_ok());
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        let mut all = s.clear();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }
}
