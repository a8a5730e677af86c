//! The engine's error type. Every variant names the input at fault and, where there is
//! one, what the user can do about it: these messages are printed to users as they are.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, one variant per cause a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model file not found: {path}")]
    MissingFile { path: PathBuf },

    #[error("{path} is not a GGUF file (its first bytes are {magic:?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: String },

    #[error("{path} is truncated or corrupt: {detail} (file is {actual} bytes; fetch it again)")]
    Truncated {
        path: PathBuf,
        detail: String,
        actual: u64,
    },

    #[error("{path} could not be parsed as GGUF: {detail}")]
    CorruptGguf { path: PathBuf, detail: String },

    #[error("GGUF metadata key `{key}` is missing or has the wrong type in {path}")]
    MissingMetadata { path: PathBuf, key: String },

    #[error("unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },

    #[error("unsupported quantization type {dtype} in tensor `{tensor}`")]
    UnsupportedQuantization { tensor: String, dtype: String },

    #[error("unknown model `{name}`{hint}")]
    UnknownModel { name: String, hint: String },

    #[error("model manifest is invalid: {0}")]
    Manifest(String),

    #[error("fetching `{model}` failed: {detail}")]
    Fetch { model: String, detail: String },

    #[error(
        "checksum mismatch for `{model}`: expected sha256 {expected}, got {actual}; the download was discarded"
    )]
    Checksum {
        model: String,
        expected: String,
        actual: String,
    },

    #[error(
        "`{model}` is not in the local cache and network access is disabled (--offline / PATHOS_OFFLINE)"
    )]
    Offline { model: String },

    #[error(
        "prompt is {prompt_tokens} tokens but the context holds {context} (asked for {max_tokens} more to generate); shorten the prompt or raise --ctx-size"
    )]
    ContextOverflow {
        prompt_tokens: usize,
        context: usize,
        max_tokens: usize,
    },

    #[error("invalid sampling parameter: {0}")]
    InvalidSampling(String),

    #[error("steering: {0}")]
    Steering(String),

    #[error("engine: {0}")]
    Engine(String),

    #[error("remote backend {url}: {detail}")]
    Remote { url: String, detail: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("constrained decoding: {0}")]
    Constraint(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("device `{0}` is not available: {1}")]
    Device(String, String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the operation and path it concerned, so the message says
    /// what failed rather than only "No such file or directory".
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;
