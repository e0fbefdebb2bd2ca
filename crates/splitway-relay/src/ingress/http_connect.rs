//! The HTTP CONNECT listener's I/O: reads the request head (bounded by
//! `max_head_bytes`) for `splitway_core::http_connect::parse`, and maps
//! refusals to HTTP status codes.

use splitway_core::http_connect::{self, Parsed, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Failed, Refusal, Request, Settings};
use crate::flow::HopError;

/// Read until the head is complete; `Ok` with the target and whatever the
/// client sent after the head.
pub(crate) async fn handshake(
    down: &mut TcpStream,
    settings: &Settings,
) -> Result<Request, Failed> {
    let max = settings.max_head;
    let mut buf = vec![0u8; max];
    let mut len = 0;
    loop {
        match http_connect::parse(&buf[..len], max, &settings.users) {
            Ok(Parsed::NeedMore) => {
                let n = down.read(&mut buf[len..]).await.map_err(|_| Failed {
                    reason: "closed_early",
                    reply: None,
                })?;
                if n == 0 {
                    return Err(Failed {
                        reason: "closed_early",
                        reply: None,
                    });
                }
                len += n;
            }
            Ok(Parsed::Connect(r)) => {
                return Ok(Request {
                    target: r.target,
                    early: buf[r.used..len].to_vec(),
                })
            }
            Err(e) => {
                return Err(Failed {
                    reason: e.reason(),
                    reply: Some(e.status().reply().to_vec()),
                })
            }
        }
    }
}

/// The status for a request that was read but not forwarded.
pub(crate) fn refusal(why: &Refusal) -> Status {
    match why {
        Refusal::Busy => Status::ServiceUnavailable,
        Refusal::NotAllowed | Refusal::Hop(HopError::NotAllowed) => Status::Forbidden,
        Refusal::Hop(HopError::Connect(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            Status::GatewayTimeout
        }
        Refusal::Resolve | Refusal::Hop(_) => Status::BadGateway,
    }
}

/// Tell the client its tunnel is open.
pub(crate) async fn succeeded(down: &mut TcpStream) -> std::io::Result<()> {
    down.write_all(Status::Established.reply()).await
}
