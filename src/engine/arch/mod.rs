//! Model architectures. Each supported `general.architecture` maps its GGUF metadata to an
//! [`ArchConfig`]; [`transformer::Transformer`] runs any of them. Adding an architecture
//! touches only this directory.

mod gemma3;
mod host_attention;
mod host_ops;
mod llama;
mod qwen2;
pub mod transformer;

use super::error::{Error, Result};
use super::gguf::GgufFile;

/// Architectures pathos can run.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "gemma3"];

/// How rotary position embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (llama.cpp's "normal" mode; GGUF llama weights are permuted for it).
    Interleaved,
    /// First half with second half (GPT-NeoX style: Qwen2, Gemma 3).
    Neox,
}

/// The feed-forward gate's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU, tanh approximation.
    GeluTanh,
}

/// Per-layer attention settings that vary within one model (Gemma 3 alternates local
/// sliding-window layers with global ones, each with its own RoPE base).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    pub rope_theta: f32,
    /// Keys further back than this many positions are masked.
    pub sliding_window: Option<usize>,
}

/// Everything the forward pass needs to know about an architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchConfig {
    pub arch: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope: RopeStyle,
    pub activation: Activation,
    /// Multiply token embeddings by sqrt(n_embd) (Gemma).
    pub scale_embeddings: bool,
    /// Scale applied to queries before attention.
    pub attention_scale: f64,
    pub layers: Vec<LayerAttention>,
}

impl ArchConfig {
    /// Reads the configuration of `gguf`'s architecture.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture()?;
        match arch {
            "llama" => llama::config(gguf),
            "qwen2" => qwen2::config(gguf),
            "gemma3" => gemma3::config(gguf),
            other => Err(Error::UnsupportedArchitecture {
                arch: other.to_string(),
                supported: SUPPORTED.join(", "),
            }),
        }
    }

    /// Fields every architecture stores the same way (`{arch}.*`).
    pub(crate) fn common(
        gguf: &GgufFile,
        arch: &str,
        rope: RopeStyle,
        activation: Activation,
    ) -> Result<Self> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = gguf.u64(&key("embedding_length"))? as usize;
        let n_head = gguf.u64(&key("attention.head_count"))? as usize;
        let n_head_kv = gguf
            .opt_u64(&key("attention.head_count_kv"))
            .map_or(n_head, |v| v as usize);
        let head_dim = gguf
            .opt_u64(&key("attention.key_length"))
            .map_or(n_embd / n_head.max(1), |v| v as usize);
        let n_layer = gguf.u64(&key("block_count"))? as usize;
        // Per-layer settings are allocated from this count before any weight is read; a
        // layer has several tensors, so more layers than tensors is a corrupt header.
        if n_layer > gguf.tensor_count() {
            return Err(Error::CorruptGguf {
                path: gguf.path().to_path_buf(),
                detail: format!(
                    "{n_layer} layers declared but the file has {} tensors",
                    gguf.tensor_count()
                ),
            });
        }
        if n_head == 0
            || n_head_kv == 0
            || !n_head.is_multiple_of(n_head_kv)
            || !head_dim.is_multiple_of(2)
        {
            return Err(Error::CorruptGguf {
                path: gguf.path().to_path_buf(),
                detail: format!(
                    "impossible attention shape: {n_head} heads, {n_head_kv} kv heads, head size {head_dim}"
                ),
            });
        }
        let rope_theta = gguf.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32;
        Ok(Self {
            arch: arch.to_string(),
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: gguf.u64(&key("feed_forward_length"))? as usize,
            context_length: gguf.u64(&key("context_length"))? as usize,
            rms_eps: gguf.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope,
            activation,
            scale_embeddings: false,
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            layers: vec![
                LayerAttention {
                    rope_theta,
                    sliding_window: None,
                };
                n_layer
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::gguf::tests::{header_only, open_bytes};

    use super::*;

    #[test]
    fn more_layers_than_tensors_is_corrupt_not_an_allocation() {
        let u64v = |v: u64| v.to_le_bytes().to_vec();
        let arch = [&5u64.to_le_bytes()[..], b"llama"].concat();
        let bytes = header_only(&[
            ("general.architecture", 8, arch),
            ("llama.embedding_length", 10, u64v(8)),
            ("llama.attention.head_count", 10, u64v(2)),
            ("llama.block_count", 10, u64v(u64::MAX)),
        ]);
        let e = ArchConfig::from_gguf(&open_bytes(&bytes).unwrap()).unwrap_err();
        assert!(matches!(e, Error::CorruptGguf { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("layers declared but the file has 0 tensors"),
            "{e}"
        );
    }
}
