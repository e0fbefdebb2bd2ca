//! The relay-leg header: the first bytes a relay sends on a leg to a peer.
//!
//! Layout (all integers big-endian), specified in `docs/wire.md`:
//!
//! ```text
//! off  len  field
//!   0    4  magic "SPLW"
//!   4    1  version (1: raw leg; 2: framed leg, see [`crate::frame`])
//!   5    1  address family (4 or 6)
//!   6    1  hop limit: relay hops this leg may still take
//!   7    1  flags (v1: must be 0; v2: bit 0 = lane, others 0)
//!   8    2  destination port
//!  10    1  key id (which pre-shared key signed this header)
//!  11    1  reserved (0)
//!  12    8  timestamp, Unix milliseconds
//!  20   16  nonce
//!  36  4|16 destination address
//!  ..   16  MAC: HMAC-SHA256 over all bytes before it, first 16 bytes
//! ```
//!
//! A v4 header is 56 bytes, a v6 header 68. This module only encodes and
//! parses; [`crate::auth`] computes and checks the MAC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: [u8; 4] = *b"SPLW";
/// Version of a raw leg (the stream's bytes follow the header).
pub const VERSION: u8 = 1;
/// Version of a framed leg (frames follow the header).
pub const VERSION_FRAMED: u8 = 2;
/// v2 flag: the leg is a multiplexed lane (streams opened by OPEN frames;
/// the header's destination is not used).
pub const FLAG_LANE: u8 = 0x01;

/// What follows the header on a leg: the version and flags fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegKind {
    /// v1: the raw bytes of one flow.
    #[default]
    Raw,
    /// v2, no flags: frames of one flow, stream [`crate::frame::LEG_STREAM`],
    /// to the header's destination.
    Framed,
    /// v2, lane flag: frames of many streams, each opened by an OPEN frame.
    Lane,
}

impl LegKind {
    fn version_and_flags(self) -> (u8, u8) {
        match self {
            LegKind::Raw => (VERSION, 0),
            LegKind::Framed => (VERSION_FRAMED, 0),
            LegKind::Lane => (VERSION_FRAMED, FLAG_LANE),
        }
    }
}
/// Bytes before the address.
pub const FIXED_LEN: usize = 36;
pub const MAC_LEN: usize = 16;
pub const NONCE_LEN: usize = 16;
/// The longest header (v6).
pub const MAX_LEN: usize = FIXED_LEN + 16 + MAC_LEN;
/// Bytes needed to know a header's full length.
pub const PREFIX_LEN: usize = 8;

/// Why a byte string is not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("bad address family {0}")]
    Family(u8),
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    #[error("reserved byte is {0}, must be 0")]
    Reserved(u8),
    #[error("destination port 0")]
    PortZero,
    #[error("truncated header: {needed} bytes needed")]
    Incomplete { needed: usize },
}

impl WireError {
    /// A short, stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::BadMagic => "bad_magic",
            WireError::Version(_) => "bad_version",
            WireError::Family(_) => "bad_family",
            WireError::Flags(_) => "bad_flags",
            WireError::Reserved(_) => "bad_reserved",
            WireError::PortZero => "bad_port",
            WireError::Incomplete { .. } => "truncated",
        }
    }
}

/// A relay-leg header, without its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub dst: SocketAddr,
    pub hop_limit: u8,
    pub key_id: u8,
    pub timestamp_ms: u64,
    pub nonce: [u8; NONCE_LEN],
    /// Version and flags: what follows the header.
    pub leg: LegKind,
}

/// A parsed header and the pieces the MAC check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub header: Header,
    /// The bytes the MAC covers.
    pub signed: &'a [u8],
    pub mac: &'a [u8],
    /// Total header length; stream bytes start here.
    pub len: usize,
}

impl Header {
    /// Length of the encoded header, MAC included.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + addr_len(&self.dst.ip()) + MAC_LEN
    }

    /// Append the signed part (everything but the MAC) to `out`.
    pub fn encode_signed(&self, out: &mut Vec<u8>) {
        let (version, flags) = self.leg.version_and_flags();
        out.extend_from_slice(&MAGIC);
        out.push(version);
        out.push(match self.dst {
            SocketAddr::V4(_) => 4,
            SocketAddr::V6(_) => 6,
        });
        out.push(self.hop_limit);
        out.push(flags);
        out.extend_from_slice(&self.dst.port().to_be_bytes());
        out.push(self.key_id);
        out.push(0); // reserved
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        match self.dst.ip() {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
}

fn addr_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// The full header length announced by its first [`PREFIX_LEN`] bytes.
///
/// Checks magic, version and family, so a reader can reject garbage after
/// eight bytes without waiting for more.
pub fn header_len(prefix: &[u8]) -> Result<usize, WireError> {
    if prefix.len() < PREFIX_LEN {
        // Check what we have so far against the magic.
        let n = prefix.len().min(4);
        if prefix[..n] != MAGIC[..n] {
            return Err(WireError::BadMagic);
        }
        return Err(WireError::Incomplete { needed: PREFIX_LEN });
    }
    if prefix[0..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if prefix[4] != VERSION && prefix[4] != VERSION_FRAMED {
        return Err(WireError::Version(prefix[4]));
    }
    let alen = match prefix[5] {
        4 => 4,
        6 => 16,
        f => return Err(WireError::Family(f)),
    };
    Ok(FIXED_LEN + alen + MAC_LEN)
}

/// Parse a header from the start of `buf`. Never reads past `buf`, never
/// panics; bytes after the header are ignored.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, WireError> {
    let len = header_len(buf)?;
    if buf.len() < len {
        return Err(WireError::Incomplete { needed: len });
    }
    let flags = buf[7];
    let leg = match (buf[4], flags) {
        (VERSION, 0) => LegKind::Raw,
        (VERSION_FRAMED, 0) => LegKind::Framed,
        (VERSION_FRAMED, FLAG_LANE) => LegKind::Lane,
        _ => return Err(WireError::Flags(flags)),
    };
    if buf[11] != 0 {
        return Err(WireError::Reserved(buf[11]));
    }
    let port = u16::from_be_bytes([buf[8], buf[9]]);
    if port == 0 {
        return Err(WireError::PortZero);
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&buf[12..20]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&buf[20..36]);
    let mac_at = len - MAC_LEN;
    let ip = match buf[5] {
        4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&buf[FIXED_LEN..mac_at]);
            IpAddr::V4(Ipv4Addr::from(a))
        }
        _ => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&buf[FIXED_LEN..mac_at]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    Ok(Parsed {
        header: Header {
            dst: SocketAddr::new(ip, port),
            hop_limit: buf[6],
            key_id: buf[10],
            timestamp_ms: u64::from_be_bytes(ts),
            nonce,
            leg,
        },
        signed: &buf[..mac_at],
        mac: &buf[mac_at..len],
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(dst: &str) -> Header {
        Header {
            dst: dst.parse().unwrap(),
            hop_limit: 3,
            key_id: 7,
            timestamp_ms: 1_700_000_000_123,
            nonce: [9; 16],
            leg: LegKind::Raw,
        }
    }

    fn encode(h: &Header) -> Vec<u8> {
        let mut v = Vec::new();
        h.encode_signed(&mut v);
        v.extend_from_slice(&[0xAA; MAC_LEN]);
        v
    }

    #[test]
    fn v4_and_v6_lengths() {
        assert_eq!(encode(&sample("10.0.0.1:80")).len(), 56);
        assert_eq!(encode(&sample("[fd00::1]:443")).len(), 68);
        assert_eq!(sample("[fd00::1]:443").encoded_len(), MAX_LEN);
    }

    #[test]
    fn round_trip_keeps_every_field_and_ignores_trailing_stream() {
        let h = sample("[fd00::1]:443");
        let mut bytes = encode(&h);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let p = parse(&bytes).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.len, 68);
        assert_eq!(p.mac, &[0xAA; MAC_LEN]);
        assert_eq!(p.signed.len(), 52);
    }

    #[test]
    fn rejects_each_bad_field() {
        let good = encode(&sample("10.0.0.1:80"));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(parse(&b), Err(WireError::BadMagic));
        let mut b = good.clone();
        b[4] = 3;
        assert_eq!(parse(&b), Err(WireError::Version(3)));
        let mut b = good.clone();
        b[5] = 5;
        assert_eq!(parse(&b), Err(WireError::Family(5)));
        let mut b = good.clone();
        b[7] = 1;
        assert_eq!(parse(&b), Err(WireError::Flags(1)));
        let mut b = good.clone();
        b[11] = 1;
        assert_eq!(parse(&b), Err(WireError::Reserved(1)));
        let mut b = good.clone();
        b[8] = 0;
        b[9] = 0;
        assert_eq!(parse(&b), Err(WireError::PortZero));
    }

    #[test]
    fn v2_version_and_lane_flag_select_the_leg_kind() {
        let mut h = sample("10.0.0.1:80");
        for (leg, version, flags) in [
            (LegKind::Raw, 1, 0),
            (LegKind::Framed, 2, 0),
            (LegKind::Lane, 2, 1),
        ] {
            h.leg = leg;
            let b = encode(&h);
            assert_eq!((b[4], b[7]), (version, flags));
            assert_eq!(parse(&b).unwrap().header.leg, leg);
        }
        // The lane flag means nothing in v1, and unknown v2 flags are refused.
        let mut b = encode(&sample("10.0.0.1:80"));
        b[7] = FLAG_LANE;
        assert_eq!(parse(&b), Err(WireError::Flags(1)));
        b[4] = 2;
        b[7] = 0x02;
        assert_eq!(parse(&b), Err(WireError::Flags(2)));
    }

    #[test]
    fn truncation_reports_what_is_needed() {
        let good = encode(&sample("10.0.0.1:80"));
        assert_eq!(parse(&good[..3]), Err(WireError::Incomplete { needed: 8 }));
        assert_eq!(
            parse(&good[..20]),
            Err(WireError::Incomplete { needed: 56 })
        );
        assert_eq!(
            parse(&good[..55]),
            Err(WireError::Incomplete { needed: 56 })
        );
        assert_eq!(header_len(b"GE"), Err(WireError::BadMagic));
    }

    fn any_header() -> impl Strategy<Value = Header> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        (
            ip,
            1u16..,
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            prop_oneof![
                Just(LegKind::Raw),
                Just(LegKind::Framed),
                Just(LegKind::Lane)
            ],
        )
            .prop_map(
                |(ip, port, hop_limit, key_id, timestamp_ms, nonce, leg)| Header {
                    dst: SocketAddr::new(ip, port),
                    hop_limit,
                    key_id,
                    timestamp_ms,
                    nonce,
                    leg,
                },
            )
    }

    proptest! {
        #[test]
        fn any_valid_header_round_trips(h in any_header(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = encode(&h);
            let len = bytes.len();
            prop_assert_eq!(len, h.encoded_len());
            bytes.extend_from_slice(&tail);
            let p = parse(&bytes).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.len, len);
        }

        #[test]
        fn any_bytes_give_error_or_header_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            match parse(&bytes) {
                Ok(p) => prop_assert!(p.len <= bytes.len()),
                Err(WireError::Incomplete { needed }) => prop_assert!(needed > bytes.len()),
                Err(_) => {}
            }
        }

        #[test]
        fn magic_prefixed_bytes_never_panic(rest in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&rest);
            let _ = parse(&bytes);
        }
    }
}
