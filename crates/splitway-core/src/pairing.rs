//! Early-SYN pairing: legs started when a client's SYN was seen, waiting for
//! the relay to accept that client's connection.
//!
//! Entries are keyed by the connection's 4-tuple *and* the initial
//! sequence number of its SYN ([`FourTuple::isn`]): a retransmitted SYN
//! has the same key, the next connection on a reused 4-tuple has another,
//! so a leg (or a mark) left over from one connection is never paired with
//! the next one on the same ports. The legs are bounded per source address
//! and in total, so a SYN flood can not make the relay open unbounded legs:
//! past a bound, [`Pending::try_insert`] refuses and the relay falls back to
//! connecting after accept. Marks (left by an accept that found no leg, so a
//! late SYN report starts none) hold no leg and have their own, larger
//! bound. Inserting for a SYN and claiming (or marking) for an accept are
//! each one locked step, so the two can race without both starting a leg.
//! Entries not claimed within the timeout are expired by [`Pending::expire`].
//! Time comes from the caller. The map is sharded by key hash so the SYN
//! tap and accepting workers rarely contend.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// One connection: its 4-tuple as the client sees it, and the initial
/// sequence number of the client's SYN, which tells connections that reuse
/// the same 4-tuple apart (and is the same in a retransmitted SYN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub isn: u32,
}

/// Why an early leg was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This SYN already has a pending leg (a retransmit), or its
    /// connection was accepted first and left a mark.
    Duplicate,
    PerSourceBound,
    TotalBound,
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Duplicate => "duplicate",
            Refused::PerSourceBound => "per_source_bound",
            Refused::TotalBound => "total_bound",
        }
    }
}

const SHARDS: usize = 16;

/// Marks allowed per allowed pending leg: a mark is an entry without a leg,
/// one per accepted connection whose leg was not there yet.
const MARKS_PER_LEG: usize = 64;

enum Slot<V> {
    Leg(V),
    Mark,
}

struct Shard<V> {
    entries: HashMap<FourTuple, (u64, Slot<V>)>,
}

/// Pending early legs, bounded and expiring.
pub struct Pending<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
    marks: Mutex<usize>,
    max_total: usize,
    max_per_source: usize,
    max_marks: usize,
    timeout_ms: u64,
}

fn shard_of(k: &FourTuple) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl<V> Pending<V> {
    pub fn new(max_total: usize, max_per_source: usize, timeout_ms: u64) -> Pending<V> {
        Pending {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                    })
                })
                .collect(),
            per_source: Mutex::new(HashMap::new()),
            total: Mutex::new(0),
            marks: Mutex::new(0),
            max_total,
            max_per_source,
            max_marks: max_total.saturating_mul(MARKS_PER_LEG),
            timeout_ms,
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot in the bounds; the caller holds the key's shard lock.
    fn reserve_locked(&self, key: &FourTuple) -> Result<(), Refused> {
        let mut total = Self::lock(&self.total);
        if *total >= self.max_total {
            return Err(Refused::TotalBound);
        }
        let mut ps = Self::lock(&self.per_source);
        let n = ps.entry(key.src.ip()).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refused::PerSourceBound);
        }
        *n += 1;
        *total += 1;
        Ok(())
    }

    /// Give back the slot of an entry that is gone.
    fn release_slot(&self, key: &FourTuple, slot: &Slot<V>) {
        match slot {
            Slot::Leg(_) => self.release(key),
            Slot::Mark => {
                let mut m = Self::lock(&self.marks);
                *m = m.saturating_sub(1);
            }
        }
    }

    /// Give back a leg's slot in the bounds.
    fn release(&self, key: &FourTuple) {
        let mut total = Self::lock(&self.total);
        *total = total.saturating_sub(1);
        let mut ps = Self::lock(&self.per_source);
        if let Some(n) = ps.get_mut(&key.src.ip()) {
            *n -= 1;
            if *n == 0 {
                ps.remove(&key.src.ip());
            }
        }
    }

    /// Record `value` for `key` if the key is new and the bounds allow it;
    /// the check and the insert are one step, so a concurrent
    /// [`Pending::take_or_mark`] sees either nothing or the entry.
    pub fn try_insert(&self, key: FourTuple, value: V, now_ms: u64) -> Result<(), Refused> {
        let mut shard = Self::lock(&self.shards[shard_of(&key)]);
        if shard.entries.contains_key(&key) {
            return Err(Refused::Duplicate);
        }
        self.reserve_locked(&key)?;
        shard.entries.insert(key, (now_ms, Slot::Leg(value)));
        Ok(())
    }

    /// Claim the leg for `key` if there is one. Otherwise leave a mark
    /// (within the marks' bound), so a late [`Pending::try_insert`] for the
    /// same SYN is refused as a duplicate; a mark already there stays. One
    /// step, like `try_insert`.
    pub fn take_or_mark(&self, key: &FourTuple, now_ms: u64) -> Option<V> {
        let mut shard = Self::lock(&self.shards[shard_of(key)]);
        match shard.entries.get(key) {
            Some((_, Slot::Leg(_))) => {
                let Some((_, Slot::Leg(v))) = shard.entries.remove(key) else {
                    unreachable!("checked under the lock")
                };
                drop(shard);
                self.release(key);
                Some(v)
            }
            Some((_, Slot::Mark)) => None,
            None => {
                let mut marks = Self::lock(&self.marks);
                if *marks < self.max_marks {
                    *marks += 1;
                    shard.entries.insert(*key, (now_ms, Slot::Mark));
                }
                None
            }
        }
    }

    /// Claim the leg for `key`, if any (a mark stays).
    pub fn take(&self, key: &FourTuple) -> Option<V> {
        let mut shard = Self::lock(&self.shards[shard_of(key)]);
        if !matches!(shard.entries.get(key), Some((_, Slot::Leg(_)))) {
            return None;
        }
        let Some((_, Slot::Leg(v))) = shard.entries.remove(key) else {
            unreachable!("checked under the lock")
        };
        drop(shard);
        self.release(key);
        Some(v)
    }

    /// Remove entries older than the timeout; return the legs among them.
    pub fn expire(&self, now_ms: u64) -> Vec<(FourTuple, V)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let mut s = Self::lock(s);
            let old: Vec<FourTuple> = s
                .entries
                .iter()
                .filter(|(_, (t, _))| now_ms.saturating_sub(*t) >= self.timeout_ms)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                if let Some((_, slot)) = s.entries.remove(&k) {
                    self.release_slot(&k, &slot);
                    if let Slot::Leg(v) = slot {
                        out.push((k, v));
                    }
                }
            }
        }
        out
    }

    /// Legs pending now.
    pub fn len(&self) -> usize {
        *Self::lock(&self.total)
    }

    /// Marks held now.
    pub fn marks(&self) -> usize {
        *Self::lock(&self.marks)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str) -> FourTuple {
        syn(src, dst, 1)
    }

    /// The SYN with initial sequence number `isn` on this 4-tuple.
    fn syn(src: &str, dst: &str, isn: u32) -> FourTuple {
        FourTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            isn,
        }
    }

    fn add(p: &Pending<u32>, k: FourTuple, v: u32, now: u64) -> Result<(), Refused> {
        p.try_insert(k, v, now)
    }

    #[test]
    fn syn_seen_then_accept_pairs() {
        let p = Pending::new(10, 10, 1000);
        let k = key("10.0.0.1:5000", "10.0.3.2:80");
        add(&p, k, 7, 0).unwrap();
        assert_eq!(p.take(&k), Some(7));
        assert_eq!(p.take(&k), None, "claimed once");
        assert!(p.is_empty());
    }

    #[test]
    fn accept_without_syn_finds_nothing() {
        let p: Pending<u32> = Pending::new(10, 10, 1000);
        assert_eq!(p.take(&key("10.0.0.1:5000", "10.0.3.2:80")), None);
    }

    #[test]
    fn syn_never_completed_expires() {
        let p = Pending::new(10, 10, 1000);
        let k = key("10.0.0.1:5000", "10.0.3.2:80");
        add(&p, k, 1, 0).unwrap();
        assert!(p.expire(999).is_empty());
        assert_eq!(p.expire(1000), vec![(k, 1)]);
        assert!(p.is_empty());
        assert_eq!(p.take(&k), None);
    }

    #[test]
    fn retransmitted_syn_is_a_duplicate() {
        let p = Pending::new(10, 10, 1000);
        let k = key("10.0.0.1:5000", "10.0.3.2:80");
        add(&p, k, 1, 0).unwrap();
        assert_eq!(add(&p, k, 2, 0), Err(Refused::Duplicate));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn accept_before_syn_report_leaves_a_mark_that_blocks_the_late_syn() {
        let p = Pending::new(10, 10, 1000);
        let k = key("10.0.0.1:5000", "10.0.3.2:80");
        assert_eq!(p.take_or_mark(&k, 0), None, "nothing pending yet");
        assert_eq!(
            add(&p, k, 7, 1),
            Err(Refused::Duplicate),
            "the late SYN starts nothing"
        );
        assert_eq!((p.len(), p.marks()), (0, 1), "a mark holds no leg slot");
        assert!(p.expire(1000).is_empty(), "the mark expires, no leg");
        assert_eq!(p.marks(), 0);
        add(&p, k, 7, 1000).unwrap();
        assert_eq!(p.take_or_mark(&k, 1000), Some(7), "claimed, no mark left");
        assert!(p.is_empty());
        assert_eq!(p.marks(), 0);
    }

    /// The soak's resets: a client reuses a 4-tuple within the timeout.
    /// Connection A is accepted before its SYN is reported (mark), then B on
    /// the same 4-tuple likewise. Keyed by 4-tuple only, B's accept took
    /// A's mark as its "claim" and left none, so B's late SYN report started
    /// a leg nobody was waiting for, which connection C on the same 4-tuple
    /// then claimed: a leg started for another connection's SYN. With the
    /// ISN in the key each connection has its own mark and its own leg.
    #[test]
    fn reused_tuple_never_pairs_with_the_previous_connections_mark_or_leg() {
        let p = Pending::new(10, 10, 3000);
        let (src, dst) = ("10.0.0.1:5000", "10.0.3.2:80");
        let (a, b, c) = (syn(src, dst, 100), syn(src, dst, 200), syn(src, dst, 300));
        // A: accepted first, its SYN reported late.
        assert_eq!(p.take_or_mark(&a, 0), None);
        assert_eq!(add(&p, a, 1, 1), Err(Refused::Duplicate));
        // B, same 4-tuple 500 ms later: accepted first too.
        assert_eq!(p.take_or_mark(&b, 500), None);
        assert_eq!(
            add(&p, b, 2, 501),
            Err(Refused::Duplicate),
            "B's late SYN must start no leg: B's accept left its own mark"
        );
        assert_eq!(p.len(), 0, "no orphan leg");
        // C: its SYN reported first, then accepted: gets its own leg.
        add(&p, c, 3, 1000).unwrap();
        assert_eq!(p.take_or_mark(&c, 1001), Some(3));
        // A leg started for one SYN is never claimed by another connection.
        let d = syn(src, dst, 400);
        add(&p, c, 4, 1100).unwrap(); // C's SYN again, reported after C's accept
        assert_eq!(p.take_or_mark(&d, 1500), None, "D does not get C's leg");
        assert_eq!(p.expire(4500), vec![(c, 4)], "C's extra leg expires");
        assert!(p.is_empty());
        assert_eq!(p.marks(), 0);
    }

    #[test]
    fn marks_do_not_take_leg_slots_and_are_bounded() {
        // Per-source bound 2: marks from many accepted connections of one
        // source leave room for its SYNs' legs.
        let p = Pending::new(2, 2, 1000);
        for port in 0..100 {
            let k = key(&format!("10.0.0.1:{}", 1000 + port), "10.0.3.2:80");
            assert_eq!(p.take_or_mark(&k, 0), None);
        }
        assert_eq!((p.len(), p.marks()), (0, 100));
        add(&p, key("10.0.0.1:5000", "10.0.3.2:80"), 1, 0).unwrap();
        add(&p, key("10.0.0.1:5001", "10.0.3.2:80"), 2, 0).unwrap();
        // Marks are bounded too (64 per allowed leg): past it, none is left.
        for port in 100..200 {
            let k = key(&format!("10.0.0.1:{}", 1000 + port), "10.0.3.2:80");
            assert_eq!(p.take_or_mark(&k, 0), None);
        }
        assert_eq!(p.marks(), 2 * MARKS_PER_LEG);
        assert_eq!(p.expire(1000).len(), 2, "only legs are returned");
        assert_eq!((p.len(), p.marks()), (0, 0));
    }

    #[test]
    fn concurrent_syn_and_accept_pair_exactly_once() {
        use std::sync::Arc;
        for i in 0..200u16 {
            let p = Arc::new(Pending::new(10, 10, 1000));
            let k = key(&format!("10.0.0.1:{}", 1000 + i), "10.0.3.2:80");
            let p2 = p.clone();
            let syn = std::thread::spawn(move || p2.try_insert(k, 1, 0).is_ok());
            let got = p.take_or_mark(&k, 0);
            let inserted = syn.join().unwrap();
            // Either the accept claimed the SYN's leg, or the SYN saw the mark.
            assert_eq!(inserted, got == Some(1), "round {i}");
            if !inserted {
                assert_eq!(p.marks(), 1, "only the mark is left");
            }
            assert!(p.is_empty());
        }
    }

    #[test]
    fn flood_from_one_source_hits_its_bound_others_still_pass() {
        let p = Pending::new(100, 8, 1000);
        let mut refused = 0;
        for port in 1000..1100 {
            if add(&p, key(&format!("10.0.0.66:{port}"), "10.0.3.2:80"), 0, 0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(p.len(), 8);
        assert_eq!(refused, 92);
        add(&p, key("10.0.0.1:5000", "10.0.3.2:80"), 0, 0).unwrap();
        // After expiry, nothing is left and the counts are back to zero.
        assert_eq!(p.expire(5000).len(), 9);
        assert!(p.is_empty());
        add(&p, key("10.0.0.66:1", "10.0.3.2:80"), 0, 5000).unwrap();
    }

    #[test]
    fn total_bound_holds_across_sources() {
        let p = Pending::new(5, 5, 1000);
        for i in 0..5 {
            add(&p, key(&format!("10.0.1.{i}:1"), "10.0.3.2:80"), 0, 0).unwrap();
        }
        assert_eq!(
            add(&p, key("10.0.2.1:1", "10.0.3.2:80"), 0, 0),
            Err(Refused::TotalBound)
        );
    }
}
