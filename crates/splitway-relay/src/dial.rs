//! Outbound connections: to a destination (Internet-facing profile) or to a
//! peer relay (relay-leg profile). Every outbound socket carries the relay's
//! own mark, so its transparent rules never intercept it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::profile;
use crate::sys::sockopt;

/// Which socket profile an outbound connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// To a destination; `initial_window`: the receive window, in
    /// segments, its SYN and handshake offer
    /// (`limits.server_initial_window_segments`; the kernel program of
    /// [`crate::sys::initial_window`] must be loaded).
    Internet { initial_window: Option<u32> },
    /// Between relays; `fast_open`: TCP Fast Open, so the header written
    /// right after connect rides in the SYN once a cookie is cached.
    RelayLeg {
        turbo: bool,
        fast_open: bool,
        /// Local address to send from, if configured for the peer.
        source: Option<std::net::IpAddr>,
    },
}

/// The server connections opened lately, for
/// `limits.server_initial_window_burst` (one per process: the relay's).
static BURST: std::sync::Mutex<Option<splitway_core::mux::burst::Burst>> =
    std::sync::Mutex::new(None);

/// The initial window a new server connection gets under `limits`: the
/// configured segments when its opening is part of a burst (always with a
/// threshold of 1), else none (the kernel's default).
pub fn server_window(limits: &splitway_core::config::Limits) -> Option<u32> {
    let n = limits.server_initial_window_segments?;
    let want = limits.server_initial_window_burst;
    if want <= 1 {
        return Some(n);
    }
    let mut g = BURST.lock().unwrap_or_else(|p| p.into_inner());
    let b = match g.as_mut() {
        Some(b) if b.threshold() == want => b,
        _ => g.insert(splitway_core::mux::burst::Burst::new(want)),
    };
    b.open(std::time::Instant::now()).then_some(n)
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
        Profile::Internet { initial_window } => {
            profile::internet(&sock)?;
            if let Some(n) = initial_window {
                // Best effort: untagged, the socket offers the kernel's
                // default window, which only costs the interleaving.
                if let Err(e) = crate::sys::initial_window::tag(&sock, n) {
                    tracing::debug!(%addr, error = %e, "initial window not set");
                }
            }
        }
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
    match tokio::time::timeout(timeout, connect_registered(sock, addr)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Start a non-blocking connect of `sock` to `addr` and wait for it.
/// Unlike tokio's `TcpSocket::connect`, success is read from the readiness
/// epoll reported (writable, not closed) instead of asking the socket for
/// `SO_ERROR`: one syscall less per connection; `SO_ERROR` is read only when
/// the connect failed, for its reason.
async fn connect_registered(sock: socket2::Socket, addr: SocketAddr) -> io::Result<TcpStream> {
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(sock))?;
    // A destination on this host (a relay in front of a local server)
    // answers within connect(2): then there is nothing to wait for.
    if addr.ip().is_loopback() && connected_now(&stream) {
        return Ok(stream);
    }
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "closed while connecting")
        }));
    }
    Ok(stream)
}

/// Whether a connect in progress has already completed: `poll(2)` with no
/// wait. Asked only for loopback destinations, whose handshake runs inside
/// `connect(2)`; elsewhere it would only cost a syscall.
fn connected_now(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) == 0 && p.revents & libc::POLLOUT != 0
}
