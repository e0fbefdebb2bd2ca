//! The compress decoder: parses records as they arrive (any split), bounds
//! output per record, per compressed byte and per call, and zstd's memory.

use zstd::stream::raw::{DParameter, Decoder as ZDecoder, InBuffer, Operation, OutBuffer};

use super::{
    MAX_RATIO, OUT_BUDGET, RAW, RAW_HEADER, RECORD_MAX, WINDOW_LOG_MAX, ZSTD_CONT, ZSTD_HEADER,
    ZSTD_NEW,
};
use crate::error::ModuleError;
use crate::module::Decoder;
use crate::varint::u32_at;

const NAME: &str = "compress";

pub struct CompressDecoder {
    zstd: ZDecoder<'static>,
    /// A frame is open (a ZSTD_NEW record was decoded since the last RAW).
    in_frame: bool,
    /// Input not decoded yet: an unfinished record, or what the output
    /// budget left for the next call.
    stash: Vec<u8>,
}

impl CompressDecoder {
    pub fn new() -> Result<Self, ModuleError> {
        let zerr = |e: std::io::Error| ModuleError::Zstd(e.to_string());
        let mut zstd = ZDecoder::new().map_err(zerr)?;
        zstd.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
            .map_err(zerr)?;
        Ok(CompressDecoder {
            zstd,
            in_frame: false,
            stash: Vec::new(),
        })
    }

    /// Decodes whole records from `buf`; returns the bytes consumed. Stops
    /// at an unfinished record or when the output budget (counted from
    /// `out[start..]`) is spent.
    fn run(&mut self, buf: &[u8], out: &mut Vec<u8>, start: usize) -> Result<usize, ModuleError> {
        let mut pos = 0;
        while pos < buf.len() && out.len() - start < OUT_BUDGET {
            let rec = &buf[pos..];
            let kind = rec[0];
            let header = match kind {
                RAW => RAW_HEADER,
                ZSTD_NEW | ZSTD_CONT => ZSTD_HEADER,
                _ => return Err(ModuleError::UnknownRecord { module: NAME, kind }),
            };
            let Some(len) = u32_at(rec, 1) else { break };
            let len = len as usize;
            if len > RECORD_MAX + (RECORD_MAX >> 4) {
                return Err(ModuleError::RecordTooLarge {
                    module: NAME,
                    len: len as u64,
                    max: RECORD_MAX as u64,
                });
            }
            if kind != RAW {
                let Some(orig) = u32_at(rec, 5) else { break };
                check_declared(orig as u64, len as u64)?;
            }
            if rec.len() < header + len {
                break;
            }
            let payload = &rec[header..header + len];
            if kind == RAW {
                if len > RECORD_MAX {
                    return Err(ModuleError::RecordTooLarge {
                        module: NAME,
                        len: len as u64,
                        max: RECORD_MAX as u64,
                    });
                }
                out.extend_from_slice(payload);
                self.in_frame = false;
            } else {
                let orig = u32_at(rec, 5).unwrap_or(0) as usize;
                self.zstd_record(kind, payload, orig, out)?;
            }
            pos += header + len;
        }
        Ok(pos)
    }

    fn zstd_record(
        &mut self,
        kind: u8,
        payload: &[u8],
        orig: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ModuleError> {
        let zerr = |e: std::io::Error| ModuleError::Zstd(e.to_string());
        if kind == ZSTD_NEW {
            self.zstd.reinit().map_err(zerr)?;
            self.in_frame = true;
        } else if !self.in_frame {
            return Err(ModuleError::NoFrame);
        }
        let base = out.len();
        // One byte more than declared: producing it proves the record lies.
        // zstd writes into the spare capacity only, so this bounds it.
        out.reserve(orig + 1);
        let mut input = InBuffer::around(payload);
        loop {
            let before_in = input.pos();
            let before_out = out.len();
            {
                let mut o = OutBuffer::around_pos(out, before_out);
                self.zstd.run(&mut input, &mut o).map_err(zerr)?;
            }
            if out.len() > base + orig {
                return Err(ModuleError::LengthMismatch {
                    declared: orig as u64,
                    got: (out.len() - base) as u64,
                });
            }
            let progressed = input.pos() != before_in || out.len() != before_out;
            if input.pos() == payload.len() && (!progressed || out.len() == base + orig) {
                break;
            }
            if !progressed {
                break;
            }
        }
        let got = out.len() - base;
        if got != orig || input.pos() != payload.len() {
            return Err(ModuleError::LengthMismatch {
                declared: orig as u64,
                got: got as u64,
            });
        }
        Ok(())
    }
}

/// A record's declared output against the decoder's bounds.
fn check_declared(orig: u64, compressed: u64) -> Result<(), ModuleError> {
    if orig > RECORD_MAX as u64 {
        return Err(ModuleError::RecordTooLarge {
            module: NAME,
            len: orig,
            max: RECORD_MAX as u64,
        });
    }
    let charged = compressed + ZSTD_HEADER as u64;
    if orig > charged * MAX_RATIO {
        return Err(ModuleError::Bomb {
            declared: orig,
            compressed,
            max_ratio: MAX_RATIO,
        });
    }
    Ok(())
}

impl CompressDecoder {
    /// Bytes the first stashed record still lacks: its header's first, then
    /// its payload's (0 with an unknown kind: `run` reports it).
    fn missing(&self) -> usize {
        let Some(&kind) = self.stash.first() else {
            return 0;
        };
        let header = match kind {
            RAW => RAW_HEADER,
            ZSTD_NEW | ZSTD_CONT => ZSTD_HEADER,
            _ => return 0,
        };
        match u32_at(&self.stash, 1) {
            Some(len) if self.stash.len() >= header => {
                (header + len as usize).saturating_sub(self.stash.len())
            }
            _ => header - self.stash.len().min(header),
        }
    }
}

impl Decoder for CompressDecoder {
    fn name(&self) -> &'static str {
        NAME
    }

    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        let start = out.len();
        let mut input = input;
        if !self.stash.is_empty() {
            // Complete the stashed record with the few bytes it lacks; the
            // rest of the input is decoded where it is, not copied (records
            // span the leg's DATA frames, so this is the common case).
            loop {
                let need = self.missing().min(input.len());
                if need == 0 {
                    break;
                }
                self.stash.extend_from_slice(&input[..need]);
                input = &input[need..];
            }
            let stash = std::mem::take(&mut self.stash);
            let n = self.run(&stash, out, start);
            self.stash = stash;
            let n = n?;
            self.stash.drain(..n);
            if !self.stash.is_empty() {
                self.stash.extend_from_slice(input);
                return Ok(());
            }
        }
        let n = self.run(input, out, start)?;
        self.stash.extend_from_slice(&input[n..]);
        Ok(())
    }

    fn control(
        &mut self,
        _msg: &[u8],
        _out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        Err(ModuleError::BadControl { module: NAME })
    }

    fn has_pending(&self) -> bool {
        // Whole records wait when the output budget stopped the last call.
        complete_record(&self.stash)
    }

    fn finish(&mut self) -> Result<(), ModuleError> {
        if self.stash.is_empty() {
            Ok(())
        } else {
            Err(ModuleError::Truncated { module: NAME })
        }
    }
}

/// `buf` starts with a whole record (or a malformed header, which the next
/// call reports).
fn complete_record(buf: &[u8]) -> bool {
    let Some(&kind) = buf.first() else {
        return false;
    };
    let header = if kind == RAW { RAW_HEADER } else { ZSTD_HEADER };
    match u32_at(buf, 1) {
        Some(len) => kind > ZSTD_CONT || buf.len() >= header + len as usize,
        None => false,
    }
}
