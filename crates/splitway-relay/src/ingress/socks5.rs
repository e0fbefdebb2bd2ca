//! The SOCKS5 listener's I/O: feeds what the client sends to
//! `splitway_core::socks5::Handshake`, writes what it answers, and maps
//! refusals to SOCKS5 reply codes.

use splitway_core::socks5::{self, Handshake, Out, ReplyCode, Step, MAX_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Failed, Refusal, Request, Settings};
use crate::flow::HopError;

const CLOSED: Failed = Failed {
    reason: "closed_early",
    reply: None,
};

/// Greeting, credentials if required, request; `Ok` once the request is
/// read. The buffer holds any one message whole ([`MAX_MESSAGE`]) plus
/// what a client sends after it.
pub(crate) async fn handshake(
    down: &mut TcpStream,
    settings: &Settings,
) -> Result<Request, Failed> {
    let mut h = Handshake::new(&settings.users);
    let mut buf = [0u8; 2 * MAX_MESSAGE];
    let mut len = 0;
    loop {
        match h.step(&buf[..len]) {
            Step::NeedMore => {
                if len == buf.len() {
                    // Cannot happen (every message fits); refuse rather than spin.
                    return Err(Failed {
                        reason: "malformed",
                        reply: None,
                    });
                }
                let n = down.read(&mut buf[len..]).await.map_err(|_| CLOSED)?;
                if n == 0 {
                    return Err(CLOSED);
                }
                len += n;
            }
            Step::Send { used, out } => {
                down.write_all(out.as_bytes()).await.map_err(|_| CLOSED)?;
                buf.copy_within(used..len, 0);
                len -= used;
            }
            Step::Connect { used, target } => {
                return Ok(Request {
                    target,
                    early: buf[used..len].to_vec(),
                })
            }
            Step::Refuse { out, error } => {
                return Err(Failed {
                    reason: error.reason(),
                    reply: out.map(|o| o.as_bytes().to_vec()),
                })
            }
        }
    }
}

/// The reply for a request that was read but not forwarded.
pub(crate) fn refusal(why: &Refusal) -> Out {
    let code = match why {
        Refusal::Busy => ReplyCode::GeneralFailure,
        Refusal::Resolve => ReplyCode::HostUnreachable,
        Refusal::NotAllowed | Refusal::Hop(HopError::NotAllowed) => ReplyCode::NotAllowed,
        Refusal::Hop(HopError::NoRoute) => ReplyCode::NetworkUnreachable,
        Refusal::Hop(HopError::HopLimit) => ReplyCode::TtlExpired,
        Refusal::Hop(HopError::Connect(e)) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable => {
                ReplyCode::HostUnreachable
            }
            std::io::ErrorKind::NetworkUnreachable => ReplyCode::NetworkUnreachable,
            _ => ReplyCode::GeneralFailure,
        },
        Refusal::Hop(HopError::UnknownPeer | HopError::NoKeys) => ReplyCode::GeneralFailure,
    };
    socks5::reply(code, None)
}

/// Tell the client its connection is open.
pub(crate) async fn succeeded(down: &mut TcpStream) -> std::io::Result<()> {
    down.write_all(socks5::reply(ReplyCode::Succeeded, None).as_bytes())
        .await
}
