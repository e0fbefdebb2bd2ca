//! `dedup`: content seen before crosses the leg as a reference.
//!
//! The encoder cuts the direction into content-defined chunks
//! ([`chunker`], FastCDC with a Gear hash: 2 KiB min, 8 KiB average,
//! 64 KiB max), names each by SHA-256, and sends a chunk the far relay is
//! believed to hold as a 33-byte reference. Both relays of a peer pair keep
//! a bounded store ([`store`]), shared by every flow between them, so the
//! second download of a file through the pair crosses as references.
//!
//! Stream ops (in DATA frames):
//!
//! ```text
//! DATA  0x01  len:u32le  bytes[len]   output bytes; also the next bytes of the current chunk
//! CUT   0x02                          the current chunk is complete: store it
//! REF   0x03  sha256[32]              the chunk with this hash: output what the DATA
//!                                     ops since the last CUT/REF did not already give
//! ```
//!
//! A burst's unfinished chunk leaves as DATA at the flush (latency does not
//! grow); when the chunk completes later, a REF still names it and the
//! decoder checks that the bytes it already has are the chunk's prefix.
//!
//! Control ops (MODULE frames):
//!
//! ```text
//! ACK     0x01  resolved:u64le             decoder → encoder: references resolved so far
//! ASK     0x02  sha256[32]                 decoder → encoder: I do not have this chunk
//! ANSWER  0x03  sha256[32]  bytes          encoder → decoder: the chunk's bytes
//! ```
//!
//! Recovery: the encoder keeps the bytes of every reference it sent until
//! the decoder acknowledges it (bounded per flow; past the bound it sends
//! bytes instead of references), so an ASK (far relay restarted, evicted the
//! chunk, or another flow's chunk has not arrived yet) is always answered.
//! The decoder holds the input behind the unknown reference until the
//! answer, whose hash it checks. Nothing is lost or corrupted; a peer that
//! breaks these rules gets a typed error, and its leg is reset.

pub mod chunker;
mod decoder;
mod encoder;
pub mod store;

pub use decoder::DedupDecoder;
pub use encoder::{DedupEncoder, DedupStats};
pub use store::{ChunkStore, DedupStores, SentModel};

/// A chunk's name.
pub type Hash = [u8; 32];

pub const OP_DATA: u8 = 0x01;
pub const OP_CUT: u8 = 0x02;
pub const OP_REF: u8 = 0x03;
pub const CTL_ACK: u8 = 0x01;
pub const CTL_ASK: u8 = 0x02;
pub const CTL_ANSWER: u8 = 0x03;

/// Input bytes the decoder holds behind an unknown reference at most.
pub const PARK_LIMIT: usize = 64 << 20;
/// Bytes of referenced chunks one encoder keeps until acknowledged, at most.
pub const PIN_LIMIT: usize = 16 << 20;
/// Output bytes one `decode` call produces at most.
pub const OUT_BUDGET: usize = 4 << 20;
/// Store accounting per chunk beyond its bytes (map entry, queue slot).
pub const ENTRY_OVERHEAD: usize = 128;
/// The default store size per peer pair and side.
pub const DEFAULT_STORE_BYTES: u64 = 256 << 20;

pub(crate) fn sha256(data: &[u8]) -> Hash {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
