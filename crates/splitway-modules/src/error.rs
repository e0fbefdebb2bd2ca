//! The one error type of module encoders and decoders. Every decoder error
//! means the leg's input was corrupt, truncated or hostile: the relay resets
//! the leg and counts it by [`ModuleError::reason`].

/// Why a module could not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("unknown module {0:?}")]
    UnknownModule(String),
    #[error("unknown module id {0}")]
    UnknownModuleId(u8),
    #[error("module {0:?} listed twice")]
    Duplicate(&'static str),
    #[error("too many modules in a chain: {0} (at most {max})", max = crate::chain::MAX_STAGES)]
    TooMany(usize),
    #[error("control message for stage {0}, the chain has fewer")]
    NoSuchStage(u8),
    #[error("{module}: unknown record kind {kind:#04x}")]
    UnknownRecord { module: &'static str, kind: u8 },
    #[error("{module}: record of {len} bytes, at most {max}")]
    RecordTooLarge {
        module: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{module}: stream ended inside a record")]
    Truncated { module: &'static str },
    #[error("compress: {declared} bytes declared from {compressed} compressed (ratio above {max_ratio})")]
    Bomb {
        declared: u64,
        compressed: u64,
        max_ratio: u64,
    },
    #[error("compress: zstd: {0}")]
    Zstd(String),
    #[error("compress: record decompressed to {got} bytes, {declared} declared")]
    LengthMismatch { declared: u64, got: u64 },
    #[error("compress: a frame continued before any frame began")]
    NoFrame,
    #[error("dedup: chunk longer than {max} bytes")]
    ChunkTooLong { max: usize },
    #[error("dedup: empty chunk cut")]
    EmptyCut,
    #[error("dedup: reference does not extend the bytes already sent of its chunk")]
    RefPrefixMismatch,
    #[error("dedup: {0} bytes wait behind an unknown reference (at most {max})", max = crate::dedup::PARK_LIMIT)]
    ParkedTooMuch(usize),
    #[error("dedup: answer does not hash to the chunk asked for")]
    AnswerMismatch,
    #[error("dedup: asked for a chunk this encoder never referenced")]
    UnknownAsk,
    #[error("dedup: acknowledged more references than were sent")]
    BadAck,
    #[error("dedup: stream ended while waiting for a chunk")]
    EndedWaiting,
    #[error("{module}: malformed control message")]
    BadControl { module: &'static str },
}

impl ModuleError {
    /// A short, stable name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ModuleError::UnknownModule(_) | ModuleError::UnknownModuleId(_) => "module_unknown",
            ModuleError::Duplicate(_) | ModuleError::TooMany(_) => "module_chain",
            ModuleError::NoSuchStage(_) | ModuleError::BadControl { .. } => "module_control",
            ModuleError::UnknownRecord { .. } => "module_record",
            ModuleError::RecordTooLarge { .. } => "module_oversized",
            ModuleError::Truncated { .. } | ModuleError::EndedWaiting => "module_truncated",
            ModuleError::Bomb { .. } => "compress_bomb",
            ModuleError::Zstd(_) | ModuleError::LengthMismatch { .. } | ModuleError::NoFrame => {
                "compress_corrupt"
            }
            ModuleError::ChunkTooLong { .. }
            | ModuleError::EmptyCut
            | ModuleError::RefPrefixMismatch
            | ModuleError::AnswerMismatch => "dedup_corrupt",
            ModuleError::ParkedTooMuch(_) => "dedup_parked",
            ModuleError::UnknownAsk | ModuleError::BadAck => "dedup_control",
        }
    }
}
