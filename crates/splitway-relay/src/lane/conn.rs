//! One lane on its socket: the task that reads and writes the lane and
//! drives its [`Lane`] state machine, and the handles flows use to reach
//! their stream.
//!
//! The state machine sits behind a mutex shared by the lane task and the
//! flows' tasks. Flows queue bytes and wake the lane task; the lane task
//! frames what the scheduler picks whenever the socket takes more (with
//! `TCP_NOTSENT_LOWAT` the kernel holds little unsent, so the order is
//! decided here) and hands received bytes to each stream's flow over an
//! unbounded channel (bounded in fact by the stream's window: the peer may
//! send only the credit the flow returned by writing).
//!
//! When the lane ends, for whatever reason, every flow on it is reset.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use splitway_core::frame::{AbortCode, Open};
use splitway_core::mux::{Event, Lane, OpenError, Role};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};

use super::metrics::LaneMetrics;
use super::pace::{PaceGroup, PACE_EVERY};
use crate::sys::sockopt;

/// Bytes framed per write: with `TCP_NOTSENT_LOWAT` at [`NOTSENT_LOWAT`]
/// the kernel holds at most about that much unsent, and we hold one batch.
pub const WRITE_BATCH: usize = 32 * 1024;
/// `TCP_NOTSENT_LOWAT` on lanes.
pub const NOTSENT_LOWAT: u32 = 32 * 1024;
/// Bytes a flow may queue on its stream before it stops reading its socket.
pub const SEND_BUFFER: usize = 64 * 1024;
/// A PING this often; no PONG for three intervals ends the lane.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// What the lane hands a stream's flow.
#[derive(Debug)]
pub enum Delivery {
    Data(Vec<u8>),
    /// The peer's clean end: shut down the flow's write side.
    End,
    /// The stream or its lane is gone: reset the flow.
    Reset,
}

struct Slot {
    tx: mpsc::UnboundedSender<Delivery>,
    room: Arc<Notify>,
}

struct Inner {
    lane: Lane,
    slots: HashMap<u32, Slot>,
    /// Last `queued_total` reported to the scheduler gauge.
    reported_queue: i64,
}

/// A lane shared by its task and its streams.
pub struct LaneConn {
    inner: Mutex<Inner>,
    wake: Notify,
    dead: AtomicBool,
    ready: AtomicBool,
    ready_w: watch::Sender<bool>,
    /// The last PING answered (PINGs carry 1, 2, 3...).
    pong_seq: AtomicU64,
    role_label: &'static str,
    m: LaneMetrics,
    /// The peer's pacing group, when its lanes are paced together.
    pace: OnceLock<Arc<PaceGroup>>,
    /// The pacing rate set now, bytes/s (0: not paced).
    paced_at: AtomicU64,
}

/// Called on each stream the peer opens (acceptor).
pub type OnOpen = Arc<dyn Fn(StreamHandle, std::net::SocketAddr, u8) + Send + Sync>;

impl LaneConn {
    pub fn new(lane: Lane, m: LaneMetrics) -> Arc<LaneConn> {
        let role_label = match lane.role() {
            Role::Initiator => "initiator",
            Role::Acceptor => "acceptor",
        };
        Arc::new(LaneConn {
            inner: Mutex::new(Inner {
                lane,
                slots: HashMap::new(),
                reported_queue: 0,
            }),
            wake: Notify::new(),
            dead: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            ready_w: watch::Sender::new(false),
            pong_seq: AtomicU64::new(0),
            role_label,
            m,
            pace: OnceLock::new(),
            paced_at: AtomicU64::new(0),
        })
    }

    /// Pace this lane as one of `g`'s (before [`LaneConn::run`]).
    pub fn pace_with(self: &Arc<Self>, g: Arc<PaceGroup>) {
        g.join(self);
        let _ = self.pace.set(g);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.dead.load(Ordering::Acquire)
    }

    /// Wait until the peer's SETTINGS arrived.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready_w.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Streams open on this lane.
    pub fn streams(&self) -> usize {
        self.lock().lane.streams()
    }

    /// Bytes queued in this lane's scheduler, not yet framed.
    pub fn queued(&self) -> usize {
        self.lock().lane.queued_total()
    }

    /// The pacing rate set now, bytes/s (0: not paced).
    pub fn pacing_rate(&self) -> u64 {
        self.paced_at.load(Ordering::Relaxed)
    }

    /// (Initiator) open a stream; `None` when the lane is not ready or full.
    pub fn open(self: &Arc<Self>, open: Open<'_>) -> Result<StreamHandle, OpenError> {
        if self.dead.load(Ordering::Acquire) {
            return Err(OpenError::Broken);
        }
        let mut g = self.lock();
        let id = g.lane.open(open)?;
        let h = self.attach(&mut g, id);
        drop(g);
        self.wake.notify_one();
        Ok(h)
    }

    fn attach(self: &Arc<Self>, g: &mut Inner, id: u32) -> StreamHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Notify::new());
        g.slots.insert(
            id,
            Slot {
                tx,
                room: room.clone(),
            },
        );
        self.m
            .streams_opened
            .with_label_values(&[self.role_label])
            .inc();
        self.m.streams.with_label_values(&[self.role_label]).inc();
        StreamHandle {
            conn: self.clone(),
            id,
            rx: Some(rx),
            room,
            finished: AtomicBool::new(false),
            got_end: AtomicBool::new(false),
            reset_by_us: AtomicBool::new(false),
            bytes: AtomicU64::new(0),
        }
    }

    /// Drive the lane on `sock` until it ends, then reset every stream.
    /// Returns why it ended (a metric label) and whether it was ever ready.
    pub async fn run(
        self: Arc<Self>,
        sock: TcpStream,
        on_open: Option<OnOpen>,
        mut stop: watch::Receiver<bool>,
    ) -> (&'static str, bool) {
        self.m.lanes.with_label_values(&[self.role_label]).inc();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(WRITE_BATCH * 2);
        let mut off = 0usize;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut pings = 0u64;
        let mut draining = false;
        let mut pace_tick = tokio::time::interval(PACE_EVERY);
        pace_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paced_at = 0u64;
        let mut paced_streams = usize::MAX;
        let reason: &'static str = loop {
            if draining && off == out.len() && self.lock().lane.streams() == 0 {
                break "stopped";
            }
            if self.pace.get().is_some() {
                // A stream opened or closed here: new shares at once, not
                // at the next tick (a burst's first bytes must not wait
                // at an idle lane's rate).
                let n = self.streams();
                if n != paced_streams {
                    paced_streams = n;
                    self.repace(&sock, &mut paced_at);
                }
            }
            if off == out.len() {
                out.clear();
                off = 0;
                let mut g = self.lock();
                if g.lane.wants_to_send() {
                    g.lane.poll_transmit(&mut out, WRITE_BATCH);
                    self.dispatch(&mut g, on_open.as_ref());
                }
                self.report_queue(&mut g);
            }
            tokio::select! {
                r = sock.readable() => {
                    if r.is_err() {
                        break "io_error";
                    }
                    match sock.try_read(&mut buf) {
                        Ok(0) => break "eof",
                        Ok(n) => {
                            let mut g = self.lock();
                            if let Err(e) = g.lane.recv(&buf[..n]) {
                                self.m.frame_errors.with_label_values(&[e.reason()]).inc();
                                tracing::warn!(reason = e.reason(), error = %e, "lane reset: bad frames");
                                break e.reason();
                            }
                            self.dispatch(&mut g, on_open.as_ref());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                        Err(_) => break "io_error",
                    }
                }
                r = sock.writable(), if off < out.len() => {
                    if r.is_err() {
                        break "io_error";
                    }
                    match sock.try_write(&out[off..]) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
                        Err(_) => break "io_error",
                    }
                }
                _ = self.wake.notified() => {}
                _ = pace_tick.tick(), if self.pace.get().is_some() => {
                    self.repace(&sock, &mut paced_at);
                }
                _ = ping.tick() => {
                    // Three PINGs unanswered: the peer or the path is gone.
                    if pings.saturating_sub(self.pong_seq.load(Ordering::Relaxed)) >= 3 {
                        break "ping_timeout";
                    }
                    pings += 1;
                    self.lock().lane.ping(pings);
                }
                // Stopping: no new streams (the listeners are closed),
                // the open ones finish (within the daemon's grace).
                _ = stop.wait_for(|s| *s), if !draining => {
                    draining = true;
                    self.ready.store(false, Ordering::Release);
                }
            }
        };
        let was_ready = self.ready.load(Ordering::Acquire);
        self.m
            .pacing
            .with_label_values(&[self.role_label])
            .sub(paced_at as i64);
        self.close(reason);
        // A lane ends with a RST: the peer resets its flows too.
        let _ = sockopt::set_linger_zero(&sock);
        drop(sock);
        self.m.lanes.with_label_values(&[self.role_label]).dec();
        (reason, was_ready)
    }

    /// Set this lane's pacing rate to its share now (if it changed by
    /// more than 1/32: not worth a syscall otherwise).
    fn repace(&self, sock: &TcpStream, paced_at: &mut u64) {
        let Some(g) = self.pace.get() else {
            return;
        };
        let r = g.rate_for(self);
        if r.abs_diff(*paced_at) <= *paced_at / 32 {
            return;
        }
        let v = u32::try_from(r).unwrap_or(u32::MAX - 1);
        if sockopt::set_max_pacing_rate(sock, v).is_ok() {
            self.m
                .pacing
                .with_label_values(&[self.role_label])
                .add(r as i64 - *paced_at as i64);
            *paced_at = r;
            self.paced_at.store(r, Ordering::Relaxed);
        }
    }

    /// Mark the lane dead and reset every flow on it.
    fn close(&self, reason: &'static str) {
        self.dead.store(true, Ordering::Release);
        let mut g = self.lock();
        let ids = g.lane.close_all();
        let slots: Vec<Slot> = g.slots.drain().map(|(_, s)| s).collect();
        self.report_queue(&mut g);
        drop(g);
        if self.ready.load(Ordering::Acquire) {
            self.m
                .lost
                .with_label_values(&[self.role_label, reason])
                .inc();
        }
        if !ids.is_empty() {
            tracing::info!(
                streams = ids.len(),
                reason,
                "lane ended: its flows are reset"
            );
        }
        for s in slots {
            let _ = s.tx.send(Delivery::Reset);
            s.room.notify_one();
        }
    }

    fn report_queue(&self, g: &mut Inner) {
        let q = g.lane.queued_total() as i64;
        let delta = q - g.reported_queue;
        if delta != 0 {
            self.m.sched_queued_bytes.add(delta);
            g.reported_queue = q;
        }
    }

    /// Act on the state machine's events (under its lock).
    fn dispatch(self: &Arc<Self>, g: &mut Inner, on_open: Option<&OnOpen>) {
        while let Some(e) = g.lane.poll_event() {
            match e {
                Event::Ready(_) => {
                    self.ready.store(true, Ordering::Release);
                    self.ready_w.send_replace(true);
                }
                Event::Opened {
                    stream,
                    dst,
                    hop_limit,
                    ..
                } => match on_open {
                    Some(f) => {
                        let h = self.attach(g, stream);
                        f(h, dst, hop_limit);
                    }
                    None => g.lane.reset(stream, AbortCode::Refused),
                },
                Event::Data { stream, bytes } => {
                    let sent = g
                        .slots
                        .get(&stream)
                        .is_some_and(|s| s.tx.send(Delivery::Data(bytes)).is_ok());
                    if !sent {
                        g.slots.remove(&stream);
                        g.lane.reset(stream, AbortCode::Reset);
                    }
                }
                Event::End { stream } => {
                    if let Some(s) = g.slots.get(&stream) {
                        let _ = s.tx.send(Delivery::End);
                    }
                }
                Event::Reset { stream, .. } => {
                    if let Some(s) = g.slots.remove(&stream) {
                        let _ = s.tx.send(Delivery::Reset);
                        s.room.notify_one();
                    }
                }
                Event::Sent { stream, .. } => {
                    if let Some(s) = g.slots.get(&stream) {
                        s.room.notify_one();
                    }
                }
                Event::Fault { fault, .. } => {
                    self.m
                        .stream_faults
                        .with_label_values(&[fault.reason()])
                        .inc();
                }
                Event::Pong(v) => {
                    self.pong_seq.fetch_max(v, Ordering::Relaxed);
                }
                Event::Module { .. } => {}
            }
        }
    }
}

/// A flow's end of one stream.
pub struct StreamHandle {
    conn: Arc<LaneConn>,
    id: u32,
    rx: Option<mpsc::UnboundedReceiver<Delivery>>,
    room: Arc<Notify>,
    finished: AtomicBool,
    got_end: AtomicBool,
    reset_by_us: AtomicBool,
    bytes: AtomicU64,
}

impl StreamHandle {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The receiving side; taken once by the flow's writer.
    pub fn take_rx(&mut self) -> Option<mpsc::UnboundedReceiver<Delivery>> {
        self.rx.take()
    }

    /// Queue bytes; `false` when the stream or lane is gone.
    pub fn send(&self, bytes: &[u8]) -> bool {
        let ok = self.conn.lock().lane.send(self.id, bytes);
        if ok {
            self.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.conn.wake.notify_one();
        }
        ok
    }

    /// Wait until the stream's queue has room for more and return how much
    /// ([`SEND_BUFFER`] less what is queued, more for an old stream under
    /// age weighting: `Lane::send_buffer`); `None` when the stream or lane
    /// is gone. One lock per wake-up.
    pub async fn room(&self) -> Option<usize> {
        loop {
            {
                let g = self.conn.lock();
                if self.conn.dead.load(Ordering::Acquire) || !g.slots.contains_key(&self.id) {
                    return None;
                }
                let room = g
                    .lane
                    .send_buffer(self.id, SEND_BUFFER)
                    .saturating_sub(g.lane.queued(self.id));
                if room > 0 {
                    return Some(room);
                }
            }
            self.room.notified().await;
        }
    }

    /// Our direction ended cleanly (the flow's socket sent FIN).
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        self.conn.lock().lane.finish(self.id);
        self.conn.wake.notify_one();
    }

    /// The peer's direction ended cleanly and was delivered.
    pub fn ended(&self) {
        self.got_end.store(true, Ordering::Release);
    }

    /// The flow wrote `n` received bytes to its socket.
    pub fn consumed(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.conn.lock().lane.consumed(self.id, n);
        self.conn.wake.notify_one();
    }

    /// Reset the stream (the flow failed or was reset).
    pub fn reset(&self, code: AbortCode) {
        if self.reset_by_us.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut g = self.conn.lock();
        g.slots.remove(&self.id);
        g.lane.reset(self.id, code);
        drop(g);
        self.conn.wake.notify_one();
        self.conn
            .m
            .streams_ended
            .with_label_values(&["reset"])
            .inc();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let m = &self.conn.m;
        m.streams.with_label_values(&[self.conn.role_label]).dec();
        m.stream_bytes
            .observe(self.bytes.load(Ordering::Relaxed) as f64);
        if self.reset_by_us.load(Ordering::Acquire) {
            return;
        }
        let clean = self.finished.load(Ordering::Acquire) && self.got_end.load(Ordering::Acquire);
        let mut g = self.conn.lock();
        let had_slot = g.slots.remove(&self.id).is_some();
        let outcome = if clean {
            "closed"
        } else if !had_slot {
            // The peer aborted it, or the lane ended.
            "reset_by_peer"
        } else {
            // Dropped mid-flow (a task ended early): never a clean end.
            g.lane.reset(self.id, AbortCode::Reset);
            "reset"
        };
        drop(g);
        self.conn.wake.notify_one();
        m.streams_ended.with_label_values(&[outcome]).inc();
    }
}
