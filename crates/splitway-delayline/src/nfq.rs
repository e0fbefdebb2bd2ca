//! The NFQUEUE netlink protocol, spoken directly through `libc`.
//!
//! Owns everything OS-specific about talking to `nfnetlink_queue`: opening a
//! `NETLINK_NETFILTER` socket, binding one queue number to it, configuring
//! the copy mode (a short copy range, so each message carries the packet's
//! metadata and its original length in `NFQA_CAP_LEN`, but not its payload)
//! and the queue's maximum length, receiving packet messages in batches
//! (`recvmmsg`), and encoding verdicts: a single `NFQNL_MSG_VERDICT` (used for
//! drops) and `NFQNL_MSG_VERDICT_BATCH`, which accepts every queued packet up
//! to and including an id in one message.
//!
//! Wire layout (see `linux/netfilter/nfnetlink_queue.h`): `nlmsghdr`, then
//! `nfgenmsg { family: u8, version: u8, res_id: be16 /* queue number */ }`,
//! then netlink attributes. Integer fields in nfnetlink payloads are big
//! endian; the `nlmsghdr` is host endian.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_TIMESTAMP: u16 = 4;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;

const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// `NF_DROP`.
pub const VERDICT_DROP: u32 = 0;
/// `NF_ACCEPT`.
pub const VERDICT_ACCEPT: u32 = 1;

/// Bytes of each packet copied to user space: enough for an IPv4 or IPv6
/// header, whose length field is the fallback when `NFQA_CAP_LEN` is absent.
const COPY_RANGE: u32 = 40;
/// Receive slots per `recvmmsg` call, and bytes per slot.
const SLOTS: usize = 64;
const SLOT_BYTES: usize = 2048;

/// One queued packet as seen from user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// The queue's packet id (for the verdict).
    pub id: u32,
    /// Length of the packet at the hook (IP header included), in bytes.
    pub len: u32,
    /// When the packet was received by the link namespace (`CLOCK_REALTIME`
    /// ns, microsecond resolution), if the kernel stamped it.
    pub rx_realtime_ns: Option<u64>,
}

/// What one receive call produced besides packets.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecvOutcome {
    /// The socket's receive buffer overflowed since the last call (the
    /// kernel dropped at least one packet message: the packet itself stays
    /// queued and is released by a later batch verdict).
    pub enobufs: bool,
    /// `NLMSG_ERROR` messages carrying an error (e.g. a verdict for an
    /// unknown id).
    pub errors: u32,
    /// The socket had no more to read.
    pub drained: bool,
    /// The receive failed with something other than `EAGAIN`, `EINTR` or
    /// `ENOBUFS` (the errno).
    pub hard_error: Option<i32>,
}

/// A netlink socket bound to one NFQUEUE queue number.
pub struct NfqSocket {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
    rx: Vec<u8>,
}

fn nlmsg_align(n: usize) -> usize {
    (n + 3) & !3
}

fn last_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Append a netlink message header + nfgenmsg for `msg` of the queue
/// subsystem; returns the offset of the header, to patch its length later.
fn begin(buf: &mut Vec<u8>, msg: u16, flags: u16, seq: u32, queue: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish
    buf.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    buf.push(libc::AF_UNSPEC as u8); // nfgen_family
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&queue.to_be_bytes());
    start
}

fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + nlmsg_align(len) - len, 0);
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Append a verdict message for `queue` to `buf`. With `batch`, the verdict
/// applies to every packet of the queue with an id up to and including `id`.
pub fn push_verdict(buf: &mut Vec<u8>, queue: u16, id: u32, verdict: u32, batch: bool) {
    let msg = if batch {
        NFQNL_MSG_VERDICT_BATCH
    } else {
        NFQNL_MSG_VERDICT
    };
    let start = begin(buf, msg, NLM_F_REQUEST, 0, queue);
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    attr(buf, NFQA_VERDICT_HDR, &hdr);
    finish(buf, start);
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Length of an IP packet from the start of its header.
fn ip_len(hdr: &[u8]) -> Option<u32> {
    match hdr.first()? >> 4 {
        4 => Some(u32::from(u16::from_be_bytes([*hdr.get(2)?, *hdr.get(3)?]))),
        6 => Some(40 + u32::from(u16::from_be_bytes([*hdr.get(4)?, *hdr.get(5)?]))),
        _ => None,
    }
}

/// Parse the netlink messages of one datagram, appending packets to `out`.
/// Returns the number of error messages seen. Malformed input is skipped,
/// never trusted.
pub fn parse_datagram(mut d: &[u8], out: &mut Vec<PacketMeta>) -> u32 {
    let mut errors = 0;
    while d.len() >= 16 {
        let len = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]) as usize;
        let ty = u16::from_ne_bytes([d[4], d[5]]);
        if len < 16 || len > d.len() {
            break;
        }
        let body = &d[16..len];
        if ty == NLMSG_ERROR {
            if let Some(code) = body.get(..4) {
                if i32::from_ne_bytes([code[0], code[1], code[2], code[3]]) != 0 {
                    errors += 1;
                }
            }
        } else if ty == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            let mut attrs = &body[4..];
            let (mut id, mut cap_len, mut payload, mut ts) = (None, None, None, None);
            while attrs.len() >= 4 {
                let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let aty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
                if alen < 4 || alen > attrs.len() {
                    break;
                }
                let data = &attrs[4..alen];
                match aty {
                    NFQA_PACKET_HDR => id = be32(data),
                    NFQA_CAP_LEN => cap_len = be32(data),
                    NFQA_PAYLOAD => payload = Some(data),
                    NFQA_TIMESTAMP if data.len() >= 16 => {
                        let sec = u64::from_be_bytes(data[..8].try_into().unwrap_or_default());
                        let usec = u64::from_be_bytes(data[8..16].try_into().unwrap_or_default());
                        ts = sec
                            .checked_mul(1_000_000_000)
                            .and_then(|n| n.checked_add(usec.saturating_mul(1_000)));
                    }
                    _ => {}
                }
                attrs = &attrs[nlmsg_align(alen).min(attrs.len())..];
            }
            if let Some(id) = id {
                let len = cap_len
                    .or_else(|| payload.and_then(ip_len))
                    .or_else(|| payload.map(|p| p.len() as u32))
                    .unwrap_or(0);
                out.push(PacketMeta {
                    id,
                    len,
                    rx_realtime_ns: ts,
                });
            }
        } else if ty == NLMSG_DONE {
            break;
        }
        d = &d[nlmsg_align(len).min(d.len())..];
    }
    errors
}

impl NfqSocket {
    /// Open a socket in the calling thread's network namespace, bind it to
    /// `queue` (fails with `EBUSY` if another socket holds that queue), set
    /// the copy mode and `maxlen`, and force the receive buffer to
    /// `rcvbuf` bytes.
    pub fn open(queue: u16, maxlen: u32, rcvbuf: usize) -> io::Result<NfqSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(last_err("socket(AF_NETLINK, NETLINK_NETFILTER)"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_err("bind(netlink)"));
        }
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        // SO_TIMESTAMP on any socket turns on the kernel's receive
        // timestamps (while the socket lives), so queued packets carry
        // NFQA_TIMESTAMP: their true arrival time, independent of how soon
        // this thread wakes up to read them.
        let one: libc::c_int = 1;
        // SAFETY: one is a c_int living across the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMP,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: size is a c_int living across the call.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &size as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
        let mut s = NfqSocket {
            fd,
            queue,
            seq: 0,
            rx: vec![0u8; SLOTS * SLOT_BYTES],
        };
        s.config(|b| attr(b, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]))
            .map_err(|e| io::Error::new(e.kind(), format!("bind queue {queue}: {e}")))?;
        s.config(|b| {
            let mut p = [0u8; 5];
            p[..4].copy_from_slice(&COPY_RANGE.to_be_bytes());
            p[4] = NFQNL_COPY_PACKET;
            attr(b, NFQA_CFG_PARAMS, &p);
            attr(b, NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes());
        })
        .map_err(|e| io::Error::new(e.kind(), format!("configure queue {queue}: {e}")))?;
        Ok(s)
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Send one config message built by `attrs` and wait for its ack.
    fn config(&mut self, attrs: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let mut buf = Vec::with_capacity(64);
        let start = begin(
            &mut buf,
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            self.queue,
        );
        attrs(&mut buf);
        finish(&mut buf, start);
        self.send(&buf)?;
        // Wait (bounded) for the ack carrying our sequence number.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let mut pfd = libc::pollfd {
                fd: self.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            // SAFETY: rx is a live buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.raw_fd(),
                    self.rx.as_mut_ptr() as *mut libc::c_void,
                    self.rx.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 16 {
                let d = &self.rx[..n as usize];
                let ty = u16::from_ne_bytes([d[4], d[5]]);
                let rseq = u32::from_ne_bytes([d[8], d[9], d[10], d[11]]);
                if ty == NLMSG_ERROR && rseq == seq && d.len() >= 20 {
                    let code = i32::from_ne_bytes([d[16], d[17], d[18], d[19]]);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
            } else if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no netlink ack for NFQUEUE config",
                ));
            }
        }
    }

    /// Send already-encoded messages to the kernel.
    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: buf is valid for its length. An unconnected netlink socket
        // sends to the kernel (port id 0).
        let n = unsafe {
            libc::send(
                self.raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            return Err(last_err("send(netlink)"));
        }
        Ok(())
    }

    /// Read everything currently waiting (without blocking), appending
    /// packets to `out`.
    pub fn recv_all(&mut self, out: &mut Vec<PacketMeta>) -> RecvOutcome {
        let mut outcome = RecvOutcome::default();
        // Bound the work per call so one busy direction cannot starve the
        // other's verdicts.
        for _ in 0..16 {
            // SAFETY: iovecs and headers point into self.rx, which outlives
            // the call; each slot is SLOT_BYTES long.
            let mut iov: [libc::iovec; SLOTS] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
            for i in 0..SLOTS {
                iov[i].iov_base = self.rx[i * SLOT_BYTES..].as_mut_ptr() as *mut libc::c_void;
                iov[i].iov_len = SLOT_BYTES;
                hdrs[i].msg_hdr.msg_iov = &mut iov[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: hdrs is a valid array of SLOTS mmsghdr.
            let n = unsafe {
                libc::recvmmsg(
                    self.raw_fd(),
                    hdrs.as_mut_ptr(),
                    SLOTS as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        outcome.enobufs = true;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        outcome.drained = true;
                        return outcome;
                    }
                    other => {
                        outcome.hard_error = Some(other.unwrap_or(0));
                        outcome.drained = true;
                        return outcome;
                    }
                }
            }
            let n = n as usize;
            for (i, h) in hdrs.iter().enumerate().take(n) {
                let len = (h.msg_len as usize).min(SLOT_BYTES);
                let d = &self.rx[i * SLOT_BYTES..i * SLOT_BYTES + len];
                outcome.errors += parse_datagram(d, out);
            }
            if n < SLOTS {
                outcome.drained = true;
                return outcome;
            }
        }
        outcome
    }
}

/// Kernel-side counters of one queue, from
/// `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelQueueStats {
    /// Packets dropped because the queue was at its maximum length.
    pub queue_dropped: u64,
    /// Packets whose message could not be delivered to the socket (full
    /// receive buffer); they stay queued.
    pub user_dropped: u64,
    /// Packets currently in the kernel queue.
    pub queue_total: u64,
}

/// The line of `queue` in the text of `/proc/net/netfilter/nfnetlink_queue`
/// (`queue portid total copy_mode copy_range queue_dropped user_dropped
/// id_sequence 1`).
pub fn parse_proc_queue(text: &str, queue: u16) -> Option<KernelQueueStats> {
    text.lines().find_map(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .map(|x| x.parse::<i64>().map(|v| v.max(0) as u64))
            .collect::<Result<_, _>>()
            .ok()?;
        (f.len() >= 7 && f[0] == u64::from(queue)).then(|| KernelQueueStats {
            queue_dropped: f[5],
            user_dropped: f[6],
            queue_total: f[2],
        })
    })
}

/// `/proc/net/netfilter/nfnetlink_queue` of the calling thread's network
/// namespace, opened so that it can be re-read from any thread later.
pub fn open_proc_queue() -> Option<std::fs::File> {
    std::fs::File::open("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()
}

/// Re-read a file from [`open_proc_queue`].
pub fn read_proc_queue(f: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let n = f.read_at(&mut buf, 0).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_msg(id: u32, cap_len: Option<u32>, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let start = begin(&mut b, NFQNL_MSG_PACKET, 0, 0, 7);
        let mut hdr = [0u8; 7];
        hdr[..4].copy_from_slice(&id.to_be_bytes());
        attr(&mut b, NFQA_PACKET_HDR, &hdr);
        attr(&mut b, 5, &3u32.to_be_bytes()); // indev, ignored
        attr(&mut b, NFQA_PAYLOAD, payload);
        if let Some(c) = cap_len {
            attr(&mut b, NFQA_CAP_LEN, &c.to_be_bytes());
        }
        finish(&mut b, start);
        b
    }

    #[test]
    fn parses_cap_len_and_falls_back_to_ip_header() {
        let mut v4 = [0u8; 40];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&1500u16.to_be_bytes());
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&1000u16.to_be_bytes());
        let mut d = packet_msg(1, Some(9000), &v4);
        d.extend(packet_msg(2, None, &v4));
        d.extend(packet_msg(3, None, &v6));
        d.extend(packet_msg(4, None, &[0x45, 0, 0])); // truncated header
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&d, &mut out), 0);
        let got: Vec<(u32, u32)> = out.iter().map(|p| (p.id, p.len)).collect();
        assert_eq!(got, vec![(1, 9000), (2, 1500), (3, 1040), (4, 3)]);
        assert!(out.iter().all(|p| p.rx_realtime_ns.is_none()));
    }

    #[test]
    fn parses_timestamp() {
        let mut b = Vec::new();
        let start = begin(&mut b, NFQNL_MSG_PACKET, 0, 0, 7);
        attr(&mut b, NFQA_PACKET_HDR, &[0, 0, 0, 9, 8, 0, 3]);
        let mut ts = [0u8; 16];
        ts[..8].copy_from_slice(&5u64.to_be_bytes());
        ts[8..].copy_from_slice(&7u64.to_be_bytes());
        attr(&mut b, NFQA_TIMESTAMP, &ts);
        attr(&mut b, NFQA_CAP_LEN, &60u32.to_be_bytes());
        finish(&mut b, start);
        let mut out = Vec::new();
        parse_datagram(&b, &mut out);
        assert_eq!(
            out,
            vec![PacketMeta {
                id: 9,
                len: 60,
                rx_realtime_ns: Some(5_000_007_000)
            }]
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let mut out = Vec::new();
        for junk in [
            &[][..],
            &[0xff; 15],
            &[0xff; 64],
            &[16, 0, 0, 0, 0, 3, 0, 0],
        ] {
            parse_datagram(junk, &mut out);
        }
        let mut d = packet_msg(5, Some(100), &[0x45]);
        d.truncate(d.len() - 3);
        parse_datagram(&d, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn proc_queue_lines() {
        let text = "   10   1234     3 2    40     7     2      999  1\n   11   1235     0 2    40     0     0       12  1\n";
        assert_eq!(
            parse_proc_queue(text, 10),
            Some(KernelQueueStats {
                queue_dropped: 7,
                user_dropped: 2,
                queue_total: 3
            })
        );
        assert_eq!(parse_proc_queue(text, 11).map(|s| s.queue_dropped), Some(0));
        assert_eq!(parse_proc_queue(text, 12), None);
        assert_eq!(parse_proc_queue("garbage\n1 2", 1), None);
    }

    #[test]
    fn verdict_encoding() {
        let mut b = Vec::new();
        push_verdict(&mut b, 0x0102, 0x0a0b0c0d, VERDICT_ACCEPT, true);
        assert_eq!(b.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x0303);
        assert_eq!(&b[18..20], &[1, 2]);
        assert_eq!(&b[24..28], &[0, 0, 0, 1]);
        assert_eq!(&b[28..32], &[0x0a, 0x0b, 0x0c, 0x0d]);
    }
}
