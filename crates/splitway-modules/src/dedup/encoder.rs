//! The dedup encoder: chunks, references for chunks the far store is
//! believed to hold, and the bytes of every unacknowledged reference kept to
//! answer an ASK.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::chunker::Chunker;
use super::store::{weight, SentModel};
use super::{sha256, Hash, CTL_ACK, CTL_ANSWER, CTL_ASK, OP_CUT, OP_DATA, OP_REF, PIN_LIMIT};
use crate::error::ModuleError;
use crate::module::Encoder;
use crate::state::LegSnapshot;
use crate::varint::u64_at;

const NAME: &str = "dedup";

/// What the encoder did, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub chunks: u64,
    pub refs: u64,
    pub asks_answered: u64,
}

/// Referenced chunks not yet acknowledged, in the order sent.
#[derive(Debug, Default)]
struct Pinned {
    by_hash: HashMap<Hash, (Arc<[u8]>, u32)>,
    order: VecDeque<Hash>,
    bytes: usize,
    sent: u64,
    acked: u64,
}

impl Pinned {
    fn pin(&mut self, h: Hash, bytes: &[u8]) {
        let e = self
            .by_hash
            .entry(h)
            .or_insert_with(|| (Arc::from(bytes), 0));
        e.1 += 1;
        self.bytes += bytes.len();
        self.order.push_back(h);
        self.sent += 1;
    }

    fn ack(&mut self, resolved: u64) -> Result<(), ModuleError> {
        if resolved > self.sent || resolved < self.acked {
            return Err(ModuleError::BadAck);
        }
        while self.acked < resolved {
            let Some(h) = self.order.pop_front() else {
                return Err(ModuleError::BadAck);
            };
            if let Some(e) = self.by_hash.get_mut(&h) {
                self.bytes -= e.0.len();
                e.1 -= 1;
                if e.1 == 0 {
                    self.by_hash.remove(&h);
                }
            }
            self.acked += 1;
        }
        Ok(())
    }
}

pub struct DedupEncoder {
    chunker: Chunker,
    /// The current chunk's bytes so far.
    cur: Vec<u8>,
    /// Of `cur`, the bytes already sent as DATA (at a flush).
    emitted: usize,
    model: Arc<Mutex<SentModel>>,
    pinned: Pinned,
    pin_limit: usize,
    stats: DedupStats,
}

impl DedupEncoder {
    /// An encoder sharing `model` (the peer pair's) with other flows.
    pub fn new(model: Arc<Mutex<SentModel>>) -> Self {
        DedupEncoder {
            chunker: Chunker::new(),
            cur: Vec::new(),
            emitted: 0,
            model,
            pinned: Pinned::default(),
            pin_limit: PIN_LIMIT,
            stats: DedupStats::default(),
        }
    }

    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Bytes kept for unacknowledged references.
    pub fn pinned_bytes(&self) -> usize {
        self.pinned.bytes
    }

    fn data(&mut self, out: &mut Vec<u8>) {
        let rest = &self.cur[self.emitted..];
        if !rest.is_empty() {
            out.push(OP_DATA);
            out.extend_from_slice(&(rest.len() as u32).to_le_bytes());
            out.extend_from_slice(rest);
            self.emitted = self.cur.len();
        }
    }

    /// The current chunk is complete.
    fn boundary(&mut self, out: &mut Vec<u8>) {
        let h = sha256(&self.cur);
        self.stats.chunks += 1;
        let known = {
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            m.get(&h).is_some()
        };
        if known && self.pinned.bytes + self.cur.len() <= self.pin_limit {
            out.push(OP_REF);
            out.extend_from_slice(&h);
            self.pinned.pin(h, &self.cur);
            self.stats.refs += 1;
        } else {
            self.data(out);
            out.push(OP_CUT);
            let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
            m.insert(h, (), weight(self.cur.len()));
        }
        self.cur.clear();
        self.emitted = 0;
    }
}

impl Encoder for DedupEncoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn encode(
        &mut self,
        input: &[u8],
        flush: bool,
        _state: &LegSnapshot,
        out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        let start = out.len();
        self.stats.bytes_in += input.len() as u64;
        let mut rest = input;
        while let Some(n) = self.chunker.next_boundary(rest) {
            self.cur.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            self.boundary(out);
        }
        self.cur.extend_from_slice(rest);
        if flush {
            self.data(out);
        }
        self.stats.bytes_out += (out.len() - start) as u64;
        Ok(())
    }

    fn idle(&self) -> bool {
        self.pinned.sent == self.pinned.acked
    }

    fn keeps_unit_on_soft_flush(&self) -> bool {
        true
    }

    fn control(&mut self, msg: &[u8], ctl: &mut Vec<Vec<u8>>) -> Result<(), ModuleError> {
        match (msg.first(), msg.len()) {
            (Some(&CTL_ACK), 9) => {
                let n = u64_at(msg, 1).ok_or(ModuleError::BadControl { module: NAME })?;
                self.pinned.ack(n)
            }
            (Some(&CTL_ASK), 33) => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&msg[1..]);
                let Some((bytes, _)) = self.pinned.by_hash.get(&h) else {
                    return Err(ModuleError::UnknownAsk);
                };
                let mut m = Vec::with_capacity(33 + bytes.len());
                m.push(CTL_ANSWER);
                m.extend_from_slice(&h);
                m.extend_from_slice(bytes);
                ctl.push(m);
                // The far store does not have it: stop referencing it until
                // it is sent again.
                self.model
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&h);
                self.stats.asks_answered += 1;
                Ok(())
            }
            _ => Err(ModuleError::BadControl { module: NAME }),
        }
    }
}
