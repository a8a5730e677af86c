//! Heap allocations per decode step of the default model, counted by a wrapping global
//! allocator: how far the CPU decode loop is from allocating nothing per token. Prints
//! allocations and bytes per step for one sequence and for four decoding together.
//!
//!   cargo bench --bench alloc

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use pathos::engine::arch::transformer::Logits;
use pathos::engine::generate::{GenerateRequest, generate};
use pathos::engine::kv_cache::KvCache;
use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::{Manifest, resolve_model};
use pathos::engine::sampler::SamplingParams;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// only read and bumped.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted(steps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..steps {
        f();
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / steps as f64,
        (b1 - b0) as f64 / steps as f64,
    )
}

fn main() {
    let manifest = Manifest::builtin().unwrap();
    let Ok(resolved) = resolve_model(&manifest, None, true, false) else {
        eprintln!("alloc bench skipped: run `pathos models fetch smollm2-135m` first");
        return;
    };
    let model = Model::load(&resolved, &LoadOptions::default()).unwrap();
    let tf = &model.transformer;
    let mut one = model.new_session().unwrap();
    tf.forward(&[1, 2, 3, 4], one.cache_mut(), Logits::Last)
        .unwrap();
    // Warm-up, then count. The decode step's form: logits into a kept buffer.
    let mut logits = Vec::new();
    let mut step = |cache: &mut KvCache| {
        tf.forward_batch_into(&mut [(&[28u32][..], cache)], &mut logits)
            .unwrap();
    };
    for _ in 0..4 {
        step(one.cache_mut());
    }
    let (a, b) = counted(32, || step(one.cache_mut()));
    println!(
        "one sequence: {a:.0} allocations, {:.1} KiB per decode step",
        b / 1024.0
    );
    let mut four: Vec<_> = (0..4).map(|_| model.new_session().unwrap()).collect();
    let tokens = [[5u32], [6], [7], [8]];
    let mut logits = Vec::new();
    let mut step4 = || {
        let [a, b, c, d] = four.as_mut_slice() else {
            unreachable!("four sessions")
        };
        let mut batch: [(&[u32], &mut KvCache); 4] = [
            (&tokens[0], a.cache_mut()),
            (&tokens[1], b.cache_mut()),
            (&tokens[2], c.cache_mut()),
            (&tokens[3], d.cache_mut()),
        ];
        tf.forward_batch_into(&mut batch, &mut logits).unwrap();
    };
    for _ in 0..4 {
        step4();
    }
    let (a, b) = counted(32, step4);
    println!(
        "four sequences: {a:.0} allocations, {:.1} KiB per decode step",
        b / 1024.0
    );

    // The whole generation loop (sampling with the default settings, detokenization,
    // stop strings, streaming): a 48-token run minus a 16-token run, per token.
    let prompt = model.tokenizer.encode("Once upon a time", true).unwrap();
    let run = |max_tokens: usize| {
        let req = GenerateRequest {
            prompt: prompt.clone(),
            sampling: SamplingParams::default(),
            max_tokens,
            stop: vec!["THE END".into()],
            constraint: None,
            steering: None,
            logprobs: None,
        };
        let mut session = model.new_session().unwrap();
        let mut sink = |_: &str| true;
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let g = generate(&model, &mut session, &req, &mut sink).unwrap();
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        (a1 - a0, b1 - b0, g.tokens.len())
    };
    run(16);
    let (a16, b16, n16) = run(16);
    let (a48, b48, n48) = run(48);
    let per = (n48 - n16).max(1) as f64;
    println!(
        "generation loop: {:.1} allocations, {:.2} KiB per token ({} vs {} tokens)",
        (a48 as f64 - a16 as f64) / per,
        (b48 as f64 - b16 as f64) / per / 1024.0,
        n48,
        n16
    );
}
