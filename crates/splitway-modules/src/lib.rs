//! splitway's stream modules: what a relay may do to a direction's bytes
//! between the two ends of a relay leg (ModNet's delegation, inspection and
//! revocation, carried to an overlay's relay-to-relay links).
//!
//! Sans-IO: no sockets, no clocks. The relay reads a burst from one side,
//! hands it to the direction's [`EncoderChain`] with a [`LegSnapshot`] of
//! both legs' `TCP_INFO`, and sends what comes out in DATA frames; the far
//! relay feeds those bytes to the inverse [`DecoderChain`]. Control messages
//! between a stage's encoder and its far decoder (dedup's ASK, ACK, ANSWER)
//! travel in MODULE frames, in either direction of the leg.
//!
//! Built-ins: [`null`] (the module path with no change), [`compress`]
//! (adaptive streaming zstd), [`dedup`] (content-defined chunks sent once,
//! then by reference). The wire formats are in `docs/wire.md`.

pub mod chain;
pub mod compress;
pub mod dedup;
pub mod error;
pub mod module;
pub mod null;
pub mod state;
#[doc(hidden)]
pub mod stream_test;
mod varint;

pub use chain::{ChainSpec, DecoderChain, EncoderChain, Flush, ModuleKind, Stores};
pub use error::ModuleError;
pub use module::{Control, Decoder, Encoder, Output};
pub use state::{BusyMeter, LegSnapshot, TcpSnapshot};
