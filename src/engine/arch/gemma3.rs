//! Gemma 3: embeddings scaled by sqrt(n_embd), RMSNorm on queries and keys, norms after
//! attention and after the feed-forward, GELU gate, and five local sliding-window layers
//! (RoPE base 10 000) for every global one (the model's RoPE base).

use super::{Activation, ArchConfig, LayerAttention, RopeStyle};
use crate::engine::error::Result;
use crate::engine::gguf::GgufFile;

/// One global-attention layer in every this many (llama.cpp's Gemma 3 pattern).
const SLIDING_PATTERN: usize = 6;
/// RoPE base of the local layers (not stored in the GGUF).
const LOCAL_ROPE_THETA: f32 = 10_000.0;

pub(super) fn config(gguf: &GgufFile) -> Result<ArchConfig> {
    let mut c = ArchConfig::common(gguf, "gemma3", RopeStyle::Neox, Activation::GeluTanh)?;
    c.scale_embeddings = true;
    let window = gguf
        .opt_u64("gemma3.attention.sliding_window")
        .map(|w| w as usize);
    for (i, layer) in c.layers.iter_mut().enumerate() {
        if window.is_some() && (i + 1) % SLIDING_PATTERN != 0 {
            *layer = LayerAttention {
                rope_theta: LOCAL_ROPE_THETA,
                sliding_window: window,
            };
        }
    }
    Ok(c)
}
