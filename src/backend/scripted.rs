//! [`ScriptedBackend`]: answers from functions instead of a model, and records every
//! call, so debate and detection logic can be tested quickly and exactly.

use std::sync::Mutex;

use super::{Backend, ChatRequest, Completion, Prompt, ScoreRequest, Scores};
use crate::engine::Result;
use crate::engine::generate::FinishReason;

type ChatFn = dyn Fn(&ChatRequest) -> String + Send + Sync;
type ScoreFn = dyn Fn(&ScoreRequest) -> Vec<f64> + Send + Sync;

/// A call the scripted backend received.
#[derive(Debug, Clone)]
pub enum Call {
    Chat(ChatRequest),
    Score(ScoreRequest),
}

/// A backend whose answers are computed by the test that builds it.
pub struct ScriptedBackend {
    models: Vec<String>,
    chat: Box<ChatFn>,
    score: Box<ScoreFn>,
    context: usize,
    calls: Mutex<Vec<Call>>,
}

impl ScriptedBackend {
    /// `chat` writes each reply; `score` gives each option's log-probability.
    pub fn new(
        models: &[&str],
        chat: impl Fn(&ChatRequest) -> String + Send + Sync + 'static,
        score: impl Fn(&ScoreRequest) -> Vec<f64> + Send + Sync + 'static,
    ) -> Self {
        Self {
            models: models.iter().map(|m| m.to_string()).collect(),
            chat: Box::new(chat),
            score: Box::new(score),
            context: 2048,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }
}

/// A rough token count (words), enough for context checks in tests.
fn count(prompt: &Prompt) -> usize {
    prompt
        .messages
        .iter()
        .map(|m| m.content.split_whitespace().count() + 4)
        .sum::<usize>()
        + prompt.prefix.split_whitespace().count()
}

impl Backend for ScriptedBackend {
    fn models(&self) -> Vec<String> {
        self.models.clone()
    }

    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>> {
        Ok(requests
            .iter()
            .map(|r| {
                self.record(Call::Chat(r.clone()));
                let text = (self.chat)(r);
                Completion {
                    generated_tokens: text.split_whitespace().count(),
                    text,
                    finish_reason: FinishReason::Eos,
                    prompt_tokens: count(&r.prompt),
                    cached_tokens: 0,
                    prompt_ms: 0.0,
                    generation_ms: 0.0,
                    logprobs: Vec::new(),
                }
            })
            .collect())
    }

    fn score(&self, request: &ScoreRequest) -> Result<Scores> {
        self.record(Call::Score(request.clone()));
        Ok(Scores {
            logprobs: (self.score)(request),
            prompt_tokens: count(&request.prompt),
            ms: 0.0,
        })
    }

    fn prompt_room(&self, _model: &str, prompt: &Prompt) -> Result<(usize, usize)> {
        Ok((count(prompt), self.context))
    }
}
