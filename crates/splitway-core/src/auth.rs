//! Authentication of relay-leg headers: the key ring, the MAC and the replay
//! guard.
//!
//! A header is signed with HMAC-SHA256 under a pre-shared key named by its key
//! id, truncated to 16 bytes. A receiver accepts it only if the key id is in
//! its ring, the MAC matches (constant-time compare), the timestamp is within
//! the allowed clock skew of its own clock, and the nonce was not seen inside
//! that window. Clocks come from the caller (`now_ms`), so all of this is
//! tested without sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{self, Header, WireError, MAC_LEN, NONCE_LEN};

type HmacSha256 = Hmac<Sha256>;

/// A pre-shared key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// Why a header was refused. `reason()` names it for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed header: {0}")]
    Wire(#[from] WireError),
    #[error("unknown key id {0}")]
    UnknownKey(u8),
    #[error("bad MAC")]
    BadMac,
    #[error("timestamp {skew_ms} ms away from our clock (limit {limit_ms} ms)")]
    Expired { skew_ms: i64, limit_ms: u64 },
    #[error("replayed nonce")]
    Replay,
    #[error("replay cache full")]
    ReplayCacheFull,
}

impl AuthError {
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Wire(w) => w.reason(),
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::BadMac => "bad_mac",
            AuthError::Expired { .. } => "expired",
            AuthError::Replay => "replay",
            AuthError::ReplayCacheFull => "replay_cache_full",
        }
    }
}

/// The pre-shared keys a relay knows, and the one it signs with.
///
/// Keeping several keys lets operators rotate: add the new key everywhere,
/// switch `send_key`, then remove the old one.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: HashMap<u8, Secret>,
    send_key: u8,
}

impl KeyRing {
    /// `send_key` must be one of `keys`; config validation guarantees it.
    pub fn new(keys: HashMap<u8, Secret>, send_key: u8) -> KeyRing {
        KeyRing { keys, send_key }
    }

    pub fn send_key(&self) -> u8 {
        self.send_key
    }

    fn mac(&self, key_id: u8, data: &[u8]) -> Option<HmacSha256> {
        let key = self.keys.get(&key_id)?;
        let mut m = HmacSha256::new_from_slice(&key.0).ok()?;
        m.update(data);
        Some(m)
    }

    /// Encode `header` (its `key_id` replaced by the send key) with its MAC.
    pub fn seal(&self, header: &Header) -> Vec<u8> {
        let mut h = header.clone();
        h.key_id = self.send_key;
        let mut out = Vec::with_capacity(h.encoded_len());
        h.encode_signed(&mut out);
        let tag = self
            .mac(h.key_id, &out)
            .map(|m| m.finalize().into_bytes())
            .unwrap_or_default();
        out.extend_from_slice(&tag[..MAC_LEN]);
        out
    }

    /// Parse and authenticate a header at the start of `buf`. The MAC is
    /// verified first, without `guard`: only a header signed with one of
    /// our keys reaches the replay guard (and its lock, when shared by all
    /// workers), so forged or garbled headers never serialize the workers.
    pub fn open(
        &self,
        buf: &[u8],
        now_ms: u64,
        mut guard: impl ReplayCheck,
    ) -> Result<(Header, usize), AuthError> {
        let p = wire::parse(buf)?;
        let m = self
            .mac(p.header.key_id, p.signed)
            .ok_or(AuthError::UnknownKey(p.header.key_id))?;
        m.verify_truncated_left(p.mac)
            .map_err(|_| AuthError::BadMac)?;
        guard.check_replay(&p.header, now_ms)?;
        Ok((p.header, p.len))
    }
}

/// Where [`KeyRing::open`] checks an authentic header's timestamp and
/// nonce: a guard of one's own, or one shared behind a lock, which is
/// taken only for that check.
pub trait ReplayCheck {
    fn check_replay(&mut self, header: &Header, now_ms: u64) -> Result<(), AuthError>;
}

impl ReplayCheck for &mut ReplayGuard {
    fn check_replay(&mut self, header: &Header, now_ms: u64) -> Result<(), AuthError> {
        self.check(header, now_ms)
    }
}

impl ReplayCheck for &std::sync::Mutex<ReplayGuard> {
    fn check_replay(&mut self, header: &Header, now_ms: u64) -> Result<(), AuthError> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(header, now_ms)
    }
}

/// Remembers nonces for as long as their timestamps are acceptable.
///
/// A header is accepted when `|now - timestamp| <= window`. A nonce accepted
/// at `now` can only be replayed while its timestamp is in the window, i.e.
/// until `now + 2 * window` at the latest, so entries are kept that long.
/// Memory is bounded by `capacity`; when full, new headers are refused (fail
/// closed) rather than forgetting nonces early.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    pub fn new(window_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            capacity,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, nonce)) = self.order.front() {
            if at.saturating_add(2 * self.window_ms) >= now_ms {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
    }

    /// Accept `header` once, if its timestamp is fresh.
    pub fn check(&mut self, header: &Header, now_ms: u64) -> Result<(), AuthError> {
        let skew = now_ms as i128 - header.timestamp_ms as i128;
        if skew.unsigned_abs() > self.window_ms as u128 {
            return Err(AuthError::Expired {
                skew_ms: skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                limit_ms: self.window_ms,
            });
        }
        self.expire(now_ms);
        if self.seen.contains(&header.nonce) {
            return Err(AuthError::Replay);
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::ReplayCacheFull);
        }
        self.seen.insert(header.nonce);
        self.order.push_back((now_ms, header.nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn ring(id: u8, key: &[u8]) -> KeyRing {
        KeyRing::new(HashMap::from([(id, Secret::new(key.to_vec()))]), id)
    }

    fn header(nonce: u8, ts: u64) -> Header {
        Header {
            dst: "10.1.2.3:80".parse().unwrap(),
            hop_limit: 2,
            key_id: 0,
            timestamp_ms: ts,
            nonce: [nonce; 16],
            leg: Default::default(),
        }
    }

    #[test]
    fn sealed_header_opens_with_same_key() {
        let r = ring(1, b"0123456789abcdef");
        let bytes = r.seal(&header(1, NOW));
        let mut g = ReplayGuard::new(30_000, 100);
        let (h, len) = r.open(&bytes, NOW + 5, &mut g).unwrap();
        assert_eq!(h.dst, "10.1.2.3:80".parse().unwrap());
        assert_eq!(h.key_id, 1);
        assert_eq!(len, bytes.len());
    }

    #[test]
    fn wrong_key_or_flipped_bit_is_bad_mac() {
        let a = ring(1, b"0123456789abcdef");
        let b = ring(1, b"fedcba9876543210");
        let bytes = a.seal(&header(1, NOW));
        let mut g = ReplayGuard::new(30_000, 100);
        assert_eq!(b.open(&bytes, NOW, &mut g), Err(AuthError::BadMac));
        for i in 0..bytes.len() {
            // Every signed byte and every MAC byte is covered.
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let err = a.open(&t, NOW, &mut g).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::BadMac | AuthError::Wire(_) | AuthError::UnknownKey(_)
                ),
                "byte {i}: {err:?}"
            );
        }
    }

    /// Counts how often the replay guard is reached.
    struct Counting(u32);

    impl ReplayCheck for &mut Counting {
        fn check_replay(&mut self, _: &Header, _: u64) -> Result<(), AuthError> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn a_bad_mac_never_reaches_the_replay_guard() {
        let a = ring(1, b"0123456789abcdef");
        let b = ring(1, b"fedcba9876543210");
        let bytes = a.seal(&header(1, NOW));
        let mut c = Counting(0);
        assert_eq!(b.open(&bytes, NOW, &mut c), Err(AuthError::BadMac));
        let mut t = bytes.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(a.open(&t, NOW, &mut c), Err(AuthError::BadMac));
        assert_eq!(c.0, 0, "forged headers never touch the guard");
        assert!(a.open(&bytes, NOW, &mut c).is_ok());
        assert_eq!(c.0, 1, "an authentic one does, once");
        // Shared behind a lock: a forged header opens while another worker
        // holds the lock (it would wait forever if the lock were taken).
        let shared = std::sync::Mutex::new(ReplayGuard::new(30_000, 100));
        let held = shared.lock().unwrap();
        assert_eq!(b.open(&bytes, NOW, &shared), Err(AuthError::BadMac));
        drop(held);
        assert!(a.open(&bytes, NOW, &shared).is_ok());
    }

    #[test]
    fn unknown_key_id_is_refused() {
        let a = ring(1, b"0123456789abcdef");
        let b = ring(2, b"0123456789abcdef");
        let bytes = a.seal(&header(1, NOW));
        let mut g = ReplayGuard::new(30_000, 100);
        assert_eq!(b.open(&bytes, NOW, &mut g), Err(AuthError::UnknownKey(1)));
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        let old = ring(1, b"old-key-old-key-");
        let new = ring(2, b"new-key-new-key-");
        let both = KeyRing::new(
            HashMap::from([
                (1, Secret::new(b"old-key-old-key-".to_vec())),
                (2, Secret::new(b"new-key-new-key-".to_vec())),
            ]),
            2,
        );
        let mut g = ReplayGuard::new(30_000, 100);
        assert!(both.open(&old.seal(&header(1, NOW)), NOW, &mut g).is_ok());
        assert!(both.open(&new.seal(&header(2, NOW)), NOW, &mut g).is_ok());
    }

    #[test]
    fn replay_inside_window_is_refused() {
        let r = ring(1, b"0123456789abcdef");
        let bytes = r.seal(&header(1, NOW));
        let mut g = ReplayGuard::new(30_000, 100);
        assert!(r.open(&bytes, NOW, &mut g).is_ok());
        assert_eq!(r.open(&bytes, NOW + 1000, &mut g), Err(AuthError::Replay));
        // Once the timestamp is outside the window the header is expired,
        // never accepted again.
        assert!(matches!(
            r.open(&bytes, NOW + 30_001, &mut g),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn old_and_future_timestamps_are_expired() {
        let mut g = ReplayGuard::new(30_000, 100);
        assert!(matches!(
            g.check(&header(1, NOW - 30_001), NOW),
            Err(AuthError::Expired { .. })
        ));
        assert!(matches!(
            g.check(&header(2, NOW + 30_001), NOW),
            Err(AuthError::Expired { .. })
        ));
        assert!(g.check(&header(3, NOW + 30_000), NOW).is_ok());
    }

    #[test]
    fn guard_forgets_only_after_twice_the_window() {
        let mut g = ReplayGuard::new(1000, 100);
        // Future-dated by the full window: replayable until NOW + 2000.
        g.check(&header(1, NOW + 1000), NOW).unwrap();
        assert_eq!(
            g.check(&header(1, NOW + 1000), NOW + 2000),
            Err(AuthError::Replay)
        );
        g.check(&header(9, NOW + 2001), NOW + 2001).unwrap();
        assert_eq!(g.len(), 1, "the first nonce was expired");
    }

    #[test]
    fn full_cache_fails_closed() {
        let mut g = ReplayGuard::new(1000, 2);
        g.check(&header(1, NOW), NOW).unwrap();
        g.check(&header(2, NOW), NOW).unwrap();
        assert_eq!(
            g.check(&header(3, NOW), NOW),
            Err(AuthError::ReplayCacheFull)
        );
    }

    #[test]
    fn secret_debug_is_masked() {
        let s = Secret::new(b"supersecret".to_vec());
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
