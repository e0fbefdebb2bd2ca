//! Fuzz target: the `compress` module's decoder (records in any split), fed
//! as DATA frames would feed it, drained as the relay drains it. Anything
//! may be an error; nothing may panic or decode past the output bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitway_modules::compress::{OUT_BUDGET, RECORD_MAX};
use splitway_modules::{ChainSpec, DecoderChain, Output, Stores};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let Ok(spec) = ChainSpec::from_names(&["compress"]) else { return };
    let Ok(mut dec) = DecoderChain::new(&spec, &Stores::new(1 << 20)) else { return };
    for frame in input.chunks(usize::from(split).max(1) * 16) {
        let mut out = Output::default();
        if dec.decode(frame, &mut out).is_err() {
            return;
        }
        assert!(out.data.len() <= OUT_BUDGET + RECORD_MAX);
        while dec.has_pending() {
            let mut out = Output::default();
            if dec.drain(&mut out).is_err() {
                return;
            }
            assert!(out.data.len() <= OUT_BUDGET + RECORD_MAX);
        }
    }
    let _ = dec.finish();
});
