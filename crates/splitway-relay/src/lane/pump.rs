//! Forwarding between one flow's socket (client or server) and its stream
//! on a lane.
//!
//! Up: bytes read from the socket are queued on the stream, at most
//! [`SEND_BUFFER`] at a time, or an old stream's larger turn under age
//! weighting (`Lane::send_buffer`) (the socket is not read while the queue is
//! full, so a slow lane pushes back on the client through TCP). FIN becomes
//! END. Down: what the stream delivers is written to the socket, and only
//! then returned to the peer as credit, so a slow reader holds at most its
//! stream's window here and stops only its own stream. END becomes
//! `shutdown(SHUT_WR)`. A reset on either side (RST, error, ABORT, the lane
//! lost) resets the other: the flow never ends cleanly unless both
//! directions ended cleanly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use splitway_core::frame::AbortCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{Delivery, StreamHandle, SEND_BUFFER};
use super::server_window::StreamWindow;
use crate::sys::sockopt;

/// How one flow on a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both directions ended with FIN/END.
    Closed,
    /// Something reset; the socket was reset and the stream aborted.
    Reset,
    /// No byte either way for the idle timeout: both reset.
    Idle,
}

/// What a finished flow moved.
#[derive(Debug, Clone, Copy)]
pub struct PumpReport {
    pub end: PumpEnd,
    /// Socket → stream.
    pub up: u64,
    /// Stream → socket.
    pub down: u64,
    /// From `since` to the first byte written to the socket.
    pub first_down: Option<Duration>,
}

#[derive(Debug)]
enum Stop {
    Reset,
}

/// Forward until the flow ends; resets the socket and the stream unless
/// both directions ended cleanly. `idle`: no byte either way for this long
/// resets both. `window`: the socket is a server connection whose receive
/// window is bounded (`server_window`), set around each read.
pub async fn pump(
    mut sock: TcpStream,
    mut h: StreamHandle,
    since: Instant,
    idle: Duration,
    mut window: Option<StreamWindow>,
) -> PumpReport {
    let Some(mut rx) = h.take_rx() else {
        h.reset(AbortCode::Reset);
        return PumpReport {
            end: PumpEnd::Reset,
            up: 0,
            down: 0,
            first_down: None,
        };
    };
    let (mut rd, mut wr) = sock.split();
    let mut up = 0u64;
    let mut down = 0u64;
    let mut first_down = None;
    // Milliseconds since `base` of the last byte either way.
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    let h = &h;
    let upward = async {
        let mut buf = vec![0u8; SEND_BUFFER];
        loop {
            let Some(room) = h.room().await else {
                return Err(Stop::Reset);
            };
            let room = room.min(buf.len());
            if let Some(w) = window.as_mut() {
                w.before_read(rd.as_ref());
            }
            let got = rd.read(&mut buf[..room]).await;
            if let (Some(w), Ok(n)) = (window.as_mut(), &got) {
                w.after_read(rd.as_ref(), *n);
            }
            match got {
                Ok(0) => {
                    h.finish();
                    return Ok(());
                }
                Ok(n) => {
                    touch();
                    if !h.send(&buf[..n]) {
                        return Err(Stop::Reset);
                    }
                    up += n as u64;
                }
                Err(_) => return Err(Stop::Reset),
            }
        }
    };
    let downward = async {
        loop {
            match rx.recv().await {
                Some(Delivery::Data(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        return Err(Stop::Reset);
                    }
                    touch();
                    if first_down.is_none() {
                        first_down = Some(since.elapsed());
                    }
                    down += b.len() as u64;
                    h.consumed(b.len());
                }
                Some(Delivery::End) => {
                    h.ended();
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Some(Delivery::Reset) | None => return Err(Stop::Reset),
            }
        }
    };
    let watchdog = async {
        loop {
            let at = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            if at <= Instant::now() {
                return Err::<(), Stop>(Stop::Reset);
            }
            tokio::time::sleep_until(at).await;
        }
    };
    let both = async { tokio::try_join!(upward, downward) };
    let end = tokio::select! {
        r = both => match r {
            Ok(_) => PumpEnd::Closed,
            Err(Stop::Reset) => PumpEnd::Reset,
        },
        _ = watchdog => PumpEnd::Idle,
    };
    if end != PumpEnd::Closed {
        h.reset(match end {
            PumpEnd::Idle => AbortCode::Timeout,
            _ => AbortCode::Reset,
        });
        let _ = sockopt::set_linger_zero(&sock);
    }
    drop(sock);
    PumpReport {
        end,
        up,
        down,
        first_down,
    }
}
