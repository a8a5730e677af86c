//! Throughput measurement in llama-bench's terms.
//!
//! `pp N` runs an N-token prompt through a fresh sequence as one batch; `tg N` generates
//! N tokens one at a time from an empty sequence. Each test runs once to warm up, then
//! the tests take turns for `repetitions` rounds; the report gives tokens per second as
//! mean ± standard deviation, with llama-bench's column names, so the two tables can be
//! read side by side.
//!
//! `tg N xA` decodes A sequences together (a debate's agents), each with its own cache,
//! one token of each per step over one copy of the weights; its t/s is the aggregate and
//! `ms_per_step` the latency each sequence sees. `prefix P xA` processes A prompts that
//! share a P-token prefix, once computing the prefix for each and once computing it for
//! one sequence and copying it to the others, as the local backend does for a debate
//! round. Every row carries the process's peak resident memory after its warm-up run, and
//! the machine's streaming read bandwidth measured beside it in each round.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::engine::Result;
use crate::engine::arch::transformer::Logits;
use crate::engine::kv_cache::KvCache;
use crate::engine::model::Model;
use crate::engine::sampler::argmax;
use crate::engine::steering::Steering;

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
    /// Sequences decoded together (1 for the single-stream tests).
    pub agents: usize,
    /// Milliseconds per step as one sequence sees it (tg tests), or for the whole test.
    pub ms_per_step: f64,
    /// Peak resident memory of the process after the test's warm-up run (tests warm up
    /// in order, so later rows include what earlier ones needed), in MiB (0 where the
    /// system does not say).
    pub peak_rss_mib: f64,
    /// Bytes one sequence's KV cache holds at the end of the test, in MiB.
    pub kv_mib: f64,
    /// The machine's streaming read bandwidth on `threads` threads, GB/s, measured
    /// beside this test in each round (mean): one-stream decode reads the whole file
    /// once per token, so `size × avg_ts ÷ agents` against this says how near memory's
    /// limit a run came, and tells a slow run on a shared machine from a slow engine.
    pub mem_read_gbs: f64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub repetitions: usize,
    pub threads: usize,
    pub backend: String,
    /// Agent counts for `tg N xA` (empty: none beyond the single-stream test).
    pub agents: Vec<usize>,
    /// Shared prefix length for the `prefix P xA` test (0 skips it); A is the largest of
    /// `agents`, or 4.
    pub shared_prefix: usize,
    /// With steering, the tg test runs again under it (`tg N steered`), to show what the
    /// per-layer vector adds cost.
    pub steering: Option<std::sync::Arc<crate::engine::steering::Steering>>,
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (`VmHWM`).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
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

fn run_pp(model: &Model, n: usize) -> Result<Sample> {
    let vocab = model.tokenizer.vocab_size();
    let tokens = prompt_tokens(n, vocab);
    let mut s = model.new_session()?;
    let t = Instant::now();
    model
        .transformer
        .forward(&tokens, &mut s.cache, Logits::Last)?;
    let secs = t.elapsed().as_secs_f64();
    Ok(Sample {
        ts: n as f64 / secs,
        ms: secs * 1000.0,
        kv: s.cache.used_bytes(),
    })
}

/// Bytes [`memory_read_gbs`] streams through: more than most CPUs' last-level cache, so
/// the reads come from DRAM.
const STREAM_BYTES: usize = 128 << 20;

/// Streaming read bandwidth over `threads` threads in GB/s: each thread sums its slice
/// of `buf` (filled here on first use), best of two passes.
fn memory_read_gbs(buf: &mut Vec<u64>, threads: usize) -> f64 {
    if buf.is_empty() {
        *buf = (0..STREAM_BYTES / 8).map(|i| i as u64).collect();
    }
    let threads = threads.max(1);
    let chunk = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let start = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let parts: Vec<_> = buf
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best / 1e9
}

/// What one repetition measured: tokens per second, milliseconds per step and the KV
/// cache size of one sequence at the end.
struct Sample {
    ts: f64,
    ms: f64,
    kv: usize,
}

fn run_tg(model: &Model, n: usize, steering: Option<&Arc<Steering>>) -> Result<Sample> {
    let mut s = model.new_session()?;
    s.cache_mut().set_steering(steering.cloned());
    let mut next = model.tokenizer.token_id("<|im_start|>").unwrap_or(1);
    let mut logits = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        let tok = [next];
        model
            .transformer
            .forward_batch_into(&mut [(&tok[..], &mut s.cache)], &mut logits)?;
        next = argmax(&logits);
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(Sample {
        ts: n as f64 / secs,
        ms: secs * 1000.0 / n as f64,
        kv: s.cache.used_bytes(),
    })
}

/// `agents` sequences, each started from a different token, decode `n` tokens each in
/// lock step.
fn run_agents(model: &Model, n: usize, agents: usize) -> Result<Sample> {
    let vocab = model.tokenizer.vocab_size();
    let mut sessions = (0..agents)
        .map(|_| model.new_session())
        .collect::<Result<Vec<_>>>()?;
    let mut next: Vec<[u32; 1]> = prompt_tokens(agents, vocab)
        .into_iter()
        .map(|t| [t])
        .collect();
    let width = model.transformer.vocab_size().max(1);
    let mut logits = Vec::new();
    let t = Instant::now();
    for _ in 0..n {
        let mut batch: Vec<(&[u32], &mut KvCache)> = next
            .iter()
            .zip(sessions.iter_mut())
            .map(|(tok, s)| (tok.as_slice(), &mut s.cache))
            .collect();
        model
            .transformer
            .forward_batch_into(&mut batch, &mut logits)?;
        for (tok, row) in next.iter_mut().zip(logits.chunks_exact(width)) {
            tok[0] = argmax(row);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Ok(Sample {
        ts: (n * agents) as f64 / secs,
        ms: secs * 1000.0 / n as f64,
        kv: sessions[0].cache.used_bytes(),
    })
}

/// `agents` prompts of a shared `prefix` tokens plus 16 tokens of their own, processed as
/// one batch; with `share`, the prefix is computed once and copied to the others.
fn run_prefix(model: &Model, prefix: usize, agents: usize, share: bool) -> Result<Sample> {
    const OWN: usize = 16;
    let vocab = model.tokenizer.vocab_size();
    let all = prompt_tokens(prefix + OWN * agents, vocab);
    let prompts: Vec<Vec<u32>> = (0..agents)
        .map(|a| {
            let mut p = all[..prefix].to_vec();
            p.extend_from_slice(&all[prefix + a * OWN..prefix + (a + 1) * OWN]);
            p
        })
        .collect();
    let mut sessions = (0..agents)
        .map(|_| model.new_session())
        .collect::<Result<Vec<_>>>()?;
    let t = Instant::now();
    let start = if share && prefix > 0 {
        let (first, rest) = sessions.split_first_mut().expect("at least one agent");
        model
            .transformer
            .prefill(&mut [(&prompts[0][..prefix], &mut first.cache)])?;
        for s in rest {
            s.cache.copy_prefix(&first.cache, prefix)?;
        }
        prefix
    } else {
        0
    };
    let mut batch: Vec<(&[u32], &mut KvCache)> = prompts
        .iter()
        .zip(sessions.iter_mut())
        .map(|(p, s)| (&p[start..], &mut s.cache))
        .collect();
    model.transformer.forward_batch(&mut batch)?;
    let secs = t.elapsed().as_secs_f64();
    Ok(Sample {
        ts: ((prefix + OWN) * agents) as f64 / secs,
        ms: secs * 1000.0,
        kv: sessions[0].cache.used_bytes(),
    })
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

/// One test, run once per call.
type Test<'a> = Box<dyn Fn() -> Result<Sample> + 'a>;

/// The tests `opts` asks for, in order: (name, tokens, agents, the test). The pp and tg
/// tests (either may be 0 to skip it), then the steered, agent and shared-prefix ones.
fn plan<'a>(model: &'a Model, opts: &'a BenchOptions) -> Vec<(String, usize, usize, Test<'a>)> {
    let mut tests: Vec<(String, usize, usize, Test<'a>)> = Vec::new();
    let (np, ng) = (opts.n_prompt, opts.n_gen);
    if np > 0 {
        tests.push((
            format!("pp{np}"),
            np,
            1,
            Box::new(move || run_pp(model, np)),
        ));
    }
    if ng > 0 {
        tests.push((
            format!("tg{ng}"),
            ng,
            1,
            Box::new(move || run_tg(model, ng, None)),
        ));
        if let Some(st) = &opts.steering {
            tests.push((
                format!("tg{ng} steered"),
                ng,
                1,
                Box::new(move || run_tg(model, ng, Some(st))),
            ));
        }
        for &a in opts.agents.iter().filter(|&&a| a > 1) {
            tests.push((
                format!("tg{ng} x{a}"),
                ng,
                a,
                Box::new(move || run_agents(model, ng, a)),
            ));
        }
    }
    if opts.shared_prefix > 0 {
        let p = opts.shared_prefix;
        let a = opts
            .agents
            .iter()
            .copied()
            .max()
            .filter(|&a| a > 1)
            .unwrap_or(4);
        for share in [false, true] {
            let how = if share { "shared" } else { "each" };
            tests.push((
                format!("prefix{p} x{a} {how}"),
                p,
                a,
                Box::new(move || run_prefix(model, p, a, share)),
            ));
        }
    }
    tests
}

/// Runs every test of `opts` once to warm up, in order, then `repetitions` rounds of
/// one run of each. Interleaved so a drift in the machine's speed (clock, a neighbour on
/// the host) falls on every test alike: the ratios between tests (N agents against one
/// stream) are what the report is read for, and on a shared machine consecutive blocks
/// of one test each measured up to 30% apart for the same code.
pub fn run(
    model: &Model,
    opts: &BenchOptions,
    on_progress: &mut dyn FnMut(),
) -> Result<Vec<BenchRow>> {
    let tests = plan(model, opts);
    // Peak memory after each test's first run: tests warm up in the listed order (one
    // stream, then more agents), so each figure is the most that test and those before
    // it needed.
    let mut peaks = Vec::with_capacity(tests.len());
    for (_, _, _, f) in &tests {
        f()?;
        peaks.push(peak_rss_mib());
    }
    let mut samples: Vec<Vec<Sample>> = tests.iter().map(|_| Vec::new()).collect();
    let mut memory: Vec<Vec<f64>> = tests.iter().map(|_| Vec::new()).collect();
    // Allocated after the warm-ups, so the peaks above do not count it.
    let mut stream = Vec::new();
    for _ in 0..opts.repetitions.max(1) {
        for (((_, _, _, f), runs), gbs) in tests.iter().zip(&mut samples).zip(&mut memory) {
            gbs.push(memory_read_gbs(&mut stream, opts.threads));
            runs.push(f()?);
            on_progress();
        }
    }
    let rows = tests
        .into_iter()
        .zip(samples)
        .zip(peaks)
        .zip(memory)
        .map(|((((test, n, agents, _), samples), peak), gbs)| {
            let ts: Vec<f64> = samples.iter().map(|s| s.ts).collect();
            let (avg, sd) = mean_std(&ts);
            let ms = samples.iter().map(|s| s.ms).sum::<f64>() / samples.len() as f64;
            BenchRow {
                model: format!("{} {}", model.info.architecture, model.name),
                size: model.info.file_size,
                params: model.info.parameters,
                backend: opts.backend.clone(),
                threads: opts.threads,
                test,
                n_tokens: n,
                avg_ts: avg,
                stddev_ts: sd,
                samples_ts: ts,
                agents,
                ms_per_step: ms,
                peak_rss_mib: peak,
                kv_mib: samples.last().map_or(0, |s| s.kv) as f64 / (1024.0 * 1024.0),
                mem_read_gbs: mean_std(&gbs).0,
            }
        })
        .collect();
    Ok(rows)
}

/// How many tests `run` will run, times the repetitions (for a progress bar).
pub fn count(model: &Model, opts: &BenchOptions) -> usize {
    plan(model, opts).len() * opts.repetitions.max(1)
}

/// The report as a markdown table with llama-bench's columns.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| model | size | params | backend | threads | test | t/s | ms | peak RSS | memory read |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} MiB | {:.2} M | {} | {} | {} | {:.2} ± {:.2} | {:.1} | {:.0} MiB | {:.1} GB/s |\n",
            r.model,
            r.size as f64 / (1024.0 * 1024.0),
            r.params as f64 / 1e6,
            r.backend,
            r.threads,
            r.test,
            r.avg_ts,
            r.stddev_ts,
            r.ms_per_step,
            r.peak_rss_mib,
            r.mem_read_gbs
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_bandwidth_is_measured_over_the_whole_buffer() {
        let mut buf = Vec::new();
        let gbs = memory_read_gbs(&mut buf, 2);
        assert_eq!(buf.len() * 8, STREAM_BYTES);
        // Any machine that runs the tests reads faster than 0.1 GB/s and slower than
        // 10 TB/s; a pass that read nothing or timed nothing lands outside.
        assert!(
            gbs.is_finite() && (0.1..10_000.0).contains(&gbs),
            "{gbs} GB/s"
        );
        // The buffer is kept: a second call measures the same bytes.
        let again = memory_read_gbs(&mut buf, 1);
        assert!(again.is_finite() && again > 0.1, "{again} GB/s");
    }
}
