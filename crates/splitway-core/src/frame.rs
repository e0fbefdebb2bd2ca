//! Frames of the relay-leg protocol v2: what follows a v2 header on a leg.
//!
//! Layout (all integers big-endian), specified in `docs/wire.md`:
//!
//! ```text
//! off  len  field
//!   0    1  type
//!   1    1  flags (DATA and MODULE: opaque to this layer; others: 0)
//!   2    2  payload length (0 ..= 65 535)
//!   4    4  stream id (0 = the leg itself)
//!   8  len  payload, by type
//! ```
//!
//! The 16-bit length bounds every frame to [`MAX_FRAME`] bytes, so a reader
//! never buffers more than that for one frame, and a splice engine can move
//! a DATA payload without looking at it (only the 8 header bytes pass
//! through user space). This module only encodes and decodes; the stream
//! rules (which frame is allowed when) are in [`crate::mux`]. Every decode
//! error here means the leg's framing is broken: the caller resets the leg.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 8;
/// The largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// The largest frame, header included.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// The stream a per-flow framed leg carries (opened by the leg header).
pub const LEG_STREAM: u32 = 1;

/// Frame type codes.
pub mod kind {
    pub const DATA: u8 = 0x00;
    pub const OPEN: u8 = 0x01;
    pub const END: u8 = 0x02;
    pub const ABORT: u8 = 0x03;
    pub const WINDOW: u8 = 0x04;
    pub const MODULE: u8 = 0x05;
    pub const PING: u8 = 0x06;
    pub const PONG: u8 = 0x07;
    pub const SETTINGS: u8 = 0x08;
}

/// Why the sender of an ABORT gave up on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortCode {
    /// No reason given.
    Unspecified,
    /// An end of the flow was reset (client or server sent RST, or an error).
    Reset,
    /// The egress could not connect to the destination.
    ConnectFailed,
    /// The destination is not allowed, not routable or out of hops.
    Refused,
    /// The peer sent more than its window allowed.
    FlowControl,
    /// Too many streams on the lane.
    StreamLimit,
    /// A frame that is not allowed in the stream's state.
    Protocol,
    /// The flow was idle too long.
    Timeout,
    /// A code this version does not know; kept so it can be counted.
    Other(u16),
}

impl AbortCode {
    pub fn code(self) -> u16 {
        match self {
            AbortCode::Unspecified => 0,
            AbortCode::Reset => 1,
            AbortCode::ConnectFailed => 2,
            AbortCode::Refused => 3,
            AbortCode::FlowControl => 4,
            AbortCode::StreamLimit => 5,
            AbortCode::Protocol => 6,
            AbortCode::Timeout => 7,
            AbortCode::Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> AbortCode {
        match c {
            0 => AbortCode::Unspecified,
            1 => AbortCode::Reset,
            2 => AbortCode::ConnectFailed,
            3 => AbortCode::Refused,
            4 => AbortCode::FlowControl,
            5 => AbortCode::StreamLimit,
            6 => AbortCode::Protocol,
            7 => AbortCode::Timeout,
            c => AbortCode::Other(c),
        }
    }

    /// A short, stable name for metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            AbortCode::Unspecified => "unspecified",
            AbortCode::Reset => "reset",
            AbortCode::ConnectFailed => "connect_failed",
            AbortCode::Refused => "refused",
            AbortCode::FlowControl => "flow_control",
            AbortCode::StreamLimit => "stream_limit",
            AbortCode::Protocol => "protocol",
            AbortCode::Timeout => "timeout",
            AbortCode::Other(_) => "other",
        }
    }
}

/// Where a stream goes: the routing fields of a v1 header, per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open<'a> {
    pub dst: SocketAddr,
    pub hop_limit: u8,
    /// Opaque to this layer: the module chain the far side runs (issue 13).
    pub ext: &'a [u8],
}

/// The receiver's limits, sent once at the start of a lane by each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bytes each new stream may send toward the sender of this frame before
    /// a WINDOW frame.
    pub initial_window: u32,
    /// Streams the sender of this frame accepts open at once.
    pub max_streams: u32,
}

/// One decoded frame; payload slices borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Data {
        stream: u32,
        flags: u8,
        payload: &'a [u8],
    },
    Open {
        stream: u32,
        open: Open<'a>,
    },
    /// A clean end of the sender's direction of the stream, after `total`
    /// payload bytes.
    End {
        stream: u32,
        total: u64,
    },
    Abort {
        stream: u32,
        code: AbortCode,
    },
    /// The sender of this frame may receive `credit` more bytes on `stream`.
    Window {
        stream: u32,
        credit: u32,
    },
    /// Module control, opaque here; stream 0 means the whole leg.
    Module {
        stream: u32,
        flags: u8,
        payload: &'a [u8],
    },
    Ping(u64),
    Pong(u64),
    Settings(Settings),
}

/// Why bytes are not a valid frame. Every variant breaks the leg's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame type {kind:#04x} with flags {flags:#04x}, must be 0")]
    Flags { kind: u8, flags: u8 },
    #[error("frame type {kind:#04x} with payload length {len}")]
    Length { kind: u8, len: usize },
    #[error("frame type {kind:#04x} on stream {stream}")]
    Stream { kind: u8, stream: u32 },
    #[error("OPEN with address family {0}")]
    Family(u8),
    #[error("OPEN to port 0")]
    PortZero,
    #[error("WINDOW with zero credit")]
    ZeroCredit,
}

impl FrameError {
    /// A short, stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::UnknownType(_) => "frame_type",
            FrameError::Flags { .. } => "frame_flags",
            FrameError::Length { .. } => "frame_length",
            FrameError::Stream { .. } => "frame_stream",
            FrameError::Family(_) => "frame_family",
            FrameError::PortZero => "frame_port",
            FrameError::ZeroCredit => "frame_zero_credit",
        }
    }
}

/// A decoded frame header: enough to splice a DATA payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: u8,
    pub flags: u8,
    pub len: usize,
    pub stream: u32,
}

impl FrameHead {
    /// Parse and check a frame header (type, flags, stream, length rules).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<FrameHead, FrameError> {
        let h = FrameHead {
            kind: b[0],
            flags: b[1],
            len: u16::from_be_bytes([b[2], b[3]]) as usize,
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        };
        h.check()?;
        Ok(h)
    }

    fn check(&self) -> Result<(), FrameError> {
        let (kind, len, stream) = (self.kind, self.len, self.stream);
        let bad_len = || Err(FrameError::Length { kind, len });
        let on_stream = stream != 0;
        let stream_ok = match kind {
            kind::DATA | kind::OPEN | kind::END | kind::ABORT | kind::WINDOW => on_stream,
            kind::MODULE => true,
            kind::PING | kind::PONG | kind::SETTINGS => !on_stream,
            k => return Err(FrameError::UnknownType(k)),
        };
        if !stream_ok {
            return Err(FrameError::Stream { kind, stream });
        }
        if !matches!(kind, kind::DATA | kind::MODULE) && self.flags != 0 {
            return Err(FrameError::Flags {
                kind,
                flags: self.flags,
            });
        }
        match kind {
            kind::OPEN if len < OPEN_V4_LEN => bad_len(),
            kind::END | kind::PING | kind::PONG | kind::SETTINGS if len != 8 => bad_len(),
            kind::ABORT if len != 2 => bad_len(),
            kind::WINDOW if len != 4 => bad_len(),
            _ => Ok(()),
        }
    }
}

/// OPEN payload: family, hop limit, port, then the address, then `ext`.
const OPEN_FIXED: usize = 4;
const OPEN_V4_LEN: usize = OPEN_FIXED + 4;

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_open(p: &[u8]) -> Result<Open<'_>, FrameError> {
    // The header check guaranteed p.len() >= OPEN_V4_LEN.
    let port = u16::from_be_bytes([p[2], p[3]]);
    let (ip, rest) = match p[0] {
        4 => {
            let mut a = [0u8; 4];
            a.copy_from_slice(&p[OPEN_FIXED..OPEN_FIXED + 4]);
            (IpAddr::V4(Ipv4Addr::from(a)), &p[OPEN_FIXED + 4..])
        }
        6 => {
            let Some(addr) = p.get(OPEN_FIXED..OPEN_FIXED + 16) else {
                return Err(FrameError::Length {
                    kind: kind::OPEN,
                    len: p.len(),
                });
            };
            let mut a = [0u8; 16];
            a.copy_from_slice(addr);
            (IpAddr::V6(Ipv6Addr::from(a)), &p[OPEN_FIXED + 16..])
        }
        f => return Err(FrameError::Family(f)),
    };
    if port == 0 {
        return Err(FrameError::PortZero);
    }
    Ok(Open {
        dst: SocketAddr::new(ip, port),
        hop_limit: p[1],
        ext: rest,
    })
}

/// Decode the payload of a checked header.
fn parse_body<'a>(h: FrameHead, p: &'a [u8]) -> Result<Frame<'a>, FrameError> {
    let stream = h.stream;
    Ok(match h.kind {
        kind::DATA => Frame::Data {
            stream,
            flags: h.flags,
            payload: p,
        },
        kind::OPEN => Frame::Open {
            stream,
            open: parse_open(p)?,
        },
        kind::END => Frame::End {
            stream,
            total: be_u64(p),
        },
        kind::ABORT => Frame::Abort {
            stream,
            code: AbortCode::from_code(u16::from_be_bytes([p[0], p[1]])),
        },
        kind::WINDOW => {
            let credit = be_u32(p);
            if credit == 0 {
                return Err(FrameError::ZeroCredit);
            }
            Frame::Window { stream, credit }
        }
        kind::MODULE => Frame::Module {
            stream,
            flags: h.flags,
            payload: p,
        },
        kind::PING => Frame::Ping(be_u64(p)),
        kind::PONG => Frame::Pong(be_u64(p)),
        kind::SETTINGS => Frame::Settings(Settings {
            initial_window: be_u32(&p[0..4]),
            max_streams: be_u32(&p[4..8]),
        }),
        k => return Err(FrameError::UnknownType(k)),
    })
}

/// Decode one frame from the start of `buf`.
///
/// `Ok(None)`: more bytes are needed (at most [`MAX_FRAME`] in all).
/// `Ok(Some((frame, n)))`: the frame used the first `n` bytes.
/// Never reads past `buf`, never panics.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = FrameHead::parse(head)?;
    let end = HEADER_LEN + h.len;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    Ok(Some((parse_body(h, payload)?, end)))
}

fn put_head(out: &mut Vec<u8>, kind: u8, flags: u8, len: usize, stream: u32) {
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Append the header of a DATA frame; its `len` payload bytes follow.
///
/// For callers that move the payload themselves (splice). `len` is clamped
/// to [`MAX_PAYLOAD`]; the caller must send exactly that many bytes.
pub fn encode_data_head(out: &mut Vec<u8>, stream: u32, flags: u8, len: usize) -> usize {
    let len = len.min(MAX_PAYLOAD);
    put_head(out, kind::DATA, flags, len, stream);
    len
}

impl Frame<'_> {
    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Data { payload, .. } | Frame::Module { payload, .. } => payload.len(),
                Frame::Open { open, .. } => open_len(open),
                Frame::End { .. } | Frame::Ping(_) | Frame::Pong(_) | Frame::Settings(_) => 8,
                Frame::Abort { .. } => 2,
                Frame::Window { .. } => 4,
            }
    }

    /// Append the encoded frame to `out`.
    ///
    /// Returns `false` and appends nothing if the frame can not be encoded:
    /// a payload over [`MAX_PAYLOAD`], stream 0 where a stream is needed (or
    /// the reverse), port 0, zero credit, or non-zero flags where none are
    /// defined. What `encode` accepts, [`decode`] gives back unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> bool {
        let len = self.encoded_len() - HEADER_LEN;
        let (kind, flags, stream) = self.head_fields();
        let head = FrameHead {
            kind,
            flags,
            len,
            stream,
        };
        if len > MAX_PAYLOAD || head.check().is_err() {
            return false;
        }
        match self {
            Frame::Open { open, .. } if open.dst.port() == 0 => return false,
            Frame::Window { credit: 0, .. } => return false,
            _ => {}
        }
        put_head(out, kind, flags, len, stream);
        match self {
            Frame::Data { payload, .. } | Frame::Module { payload, .. } => {
                out.extend_from_slice(payload)
            }
            Frame::Open { open, .. } => {
                out.push(if open.dst.is_ipv4() { 4 } else { 6 });
                out.push(open.hop_limit);
                out.extend_from_slice(&open.dst.port().to_be_bytes());
                match open.dst.ip() {
                    IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
                }
                out.extend_from_slice(open.ext);
            }
            Frame::End { total, .. } => out.extend_from_slice(&total.to_be_bytes()),
            Frame::Abort { code, .. } => out.extend_from_slice(&code.code().to_be_bytes()),
            Frame::Window { credit, .. } => out.extend_from_slice(&credit.to_be_bytes()),
            Frame::Ping(v) | Frame::Pong(v) => out.extend_from_slice(&v.to_be_bytes()),
            Frame::Settings(s) => {
                out.extend_from_slice(&s.initial_window.to_be_bytes());
                out.extend_from_slice(&s.max_streams.to_be_bytes());
            }
        }
        true
    }

    fn head_fields(&self) -> (u8, u8, u32) {
        match *self {
            Frame::Data { stream, flags, .. } => (kind::DATA, flags, stream),
            Frame::Open { stream, .. } => (kind::OPEN, 0, stream),
            Frame::End { stream, .. } => (kind::END, 0, stream),
            Frame::Abort { stream, .. } => (kind::ABORT, 0, stream),
            Frame::Window { stream, .. } => (kind::WINDOW, 0, stream),
            Frame::Module { stream, flags, .. } => (kind::MODULE, flags, stream),
            Frame::Ping(_) => (kind::PING, 0, 0),
            Frame::Pong(_) => (kind::PONG, 0, 0),
            Frame::Settings(_) => (kind::SETTINGS, 0, 0),
        }
    }
}

fn open_len(open: &Open<'_>) -> usize {
    OPEN_FIXED + if open.dst.is_ipv4() { 4 } else { 16 } + open.ext.len()
}

/// An incremental decoder: feed it bytes as they arrive, take frames out.
///
/// Holds at most one partial frame plus what was fed since (the caller
/// bounds that by how much it reads at once), so its memory is bounded by
/// [`MAX_FRAME`] + one read.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    broken: Option<FrameError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After
    /// an error the decoder stays broken and returns that error again.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let rest = &self.buf[self.pos..];
        // Decode twice to keep the borrow checker simple: once to learn the
        // outcome and length, once to hand out the borrow.
        match decode(rest) {
            Err(e) => {
                self.broken = Some(e);
                Err(e)
            }
            Ok(None) => Ok(None),
            Ok(Some((_, n))) => {
                let start = self.pos;
                self.pos += n;
                match decode(&self.buf[start..start + n]) {
                    Ok(Some((f, _))) => Ok(Some(f)),
                    // Unreachable: the same bytes decoded a moment ago.
                    _ => Ok(None),
                }
            }
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many bytes to read next so that the buffer ends exactly at the
    /// end of a frame header: the rest of the header being read, or the
    /// rest of the current frame plus the next header. 0 when a complete
    /// frame waits to be taken. A receiver that reads this many bytes at a
    /// time can move a DATA payload itself ([`Decoder::bare_head`]).
    pub fn next_read(&self) -> usize {
        let rest = &self.buf[self.pos..];
        let Some(head) = rest.first_chunk::<HEADER_LEN>() else {
            return HEADER_LEN - rest.len();
        };
        let end = HEADER_LEN + u16::from_be_bytes([head[2], head[3]]) as usize;
        if rest.len() < end {
            end - rest.len() + HEADER_LEN
        } else {
            0
        }
    }

    /// When the buffer holds exactly one frame header and nothing more: that
    /// header, checked (an error breaks the decoder as [`next_frame`] would).
    /// [`Decoder::skip_head`] then drops it, and the caller moves its
    /// payload past this decoder.
    ///
    /// [`next_frame`]: Decoder::next_frame
    pub fn bare_head(&mut self) -> Result<Option<FrameHead>, FrameError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let Some(head) = self.buf[self.pos..].first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        if self.buffered() != HEADER_LEN {
            return Ok(None);
        }
        match FrameHead::parse(head) {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                self.broken = Some(e);
                Err(e)
            }
        }
    }

    /// Drops the bare header [`Decoder::bare_head`] returned.
    pub fn skip_head(&mut self) {
        if self.buffered() == HEADER_LEN {
            self.pos += HEADER_LEN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_reads_end_at_headers_so_a_payload_can_bypass_the_decoder() {
        let mut wire = Vec::new();
        let n = encode_data_head(&mut wire, LEG_STREAM, 1, 5);
        assert_eq!(n, 5);
        wire.extend_from_slice(b"hello");
        assert!(Frame::End {
            stream: LEG_STREAM,
            total: 5
        }
        .encode(&mut wire));
        let mut d = Decoder::new();
        assert_eq!(d.next_read(), HEADER_LEN);
        d.push(&wire[..3]);
        assert_eq!(d.next_read(), HEADER_LEN - 3);
        assert_eq!(d.bare_head(), Ok(None));
        d.push(&wire[3..HEADER_LEN]);
        let h = d.bare_head().expect("valid").expect("bare");
        assert_eq!((h.kind, h.flags, h.len), (kind::DATA, 1, 5));
        // Read through the decoder instead: payload plus the next header.
        assert_eq!(d.next_read(), 5 + HEADER_LEN);
        d.skip_head();
        assert_eq!(d.buffered(), 0);
        // The payload went elsewhere; the END follows.
        d.push(&wire[HEADER_LEN + 5..HEADER_LEN + 5 + HEADER_LEN]);
        assert_eq!(d.next_read(), 8 + HEADER_LEN);
        d.push(&wire[HEADER_LEN + 5 + HEADER_LEN..]);
        assert_eq!(d.next_read(), 0);
        assert!(matches!(
            d.next_frame(),
            Ok(Some(Frame::End { total: 5, .. }))
        ));
        // A bad bare header breaks the decoder.
        let mut d = Decoder::new();
        d.push(&[0xee, 0, 0, 1, 0, 0, 0, 1]);
        assert!(d.bare_head().is_err());
        assert!(d.next_frame().is_err());
    }

    fn enc(f: &Frame<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        assert!(f.encode(&mut v), "{f:?} must encode");
        v
    }

    #[test]
    fn data_frame_layout_is_as_documented() {
        let v = enc(&Frame::Data {
            stream: 0x0102_0304,
            flags: 0,
            payload: b"hi",
        });
        assert_eq!(v, [0, 0, 0, 2, 1, 2, 3, 4, b'h', b'i']);
    }

    #[test]
    fn open_frame_layout_is_as_documented() {
        let v = enc(&Frame::Open {
            stream: 1,
            open: Open {
                dst: "10.10.3.2:80".parse().unwrap(),
                hop_limit: 8,
                ext: b"",
            },
        });
        assert_eq!(
            v,
            [1, 0, 0, 8, 0, 0, 0, 1, 4, 8, 0, 80, 10, 10, 3, 2],
            "type OPEN, len 8, stream 1, family 4, hop 8, port 80, 10.10.3.2"
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let v = enc(&Frame::End {
            stream: 3,
            total: 12345,
        });
        for cut in 0..v.len() {
            assert_eq!(decode(&v[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            decode(&v),
            Ok(Some((
                Frame::End {
                    stream: 3,
                    total: 12345
                },
                16
            )))
        );
    }

    #[test]
    fn rule_violations_are_named() {
        // Unknown type.
        assert_eq!(
            decode(&[0x7f, 0, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::UnknownType(0x7f))
        );
        // DATA on stream 0.
        assert_eq!(
            decode(&[0, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::Stream { kind: 0, stream: 0 })
        );
        // PING on a stream.
        assert_eq!(
            decode(&[6, 0, 0, 8, 0, 0, 0, 1]),
            Err(FrameError::Stream { kind: 6, stream: 1 })
        );
        // END with flags.
        assert_eq!(
            decode(&[2, 1, 0, 8, 0, 0, 0, 1]),
            Err(FrameError::Flags { kind: 2, flags: 1 })
        );
        // WINDOW of the wrong length, and with zero credit.
        assert_eq!(
            decode(&[4, 0, 0, 3, 0, 0, 0, 1]),
            Err(FrameError::Length { kind: 4, len: 3 })
        );
        assert_eq!(
            decode(&[4, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(FrameError::ZeroCredit)
        );
        // OPEN: family, port, short v6.
        assert_eq!(
            decode(&[1, 0, 0, 8, 0, 0, 0, 1, 5, 8, 0, 80, 1, 2, 3, 4]),
            Err(FrameError::Family(5))
        );
        assert_eq!(
            decode(&[1, 0, 0, 8, 0, 0, 0, 1, 4, 8, 0, 0, 1, 2, 3, 4]),
            Err(FrameError::PortZero)
        );
        assert_eq!(
            decode(&[1, 0, 0, 8, 0, 0, 0, 1, 6, 8, 0, 80, 1, 2, 3, 4]),
            Err(FrameError::Length { kind: 1, len: 8 })
        );
        assert_eq!(FrameError::ZeroCredit.reason(), "frame_zero_credit");
    }

    #[test]
    fn the_rule_is_checked_on_the_header_before_the_payload_arrives() {
        // A hostile length on a control frame is refused after 8 bytes,
        // without waiting for 65 535 more.
        assert_eq!(
            decode(&[2, 0, 0xff, 0xff, 0, 0, 0, 1]),
            Err(FrameError::Length {
                kind: 2,
                len: 65535
            })
        );
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        let mut v = Vec::new();
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert!(!Frame::Data {
            stream: 1,
            flags: 0,
            payload: &big
        }
        .encode(&mut v));
        assert!(!Frame::Data {
            stream: 0,
            flags: 0,
            payload: b""
        }
        .encode(&mut v));
        assert!(!Frame::Window {
            stream: 1,
            credit: 0
        }
        .encode(&mut v));
        assert!(v.is_empty());
    }

    #[test]
    fn abort_codes_round_trip_and_unknown_ones_are_kept() {
        for c in 0..20u16 {
            assert_eq!(AbortCode::from_code(c).code(), c);
        }
        assert_eq!(AbortCode::from_code(999).reason(), "other");
    }

    #[test]
    fn decoder_reassembles_frames_fed_a_byte_at_a_time() {
        let frames = [
            Frame::Settings(Settings {
                initial_window: 65536,
                max_streams: 100,
            }),
            Frame::Data {
                stream: 1,
                flags: 0,
                payload: b"hello",
            },
            Frame::End {
                stream: 1,
                total: 5,
            },
        ];
        let wire: Vec<u8> = frames.iter().flat_map(enc).collect();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(enc(&f));
            }
        }
        assert_eq!(got.concat(), wire);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decoder_stays_broken_after_an_error() {
        let mut d = Decoder::new();
        d.push(&[0x7f, 0, 0, 0, 0, 0, 0, 1]);
        assert!(d.next_frame().is_err());
        d.push(&enc(&Frame::Ping(1)));
        assert_eq!(d.next_frame(), Err(FrameError::UnknownType(0x7f)));
    }

    fn any_frame() -> impl Strategy<Value = (u8, u8, u32, Vec<u8>, u64, SocketAddr)> {
        let ip = prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ];
        (
            0u8..9,
            any::<u8>(),
            1u32..,
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u64>(),
            (ip, 1u16..).prop_map(|(ip, p)| SocketAddr::new(ip, p)),
        )
    }

    fn build<'a>(
        k: u8,
        flags: u8,
        stream: u32,
        bytes: &'a [u8],
        n: u64,
        dst: SocketAddr,
    ) -> Frame<'a> {
        match k {
            0 => Frame::Data {
                stream,
                flags,
                payload: bytes,
            },
            1 => Frame::Open {
                stream,
                open: Open {
                    dst,
                    hop_limit: flags,
                    ext: bytes,
                },
            },
            2 => Frame::End { stream, total: n },
            3 => Frame::Abort {
                stream,
                code: AbortCode::from_code(n as u16),
            },
            4 => Frame::Window {
                stream,
                credit: (n as u32).max(1),
            },
            5 => Frame::Module {
                stream: stream % 3,
                flags,
                payload: bytes,
            },
            6 => Frame::Ping(n),
            7 => Frame::Pong(n),
            _ => Frame::Settings(Settings {
                initial_window: n as u32,
                max_streams: (n >> 32) as u32,
            }),
        }
    }

    proptest! {
        #[test]
        fn any_valid_frame_round_trips((k, flags, stream, bytes, n, dst) in any_frame(),
                                       tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let f = build(k, flags, stream, &bytes, n, dst);
            let mut v = enc(&f);
            prop_assert_eq!(v.len(), f.encoded_len());
            let len = v.len();
            v.extend_from_slice(&tail);
            let (g, used) = decode(&v).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(g, f);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            match decode(&bytes) {
                Ok(Some((f, n))) => {
                    prop_assert!(n <= bytes.len() && n <= MAX_FRAME);
                    // What decodes re-encodes to the same bytes.
                    let v = enc(&f);
                    prop_assert_eq!(&v[..], &bytes[..n]);
                }
                Ok(None) => prop_assert!(bytes.len() < MAX_FRAME),
                Err(_) => {}
            }
        }

        #[test]
        fn the_decoder_gives_the_same_frames_however_the_bytes_are_cut(
            frames in proptest::collection::vec(any_frame(), 1..8),
            cuts in proptest::collection::vec(1usize..40, 1..20)) {
            let built: Vec<Frame<'_>> = frames
                .iter()
                .map(|(k, fl, s, b, n, d)| build(*k, *fl, *s, b, *n, *d))
                .collect();
            let wire: Vec<u8> = built.iter().flat_map(enc).collect();
            let mut d = Decoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                d.push(&wire[at..at + n]);
                at += n;
                i += 1;
                while let Some(f) = d.next_frame().unwrap() {
                    got.extend(enc(&f));
                }
            }
            prop_assert_eq!(got, wire);
        }
    }
}
