//! `compress`: streaming zstd, adaptive to the leg (ModNet's adaptive gzip).
//!
//! The encoder cuts a direction into records (at most [`RECORD_MAX`] input
//! bytes each, and one per flush so a burst's bytes leave with the burst):
//!
//! ```text
//! RAW        0x00  len:u32le  bytes[len]
//! ZSTD_NEW   0x01  len:u32le  orig:u32le  zstd[len]   starts a new zstd frame
//! ZSTD_CONT  0x02  len:u32le  orig:u32le  zstd[len]   continues the open frame
//! ```
//!
//! A zstd record is the output of `ZSTD_e_flush` for its input, so the
//! decoder can decode it at once. A record whose zstd output would not be
//! smaller goes RAW (and the next zstd record starts a new frame, since the
//! far decoder never saw those bytes through zstd). The level is chosen per
//! record by [`adapt::Adapt`] from the sink leg's state; a level change
//! starts a new frame (single-threaded zstd can not change level inside one).
//!
//! The decoder bounds everything: a record declares its output (at most
//! [`RECORD_MAX`]), at most [`MAX_RATIO`] bytes per compressed byte, zstd
//! windows at most 2^[`WINDOW_LOG_MAX`] bytes (1 MiB), and at most [`OUT_BUDGET`]
//! bytes of output per call (the rest of the input waits inside).

pub mod adapt;
mod decoder;
mod encoder;

pub use adapt::{Adapt, AdaptConfig};
pub use decoder::CompressDecoder;
pub use encoder::CompressEncoder;

/// Record kinds.
pub const RAW: u8 = 0x00;
pub const ZSTD_NEW: u8 = 0x01;
pub const ZSTD_CONT: u8 = 0x02;
/// The most input bytes one record carries (decoder's bound on `orig`).
pub const RECORD_MAX: usize = 1 << 20;
/// The encoder's record size when a burst is long.
pub const RECORD_TARGET: usize = 128 << 10;
/// The most output bytes per compressed byte a record may declare (zstd's
/// RLE blocks reach about 32 K; beyond that it is a bomb).
pub const MAX_RATIO: u64 = 1 << 15;
/// The largest zstd window (log2) either side uses: 1 MiB. With the hash
/// and chain tables capped at 2^18 entries ([`TABLE_LOG_MAX`]) an encoder
/// holds about 3 MiB at any level, a decoder about 1.2 MiB.
pub const WINDOW_LOG_MAX: u32 = 20;
/// The largest zstd hash and chain tables (log2 entries) the encoder uses.
pub const TABLE_LOG_MAX: u32 = 18;
/// Output bytes one `decode` call produces at most before it stops and
/// keeps the rest of its input for the next call.
pub const OUT_BUDGET: usize = 4 << 20;
/// Header bytes of a RAW record and of a zstd record.
pub const RAW_HEADER: usize = 5;
pub const ZSTD_HEADER: usize = 9;
