//! Fuzz the v2 frame decoder (`frame::decode`, `frame::Decoder`).
//!
//! Properties checked on every input:
//! 1. `decode` never panics, never claims more bytes than it was given or
//!    than a frame can hold, and whatever it accepts re-encodes to exactly
//!    the bytes it read (one encoding per frame).
//! 2. The incremental `Decoder`, fed the same bytes cut at points the input
//!    chooses, yields the same frames and the same first error as decoding
//!    the whole input frame by frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitway_core::frame::{self, Decoder, MAX_FRAME};

/// Decode `data` frame by frame in one go: the frames' bytes, and the error
/// that stopped it (if any).
fn whole(data: &[u8]) -> (Vec<Vec<u8>>, Option<frame::FrameError>) {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        match frame::decode(&data[at..]) {
            Ok(Some((f, n))) => {
                assert!(n <= data.len() - at && n <= MAX_FRAME);
                let mut again = Vec::new();
                assert!(f.encode(&mut again), "decoded frame does not encode: {f:?}");
                assert_eq!(again.as_slice(), &data[at..at + n], "non-canonical frame");
                assert_eq!(f.encoded_len(), n);
                out.push(again);
                at += n;
            }
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(e)),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte chooses the cut size for the incremental decoder.
    let Some((&cut, data)) = input.split_first() else {
        return;
    };
    let cut = usize::from(cut % 64) + 1;
    let (frames, err) = whole(data);

    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut got_err = None;
    'feed: for chunk in data.chunks(cut) {
        d.push(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    let mut v = Vec::new();
                    assert!(f.encode(&mut v));
                    got.push(v);
                }
                Ok(None) => break,
                Err(e) => {
                    got_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, frames, "incremental decoder disagrees");
    assert_eq!(got_err, err, "incremental decoder reports another error");
    assert!(d.buffered() <= data.len());
});
