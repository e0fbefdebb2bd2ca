//! The sender's scheduler: which stream's bytes go next on a lane.
//!
//! Two queues of stream ids, in the spirit of fq_codel's new-flow queue:
//! a stream that has sent fewer than `first_bytes` is served from the
//! *new* queue, ahead of every other stream, up to its first bytes; after
//! that it shares the *old* queue with the rest by deficit round robin (each
//! turn adds `quantum` bytes to its deficit and it sends up to its deficit).
//! So a burst of new flows gets its first bytes (an HTTP response head, a
//! small file) out before any bulk stream's next quantum, and bulk streams
//! share what is left fairly, whatever their chunk sizes.

use std::collections::VecDeque;

/// Which queue a stream was taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    New,
    Old,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    new: VecDeque<u32>,
    old: VecDeque<u32>,
}

impl Scheduler {
    /// Queue a stream that became sendable (the caller keeps it queued at
    /// most once).
    pub fn push(&mut self, id: u32, class: Class) {
        match class {
            Class::New => self.new.push_back(id),
            Class::Old => self.old.push_back(id),
        }
    }

    /// The next stream to serve: new streams first, then old ones in turn.
    pub fn pop(&mut self) -> Option<(u32, Class)> {
        if let Some(id) = self.new.pop_front() {
            return Some((id, Class::New));
        }
        self.old.pop_front().map(|id| (id, Class::Old))
    }

    /// Streams waiting in (new, old).
    pub fn lens(&self) -> (usize, usize) {
        (self.new.len(), self.old.len())
    }

    pub fn clear(&mut self) {
        self.new.clear();
        self.old.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_streams_go_before_old_ones_in_arrival_order() {
        let mut s = Scheduler::default();
        s.push(1, Class::Old);
        s.push(2, Class::Old);
        s.push(3, Class::New);
        s.push(4, Class::New);
        assert_eq!(s.lens(), (2, 2));
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
        assert_eq!(
            order,
            [
                (3, Class::New),
                (4, Class::New),
                (1, Class::Old),
                (2, Class::Old)
            ]
        );
    }
}
