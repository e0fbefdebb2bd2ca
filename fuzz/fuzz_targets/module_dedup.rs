//! Fuzz target: the `dedup` module's decoder, with stream bytes and control
//! messages (answers) interleaved as a leg would deliver them:
//! `[tag][len:u16le][bytes]...`, tag even = DATA bytes, odd = a MODULE
//! message for stage 0. Anything may be an error; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitway_modules::dedup::OUT_BUDGET;
use splitway_modules::{ChainSpec, DecoderChain, Output, Stores};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = ChainSpec::from_names(&["dedup"]) else { return };
    let Ok(mut dec) = DecoderChain::new(&spec, &Stores::new(1 << 20)) else { return };
    let mut rest = data;
    while rest.len() >= 3 {
        let tag = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let (piece, r) = rest[3..].split_at(len);
        rest = r;
        let mut out = Output::default();
        let res = if tag % 2 == 0 { dec.decode(piece, &mut out) } else { dec.control(0, piece, &mut out) };
        if res.is_err() {
            return;
        }
        while dec.has_pending() {
            let mut out = Output::default();
            if dec.drain(&mut out).is_err() {
                return;
            }
            assert!(out.data.len() <= OUT_BUDGET + (64 << 10));
        }
    }
    let _ = dec.finish();
});
