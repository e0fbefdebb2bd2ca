//! Forwarding engines: move bytes both ways between two connected sockets.
//!
//! [`relay`] drives both directions of one split connection with the rules
//! of [`splitway_core::flow`]: it tells a [`Flow`] what the sockets did
//! (bytes moved, EOF, errors) and when, and does what it says: a FIN on one
//! side becomes `shutdown(WR)` on the other, both FINs close both sockets,
//! and every cut (an error or reset on either side, an engine fault, the
//! idle or half-close inactivity timeout, a relay stopping past its grace)
//! resets both sides, never a FIN. The engines only move bytes in one
//! direction: [`copy`] through a user-space buffer, [`splice`] through a
//! pipe, never touching the bytes. Memory per connection is what the engine
//! was given (two buffers or two pipes): nothing queues beyond it. With
//! pooled resources (`worker_pools`) a direction borrows its buffer or pipe
//! from a [`Stock`] only while a burst is in flight, so an idle connection
//! holds none.

pub mod copy;
pub mod loan;
pub mod splice;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use splitway_core::flow::{Action, Event, Flow, Side};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::sys::pipe::Pipe;
use crate::sys::{self, sockopt};
use copy::CopyPump;
pub use loan::{Loan, Stock};
use splice::SplicePump;
pub use splitway_core::flow::{Outcome, Timeouts as FlowTimeouts};

/// Bytes moved and how a split connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowReport {
    /// From the first socket (`a`) to the second (`b`).
    pub a_to_b: u64,
    pub b_to_a: u64,
    pub outcome: Outcome,
    /// From the connection's start (`since` of [`relay`]) to the first byte
    /// moved b→a: the time to first byte.
    pub first_b_to_a: Option<Duration>,
}

/// What one connection's engine works with: a buffer or a pipe per
/// direction. With a `stock`, a direction holds one only during a burst
/// (taken from and given back to the stock); without, both are owned for
/// the life of the connection.
pub enum EngineState<S> {
    Copy {
        a_to_b: Option<Vec<u8>>,
        b_to_a: Option<Vec<u8>>,
        stock: Option<Arc<S>>,
    },
    Splice {
        a_to_b: Option<Pipe>,
        b_to_a: Option<Pipe>,
        stock: Option<Arc<S>>,
    },
}

/// Why a direction stopped other than by EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// Reading from the source failed (a reset, an error).
    Src,
    /// Writing to the destination failed.
    Dst,
    /// The engine itself (no buffer or pipe could be had).
    Engine,
}

/// One direction of an engine: moves bytes `src` → `dst` until EOF on
/// `src` (`Ok`; the FIN on `dst` is the caller's, as [`Flow`] says) or a
/// failure, adding what it wrote to `moved` (partial writes too: they are
/// activity). Polled like a future; waits on the sockets' own readiness
/// (`poll_read_ready` / `poll_write_ready`: one reader and one writer per
/// socket, which is what a split connection has).
pub trait Pump {
    fn poll_pump(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut u64,
    ) -> Poll<Result<(), Fail>>;
}

/// The engine's two directions, indexed by the side read from.
enum Pumps<'a, S> {
    Copy([CopyPump<'a, S>; 2]),
    Splice([SplicePump<'a, S>; 2]),
}

pin_project_lite::pin_project! {
    /// One split connection being forwarded: both directions, the flow's
    /// rules and their timer, as one state machine (see [`relay`]). A few
    /// hundred bytes: this is what an idle connection's task holds.
    /// Dropped before its end (the task cancelled at shutdown, a panic), it
    /// resets both sockets: a cut is never a clean close.
    pub struct Relay<'a, S> {
        a: &'a TcpStream,
        b: &'a TcpStream,
        rules: Flow,
        pumps: Pumps<'a, S>,
        // The flow's one deadline. It is not moved on every burst: when it
        // fires early (there was traffic since it was set) it is set again
        // to the flow's deadline; it is brought forward when the deadline
        // comes earlier (a half-close shorter than the idle timeout).
        #[pin]
        timer: Sleep,
    }

    impl<S> PinnedDrop for Relay<'_, S> {
        fn drop(this: Pin<&mut Self>) {
            let me = this.project();
            if !me.rules.is_finished() {
                reset_both(me.a, me.b);
            }
        }
    }
}

/// Drive both directions of a split connection (`a` the accepted side, `b`
/// the next hop) to the end with `engine`'s buffers or pipes. `since` is
/// when the connection started (accept, or a relay leg's header): the
/// report's times count from it, and so does the first idle deadline.
pub fn relay<'a, S: Stock<Vec<u8>> + Stock<Pipe>>(
    a: &'a TcpStream,
    b: &'a TcpStream,
    t: FlowTimeouts,
    engine: &'a mut EngineState<S>,
    since: Instant,
) -> Relay<'a, S> {
    let pumps = match engine {
        EngineState::Copy {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            Pumps::Copy([
                CopyPump::new(Loan::new(a_to_b, stock), true),
                CopyPump::new(Loan::new(b_to_a, stock), false),
            ])
        }
        EngineState::Splice {
            a_to_b,
            b_to_a,
            stock,
        } => {
            let stock = stock.as_deref();
            Pumps::Splice([
                SplicePump::new(Loan::new(a_to_b, stock), true),
                SplicePump::new(Loan::new(b_to_a, stock), false),
            ])
        }
    };
    let rules = Flow::new(since.into_std(), t);
    let first = rules
        .poll_timeout()
        .map_or_else(far_future, Instant::from_std);
    Relay {
        a,
        b,
        rules,
        pumps,
        timer: sleep_until(first),
    }
}

/// A deadline for a flow that has none (timeouts too large to represent).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

impl<S: Stock<Vec<u8>> + Stock<Pipe>> Future for Relay<'_, S> {
    type Output = FlowReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FlowReport> {
        let mut me = self.project();
        let (a, b) = (*me.a, *me.b);
        loop {
            let mut moved = [0u64; 2];
            let mut ended: [Option<Result<(), Fail>>; 2] = [None, None];
            for side in Side::BOTH {
                if !me.rules.is_open(side) {
                    continue;
                }
                let i = side.index();
                let (src, dst) = if side == Side::A { (a, b) } else { (b, a) };
                let polled = match me.pumps {
                    Pumps::Copy(p) => p[i].poll_pump(cx, src, dst, &mut moved[i]),
                    Pumps::Splice(p) => p[i].poll_pump(cx, src, dst, &mut moved[i]),
                };
                if let Poll::Ready(r) = polled {
                    ended[i] = Some(r);
                }
            }
            if moved != [0, 0] || ended != [None, None] {
                let now = Instant::now().into_std();
                for side in Side::BOTH {
                    let bytes = moved[side.index()];
                    if bytes > 0 {
                        me.rules
                            .handle_event(now, Event::Moved { from: side, bytes });
                    }
                }
                for side in Side::BOTH {
                    let ev = match ended[side.index()] {
                        None => continue,
                        Some(Ok(())) => Event::End {
                            from: side,
                            clean: true,
                        },
                        Some(Err(Fail::Src)) => Event::Reset(side),
                        Some(Err(Fail::Dst)) => Event::Reset(side.other()),
                        Some(Err(Fail::Engine)) => Event::Fault,
                    };
                    me.rules.handle_event(now, ev);
                }
                if let Some(report) = act(a, b, me.rules, now) {
                    return Poll::Ready(report);
                }
                // A deadline earlier than the armed one (the half-close
                // began): bring the timer forward. A later one (activity)
                // waits until the timer fires.
                if let Some(at) = me.rules.poll_timeout().map(Instant::from_std) {
                    if at < me.timer.deadline() {
                        me.timer.as_mut().reset(at);
                    }
                }
            }
            if me.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now().into_std();
            me.rules.handle_timeout(now);
            if let Some(report) = act(a, b, me.rules, now) {
                return Poll::Ready(report);
            }
            let next = me
                .rules
                .poll_timeout()
                .map_or_else(far_future, Instant::from_std);
            me.timer.as_mut().reset(next);
        }
    }
}

/// Do what the flow's rules say; the report once they say it is over.
fn act(
    a: &TcpStream,
    b: &TcpStream,
    rules: &mut Flow,
    now: std::time::Instant,
) -> Option<FlowReport> {
    while let Some(action) = rules.poll_action() {
        match action {
            Action::ShutdownWrite(side) => {
                let s = if side == Side::A { a } else { b };
                if sockopt::shutdown_write(s).is_err() {
                    rules.handle_event(now, Event::Reset(side));
                }
            }
            Action::Close => return Some(report(rules)),
            Action::Reset => {
                reset_both(a, b);
                return Some(report(rules));
            }
        }
    }
    None
}

fn report(rules: &Flow) -> FlowReport {
    let r = rules.report();
    FlowReport {
        a_to_b: r.a_to_b,
        b_to_a: r.b_to_a,
        outcome: r.outcome.unwrap_or(Outcome::Reset),
        first_b_to_a: r.first_b_to_a,
    }
}

/// The first burst of the client → next hop direction, tried at once: the
/// client has usually sent its request by the time the next hop is open,
/// but tokio has not seen the socket's first readiness event yet (and, for
/// a next hop that answered within `connect(2)`, no write readiness
/// either), so waiting for them would cost one more turn of the event
/// loop. Plain `recv`/`send`, leaving tokio's readiness alone (it is only
/// ever cleared by a read or write that saw EAGAIN through tokio).
/// `None`: nothing waiting; `Some((0, 0))`: EOF; `Some((n, written))`.
pub(crate) fn first_burst(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut [u8],
) -> Result<Option<(usize, usize)>, Fail> {
    use std::os::fd::AsRawFd;
    let n = match sys::recv(src.as_raw_fd(), buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(_) => return Err(Fail::Src),
    };
    let mut off = 0;
    while off < n {
        match sys::send(dst.as_raw_fd(), &buf[off..n]) {
            Ok(m) => off += m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return Err(Fail::Dst),
        }
    }
    Ok(Some((n, off)))
}

/// Reset both sockets: their next close sends RST.
pub fn reset_both(a: &TcpStream, b: &TcpStream) {
    let _ = sockopt::set_linger_zero(a);
    let _ = sockopt::set_linger_zero(b);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use splitway_core::flow::Timeouts;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::{sleep, timeout, Instant};

    use std::os::fd::AsRawFd;

    use super::*;
    use crate::resources::Resources;
    use crate::sys::pipe::Pipe;
    use crate::sys::sockopt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    fn rcvlowat(s: &TcpStream) -> i32 {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket for the borrow; writes one int.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt SO_RCVLOWAT");
        v
    }

    fn byte(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 13)) as u8
    }

    /// `node.quiet_blocked_input`, both engines: while the destination is
    /// full the source's SO_RCVLOWAT is raised (and not past half its
    /// receive buffer), and it is set back before the next read: a small
    /// tail sent after the bulk (below the raised mark, no FIN behind it)
    /// still goes through, byte for byte, and the flow closes cleanly.
    #[tokio::test]
    async fn quiet_blocked_input_raises_the_mark_while_blocked_and_loses_no_tail() {
        splice::FORCE_QUIET.with(|f| f.set(true));
        quiet_case(EngineState::Splice {
            a_to_b: Some(Pipe::new(64 << 10).expect("pipe")),
            b_to_a: Some(Pipe::new(64 << 10).expect("pipe")),
            stock: None,
        })
        .await;
        quiet_case(EngineState::Copy {
            a_to_b: Some(vec![0; 64 << 10]),
            b_to_a: Some(vec![0; 64 << 10]),
            stock: None,
        })
        .await;
    }

    async fn quiet_case(mut engine: EngineState<Resources>) {
        const BULK: usize = 64 << 20;
        const TAIL: usize = 100;
        let (mut client, a) = pair().await;
        let (b, mut server) = pair().await;
        let t = Timeouts {
            idle: Duration::from_secs(60),
            half_close: Duration::from_secs(60),
        };
        let flow = relay(&a, &b, t, &mut engine, Instant::now());
        let (tail_sent_tx, tail_sent_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let send = async {
            let data: Vec<u8> = (0..BULK).map(byte).collect();
            client.write_all(&data).await.expect("bulk");
            // Let the relay drain the bulk and wait for more, then a tail
            // smaller than any raised mark.
            sleep(Duration::from_millis(300)).await;
            let tail: Vec<u8> = (BULK..BULK + TAIL).map(byte).collect();
            client.write_all(&tail).await.expect("tail");
            let _ = tail_sent_tx.send(());
            let _ = done_rx.await;
            client.shutdown().await.expect("FIN");
        };
        let recv = async {
            // The server does not read: the relay's destination fills and
            // the direction waits for write space with the mark raised.
            let mut raised = 0;
            for _ in 0..1000 {
                raised = rcvlowat(&a);
                if raised > 1 {
                    break;
                }
                sleep(Duration::from_millis(10)).await;
            }
            let buf = sockopt::rcvbuf(&a).expect("rcvbuf");
            let mut got = vec![0u8; BULK + TAIL];
            let mut n = 0;
            let r = timeout(Duration::from_secs(20), async {
                while n < got.len() {
                    let m = server.read(&mut got[n..]).await.expect("read");
                    assert!(m > 0, "EOF after {n} bytes");
                    n += m;
                }
            })
            .await;
            // Fail here: a stalled flow would keep the other futures waiting.
            assert!(r.is_ok(), "stalled after {n} of {} bytes", BULK + TAIL);
            let _ = tail_sent_rx.await;
            let after = rcvlowat(&a);
            let _ = done_tx.send(());
            let mut eof = [0u8; 1];
            let end = server.read(&mut eof).await.expect("EOF");
            server.shutdown().await.expect("FIN back");
            (raised, buf, got, after, end)
        };
        let (report, (), (raised, buf, got, after, end)) = tokio::join!(flow, send, recv);
        assert!(raised > 1, "SO_RCVLOWAT raised while blocked ({raised})");
        assert!(
            raised as usize <= buf / 2,
            "mark {raised} within half the receive buffer {buf}"
        );
        assert!(
            got.iter().enumerate().all(|(i, &v)| v == byte(i)),
            "bytes in order"
        );
        assert_eq!(after, 1, "mark set back after the burst");
        assert_eq!(end, 0, "FIN carried");
        assert_eq!(report.a_to_b, (BULK + TAIL) as u64);
        assert_eq!(report.outcome, Outcome::Closed);
    }
}
