//! The collaborative rewrite: writers draft, critics argue, a judge scores and picks,
//! contentiousness falls each round, and a conciliatory synthesis closes the debate.
//!
//! Principal items: [`config::DebateConfig`], [`protocol::rewrite`] (the debate),
//! [`baselines`] (single pass and self-refine, for comparison), [`judge`] (CRIT
//! scoring, draft picking, verdicts, all from token probabilities),
//! [`transcript::Transcript`] (what happened, as JSON). Models are reached only
//! through [`crate::backend::Backend`]; each step hands the backend all of its agents'
//! requests at once.

pub mod argue;
pub mod baselines;
pub mod config;
pub mod judge;
pub mod protocol;
pub mod schedule;
pub mod select;
pub mod transcript;

/// What can stop a debate from running.
#[derive(Debug, thiserror::Error)]
pub enum DebateError {
    #[error("invalid debate settings: {0}")]
    Config(String),

    #[error("the text to rewrite is empty")]
    EmptyText,

    #[error(
        "the text is {text_tokens} tokens; a debate with {writers} writer(s) needs about {needed} tokens of context but {model} holds {context}: shorten the text, use fewer writers or raise --ctx-size"
    )]
    TextTooLong {
        text_tokens: usize,
        writers: usize,
        needed: usize,
        model: String,
        context: usize,
    },

    #[error(transparent)]
    Emotion(#[from] crate::emotion::EmotionError),

    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
}
