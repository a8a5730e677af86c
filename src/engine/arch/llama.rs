//! Llama (SmolLM2 and other Llama-family GGUFs): RMSNorm, SwiGLU, grouped-query
//! attention, interleaved RoPE.

use super::{Activation, ArchConfig, RopeStyle};
use crate::engine::error::Result;
use crate::engine::gguf::GgufFile;

pub(super) fn config(gguf: &GgufFile) -> Result<ArchConfig> {
    ArchConfig::common(gguf, "llama", RopeStyle::Interleaved, Activation::Silu)
}
