//! The crate's one error type. Every variant renders as a sentence that names the file, tensor or key at fault,
//! because that sentence is what the page shows.

/// Everything that can go wrong, from a user's file to a numerical routine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or is not what it claims to be.
    #[error("{file}: {msg}")]
    File { file: String, msg: String },

    /// A tensor is missing, has the wrong shape or dtype, or holds bad data.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },

    /// config.json is missing a key, has a bad value, or disagrees with the weights.
    #[error("config.json: {0}")]
    Config(String),

    /// tokenizer.json could not be loaded or a text could not be (de)tokenized.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),

    /// A compression policy or request is not valid.
    #[error("invalid setting: {0}")]
    Policy(String),

    /// Work would need more memory than is allowed; says how much and what for.
    #[error("not enough memory: {0}")]
    Memory(String),

    /// The allocation check would need more memory than is allowed (says how much and what for): the compression can
    /// run without it.
    #[error("not enough memory: {0}")]
    CheckMemory(String),

    /// A numerical routine failed (non-finite input, no convergence).
    #[error("{0}")]
    Numeric(String),

    /// The GPU failed: no device, out of its memory, lost, or a limit the model needs is not there. The work it was
    /// doing can run on the CPU.
    #[error("{0}")]
    Gpu(String),

    /// Anything else, said as a sentence.
    #[error("{0}")]
    Msg(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What kind of fault an error is, for code that branches on it (the page does, through the wasm edge): one per
/// variant, never the words of the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    File,
    Tensor,
    Config,
    Tokenizer,
    Setting,
    Memory,
    CheckMemory,
    Numeric,
    Gpu,
    Other,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::File => "file",
            ErrorKind::Tensor => "tensor",
            ErrorKind::Config => "config",
            ErrorKind::Tokenizer => "tokenizer",
            ErrorKind::Setting => "setting",
            ErrorKind::Memory => "memory",
            ErrorKind::CheckMemory => "check-memory",
            ErrorKind::Numeric => "numeric",
            ErrorKind::Gpu => "gpu",
            ErrorKind::Other => "other",
        }
    }
}

impl Error {
    /// A refusal for want of memory made the allocation check's ([`Error::CheckMemory`]); any other error as it is.
    pub fn for_allocation_check(self) -> Self {
        match self {
            Error::Memory(msg) => Error::CheckMemory(msg),
            e => e,
        }
    }

    /// The kind of fault, from the variant.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::File { .. } | Error::Io(_) => ErrorKind::File,
            Error::Tensor { .. } => ErrorKind::Tensor,
            Error::Config(_) => ErrorKind::Config,
            Error::Tokenizer(_) => ErrorKind::Tokenizer,
            Error::Policy(_) => ErrorKind::Setting,
            Error::Memory(_) => ErrorKind::Memory,
            Error::CheckMemory(_) => ErrorKind::CheckMemory,
            Error::Numeric(_) | Error::Candle(_) => ErrorKind::Numeric,
            Error::Gpu(_) => ErrorKind::Gpu,
            Error::Msg(_) | Error::Json(_) => ErrorKind::Other,
        }
    }

    pub fn file(file: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::File { file: file.into(), msg: msg.into() }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { name: name.into(), msg: msg.into() }
    }
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Return early with an [`Error::Msg`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
