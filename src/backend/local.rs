//! [`LocalBackend`]: models loaded in this process, run by the engine.
//!
//! Each model keeps a small pool of sessions (KV caches). A request goes to the session
//! whose cached tokens share the longest prefix with its prompt, so an agent that comes
//! back with a longer version of its last prompt (a debate's next round, the next
//! spectrum of a detection over the same text) only pays for the new tokens. Requests
//! run one after another in the order given, which keeps results reproducible: the same
//! calls with the same seeds give the same bytes.

use std::sync::Mutex;
use std::time::Instant;

use super::{Backend, ChatRequest, Completion, Prompt, ScoreRequest, Scores};
use crate::engine::generate::{GenerateRequest, generate};
use crate::engine::model::{Model, Session};
use crate::engine::score::score_options;
use crate::engine::{Error, Result};

/// Sessions kept per model: enough for the writers and critics of a default debate to
/// each find their own history again.
const POOL_SIZE: usize = 4;

struct Served {
    name: String,
    model: Model,
    /// Least recently used first.
    pool: Mutex<Vec<Session>>,
}

/// Runs requests on GGUF models loaded in this process.
pub struct LocalBackend {
    served: Vec<Served>,
}

impl LocalBackend {
    /// Serves `models` under the given names; the first is the default.
    pub fn new(models: Vec<(String, Model)>) -> Self {
        Self {
            served: models
                .into_iter()
                .map(|(name, model)| Served {
                    name,
                    model,
                    pool: Mutex::new(Vec::new()),
                })
                .collect(),
        }
    }

    /// The loaded model behind a name.
    pub fn model(&self, name: &str) -> Result<&Model> {
        Ok(&self.served(name)?.model)
    }

    fn served(&self, name: &str) -> Result<&Served> {
        self.served
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                hint: format!(
                    "; this backend serves: {}",
                    self.served
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// Runs `f` on the pooled session best placed for `tokens`, then returns it to the
    /// pool as the most recently used.
    fn with_session<T>(
        &self,
        served: &Served,
        tokens: &[u32],
        f: impl FnOnce(&mut Session) -> Result<T>,
    ) -> Result<T> {
        let mut pool = served.pool.lock().unwrap_or_else(|p| p.into_inner());
        let shared = |s: &Session| {
            s.tokens()
                .iter()
                .zip(tokens)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let best = (0..pool.len()).max_by_key(|&i| (shared(&pool[i]), i));
        let mut session = match best {
            Some(i) if shared(&pool[i]) > 0 || pool.len() >= POOL_SIZE => {
                // With nothing shared anywhere, the least recently used one is recycled.
                let i = if shared(&pool[i]) > 0 { i } else { 0 };
                pool.remove(i)
            }
            _ => served.model.new_session()?,
        };
        let out = f(&mut session);
        pool.push(session);
        out
    }
}

impl Backend for LocalBackend {
    fn models(&self) -> Vec<String> {
        self.served.iter().map(|s| s.name.clone()).collect()
    }

    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>> {
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let served = self.served(&req.model)?;
            let model = &served.model;
            let tokens = model.encode_chat(&req.prompt.messages, &req.prompt.prefix)?;
            let g = self.with_session(served, &tokens, |session| {
                let greq = GenerateRequest {
                    prompt: tokens.clone(),
                    sampling: req.sampling.clone(),
                    max_tokens: req.max_tokens,
                    stop: req.stop.clone(),
                    constraint: req.constraint.clone(),
                };
                generate(model, session, &greq, &mut |_: &str| true)
            })?;
            out.push(Completion {
                text: g.text,
                finish_reason: g.finish_reason,
                prompt_tokens: g.timings.prompt_tokens,
                cached_tokens: g.timings.cached_tokens,
                generated_tokens: g.timings.generated_tokens,
                prompt_ms: g.timings.prompt_ms,
                generation_ms: g.timings.generation_ms,
            });
        }
        Ok(out)
    }

    fn score(&self, req: &ScoreRequest) -> Result<Scores> {
        let start = Instant::now();
        let served = self.served(&req.model)?;
        let model = &served.model;
        let tokens = model.encode_chat(&req.prompt.messages, &req.prompt.prefix)?;
        let options = req
            .options
            .iter()
            .map(|o| model.tokenizer.encode(o, false))
            .collect::<Result<Vec<_>>>()?;
        let logprobs = self.with_session(served, &tokens, |session| {
            score_options(model, session, &tokens, &options)
        })?;
        Ok(Scores {
            logprobs,
            prompt_tokens: tokens.len(),
            ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn prompt_room(&self, model: &str, prompt: &Prompt) -> Result<(usize, usize)> {
        let served = self.served(model)?;
        let tokens = served.model.encode_chat(&prompt.messages, &prompt.prefix)?;
        Ok((tokens.len(), served.model.context))
    }
}
