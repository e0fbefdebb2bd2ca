//! Fuzz the v2 frame decoder (`frame::decode`, `frame::Decoder`) and the
//! stream layer on top of it (`mux::Lane`).
//!
//! Properties checked on every input:
//! 1. `decode` never panics, never claims more bytes than it was given or
//!    than a frame can hold, and whatever it accepts re-encodes to exactly
//!    the bytes it read (one encoding per frame).
//! 2. The incremental `Decoder`, fed the same bytes cut at points the input
//!    chooses, yields the same frames and the same first error as decoding
//!    the whole input frame by frame.
//! 3. Fed by exact reads (`Decoder::next_read` bytes at a time, as the
//!    module engine reads a leg that carries spliced plain records), with
//!    `bare_head` asked after every read, the decoder yields the same frames
//!    and the same first error; a bare header it returns is the next frame's.
//! 4. A lane end of either role, given a valid SETTINGS and then the input,
//!    never panics, keeps at most its stream limit, and everything it sends
//!    back decodes as valid frames (it echoes data to drive its scheduler).
#![no_main]

use libfuzzer_sys::fuzz_target;
use splitway_core::frame::{self, Decoder, Frame, Settings, MAX_FRAME};
use splitway_core::mux::{Event, Lane, LaneConfig, Role};

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

    // 3. Exact reads, as a splicing receiver does them.
    let mut d = Decoder::new();
    let mut got = Vec::new();
    let mut got_err = None;
    let mut at = 0;
    'exact: while at < data.len() {
        let n = d.next_read().clamp(1, data.len() - at);
        d.push(&data[at..at + n]);
        at += n;
        match d.bare_head() {
            Ok(Some(h)) => assert_eq!(d.buffered(), frame::HEADER_LEN, "{h:?}"),
            Ok(None) => {}
            Err(e) => {
                got_err = Some(e);
                break 'exact;
            }
        }
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
                    break 'exact;
                }
            }
        }
    }
    assert_eq!(got, frames, "exact reads: decoder disagrees");
    assert_eq!(got_err, err, "exact reads: another error");

    // 4. The stream layer.
    let cfg = LaneConfig {
        initial_window: 4096,
        max_streams: 8,
        quantum: 512,
        first_bytes: 256,
        first_quantum: 128,
        // Age-weighted turns, and streams that turn bulk early: both paths.
        age_weight: 4,
        age_bytes: 2048,
    };
    let mut settings = Vec::new();
    Frame::Settings(Settings {
        initial_window: 4096,
        max_streams: 8,
    })
    .encode(&mut settings);
    for role in [Role::Acceptor, Role::Initiator] {
        let mut lane = Lane::new(role, cfg);
        let _ = lane.recv(&settings);
        if role == Role::Initiator {
            for i in 0..3u16 {
                let dst = std::net::SocketAddr::from(([10, 0, 0, 1], 80 + i));
                let _ = lane.open(frame::Open {
                    dst,
                    hop_limit: 8,
                    ext: b"",
                });
            }
        }
        for chunk in data.chunks(cut) {
            if lane.recv(chunk).is_err() {
                assert!(lane.recv(b"").is_err(), "a broken lane stays broken");
                break;
            }
            while let Some(e) = lane.poll_event() {
                if let Event::Data { stream, bytes } = e {
                    lane.consumed(stream, bytes.len());
                    lane.send(stream, &bytes);
                }
            }
            assert!(lane.streams() <= 8);
            let mut out = Vec::new();
            lane.poll_transmit(&mut out, 4096);
            let mut d = Decoder::new();
            d.push(&out);
            while let Some(_f) = d.next_frame().expect("the lane sent a bad frame") {}
            assert_eq!(d.buffered(), 0, "the lane sent a partial frame");
        }
    }
});
