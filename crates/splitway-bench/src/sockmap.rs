//! An experiment, not an engine: a minimal relay that forwards in the
//! kernel with a BPF sockmap (issue 16 §5), to measure against splice.
//!
//! Each accepted client socket `a` and its next-hop socket `b` go into a
//! `SOCKHASH` keyed by the socket's own ports, whose value is the *other*
//! socket; an `sk_skb` stream-verdict program attached to the map
//! redirects every arriving skb to the other socket's egress
//! (`bpf_sk_redirect_hash`, flags 0). User space only accepts, connects,
//! forwards what arrived before the pair was in the map, and turns EOF on
//! one side into `shutdown(WR)` on the other (epoll on `EPOLLRDHUP` only). An skb whose socket is not (yet) in the map is
//! passed to the socket (`SK_PASS`) and forwarded by user space.
//!
//! The program is fifteen eBPF instructions assembled here (no clang, no
//! BPF toolchain: stable Rust and the `bpf(2)` syscall only). Not safe for
//! general use: data that arrives between the first user-space read and
//! the map insertion could be reordered (the benchmark's tests send first
//! and then wait, or would fail visibly), and the kernel queues redirected
//! skbs without a bound of its own when the egress socket is full.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use anyhow::Context;

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;
const MAP_SOCKHASH: u32 = 18;
const PROG_SK_SKB: u32 = 14;
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
const HELPER_SK_REDIRECT_HASH: i32 = 72;
/// `struct __sk_buff` offsets.
const SKB_REMOTE_PORT: i16 = 132;
const SKB_LOCAL_PORT: i16 = 136;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> io::Result<RawFd> {
    // SAFETY: attr is a zero-padded bpf_attr of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// One eBPF instruction: code, dst, src, off, imm.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    b
}

/// The verdict program: key = (local_port, remote_port) of the socket the
/// skb arrived on; redirect to the egress of the socket stored under it,
/// or pass it to user space when there is none.
fn program(map_fd: RawFd) -> Vec<u8> {
    let prog = [
        insn(0xbf, 6, 1, 0, 0),               // r6 = r1 (ctx)
        insn(0x61, 2, 6, SKB_LOCAL_PORT, 0),  // r2 = skb->local_port
        insn(0x63, 10, 2, -8, 0),             // *(u32 *)(r10 - 8) = r2
        insn(0x61, 2, 6, SKB_REMOTE_PORT, 0), // r2 = skb->remote_port
        insn(0x63, 10, 2, -4, 0),             // *(u32 *)(r10 - 4) = r2
        insn(0xbf, 1, 6, 0, 0),               // r1 = r6
        insn(0x18, 2, 1, 0, map_fd),          // r2 = map (pseudo map fd)
        insn(0, 0, 0, 0, 0),                  //   (second half of ld_imm64)
        insn(0xbf, 3, 10, 0, 0),              // r3 = r10
        insn(0x07, 3, 0, 0, -8),              // r3 += -8
        insn(0xb7, 4, 0, 0, 0),               // r4 = 0 (egress)
        insn(0x85, 0, 0, 0, HELPER_SK_REDIRECT_HASH),
        insn(0x55, 0, 0, 1, 0), // if r0 != SK_DROP goto exit
        insn(0xb7, 0, 0, 0, 1), // r0 = SK_PASS (no peer: user space)
        insn(0x95, 0, 0, 0, 0), // exit
    ];
    prog.concat()
}

/// The map key of a socket, as the program builds it: `local_port` in
/// host order, `remote_port` as the kernel gives it to `sk_skb` programs
/// (network order, in the upper half on little-endian machines).
fn key_of(s: &TcpStream) -> io::Result<[u8; 8]> {
    let l = s.local_addr()?.port() as u32;
    let r = (s.peer_addr()?.port().to_be() as u32) << 16;
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&l.to_ne_bytes());
    k[4..].copy_from_slice(&r.to_ne_bytes());
    Ok(k)
}

struct Bpf {
    map: RawFd,
}

impl Bpf {
    fn load() -> anyhow::Result<Bpf> {
        let mut a = [0u8; 128];
        put32(&mut a, 0, MAP_SOCKHASH);
        put32(&mut a, 4, 8); // key
        put32(&mut a, 8, 4); // value: a socket fd
        put32(&mut a, 12, 65536);
        let map = bpf(BPF_MAP_CREATE, &mut a).context("BPF_MAP_CREATE sockhash")?;
        let code = program(map);
        let license = b"GPL\0";
        let mut log = vec![0u8; 1 << 16];
        let mut a = [0u8; 128];
        put32(&mut a, 0, PROG_SK_SKB);
        put32(&mut a, 4, (code.len() / 8) as u32);
        put64(&mut a, 8, code.as_ptr() as u64);
        put64(&mut a, 16, license.as_ptr() as u64);
        put32(&mut a, 24, 1);
        put32(&mut a, 28, log.len() as u32);
        put64(&mut a, 32, log.as_mut_ptr() as u64);
        let prog = bpf(BPF_PROG_LOAD, &mut a).map_err(|e| {
            let end = log.iter().position(|&c| c == 0).unwrap_or(0);
            anyhow::anyhow!(
                "BPF_PROG_LOAD: {e}: {}",
                String::from_utf8_lossy(&log[..end])
            )
        })?;
        let mut a = [0u8; 128];
        put32(&mut a, 0, map as u32);
        put32(&mut a, 4, prog as u32);
        put32(&mut a, 8, ATTACH_SK_SKB_STREAM_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut a).context("BPF_PROG_ATTACH stream verdict")?;
        Ok(Bpf { map })
    }

    fn insert(&self, key: &[u8; 8], sock: RawFd) -> io::Result<()> {
        let v = sock as u32;
        let mut a = [0u8; 128];
        put32(&mut a, 0, self.map as u32);
        put64(&mut a, 8, key.as_ptr() as u64);
        put64(&mut a, 16, &v as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
    }
}

struct Pair {
    s: [TcpStream; 2],
    eof: [bool; 2],
}

/// Move what is queued on `from` to `to` in user space (before the pair is
/// in the map, or what the program passed up). `Ok(true)`: EOF seen.
fn drain(from: &TcpStream, to: &TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        match (&*from).read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                to.set_nonblocking(false)?;
                (&*to).write_all(&buf[..n])?;
                to.set_nonblocking(true)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// `EPOLLIN` for the listener; for a paired socket only `EPOLLRDHUP`
/// (errors and hang-ups are always reported): with `EPOLLIN` every skb the
/// program redirects would still wake the relay (the socket's data-ready
/// callback runs first), only for `epoll_wait` to find nothing readable.
fn ep_ctl(ep: RawFd, op: i32, fd: RawFd, token: u64, events: i32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: a valid epoll fd and event.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connect the next hop for `a`, forward what `a` already sent, put both in
/// the map and under epoll (tokens `id * 2` and `id * 2 + 1`).
fn pair(
    bpf: &Bpf,
    ep: RawFd,
    a: TcpStream,
    target: SocketAddr,
    id: u64,
    buf: &mut [u8],
) -> io::Result<Pair> {
    let b = TcpStream::connect(target)?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    // What the client sent before the pair is in the map.
    drain(&a, &b, buf)?;
    bpf.insert(&key_of(&a)?, b.as_raw_fd())?;
    bpf.insert(&key_of(&b)?, a.as_raw_fd())?;
    // What arrived between that read and the insertion is still queued
    // (only later skbs meet the program), on both sides: the next hop may
    // have answered what was forwarded above.
    drain(&a, &b, buf)?;
    drain(&b, &a, buf)?;
    ep_ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        a.as_raw_fd(),
        id * 2,
        libc::EPOLLRDHUP,
    )?;
    ep_ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        b.as_raw_fd(),
        id * 2 + 1,
        libc::EPOLLRDHUP,
    )?;
    Ok(Pair {
        s: [a, b],
        eof: [false, false],
    })
}

/// Run the experimental relay until killed.
pub fn run(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<()> {
    let bpf = Bpf::load()?;
    let l = TcpListener::bind(listen)?;
    l.set_nonblocking(true)?;
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    anyhow::ensure!(ep >= 0, "epoll_create1: {}", io::Error::last_os_error());
    const LISTENER: u64 = u64::MAX;
    ep_ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        l.as_raw_fd(),
        LISTENER,
        libc::EPOLLIN,
    )?;
    let mut pairs: HashMap<u64, Pair> = HashMap::new();
    let mut next = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: events is a valid buffer of its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == LISTENER {
                while let Ok((a, _)) = l.accept() {
                    // A connection that fails to set up is dropped; the
                    // relay goes on.
                    if let Ok(p) = pair(&bpf, ep, a, target, next, &mut buf) {
                        pairs.insert(next, p);
                        next += 1;
                    }
                }
                continue;
            }
            let (id, side) = (token / 2, (token % 2) as usize);
            let Some(p) = pairs.get_mut(&id) else {
                continue;
            };
            if p.eof[side] {
                continue;
            }
            match drain(&p.s[side], &p.s[1 - side], &mut buf) {
                Ok(false) => {}
                Ok(true) => {
                    p.eof[side] = true;
                    let _ = ep_ctl(ep, libc::EPOLL_CTL_DEL, p.s[side].as_raw_fd(), 0, 0);
                    let _ = p.s[1 - side].shutdown(Shutdown::Write);
                    if p.eof[1 - side] {
                        pairs.remove(&id);
                    }
                }
                Err(_) => {
                    // Dropping closes both (and takes them out of the map).
                    pairs.remove(&id);
                }
            }
        }
    }
}
