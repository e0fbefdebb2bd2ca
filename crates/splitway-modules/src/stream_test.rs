//! Synthetic inputs shared by tests, examples and benches: a stream for the
//! store-bound check (a test at 48 MiB, the `store_bound` example at 2 GiB),
//! fresh bytes mixed with repeats of earlier blocks, so the store both fills
//! and hits; and leg states for the adaptive stages.

use crate::state::{LegSnapshot, TcpSnapshot};

/// A relay leg whose sink is the bottleneck: 150 KB unsent on a 200 KB
/// window (`LegSnapshot::sink_backlogged`).
pub fn backlogged_leg() -> LegSnapshot {
    LegSnapshot {
        sink: TcpSnapshot {
            cwnd_bytes: 200_000,
            notsent_bytes: 150_000,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Block `i` of the stream: every fourth block repeats block `i / 2`.
pub fn block(i: u64, len: usize) -> Vec<u8> {
    let seed = if i % 4 == 3 { i / 2 } else { i };
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}
