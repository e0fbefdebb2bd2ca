//! The compress encoder: records from bursts, zstd at the adaptive level,
//! raw when zstd does not shrink the record (with a back-off, so incompressible
//! streams cost almost no CPU).

use std::time::Instant;

use zstd::stream::raw::{CParameter, Encoder as ZEncoder, InBuffer, Operation, OutBuffer};

use super::adapt::{Adapt, AdaptConfig};
use super::{
    RAW, RAW_HEADER, RECORD_TARGET, TABLE_LOG_MAX, WINDOW_LOG_MAX, ZSTD_CONT, ZSTD_HEADER, ZSTD_NEW,
};
use crate::error::ModuleError;
use crate::module::Encoder;
use crate::state::LegSnapshot;

/// Raw bytes sent without trying zstd after the first record that did not
/// shrink; doubled on each further one, up to [`BACKOFF_MAX`].
const BACKOFF_START: u64 = 256 << 10;
const BACKOFF_MAX: u64 = 16 << 20;

pub struct CompressEncoder {
    zstd: ZEncoder<'static>,
    adapt: Adapt,
    /// The level of the open frame, if the far decoder has one open.
    frame_level: Option<i32>,
    /// Held input, shorter than a record.
    held: Vec<u8>,
    scratch: Vec<u8>,
    /// Raw bytes still to send before trying zstd again.
    raw_left: u64,
    backoff: u64,
    stats: CompressStats,
}

/// What the encoder did, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompressStats {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_zstd: u64,
    pub records_raw: u64,
    /// Frames started because the level changed.
    pub level_changes: u64,
}

impl CompressEncoder {
    pub fn new(cfg: AdaptConfig) -> Result<Self, ModuleError> {
        let zstd = ZEncoder::new(1).map_err(|e| ModuleError::Zstd(e.to_string()))?;
        Ok(CompressEncoder {
            zstd,
            adapt: Adapt::new(cfg),
            frame_level: None,
            held: Vec::new(),
            scratch: Vec::new(),
            raw_left: 0,
            backoff: BACKOFF_START,
            stats: CompressStats::default(),
        })
    }

    pub fn stats(&self) -> CompressStats {
        self.stats
    }

    /// The level the next record would start from.
    pub fn level(&self) -> i32 {
        self.adapt.level()
    }

    fn record(
        &mut self,
        data: &[u8],
        state: &LegSnapshot,
        out: &mut Vec<u8>,
    ) -> Result<(), ModuleError> {
        self.stats.bytes_in += data.len() as u64;
        let start = out.len();
        let level = self.adapt.observe(state);
        if level <= 0 || self.raw_left > 0 {
            self.raw_left = self.raw_left.saturating_sub(data.len() as u64);
            self.raw(data, out);
            self.adapt.recorded(0, data.len(), data.len(), 0);
        } else {
            // Wall time: on a shared CPU that is what the flow waits for.
            let t0 = Instant::now();
            let shrank = self.zstd_record(data, level, out)?;
            let nanos = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if shrank {
                self.backoff = BACKOFF_START;
            } else {
                self.raw(data, out);
                self.raw_left = self.backoff;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
            let sent = out.len() - start;
            self.adapt.recorded(level, data.len(), sent, nanos);
        }
        self.stats.bytes_out += (out.len() - start) as u64;
        Ok(())
    }

    fn raw(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // The far decoder never sees these bytes through zstd: the next zstd
        // record must start a new frame.
        self.frame_level = None;
        self.stats.records_raw += 1;
        out.reserve(RAW_HEADER + data.len());
        out.push(RAW);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    /// Writes a zstd record, or nothing and `false` if it would not shrink.
    fn zstd_record(
        &mut self,
        data: &[u8],
        level: i32,
        out: &mut Vec<u8>,
    ) -> Result<bool, ModuleError> {
        let zerr = |e: std::io::Error| ModuleError::Zstd(e.to_string());
        let kind = if self.frame_level == Some(level) {
            ZSTD_CONT
        } else {
            if self.frame_level.is_some() {
                self.stats.level_changes += 1;
            }
            self.zstd.reinit().map_err(zerr)?;
            self.zstd
                .set_parameter(CParameter::CompressionLevel(level))
                .map_err(zerr)?;
            self.zstd
                .set_parameter(CParameter::WindowLog(WINDOW_LOG_MAX))
                .map_err(zerr)?;
            if level >= 5 {
                // Levels 5+ default to larger tables (tens of MiB at 9+).
                self.zstd
                    .set_parameter(CParameter::HashLog(TABLE_LOG_MAX))
                    .map_err(zerr)?;
                self.zstd
                    .set_parameter(CParameter::ChainLog(TABLE_LOG_MAX))
                    .map_err(zerr)?;
            }
            self.zstd
                .set_parameter(CParameter::ChecksumFlag(false))
                .map_err(zerr)?;
            ZSTD_NEW
        };
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(data.len()) + 64);
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            self.ensure_room();
            let pos = self.scratch.len();
            let mut o = OutBuffer::around_pos(&mut self.scratch, pos);
            self.zstd.run(&mut input, &mut o).map_err(zerr)?;
        }
        loop {
            self.ensure_room();
            let pos = self.scratch.len();
            let mut o = OutBuffer::around_pos(&mut self.scratch, pos);
            if self.zstd.flush(&mut o).map_err(zerr)? == 0 {
                break;
            }
        }
        if self.scratch.len() + ZSTD_HEADER >= data.len() + RAW_HEADER {
            return Ok(false);
        }
        self.frame_level = Some(level);
        self.stats.records_zstd += 1;
        out.reserve(ZSTD_HEADER + self.scratch.len());
        out.push(kind);
        out.extend_from_slice(&(self.scratch.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.scratch);
        Ok(true)
    }

    /// The next record goes raw unless the level changes on it.
    fn sends_raw(&self) -> bool {
        self.adapt.level() <= 0 || self.raw_left > 0
    }

    fn ensure_room(&mut self) {
        if self.scratch.capacity() - self.scratch.len() < 4096 {
            self.scratch.reserve(64 << 10);
        }
    }
}

impl Encoder for CompressEncoder {
    fn name(&self) -> &'static str {
        "compress"
    }

    fn encode(
        &mut self,
        mut input: &[u8],
        flush: bool,
        state: &LegSnapshot,
        out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        if !self.held.is_empty() {
            let take = (RECORD_TARGET - self.held.len()).min(input.len());
            self.held.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.held.len() == RECORD_TARGET || (flush && input.is_empty()) {
                let held = std::mem::take(&mut self.held);
                self.record(&held, state, out)?;
                self.held = held;
                self.held.clear();
            }
        }
        if self.held.is_empty() && self.sends_raw() {
            // Raw records need no size: each burst goes as it came, without
            // a copy into `held` (a raw leg costs what `null` costs).
            while !input.is_empty() {
                let (now, rest) = input.split_at(input.len().min(RECORD_TARGET));
                self.record(now, state, out)?;
                input = rest;
                if !self.sends_raw() {
                    break;
                }
            }
        }
        while input.len() >= RECORD_TARGET {
            let (now, rest) = input.split_at(RECORD_TARGET);
            self.record(now, state, out)?;
            input = rest;
        }
        if !input.is_empty() {
            if flush {
                self.record(input, state, out)?;
            } else {
                self.held.extend_from_slice(input);
            }
        }
        Ok(())
    }

    fn control(&mut self, _msg: &[u8], _ctl: &mut Vec<Vec<u8>>) -> Result<(), ModuleError> {
        Err(ModuleError::BadControl { module: "compress" })
    }

    /// Raw is chosen for the next record and nothing is held: the bytes may
    /// go as a plain record (the far decoder never sees them, as it never
    /// sees a raw record's bytes through zstd).
    fn passes_through(&self) -> bool {
        self.held.is_empty() && self.sends_raw()
    }

    /// Accounted as a raw record of `n` bytes: the controller observes the
    /// leg and counts the bytes toward its probes; the next zstd record
    /// starts a new frame.
    fn passed(&mut self, n: usize, state: &LegSnapshot) {
        let _ = self.adapt.observe(state);
        self.stats.bytes_in += n as u64;
        self.stats.bytes_out += n as u64;
        self.raw_left = self.raw_left.saturating_sub(n as u64);
        self.frame_level = None;
        self.stats.records_raw += 1;
        self.adapt.recorded(0, n, n, 0);
    }
}
