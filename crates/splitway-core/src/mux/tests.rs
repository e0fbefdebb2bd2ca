//! The lane state machine driven with plain values: two ends wired back to
//! back, or one end fed hand-made frames.

use super::*;
use crate::frame::{decode, Frame};

fn cfg() -> LaneConfig {
    LaneConfig {
        initial_window: 1000,
        max_streams: 4,
        quantum: 100,
        first_bytes: 50,
        first_quantum: 50,
        age_weight: 1,
        age_bytes: AGE_BYTES,
    }
}

fn to(dst: &str) -> Open<'static> {
    Open {
        dst: dst.parse().unwrap(),
        hop_limit: 8,
        ext: b"",
    }
}

/// Move everything `from` wants to send into `to`.
fn pump(from: &mut Lane, to: &mut Lane) -> Result<usize, LaneError> {
    let mut out = Vec::new();
    from.poll_transmit(&mut out, usize::MAX);
    to.recv(&out)?;
    Ok(out.len())
}

fn events(l: &mut Lane) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

/// Data, End and Reset events only (Sent, Ready are bookkeeping).
fn flow_events(l: &mut Lane) -> Vec<Event> {
    events(l)
        .into_iter()
        .filter(|e| !matches!(e, Event::Sent { .. } | Event::Ready(_)))
        .collect()
}

/// Frames in `bytes`, as (type name, stream) pairs.
fn frames(bytes: &[u8]) -> Vec<(String, u32)> {
    let mut at = 0;
    let mut v = Vec::new();
    while let Ok(Some((f, n))) = decode(&bytes[at..]) {
        let s = match f {
            Frame::Data { stream, .. } => ("DATA", stream),
            Frame::Open { stream, .. } => ("OPEN", stream),
            Frame::End { stream, .. } => ("END", stream),
            Frame::Abort { stream, .. } => ("ABORT", stream),
            Frame::Window { stream, .. } => ("WINDOW", stream),
            Frame::Module { stream, .. } => ("MODULE", stream),
            Frame::Ping(_) => ("PING", 0),
            Frame::Pong(_) => ("PONG", 0),
            Frame::Settings(_) => ("SETTINGS", 0),
        };
        v.push((s.0.to_string(), s.1));
        at += n;
    }
    v
}

/// A connected pair after the SETTINGS exchange.
fn pair() -> (Lane, Lane) {
    let mut a = Lane::new(Role::Initiator, cfg());
    let mut b = Lane::new(Role::Acceptor, cfg());
    pump(&mut a, &mut b).unwrap();
    pump(&mut b, &mut a).unwrap();
    assert!(matches!(events(&mut a)[..], [Event::Ready(_)]));
    assert!(matches!(events(&mut b)[..], [Event::Ready(_)]));
    (a, b)
}

/// A connected pair with lane config `c` and `n` streams opened by the
/// initiator (to 10.0.0.1, 10.0.0.2, …).
fn opened(c: LaneConfig, n: u8) -> (Lane, Lane, Vec<u32>) {
    let mut a = Lane::new(Role::Initiator, c);
    let mut b = Lane::new(Role::Acceptor, c);
    pump(&mut a, &mut b).unwrap();
    pump(&mut b, &mut a).unwrap();
    let ids = (0..n)
        .map(|i| a.open(to(&format!("10.0.0.{}:80", i + 1))).unwrap())
        .collect();
    (a, b, ids)
}

/// An acceptor that has the peer's SETTINGS, and the bytes it sent so far.
fn acceptor() -> Lane {
    let mut b = Lane::new(Role::Acceptor, cfg());
    let mut s = Vec::new();
    Frame::Settings(Settings {
        initial_window: 1000,
        max_streams: 4,
    })
    .encode(&mut s);
    b.recv(&s).unwrap();
    let mut sink = Vec::new();
    b.poll_transmit(&mut sink, usize::MAX);
    events(&mut b);
    b
}

fn enc(f: Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    assert!(f.encode(&mut v));
    v
}

fn open_frame(id: u32) -> Vec<u8> {
    enc(Frame::Open {
        stream: id,
        open: to("10.0.0.1:80"),
    })
}

fn data_frame(id: u32, bytes: &[u8]) -> Vec<u8> {
    enc(Frame::Data {
        stream: id,
        flags: 0,
        payload: bytes,
    })
}

#[test]
fn settings_come_first_and_gate_opening() {
    let mut a = Lane::new(Role::Initiator, cfg());
    assert_eq!(a.open(to("10.0.0.1:80")), Err(OpenError::NotReady));
    let mut out = Vec::new();
    a.poll_transmit(&mut out, usize::MAX);
    assert_eq!(frames(&out), [("SETTINGS".to_string(), 0)]);
    // An acceptor never opens.
    let (_, mut b) = pair();
    assert_eq!(b.open(to("10.0.0.1:80")), Err(OpenError::NotInitiator));
}

#[test]
fn a_stream_carries_bytes_both_ways_and_ends_cleanly() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    assert!(a.send(id, b"GET /"));
    a.finish(id);
    pump(&mut a, &mut b).unwrap();
    assert_eq!(
        flow_events(&mut b),
        [
            Event::Opened {
                stream: id,
                dst: "10.0.0.1:80".parse().unwrap(),
                hop_limit: 8,
                ext: vec![]
            },
            Event::Data {
                stream: id,
                bytes: b"GET /".to_vec()
            },
            Event::End { stream: id }
        ]
    );
    assert!(b.send(id, b"200 OK"));
    b.finish(id);
    pump(&mut b, &mut a).unwrap();
    assert_eq!(
        flow_events(&mut a),
        [
            Event::Data {
                stream: id,
                bytes: b"200 OK".to_vec()
            },
            Event::End { stream: id }
        ]
    );
    assert_eq!((a.streams(), b.streams()), (0, 0), "both ends forget it");
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    a.finish(id);
    pump(&mut a, &mut b).unwrap();
    events(&mut b);
    assert!(!a.send(id, b"late"), "a finished direction takes no bytes");
    // The other way still flows, many times.
    for _ in 0..3 {
        assert!(b.send(id, b"more"));
        pump(&mut b, &mut a).unwrap();
    }
    assert_eq!(flow_events(&mut a).len(), 3);
    assert_eq!(a.streams(), 1);
}

#[test]
fn a_sender_stops_at_the_window_and_resumes_on_credit() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    a.send(id, &[7u8; 2500]);
    pump(&mut a, &mut b).unwrap();
    let got: usize = flow_events(&mut b)
        .iter()
        .map(|e| match e {
            Event::Data { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, 1000, "exactly the initial window");
    assert_eq!(a.queued(id), 1500);
    // Nothing more without credit.
    assert_eq!(pump(&mut a, &mut b).unwrap(), 0);
    // The receiver writes 400: below half a window, no WINDOW yet.
    b.consumed(id, 400);
    assert_eq!(pump(&mut b, &mut a).unwrap(), 0);
    b.consumed(id, 100);
    pump(&mut b, &mut a).unwrap();
    pump(&mut a, &mut b).unwrap();
    let got: usize = flow_events(&mut b)
        .iter()
        .map(|e| match e {
            Event::Data { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, 500, "the credit returned, no more");
}

#[test]
fn a_stalled_stream_does_not_stop_the_others() {
    let (mut a, mut b) = pair();
    let slow = a.open(to("10.0.0.1:80")).unwrap();
    let fast = a.open(to("10.0.0.2:80")).unwrap();
    a.send(slow, &[1u8; 5000]);
    a.send(fast, &[2u8; 5000]);
    let mut fast_got = 0;
    for _ in 0..50 {
        pump(&mut a, &mut b).unwrap();
        for e in events(&mut b) {
            if let Event::Data { stream, bytes } = e {
                if stream == fast {
                    fast_got += bytes.len();
                    b.consumed(fast, bytes.len());
                }
                // The slow stream's reader never consumes.
            }
        }
        pump(&mut b, &mut a).unwrap();
    }
    assert_eq!(fast_got, 5000, "the fast stream finished");
    assert_eq!(a.queued(slow), 4000, "the slow one stopped at its window");
}

#[test]
fn new_streams_first_bytes_go_before_a_bulk_streams_next_quantum() {
    let (mut a, mut b) = pair();
    let bulk = a.open(to("10.0.0.1:80")).unwrap();
    a.send(bulk, &[0u8; 900]);
    // The bulk stream's first bytes go out.
    let mut out = Vec::new();
    a.poll_transmit(&mut out, 60);
    b.recv(&out).unwrap();
    // A new flow arrives while the bulk stream still has 850 bytes queued.
    let small = a.open(to("10.0.0.2:80")).unwrap();
    a.send(small, &[1u8; 40]);
    let mut out = Vec::new();
    a.poll_transmit(&mut out, 1);
    let f = frames(&out);
    assert_eq!(
        f[..2],
        [("OPEN".to_string(), small), ("DATA".to_string(), small)],
        "the new flow goes first: {f:?}"
    );
}

/// A burst of new streams (a hundred small replies at once): every new
/// stream's first quantum goes out before any one's second, so their first
/// bytes are not served in arrival order, whole reply after whole reply.
#[test]
fn a_burst_of_new_streams_takes_turns_at_their_first_bytes() {
    let mut c = cfg();
    c.first_quantum = 20;
    let (mut a, mut b, ids) = opened(c, 3);
    for &id in &ids {
        a.send(id, &[7u8; 80]);
    }
    let mut out = Vec::new();
    a.poll_transmit(&mut out, usize::MAX);
    let mut data: Vec<(u32, usize)> = Vec::new();
    let mut at = 0;
    while let Ok(Some((f, n))) = decode(&out[at..]) {
        if let Frame::Data {
            stream, payload, ..
        } = f
        {
            data.push((stream, payload.len()));
        }
        at += n;
    }
    let (x, y, z) = (ids[0], ids[1], ids[2]);
    // 50 first bytes each in turns of 20, 20, 10; then the rest by the
    // old queue's round robin (30 each, within a quantum of 100).
    assert_eq!(
        data,
        [
            (x, 20),
            (y, 20),
            (z, 20),
            (x, 20),
            (y, 20),
            (z, 20),
            (x, 10),
            (y, 10),
            (z, 10),
            (x, 30),
            (y, 30),
            (z, 30)
        ],
        "{data:?}"
    );
    b.recv(&out).unwrap();
}

#[test]
fn deficit_round_robin_shares_bytes_evenly() {
    let mut c = cfg();
    c.initial_window = 100_000;
    let (mut a, mut b, ids) = opened(c, 3);
    for &id in &ids {
        a.send(id, &[0u8; 10_000]);
    }
    // 30 turns of 100 bytes after the first 50: every stream within one
    // quantum of the others.
    let mut out = Vec::new();
    a.poll_transmit(&mut out, 150 + 30 * 108);
    b.recv(&out).unwrap();
    let mut per = HashMap::new();
    for e in events(&mut b) {
        if let Event::Data { stream, bytes } = e {
            *per.entry(stream).or_insert(0usize) += bytes.len();
        }
    }
    let (min, max) = (*per.values().min().unwrap(), *per.values().max().unwrap());
    assert_eq!(per.len(), 3);
    assert!(max - min <= 100, "{per:?}");
    assert!(min >= 900, "{per:?}");
}

/// Four equal streams queued at once on a lane with age weight `w` (and
/// bulk from `age_bytes`): for each stream in opening order, how many bytes
/// had crossed in all when its last byte crossed; and the total.
fn completions(w: u32, age_bytes: u64) -> (Vec<usize>, usize) {
    let mut c = cfg();
    c.initial_window = 100_000;
    c.age_weight = w;
    c.age_bytes = age_bytes;
    let (mut a, mut b, ids) = opened(c, 4);
    for &id in &ids {
        a.send(id, &[0u8; 4000]);
    }
    let (mut per, mut done, mut total) = (HashMap::new(), HashMap::new(), 0usize);
    for _ in 0..10_000 {
        let mut out = Vec::new();
        if !a.poll_transmit(&mut out, 1) {
            break;
        }
        b.recv(&out).unwrap();
        for e in events(&mut b) {
            if let Event::Data { stream, bytes } = e {
                total += bytes.len();
                let got = per.entry(stream).or_insert(0usize);
                *got += bytes.len();
                if *got == 4000 {
                    done.insert(stream, total);
                }
            }
        }
    }
    (ids.iter().map(|id| done[id]).collect(), total)
}

#[test]
fn equal_shares_end_a_burst_together() {
    let (done, total) = completions(1, AGE_BYTES);
    assert_eq!(total, 16_000);
    // Everyone ends within the last round.
    assert!(done.iter().all(|&d| d > total - 4 * 100), "{done:?}");
}

#[test]
fn age_weighting_ends_a_burst_in_arrival_order_and_the_last_no_later() {
    let (done, total) = completions(8, AGE_BYTES);
    assert_eq!(total, 16_000);
    assert!(
        done.windows(2).all(|p| p[0] < p[1]),
        "oldest first: {done:?}"
    );
    assert_eq!(done[3], total, "work-conserving: the last ends at the end");
    // While all four send, turns are 800, 566, 333 and 100 bytes: the
    // oldest gets 44 % and ends after about 8 KB of the 16 (8.1 here),
    // where equal shares end it after more than 15.6.
    assert!(done[0] < total * 6 / 10, "{done:?}");
    // The youngest still moved every round: it had sent something before
    // the oldest ended.
    assert!(done[1] < done[3] && done[2] < done[3]);
}

#[test]
fn an_old_stream_may_queue_its_whole_turn() {
    let mut c = cfg();
    c.age_weight = 8;
    let (a, _, ids) = opened(c, 3);
    // Turns of 800, 450 and 100 bytes (quantum 100): the buffer is the
    // larger of that and the base.
    assert_eq!(a.send_buffer(ids[0], 64), 800);
    assert_eq!(a.send_buffer(ids[1], 64), 450);
    assert_eq!(a.send_buffer(ids[2], 64), 100);
    assert_eq!(a.send_buffer(ids[2], 1000), 1000);
    // Off: the base for everyone.
    let (a, _) = pair();
    assert_eq!(a.send_buffer(1, 64), 64);
}

#[test]
fn bulk_streams_past_age_bytes_share_equally_again() {
    // Every stream is bulk from its first byte: the weighting is off.
    let (done, total) = completions(8, 1);
    assert!(done.iter().all(|&d| d > total - 4 * 100), "{done:?}");
}

#[test]
fn stream_limit_refuses_the_extra_stream_and_keeps_the_rest() {
    let mut b = acceptor();
    let mut input = Vec::new();
    for id in 1..=5 {
        input.extend(open_frame(id));
    }
    b.recv(&input).unwrap();
    let ev = events(&mut b);
    assert!(ev.contains(&Event::Fault {
        stream: 5,
        fault: Fault::StreamLimit
    }));
    assert_eq!(b.streams(), 4);
    let mut out = Vec::new();
    b.poll_transmit(&mut out, usize::MAX);
    assert_eq!(frames(&out), [("ABORT".to_string(), 5)]);
    // The initiator also refuses to open past the peer's limit.
    let (mut a, _) = pair();
    for _ in 0..4 {
        a.open(to("10.0.0.1:80")).unwrap();
    }
    assert_eq!(a.open(to("10.0.0.1:80")), Err(OpenError::Full));
    assert!(!a.can_open());
}

#[test]
fn reused_unknown_and_closed_ids_are_counted_and_reset_only_that_stream() {
    let mut b = acceptor();
    let mut input = open_frame(1);
    input.extend(open_frame(2));
    input.extend(open_frame(2)); // reused: stream 2 is reset
    input.extend(data_frame(9, b"x")); // never opened
    input.extend(data_frame(1, b"ok"));
    b.recv(&input).unwrap();
    let ev = events(&mut b);
    assert!(ev.contains(&Event::Fault {
        stream: 2,
        fault: Fault::Reused
    }));
    assert!(ev.contains(&Event::Reset {
        stream: 2,
        code: AbortCode::Protocol
    }));
    assert!(ev.contains(&Event::Fault {
        stream: 9,
        fault: Fault::Unknown
    }));
    assert!(ev.contains(&Event::Data {
        stream: 1,
        bytes: b"ok".to_vec()
    }));
    // Data for stream 2 now: it was opened and is gone; counted, not answered.
    b.recv(&data_frame(2, b"late")).unwrap();
    assert_eq!(
        events(&mut b),
        [Event::Fault {
            stream: 2,
            fault: Fault::Closed
        }]
    );
    let mut out = Vec::new();
    b.poll_transmit(&mut out, usize::MAX);
    assert_eq!(
        frames(&out),
        [("ABORT".to_string(), 2), ("ABORT".to_string(), 9)]
    );
    assert_eq!(b.streams(), 1);
    assert!(b.broken().is_none());
}

#[test]
fn window_violation_resets_the_stream() {
    let mut b = acceptor();
    let mut input = open_frame(1);
    input.extend(open_frame(3));
    input.extend(data_frame(1, &[0u8; 1001]));
    input.extend(data_frame(3, &[0u8; 1000]));
    b.recv(&input).unwrap();
    let ev = events(&mut b);
    assert!(ev.contains(&Event::Fault {
        stream: 1,
        fault: Fault::WindowExceeded
    }));
    assert!(ev.contains(&Event::Reset {
        stream: 1,
        code: AbortCode::FlowControl
    }));
    assert_eq!(b.streams(), 1, "stream 3 used exactly its window and lives");
}

#[test]
fn data_after_end_and_a_wrong_end_total_reset_the_stream() {
    let mut b = acceptor();
    let mut input = open_frame(1);
    input.extend(data_frame(1, b"abc"));
    input.extend(enc(Frame::End {
        stream: 1,
        total: 3,
    }));
    input.extend(data_frame(1, b"more"));
    input.extend(open_frame(2));
    input.extend(data_frame(2, b"abc"));
    input.extend(enc(Frame::End {
        stream: 2,
        total: 4,
    }));
    b.recv(&input).unwrap();
    let faults: Vec<_> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Fault { stream, fault } => Some((stream, fault)),
            _ => None,
        })
        .collect();
    assert_eq!(faults, [(1, Fault::DataAfterEnd), (2, Fault::EndMismatch)]);
    assert_eq!(b.streams(), 0);
}

#[test]
fn credit_overflow_resets_the_stream() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    pump(&mut a, &mut b).unwrap();
    a.recv(&enc(Frame::Window {
        stream: id,
        credit: u32::MAX,
    }))
    .unwrap();
    assert!(events(&mut a).contains(&Event::Fault {
        stream: id,
        fault: Fault::CreditOverflow
    }));
    assert_eq!(a.streams(), 0);
}

#[test]
fn an_acceptor_that_opens_is_refused_per_stream() {
    let (mut a, _) = pair();
    a.recv(&open_frame(7)).unwrap();
    assert!(events(&mut a).contains(&Event::Fault {
        stream: 7,
        fault: Fault::OpenFromAcceptor
    }));
}

#[test]
fn broken_framing_and_bad_settings_break_the_lane() {
    let mut b = Lane::new(Role::Acceptor, cfg());
    assert_eq!(b.recv(&open_frame(1)), Err(LaneError::SettingsMissing));
    assert_eq!(b.recv(&[]), Err(LaneError::SettingsMissing), "stays broken");

    let mut b = acceptor();
    let mut s = Vec::new();
    Frame::Settings(Settings {
        initial_window: 1,
        max_streams: 1,
    })
    .encode(&mut s);
    assert_eq!(b.recv(&s), Err(LaneError::SettingsRepeated));

    let mut b = Lane::new(Role::Acceptor, cfg());
    let mut s = Vec::new();
    Frame::Settings(Settings {
        initial_window: 0,
        max_streams: 1,
    })
    .encode(&mut s);
    assert_eq!(b.recv(&s), Err(LaneError::SettingsInvalid));

    let mut b = acceptor();
    let e = b.recv(&[0x7f, 0, 0, 0, 0, 0, 0, 1]).unwrap_err();
    assert_eq!(e.reason(), "frame_type");
    assert_eq!(b.open(to("10.0.0.1:80")), Err(OpenError::Broken));
}

#[test]
fn a_peer_that_pings_without_reading_breaks_the_lane_not_our_memory() {
    let mut b = acceptor();
    // Pings are answered with one PONG (the latest), not one each.
    let mut input = Vec::new();
    for i in 0..10_000u64 {
        input.extend(enc(Frame::Ping(i)));
    }
    b.recv(&input).unwrap();
    let mut out = Vec::new();
    b.poll_transmit(&mut out, usize::MAX);
    assert_eq!(frames(&out), [("PONG".to_string(), 0)]);
    // ABORTs for never-opened streams do pile up: bounded.
    let mut input = Vec::new();
    for id in 1..=30_000u32 {
        input.extend(data_frame(1_000_000 + id, b""));
    }
    assert_eq!(b.recv(&input), Err(LaneError::ControlOverflow));
}

#[test]
fn closing_the_lane_resets_every_stream() {
    let (mut a, _) = pair();
    let ids: Vec<u32> = (0..3).map(|_| a.open(to("10.0.0.1:80")).unwrap()).collect();
    assert_eq!(a.close_all(), ids);
    assert_eq!(a.streams(), 0);
    assert!(!a.wants_to_send());
}

#[test]
fn a_reset_sends_abort_once_and_the_peer_resets_its_flow() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    a.send(id, b"x");
    pump(&mut a, &mut b).unwrap();
    events(&mut b);
    a.reset(id, AbortCode::Reset);
    pump(&mut a, &mut b).unwrap();
    assert_eq!(
        flow_events(&mut b),
        [Event::Reset {
            stream: id,
            code: AbortCode::Reset
        }]
    );
    // A stream reset before its OPEN left sends nothing at all.
    let id2 = a.open(to("10.0.0.1:80")).unwrap();
    a.reset(id2, AbortCode::Reset);
    assert_eq!(pump(&mut a, &mut b).unwrap(), 0);
}

#[test]
fn ping_is_answered_with_pong() {
    let (mut a, mut b) = pair();
    a.ping(42);
    pump(&mut a, &mut b).unwrap();
    pump(&mut b, &mut a).unwrap();
    assert_eq!(events(&mut a), [Event::Pong(42)]);
}

#[test]
fn module_frames_pass_through() {
    let (mut a, mut b) = pair();
    assert!(a.module(0, 3, b"zstd:3"));
    pump(&mut a, &mut b).unwrap();
    assert_eq!(
        events(&mut b),
        [Event::Module {
            stream: 0,
            flags: 3,
            payload: b"zstd:3".to_vec()
        }]
    );
}

#[test]
fn sent_events_report_bytes_leaving_the_queue() {
    let (mut a, mut b) = pair();
    let id = a.open(to("10.0.0.1:80")).unwrap();
    a.send(id, &[0u8; 300]);
    pump(&mut a, &mut b).unwrap();
    let sent: usize = events(&mut a)
        .iter()
        .map(|e| match e {
            Event::Sent { bytes, .. } => *bytes,
            _ => 0,
        })
        .sum();
    assert_eq!(sent, 300);
    assert_eq!(a.queued_total(), 0);
}

mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    /// A frame from a few kinds and small stream ids, so rules collide.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        (0u8..8, 1u32..6, 0usize..1200, any::<u32>()).prop_map(|(k, id, n, x)| {
            let payload = vec![0u8; n];
            enc(match k {
                0 | 1 => Frame::Data {
                    stream: id,
                    flags: 0,
                    payload: &payload,
                },
                2 => Frame::Open {
                    stream: id,
                    open: to("10.0.0.1:80"),
                },
                3 => Frame::End {
                    stream: id,
                    total: u64::from(x % 2000),
                },
                4 => Frame::Abort {
                    stream: id,
                    code: AbortCode::Reset,
                },
                5 => Frame::Window {
                    stream: id,
                    credit: x.max(1),
                },
                6 => Frame::Ping(u64::from(x)),
                _ => Frame::Module {
                    stream: id,
                    flags: 0,
                    payload: &payload[..n.min(10)],
                },
            })
        })
    }

    proptest! {
        #[test]
        fn any_frame_sequence_keeps_the_bounds(frames in proptest::collection::vec(any_frame(), 0..60),
                                               initiator in any::<bool>()) {
            let mut l = if initiator {
                let (mut a, _) = pair();
                for _ in 0..3 {
                    a.open(to("10.0.0.1:80")).unwrap();
                }
                a
            } else {
                acceptor()
            };
            for f in &frames {
                if l.recv(f).is_err() {
                    break;
                }
                prop_assert!(l.streams() <= 4);
                while let Some(e) = l.poll_event() {
                    if let Event::Data { stream, bytes } = e {
                        prop_assert!(bytes.len() <= 1000, "never more than a window");
                        l.send(stream, &bytes);
                    }
                }
                let mut out = Vec::new();
                l.poll_transmit(&mut out, 4096);
                let mut d = Decoder::new();
                d.push(&out);
                while d.next_frame().unwrap().is_some() {}
                prop_assert_eq!(d.buffered(), 0);
            }
        }
    }
}
