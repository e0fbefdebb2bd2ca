//! Outbound connections: to a destination (Internet-facing profile) or to a
//! peer relay (relay-leg profile). Every outbound socket carries the relay's
//! own mark, so its transparent rules never intercept it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::profile;
use crate::sys::sockopt;

/// Which socket profile an outbound connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Internet,
    /// Between relays; `fast_open`: TCP Fast Open, so the header written
    /// right after connect rides in the SYN once a cookie is cached.
    RelayLeg {
        turbo: bool,
        fast_open: bool,
        /// Local address to send from, if configured for the peer.
        source: Option<std::net::IpAddr>,
    },
}

/// Connect to `addr` with `profile`, giving up after `timeout`.
pub async fn connect(
    addr: SocketAddr,
    own_mark: u32,
    profile: Profile,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = sockopt::tcp_socket(&addr)?;
    sockopt::set_mark(&sock, own_mark)?;
    match profile {
        Profile::Internet => profile::internet(&sock)?,
        Profile::RelayLeg {
            turbo,
            fast_open,
            source,
        } => {
            profile::relay_leg(&sock, turbo)?;
            if let Some(ip) = source {
                let _ = sockopt::set_bind_no_port(&sock);
                sock.bind(&SocketAddr::new(ip, 0).into())?;
            }
            if fast_open {
                // Best effort: without kernel support this is a plain connect.
                let _ = sockopt::set_fastopen_connect(&sock);
            }
        }
    }
    let sock = TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}
