//! Throughput measurement in llama-bench's terms.
//!
//! `pp N` runs an N-token prompt through a fresh sequence as one batch; `tg N` generates
//! N tokens one at a time from an empty sequence. Each test runs once to warm up, then
//! `repetitions` times; the report gives tokens per second as mean ± standard deviation,
//! with llama-bench's column names, so the two tables can be read side by side.

use std::time::Instant;

use serde::Serialize;

use crate::engine::Result;
use crate::engine::arch::transformer::Logits;
use crate::engine::model::Model;
use crate::engine::sampler::argmax;

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub model: String,
    /// Bytes of the model file.
    pub size: u64,
    pub params: usize,
    pub backend: String,
    pub threads: usize,
    /// `pp128`, `tg64`, …
    pub test: String,
    pub n_tokens: usize,
    /// Tokens per second, mean and standard deviation over the repetitions.
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// Each repetition's tokens per second.
    pub samples_ts: Vec<f64>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub repetitions: usize,
    pub threads: usize,
    pub backend: String,
}

/// Deterministic pseudo-random prompt tokens (llama-bench also uses random tokens).
fn prompt_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab.max(1) as u64) as u32
        })
        .collect()
}

fn run_pp(model: &Model, n: usize) -> Result<f64> {
    let vocab = model.tokenizer.vocab_size();
    let tokens = prompt_tokens(n, vocab);
    let mut s = model.new_session()?;
    let t = Instant::now();
    model
        .transformer
        .forward(&tokens, &mut s.cache, Logits::Last)?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn run_tg(model: &Model, n: usize) -> Result<f64> {
    let mut s = model.new_session()?;
    let mut next = model.tokenizer.token_id("<|im_start|>").unwrap_or(1);
    let t = Instant::now();
    for _ in 0..n {
        let l = model
            .transformer
            .forward(&[next], &mut s.cache, Logits::Last)?;
        next = argmax(&l.squeeze(0)?.to_vec1::<f32>()?);
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Runs the pp and tg tests (either may be 0 to skip it).
pub fn run(
    model: &Model,
    opts: &BenchOptions,
    on_progress: &mut dyn FnMut(),
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    type Test = fn(&Model, usize) -> Result<f64>;
    let tests: [(&str, usize, Test); 2] =
        [("pp", opts.n_prompt, run_pp), ("tg", opts.n_gen, run_tg)];
    for (name, n, f) in tests {
        if n == 0 {
            continue;
        }
        f(model, n)?; // warm-up
        let mut samples = Vec::with_capacity(opts.repetitions);
        for _ in 0..opts.repetitions.max(1) {
            samples.push(f(model, n)?);
            on_progress();
        }
        let (avg, sd) = mean_std(&samples);
        rows.push(BenchRow {
            model: format!("{} {}", model.info.architecture, model.name),
            size: model.info.file_size,
            params: model.info.parameters,
            backend: opts.backend.clone(),
            threads: opts.threads,
            test: format!("{name}{n}"),
            n_tokens: n,
            avg_ts: avg,
            stddev_ts: sd,
            samples_ts: samples,
        });
    }
    Ok(rows)
}

/// The report as a markdown table with llama-bench's columns.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| model | size | params | backend | threads | test | t/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} MiB | {:.2} M | {} | {} | {} | {:.2} ± {:.2} |\n",
            r.model,
            r.size as f64 / (1024.0 * 1024.0),
            r.params as f64 / 1e6,
            r.backend,
            r.threads,
            r.test,
            r.avg_ts,
            r.stddev_ts
        ));
    }
    out
}
