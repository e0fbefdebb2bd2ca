//! Fuzz the relay-leg header decoder (`wire::parse`, `wire::header_len`)
//! and its authentication (`KeyRing::open`).
//!
//! Properties checked on every input:
//! 1. `parse` never panics, never claims more bytes than it was given, and
//!    whatever it accepts re-encodes to exactly the bytes it read
//!    (one encoding per header).
//! 2. `open` never accepts a header that `seal` would not produce
//!    byte for byte, and never accepts the same header twice.
//! 3. A header sealed from fields taken from the input, then changed at
//!    positions the input chooses, is accepted if and only if nothing
//!    changed.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use splitway_core::auth::{KeyRing, ReplayGuard, Secret};
use splitway_core::wire::{self, Header, MAC_LEN, MAX_LEN, PREFIX_LEN};

/// The timestamp of the worked example in docs/wire.md.
const NOW: u64 = 1_700_000_000_000;

fn ring() -> KeyRing {
    // Key id 1 = bytes 0x00..0x1f, as in docs/wire.md.
    KeyRing::new(HashMap::from([(1, Secret::new((0u8..32).collect()))]), 1)
}

fuzz_target!(|data: &[u8]| {
    // 1. The decoder on arbitrary bytes.
    if data.len() >= PREFIX_LEN {
        let _ = wire::header_len(&data[..PREFIX_LEN]);
    }
    if let Ok(p) = wire::parse(data) {
        assert!(p.len <= data.len() && p.len <= MAX_LEN);
        assert_eq!(p.signed.len() + MAC_LEN, p.len);
        assert_eq!(p.mac.len(), MAC_LEN);
        assert_eq!(wire::header_len(data).ok(), Some(p.len));
        let mut again = Vec::new();
        p.header.encode_signed(&mut again);
        assert_eq!(again.as_slice(), p.signed, "non-canonical encoding accepted");
    }

    // 2. Authentication on arbitrary bytes.
    let r = ring();
    let mut guard = ReplayGuard::new(30_000, 64);
    if let Ok((h, len)) = r.open(data, NOW, &mut guard) {
        assert_eq!(r.seal(&h).as_slice(), &data[..len], "accepted a header seal would not make");
        assert!(r.open(data, NOW, &mut guard).is_err(), "accepted twice");
    }

    // 3. Tampering with a sealed header.
    if data.len() < 37 {
        return;
    }
    let ip = if data[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(data[3], data[4], data[5], data[6]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&data[3..19]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&data[19..35]);
    let port = u16::from_be_bytes([data[35], data[36]]).max(1);
    let h = Header {
        dst: SocketAddr::new(ip, port),
        hop_limit: data[1],
        key_id: 1,
        timestamp_ms: NOW - u64::from(data[2]) * 100,
        nonce,
        leg: Default::default(),
    };
    let orig = r.seal(&h);
    let mut sealed = orig.clone();
    for pair in data[37..].chunks_exact(2) {
        let i = pair[0] as usize % sealed.len();
        sealed[i] ^= pair[1];
    }
    let mut guard = ReplayGuard::new(30_000, 64);
    match r.open(&sealed, NOW, &mut guard) {
        Ok((got, len)) => {
            assert_eq!(sealed, orig, "a changed header was accepted");
            assert_eq!(len, orig.len());
            assert_eq!(got, h);
        }
        Err(e) => assert_ne!(sealed, orig, "an intact header was refused: {e}"),
    }
});
