//! Bounded chunk stores, least recently used first out. [`ChunkStore`] is
//! the receiving relay's (hash → bytes); [`SentModel`] is the sending relay's
//! belief of what the far store holds (hash → size, no bytes), charged the
//! same way so both evict at about the same time. Neither ever holds more
//! than its bound: an insert evicts first. [`DedupStores`] is one peer
//! pair's pair of them, shared by all flows between the two relays.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{Hash, ENTRY_OVERHEAD};

/// A bounded LRU map from hashes to values, charged by weight.
#[derive(Debug)]
pub struct Lru<V> {
    map: HashMap<Hash, (V, usize, u64)>,
    /// Hash and generation; an entry is live if the map has that generation.
    order: VecDeque<(Hash, u64)>,
    gen: u64,
    bytes: usize,
    cap: usize,
    evictions: u64,
}

impl<V: Clone> Lru<V> {
    pub fn new(cap: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: VecDeque::new(),
            gen: 0,
            bytes: 0,
            cap,
            evictions: 0,
        }
    }

    /// Charged bytes held now (never above [`Lru::capacity`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The value, marked as just used.
    pub fn get(&mut self, h: &Hash) -> Option<V> {
        self.gen += 1;
        let gen = self.gen;
        let e = self.map.get_mut(h)?;
        e.2 = gen;
        let v = e.0.clone();
        self.order.push_back((*h, gen));
        self.compact();
        Some(v)
    }

    pub fn contains(&self, h: &Hash) -> bool {
        self.map.contains_key(h)
    }

    /// Inserts (or refreshes) a value of `weight` bytes; evicts the least
    /// recently used until it fits. A value heavier than the whole store is
    /// not kept.
    pub fn insert(&mut self, h: Hash, v: V, weight: usize) {
        if let Some(old) = self.map.remove(&h) {
            self.bytes -= old.1;
        }
        if weight > self.cap {
            return;
        }
        while self.bytes + weight > self.cap {
            if !self.evict_one() {
                break;
            }
        }
        self.gen += 1;
        self.map.insert(h, (v, weight, self.gen));
        self.order.push_back((h, self.gen));
        self.bytes += weight;
        self.compact();
    }

    pub fn remove(&mut self, h: &Hash) {
        if let Some(old) = self.map.remove(h) {
            self.bytes -= old.1;
        }
    }

    fn evict_one(&mut self) -> bool {
        while let Some((h, gen)) = self.order.pop_front() {
            if self.map.get(&h).is_some_and(|e| e.2 == gen) {
                if let Some(e) = self.map.remove(&h) {
                    self.bytes -= e.1;
                }
                self.evictions += 1;
                return true;
            }
        }
        false
    }

    /// Drops stale queue slots once they outnumber live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(h, gen)| map.get(h).is_some_and(|e| e.2 == *gen));
        }
    }
}

/// The weight a chunk is charged in either store.
pub fn weight(len: usize) -> usize {
    len + ENTRY_OVERHEAD
}

/// The receiving relay's chunks.
pub type ChunkStore = Lru<Arc<[u8]>>;
/// The sending relay's model of the far store: sizes only.
pub type SentModel = Lru<()>;

/// One peer pair's stores: what this relay sends to the peer (the model of
/// the peer's store) and what it received from it.
#[derive(Debug, Clone)]
pub struct DedupStores {
    pub sent: Arc<Mutex<SentModel>>,
    pub received: Arc<Mutex<ChunkStore>>,
}

impl DedupStores {
    /// Stores of `bytes` each.
    pub fn new(bytes: u64) -> Self {
        let cap = usize::try_from(bytes).unwrap_or(usize::MAX);
        DedupStores {
            sent: Arc::new(Mutex::new(Lru::new(cap))),
            received: Arc::new(Mutex::new(Lru::new(cap))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        let mut x = [0u8; 32];
        x[..4].copy_from_slice(&i.to_le_bytes());
        x
    }

    #[test]
    fn the_store_never_holds_more_than_its_bound() {
        let mut s: Lru<()> = Lru::new(10_000);
        for i in 0..10_000u32 {
            s.insert(h(i), (), 100 + (i as usize * 37) % 900);
            assert!(s.bytes() <= 10_000);
            if i % 3 == 0 {
                s.get(&h(i / 2));
            }
        }
        assert!(s.evictions() > 0);
        assert!(s.order.len() <= 2 * s.len() + 1024 + 1);
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first() {
        let mut s: Lru<u32> = Lru::new(300);
        s.insert(h(1), 1, 100);
        s.insert(h(2), 2, 100);
        s.insert(h(3), 3, 100);
        assert_eq!(s.get(&h(1)), Some(1));
        s.insert(h(4), 4, 100);
        assert!(s.contains(&h(1)));
        assert!(!s.contains(&h(2)));
        assert!(s.contains(&h(3)) && s.contains(&h(4)));
    }

    #[test]
    fn a_value_heavier_than_the_store_is_not_kept() {
        let mut s: Lru<()> = Lru::new(100);
        s.insert(h(1), (), 50);
        s.insert(h(2), (), 101);
        assert!(s.contains(&h(1)));
        assert!(!s.contains(&h(2)));
        assert_eq!(s.bytes(), 50);
    }

    #[test]
    fn reinserting_a_chunk_charges_it_once() {
        let mut s: Lru<()> = Lru::new(1000);
        s.insert(h(1), (), 100);
        s.insert(h(1), (), 100);
        assert_eq!(s.bytes(), 100);
        assert_eq!(s.len(), 1);
    }
}
