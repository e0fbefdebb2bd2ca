//! The module engine: one flow's plain socket (the client at the ingress,
//! the server at the far relay) and its framed leg, both directions, in one
//! task. Payload passes through user space: read from the plain socket,
//! encoded by the chain, sent as DATA frames; DATA from the leg decoded and
//! written to the plain socket. Control messages ride in MODULE frames.
//!
//! Revocation: the leg has `TCP_NOTSENT_LOWAT`, so it reports writable only
//! while the kernel holds fewer unsent bytes than that; this engine reads
//! the plain socket only while its own queue for the leg is short
//! ([`LEG_QUEUE`]). So a burst is encoded at the moment the leg can take it,
//! with that moment's `TCP_INFO`, and the bytes not yet encoded wait in the
//! plain socket's receive queue, where nothing has been decided about them.
//!
//! Flushes: a burst is flushed (every stage emits what it holds) when the
//! plain socket has nothing more, unless more is due soon ([`hold`]):
//! - the leg still has bytes to send (queued here or unsent in the
//!   kernel): the tail waits until they have drained at the leg's delivery
//!   rate, since sending it earlier would not make it arrive earlier;
//! - the source is streaming (at least [`BULK_BURST`] read since the last
//!   flush): a *soft* flush (every stage but dedup flushes, so the leg does
//!   not starve; dedup keeps its unfinished chunk, which would otherwise
//!   cross as bytes even when the far side has it), and a full flush once
//!   the source has sent nothing for two RTTs of the plain socket.
//!
//! At most [`HOLD_MAX`] after the last byte read; a source's EOF flushes at
//! once, and so does a short burst on an idle leg (a request, an
//! interactive reply).
//!
//! Spliced pass-through ([`ModuleFlow::pipes`] set, `[modules] splice`):
//! while every stage passes its next bytes unchanged and holds nothing
//! (`null`; `compress` while its controller sends raw), the plain socket's
//! bytes go plain socket → pipe with `splice(2)`, then a DATA header with
//! [`mframes::DATA_PLAIN`] and the pipe's byte count, then pipe → leg: a
//! plain record. The receiver reads the leg exactly up to each frame
//! header; a plain record's payload of at least [`SPLICE_MIN`] goes leg →
//! pipe → plain socket, and only headers pass through user space. Smaller
//! records are copied: after one, the leg is read in [`READ_BYTES`] chunks
//! (many records per read, their payloads written to the plain socket in
//! one write) until a large record comes. A sender reading a source that
//! trickles in makes records of a few segments each (measured on the paper
//! path: 4–6 thousand records per 10 MB, most under 2 KB), and three system calls
//! per record at the receiver (header, splice in, splice out) let its leg's
//! receive queue grow by megabytes while the plain socket went idle. A
//! plain record is decided when it is read: once in the pipe it can no
//! longer be re-encoded or dropped (the chain's state already counts it as
//! sent raw).
//!
//! Gathering (the sending side of every module flow): a source that
//! trickles in (the server's segments arriving one or two at a time) would
//! make a record of each read, and a record of one 1448-byte segment plus
//! its 8-byte header leaves as two packets on a `TCP_NODELAY` leg
//! (measured: 1000–1090 payload bytes per leg segment against 1370–1400 for
//! a raw leg; the packet overhead made the leg, not the server's link, the
//! bottleneck; a transforming chain's encoder was called as often).
//! Once [`BULK_BURST`] bytes have been read, the plain socket's
//! `SO_RCVLOWAT` is raised to [`RECORD_LOWAT`], so it wakes the engine only
//! when that much is there (or at EOF), and bytes under that are read
//! anyway [`RECORD_WAIT`] after the socket was last emptied. When that read
//! finds nothing the source has paused: the mark goes back to one byte (an
//! interactive reply is not held), until the next bulk run.
//!
//! Ends: the plain socket's EOF becomes an END frame (with the DATA byte
//! count); an END received (count checked, chain finished) becomes
//! `shutdown(WR)` on the plain socket. A leg that ends without END, or any
//! bad frame or module input, resets the plain socket and the leg, counted
//! by reason. When both directions are done and the far decoder has
//! acknowledged every reference (so it can ask for nothing more), the leg
//! gets a FIN; the flow ends at the far FIN.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use splitway_core::frame::{
    self, Frame, FrameError, HEADER_LEN, LEG_STREAM, MAX_FRAME, MAX_PAYLOAD,
};
use splitway_modules::{
    BusyMeter, DecoderChain, EncoderChain, Flush, LegSnapshot, ModuleError, Output, TcpSnapshot,
};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::frames::{self as mframes, ModuleTarget};
use super::ModuleMetrics;
use crate::forward::{FlowReport, FlowTimeouts, Loan, Outcome};
use crate::resources::Resources;
use crate::sys::pipe::Pipe;
use crate::sys::{self, sockopt};

/// Bytes read from the plain socket per read call.
const READ_BYTES: usize = 64 << 10;
/// Bytes read from the plain socket per wake-up at most.
const READ_BUDGET: usize = 256 << 10;
/// The plain socket is read only while fewer bytes than this wait for the leg.
pub const LEG_QUEUE: usize = 64 << 10;
/// The leg is read only while fewer decoded bytes than this wait for the
/// plain socket, and fewer frame bytes than [`FRAME_QUEUE`] wait decoding.
const PLAIN_QUEUE: usize = 1 << 20;
const FRAME_QUEUE: usize = 256 << 10;
/// Plain records received with a payload this large are spliced; smaller
/// ones are copied, and the leg read in bulk after them.
pub const SPLICE_MIN: usize = 16 << 10;
/// A streaming source's socket wakes the engine at this many bytes.
pub const RECORD_LOWAT: usize = 16 << 10;
/// The longest a streaming source's bytes under [`RECORD_LOWAT`] wait.
pub const RECORD_WAIT: Duration = Duration::from_millis(2);

/// What to do with the plain socket's low-water mark after a splice wake:
/// `raised` now, `run` bytes spliced since it was last lowered, `found`
/// bytes this wake, `by_timer` when the wake was the [`RECORD_WAIT`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gather {
    /// Raise it to [`RECORD_LOWAT`]: the source streams.
    Raise,
    /// Back to one byte: the source paused.
    Lower,
    Keep,
}

pub fn gather(raised: bool, run: u64, found: usize, by_timer: bool) -> Gather {
    if raised && by_timer && found == 0 {
        Gather::Lower
    } else if !raised && run >= BULK_BURST {
        Gather::Raise
    } else {
        Gather::Keep
    }
}

/// How many bytes to read from the leg next: none while a complete frame
/// waits (`next` is 0, [`frame::Decoder::next_read`]), `bulk` after a
/// small plain record (its successors are likely small too: copied), else
/// exactly to the next frame header (so a large record can be spliced);
/// at most `cap`.
pub fn leg_read_len(next: usize, after_small: bool, cap: usize) -> usize {
    if next == 0 {
        0
    } else if after_small {
        cap
    } else {
        next.min(cap)
    }
}

/// The longest a tail is held after the last byte read.
pub const HOLD_MAX: Duration = Duration::from_millis(100);
/// Bytes read since the last flush that make a source "streaming".
pub const BULK_BURST: u64 = 64 << 10;
/// The longest one wait before the leg is looked at again.
const HOLD_STEP: Duration = Duration::from_millis(20);

/// How long to hold an unflushed tail: `None` to flush now (the leg would
/// go idle), else until the bytes ahead of it (`queued` here, `notsent` in
/// the kernel) have left at `rate` bytes/s, 1 ms to [`HOLD_STEP`].
pub fn hold_for(queued: u64, notsent: u64, rate: u64) -> Option<Duration> {
    let ahead = queued + notsent;
    if ahead == 0 {
        return None;
    }
    let wait = ahead
        .saturating_mul(1_000_000)
        .checked_div(rate)
        .map_or(HOLD_STEP, Duration::from_micros);
    Some(wait.clamp(Duration::from_millis(1), HOLD_STEP))
}

/// What to do with an unflushed tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Flush every stage now.
    Flush,
    /// Soft flush now, and look again after this long.
    Soft(Duration),
    /// Hold everything; look again after this long.
    Hold(Duration),
}

/// The tail `since` the last byte read: held for a busy leg (`leg`, from
/// [`hold_for`]); after a bulk `burst`, soft-flushed until two source RTTs
/// (1 ms to [`HOLD_STEP`]) have passed without input; else flushed.
pub fn tail(leg: Option<Duration>, burst: u64, source_rtt: Duration, since: Duration) -> Tail {
    if since >= HOLD_MAX {
        return Tail::Flush;
    }
    if let Some(w) = leg {
        return Tail::Hold(w);
    }
    // Two RTTs: a source in slow start pauses about one RTT between rounds.
    let rtt = (source_rtt * 2).clamp(Duration::from_millis(1), HOLD_STEP);
    if burst >= BULK_BURST && since < rtt {
        Tail::Soft(rtt - since)
    } else {
        Tail::Flush
    }
}

/// Why a module flow was cut.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the leg ended without END")]
    NoEnd,
    #[error("END counts {said} bytes, {got} arrived")]
    EndMismatch { said: u64, got: u64 },
    #[error("{0}")]
    Protocol(&'static str),
    #[error("the far relay aborted the flow")]
    Aborted,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl Cut {
    /// Metric label; `None` where no bad input was received.
    pub fn bad_input_reason(&self) -> Option<&'static str> {
        match self {
            Cut::Module(e) => Some(e.reason()),
            Cut::Frame(e) => Some(e.reason()),
            Cut::NoEnd => Some("no_end"),
            Cut::EndMismatch { .. } => Some("end_mismatch"),
            Cut::Protocol(r) => Some(r),
            Cut::Aborted | Cut::Io(_) => None,
        }
    }
}

/// A byte queue with a read position.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    pos: usize,
}

impl Queue {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }
}

/// One module flow.
pub struct ModuleFlow<'a> {
    pub plain: &'a TcpStream,
    pub leg: &'a TcpStream,
    pub enc: EncoderChain,
    pub dec: DecoderChain,
    pub metrics: &'a ModuleMetrics,
    pub chain: String,
    /// Plain bytes read before the flow started (encoded first).
    pub early: Vec<u8>,
    /// Where pipes for plain records come from; `None`: no splicing (every
    /// byte through user space, plain records received are copied).
    pub pipes: Option<&'a Resources>,
    /// The leg's `TCP_NOTSENT_LOWAT` while the chain transforms bytes; it is
    /// lifted while plain records are spliced (nothing there to revoke).
    pub notsent_lowat: u32,
}

struct State {
    fdec: frame::Decoder,
    to_leg: Queue,
    to_plain: Queue,
    out: Output,
    plain_eof: bool,
    unflushed: bool,
    /// When a held tail is looked at again; the last byte read; bytes read
    /// since the last flush; whether a soft flush followed the last read.
    flush_at: Option<Instant>,
    last_read: Instant,
    burst: u64,
    soft_done: bool,
    /// The encoder's share of wall time.
    busy: BusyMeter,
    end_sent: bool,
    end_received: bool,
    /// The decoder chain finished after END (it may first wait for answers).
    dec_finished: bool,
    plain_shut: bool,
    leg_eof: bool,
    leg_fin: bool,
    plain_in: u64,
    wire_out: u64,
    wire_in: u64,
    plain_out: u64,
    /// The plain record being sent: its header (sent from `tx_sent`) and
    /// the payload bytes still in `tx_pipe`. Everything in `to_leg` goes
    /// after it (a record starts only when `to_leg` is empty).
    tx_pipe: Option<Pipe>,
    tx_head: Vec<u8>,
    tx_sent: usize,
    tx_left: usize,
    /// The plain record being received: payload bytes still on the leg, and
    /// in `rx_pipe` for the plain socket (written once `to_plain` is empty).
    rx_pipe: Option<Pipe>,
    rx_left: usize,
    rx_in_pipe: usize,
    /// The last plain record received was under [`SPLICE_MIN`].
    rx_small: bool,
    spliced_out: u64,
    spliced_in: u64,
    /// The leg's unsent queue is unbounded (plain records are spliced).
    lowat_lifted: bool,
    /// Gathering ([`gather`]): the plain socket's `SO_RCVLOWAT` is raised;
    /// bytes spliced since it was last lowered; when to read it anyway.
    src_lowat: bool,
    src_run: u64,
    read_at: Option<Instant>,
}

impl State {
    /// A plain record is on its way to the leg.
    fn tx_busy(&self) -> bool {
        self.tx_sent < self.tx_head.len() || self.tx_left > 0
    }

    /// `n` bytes were read from the plain socket.
    fn read_in(&mut self, n: usize) {
        self.plain_in += n as u64;
        self.last_read = Instant::now();
        self.burst += n as u64;
        self.soft_done = false;
    }
}

impl ModuleFlow<'_> {
    /// Runs the flow to its end. Bytes in the report: `a_to_b` is plain →
    /// leg (plain bytes read), `b_to_a` leg → plain (plain bytes written).
    pub async fn run(mut self, t: FlowTimeouts) -> (FlowReport, Option<Cut>) {
        let mut st = State {
            fdec: frame::Decoder::new(),
            to_leg: Queue::default(),
            to_plain: Queue::default(),
            out: Output::default(),
            plain_eof: false,
            unflushed: false,
            flush_at: None,
            last_read: Instant::now(),
            burst: 0,
            soft_done: false,
            busy: BusyMeter::new(std::time::Instant::now()),
            end_sent: false,
            end_received: false,
            dec_finished: false,
            plain_shut: false,
            leg_eof: false,
            leg_fin: false,
            plain_in: 0,
            wire_out: 0,
            wire_in: 0,
            plain_out: 0,
            tx_pipe: None,
            tx_head: Vec::with_capacity(HEADER_LEN),
            tx_sent: 0,
            tx_left: 0,
            rx_pipe: None,
            rx_left: 0,
            rx_in_pipe: 0,
            rx_small: false,
            spliced_out: 0,
            spliced_in: 0,
            lowat_lifted: false,
            src_lowat: false,
            src_run: 0,
            read_at: None,
        };
        let r = self.drive(&mut st, t).await;
        let m = &self.metrics.bytes;
        let c = self.chain.as_str();
        m.with_label_values(&[c, "plain_in"]).inc_by(st.plain_in);
        m.with_label_values(&[c, "wire_out"]).inc_by(st.wire_out);
        m.with_label_values(&[c, "wire_in"]).inc_by(st.wire_in);
        m.with_label_values(&[c, "plain_out"]).inc_by(st.plain_out);
        m.with_label_values(&[c, "spliced_out"])
            .inc_by(st.spliced_out);
        m.with_label_values(&[c, "spliced_in"])
            .inc_by(st.spliced_in);
        let (outcome, cut) = match r {
            Ok(o) => (o, None),
            Err(cut) => {
                if let Some(reason) = cut.bad_input_reason() {
                    self.metrics.errors.with_label_values(&[reason]).inc();
                }
                crate::forward::reset_both(self.plain, self.leg);
                (Outcome::Reset, Some(cut))
            }
        };
        if matches!(outcome, Outcome::Idle | Outcome::HalfCloseTimeout) {
            crate::forward::reset_both(self.plain, self.leg);
        }
        self.metrics
            .flows
            .with_label_values(&[c, outcome.as_str()])
            .inc();
        let report = FlowReport {
            a_to_b: st.plain_in,
            b_to_a: st.plain_out,
            outcome,
            first_b_to_a: None,
        };
        (report, cut)
    }

    async fn drive(&mut self, st: &mut State, t: FlowTimeouts) -> Result<Outcome, Cut> {
        let mut rbuf = vec![0u8; READ_BYTES.max(MAX_FRAME + HEADER_LEN)];
        let mut last = Instant::now();
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            st.plain_in += early.len() as u64;
            let state = self.snapshot(st);
            self.encode(st, &early, true, &state)?;
        }
        let mut half_close_at: Option<Instant> = None;
        loop {
            self.pump_frames(st)?;
            if self.pipes.is_some() && st.rx_left == 0 {
                self.take_plain_head(st)?;
            }
            if st.end_received && !st.dec_finished && !self.dec.waiting() && !self.dec.has_pending()
            {
                self.dec.finish()?;
                st.dec_finished = true;
            }
            if st.dec_finished
                && !st.plain_shut
                && st.to_plain.pending() == 0
                && st.rx_in_pipe == 0
                && st.rx_left == 0
            {
                sockopt::shutdown_write(self.plain)?;
                st.plain_shut = true;
            }
            if st.end_sent
                && st.plain_shut
                && !st.leg_fin
                && st.to_leg.pending() == 0
                && !st.tx_busy()
                && self.enc.idle()
            {
                sockopt::shutdown_write(self.leg)?;
                st.leg_fin = true;
            }
            if st.leg_fin && st.leg_eof {
                return Ok(Outcome::Closed);
            }
            if half_close_at.is_none() && (st.end_sent || st.end_received) {
                half_close_at = Some(Instant::now() + t.half_close);
            }
            let idle_at = last + t.idle;
            let deadline = half_close_at.map_or(idle_at, |h| h.min(idle_at));
            // A chain passing bytes through waits for the leg to take all
            // (the next read may then go spliced, which needs `to_leg` empty).
            let leg_room = if self.splices_out() {
                st.to_leg.pending() == 0
            } else {
                st.to_leg.pending() < LEG_QUEUE
            };
            let want_plain_read = !st.plain_eof && !st.tx_busy() && leg_room;
            let want_leg_read = !st.leg_eof
                && st.to_plain.pending() < PLAIN_QUEUE
                && st.fdec.buffered() < FRAME_QUEUE
                && !self.dec.has_pending()
                && st.rx_in_pipe == 0;
            let want_leg_write = st.to_leg.pending() > 0 || st.tx_busy();
            let want_plain_write = st.to_plain.pending() > 0 || st.rx_in_pipe > 0;
            let flush_at = st.flush_at.filter(|_| st.unflushed);
            tokio::select! {
                _ = sleep_until(flush_at.unwrap_or(deadline)), if flush_at.is_some() => {
                    self.flush_or_hold(st)?;
                }
                r = self.plain.readable(), if want_plain_read => {
                    r?;
                    self.plain_ready(st, &mut rbuf, false)?;
                    last = Instant::now();
                }
                _ = sleep_until(st.read_at.unwrap_or(deadline)), if want_plain_read && st.read_at.is_some() => {
                    // A timed read that finds nothing is no activity.
                    if self.plain_ready(st, &mut rbuf, true)? > 0 {
                        last = Instant::now();
                    }
                }
                r = self.leg.readable(), if want_leg_read => {
                    r?;
                    if self.pipes.is_some() {
                        self.read_leg_exact(st, &mut rbuf)?;
                    } else {
                        match self.leg.try_read(&mut rbuf[..READ_BYTES]) {
                            Ok(0) => self.leg_ended(st)?,
                            Ok(n) => st.fdec.push(&rbuf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    last = Instant::now();
                }
                r = self.leg.writable(), if want_leg_write => {
                    r?;
                    if st.tx_busy() {
                        self.send_record(st)?;
                    } else {
                        match self.leg.try_write(st.to_leg.bytes()) {
                            Ok(n) => st.to_leg.advance(n),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    last = Instant::now();
                }
                r = self.plain.writable(), if want_plain_write && st.to_plain.pending() == 0 => {
                    r?;
                    self.drain_record(st)?;
                    last = Instant::now();
                }
                r = self.plain.writable(), if want_plain_write && st.to_plain.pending() > 0 => {
                    r?;
                    match self.plain.try_write(st.to_plain.bytes()) {
                        Ok(n) => {
                            st.to_plain.advance(n);
                            st.plain_out += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e.into()),
                    }
                    last = Instant::now();
                }
                _ = sleep_until(deadline) => {
                    if half_close_at.is_some_and(|h| Instant::now() >= h) {
                        return Ok(Outcome::HalfCloseTimeout);
                    }
                    if Instant::now() >= last + t.idle {
                        return Ok(Outcome::Idle);
                    }
                }
            }
        }
    }

    /// The plain socket is readable (`by_timer`: may be, [`RECORD_WAIT`]
    /// after it was emptied with the low-water mark raised): its bytes go
    /// spliced while the chain passes them through, else through the chain.
    /// Returns the bytes read.
    fn plain_ready(
        &mut self,
        st: &mut State,
        rbuf: &mut [u8],
        by_timer: bool,
    ) -> Result<usize, Cut> {
        st.read_at = None;
        let before = st.plain_in;
        if self.splices_out() && st.to_leg.pending() == 0 {
            self.lift_lowat(st, self.enc.always_passes());
            self.splice_plain(st)?;
        } else {
            self.lift_lowat(st, false);
            self.read_plain(st, rbuf)?;
        }
        let found = (st.plain_in - before) as usize;
        self.gather(st, found, by_timer);
        Ok(found)
    }

    /// Raises or lowers the plain socket's low-water mark after a splice
    /// wake ([`gather`]), and while it is raised, sets when to read anyway.
    fn gather(&mut self, st: &mut State, found: usize, by_timer: bool) {
        st.src_run += found as u64;
        match gather(st.src_lowat, st.src_run, found, by_timer) {
            Gather::Raise => self.set_src_lowat(st, true),
            Gather::Lower => self.set_src_lowat(st, false),
            Gather::Keep => {}
        }
        if st.src_lowat && !st.plain_eof {
            st.read_at = Some(Instant::now() + RECORD_WAIT);
        }
    }

    /// Sets the plain socket's `SO_RCVLOWAT` to [`RECORD_LOWAT`] or one byte
    /// (lowering it wakes the engine if bytes wait: the kernel checks).
    fn set_src_lowat(&mut self, st: &mut State, raise: bool) {
        if st.src_lowat == raise {
            return;
        }
        let bytes = if raise { RECORD_LOWAT as i32 } else { 1 };
        if sockopt::set_rcvlowat(self.plain, bytes).is_ok() {
            st.src_lowat = raise;
        }
        if !raise {
            st.src_run = 0;
            st.read_at = None;
        }
    }

    /// Reads what the plain socket has (up to the budget) and encodes it.
    fn read_plain(&mut self, st: &mut State, buf: &mut [u8]) -> Result<(), Cut> {
        let state = self.snapshot(st);
        let mut total = 0;
        loop {
            match self.plain.try_read(buf) {
                Ok(0) => return self.plain_ended(st, &state),
                Ok(n) => {
                    st.read_in(n);
                    self.encode(st, &buf[..n], false, &state)?;
                    st.unflushed = true;
                    total += n;
                    if total >= READ_BUDGET {
                        // More is likely there: the next wake-up reads it
                        // (and flushes once the socket is empty).
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.plain_drained(st),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The plain socket has nothing more for now: the unflushed tail is
    /// flushed or held.
    fn plain_drained(&mut self, st: &mut State) -> Result<(), Cut> {
        if st.unflushed {
            self.flush_or_hold(st)?;
        }
        Ok(())
    }

    /// The plain socket's EOF: flush every stage, then END.
    fn plain_ended(&mut self, st: &mut State, state: &LegSnapshot) -> Result<(), Cut> {
        st.plain_eof = true;
        self.encode(st, &[], true, state)?;
        st.unflushed = false;
        st.flush_at = None;
        st.burst = 0;
        Frame::End {
            stream: LEG_STREAM,
            total: st.wire_out,
        }
        .encode(&mut st.to_leg.buf);
        st.end_sent = true;
        Ok(())
    }

    /// Lifts the leg's `TCP_NOTSENT_LOWAT` while a chain that never
    /// transforms (`null`) splices plain records (a short unsent queue only
    /// costs wake-ups and small writes there: measured,
    /// docs/performance.md). A chain that may transform keeps it even while
    /// it sends raw: lifted, megabytes of raw records queued on a slow leg
    /// before the controller climbed (slow-long corpus 0.46 → 0.74 × bound).
    fn lift_lowat(&self, st: &mut State, lift: bool) {
        if st.lowat_lifted != lift {
            let bytes = if lift { u32::MAX } else { self.notsent_lowat };
            let _ = sockopt::set_notsent_lowat(self.leg, bytes);
            st.lowat_lifted = lift;
        }
    }

    /// The next plain bytes may go as a spliced plain record.
    fn splices_out(&self) -> bool {
        self.pipes.is_some() && self.enc.passes_through()
    }

    /// Moves what the plain socket has (up to the budget) to the leg as
    /// plain records, one pipe-full each, while the chain passes bytes
    /// through and the leg takes them. `to_leg` is empty.
    fn splice_plain(&mut self, st: &mut State) -> Result<(), Cut> {
        let state = self.snapshot(st);
        let mut total = 0;
        loop {
            match fill_pipe(self.plain, &mut st.tx_pipe, self.pipes, MAX_PAYLOAD)? {
                Ok(0) => return self.plain_ended(st, &state),
                Ok(n) => {
                    st.read_in(n);
                    self.enc.passed(n, &state);
                    st.wire_out += n as u64;
                    st.spliced_out += n as u64;
                    st.tx_head.clear();
                    frame::encode_data_head(&mut st.tx_head, LEG_STREAM, mframes::DATA_PLAIN, n);
                    st.tx_sent = 0;
                    st.tx_left = n;
                    self.send_record(st)?;
                    total += n;
                    if st.tx_busy() || total >= READ_BUDGET || !self.enc.passes_through() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.plain_drained(st),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends what is left of the plain record: its header (held back with
    /// `MSG_MORE` so it leaves with the payload), then the pipe's bytes.
    fn send_record(&mut self, st: &mut State) -> Result<(), Cut> {
        let fd = self.leg.as_raw_fd();
        while st.tx_sent < st.tx_head.len() {
            let rest = &st.tx_head[st.tx_sent..];
            match self
                .leg
                .try_io(Interest::WRITABLE, || sys::send_more(fd, rest))
            {
                Ok(n) => st.tx_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if !drain_pipe(self.leg, st.tx_pipe.as_ref(), &mut st.tx_left)? {
            return Ok(());
        }
        Loan::new(&mut st.tx_pipe, self.pipes).end_burst();
        Ok(())
    }

    /// The leg's EOF: fine after END (frames still buffered may hold it).
    fn leg_ended(&mut self, st: &mut State) -> Result<(), Cut> {
        st.leg_eof = true;
        if !st.end_received {
            self.pump_frames(st)?;
            if !st.end_received {
                return Err(Cut::NoEnd);
            }
        }
        Ok(())
    }

    /// Reads the leg exactly up to each frame header's end, splicing large
    /// plain records' payloads on, until the socket is empty, a frame waits
    /// for the decoders, the plain socket is full, or the budget is spent;
    /// after a small plain record, one bulk read ([`leg_read_len`]) whose
    /// frames the decoders then take.
    fn read_leg_exact(&mut self, st: &mut State, rbuf: &mut [u8]) -> Result<(), Cut> {
        let mut moved = 0;
        while moved < READ_BUDGET {
            if st.rx_left > 0 {
                if st.rx_in_pipe > 0 {
                    return Ok(());
                }
                let before = st.rx_left;
                self.splice_leg(st)?;
                let n = before - st.rx_left;
                if n == 0 || st.rx_in_pipe > 0 {
                    return Ok(());
                }
                moved += n;
                continue;
            }
            let bulk = st.rx_small;
            let len = leg_read_len(st.fdec.next_read(), bulk, READ_BYTES.min(rbuf.len()));
            if len == 0 {
                return Ok(());
            }
            match self.leg.try_read(&mut rbuf[..len]) {
                Ok(0) => return self.leg_ended(st),
                Ok(n) => {
                    st.fdec.push(&rbuf[..n]);
                    moved += n;
                    if bulk {
                        // Frames to decode: the drive loop takes them first.
                        return Ok(());
                    }
                    self.take_plain_head(st)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// After an exact read: if the decoder holds just a plain record's
    /// header and the record is large ([`SPLICE_MIN`]), its payload is taken
    /// past the decoders (spliced); a small one is left to them (copied).
    fn take_plain_head(&mut self, st: &mut State) -> Result<(), Cut> {
        if self.dec.has_pending() {
            // Decoded bytes still to come go first.
            return Ok(());
        }
        let Some(h) = st.fdec.bare_head()? else {
            return Ok(());
        };
        if h.kind != frame::kind::DATA || h.flags & mframes::DATA_PLAIN == 0 || h.len == 0 {
            return Ok(());
        }
        st.rx_small = h.len < SPLICE_MIN;
        if st.rx_small {
            return Ok(());
        }
        if h.stream != LEG_STREAM {
            return Err(Cut::Protocol("stream_unknown"));
        }
        if st.end_received {
            return Err(Cut::Protocol("data_after_end"));
        }
        st.fdec.skip_head();
        st.wire_in += h.len as u64;
        st.rx_left = h.len;
        Ok(())
    }

    /// Moves a plain record's payload leg → pipe (the pipe is empty), then
    /// on to the plain socket if its queue is empty.
    fn splice_leg(&mut self, st: &mut State) -> Result<(), Cut> {
        match fill_pipe(self.leg, &mut st.rx_pipe, self.pipes, st.rx_left)? {
            Ok(0) => {
                // The leg ended inside a frame: truncated.
                st.leg_eof = true;
                Err(Cut::NoEnd)
            }
            Ok(n) => {
                st.rx_left -= n;
                st.rx_in_pipe += n;
                st.spliced_in += n as u64;
                if st.to_plain.pending() == 0 {
                    self.drain_record(st)?;
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the received plain record's bytes in the pipe to the plain
    /// socket (everything queued before them is written).
    fn drain_record(&mut self, st: &mut State) -> Result<(), Cut> {
        let before = st.rx_in_pipe;
        let drained = drain_pipe(self.plain, st.rx_pipe.as_ref(), &mut st.rx_in_pipe);
        st.plain_out += (before - st.rx_in_pipe) as u64;
        if !drained? {
            return Ok(());
        }
        Loan::new(&mut st.rx_pipe, self.pipes).end_burst();
        Ok(())
    }

    /// Flushes the unflushed tail now, or holds it a while ([`hold`]).
    fn flush_or_hold(&mut self, st: &mut State) -> Result<(), Cut> {
        let now = Instant::now();
        let (notsent, rate) = sockopt::tcp_info(self.leg).map_or((0, 0), |i| {
            (u64::from(i.notsent_bytes), i.delivery_rate_bps / 8)
        });
        let leg = hold_for(st.to_leg.pending() as u64, notsent, rate);
        let source_rtt = sockopt::tcp_info(self.plain).map_or(Duration::ZERO, |i| {
            Duration::from_micros(u64::from(i.rtt_us))
        });
        match tail(leg, st.burst, source_rtt, now.duration_since(st.last_read)) {
            Tail::Hold(w) => st.flush_at = Some(now + w),
            Tail::Soft(w) => {
                if !st.soft_done {
                    let state = self.snapshot(st);
                    self.encode_with(st, &[], Flush::Soft, &state)?;
                    st.soft_done = true;
                }
                st.flush_at = Some(now + w);
            }
            Tail::Flush => {
                let state = self.snapshot(st);
                self.encode(st, &[], true, &state)?;
                st.unflushed = false;
                st.flush_at = None;
                st.burst = 0;
            }
        }
        Ok(())
    }

    fn encode(
        &mut self,
        st: &mut State,
        input: &[u8],
        flush: bool,
        state: &LegSnapshot,
    ) -> Result<(), Cut> {
        let f = if flush { Flush::Hard } else { Flush::No };
        self.encode_with(st, input, f, state)
    }

    fn encode_with(
        &mut self,
        st: &mut State,
        input: &[u8],
        flush: Flush,
        state: &LegSnapshot,
    ) -> Result<(), Cut> {
        st.out.clear();
        let t0 = std::time::Instant::now();
        let r = self.enc.encode_with(input, flush, state, &mut st.out);
        st.busy.encoded(t0, std::time::Instant::now());
        r?;
        st.wire_out += st.out.data.len() as u64;
        mframes::put_data(&mut st.to_leg.buf, &st.out.data);
        mframes::put_controls(&mut st.to_leg.buf, &st.out.control, false);
        Ok(())
    }

    /// Both legs' TCP_INFO and our queue, for the encoders; empty for a
    /// chain that always passes its bytes unchanged (`null`: it decides
    /// nothing from it, and the two `getsockopt` per burst were 6 K
    /// syscalls per GB of its spliced path, docs/performance.md).
    fn snapshot(&self, st: &State) -> LegSnapshot {
        if self.enc.always_passes() {
            return LegSnapshot::default();
        }
        let info = |s: &TcpStream| {
            sockopt::tcp_info(s).map_or(TcpSnapshot::default(), |i| TcpSnapshot {
                rtt_us: i.rtt_us,
                cwnd_bytes: u64::from(i.snd_cwnd) * u64::from(i.snd_mss),
                delivery_rate: i.delivery_rate_bps / 8,
                notsent_bytes: u64::from(i.notsent_bytes),
                unacked_bytes: u64::from(i.unacked) * u64::from(i.snd_mss),
                retransmits: i.retrans_total,
            })
        };
        LegSnapshot {
            source: info(self.plain),
            sink: info(self.leg),
            queued_bytes: st.to_leg.pending() as u64,
            pending_bytes: 0,
            encoder_busy_permille: st.busy.permille(),
            encoder_busy_window: st.busy.windows(),
        }
    }

    /// Decodes buffered frames while the plain socket's queue has room.
    fn pump_frames(&mut self, st: &mut State) -> Result<(), Cut> {
        loop {
            if st.to_plain.pending() >= PLAIN_QUEUE {
                return Ok(());
            }
            if self.dec.has_pending() {
                decode_to_plain(&mut st.out, &mut st.to_plain, &mut st.to_leg, |out| {
                    self.dec.drain(out)
                })?;
                continue;
            }
            let frame = match st.fdec.next_frame()? {
                Some(f) => f,
                None => return Ok(()),
            };
            st.out.clear();
            match frame {
                Frame::Data {
                    stream,
                    flags,
                    payload,
                } => {
                    if stream != LEG_STREAM {
                        return Err(Cut::Protocol("stream_unknown"));
                    }
                    if st.end_received {
                        return Err(Cut::Protocol("data_after_end"));
                    }
                    st.wire_in += payload.len() as u64;
                    if flags & mframes::DATA_PLAIN != 0 {
                        // A small plain record, or one read with other
                        // frames: copied.
                        st.rx_small = payload.len() < SPLICE_MIN;
                        st.to_plain.buf.extend_from_slice(payload);
                        continue;
                    }
                    decode_to_plain(&mut st.out, &mut st.to_plain, &mut st.to_leg, |out| {
                        self.dec.decode(payload, out)
                    })?;
                }
                Frame::Module { flags, payload, .. } => match mframes::target(flags) {
                    ModuleTarget::Chain => return Err(Cut::Protocol("module_chain_again")),
                    ModuleTarget::Decoder(stage) => {
                        self.dec.control(stage, payload, &mut st.out)?;
                        st.to_plain.buf.extend_from_slice(&st.out.data);
                        mframes::put_controls(&mut st.to_leg.buf, &st.out.control, true);
                    }
                    ModuleTarget::Encoder(stage) => {
                        self.enc.control(stage, payload, &mut st.out)?;
                        mframes::put_controls(&mut st.to_leg.buf, &st.out.control, false);
                    }
                },
                Frame::End { stream, total } => {
                    if stream != LEG_STREAM || st.end_received {
                        return Err(Cut::Protocol("end_unexpected"));
                    }
                    if total != st.wire_in {
                        return Err(Cut::EndMismatch {
                            said: total,
                            got: st.wire_in,
                        });
                    }
                    // The chain is finished once nothing waits (drive()).
                    st.end_received = true;
                }
                Frame::Abort { .. } => return Err(Cut::Aborted),
                Frame::Ping(x) => {
                    Frame::Pong(x).encode(&mut st.to_leg.buf);
                }
                Frame::Window { .. } | Frame::Pong(_) => {}
                Frame::Open { .. } | Frame::Settings(_) => {
                    return Err(Cut::Protocol("frame_unexpected"));
                }
            }
        }
    }
}

/// Splices at most `max` bytes (and at most a pipe-full) from `sock` into
/// the pipe lent into `slot`; the pipe goes back to the stock when nothing
/// went in (it is empty). The outer error: no pipe could be had.
fn fill_pipe(
    sock: &TcpStream,
    slot: &mut Option<Pipe>,
    pipes: Option<&Resources>,
    max: usize,
) -> Result<io::Result<usize>, Cut> {
    let mut loan = Loan::new(slot, pipes);
    let pipe = loan.get()?;
    let len = max.min(pipe.capacity());
    let fd = sock.as_raw_fd();
    let r = sock.try_io(Interest::READABLE, || pipe.fill_from(fd, len));
    if !matches!(r, Ok(n) if n > 0) {
        loan.end_burst();
    }
    Ok(r)
}

/// Splices `left` bytes of a plain record from `pipe` to `sock` while the
/// socket takes them: `true` once all went, `false` when the socket is full
/// (`left` counts what is still in the pipe).
fn drain_pipe(sock: &TcpStream, pipe: Option<&Pipe>, left: &mut usize) -> Result<bool, Cut> {
    let fd = sock.as_raw_fd();
    while *left > 0 {
        let pipe = pipe.ok_or_else(|| io::Error::other("plain record without its pipe"))?;
        let n = *left;
        match sock.try_io(Interest::WRITABLE, || pipe.drain_to(fd, n)) {
            Ok(0) => return Err(io::Error::other("pipe emptied early").into()),
            Ok(n) => *left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Runs a decoder step whose output goes straight to the end of the plain
/// socket's queue (no copy through `st.out`); its control messages go to
/// the leg.
fn decode_to_plain(
    out: &mut Output,
    to_plain: &mut Queue,
    to_leg: &mut Queue,
    step: impl FnOnce(&mut Output) -> Result<(), ModuleError>,
) -> Result<(), Cut> {
    out.clear();
    std::mem::swap(&mut out.data, &mut to_plain.buf);
    let r = step(out);
    std::mem::swap(&mut out.data, &mut to_plain.buf);
    r?;
    mframes::put_controls(&mut to_leg.buf, &out.control, true);
    Ok(())
}

/// How long a far relay may take to send a module leg's chain frame.
pub const CHAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streaming_source_is_gathered_and_let_go_when_a_timed_read_finds_nothing() {
        // the first bytes of a flow: one-byte mark
        assert_eq!(gather(false, 1_448, 1_448, false), Gather::Keep);
        // a bulk run: raised
        assert_eq!(gather(false, BULK_BURST, 1_448, false), Gather::Raise);
        // raised: a wake with bytes, or a timed read with bytes, keeps it
        assert_eq!(gather(true, 1 << 20, RECORD_LOWAT, false), Gather::Keep);
        assert_eq!(gather(true, 1 << 20, 3_000, true), Gather::Keep);
        // a timed read that finds nothing: the source paused, lowered
        assert_eq!(gather(true, 1 << 20, 0, true), Gather::Lower);
        // a readiness wake that finds nothing is no pause
        assert_eq!(gather(true, 1 << 20, 0, false), Gather::Keep);
        // lowered and idle: stays
        assert_eq!(gather(false, 0, 0, true), Gather::Keep);
    }

    #[test]
    fn the_leg_is_read_to_the_next_header_except_in_bulk_after_a_small_record() {
        // a complete frame waits: nothing read, bulk or not
        assert_eq!(leg_read_len(0, false, READ_BYTES), 0);
        assert_eq!(leg_read_len(0, true, READ_BYTES), 0);
        // exact: the rest of the frame and the next header, within the cap
        assert_eq!(leg_read_len(8, false, READ_BYTES), 8);
        assert_eq!(leg_read_len(1_000 + 8, false, READ_BYTES), 1_008);
        assert_eq!(leg_read_len(70_000, false, READ_BYTES), READ_BYTES);
        // after a small record: a full read, past headers
        assert_eq!(leg_read_len(8, true, READ_BYTES), READ_BYTES);
        assert_eq!(leg_read_len(1_008, true, 4096), 4096);
    }

    #[test]
    fn an_idle_leg_flushes_at_once_a_busy_one_holds_for_its_drain_time() {
        assert_eq!(hold_for(0, 0, 1_000_000), None);
        // 10 kB ahead at 1 MB/s: 10 ms
        assert_eq!(
            hold_for(4_000, 6_000, 1_000_000),
            Some(Duration::from_millis(10))
        );
        // bounded both ways; no rate known yet: one step
        assert_eq!(
            hold_for(1, 0, 1_000_000_000),
            Some(Duration::from_millis(1))
        );
        assert_eq!(hold_for(0, 10 << 20, 1_000), Some(HOLD_STEP));
        assert_eq!(hold_for(0, 1, 0), Some(HOLD_STEP));
    }

    #[test]
    fn a_streaming_source_soft_flushes_for_one_rtt_a_short_burst_flushes() {
        let ms = Duration::from_millis;
        // a busy leg holds
        assert_eq!(tail(Some(ms(7)), 0, ms(5), ms(0)), Tail::Hold(ms(7)));
        // idle leg, short burst: flush
        assert_eq!(tail(None, 1000, ms(5), ms(0)), Tail::Flush);
        // idle leg, bulk burst: soft for the rest of two source RTTs
        assert_eq!(tail(None, BULK_BURST, ms(5), ms(2)), Tail::Soft(ms(8)));
        assert_eq!(tail(None, BULK_BURST, ms(5), ms(10)), Tail::Flush);
        // RTT unknown or huge: 1 ms to HOLD_STEP
        assert_eq!(tail(None, BULK_BURST, ms(0), ms(0)), Tail::Soft(ms(1)));
        assert_eq!(
            tail(None, BULK_BURST, ms(500), ms(0)),
            Tail::Soft(HOLD_STEP)
        );
        // never longer than HOLD_MAX after the last byte read
        assert_eq!(tail(Some(ms(7)), 0, ms(5), HOLD_MAX), Tail::Flush);
    }
}
