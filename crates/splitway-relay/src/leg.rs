//! Relay legs: opening one to a peer (with its header), and reading and
//! authenticating the header of one that arrived from a peer.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use splitway_core::auth::{AuthError, KeyRing, ReplayGuard};
use splitway_core::wire::{self, Header, LegKind, MAX_LEN, PREFIX_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

/// Hops a header may take when an ingress creates it.
pub const DEFAULT_HOP_LIMIT: u8 = 8;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh header for `dst`, to be sealed with the send key.
pub fn new_header(dst: SocketAddr, hop_limit: u8) -> Header {
    Header {
        dst,
        hop_limit,
        key_id: 0,
        timestamp_ms: now_ms(),
        nonce: rand::random(),
        leg: Default::default(),
    }
}

/// Send the sealed header for `dst` on a connected leg.
pub async fn send_header(
    leg: &mut TcpStream,
    keys: &KeyRing,
    dst: SocketAddr,
    hop_limit: u8,
) -> io::Result<()> {
    let bytes = keys.seal(&new_header(dst, hop_limit));
    leg.write_all(&bytes).await
}

/// Send a framed (v2, per-flow) header for `dst` and, in the same write,
/// the chain announcement of its modules (`chain`: module ids in encoding
/// order): the far relay runs the inverse chain on this flow.
pub async fn send_module_header(
    leg: &mut TcpStream,
    keys: &KeyRing,
    dst: SocketAddr,
    hop_limit: u8,
    chain: &[u8],
) -> io::Result<()> {
    let mut h = new_header(dst, hop_limit);
    h.leg = LegKind::Framed;
    let mut bytes = keys.seal(&h);
    crate::modules::frames::put_chain(&mut bytes, chain);
    leg.write_all(&bytes).await
}

/// Read the chain announcement that follows a framed leg's header: the
/// module ids, in the sender's encoding order.
pub async fn read_chain(leg: &mut TcpStream, within: Duration) -> Result<Vec<u8>, HeaderError> {
    use splitway_core::frame::{self, Frame, HEADER_LEN};
    let deadline = Instant::now() + within;
    let mut head = [0u8; HEADER_LEN];
    read_exact_by(leg, &mut head, deadline).await?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut buf = vec![0u8; HEADER_LEN + len];
    buf[..HEADER_LEN].copy_from_slice(&head);
    read_exact_by(leg, &mut buf[HEADER_LEN..], deadline).await?;
    match frame::decode(&buf) {
        Ok(Some((
            Frame::Module {
                stream: frame::LEG_STREAM,
                flags,
                payload,
            },
            _,
        ))) if flags == crate::modules::frames::FLAG_CHAIN => Ok(payload.to_vec()),
        _ => Err(HeaderError::NoChain),
    }
}

/// Why an inbound leg produced no usable header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The peer closed a pooled leg before using it: normal, not an attack.
    #[error("closed before any byte")]
    ClosedIdle,
    #[error("no header within the idle-leg timeout")]
    IdleTimeout,
    #[error("header not complete within the header timeout")]
    SlowHeader,
    #[error("closed in the middle of the header")]
    Truncated,
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A v2 per-flow framed header: this relay takes raw legs and lanes.
    #[error("framed leg ({0:?}) not accepted here")]
    Framed(LegKind),
    /// A framed per-flow leg whose first frame is not a module chain.
    #[error("framed leg without a module chain frame")]
    NoChain,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl HeaderError {
    /// Metric label; `None` for endings that are not rejections.
    pub fn reject_reason(&self) -> Option<&'static str> {
        match self {
            HeaderError::ClosedIdle | HeaderError::IdleTimeout => None,
            HeaderError::SlowHeader => Some("header_timeout"),
            HeaderError::Truncated => Some("truncated"),
            HeaderError::Auth(a) => Some(a.reason()),
            HeaderError::Framed(_) => Some("framed_unsupported"),
            HeaderError::NoChain => Some("module_chain_missing"),
            HeaderError::Io(_) => Some("io_error"),
        }
    }
}

/// Read and authenticate the header at the start of an inbound leg.
///
/// Waits up to `idle` for the first byte (a pooled leg waits here until its
/// peer uses it), then gives the whole header `header_timeout`, so a
/// slow-header sender is cut off. Reads exactly the header: stream bytes
/// after it stay in the socket for the forwarding engine.
pub async fn read_header(
    leg: &mut TcpStream,
    keys: &KeyRing,
    guard: &Mutex<ReplayGuard>,
    idle: Duration,
    header_timeout: Duration,
) -> Result<Header, HeaderError> {
    let mut buf = [0u8; MAX_LEN];
    let first = match timeout(idle, leg.read(&mut buf[..PREFIX_LEN])).await {
        Err(_) => return Err(HeaderError::IdleTimeout),
        Ok(Ok(0)) => return Err(HeaderError::ClosedIdle),
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(e.into()),
    };
    let deadline = Instant::now() + header_timeout;
    read_exact_by(leg, &mut buf[first..PREFIX_LEN], deadline).await?;
    let len = wire::header_len(&buf[..PREFIX_LEN]).map_err(AuthError::from)?;
    read_exact_by(leg, &mut buf[PREFIX_LEN..len], deadline).await?;
    // The MAC is checked before the shared guard's lock is taken.
    let (header, _) = keys.open(&buf[..len], now_ms(), guard)?;
    // Every kind is taken: raw legs, lanes (`lane`), and framed per-flow
    // legs, which carry module chains (`flow::relay_leg`, `modules`).
    Ok(header)
}

async fn read_exact_by(
    leg: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), HeaderError> {
    if buf.is_empty() {
        return Ok(());
    }
    match timeout_at(deadline, leg.read_exact(buf)).await {
        Err(_) => Err(HeaderError::SlowHeader),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HeaderError::Truncated),
        Ok(Err(e)) => Err(e.into()),
    }
}
