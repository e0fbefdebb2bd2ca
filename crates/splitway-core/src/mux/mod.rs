//! Streams multiplexed on one lane (a v2 leg with the lane flag): the
//! sans-IO state machine of one end of a lane.
//!
//! The relay feeds it the bytes it reads from the lane ([`Lane::recv`]) and
//! what its flows do ([`Lane::open`], [`Lane::send`], [`Lane::finish`],
//! [`Lane::reset`], [`Lane::consumed`]); it takes back the bytes to write
//! ([`Lane::poll_transmit`]) and what happened ([`Lane::poll_event`]). No
//! sockets, no clock: every rule is tested with plain values.
//!
//! Rules (docs/wire.md, "Stream rules"):
//! - each side's first frame is SETTINGS; streams are used after the peer's;
//! - only the initiator opens streams, with increasing ids;
//! - credit per stream and direction: a receiver holds at most its
//!   `initial_window` per stream, so a slow reader stops only its stream;
//! - a bad frame for one stream resets that stream (ABORT) and is counted
//!   ([`Fault`]); broken framing or SETTINGS ends the lane ([`LaneError`]);
//! - a lane that ends resets every stream on it ([`Lane::close_all`]).
//!
//! Memory: per stream at most `initial_window` received bytes not yet
//! consumed, plus what the relay queues to send (it bounds that with
//! [`Lane::queued`]); per lane the control queue is bounded by
//! [`MAX_CONTROL_QUEUE`] (a peer that makes us answer faster than it reads
//! breaks the lane).

pub mod burst;
pub mod pace;
pub mod sched;
pub mod stream;
pub mod window;

use std::collections::{HashMap, VecDeque};

use crate::frame::{self, AbortCode, Decoder, Frame, FrameError, Open, Settings, MAX_PAYLOAD};
use sched::{Class, Scheduler};
use stream::{Half, Stream};

/// Control frames (SETTINGS, WINDOW, ABORT, PONG) waiting to be written,
/// at most. A peer that makes us queue more without reading breaks the lane.
pub const MAX_CONTROL_QUEUE: usize = 256 * 1024;
/// Default [`LaneConfig::age_bytes`]: 8 MiB, about 0.7 s of a 100 Mbit/s
/// path: the longest a newer stream waits behind an older one's boost.
pub const AGE_BYTES: u64 = 8 << 20;

/// Credit a stream may hold at most (as HTTP/2: 2^31 − 1).
pub const MAX_CREDIT: u64 = (1 << 31) - 1;

/// Which end of the lane this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The relay nearer the client: connects the lane, opens streams.
    Initiator,
    /// The relay that accepted the lane: streams arrive.
    Acceptor,
}

/// Limits of one lane end; see docs/config.md (`[[peer]]` lane keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// Bytes each stream may send us before we return credit.
    pub initial_window: u32,
    /// Streams we accept open at once (acceptor) and ask for (both).
    pub max_streams: u32,
    /// Deficit round robin quantum, bytes.
    pub quantum: usize,
    /// Bytes of each stream's start that go through the new-flow queue.
    pub first_bytes: u64,
    /// Bytes a new stream sends per turn in the new-flow queue: new streams
    /// take turns of this size until each sent `first_bytes`, so in a burst
    /// every new stream's first bytes go before any one's next.
    pub first_quantum: usize,
    /// Age weighting of the old queue (1: equal shares). With `w` > 1 a
    /// stream's turn grows with the number of younger streams still
    /// sending, up to `w` quanta for the oldest
    /// ([`sched::age_quantum`]): a burst of equal downloads then ends
    /// spread out in arrival order, the median sooner and the last no
    /// later, instead of all together at the end.
    pub age_weight: u32,
    /// Streams that have sent this many bytes are bulk: equal shares, and
    /// they do not count as older than anyone (so a long download never
    /// crowds out a newer one).
    pub age_bytes: u64,
}

impl Default for LaneConfig {
    fn default() -> LaneConfig {
        LaneConfig {
            initial_window: 1024 * 1024,
            max_streams: 128,
            quantum: 16 * 1024,
            first_bytes: 16 * 1024,
            first_quantum: 2 * 1024,
            age_weight: 1,
            age_bytes: AGE_BYTES,
        }
    }
}

/// What happened on the lane, for the relay to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's SETTINGS arrived: the lane may carry streams.
    Ready(Settings),
    /// (Acceptor) the peer opened a stream.
    Opened {
        stream: u32,
        dst: std::net::SocketAddr,
        hop_limit: u8,
        ext: Vec<u8>,
    },
    /// Bytes for the stream's flow. Call [`Lane::consumed`] once written.
    Data {
        stream: u32,
        bytes: Vec<u8>,
    },
    /// The peer ended its direction cleanly: shut down the flow's write side.
    End {
        stream: u32,
    },
    /// The stream is gone (the peer aborted, or we reset it after a fault):
    /// reset its flow. It is forgotten; frames for it are ignored.
    Reset {
        stream: u32,
        code: AbortCode,
    },
    /// Bytes of the stream left the lane's queue (freeing send buffer).
    Sent {
        stream: u32,
        bytes: usize,
    },
    /// A MODULE frame (issue 13).
    Module {
        stream: u32,
        flags: u8,
        payload: Vec<u8>,
    },
    Pong(u64),
    /// The peer broke a stream rule; the stream (if any) was reset. Count it.
    Fault {
        stream: u32,
        fault: Fault,
    },
}

/// A stream rule the peer broke. The stream is reset; the lane goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("frame for a stream that was never opened")]
    Unknown,
    #[error("OPEN with a stream id already used")]
    Reused,
    #[error("frame for a stream that has ended")]
    Closed,
    #[error("more data than the window allowed")]
    WindowExceeded,
    #[error("WINDOW credit above 2^31 - 1")]
    CreditOverflow,
    #[error("DATA after END")]
    DataAfterEnd,
    #[error("END total differs from the bytes received")]
    EndMismatch,
    #[error("more open streams than allowed")]
    StreamLimit,
    #[error("OPEN from the acceptor")]
    OpenFromAcceptor,
}

impl Fault {
    /// A short, stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Fault::Unknown => "stream_unknown",
            Fault::Reused => "stream_reused",
            Fault::Closed => "stream_closed",
            Fault::WindowExceeded => "window_exceeded",
            Fault::CreditOverflow => "credit_overflow",
            Fault::DataAfterEnd => "data_after_end",
            Fault::EndMismatch => "end_mismatch",
            Fault::StreamLimit => "stream_limit",
            Fault::OpenFromAcceptor => "open_from_acceptor",
        }
    }
}

/// Why a lane can not go on. The relay resets it and every stream on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("first frame is not SETTINGS")]
    SettingsMissing,
    #[error("SETTINGS sent twice")]
    SettingsRepeated,
    #[error("SETTINGS with an initial window of 0 or no streams")]
    SettingsInvalid,
    #[error("control frames queued beyond the bound: the peer does not read")]
    ControlOverflow,
}

impl LaneError {
    /// A short, stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            LaneError::Frame(f) => f.reason(),
            LaneError::SettingsMissing => "settings_missing",
            LaneError::SettingsRepeated => "settings_repeated",
            LaneError::SettingsInvalid => "settings_invalid",
            LaneError::ControlOverflow => "control_overflow",
        }
    }
}

/// Why [`Lane::open`] gave no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the peer's SETTINGS have not arrived")]
    NotReady,
    #[error("the peer's stream limit is reached")]
    Full,
    #[error("only the initiator opens streams")]
    NotInitiator,
    #[error("stream ids exhausted")]
    IdsExhausted,
    #[error("OPEN does not encode (port 0 or ext too long)")]
    Unencodable,
    #[error("the lane is broken")]
    Broken,
}

/// One end of a lane.
#[derive(Debug)]
pub struct Lane {
    role: Role,
    cfg: LaneConfig,
    decoder: Decoder,
    peer: Option<Settings>,
    streams: HashMap<u32, Stream>,
    /// Initiator: the last id handed out. Acceptor: the highest id opened.
    last_id: u32,
    control: Vec<u8>,
    pending_pong: Option<u64>,
    sched: Scheduler,
    events: VecDeque<Event>,
    broken: Option<LaneError>,
}

impl Lane {
    /// A lane end; its SETTINGS is the first thing [`Lane::poll_transmit`]
    /// gives.
    pub fn new(role: Role, cfg: LaneConfig) -> Lane {
        let mut control = Vec::new();
        Frame::Settings(Settings {
            initial_window: cfg.initial_window.max(1),
            max_streams: cfg.max_streams.max(1),
        })
        .encode(&mut control);
        Lane {
            role,
            cfg,
            decoder: Decoder::new(),
            peer: None,
            streams: HashMap::new(),
            last_id: 0,
            control,
            pending_pong: None,
            sched: Scheduler::default(),
            events: VecDeque::new(),
            broken: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's SETTINGS, once they arrived.
    pub fn peer_settings(&self) -> Option<Settings> {
        self.peer
    }

    /// Streams open (in any state short of forgotten).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Streams waiting in the scheduler's (new, old) queues.
    pub fn scheduler_queue(&self) -> (usize, usize) {
        self.sched.lens()
    }

    /// Whether a new stream may be opened now.
    pub fn can_open(&self) -> bool {
        self.role == Role::Initiator
            && self.broken.is_none()
            && self
                .peer
                .is_some_and(|p| (self.streams.len() as u64) < u64::from(p.max_streams))
            && self.last_id < u32::MAX
    }

    pub fn broken(&self) -> Option<LaneError> {
        self.broken
    }

    /// (Initiator) open a stream toward `open.dst`; its OPEN goes out first
    /// thing in the new-flow queue.
    pub fn open(&mut self, open: Open<'_>) -> Result<u32, OpenError> {
        if self.broken.is_some() {
            return Err(OpenError::Broken);
        }
        if self.role != Role::Initiator {
            return Err(OpenError::NotInitiator);
        }
        let Some(peer) = self.peer else {
            return Err(OpenError::NotReady);
        };
        if self.streams.len() as u64 >= u64::from(peer.max_streams) {
            return Err(OpenError::Full);
        }
        let id = self.last_id.checked_add(1).ok_or(OpenError::IdsExhausted)?;
        let mut f = Vec::new();
        if !(Frame::Open { stream: id, open }).encode(&mut f) {
            return Err(OpenError::Unencodable);
        }
        self.last_id = id;
        let s = Stream::new(
            u64::from(peer.initial_window),
            u64::from(self.cfg.initial_window.max(1)),
            Some(f),
        );
        self.streams.insert(id, s);
        self.wake(id);
        Ok(id)
    }

    /// Queue bytes on a stream. Returns `false` (and drops them) if the
    /// stream is gone or its direction was finished. The relay bounds what
    /// it queues per stream with [`Lane::queued`].
    pub fn send(&mut self, id: u32, bytes: &[u8]) -> bool {
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        if s.send != Half::Open {
            return false;
        }
        s.send_queue.extend(bytes);
        self.wake(id);
        true
    }

    /// Bytes queued on a stream and not yet framed.
    pub fn queued(&self, id: u32) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send_queue.len())
    }

    /// Bytes queued on all streams.
    pub fn queued_total(&self) -> usize {
        self.streams.values().map(|s| s.send_queue.len()).sum()
    }

    /// End our direction of a stream cleanly: END follows the queued bytes.
    pub fn finish(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.send == Half::Open {
                s.send = Half::Finishing;
                self.wake(id);
            }
        }
    }

    /// Reset a stream (its flow failed or was reset): ABORT to the peer,
    /// everything queued dropped, the stream forgotten. No event.
    pub fn reset(&mut self, id: u32, code: AbortCode) {
        if let Some(s) = self.streams.remove(&id) {
            // A stream whose OPEN never left needs no ABORT.
            if s.open_frame.is_none() {
                self.control_frame(&Frame::Abort { stream: id, code });
            }
        }
    }

    /// The flow wrote `n` bytes of this stream's data: return credit to the
    /// peer once half a window is consumed.
    pub fn consumed(&mut self, id: u32, n: usize) {
        let half = u64::from(self.cfg.initial_window.max(2) / 2);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.to_grant += n as u64;
        if s.recv == Half::Open && s.to_grant >= half {
            let credit = s.to_grant.min(u64::from(u32::MAX)) as u32;
            s.to_grant -= u64::from(credit);
            s.recv_window += u64::from(credit);
            self.control_frame(&Frame::Window { stream: id, credit });
        }
    }

    /// Send a PING (lane liveness); the answer comes as [`Event::Pong`].
    pub fn ping(&mut self, v: u64) {
        self.control_frame(&Frame::Ping(v));
    }

    /// Queue a MODULE frame (stream 0: the whole lane). `false` if it does
    /// not encode (payload over 65 535 bytes).
    pub fn module(&mut self, stream: u32, flags: u8, payload: &[u8]) -> bool {
        let mut f = Vec::new();
        let ok = Frame::Module {
            stream,
            flags,
            payload,
        }
        .encode(&mut f);
        self.control.extend_from_slice(&f);
        ok
    }

    /// The lane is gone (EOF, RST, error): every stream is reset. Returns
    /// the ids, so the relay resets their flows.
    pub fn close_all(&mut self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.streams.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        self.sched.clear();
        self.control.clear();
        ids
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes read from the lane. An error breaks the lane for good: reset
    /// it and [`Lane::close_all`].
    pub fn recv(&mut self, bytes: &[u8]) -> Result<(), LaneError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        self.decoder.push(bytes);
        let r = self.drain_frames();
        if let Err(e) = r {
            self.broken = Some(e);
        }
        r
    }

    fn drain_frames(&mut self) -> Result<(), LaneError> {
        // Frames borrow the decoder; take it out while handling them.
        let mut decoder = std::mem::take(&mut self.decoder);
        let r = loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    if let Err(e) = self.handle(f) {
                        break Err(e);
                    }
                    if self.control.len() > MAX_CONTROL_QUEUE {
                        break Err(LaneError::ControlOverflow);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.decoder = decoder;
        r
    }

    fn handle(&mut self, f: Frame<'_>) -> Result<(), LaneError> {
        match (self.peer.is_some(), &f) {
            (false, Frame::Settings(s)) => {
                if s.initial_window == 0 || s.max_streams == 0 {
                    return Err(LaneError::SettingsInvalid);
                }
                self.peer = Some(*s);
                self.events.push_back(Event::Ready(*s));
                return Ok(());
            }
            (false, _) => return Err(LaneError::SettingsMissing),
            (true, Frame::Settings(_)) => return Err(LaneError::SettingsRepeated),
            _ => {}
        }
        match f {
            Frame::Open { stream, open } => self.on_open(stream, open),
            Frame::Data {
                stream, payload, ..
            } => self.on_data(stream, payload),
            Frame::End { stream, total } => self.on_end(stream, total),
            Frame::Abort { stream, code } => {
                if self.streams.remove(&stream).is_some() {
                    self.events.push_back(Event::Reset { stream, code });
                }
            }
            Frame::Window { stream, credit } => self.on_window(stream, credit),
            Frame::Module {
                stream,
                flags,
                payload,
            } => self.events.push_back(Event::Module {
                stream,
                flags,
                payload: payload.to_vec(),
            }),
            Frame::Ping(v) => self.pending_pong = Some(v),
            Frame::Pong(v) => self.events.push_back(Event::Pong(v)),
            Frame::Settings(_) => {}
        }
        Ok(())
    }

    /// A frame for `id`, which is not in the table: unknown or closed?
    fn missing(&mut self, id: u32) {
        if id <= self.last_id {
            // Opened once and gone: frames in flight when it ended. Count
            // only; answering would echo ABORTs back and forth.
            self.fault(id, Fault::Closed, None);
        } else {
            self.fault(id, Fault::Unknown, Some(AbortCode::Protocol));
        }
    }

    /// Count a fault; reset the stream (event to the relay, ABORT to the
    /// peer) when `abort` is given.
    fn fault(&mut self, id: u32, fault: Fault, abort: Option<AbortCode>) {
        self.events.push_back(Event::Fault { stream: id, fault });
        if let Some(code) = abort {
            if self.streams.remove(&id).is_some() {
                self.events.push_back(Event::Reset { stream: id, code });
            }
            self.control_frame(&Frame::Abort { stream: id, code });
        }
    }

    fn on_open(&mut self, id: u32, open: Open<'_>) {
        if self.role == Role::Initiator {
            return self.fault(id, Fault::OpenFromAcceptor, Some(AbortCode::Protocol));
        }
        if id <= self.last_id {
            return self.fault(id, Fault::Reused, Some(AbortCode::Protocol));
        }
        self.last_id = id;
        if self.streams.len() as u64 >= u64::from(self.cfg.max_streams.max(1)) {
            return self.fault(id, Fault::StreamLimit, Some(AbortCode::StreamLimit));
        }
        let credit = self.peer.map_or(0, |p| u64::from(p.initial_window));
        let s = Stream::new(credit, u64::from(self.cfg.initial_window.max(1)), None);
        self.streams.insert(id, s);
        self.events.push_back(Event::Opened {
            stream: id,
            dst: open.dst,
            hop_limit: open.hop_limit,
            ext: open.ext.to_vec(),
        });
    }

    fn on_data(&mut self, id: u32, payload: &[u8]) {
        let Some(s) = self.streams.get_mut(&id) else {
            return self.missing(id);
        };
        if s.recv != Half::Open {
            return self.fault(id, Fault::DataAfterEnd, Some(AbortCode::Protocol));
        }
        let n = payload.len() as u64;
        if n > s.recv_window {
            return self.fault(id, Fault::WindowExceeded, Some(AbortCode::FlowControl));
        }
        s.recv_window -= n;
        s.recv_total += n;
        if n > 0 {
            self.events.push_back(Event::Data {
                stream: id,
                bytes: payload.to_vec(),
            });
        }
    }

    fn on_end(&mut self, id: u32, total: u64) {
        let Some(s) = self.streams.get_mut(&id) else {
            return self.missing(id);
        };
        if s.recv != Half::Open {
            return self.fault(id, Fault::DataAfterEnd, Some(AbortCode::Protocol));
        }
        if total != s.recv_total {
            return self.fault(id, Fault::EndMismatch, Some(AbortCode::Protocol));
        }
        s.recv = Half::Ended;
        let done = s.done();
        self.events.push_back(Event::End { stream: id });
        if done {
            self.streams.remove(&id);
        }
    }

    fn on_window(&mut self, id: u32, credit: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            // WINDOW for a stream we ended or reset: normal, in flight.
            if id > self.last_id {
                self.missing(id);
            }
            return;
        };
        s.send_credit += u64::from(credit);
        if s.send_credit > MAX_CREDIT {
            return self.fault(id, Fault::CreditOverflow, Some(AbortCode::FlowControl));
        }
        self.wake(id);
    }

    fn control_frame(&mut self, f: &Frame<'_>) {
        f.encode(&mut self.control);
    }

    /// Put a stream in the scheduler if it has something to send.
    fn wake(&mut self, id: u32) {
        let first = self.cfg.first_bytes;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.queued_in_scheduler || !s.sendable() {
            return;
        }
        s.queued_in_scheduler = true;
        let class = if s.sent_total < first {
            Class::New
        } else {
            Class::Old
        };
        self.sched.push(id, class);
    }

    /// Stream `id`'s turn in the old queue: `quantum`, weighted by its age
    /// among the streams still sending that are not bulk (one pass over
    /// the lane's streams, only when age weighting is on).
    fn aged_quantum(&self, id: u32, quantum: usize) -> usize {
        let w = self.cfg.age_weight;
        if w <= 1 {
            return quantum;
        }
        let young = |s: &Stream| s.send != Half::Ended && s.sent_total < self.cfg.age_bytes;
        if !self.streams.get(&id).is_some_and(young) {
            return quantum;
        }
        // Ids only grow on a lane: a larger id opened later.
        let (mut newer, mut active) = (0, 0);
        for (&other, s) in &self.streams {
            if young(s) {
                active += 1;
                newer += usize::from(other > id);
            }
        }
        sched::age_quantum(quantum, w, newer, active)
    }

    /// How many bytes stream `id` may keep queued here: `base`, or with age
    /// weighting its turn in the old queue if larger (a stream whose queue
    /// holds less than its turn sends only what it holds, and the weighting
    /// would not bind). So with weight `w` the oldest stream may queue up
    /// to `w` quanta: 16 × 16 KiB = 256 KiB at most with the defaults.
    pub fn send_buffer(&self, id: u32, base: usize) -> usize {
        if self.cfg.age_weight <= 1 {
            return base;
        }
        base.max(self.aged_quantum(id, self.cfg.quantum.max(1)))
    }

    /// Whether [`Lane::poll_transmit`] has anything to give.
    pub fn wants_to_send(&self) -> bool {
        !self.control.is_empty() || self.pending_pong.is_some() || self.sched.lens() != (0, 0)
    }

    /// Append frames to `out` until it holds about `max` bytes (one
    /// stream's turn may go past by up to a quantum): control frames first,
    /// then the scheduler's picks. Returns whether anything was added.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let start = out.len();
        if let Some(v) = self.pending_pong.take() {
            Frame::Pong(v).encode(&mut self.control);
        }
        out.append(&mut self.control);
        while out.len() < max {
            let Some((id, class)) = self.sched.pop() else {
                break;
            };
            self.serve(id, class, out);
        }
        out.len() > start
    }

    /// One turn of stream `id`.
    fn serve(&mut self, id: u32, class: Class, out: &mut Vec<u8>) {
        let (quantum, first) = (self.cfg.quantum.max(1), self.cfg.first_bytes);
        let aged = match class {
            Class::Old => self.aged_quantum(id, quantum),
            Class::New => quantum,
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.queued_in_scheduler = false;
        if !s.sendable() {
            s.deficit = 0;
            return;
        }
        let budget = match class {
            Class::New => (first.saturating_sub(s.sent_total).max(1) as usize)
                .min(self.cfg.first_quantum.max(1)),
            Class::Old => {
                s.deficit += aged;
                s.deficit
            }
        };
        if let Some(f) = s.open_frame.take() {
            out.extend_from_slice(&f);
        }
        let mut n = budget
            .min(s.send_queue.len())
            .min(s.send_credit.min(usize::MAX as u64) as usize);
        let sent = n;
        while n > 0 {
            let k = n.min(MAX_PAYLOAD);
            frame::encode_data_head(out, id, 0, k);
            out.extend(s.send_queue.drain(..k));
            n -= k;
        }
        s.send_credit -= sent as u64;
        s.sent_total += sent as u64;
        if class == Class::Old {
            s.deficit = s.deficit.saturating_sub(sent);
        }
        if s.send == Half::Finishing && s.send_queue.is_empty() {
            Frame::End {
                stream: id,
                total: s.sent_total,
            }
            .encode(out);
            s.send = Half::Ended;
        }
        if sent > 0 {
            self.events.push_back(Event::Sent {
                stream: id,
                bytes: sent,
            });
        }
        if s.done() {
            self.streams.remove(&id);
        } else if s.sendable() {
            // Back in the new-flow queue while its first bytes are not all
            // out (behind the other new streams), else to the old one.
            s.queued_in_scheduler = true;
            let next = if class == Class::New && s.sent_total < first {
                Class::New
            } else {
                Class::Old
            };
            self.sched.push(id, next);
        } else {
            s.deficit = 0;
        }
    }
}

#[cfg(test)]
mod tests;
