//! [`LocalBackend`]: models loaded in this process, run by the engine.
//!
//! Each model keeps a small pool of sessions (KV caches). A request goes to the session
//! whose cached tokens share the longest prefix with its prompt, so an agent that comes
//! back with a longer version of its last prompt (a debate's next round, the next
//! spectrum of a detection over the same text) only pays for the new tokens. The
//! requests of one `chat` call for one model decode together as a batch (one pass over
//! the weights per step for all of them), and a prompt prefix shared by several of them
//! is computed once. Batches are formed in request order, so the same calls with the
//! same seeds give the same bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Backend, ChatRequest, Completion, Prompt, ScoreRequest, Scores};
use crate::engine::generate::{GenerateRequest, Generation, generate_all};
use crate::engine::model::{Model, Session};
use crate::engine::score::score_options;
use crate::engine::steering::Steering;
use crate::engine::{Error, Result};
use crate::steer::SteerSpec;

/// Sessions kept per model: enough for the writers and critics of a default debate to
/// each find their own history again.
const POOL_SIZE: usize = 8;

/// Sequences decoded together at most; more requests wait for the next batch.
pub(crate) const MAX_BATCH: usize = 8;

/// A shared prefix shorter than this is recomputed rather than copied.
const MIN_SHARED: usize = 16;

/// The tokens a prompt puts before the model: through its chat template unless given
/// as raw text.
pub(crate) fn encode(model: &Model, prompt: &Prompt) -> Result<Vec<u32>> {
    match &prompt.raw {
        Some(text) => model.encode_prompt(text),
        None => model.encode_chat(&prompt.messages, &prompt.prefix),
    }
}

/// What the engine runs for a chat request, once its prompt is tokenized and its
/// steering built.
pub(crate) fn generate_request(
    r: &ChatRequest,
    prompt: Vec<u32>,
    steering: Option<Arc<Steering>>,
) -> GenerateRequest {
    GenerateRequest {
        prompt,
        sampling: r.sampling.clone(),
        max_tokens: r.max_tokens,
        stop: r.stop.clone(),
        constraint: r.constraint.clone(),
        steering,
        logprobs: r.logprobs,
    }
}

/// A generation as the backend reports it; `shared` is the prefix computed for the
/// batch before the generation started (tokens, ms), which is work done, not a cache hit.
pub(crate) fn completion(g: Generation, shared: (usize, f64)) -> Completion {
    Completion {
        text: g.text,
        finish_reason: g.finish_reason,
        prompt_tokens: g.timings.prompt_tokens,
        cached_tokens: g.timings.cached_tokens.saturating_sub(shared.0),
        generated_tokens: g.timings.generated_tokens,
        prompt_ms: g.timings.prompt_ms + shared.1,
        generation_ms: g.timings.generation_ms,
        logprobs: g.logprobs,
    }
}

fn shared_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Gives each session the longest prefix of its prompt that an earlier prompt of the
/// batch shares, when that beats what the session already holds: the earlier ("leader")
/// session computes the prefix once, the others copy it.
///
/// Returns, per session, how many prompt tokens it computed here and in how many
/// milliseconds, so they are not reported as found in a cache.
pub(crate) fn share_prefixes(
    model: &Model,
    sessions: &mut [Session],
    prompts: &[Vec<u32>],
) -> Result<Vec<(usize, f64)>> {
    let mut computed = vec![(0usize, 0f64); prompts.len()];
    // (follower, leader, shared length)
    let mut plan = Vec::new();
    for i in 1..prompts.len() {
        let own = shared_prefix(sessions[i].tokens(), &prompts[i]);
        let best = (0..i)
            .filter(|&j| !plan.iter().any(|&(f, _, _)| f == j))
            .filter(|&j| sessions[j].steered_as(sessions[i].cache().steering()))
            .map(|j| {
                (
                    j,
                    shared_prefix(&prompts[j], &prompts[i]).min(prompts[i].len() - 1),
                )
            })
            .max_by_key(|&(j, n)| (n, std::cmp::Reverse(j)));
        if let Some((j, n)) = best
            && n >= own + MIN_SHARED
        {
            plan.push((i, j, n));
        }
    }
    if plan.is_empty() {
        return Ok(computed);
    }
    // Leaders compute the longest prefix any follower needs, as one batch.
    let mut need: Vec<usize> = vec![0; prompts.len()];
    for &(_, j, n) in &plan {
        need[j] = need[j].max(n);
    }
    let mut starts = Vec::new();
    for (j, &n) in need.iter().enumerate() {
        if n > 0 {
            let cached = shared_prefix(sessions[j].tokens(), &prompts[j][..n]);
            sessions[j].truncate(cached);
            if cached < n {
                starts.push((j, cached));
            }
        }
    }
    if !starts.is_empty() {
        let mut batch: Vec<(&[u32], &mut crate::engine::kv_cache::KvCache)> = Vec::new();
        let mut rest: &mut [Session] = sessions;
        let mut base = 0;
        for &(j, cached) in &starts {
            let (_, tail) = rest.split_at_mut(j - base);
            let (s, tail) = tail.split_first_mut().expect("leader index in range");
            batch.push((&prompts[j][cached..need[j]], s.cache_mut()));
            rest = tail;
            base = j + 1;
        }
        let t0 = std::time::Instant::now();
        model.transformer.prefill(&mut batch)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        for &(j, cached) in &starts {
            sessions[j].set_tokens(&prompts[j][..need[j]]);
            computed[j] = (need[j] - cached, ms);
        }
    }
    for &(i, j, n) in &plan {
        let (a, b) = sessions.split_at_mut(i);
        b[0].copy_prefix(&a[j], n)?;
    }
    Ok(computed)
}

pub(crate) struct Served {
    pub(crate) name: String,
    pub(crate) model: Model,
    /// Least recently used first.
    pub(crate) pool: Mutex<Vec<Session>>,
    /// Steering built for each set of steering specs asked for (vectors are read and
    /// checked once; equal specs share one steering, so their caches serve each other).
    steerings: Mutex<HashMap<String, Option<Arc<Steering>>>>,
}

impl Served {
    /// Returns sessions to the pool as the most recently used, dropping the least
    /// recently used beyond its size.
    pub(crate) fn give_back(&self, sessions: impl IntoIterator<Item = Session>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.extend(sessions);
        let excess = pool.len().saturating_sub(POOL_SIZE);
        pool.drain(..excess);
    }
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
                    steerings: Mutex::new(HashMap::new()),
                })
                .collect(),
        }
    }

    /// The loaded model behind a name.
    pub fn model(&self, name: &str) -> Result<&Model> {
        Ok(&self.served(name)?.model)
    }

    pub(crate) fn served(&self, name: &str) -> Result<&Served> {
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

    /// The steering `specs` ask for on `served`'s model, built once per distinct set.
    pub(crate) fn steering_for(
        &self,
        served: &Served,
        specs: &[SteerSpec],
    ) -> Result<Option<Arc<Steering>>> {
        if specs.is_empty() {
            return Ok(None);
        }
        let key = serde_json::to_string(specs).map_err(|e| Error::Steering(e.to_string()))?;
        let mut cache = served.steerings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(&key) {
            return Ok(s.clone());
        }
        let s = crate::steer::resolve(&served.model, crate::emotion::beam::Beam::builtin(), specs)
            .map_err(|e| Error::Steering(e.to_string()))?;
        cache.insert(key, s.clone());
        Ok(s)
    }

    /// Takes the pooled session best placed for `tokens` under `steering` out of the
    /// pool (a new one when none shares anything and the pool has room to grow).
    pub(crate) fn take_session(
        &self,
        served: &Served,
        pool: &mut Vec<Session>,
        tokens: &[u32],
        steering: Option<&Steering>,
    ) -> Result<Session> {
        let shared = |s: &Session| {
            if s.steered_as(steering) {
                shared_prefix(s.tokens(), tokens)
            } else {
                0
            }
        };
        let best = (0..pool.len()).max_by_key(|&i| (shared(&pool[i]), i));
        Ok(match best {
            Some(i) if shared(&pool[i]) > 0 || pool.len() >= POOL_SIZE => {
                // With nothing shared anywhere, the least recently used one is recycled.
                let i = if shared(&pool[i]) > 0 { i } else { 0 };
                pool.remove(i)
            }
            _ => served.model.new_session()?,
        })
    }

    /// Decodes requests for one model as one batch. A request whose prompt shares a long
    /// prefix with an earlier request's (a debate's agents: same instructions, rubric and
    /// source) gets that prefix's keys and values copied from the earlier one's session
    /// instead of computing them again.
    fn chat_batch(&self, served: &Served, reqs: &[&ChatRequest]) -> Result<Vec<Completion>> {
        let model = &served.model;
        let prompts = reqs
            .iter()
            .map(|r| encode(model, &r.prompt))
            .collect::<Result<Vec<_>>>()?;
        let steerings = reqs
            .iter()
            .map(|r| self.steering_for(served, &r.steer))
            .collect::<Result<Vec<_>>>()?;
        let mut sessions = {
            let mut pool = served.pool.lock().unwrap_or_else(|p| p.into_inner());
            prompts
                .iter()
                .zip(&steerings)
                .map(|(p, s)| {
                    let mut session = self.take_session(served, &mut pool, p, s.as_deref())?;
                    session.set_steering(s.clone());
                    Ok(session)
                })
                .collect::<Result<Vec<_>>>()?
        };
        let result = share_prefixes(model, &mut sessions, &prompts).and_then(|computed| {
            let greqs: Vec<GenerateRequest> = reqs
                .iter()
                .zip(&prompts)
                .zip(&steerings)
                .map(|((r, p), s)| generate_request(r, p.clone(), s.clone()))
                .collect();
            Ok((generate_all(model, &mut sessions, &greqs)?, computed))
        });
        served.give_back(sessions);
        let (gens, computed) = result?;
        Ok(gens
            .into_iter()
            .zip(computed)
            .map(|(g, shared)| completion(g, shared))
            .collect())
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
        let mut session = self.take_session(served, &mut pool, tokens, None)?;
        session.set_steering(None);
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
        let mut out: Vec<Option<Completion>> = vec![None; requests.len()];
        // Requests for one model decode together; models take turns in order of first
        // appearance.
        for name in super::models_in_order(requests.iter().map(|r| r.model.as_str())) {
            let served = self.served(&name)?;
            let idx: Vec<usize> = (0..requests.len())
                .filter(|&i| requests[i].model == name)
                .collect();
            for chunk in idx.chunks(MAX_BATCH) {
                let reqs: Vec<&ChatRequest> = chunk.iter().map(|&i| &requests[i]).collect();
                for (i, c) in chunk.iter().zip(self.chat_batch(served, &reqs)?) {
                    out[*i] = Some(c);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|c| c.expect("every request answered"))
            .collect())
    }

    fn score(&self, req: &ScoreRequest) -> Result<Scores> {
        let start = Instant::now();
        let served = self.served(&req.model)?;
        let model = &served.model;
        let tokens = encode(model, &req.prompt)?;
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
        let tokens = encode(&served.model, prompt)?;
        Ok((tokens.len(), served.model.context))
    }
}
