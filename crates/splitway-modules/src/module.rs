//! The module API: one stage's encoder (at the relay that sends a direction
//! onto a leg) and its inverse decoder (at the relay that receives it).
//!
//! A stage works on a direction's byte chunks as they arrive. With each
//! burst it sees a [`LegSnapshot`] (inspection) and may
//! - **transform**: write other bytes for the burst (compress, dedup);
//! - **hold**: keep bytes inside until a later burst or the flush at the end
//!   of the burst (dedup holds the unfinished chunk, zstd its block);
//! - **drop**: consume input and write nothing. No built-in drops bytes of
//!   the stream (every one is lossless); what the relay may drop or
//!   re-encode is input not yet given to a stage (see `docs/architecture.md`,
//!   "Revocation").
//!
//! Stages talk to their far counterpart with [`Control`] messages (MODULE
//! frames): dedup's decoder asks for chunks it does not have and
//! acknowledges references, its encoder answers.

use crate::error::ModuleError;
use crate::state::LegSnapshot;

/// A message from one stage to its counterpart at the far relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The stage's index in the chain (0 = first encoder, last decoder).
    pub stage: u8,
    pub msg: Vec<u8>,
}

/// What a chain call produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Stream bytes: encoded (for DATA frames) or decoded (for the socket).
    pub data: Vec<u8>,
    /// Messages for the far relay's stages (MODULE frames). From an encoder
    /// chain they travel with the direction; from a decoder chain, against it.
    pub control: Vec<Control>,
}

impl Output {
    pub fn clear(&mut self) {
        self.data.clear();
        self.control.clear();
    }
}

/// One stage at the sending relay.
pub trait Encoder: Send {
    /// The module's name, as in the config.
    fn name(&self) -> &'static str;
    /// Encodes a burst of the direction's bytes. `flush`: the source has
    /// nothing more for now, so nothing may stay held (latency must not
    /// grow). Stream bytes go to `out`, control messages to `ctl`.
    fn encode(
        &mut self,
        input: &[u8],
        flush: bool,
        state: &LegSnapshot,
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError>;
    /// A control message from this stage's far decoder.
    fn control(&mut self, msg: &[u8], ctl: &mut Vec<Vec<u8>>) -> Result<(), ModuleError>;
    /// The far decoder can ask nothing more of this stage (dedup: every
    /// reference sent was acknowledged). The relay closes the leg only then.
    fn idle(&self) -> bool {
        true
    }
    /// On a soft flush ([`crate::chain::Flush::Soft`]: the source streams
    /// and more is due soon) this stage may keep its unfinished unit (dedup:
    /// the current chunk, which would otherwise cross as bytes even when the
    /// far side has it) and gets `flush = false`; the stages after it flush.
    fn keeps_unit_on_soft_flush(&self) -> bool {
        false
    }
    /// Pass-through: the next bytes would leave this stage unchanged, and it
    /// holds nothing. When every stage says so, the relay may send them as
    /// plain records past both chains (spliced, never in user space) and
    /// calls [`Encoder::passed`] instead of [`Encoder::encode`]. Default: no.
    fn passes_through(&self) -> bool {
        false
    }
    /// `n` bytes went past this stage unchanged (after
    /// [`Encoder::passes_through`] said yes): account for them as if
    /// encoded, with the leg state of that moment.
    fn passed(&mut self, _n: usize, _state: &LegSnapshot) {}
    /// Passes every byte unchanged, always (`null`): the relay may then
    /// lift the leg's low-water mark, as no byte will ever be re-encoded.
    fn always_passes(&self) -> bool {
        false
    }
}

/// One stage at the receiving relay: the inverse of an [`Encoder`].
pub trait Decoder: Send {
    fn name(&self) -> &'static str;
    /// Decodes bytes as they arrive (any split). Decoded bytes go to `out`,
    /// control messages for the far encoder to `ctl`.
    fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError>;
    /// A control message from this stage's far encoder; may release bytes
    /// the decoder was holding.
    fn control(
        &mut self,
        msg: &[u8],
        out: &mut Vec<u8>,
        ctl: &mut Vec<Vec<u8>>,
    ) -> Result<(), ModuleError>;
    /// Bytes received but not yet decodable (waiting for a control message).
    fn waiting(&self) -> bool {
        false
    }
    /// Input kept back by the output budget of the last call, decodable now:
    /// call [`Decoder::decode`] again with no new input after the output
    /// was written.
    fn has_pending(&self) -> bool {
        false
    }
    /// The direction ended cleanly: an error if it ended inside a record or
    /// while bytes were still waiting.
    fn finish(&mut self) -> Result<(), ModuleError>;
}
