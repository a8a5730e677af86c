//! Emotions as BEAM models them: seven spectra from a negative to a positive pole, seven
//! graded levels each.
//!
//! Principal types: [`beam::Beam`] (the table, loaded from `beam.toml`), [`beam::Target`]
//! (a spectrum and level to rewrite toward), [`detect::Detector`] (where a text sits on
//! every spectrum, from the model's token probabilities). Nothing here sees a tensor;
//! models are reached through [`crate::backend::Backend`].

pub mod beam;
pub mod detect;
pub mod examples;

/// What can be wrong with an emotion name, level or table.
#[derive(Debug, thiserror::Error)]
pub enum EmotionError {
    #[error("unknown emotion `{typed}`{hint}")]
    UnknownEmotion { typed: String, hint: String },

    #[error("unknown spectrum `{typed}`; the spectra are: {valid}")]
    UnknownSpectrum { typed: String, valid: String },

    #[error("level `{typed}` is not on the BEAM grid ({valid}){hint}")]
    OffGrid {
        typed: String,
        valid: String,
        hint: String,
    },

    #[error("emotion table is invalid: {0}")]
    Table(String),
}
