//! Tokenizers built from GGUF metadata alone.
//!
//! [`Tokenizer::from_gguf`] reads `tokenizer.ggml.*` and builds a `tokenizers` pipeline
//! that matches llama.cpp's tokenization of the same file:
//! - `gpt2`: byte-level BPE from the stored merges, with the pre-tokenizer regex chosen by
//!   `tokenizer.ggml.pre` (SmolLM2, Qwen2, Llama 3 …);
//! - `llama`: SentencePiece (Gemma …): merges by the vocabulary's scores as llama.cpp
//!   does, with byte fallback for characters outside it.
//!
//! Both run on pathos's own model ([`vocabulary::Vocabulary`]) inside a `tokenizers`
//! pipeline, which brings the normalizer, pre-tokenizer, added tokens and decoder.
//!
//! Control and user-defined tokens are added tokens, so they are recognised in text as
//! llama.cpp does with `parse_special`. A `tokenizer.json` beside the model overrides all
//! of this. [`Tokenizer::pieces`] gives the per-token bytes streaming decoding
//! ([`super::stream_decode`]) reads.

mod vocabulary;

use std::collections::HashMap;
use std::time::Instant;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    TokenizerImpl,
};

use super::error::{Error, Result};
use super::gguf::GgufFile;
use super::stream_decode::{DecodeRules, TokenBytes, TokenPieces, push_token_bytes};
use vocabulary::Vocabulary;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Texts of end-of-turn tokens that end generation besides `eos_token_id`.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
    "<eos>",
];

/// Pre-tokenizer regexes, keyed by `tokenizer.ggml.pre`.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizers` pipeline of a model: whatever a tokenizer.json holds, or one around
/// pathos's own model.
enum Pipeline {
    Stock(Box<tokenizers::Tokenizer>),
    Own(
        Box<
            TokenizerImpl<
                Vocabulary,
                NormalizerWrapper,
                PreTokenizerWrapper,
                PostProcessorWrapper,
                DecoderWrapper,
            >,
        >,
    ),
}

/// Runs `$body` with `$t` bound to whichever pipeline `$inner` holds: both are a
/// `TokenizerImpl` and answer the same calls.
macro_rules! with_pipeline {
    ($inner:expr, $t:ident => $body:expr) => {
        match $inner {
            Pipeline::Stock($t) => $body,
            Pipeline::Own($t) => $body,
        }
    };
}

/// A model's tokenizer plus the special ids generation needs.
pub struct Tokenizer {
    inner: Pipeline,
    bos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
    /// Every token's bytes, for a tokenizer pathos built (`None`: from a tokenizer.json).
    pieces: Option<TokenPieces>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer of `gguf`, or loads `tokenizer.json` from the model's directory
    /// when one is there.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let override_path = gguf
            .path()
            .parent()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.is_file());
        let (inner, pieces) = match override_path {
            Some(p) => (
                Pipeline::Stock(Box::new(
                    tokenizers::Tokenizer::from_file(&p).map_err(tok_err)?,
                )),
                None,
            ),
            None => build_from_metadata(gguf)?,
        };
        let bos = gguf
            .opt_u64("tokenizer.ggml.bos_token_id")
            .map(|v| v as u32);
        let model = gguf.opt_str("tokenizer.ggml.model").unwrap_or("gpt2");
        // llama.cpp's default: SentencePiece vocabularies add BOS unless told not to.
        let add_bos = gguf
            .opt_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(model == "llama");
        let mut end_of_generation = Vec::new();
        if let Some(eos) = gguf.opt_u64("tokenizer.ggml.eos_token_id") {
            end_of_generation.push(eos as u32);
        }
        if let Some(eot) = gguf.opt_u64("tokenizer.ggml.eot_token_id") {
            end_of_generation.push(eot as u32);
        }
        for t in END_OF_TURN_TOKENS {
            if let Some(id) = with_pipeline!(&inner, t2 => t2.token_to_id(t))
                .filter(|id| !end_of_generation.contains(id))
            {
                end_of_generation.push(id);
            }
        }
        Ok(Self {
            inner,
            bos,
            add_bos,
            end_of_generation,
            pieces,
        })
    }

    /// Token ids of `text`. `add_special` prepends BOS when the model asks for it;
    /// special-token texts in `text` are always recognised.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = with_pipeline!(&self.inner, t => t.encode_fast(text, false)).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let Some(b) = self.bos.filter(|_| add_special && self.add_bos) {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        with_pipeline!(&self.inner, t => t.decode(ids, false)).map_err(tok_err)
    }

    /// Every token's bytes under this tokenizer's decoding rules, for decoding generated
    /// tokens one at a time without going through `tokenizers`; `None` for a tokenizer
    /// read from a tokenizer.json, whose decoder may do anything.
    pub fn pieces(&self) -> Option<&TokenPieces> {
        self.pieces.as_ref()
    }

    /// Whether `id` ends generation (EOS or an end-of-turn token).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The id of a token given by its text, if it is one token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        with_pipeline!(&self.inner, t => t.token_to_id(text))
    }

    /// The text of one token as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        with_pipeline!(&self.inner, t => t.id_to_token(id))
    }

    /// BOS token text, for chat templates that print it.
    pub fn bos_text(&self) -> String {
        self.bos
            .and_then(|b| self.token_text(b))
            .unwrap_or_default()
    }

    /// EOS token text, for chat templates that print it.
    pub fn eos_text(&self) -> String {
        self.end_of_generation
            .first()
            .and_then(|&e| self.token_text(e))
            .unwrap_or_default()
    }

    /// Number of tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        with_pipeline!(&self.inner, t => t.get_vocab_size(true))
    }

    /// Ids that end generation, EOS first.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The bytes each token stands for, indexed by id, for matching tokens against a
    /// grammar. Special tokens get llguidance's marker byte (0xFF) and their name, so no
    /// grammar over text can produce them.
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let byte_level =
            with_pipeline!(&self.inner, t => t.get_decoder()).is_some_and(has_byte_level_decoder);
        let byte_of = gpt2_byte_table();
        let added = with_pipeline!(&self.inner, t => t.get_added_tokens_decoder());
        let specials: HashMap<u32, &str> = added
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, t)| (id, t.content.as_str()))
            .collect();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if let Some(name) = specials.get(&id) {
                    let mut b = vec![0xFF];
                    b.extend_from_slice(name.as_bytes());
                    return b;
                }
                if let Some(t) = added.get(&id) {
                    return t.content.clone().into_bytes();
                }
                let Some(text) = self.token_text(id) else {
                    return Vec::new();
                };
                let mut bytes = Vec::with_capacity(text.len());
                let byte = |c: char| byte_of.get(c as usize).copied().flatten();
                match push_token_bytes(&text, byte_level, byte, &mut bytes) {
                    // Text no byte sequence stands for: nothing a grammar can match.
                    TokenBytes::Foreign => Vec::new(),
                    TokenBytes::Text | TokenBytes::Byte => bytes,
                }
            })
            .collect()
    }
}

fn has_byte_level_decoder(d: &DecoderWrapper) -> bool {
    match d {
        DecoderWrapper::ByteLevel(_) => true,
        DecoderWrapper::Sequence(seq) => seq.get_decoders().iter().any(has_byte_level_decoder),
        _ => false,
    }
}

/// The byte each character of GPT-2's byte-level alphabet stands for, indexed by code
/// point: printable bytes stand for themselves, the rest were shifted to code points
/// from 256 up, in byte order (the alphabet lies below U+0144).
fn gpt2_byte_table() -> Vec<Option<u8>> {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let mut table = vec![None; 0x144];
    let mut shifted = 0usize;
    for b in 0..=255u8 {
        let c = if printable(b) {
            usize::from(b)
        } else {
            shifted += 1;
            255 + shifted
        };
        table[c] = Some(b);
    }
    table
}

fn build_from_metadata(gguf: &GgufFile) -> Result<(Pipeline, Option<TokenPieces>)> {
    let model = gguf.str("tokenizer.ggml.model")?;
    let tokens = gguf.str_array("tokenizer.ggml.tokens")?;
    let types: Vec<i64> = gguf
        .int_array("tokenizer.ggml.token_type")
        .unwrap_or_else(|_| vec![1; tokens.len()]);
    let (mut tok, rules) = match model {
        "gpt2" => {
            let merges = gguf.str_array("tokenizer.ggml.merges")?;
            let t = Instant::now();
            let model = Vocabulary::byte_level_bpe(&tokens, &merges).map_err(Error::Tokenizer)?;
            tracing::debug!(elapsed = ?t.elapsed(), "byte-level BPE vocabulary indexed");
            let mut t = TokenizerImpl::new(model);
            t.with_pre_tokenizer(Some(gpt2_pre_tokenizer(
                gguf.opt_str("tokenizer.ggml.pre").unwrap_or("default"),
            )?));
            t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
            (Pipeline::Own(Box::new(t)), DecodeRules::ByteLevel)
        }
        "llama" => {
            let scores = gguf.f32_array("tokenizer.ggml.scores")?;
            let unk = gguf
                .opt_u64("tokenizer.ggml.unknown_token_id")
                .map(|u| u as u32)
                .filter(|&u| (u as usize) < tokens.len());
            let t = Instant::now();
            let model = Vocabulary::sentencepiece(&tokens, &scores, unk);
            tracing::debug!(elapsed = ?t.elapsed(), "SentencePiece vocabulary indexed");
            let mut t = TokenizerImpl::new(model);
            let add_prefix = gguf
                .opt_bool("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true);
            let replace = Replace::new(" ", "▁").map_err(tok_err)?;
            let normalizer = if add_prefix {
                NormalizerWrapper::Sequence(tokenizers::normalizers::Sequence::new(vec![
                    NormalizerWrapper::Prepend(Prepend::new("▁".into())),
                    NormalizerWrapper::Replace(replace),
                ]))
            } else {
                NormalizerWrapper::Replace(replace)
            };
            t.with_normalizer(Some(normalizer)).map_err(tok_err)?;
            let mut decoders = vec![
                DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tok_err)?),
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
            ];
            if add_prefix {
                decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
            }
            t.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
                decoders,
            ))));
            (
                Pipeline::Own(Box::new(t)),
                DecodeRules::SentencePiece {
                    strip_space: add_prefix,
                },
            )
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
            )));
        }
    };
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| **ty == TYPE_CONTROL || **ty == TYPE_USER_DEFINED)
        .map(|(t, ty)| AddedToken::from(*t, *ty == TYPE_CONTROL).normalized(false))
        .collect();
    with_pipeline!(&mut tok, t => t.add_special_tokens(added)).map_err(tok_err)?;
    let t = Instant::now();
    // The ids of the vocabulary are the ids of the GGUF's token list (added tokens
    // included), so its texts are what the decoder receives.
    let byte_of = gpt2_byte_table();
    let pieces = TokenPieces::build(rules, &tokens, |c| {
        byte_of.get(c as usize).copied().flatten()
    });
    tracing::debug!(elapsed = ?t.elapsed(), "token pieces built");
    Ok((tok, pieces))
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value.
fn gpt2_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(PreTokenizerWrapper::Split(
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?,
        ))
    };
    let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false));
    let seq = |v: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::Sequence(PreSequence::new(v));
    Ok(match pre {
        "qwen2" | "deepseek-r1-qwen" => seq(vec![split(QWEN2_REGEX)?, byte_level]),
        "llama-bpe" | "llama3" | "smaug-bpe" => seq(vec![split(LLAMA3_REGEX)?, byte_level]),
        "smollm" | "starcoder" | "refact" | "codeshell" => seq(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            split(GPT2_REGEX)?,
            byte_level,
        ]),
        other => {
            if other != "default" && other != "gpt2" {
                tracing::warn!("unknown tokenizer.ggml.pre `{other}`; using the GPT-2 split");
            }
            seq(vec![split(GPT2_REGEX)?, byte_level])
        }
    })
}
