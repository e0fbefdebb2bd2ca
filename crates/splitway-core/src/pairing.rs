//! Early-SYN pairing: legs started when a client's SYN was seen, waiting for
//! the relay to accept that client's connection.
//!
//! Entries are keyed by the connection's 4-tuple. The map is bounded per
//! source address and in total, so a SYN flood can not make the relay open
//! unbounded legs: past a bound, [`Pending::try_insert`] refuses and the relay
//! falls back to connecting after accept. Inserting for a SYN and claiming
//! (or marking) for an accept are each one locked step, so the two can
//! race without both starting a leg. Entries not claimed within the
//! timeout are expired by [`Pending::expire`]. Time comes from the caller.
//! The map is sharded by key hash so the SYN tap and accepting workers
//! rarely contend.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// A connection's 4-tuple as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Why an early leg was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This 4-tuple already has a pending leg (a SYN retransmit).
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

struct Shard<V> {
    entries: HashMap<FourTuple, (u64, V)>,
}

/// Pending early legs, bounded and expiring.
pub struct Pending<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
    max_total: usize,
    max_per_source: usize,
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
            max_total,
            max_per_source,
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

    /// Give back a slot taken by an entry that is gone.
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
        shard.entries.insert(key, (now_ms, value));
        Ok(())
    }

    /// Claim the entry for `key` if there is one; otherwise leave `mark` in
    /// its place (bounds permitting), so a late [`Pending::try_insert`] for
    /// the same key is refused as a duplicate. One step, like `try_insert`.
    pub fn take_or_mark(&self, key: &FourTuple, mark: V, now_ms: u64) -> Option<V> {
        let mut shard = Self::lock(&self.shards[shard_of(key)]);
        if let Some((_, v)) = shard.entries.remove(key) {
            drop(shard);
            self.release(key);
            return Some(v);
        }
        if self.reserve_locked(key).is_ok() {
            shard.entries.insert(*key, (now_ms, mark));
        }
        None
    }

    /// Claim the entry for `key`, if any.
    pub fn take(&self, key: &FourTuple) -> Option<V> {
        let v = Self::lock(&self.shards[shard_of(key)]).entries.remove(key);
        v.map(|(_, v)| {
            self.release(key);
            v
        })
    }

    /// Remove and return entries older than the timeout.
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
                if let Some((_, v)) = s.entries.remove(&k) {
                    out.push((k, v));
                }
            }
        }
        for (k, _) in &out {
            self.release(k);
        }
        out
    }

    /// Entries pending now.
    pub fn len(&self) -> usize {
        *Self::lock(&self.total)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str) -> FourTuple {
        FourTuple {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
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
        assert_eq!(p.take_or_mark(&k, 0, 0), None, "nothing pending yet");
        assert_eq!(
            add(&p, k, 7, 1),
            Err(Refused::Duplicate),
            "the late SYN starts nothing"
        );
        assert_eq!(p.expire(1000), vec![(k, 0)], "the mark expires");
        assert!(p.is_empty());
        add(&p, k, 7, 1000).unwrap();
        assert_eq!(
            p.take_or_mark(&k, 0, 1000),
            Some(7),
            "claimed, no mark left"
        );
        assert!(p.is_empty());
    }

    #[test]
    fn concurrent_syn_and_accept_pair_exactly_once() {
        use std::sync::Arc;
        for i in 0..200u16 {
            let p = Arc::new(Pending::new(10, 10, 1000));
            let k = key(&format!("10.0.0.1:{}", 1000 + i), "10.0.3.2:80");
            let p2 = p.clone();
            let syn = std::thread::spawn(move || p2.try_insert(k, 1, 0).is_ok());
            let got = p.take_or_mark(&k, 0, 0);
            let inserted = syn.join().unwrap();
            // Either the accept claimed the SYN's leg, or the SYN saw the mark.
            assert_eq!(inserted, got == Some(1), "round {i}");
            if !inserted {
                assert_eq!(p.len(), 1, "only the mark is left");
            } else {
                assert!(p.is_empty());
            }
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
