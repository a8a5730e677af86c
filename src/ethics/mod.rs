//! Ethics self-evaluation: codes of conduct as data, DIKE's emotion-mediated behaviour
//! classification with a guardrail range, rectification by the rewrite debate, ERIS
//! adversarial review and a human feedback journal (SSHF step 5).
//!
//! Principal items: [`policy::Policy`] (what is allowed), [`learn::Profiles`] (emotion
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

/// What a check is judged against: the policy, the behaviours' emotion profiles, the
/// rules (with the journal's human decisions folded in) and the journal itself. Loaded
/// once by a command or the server and shared by every check.
pub struct Standards {
    pub policy: policy::Policy,
    pub profiles: learn::Profiles,
    pub rules: rules::Ruleset,
    pub precedents: feedback::Precedents,
    pub journal: journal::Journal,
}

impl Standards {
    /// Reads the policy and profiles files (the built-in ones when `None`) and the
    /// journal in `journal_dir`.
    pub fn load(
        policy: Option<&std::path::Path>,
        profiles: Option<&std::path::Path>,
        journal_dir: &std::path::Path,
    ) -> Result<Self, EthicsError> {
        let policy = match policy {
            Some(p) => policy::Policy::load(p)?,
            None => policy::Policy::builtin(),
        };
        let (profiles, origin) = match profiles {
            Some(p) => (learn::Profiles::load(p)?, p.to_path_buf()),
            None => (
                learn::Profiles::builtin()?,
                PathBuf::from("builtin profiles"),
            ),
        };
        profiles.fits(&policy, &origin)?;
        let journal = journal::Journal::open(journal_dir)?;
        let mut rules = rules::Ruleset::with_learned(&policy, &profiles.rules);
        let precedents = feedback::apply(&journal.read()?, &mut rules);
        Ok(Self {
            policy,
            profiles,
            rules,
            precedents,
            journal,
        })
    }

    /// A checker over these standards asking `model`.
    pub fn checker<'a>(
        &'a self,
        backend: &'a dyn crate::backend::Backend,
        model: &str,
        method: check::Method,
    ) -> check::Checker<'a> {
        check::Checker::new(
            backend,
            crate::emotion::beam::Beam::builtin(),
            &self.policy,
            &self.profiles,
            self.rules.clone(),
            self.precedents.clone(),
            model,
            method,
        )
    }
}
