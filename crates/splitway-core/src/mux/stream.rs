//! One stream's state on a lane: what it may still send and receive, its
//! flow-control windows in both directions, and its queued bytes.

use std::collections::VecDeque;

/// Where one direction of a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// Bytes may still flow.
    Open,
    /// The sender asked for a clean end; END goes after the queued bytes.
    Finishing,
    /// END sent or received: this direction is over.
    Ended,
}

/// Per-stream state. Owned by [`super::Lane`]; plain data.
#[derive(Debug)]
pub struct Stream {
    /// An encoded OPEN frame not yet sent (initiator only).
    pub open_frame: Option<Vec<u8>>,
    /// Our direction toward the peer.
    pub send: Half,
    pub send_queue: VecDeque<u8>,
    /// Bytes the peer still accepts on this stream (its window for us).
    pub send_credit: u64,
    pub sent_total: u64,
    /// The peer's direction toward us.
    pub recv: Half,
    /// Bytes the peer may still send before our next WINDOW.
    pub recv_window: u64,
    pub recv_total: u64,
    /// Bytes the application consumed that we have not yet returned as credit.
    pub to_grant: u64,
    /// Scheduler bookkeeping.
    pub queued_in_scheduler: bool,
    pub deficit: usize,
}

impl Stream {
    pub fn new(send_credit: u64, recv_window: u64, open_frame: Option<Vec<u8>>) -> Stream {
        Stream {
            open_frame,
            send: Half::Open,
            send_queue: VecDeque::new(),
            send_credit,
            sent_total: 0,
            recv: Half::Open,
            recv_window,
            recv_total: 0,
            to_grant: 0,
            queued_in_scheduler: false,
            deficit: 0,
        }
    }

    /// Whether the scheduler has anything to send for this stream now:
    /// its OPEN, payload within credit, or its END once the queue is empty.
    pub fn sendable(&self) -> bool {
        self.open_frame.is_some()
            || (!self.send_queue.is_empty() && self.send_credit > 0)
            || (self.send == Half::Finishing && self.send_queue.is_empty())
    }

    /// Both directions over: the stream can be forgotten.
    pub fn done(&self) -> bool {
        self.send == Half::Ended && self.recv == Half::Ended
    }
}
