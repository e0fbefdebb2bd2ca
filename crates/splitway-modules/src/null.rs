//! `null`: passes every byte through the module path unchanged. Its cost
//! against the zero-copy engine is the price of the path itself (ModNet's
//! dummy module), a benchmark row in `docs/performance.md`.

use crate::error::ModuleError;
use crate::module::{Decoder, Encoder};
use crate::state::LegSnapshot;

#[derive(Debug, Default)]
pub struct NullEncoder;

#[derive(Debug, Default)]
pub struct NullDecoder;

impl Encoder for NullEncoder {
    fn name(&self) -> &'static str {
        "null"
    }
    fn encode(
        &mut self,
        input: &[u8],
        _flush: bool,
        _state: &LegSnapshot,
        out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        out.extend_from_slice(input);
        Ok(())
    }
    fn control(&mut self, _msg: &[u8], _ctl: &mut Vec<Vec<u8>>) -> Result<(), ModuleError> {
        Err(ModuleError::BadControl { module: "null" })
    }
    fn passes_through(&self) -> bool {
        true
    }
    fn always_passes(&self) -> bool {
        true
    }
}

impl Decoder for NullDecoder {
    fn name(&self) -> &'static str {
        "null"
    }
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        out.extend_from_slice(input);
        Ok(())
    }
    fn control(
        &mut self,
        _msg: &[u8],
        _out: &mut Vec<u8>,
        _ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError> {
        Err(ModuleError::BadControl { module: "null" })
    }
    fn finish(&mut self) -> Result<(), ModuleError> {
        Ok(())
    }
}
