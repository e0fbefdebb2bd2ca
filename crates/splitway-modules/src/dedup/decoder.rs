//! The dedup decoder: DATA, CUT and REF ops into bytes; an unknown
//! reference holds the input behind it and asks the far encoder.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::chunker::MAX_CHUNK;
use super::store::{weight, ChunkStore};
use super::{
    sha256, Hash, CTL_ACK, CTL_ANSWER, CTL_ASK, OP_CUT, OP_DATA, OP_REF, OUT_BUDGET, PARK_LIMIT,
};
use crate::error::ModuleError;
use crate::module::Decoder;
use crate::varint::u32_at;

const NAME: &str = "dedup";

pub struct DedupDecoder {
    store: Arc<Mutex<ChunkStore>>,
    /// The current chunk's bytes so far (DATA since the last CUT or REF).
    acc: Vec<u8>,
    /// Input not decoded yet: an unfinished op, input behind an unknown
    /// reference, or what the output budget left.
    stash: Vec<u8>,
    /// The unknown reference the input waits behind.
    waiting: Option<Hash>,
    /// Hashes asked for and not answered yet.
    asked: HashSet<Hash>,
    /// Answers received, kept until used (the shared store may evict them).
    answers: Vec<(Hash, Arc<[u8]>)>,
    answer_bytes: usize,
    resolved: u64,
    acked: u64,
}

impl DedupDecoder {
    /// A decoder sharing `store` (the peer pair's) with other flows.
    pub fn new(store: Arc<Mutex<ChunkStore>>) -> Self {
        DedupDecoder {
            store,
            acc: Vec::new(),
            stash: Vec::new(),
            waiting: None,
            asked: HashSet::new(),
            answers: Vec::new(),
            answer_bytes: 0,
            resolved: 0,
            acked: 0,
        }
    }

    fn lookup(&mut self, h: &Hash) -> Option<Arc<[u8]>> {
        if let Some(i) = self.answers.iter().position(|(a, _)| a == h) {
            let (_, chunk) = self.answers.swap_remove(i);
            self.answer_bytes -= chunk.len();
            return Some(chunk);
        }
        self.store.lock().unwrap_or_else(|p| p.into_inner()).get(h)
    }

    /// Decodes whole ops from `buf`; returns the bytes consumed.
    fn run(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<usize, ModuleError> {
        let start = out.len();
        let mut pos = 0;
        while pos < buf.len() && self.waiting.is_none() && out.len() - start < OUT_BUDGET {
            let op = &buf[pos..];
            match op[0] {
                OP_DATA => {
                    let Some(len) = u32_at(op, 1) else { break };
                    let len = len as usize;
                    if len > MAX_CHUNK || self.acc.len() + len > MAX_CHUNK {
                        return Err(ModuleError::ChunkTooLong { max: MAX_CHUNK });
                    }
                    let Some(bytes) = op.get(5..5 + len) else {
                        break;
                    };
                    out.extend_from_slice(bytes);
                    self.acc.extend_from_slice(bytes);
                    pos += 5 + len;
                }
                OP_CUT => {
                    if self.acc.is_empty() {
                        return Err(ModuleError::EmptyCut);
                    }
                    let h = sha256(&self.acc);
                    let w = weight(self.acc.len());
                    let chunk: Arc<[u8]> = Arc::from(self.acc.as_slice());
                    self.store
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(h, chunk, w);
                    self.acc.clear();
                    pos += 1;
                }
                OP_REF => {
                    let Some(hb) = op.get(1..33) else { break };
                    let mut h = [0u8; 32];
                    h.copy_from_slice(hb);
                    let Some(chunk) = self.lookup(&h) else {
                        self.waiting = Some(h);
                        self.ask(h, ctl);
                        self.ask_ahead(&buf[pos + 33..], ctl);
                        break;
                    };
                    if !chunk.starts_with(&self.acc) {
                        return Err(ModuleError::RefPrefixMismatch);
                    }
                    out.extend_from_slice(&chunk[self.acc.len()..]);
                    self.acc.clear();
                    self.resolved += 1;
                    pos += 33;
                }
                kind => return Err(ModuleError::UnknownRecord { module: NAME, kind }),
            }
        }
        if self.resolved > self.acked {
            let mut m = Vec::with_capacity(9);
            m.push(CTL_ACK);
            m.extend_from_slice(&self.resolved.to_le_bytes());
            ctl.push(m);
            self.acked = self.resolved;
        }
        Ok(pos)
    }

    fn ask(&mut self, h: Hash, ctl: &mut Vec<Vec<u8>>) {
        if self.asked.insert(h) {
            let mut m = Vec::with_capacity(33);
            m.push(CTL_ASK);
            m.extend_from_slice(&h);
            ctl.push(m);
        }
    }

    /// Asks at once for every other unknown reference already received, so
    /// a store that lost many chunks (a restarted relay) costs one round
    /// trip, not one per chunk.
    fn ask_ahead(&mut self, mut buf: &[u8], ctl: &mut Vec<Vec<u8>>) {
        let mut unknown = Vec::new();
        {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(&op) = buf.first() {
                let len = match op {
                    OP_DATA => match u32_at(buf, 1) {
                        Some(l) => 5 + l as usize,
                        None => break,
                    },
                    OP_CUT => 1,
                    OP_REF => {
                        let Some(hb) = buf.get(1..33) else { break };
                        let mut h = [0u8; 32];
                        h.copy_from_slice(hb);
                        if !store.contains(&h) {
                            unknown.push(h);
                        }
                        33
                    }
                    _ => break,
                };
                buf = buf.get(len..).unwrap_or(&[]);
            }
        }
        for h in unknown {
            self.ask(h, ctl);
        }
    }

    fn resume(&mut self, out: &mut Vec<u8>, ctl: &mut Vec<Vec<u8>>) -> Result<(), ModuleError> {
        let stash = std::mem::take(&mut self.stash);
        let n = self.run(&stash, out, ctl);
        self.stash = stash;
        self.stash.drain(..n?);
        Ok(())
    }
}

impl Decoder for DedupDecoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        if self.stash.is_empty() {
            let n = self.run(input, out, ctl)?;
            self.stash.extend_from_slice(&input[n..]);
        } else {
            let before = self.stash.len();
            self.stash.extend_from_slice(input);
            if self.waiting.is_some() {
                self.ask_ahead_stash(before, ctl);
            } else {
                self.resume(out, ctl)?;
            }
        }
        if self.waiting.is_some() && self.stash.len() > PARK_LIMIT {
            return Err(ModuleError::ParkedTooMuch(self.stash.len()));
        }
        Ok(())
    }

    fn control(
        &mut self,
        msg: &[u8],
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        if msg.first() != Some(&CTL_ANSWER) || msg.len() < 33 || msg.len() - 33 > MAX_CHUNK {
            return Err(ModuleError::BadControl { module: NAME });
        }
        let mut h = [0u8; 32];
        h.copy_from_slice(&msg[1..33]);
        let bytes = &msg[33..];
        if bytes.is_empty() || sha256(bytes) != h {
            return Err(ModuleError::AnswerMismatch);
        }
        if !self.asked.remove(&h) {
            // Not asked (or answered twice): harmless, keep nothing.
            return Ok(());
        }
        let chunk: Arc<[u8]> = Arc::from(bytes);
        self.store.lock().unwrap_or_else(|p| p.into_inner()).insert(
            h,
            chunk.clone(),
            weight(bytes.len()),
        );
        self.answer_bytes += chunk.len();
        if self.answer_bytes > 2 * super::PIN_LIMIT {
            return Err(ModuleError::ParkedTooMuch(self.answer_bytes));
        }
        self.answers.push((h, chunk));
        if self.waiting == Some(h) {
            self.waiting = None;
            self.resume(out, ctl)?;
        }
        Ok(())
    }

    fn waiting(&self) -> bool {
        self.waiting.is_some()
    }

    fn has_pending(&self) -> bool {
        self.waiting.is_none() && whole_op(&self.stash)
    }

    fn finish(&mut self) -> Result<(), ModuleError> {
        if self.waiting.is_some() {
            Err(ModuleError::EndedWaiting)
        } else if !self.stash.is_empty() {
            Err(ModuleError::Truncated { module: NAME })
        } else {
            Ok(())
        }
    }
}

impl DedupDecoder {
    /// Asks ahead over the ops that just arrived while waiting. Only whole
    /// ops from the stash's start are walked, so the scan stays aligned.
    fn ask_ahead_stash(&mut self, _from: usize, ctl: &mut Vec<Vec<u8>>) {
        // The waiting REF is at the stash's start (33 bytes).
        let stash = std::mem::take(&mut self.stash);
        if let Some(rest) = stash.get(33..) {
            self.ask_ahead(rest, ctl);
        }
        self.stash = stash;
    }
}

/// `buf` starts with a whole op (or a malformed one, which the next call
/// reports).
fn whole_op(buf: &[u8]) -> bool {
    match buf.first() {
        None => false,
        Some(&OP_DATA) => u32_at(buf, 1).is_some_and(|l| buf.len() >= 5 + l as usize),
        Some(&OP_CUT) => true,
        Some(&OP_REF) => buf.len() >= 33,
        Some(_) => true,
    }
}
