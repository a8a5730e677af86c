//! Criterion benches of the quantized matrix product at the default model's shapes
//! (SmolLM2-135M: hidden 576, FFN 1536, vocabulary 49 152; a feed-forward matrix of
//! Qwen2.5 and of Gemma 3 for their block types), for one activation row (one
//! sequence decoding) and for 4 and 8 (agents decoding together), with pathos's kernels
//! and candle's `QMatMul` on the same blocks.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pathos::engine::quant::QWeight;

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn matmul(c: &mut Criterion) {
    let dev = Device::Cpu;
    let shapes = [
        ("attn q", 576, 576, GgmlDType::Q4_1),
        ("ffn up", 1536, 576, GgmlDType::Q4_1),
        ("ffn down", 576, 1536, GgmlDType::Q4_1),
        ("output", 49_152, 576, GgmlDType::Q8_0),
        // Qwen2.5-Coder-0.5B's feed-forward (Q5_0) and Gemma 3 270M's down projection (Q4_K
        // or Q6_K by layer).
        ("qwen2.5 ffn up", 4864, 896, GgmlDType::Q5_0),
        ("gemma3 ffn down", 640, 2048, GgmlDType::Q4K),
        ("gemma3 ffn down", 640, 2048, GgmlDType::Q6K),
    ];
    for (name, n, k, dtype) in shapes {
        let w = Tensor::from_vec(values(n * k, 7), (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let own = QWeight::from_qtensor(&q).expect("a type pathos multiplies");
        let theirs = QMatMul::from_qtensor(q).unwrap();
        let mut group = c.benchmark_group(format!("{name} {n}x{k} {dtype:?}"));
        for m in [1usize, 4, 8] {
            let x = values(m * k, 11);
            let xt = Tensor::from_vec(x.clone(), (m, k), &dev).unwrap();
            let mut dst = vec![0f32; m * n];
            group.throughput(Throughput::Elements((m * n * k) as u64));
            group.bench_function(format!("pathos m={m}"), |b| {
                b.iter(|| own.matmul(&x, m, &mut dst))
            });
            group.bench_function(format!("candle m={m}"), |b| {
                b.iter(|| theirs.forward(&xt).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
