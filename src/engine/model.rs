//! A loaded model: weights, tokenizer and chat template, ready to serve sequences.
//!
//! [`Model`] is cheap to share: its parts are behind `Arc`s and read-only, so any number
//! of [`Session`]s (one per conversation or debating agent) run over one copy of the
//! weights, each with its own KV cache.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Device;

use super::arch::ArchConfig;
use super::arch::transformer::Transformer;
use super::constrain::Grammars;
use super::error::{Error, Result};
use super::gguf::{GgufFile, ModelInfo};
use super::kv_cache::KvCache;
use super::registry::ResolvedModel;
use super::template::{ChatTemplate, Message};
use super::tokenizer::Tokenizer;

/// Context size used when the user gives none: the model's own, capped so the
/// preallocated KV cache of a small model stays small.
pub const DEFAULT_CONTEXT: usize = 4096;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Context size per sequence; `None` is min(model's, [`DEFAULT_CONTEXT`]).
    pub context: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            context: None,
        }
    }
}

/// Weights, tokenizer and template of one model, shared by all its sessions.
#[derive(Clone)]
pub struct Model {
    pub name: String,
    pub transformer: Arc<Transformer>,
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    pub info: Arc<ModelInfo>,
    pub context: usize,
    pub load_time: Duration,
    /// Built on the first constrained generation (it walks the whole vocabulary).
    grammars: Arc<OnceLock<std::result::Result<Grammars, String>>>,
}

impl Model {
    /// Loads a resolved model file.
    pub fn load(resolved: &ResolvedModel, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let gguf = GgufFile::open(&resolved.path)?;
        let info = gguf.info()?;
        let cfg = ArchConfig::from_gguf(&gguf)?;
        let context = opts
            .context
            .unwrap_or(DEFAULT_CONTEXT)
            .min(cfg.context_length)
            .max(1);
        // Building a large vocabulary's tokenizer and copying the weights take about as
        // long as each other; do them at the same time.
        let (tokenizer, transformer) = std::thread::scope(|s| {
            let tok = s.spawn(|| {
                let t = Instant::now();
                let tok = Tokenizer::from_gguf(&gguf);
                tracing::debug!(elapsed = ?t.elapsed(), "tokenizer built");
                tok
            });
            let t = Instant::now();
            let tf = Transformer::load(&gguf, cfg, &opts.device, context);
            tracing::debug!(elapsed = ?t.elapsed(), "weights loaded");
            let tok = tok.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (tok, tf)
        });
        let (tokenizer, transformer) = (tokenizer?, transformer?);
        let template = ChatTemplate::new(
            gguf.opt_str("tokenizer.chat_template"),
            &tokenizer.bos_text(),
            &tokenizer.eos_text(),
            tokenizer.token_id("<start_of_turn>").is_some(),
        )?;
        let load_time = start.elapsed();
        tracing::debug!(model = %resolved.path.display(), ?load_time, "model loaded");
        Ok(Self {
            name: resolved.display_name(),
            transformer: Arc::new(transformer),
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            info: Arc::new(info),
            context,
            load_time,
            grammars: Arc::default(),
        })
    }

    /// Tokens of a text that is already a whole prompt. A templated prompt carries BOS
    /// when its template prints it; otherwise the tokenizer adds its special tokens.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let bos = self.tokenizer.bos_text();
        let add_special = bos.is_empty() || !text.starts_with(&bos);
        self.tokenizer.encode(text, add_special)
    }

    /// Tokens of a chat: the messages through the model's template, the assistant turn
    /// opened, and `prefix` written at its start (to steer or constrain the answer).
    pub fn encode_chat(&self, messages: &[Message], prefix: &str) -> Result<Vec<u32>> {
        let mut text = self.template.render(messages, true)?;
        text.push_str(prefix);
        self.encode_prompt(&text)
    }

    /// The model's vocabulary as a grammar engine sees it, for constrained decoding.
    pub fn grammars(&self) -> Result<&Grammars> {
        self.grammars
            .get_or_init(|| {
                Grammars::new(&self.tokenizer, self.transformer.vocab_size()).map_err(|e| match e {
                    Error::Constraint(m) => m,
                    other => other.to_string(),
                })
            })
            .as_ref()
            .map_err(|e| Error::Constraint(e.clone()))
    }

    /// A fresh sequence with its own KV cache.
    pub fn new_session(&self) -> Result<Session> {
        Ok(Session {
            cache: self.transformer.new_cache(self.context)?,
            tokens: Vec::new(),
        })
    }
}

/// One sequence: its KV cache and the tokens the cache holds.
pub struct Session {
    pub(crate) cache: KvCache,
    pub(crate) tokens: Vec<u32>,
}

impl Session {
    /// Tokens currently in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions this session can hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Empties the session (the cache memory is kept for reuse).
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
    }

    /// Forgets everything after `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.tokens.truncate(len);
    }

    /// The cache, for running tokens through the model directly; record them with
    /// [`Session::set_tokens`] afterwards.
    pub fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }

    /// Records which tokens the cache now holds.
    pub fn set_tokens(&mut self, tokens: &[u32]) {
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
    }

    /// Makes this session hold the first `n` tokens of `other`, copying their keys and
    /// values instead of computing them again.
    pub fn copy_prefix(&mut self, other: &Session, n: usize) -> Result<()> {
        let n = n.min(other.tokens.len());
        self.cache.copy_prefix(&other.cache, n)?;
        self.tokens.clear();
        self.tokens.extend_from_slice(&other.tokens[..n]);
        Ok(())
    }

    /// The cache (read-only).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Runs this session under `steering` from now on; a change forgets what it holds.
    pub fn set_steering(&mut self, steering: Option<Arc<crate::engine::steering::Steering>>) {
        self.cache.set_steering(steering);
        let len = self.cache.len();
        self.tokens.truncate(len);
    }

    /// Whether this session's cache was computed under `steering`.
    pub fn steered_as(&self, steering: Option<&crate::engine::steering::Steering>) -> bool {
        crate::engine::steering::Steering::same(self.cache.steering(), steering)
    }

    /// Keeps the longest cached prefix shared with `prompt` and returns its length, so a
    /// follow-up turn only processes what is new.
    pub fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let mut common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one token must be run to get logits for the next one.
        if common == prompt.len() {
            common = common.saturating_sub(1);
        }
        self.cache.truncate(common);
        self.tokens.truncate(common);
        common
    }
}
