//! The generation loop: prompt in, streamed text out.
//!
//! [`generate`] runs a [`GenerateRequest`] on a [`Session`], reporting text to a
//! [`TokenSink`] as soon as it is final (whole UTF-8 characters, stop strings held back)
//! and returning a [`Generation`] with the text, why it ended, counts and timings. The
//! CLI, the chat loop and (later) the debate and the server each implement the sink.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::arch::transformer::Logits;
use super::constrain::Constraint;
use super::error::{Error, Result};
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
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let mut guide = match &req.constraint {
        Some(c) => Some(model.grammars()?.guide(c)?),
        None => None,
    };
    if req.prompt.is_empty() {
        return Err(Error::InvalidSampling("the prompt is empty".into()));
    }
    if req.prompt.len() >= session.capacity() {
        return Err(Error::ContextOverflow {
            prompt_tokens: req.prompt.len(),
            context: session.capacity(),
            max_tokens: req.max_tokens,
        });
    }
    let tf = &model.transformer;
    let cached = session.reuse_prefix(&req.prompt);
    let t0 = Instant::now();
    let new = &req.prompt[cached..];
    let logits = tf.forward(new, &mut session.cache, Logits::Last)?;
    session.tokens.extend_from_slice(new);
    let mut logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
    let prompt_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let t1 = Instant::now();
    let mut decoder = StreamDecoder::new();
    let mut stops = StopBuffer::new(&req.stop);
    let mut text = String::new();
    let mut generated = Vec::new();
    let mut finish = FinishReason::Length;
    let mut emit = |s: &str, text: &mut String| -> bool {
        text.push_str(s);
        sink.text(s)
    };
    while generated.len() < req.max_tokens {
        if let Some(g) = guide.as_mut() {
            g.mask(&mut logits)?;
        }
        let next = sampler.sample(&mut logits, &session.tokens);
        if model.tokenizer.is_end_of_generation(next) {
            finish = FinishReason::Eos;
            break;
        }
        let mut complete = false;
        if let Some(g) = guide.as_mut() {
            g.accept(next)?;
            complete = g.is_finished();
        }
        generated.push(next);
        let mut stopped = false;
        if let Some(delta) = decoder.push(&model.tokenizer, next)? {
            let r = stops.push(&delta);
            if !emit(&r.text, &mut text) {
                finish = FinishReason::Cancelled;
                break;
            }
            stopped = r.stopped;
        }
        if stopped {
            finish = FinishReason::Stop;
            break;
        }
        if complete {
            // The grammar admits nothing more: the answer is whole, as if EOS came.
            finish = FinishReason::Eos;
            break;
        }
        if generated.len() == req.max_tokens || session.cache.len() + 1 > session.capacity() {
            break;
        }
        let l = tf.forward(&[next], &mut session.cache, Logits::Last)?;
        session.tokens.push(next);
        logits = l.squeeze(0)?.to_vec1()?;
    }
    if matches!(finish, FinishReason::Length | FinishReason::Eos) {
        let mut rest = decoder
            .flush(&model.tokenizer)?
            .map(|d| stops.push(&d))
            .map_or(String::new(), |r| {
                if r.stopped {
                    finish = FinishReason::Stop;
                }
                r.text
            });
        if finish != FinishReason::Stop {
            rest.push_str(&stops.finish());
        }
        if !rest.is_empty() && !emit(&rest, &mut text) {
            finish = FinishReason::Cancelled;
        }
    }
    let generation_ms = t1.elapsed().as_secs_f64() * 1000.0;
    Ok(Generation {
        text,
        finish_reason: finish,
        timings: Timings {
            prompt_tokens: req.prompt.len(),
            cached_tokens: cached,
            generated_tokens: generated.len(),
            prompt_ms,
            generation_ms,
            prompt_tokens_per_second: per_second(new.len(), prompt_ms),
            generation_tokens_per_second: per_second(generated.len(), generation_ms),
        },
        tokens: generated,
    })
}
