//! Criterion benches of the hot path: the sampler over real vocabulary sizes, and one
//! decode step of the default model.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use pathos::engine::arch::transformer::Logits;
use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::{Manifest, resolve_model};
use pathos::engine::sampler::{Sampler, SamplingParams};

fn logits(n: usize) -> Vec<f32> {
    let mut x = 12345u32;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 20.0 - 10.0
        })
        .collect()
}

fn sampler(c: &mut Criterion) {
    for vocab in [49_152usize, 151_936, 262_144] {
        let base = logits(vocab);
        let history: Vec<u32> = (0..64).collect();
        let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
        c.bench_function(&format!("sample greedy {vocab}"), |b| {
            // A fresh copy of the logits per call (the sampler edits them), made
            // outside the timed part.
            b.iter_batched_ref(
                || base.clone(),
                |buf| greedy.sample(buf, &history),
                BatchSize::LargeInput,
            )
        });
        let mut default = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..SamplingParams::default()
        })
        .unwrap();
        c.bench_function(&format!("sample top-k/top-p/min-p {vocab}"), |b| {
            b.iter_batched_ref(
                || base.clone(),
                |buf| default.sample(buf, &history),
                BatchSize::LargeInput,
            )
        });
    }
}

fn decode_step(c: &mut Criterion) {
    let manifest = Manifest::builtin().unwrap();
    let Ok(resolved) = resolve_model(&manifest, None, true, false) else {
        eprintln!("decode step bench skipped: run `pathos models fetch smollm2-135m` first");
        return;
    };
    let model = Model::load(&resolved, &LoadOptions::default()).unwrap();
    let mut cache = model.transformer.new_cache(1024).unwrap();
    let prompt = model
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    model
        .transformer
        .forward(&prompt, &mut cache, Logits::Last)
        .unwrap();
    let start = cache.len();
    c.bench_function("decode step smollm2-135m", |b| {
        b.iter(|| {
            // Stay at the same depth so every iteration costs the same.
            cache.truncate(start);
            model
                .transformer
                .forward(&[28], &mut cache, Logits::Last)
                .unwrap()
        })
    });
}

criterion_group!(benches, sampler, decode_step);
criterion_main!(benches);
