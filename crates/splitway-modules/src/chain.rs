//! Chains: the stages configured for a route, in order, at the ingress
//! ([`EncoderChain`], both directions' encoders live at the relay that sends
//! that direction), and the inverse at the far relay ([`DecoderChain`]).
//! [`ChainSpec`] is what the leg header carries so the far relay builds the
//! inverse; [`Stores`] holds what stages share across flows of a peer pair.

use crate::compress::{AdaptConfig, CompressDecoder, CompressEncoder};
use crate::dedup::{DedupDecoder, DedupEncoder, DedupStores};
use crate::error::ModuleError;
use crate::module::{Control, Decoder, Encoder, Output};
use crate::null::{NullDecoder, NullEncoder};
use crate::state::LegSnapshot;

/// The most stages in one chain.
pub const MAX_STAGES: usize = 4;

/// A built-in module. The id is its byte in the leg header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    Null,
    Compress,
    Dedup,
}

impl ModuleKind {
    pub const ALL: [ModuleKind; 3] = [ModuleKind::Null, ModuleKind::Compress, ModuleKind::Dedup];

    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Null => "null",
            ModuleKind::Compress => "compress",
            ModuleKind::Dedup => "dedup",
        }
    }

    pub fn id(self) -> u8 {
        match self {
            ModuleKind::Null => 1,
            ModuleKind::Compress => 2,
            ModuleKind::Dedup => 3,
        }
    }

    pub fn from_name(name: &str) -> Result<Self, ModuleError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| ModuleError::UnknownModule(name.to_string()))
    }

    pub fn from_id(id: u8) -> Result<Self, ModuleError> {
        Self::ALL
            .into_iter()
            .find(|k| k.id() == id)
            .ok_or(ModuleError::UnknownModuleId(id))
    }
}

/// An ordered, validated list of modules (encoding order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainSpec(Vec<ModuleKind>);

impl ChainSpec {
    pub fn new(kinds: Vec<ModuleKind>) -> Result<Self, ModuleError> {
        if kinds.len() > MAX_STAGES {
            return Err(ModuleError::TooMany(kinds.len()));
        }
        for (i, k) in kinds.iter().enumerate() {
            if kinds[..i].contains(k) {
                return Err(ModuleError::Duplicate(k.name()));
            }
        }
        Ok(ChainSpec(kinds))
    }

    /// From config names, e.g. `["dedup", "compress"]`.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, ModuleError> {
        let kinds = names
            .iter()
            .map(|n| ModuleKind::from_name(n.as_ref()))
            .collect::<Result<_, _>>()?;
        Self::new(kinds)
    }

    /// From the leg header's id bytes.
    pub fn from_ids(ids: &[u8]) -> Result<Self, ModuleError> {
        let kinds = ids
            .iter()
            .map(|&i| ModuleKind::from_id(i))
            .collect::<Result<_, _>>()?;
        Self::new(kinds)
    }

    pub fn ids(&self) -> Vec<u8> {
        self.0.iter().map(|k| k.id()).collect()
    }

    pub fn kinds(&self) -> &[ModuleKind] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `dedup+compress`, for logs and metrics labels; `none` if empty.
    pub fn label(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// Settings of the built-ins (from the relay's `[modules]` config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModuleSettings {
    pub compress: AdaptConfig,
}

/// What stages share across the flows of one peer pair.
#[derive(Debug, Clone)]
pub struct Stores {
    pub dedup: DedupStores,
}

impl Stores {
    pub fn new(dedup_store_bytes: u64) -> Self {
        Stores {
            dedup: DedupStores::new(dedup_store_bytes),
        }
    }
}

/// How much an encode call flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// More input follows at once: stages may hold what they like.
    No,
    /// The source has nothing more this moment but streams (more is due
    /// within about one of its RTTs): every stage flushes except those that
    /// keep an unfinished unit ([`Encoder::keeps_unit_on_soft_flush`]).
    Soft,
    /// Nothing may stay held (latency must not grow).
    Hard,
}

/// One direction's encoders, in order.
pub struct EncoderChain {
    stages: Vec<Box<dyn Encoder>>,
    bufs: [Vec<u8>; 2],
    ctl: Vec<Vec<u8>>,
}

impl EncoderChain {
    pub fn new(
        spec: &ChainSpec,
        settings: &ModuleSettings,
        stores: &Stores,
    ) -> Result<Self, ModuleError> {
        let mut stages: Vec<Box<dyn Encoder>> = Vec::new();
        for k in spec.kinds() {
            stages.push(match k {
                ModuleKind::Null => Box::new(NullEncoder),
                ModuleKind::Compress => Box::new(CompressEncoder::new(settings.compress)?),
                ModuleKind::Dedup => Box::new(DedupEncoder::new(stores.dedup.sent.clone())),
            });
        }
        Ok(EncoderChain {
            stages,
            bufs: [Vec::new(), Vec::new()],
            ctl: Vec::new(),
        })
    }

    /// Encodes a burst through every stage; the encoded bytes are appended
    /// to `out.data`, control messages for the far decoders to `out.control`.
    /// `flush`: nothing may stay held ([`Flush::Hard`]).
    pub fn encode(
        &mut self,
        input: &[u8],
        flush: bool,
        state: &LegSnapshot,
        out: &mut Output,
    ) -> Result<(), ModuleError> {
        let f = if flush { Flush::Hard } else { Flush::No };
        self.encode_with(input, f, state, out)
    }

    /// [`EncoderChain::encode`] with a [`Flush`] kind.
    pub fn encode_with(
        &mut self,
        input: &[u8],
        flush: Flush,
        state: &LegSnapshot,
        out: &mut Output,
    ) -> Result<(), ModuleError> {
        let n = self.stages.len();
        if n == 0 {
            out.data.extend_from_slice(input);
            return Ok(());
        }
        let mut src: Option<Vec<u8>> = None;
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let last = i + 1 == n;
            let mut dst = if last {
                std::mem::take(&mut out.data)
            } else {
                std::mem::take(&mut self.bufs[i % 2])
            };
            if !last {
                dst.clear();
            }
            let f = match flush {
                Flush::No => false,
                Flush::Hard => true,
                Flush::Soft => !stage.keeps_unit_on_soft_flush(),
            };
            let r = stage.encode(
                src.as_deref().unwrap_or(input),
                f,
                state,
                &mut dst,
                &mut self.ctl,
            );
            if let Some(s) = src.take() {
                self.bufs[(i + 1) % 2] = s;
            }
            if last {
                out.data = dst;
            } else {
                src = Some(dst);
            }
            drain_ctl(&mut self.ctl, i, &mut out.control);
            r?;
        }
        Ok(())
    }

    /// Every stage would pass the next bytes unchanged and holds nothing
    /// ([`Encoder::passes_through`]): they may cross as a plain record,
    /// past both chains.
    pub fn passes_through(&self) -> bool {
        !self.stages.is_empty() && self.stages.iter().all(|s| s.passes_through())
    }

    /// Every stage passes every byte unchanged, always
    /// ([`Encoder::always_passes`]).
    pub fn always_passes(&self) -> bool {
        !self.stages.is_empty() && self.stages.iter().all(|s| s.always_passes())
    }

    /// `n` bytes crossed as a plain record ([`EncoderChain::passes_through`]).
    pub fn passed(&mut self, n: usize, state: &LegSnapshot) {
        for s in &mut self.stages {
            s.passed(n, state);
        }
    }

    /// No stage waits for anything from the far decoders (see
    /// [`Encoder::idle`]).
    pub fn idle(&self) -> bool {
        self.stages.iter().all(|s| s.idle())
    }

    /// A control message from the far decoder of stage `stage`. Answers go
    /// to `out.control` (they travel with the direction).
    pub fn control(&mut self, stage: u8, msg: &[u8], out: &mut Output) -> Result<(), ModuleError> {
        let s = self
            .stages
            .get_mut(stage as usize)
            .ok_or(ModuleError::NoSuchStage(stage))?;
        let r = s.control(msg, &mut self.ctl);
        drain_ctl(&mut self.ctl, stage as usize, &mut out.control);
        r
    }
}

fn drain_ctl(ctl: &mut Vec<Vec<u8>>, stage: usize, to: &mut Vec<Control>) {
    to.extend(ctl.drain(..).map(|msg| Control {
        stage: stage as u8,
        msg,
    }));
}

/// One direction's decoders: the inverse of the far relay's [`EncoderChain`].
pub struct DecoderChain {
    /// In encoding order; decoding runs them last to first.
    stages: Vec<Box<dyn Decoder>>,
    bufs: [Vec<u8>; 2],
    ctl: Vec<Vec<u8>>,
}

impl DecoderChain {
    pub fn new(spec: &ChainSpec, stores: &Stores) -> Result<Self, ModuleError> {
        let mut stages: Vec<Box<dyn Decoder>> = Vec::new();
        for k in spec.kinds() {
            stages.push(match k {
                ModuleKind::Null => Box::new(NullDecoder),
                ModuleKind::Compress => Box::new(CompressDecoder::new()?),
                ModuleKind::Dedup => Box::new(DedupDecoder::new(stores.dedup.received.clone())),
            });
        }
        Ok(DecoderChain {
            stages,
            bufs: [Vec::new(), Vec::new()],
            ctl: Vec::new(),
        })
    }

    /// Decodes bytes from DATA frames (any split). Decoded bytes are appended
    /// to `out.data`; messages for the far encoders to `out.control` (they
    /// travel against the direction). Call with new input only when
    /// [`DecoderChain::has_pending`] is false; otherwise call
    /// [`DecoderChain::drain`] after writing the output.
    pub fn decode(&mut self, input: &[u8], out: &mut Output) -> Result<(), ModuleError> {
        let n = self.stages.len();
        if n == 0 {
            out.data.extend_from_slice(input);
            return Ok(());
        }
        self.feed(n - 1, input, out)
    }

    /// Runs stages `top` down to 0 with `input` entering stage `top`.
    fn feed(&mut self, top: usize, input: &[u8], out: &mut Output) -> Result<(), ModuleError> {
        let mut src: Option<Vec<u8>> = None;
        for i in (0..=top).rev() {
            let last = i == 0;
            let mut dst = if last {
                std::mem::take(&mut out.data)
            } else {
                std::mem::take(&mut self.bufs[i % 2])
            };
            if !last {
                dst.clear();
            }
            let r = self.stages[i].decode(src.as_deref().unwrap_or(input), &mut dst, &mut self.ctl);
            if let Some(s) = src.take() {
                self.bufs[(i + 1) % 2] = s;
            }
            if last {
                out.data = dst;
            } else {
                src = Some(dst);
            }
            drain_ctl(&mut self.ctl, i, &mut out.control);
            r?;
        }
        Ok(())
    }

    /// A stage's output budget kept input back: more can be decoded now.
    pub fn has_pending(&self) -> bool {
        self.stages.iter().any(|s| s.has_pending())
    }

    /// Some stage waits for a control message before it can go on.
    pub fn waiting(&self) -> bool {
        self.stages.iter().any(|s| s.waiting())
    }

    /// Decodes input kept back by output budgets (highest stage first, so
    /// bytes keep their order).
    pub fn drain(&mut self, out: &mut Output) -> Result<(), ModuleError> {
        if let Some(top) = (0..self.stages.len())
            .rev()
            .find(|&i| self.stages[i].has_pending())
        {
            self.feed(top, &[], out)?;
        }
        Ok(())
    }

    /// A control message from the far encoder of stage `stage`; bytes it
    /// releases pass through the stages below it.
    pub fn control(&mut self, stage: u8, msg: &[u8], out: &mut Output) -> Result<(), ModuleError> {
        let i = stage as usize;
        if i >= self.stages.len() {
            return Err(ModuleError::NoSuchStage(stage));
        }
        let mut released = std::mem::take(&mut self.bufs[0]);
        released.clear();
        let r = self.stages[i].control(msg, &mut released, &mut self.ctl);
        drain_ctl(&mut self.ctl, i, &mut out.control);
        let r = r.and_then(|()| {
            if i == 0 {
                out.data.extend_from_slice(&released);
                Ok(())
            } else {
                self.feed(i - 1, &released, out)
            }
        });
        self.bufs[0] = released;
        r
    }

    /// The direction ended cleanly (END frame): every stage must be at a
    /// record boundary with nothing waiting.
    pub fn finish(&mut self) -> Result<(), ModuleError> {
        for s in self.stages.iter_mut().rev() {
            s.finish()?;
        }
        Ok(())
    }
}
