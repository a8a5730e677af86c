//! The seam between what pathos does with models (emotion, debate, ethics) and how the
//! models run: the [`Backend`] trait.
//!
//! Layers above this module speak only in [`ChatRequest`]s and [`ScoreRequest`]s and get
//! back [`Completion`]s and [`Scores`]; they never see a tensor. [`local::LocalBackend`]
//! runs GGUF models in-process with the engine; [`scripted::ScriptedBackend`] answers
//! from a script so the debate logic can be tested without a model. A remote backend
//! over an OpenAI-compatible server implements the same trait.

pub mod local;
pub mod remote;
pub mod scheduler;
pub mod scripted;

use serde::{Deserialize, Serialize};

use crate::engine::Result;
use crate::engine::constrain::Constraint;
use crate::engine::generate::FinishReason;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::Message;

/// What the model is given: a chat rendered through its own template, with the
/// assistant's turn opened and `prefix` already written in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub messages: Vec<Message>,
    /// Text the assistant's answer starts with (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// A whole prompt given as text, run without the chat template (the completions
    /// API); when set, `messages` and `prefix` are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl Prompt {
    /// A one-message chat from the user, optionally after a system message.
    pub fn user(system: Option<&str>, user: impl Into<String>) -> Self {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", user));
        Self {
            messages,
            prefix: String::new(),
            raw: None,
        }
    }

    /// A prompt that is already text, for models used as plain completers.
    pub fn raw(text: impl Into<String>) -> Self {
        Self {
            messages: Vec::new(),
            prefix: String::new(),
            raw: Some(text.into()),
        }
    }

    /// The same prompt with the assistant's answer started by `prefix`.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// One generation request. `model` names one of the backend's models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    #[serde(default)]
    pub stop: Vec<String>,
    /// The shape a machine-read answer must have; `None` for free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<Constraint>,
    /// Emotion steering vectors to add inside the model (local backend only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steer: Vec<crate::steer::SteerSpec>,
    /// Ask for each generated token's log-probability and this many alternatives
    /// (what OpenAI clients call `logprobs`/`top_logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// A finished generation with its counts and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens found already computed in a cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// Per generated token, when the request asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<crate::engine::generate::TokenLogprob>,
}

/// A multiple-choice question: which of `options` is the likeliest continuation of
/// `prompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    pub model: String,
    pub prompt: Prompt,
    pub options: Vec<String>,
}

/// The log-probability of each option, in the order asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub logprobs: Vec<f64>,
    pub prompt_tokens: usize,
    pub ms: f64,
}

impl Scores {
    /// The options' probabilities renormalized over the options only.
    pub fn distribution(&self) -> Vec<f64> {
        softmax(&self.logprobs)
    }
}

/// Probabilities from log-probabilities, normalized to sum to 1; a uniform
/// distribution when every entry is -inf (nothing to prefer).
pub fn softmax(logprobs: &[f64]) -> Vec<f64> {
    let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        let n = logprobs.len().max(1) as f64;
        return vec![1.0 / n; logprobs.len()];
    }
    let exps: Vec<f64> = logprobs.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Where models run. `chat` takes every request of a step at once so that an
/// implementation can decode them together; answers come back in request order.
pub trait Backend: Send + Sync {
    /// The models this backend serves, by the names requests use; the first is the
    /// default.
    fn models(&self) -> Vec<String>;

    /// Generates a reply to each request.
    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>>;

    /// Scores the options of a multiple-choice question.
    fn score(&self, request: &ScoreRequest) -> Result<Scores>;

    /// How many tokens `prompt` takes for `model` and how many the context holds, so
    /// callers can refuse an over-long input before starting work.
    fn prompt_room(&self, model: &str, prompt: &Prompt) -> Result<(usize, usize)>;
}

/// A boxed backend is a backend, so commands can pick local or remote at run time.
impl<B: Backend + ?Sized> Backend for Box<B> {
    fn models(&self) -> Vec<String> {
        (**self).models()
    }

    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>> {
        (**self).chat(requests)
    }

    fn score(&self, request: &ScoreRequest) -> Result<Scores> {
        (**self).score(request)
    }

    fn prompt_room(&self, model: &str, prompt: &Prompt) -> Result<(usize, usize)> {
        (**self).prompt_room(model, prompt)
    }
}

/// The distinct model names among `names`, in order of first appearance: the order in
/// which models take turns with a batch.
pub(crate) fn models_in_order<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for name in names {
        if !order.iter().any(|m| m == name) {
            order.push(name.to_string());
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::softmax;

    #[test]
    fn softmax_sums_to_one_and_handles_all_neg_inf() {
        let p = softmax(&[-1.0, -2.0, -3.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[0] > p[1] && p[1] > p[2]);
        assert_eq!(softmax(&[f64::NEG_INFINITY; 2]), vec![0.5, 0.5]);
    }
}
