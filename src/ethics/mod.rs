//! Ethics self-evaluation: codes of conduct as data, DIKE's emotion-mediated behaviour
//! classification with a guardrail range, rectification by the rewrite debate, ERIS
//! adversarial review and a human feedback journal (SSHF step 5).
//!
//! Principal items: [`policy::Policy`] (what is allowed), [`dike::Profiles`] (emotion
//! profile of each behaviour, learned by [`learn`]), [`check::Checker`] (the verdict,
//! rectification and review), [`eris::review`] (the adversarial debate),
//! [`journal::Journal`] and [`feedback`] (human decisions and the rule changes they
//! cause). Models are reached only through [`crate::backend::Backend`].

pub mod check;
pub mod dike;
pub mod eris;
pub mod feedback;
pub mod journal;
pub mod learn;
pub mod policy;
pub mod rules;

use std::path::PathBuf;

/// What can go wrong in an ethics command.
#[derive(Debug, thiserror::Error)]
pub enum EthicsError {
    #[error("{origin}:{line}: {message}")]
    Policy {
        origin: String,
        line: usize,
        message: String,
    },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("profiles file {}: {message}", path.display())]
    Profiles { path: PathBuf, message: String },

    #[error("the text to check is empty")]
    EmptyText,

    #[error("no review case #{id}; `pathos ethics queue` lists the pending ones")]
    UnknownCase { id: u64 },

    #[error("case #{id} was already decided ({decision})")]
    AlreadyDecided { id: u64, decision: String },

    #[error("the corpus {}: {message}", path.display())]
    Corpus { path: PathBuf, message: String },

    #[error(transparent)]
    Journal(#[from] journal::JournalError),

    #[error(transparent)]
    Debate(#[from] crate::debate::DebateError),

    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
}
