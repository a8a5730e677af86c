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
use super::stream_decode::StreamDecoder;

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
    /// Report each generated token's log-probability and this many likeliest
    /// alternatives (`Some(0)`: the token's own only); `None` skips the work.
    pub logprobs: Option<usize>,
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
    /// One entry per generated token when the request asked for log-probabilities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// A generated token's log-probability under the model (after any constraint's mask,
/// before sampling penalties), with the likeliest alternatives at that step: what
/// OpenAI-style clients and remote emotion detection read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The likeliest tokens at this step, most likely first.
    pub top: Vec<(String, f32)>,
}

/// Receives text as it is generated. Returning `false` stops generation.
pub trait TokenSink {
    fn text(&mut self, text: &str) -> bool;

    /// A generated token's log-probability, reported before its text (only when the
    /// request asked for them).
    fn logprob(&mut self, _logprob: &TokenLogprob) {}

    /// Whether whoever waits for this generation is gone (checked before each step, so
    /// a cancelled sequence leaves the batch without costing another forward pass).
    fn cancelled(&self) -> bool {
        false
    }
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
    logprobs: Vec<TokenLogprob>,
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
            logprobs: Vec::new(),
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
        session: &Session,
        req: &GenerateRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<Option<u32>> {
        if let Some(g) = self.guide.as_mut() {
            g.mask(logits)?;
        }
        let scored = req.logprobs.map(|top| Scored::new(logits, top));
        let next = self.sampler.sample(logits, &session.tokens);
        if let Some(scored) = scored {
            let lp = scored.entry(model, next);
            sink.logprob(&lp);
            self.logprobs.push(lp);
        }
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
            let r = self.stops.push(delta);
            self.text.push_str(r.text);
            if !sink.text(r.text) {
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
        if self.generated.len() >= req.max_tokens || session.cache.len() + 1 > session.capacity() {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// Flushes held-back text and returns the result.
    fn finish(
        mut self,
        model: &Model,
        req: &GenerateRequest,
        sink: &mut dyn TokenSink,
    ) -> Result<Generation> {
        let mut finish = self.finish.unwrap_or(FinishReason::Length);
        if matches!(finish, FinishReason::Length | FinishReason::Eos) {
            let mut rest = match self.decoder.flush(&model.tokenizer)? {
                Some(d) => {
                    let r = self.stops.push(d);
                    if r.stopped {
                        finish = FinishReason::Stop;
                    }
                    r.text.to_string()
                }
                None => String::new(),
            };
            if finish != FinishReason::Stop {
                rest.push_str(&self.stops.finish());
            }
            if !rest.is_empty() && !self.emit(&rest, sink) {
                finish = FinishReason::Cancelled;
            }
        }
        let generation_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let prompt_tokens = req.prompt.len();
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
            logprobs: self.logprobs,
        })
    }
}

/// One step's distribution, kept from before sampling so the chosen token's
/// log-probability can be read after.
struct Scored {
    logits: Vec<f32>,
    log_total: f32,
    top: Vec<(u32, f32)>,
}

impl Scored {
    fn new(logits: &[f32], top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        let log_total = max + sum.ln();
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
        if top > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if best.len() < top || l > best[best.len() - 1].1 {
                    let at = best.partition_point(|e| e.1 >= l);
                    best.insert(at, (i as u32, l));
                    best.truncate(top);
                }
            }
        }
        Self {
            logits: logits.to_vec(),
            log_total,
            top: best,
        }
    }

    fn entry(&self, model: &Model, token: u32) -> TokenLogprob {
        let text = |id: u32| model.tokenizer.decode(&[id]).unwrap_or_default();
        TokenLogprob {
            token: text(token),
            logprob: self
                .logits
                .get(token as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY)
                - self.log_total,
            top: self
                .top
                .iter()
                .map(|&(id, l)| (text(id), l - self.log_total))
                .collect(),
        }
    }
}

/// Refuses a request that cannot run in a session of `capacity` positions.
fn check(req: &GenerateRequest, capacity: usize) -> Result<()> {
    if req.prompt.is_empty() {
        return Err(Error::InvalidSampling("the prompt is empty".into()));
    }
    if req.prompt.len() >= capacity {
        return Err(Error::ContextOverflow {
            prompt_tokens: req.prompt.len(),
            context: capacity,
            max_tokens: req.max_tokens,
        });
    }
    Ok(())
}

/// A generation that owns its session and its sink, for a scheduler that lets
/// sequences join and leave a running batch between steps (continuous batching):
/// requests from many clients share each forward pass, and one that finishes or is
/// cancelled frees its place at once.
pub struct Sequence {
    session: Session,
    req: GenerateRequest,
    sink: Box<dyn TokenSink + Send>,
    state: Decoding,
    /// Tokens the next forward pass runs: the uncached prompt, then each new token.
    feed: Vec<u32>,
    prefilled: bool,
    done: bool,
}

impl Sequence {
    /// Prepares `req` to run in `session`, keeping whatever prefix of its prompt the
    /// session already holds.
    pub fn new(
        model: &Model,
        mut session: Session,
        req: GenerateRequest,
        sink: Box<dyn TokenSink + Send>,
    ) -> Result<Self> {
        check(&req, session.capacity())?;
        let mut state = Decoding::new(model, &req)?;
        session.set_steering(req.steering.clone());
        state.cached = session.reuse_prefix(&req.prompt);
        let feed = req.prompt[state.cached..].to_vec();
        Ok(Self {
            session,
            req,
            sink,
            state,
            feed,
            prefilled: false,
            done: false,
        })
    }

    /// Whether the sequence has ended and waits to be [`finish`](Self::finish)ed.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Tokens this sequence puts through the next forward pass.
    pub fn pending_tokens(&self) -> usize {
        if self.done { 0 } else { self.feed.len() }
    }

    /// Flushes held-back text and hands back the result and the session (for reuse).
    pub fn finish(mut self, model: &Model) -> (Result<Generation>, Session) {
        let out = self.state.finish(model, &self.req, self.sink.as_mut());
        (out, self.session)
    }

    /// Ends the sequence as cancelled without another step.
    fn cancel(&mut self) {
        self.state.finish.get_or_insert(FinishReason::Cancelled);
        self.done = true;
    }
}

/// Runs one forward pass for every running sequence together: those that just joined
/// process their prompts, the others their last token; then each picks its next token.
/// Sequences whose sink reports cancellation leave before the pass.
pub fn step(model: &Model, seqs: &mut [&mut Sequence]) -> Result<()> {
    for s in seqs.iter_mut().filter(|s| !s.done && s.sink.cancelled()) {
        s.cancel();
    }
    if seqs.iter().all(|s| s.done) {
        return Ok(());
    }
    let t0 = Instant::now();
    let mut logits = STEP_LOGITS.take();
    {
        let mut batch: Vec<(&[u32], &mut KvCache)> = seqs
            .iter_mut()
            .filter(|s| !s.done)
            .map(|s| (s.feed.as_slice(), &mut s.session.cache))
            .collect();
        model
            .transformer
            .forward_batch_into(&mut batch, &mut logits)?;
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let vocab = model.transformer.vocab_size().max(1);
    let result = pick_next(model, seqs, &mut logits, vocab, ms);
    STEP_LOGITS.set(logits);
    result
}

thread_local! {
    /// The logits buffer [`step`] reuses from one call to the next on this thread.
    static STEP_LOGITS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Each running sequence of [`step`] picks its next token from its row of `logits`.
fn pick_next(
    model: &Model,
    seqs: &mut [&mut Sequence],
    logits: &mut [f32],
    vocab: usize,
    ms: f64,
) -> Result<()> {
    for (s, row) in seqs
        .iter_mut()
        .filter(|s| !s.done)
        .zip(logits.chunks_exact_mut(vocab))
    {
        let fed = std::mem::take(&mut s.feed);
        s.session.tokens.extend_from_slice(&fed);
        if !s.prefilled {
            s.prefilled = true;
            s.state.prompt_ms = ms;
            s.state.started = Instant::now();
        }
        match s
            .state
            .step(model, row, &s.session, &s.req, s.sink.as_mut())?
        {
            Some(tok) => s.feed.push(tok),
            None => s.done = true,
        }
    }
    Ok(())
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

/// An empty list of batch entries with the allocation of `v`, free of its borrows: the
/// entries are dropped, and collecting an iterator of none in place reuses the buffer.
fn recycle<'b>(mut v: Vec<(&[u32], &mut KvCache)>) -> Vec<(&'b [u32], &'b mut KvCache)> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the list was cleared"))
        .collect()
}

/// Generates a reply for every job together: the prompts are processed as one batch,
/// then each step decodes one token of every sequence still running in one forward pass,
/// so the weights are read once per step for all of them. A sequence that ends leaves
/// the batch; the others go on. Each job's result is what [`generate`] alone would give
/// it up to float rounding (exactly, for models made of the types in
/// [`crate::engine::quant`]).
pub fn generate_batch(model: &Model, jobs: &mut [Job<'_>]) -> Result<Vec<Generation>> {
    for job in jobs.iter() {
        check(job.req, job.session.capacity())?;
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
    let mut logits = Vec::new();
    {
        let mut batch: Vec<(&[u32], &mut KvCache)> = jobs
            .iter_mut()
            .zip(&news)
            .map(|(j, new)| (*new, &mut j.session.cache))
            .collect();
        tf.forward_batch_into(&mut batch, &mut logits)?;
    }
    let vocab = tf.vocab_size().max(1);
    let prompt_ms = t0.elapsed().as_secs_f64() * 1000.0;
    for ((job, st), new) in jobs.iter_mut().zip(states.iter_mut()).zip(&news) {
        job.session.tokens.extend_from_slice(new);
        st.prompt_ms = prompt_ms;
        st.started = Instant::now();
    }

    // Decoding: `active` holds the jobs still running, in job order. The step's lists
    // are kept from step to step (a step allocates nothing once they have grown).
    let mut active: Vec<usize> = (0..jobs.len()).collect();
    let mut still = Vec::with_capacity(active.len());
    let mut next = Vec::with_capacity(active.len());
    let mut spare: Vec<(&[u32], &mut KvCache)> = Vec::with_capacity(active.len());
    while !active.is_empty() {
        next.clear();
        still.clear();
        for (&i, row) in active.iter().zip(logits.chunks_exact_mut(vocab)) {
            let job = &mut jobs[i];
            if let Some(tok) = states[i].step(model, row, job.session, job.req, job.sink)? {
                next.push([tok]);
                still.push(i);
            }
        }
        std::mem::swap(&mut active, &mut still);
        if active.is_empty() {
            break;
        }
        let mut batch = recycle(spare);
        let mut rest: &mut [Job<'_>] = jobs;
        let mut base = 0;
        for (&i, tok) in active.iter().zip(&next) {
            let (_, tail) = rest.split_at_mut(i - base);
            let (job, tail) = tail.split_first_mut().expect("active index in range");
            batch.push((tok.as_slice(), &mut job.session.cache));
            rest = tail;
            base = i + 1;
        }
        tf.forward_batch_into(&mut batch, &mut logits)?;
        spare = recycle(batch);
        for (&i, tok) in active.iter().zip(&next) {
            jobs[i].session.tokens.push(tok[0]);
        }
    }
    states
        .into_iter()
        .zip(jobs.iter_mut())
        .map(|(st, job)| st.finish(model, job.req, job.sink))
        .collect()
}
