//! The local inference engine: everything that knows about tensors.
//!
//! Principal types: [`registry::Manifest`] (which models exist and where they come from),
//! [`gguf::GgufFile`] (a validated model file), [`model::Model`] (weights
//! shared by every sequence), [`kv_cache::KvCache`] (one per sequence),
//! [`tokenizer::Tokenizer`], [`template::ChatTemplate`], [`sampler::Sampler`] and
//! [`generate::Generator`], which ties them into a streaming generation loop.

pub mod arch;
pub mod constrain;
pub mod device;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod quant;
pub mod registry;
pub mod sampler;
pub mod score;
pub mod steering;
pub mod stop;
pub mod stream_decode;
pub mod template;
pub mod tokenizer;

pub use error::{Error, Result};
