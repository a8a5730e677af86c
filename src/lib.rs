//! pathos: a local GGUF inference engine for emotion-aware debate rewrites and ethics
//! checks, entirely offline.
//!
//! The library is layered as `../shared/DESIGN.md` lays out: [`engine`] loads models and
//! generates tokens; the layers above it (emotion, debate, ethics) only ever see text
//! requests and completions. The binary in `src/main.rs` is a thin CLI over this crate.

pub mod backend;
pub mod bench;
pub mod debate;
pub mod emotion;
pub mod engine;
pub mod ethics;
pub mod eval;
pub mod prompts;
pub mod server;
pub mod steer;
pub mod suggest;
