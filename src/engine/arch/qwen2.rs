//! Qwen2: Llama's block with biases on the q/k/v projections and NeoX-style RoPE. The
//! biases are picked up by the transformer when the GGUF has them.

use super::{Activation, ArchConfig, RopeStyle};
use crate::engine::error::Result;
use crate::engine::gguf::GgufFile;

pub(super) fn config(gguf: &GgufFile) -> Result<ArchConfig> {
    ArchConfig::common(gguf, "qwen2", RopeStyle::Neox, Activation::Silu)
}
