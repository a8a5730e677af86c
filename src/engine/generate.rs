//! The generation loop: prompt in, streamed text out.
//!
//! [`generate`] runs a [`GenerateRequest`] on a [`Session`], reporting text to a
//! [`TokenSink`] as soon as it is final (whole UTF-8 characters, stop strings held back)
//! and returning a [`Generation`] with the text, why it ended, counts and timings. The
//! CLI, the chat loop and (later) the debate and the server each implement the sink.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::constrain::Constraint;
use super::error::{Error, Result};
use super::kv_cache::KvCache;
use super::model::{Model, Session};
use super::sampler::{Sampler, SamplingParams};
use super::stop::StopBuffer;
use super::tokenizer::StreamDecoder;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The whole prompt, already templated and tokenized.
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// A shape the answer must have (JSON schema, choice, grammar); `None` for free text.
    pub constraint: Option<Constraint>,
    /// Vectors added to the residual stream (emotion steering); `None` runs the model
    /// as it is.
    pub steering: Option<std::sync::Arc<super::steering::Steering>>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Eos,
    /// A stop string was reached.
    Stop,
    /// `max_tokens` were generated or the context is full.
    Length,
    /// The sink asked to stop (for example, stdout was closed).
    Cancelled,
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache and not processed again.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    pub prompt_tokens_per_second: f64,
    pub generation_tokens_per_second: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub tokens: Vec<u32>,
    pub timings: Timings,
}

/// Receives text as it is generated. Returning `false` stops generation.
pub trait TokenSink {
    fn text(&mut self, text: &str) -> bool;
}

impl<F: FnMut(&str) -> bool> TokenSink for F {
    fn text(&mut self, text: &str) -> bool {
        self(text)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Generates a reply to `req.prompt` in `session`, reusing any cached prefix.
pub fn generate(
    model: &Model,
    session: &mut Session,
    req: &GenerateRequest,
    sink: &mut dyn TokenSink,
) -> Result<Generation> {
    let mut out = generate_batch(model, &mut [Job { session, req, sink }])?;
    Ok(out.pop().expect("one generation per job"))
}

/// One sequence of a batch: where it runs, what it asks and where its text goes.
pub struct Job<'a> {
    pub session: &'a mut Session,
    pub req: &'a GenerateRequest,
    pub sink: &'a mut dyn TokenSink,
}

/// A sequence being decoded: everything between one step's logits and the next token.
struct Decoding {
    sampler: Sampler,
    guide: Option<super::constrain::Guide>,
    decoder: StreamDecoder,
    stops: StopBuffer,
    text: String,
    generated: Vec<u32>,
    finish: Option<FinishReason>,
    cached: usize,
    prompt_ms: f64,
    started: Instant,
}

impl Decoding {
    fn new(model: &Model, req: &GenerateRequest) -> Result<Self> {
        Ok(Self {
            sampler: Sampler::new(req.sampling.clone())?,
            guide: match &req.constraint {
                Some(c) => Some(model.grammars()?.guide(c)?),
                None => None,
            },
            decoder: StreamDecoder::new(),
            stops: StopBuffer::new(&req.stop),
            text: String::new(),
            generated: Vec::new(),
            finish: None,
            cached: 0,
            prompt_ms: 0.0,
            started: Instant::now(),
        })
    }

    fn emit(&mut self, s: &str, sink: &mut dyn TokenSink) -> bool {
        self.text.push_str(s);
        sink.text(s)
    }

    /// Picks the next token from `logits` and reports its text. Returns the token to
    /// feed back, or `None` once the sequence has ended (`self.finish` says why).
    fn step(
        &mut self,
        model: &Model,
        logits: &mut [f32],
        job: &mut Job<'_>,
    ) -> Result<Option<u32>> {
        let history = &job.session.tokens;
        if let Some(g) = self.guide.as_mut() {
            g.mask(logits)?;
        }
        let next = self.sampler.sample(logits, history);
        if model.tokenizer.is_end_of_generation(next) {
            self.finish = Some(FinishReason::Eos);
            return Ok(None);
        }
        let mut complete = false;
        if let Some(g) = self.guide.as_mut() {
            g.accept(next)?;
            complete = g.is_finished();
        }
        self.generated.push(next);
        if let Some(delta) = self.decoder.push(&model.tokenizer, next)? {
            let r = self.stops.push(&delta);
            self.text.push_str(&r.text);
            if !job.sink.text(&r.text) {
                self.finish = Some(FinishReason::Cancelled);
                return Ok(None);
            }
            if r.stopped {
                self.finish = Some(FinishReason::Stop);
                return Ok(None);
            }
        }
        if complete {
            // The grammar admits nothing more: the answer is whole, as if EOS came.
            self.finish = Some(FinishReason::Eos);
            return Ok(None);
        }
        let session = &job.session;
        if self.generated.len() >= job.req.max_tokens
            || session.cache.len() + 1 > session.capacity()
        {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Flushes held-back text and returns the result.
    fn finish(mut self, model: &Model, job: &mut Job<'_>) -> Result<Generation> {
        let mut finish = self.finish.unwrap_or(FinishReason::Length);
        if matches!(finish, FinishReason::Length | FinishReason::Eos) {
            let mut rest = match self.decoder.flush(&model.tokenizer)? {
                Some(d) => {
                    let r = self.stops.push(&d);
                    if r.stopped {
                        finish = FinishReason::Stop;
                    }
                    r.text
                }
                None => String::new(),
            };
            if finish != FinishReason::Stop {
                rest.push_str(&self.stops.finish());
            }
            if !rest.is_empty() && !self.emit(&rest, job.sink) {
                finish = FinishReason::Cancelled;
            }
        }
        let generation_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let prompt_tokens = job.req.prompt.len();
        let new = prompt_tokens - self.cached;
        Ok(Generation {
            text: self.text,
            finish_reason: finish,
            timings: Timings {
                prompt_tokens,
                cached_tokens: self.cached,
                generated_tokens: self.generated.len(),
                prompt_ms: self.prompt_ms,
                generation_ms,
                prompt_tokens_per_second: per_second(new, self.prompt_ms),
                generation_tokens_per_second: per_second(self.generated.len(), generation_ms),
            },
            tokens: self.generated,
        })
    }
}

/// Generates a reply to each request in its session, all decoded as one batch, without
/// streaming (for callers that only want the results).
pub fn generate_all(
    model: &Model,
    sessions: &mut [Session],
    reqs: &[GenerateRequest],
) -> Result<Vec<Generation>> {
    let mut sinks: Vec<fn(&str) -> bool> = vec![|_| true; reqs.len()];
    let mut jobs: Vec<Job<'_>> = sessions
        .iter_mut()
        .zip(reqs)
        .zip(sinks.iter_mut())
        .map(|((session, req), sink)| Job { session, req, sink })
        .collect();
    generate_batch(model, &mut jobs)
}

/// Generates a reply for every job together: the prompts are processed as one batch,
/// then each step decodes one token of every sequence still running in one forward pass,
/// so the weights are read once per step for all of them. A sequence that ends leaves
/// the batch; the others go on. Each job's result is what [`generate`] alone would give
/// it up to float rounding (exactly, for models made of the types in
/// [`crate::engine::quant`]).
pub fn generate_batch(model: &Model, jobs: &mut [Job<'_>]) -> Result<Vec<Generation>> {
    for job in jobs.iter() {
        let req = job.req;
        if req.prompt.is_empty() {
            return Err(Error::InvalidSampling("the prompt is empty".into()));
        }
        if req.prompt.len() >= job.session.capacity() {
            return Err(Error::ContextOverflow {
                prompt_tokens: req.prompt.len(),
                context: job.session.capacity(),
                max_tokens: req.max_tokens,
            });
        }
    }
    let tf = &model.transformer;
    let mut states = jobs
        .iter()
        .map(|j| Decoding::new(model, j.req))
        .collect::<Result<Vec<_>>>()?;

    // Prompts: each session keeps what it already holds of its prompt.
    let t0 = Instant::now();
    let mut news = Vec::with_capacity(jobs.len());
    for (job, st) in jobs.iter_mut().zip(states.iter_mut()) {
        job.session.set_steering(job.req.steering.clone());
        st.cached = job.session.reuse_prefix(&job.req.prompt);
        news.push(&job.req.prompt[st.cached..]);
    }
    let logits = {
        let mut batch: Vec<(&[u32], &mut KvCache)> = jobs
            .iter_mut()
            .zip(&news)
            .map(|(j, new)| (*new, &mut j.session.cache))
            .collect();
        tf.forward_batch(&mut batch)?
    };
    let prompt_ms = t0.elapsed().as_secs_f64() * 1000.0;
    for ((job, st), new) in jobs.iter_mut().zip(states.iter_mut()).zip(&news) {
        job.session.tokens.extend_from_slice(new);
        st.prompt_ms = prompt_ms;
        st.started = Instant::now();
    }
    let mut logits: Vec<Vec<f32>> = logits.to_vec2()?;

    // Decoding: `active` holds the jobs still running, in job order.
    let mut active: Vec<usize> = (0..jobs.len()).collect();
    while !active.is_empty() {
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (&i, row) in active.iter().zip(logits.iter_mut()) {
            if let Some(tok) = states[i].step(model, row, &mut jobs[i])? {
                next.push([tok]);
                still.push(i);
            }
        }
        active = still;
        if active.is_empty() {
            break;
        }
        let mut batch: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(active.len());
        let mut rest: &mut [Job<'_>] = jobs;
        let mut base = 0;
        for (&i, tok) in active.iter().zip(&next) {
            let (_, tail) = rest.split_at_mut(i - base);
            let (job, tail) = tail.split_first_mut().expect("active index in range");
            batch.push((tok.as_slice(), &mut job.session.cache));
            rest = tail;
            base = i + 1;
        }
        logits = tf.forward_batch(&mut batch)?.to_vec2()?;
        for (&i, tok) in active.iter().zip(&next) {
            jobs[i].session.tokens.push(tok[0]);
        }
    }
    states
        .into_iter()
        .zip(jobs.iter_mut())
        .map(|(st, job)| st.finish(model, job))
        .collect()
}
