//! Socket options, set through socket2 or libc: the only file that knows the
//! option names. Per-leg *profiles* (Internet-facing vs relay leg) are built
//! from these in `crate::profile`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// A fresh non-blocking TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    // Non-blocking from the start (and close-on-exec, which socket2 always
    // sets): one syscall instead of four.
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
}

/// A listening socket. `transparent` sets IP_TRANSPARENT so TPROXY'd
/// connections to any address are accepted here; `reuse_port` sets
/// SO_REUSEPORT (one listener per shard on the same address, the kernel
/// spreading connections over them).
pub fn listener(
    addr: &SocketAddr,
    transparent: bool,
    reuse_port: bool,
    backlog: i32,
) -> io::Result<Socket> {
    let s = tcp_socket(addr)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if transparent {
        set_transparent(&s, addr.is_ipv6())?;
        // TCP_SAVE_SYN follows the early-SYN switch (`Shared::apply`).
    }
    s.bind(&(*addr).into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Bind (without listening) a socket without SO_REUSEPORT to `addr` and
/// close it: fails with `EADDRINUSE` if anything listens there, which a
/// group of `SO_REUSEPORT` listeners would otherwise join silently when
/// that other listener set the option too (a second relay by mistake).
pub fn address_free(addr: &SocketAddr) -> io::Result<()> {
    let s = tcp_socket(addr)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&(*addr).into())
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: fd is a valid socket for the borrow; the value is a plain int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// IP_TRANSPARENT / IPV6_TRANSPARENT.
pub fn set_transparent(s: &impl AsFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(s.as_fd(), libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        setsockopt_int(s.as_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

/// TCP_SAVE_SYN on a listener: the kernel keeps the IP and TCP headers of
/// each connection's SYN that arrives while it is on, until
/// [`saved_syn_isn`] reads them (or the socket closes). Early SYN pairs a
/// connection with the leg its SYN started by the SYN's sequence number;
/// with early SYN off it is turned off, so no connection keeps its SYN.
pub fn set_save_syn(s: &impl AsFd, on: bool) -> io::Result<()> {
    setsockopt_int(s.as_fd(), libc::SOL_TCP, libc::TCP_SAVE_SYN, on.into())
}

/// A `SOL_TCP` option read into an `N`-byte buffer: the buffer and how many
/// bytes the kernel filled.
fn tcp_opt_bytes<const N: usize>(s: &impl AsFd, opt: libc::c_int) -> io::Result<([u8; N], usize)> {
    let mut buf = [0u8; N];
    let mut len = N as libc::socklen_t;
    // SAFETY: buf is writable for len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            s.as_fd().as_raw_fd(),
            libc::SOL_TCP,
            opt,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((buf, (len as usize).min(N)))
}

/// The initial sequence number of the SYN that opened an accepted
/// connection (TCP_SAVED_SYN, from a listener with [`set_save_syn`]). The
/// kernel frees the saved headers on this read, so it works once.
pub fn saved_syn_isn(s: &impl AsFd) -> io::Result<u32> {
    let (buf, len) = tcp_opt_bytes::<128>(s, libc::TCP_SAVED_SYN)?;
    let p = &buf[..len];
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "no TCP SYN saved");
    let l4 = match p.first().map(|b| b >> 4) {
        Some(4) => usize::from(p[0] & 0x0f) * 4,
        Some(6) if p.get(6) == Some(&6) => 40,
        _ => return Err(bad()),
    };
    let seq = p.get(l4 + 4..l4 + 8).ok_or_else(bad)?;
    Ok(u32::from_be_bytes([seq[0], seq[1], seq[2], seq[3]]))
}

/// SO_MARK: the relay's own outbound sockets carry a mark its rules skip.
pub fn set_mark(s: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(s).set_mark(mark)
}

pub fn set_nodelay(s: &impl AsFd) -> io::Result<()> {
    SockRef::from(s).set_nodelay(true)
}

/// Keep-alive probes so a dead peer is noticed on idle legs.
pub fn set_keepalive(s: &impl AsFd, idle: Duration) -> io::Result<()> {
    let ka = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    SockRef::from(s).set_tcp_keepalive(&ka)
}

pub fn set_buffers(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    let r = SockRef::from(s);
    r.set_send_buffer_size(bytes)?;
    r.set_recv_buffer_size(bytes)
}

/// `SO_RCVLOWAT`: the socket reads as readable (and wakes its waiters) only
/// once this many bytes are queued, or at EOF, an error, memory pressure or
/// an almost closed receive window. A value whose window would not fit the
/// receive buffer grows the buffer (`tcp_set_rcvlowat`): callers keep it
/// within [`rcvbuf`] / 2.
pub fn set_rcvlowat(s: &impl AsFd, bytes: i32) -> io::Result<()> {
    setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// The receive buffer the kernel has now (`SO_RCVBUF`: autotuned, already
/// doubled for overhead).
pub fn rcvbuf(s: &impl AsFd) -> io::Result<usize> {
    SockRef::from(s).recv_buffer_size()
}

/// SO_LINGER with zero timeout: the next close sends a RST.
pub fn set_linger_zero(s: &impl AsFd) -> io::Result<()> {
    SockRef::from(s).set_linger(Some(Duration::ZERO))
}

/// SO_LINGER off again: the next close is an orderly one (FIN after any
/// unsent data).
pub fn clear_linger(s: &impl AsFd) -> io::Result<()> {
    SockRef::from(s).set_linger(None)
}

/// IP_BIND_ADDRESS_NO_PORT: defer port choice to connect().
pub fn set_bind_no_port(s: &impl AsFd) -> io::Result<()> {
    setsockopt_int(s.as_fd(), libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// TCP_FASTOPEN on a listener (queue length of pending TFO requests).
pub fn set_fastopen_listener(s: &impl AsFd, qlen: i32) -> io::Result<()> {
    setsockopt_int(s.as_fd(), libc::SOL_TCP, libc::TCP_FASTOPEN, qlen)
}

/// TCP_FASTOPEN_CONNECT: connect() returns at once and the first write rides
/// in the SYN (with a cookie) or right after the handshake (without).
pub fn set_fastopen_connect(s: &impl AsFd) -> io::Result<()> {
    setsockopt_int(s.as_fd(), libc::SOL_TCP, libc::TCP_FASTOPEN_CONNECT, 1)
}

/// TCP_NOTSENT_LOWAT: limit unsent bytes held in the kernel send queue.
pub fn set_notsent_lowat(s: &impl AsFd, bytes: u32) -> io::Result<()> {
    setsockopt_int(
        s.as_fd(),
        libc::SOL_TCP,
        libc::TCP_NOTSENT_LOWAT,
        bytes as libc::c_int,
    )
}

/// TCP_WINDOW_CLAMP: the largest receive window this socket advertises
/// from now on (a window already advertised is not taken back). The
/// kernel's receive-buffer autotuning raises it when it grows the buffer,
/// so a caller that bounds the window sets it again after reads.
pub fn set_window_clamp(s: &impl AsFd, bytes: u32) -> io::Result<()> {
    setsockopt_int(
        s.as_fd(),
        libc::SOL_TCP,
        libc::TCP_WINDOW_CLAMP,
        bytes.min(i32::MAX as u32) as libc::c_int,
    )
}

/// SO_MAX_PACING_RATE: the most bytes per second this socket sends (TCP
/// paces itself, without the fq qdisc); `u32::MAX` lifts the cap.
pub fn set_max_pacing_rate(s: &impl AsFd, bytes_per_sec: u32) -> io::Result<()> {
    setsockopt_int(
        s.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_MAX_PACING_RATE,
        bytes_per_sec as libc::c_int,
    )
}

/// TCP_CONGESTION: the congestion control algorithm of this socket (a name
/// from /proc/sys/net/ipv4/tcp_available_congestion_control).
pub fn set_congestion(s: &impl AsFd, name: &str) -> io::Result<()> {
    // SAFETY: fd is a valid socket for the borrow; the value is a byte
    // buffer of the given length (the kernel copies at most that).
    let rc = unsafe {
        libc::setsockopt(
            s.as_fd().as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr() as *const libc::c_void,
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The congestion control algorithms this kernel has loaded (built in or
/// loaded modules): a process can not load more.
pub fn available_congestion() -> io::Result<Vec<String>> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")?;
    Ok(s.split_whitespace().map(str::to_string).collect())
}

/// shutdown(SHUT_WR): send our FIN, keep reading.
pub fn shutdown_write(s: &impl AsFd) -> io::Result<()> {
    match SockRef::from(s).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
        r => r,
    }
}

/// The subset of `struct tcp_info` splitway reports (see `ss -ti`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub state: u8,
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// tcpi_min_rtt: the smallest RTT seen (windowed by the kernel), µs.
    pub min_rtt_us: u32,
    pub snd_cwnd: u32,
    pub snd_mss: u32,
    pub rcv_space: u32,
    pub unacked: u32,
    pub retrans_total: u32,
    pub notsent_bytes: u32,
    pub delivery_rate_bps: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// tcpi_snd_wnd: the receive window the peer advertised last.
    pub snd_wnd: u32,
}

/// Read TCP_INFO from a socket.
pub fn tcp_info(s: &impl AsFd) -> io::Result<TcpInfo> {
    // struct tcp_info is stable and append-only; read a generous buffer and
    // pick fields by their fixed offsets (include/uapi/linux/tcp.h).
    let (buf, len) = tcp_opt_bytes::<256>(s, libc::TCP_INFO)?;
    let u32_at = |off: usize| -> u32 {
        if off + 4 <= len {
            u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
        } else {
            0
        }
    };
    let u64_at = |off: usize| -> u64 {
        if off + 8 <= len {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[off..off + 8]);
            u64::from_ne_bytes(b)
        } else {
            0
        }
    };
    Ok(TcpInfo {
        state: buf[0],
        unacked: u32_at(24),
        snd_mss: u32_at(16),
        rtt_us: u32_at(68),
        rttvar_us: u32_at(72),
        min_rtt_us: u32_at(148),
        snd_cwnd: u32_at(80),
        rcv_space: u32_at(96),
        retrans_total: u32_at(100),
        bytes_acked: u64_at(120),
        bytes_received: u64_at(128),
        notsent_bytes: u32_at(144),
        // tcpi_delivery_rate is in bytes per second.
        delivery_rate_bps: u64_at(160).saturating_mul(8),
        snd_wnd: u32_at(228),
    })
}

/// The address a connection was accepted on: for a TPROXY'd connection, the
/// client's original destination.
pub fn original_dst(s: &impl AsFd) -> io::Result<SocketAddr> {
    SockRef::from(s)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an inet socket"))
}

/// Is an idle connected socket still usable? A pooled leg must have nothing
/// to read: a FIN (0), a RST (error) or unexpected bytes all mean "dead".
pub fn idle_alive(s: &impl AsFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: b is writable for one byte; MSG_PEEK leaves the queue intact.
    let n = unsafe {
        libc::recv(
            s.as_fd().as_raw_fd(),
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Socket buffers above `net.core.{r,w}mem_max` (needs CAP_NET_ADMIN),
/// falling back to the capped options.
pub fn set_buffers_force(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, force, v).is_err() {
            setsockopt_int(s.as_fd(), libc::SOL_SOCKET, plain, v)?;
        }
    }
    Ok(())
}

/// The receive buffer alone, above `net.core.rmem_max` where allowed
/// (`SO_RCVBUFFORCE`, CAP_NET_ADMIN; else `SO_RCVBUF`). Either locks it:
/// the kernel's autotuning no longer grows it (nor raises
/// `TCP_WINDOW_CLAMP` with it).
pub fn set_rcvbuf_force(s: &impl AsFd, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_err() {
        setsockopt_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shards share an address through SO_REUSEPORT; a listener already
    /// there (another relay) is found by `address_free` whether or not it
    /// set the option, so a second relay fails instead of joining.
    #[test]
    fn reuse_port_listeners_share_an_address_and_a_taken_one_is_found() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = listener(&any, false, true, 8).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let second = listener(&addr, false, true, 8).expect("a second shard joins");
        assert!(address_free(&addr).is_err(), "a taken address looks free");
        drop((first, second));
        let plain = listener(&any, false, false, 8).unwrap();
        let addr = plain.local_addr().unwrap().as_socket().unwrap();
        assert!(listener(&addr, false, true, 8).is_err());
        assert!(address_free(&addr).is_err());
        drop(plain);
        assert!(
            address_free(&addr).is_ok(),
            "a closed listener's address is free"
        );
    }

    /// A listener with TCP_SAVE_SYN gives each accepted connection's SYN
    /// sequence number once, over IPv4 and IPv6; switched off, connections
    /// that arrive after keep no SYN.
    #[test]
    fn saved_syn_gives_the_isn_once() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let Ok(l) = listener(&addr, false, false, 8) else {
                continue; // no IPv6 loopback here
            };
            set_save_syn(&l, true).unwrap();
            l.set_nonblocking(false).unwrap();
            let at = l.local_addr().unwrap().as_socket().unwrap();
            let _c = std::net::TcpStream::connect(at).unwrap();
            let (a, _) = l.accept().unwrap();
            assert!(saved_syn_isn(&a).is_ok(), "{addr}");
            assert!(saved_syn_isn(&a).is_err(), "{addr}: read once");
            set_save_syn(&l, false).unwrap();
            let _c = std::net::TcpStream::connect(at).unwrap();
            let (a, _) = l.accept().unwrap();
            assert!(saved_syn_isn(&a).is_err(), "{addr}: off");
        }
    }
}
