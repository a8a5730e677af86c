//! The CPU forward pass's operations between the matrix products, over plain slices,
//! and the buffers they work in.
//!
//! Done with candle tensors, each norm, bias, activation and residual add of a decode
//! step allocates its result and runs on the main thread while the workers wait; a
//! SmolLM2 step made ~3 700 allocations. Here every operation writes into [`Scratch`],
//! buffers that keep their size from one step to the next, so a decode step allocates
//! nothing once warm.

use super::Activation;
use super::host_attention::Span;
use crate::engine::quant::Activations;

/// Working memory of one forward pass, reused by the next: sized for the largest batch
/// seen (row counts of decode steps; a long prompt gets buffers of its own, see
/// [`Scratch::keeps`]).
#[derive(Default)]
pub struct Scratch {
    pub tokens: Vec<u32>,
    pub spans: Vec<Span>,
    /// The residual stream, `[rows, n_embd]`.
    pub x: Vec<f32>,
    /// A normed copy of `x`, the projections' input.
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Attention output, `[rows, n_head * head_dim]`.
    pub att: Vec<f32>,
    /// A block's output before the residual add, `[rows, n_embd]`.
    pub o: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub acts: Activations,
}

/// Widths of the buffers per row.
#[derive(Debug, Clone, Copy)]
pub struct Widths {
    pub n_embd: usize,
    pub q: usize,
    pub kv: usize,
    pub n_ff: usize,
}

impl Scratch {
    /// Batches up to this many rows keep their buffers for the next pass (decode steps
    /// of up to 64 sequences); larger ones (prompts) use buffers freed when they end, so
    /// a long prompt does not leave its memory behind.
    pub const KEEP_ROWS: usize = 64;

    /// Whether a pass of `rows` rows should work in the kept buffers.
    pub fn keeps(rows: usize) -> bool {
        rows <= Self::KEEP_ROWS
    }

    /// Sizes every buffer for `rows` rows (no allocation when they were this large
    /// before).
    pub fn size(&mut self, rows: usize, w: Widths) {
        let fit = |b: &mut Vec<f32>, n: usize| {
            b.clear();
            b.resize(n, 0.0);
        };
        fit(&mut self.x, rows * w.n_embd);
        fit(&mut self.h, rows * w.n_embd);
        fit(&mut self.o, rows * w.n_embd);
        fit(&mut self.q, rows * w.q);
        fit(&mut self.att, rows * w.q);
        fit(&mut self.k, rows * w.kv);
        fit(&mut self.v, rows * w.kv);
        fit(&mut self.gate, rows * w.n_ff);
        fit(&mut self.up, rows * w.n_ff);
    }
}

/// `out = x / rms(x) · w` for each row of `x` (rows as wide as `w`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (row, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let scale = inv_rms(row, eps);
        for ((o, &v), &g) in dst.iter_mut().zip(row).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm`] in place, for each `w.len()`-wide chunk (per-head norms).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let scale = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

/// `1 / √(mean(x²) + ε)`, the square sum taken in f64 as llama.cpp takes it (four
/// lanes, so it stays vectorised).
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mut acc = [0f64; 4];
    let chunks = row.chunks_exact(4);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    let mean = (acc.iter().sum::<f64>() + tail) / row.len().max(1) as f64;
    1.0 / (mean as f32 + eps).sqrt()
}

/// `x += y`, elementwise.
pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `row` to every `row.len()`-wide row of `x` (biases, steering vectors).
pub fn add_to_rows(x: &mut [f32], row: &[f32]) {
    for r in x.chunks_exact_mut(row.len()) {
        add(r, row);
    }
}

/// e^x within 2 ulp of the library's `expf` for finite `x` (0 below e^-87.3, the
/// largest float's neighbourhood clamped at e^88.37), written as plain arithmetic that
/// the compiler turns into vector code. The library's `expf` is one call per value: in
/// four agents' decode step the gated feed-forward's activation and the attention
/// softmax called it ~250 000 times. Range reduction by ln 2 in two parts, then a
/// degree-7 polynomial on |r| ≤ ln 2 / 2 (the classic single-precision coefficients).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.376_26;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let c = x.clamp(LO, HI);
    let t = c * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = n.mul_add(-0.693_359_4, c);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for k in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p.mul_add(r, k);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    if x < LO {
        0.0
    } else {
        y * exp2_of_rounded(t, ROUND)
    }
}

/// 2^n for the integer `n = t - round` that `t = v + round` holds in its low mantissa
/// bits (|n| < 2^22), by integer arithmetic on those bits: `n as i32` is a saturating
/// conversion the compiler cannot vectorize, and it cost sixteen scalar conversions per
/// vector.
#[inline(always)]
fn exp2_of_rounded(t: f32, round: f32) -> f32 {
    f32::from_bits(
        t.to_bits()
            .wrapping_sub(round.to_bits())
            .wrapping_add(127)
            .wrapping_shl(23),
    )
}

/// `gate = act(gate) · up`, the gated feed-forward's input to its down projection.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + exp(-*g)) * u;
            }
        }
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for (g, &u) in gate.iter_mut().zip(up) {
                let x = *g;
                // tanh y = 1 - 2 / (e^2y + 1), through the vectorized `exp`: within
                // 1e-7 of the library's tanh, which is what 1 + tanh needs.
                let y = SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x);
                let t = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
                *g = 0.5 * x * (1.0 + t) * u;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 6.0
            })
            .collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_library_and_exact_at_the_edges() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (want, got) = (x.exp(), exp(x));
            worst = worst.max((got - want).abs() / want);
            x += 0.000_37;
        }
        // Two ulp of a float in [1, 2) is 2.4e-7.
        assert!(worst <= 2.4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
    }

    #[test]
    fn exp_takes_its_exponent_from_bits_with_the_same_results_as_a_conversion() {
        // Every exponent `exp` can reach after its clamp (-126..=128): the bit arithmetic
        // must give what the saturating conversion it replaced gave, so forward passes
        // (and the fixtures) stay bit-identical.
        const ROUND: f32 = 12_582_912.0;
        for n in -126i32..=128 {
            let t = n as f32 + ROUND;
            let converted = f32::from_bits((((t - ROUND) as i32 + 127) << 23) as u32);
            assert_eq!(
                exp2_of_rounded(t, ROUND).to_bits(),
                converted.to_bits(),
                "2^{n}"
            );
        }
        assert!(exp(f32::NAN).is_nan());
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn norms_and_activations_match_candle() {
        let dev = Device::Cpu;
        let (rows, d) = (3, 40);
        let x = values(rows * d, 1);
        let w = values(d, 2);
        let xt = Tensor::from_slice(&x, (rows, d), &dev).unwrap();
        let wt = Tensor::from_slice(&w, d, &dev).unwrap();
        let want = candle_nn::ops::rms_norm(&xt, &wt, 1e-6).unwrap();
        let mut got = vec![0f32; rows * d];
        rms_norm(&x, &w, 1e-6, &mut got);
        close(&got, &want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let mut inplace = x.clone();
        rms_norm_in_place(&mut inplace, &w, 1e-6);
        close(&inplace, &got);

        let up = values(rows * d, 3);
        let ut = Tensor::from_slice(&up, (rows, d), &dev).unwrap();
        for (act, want) in [
            (Activation::Silu, candle_nn::ops::silu(&xt).unwrap()),
            (Activation::GeluTanh, xt.gelu().unwrap()),
        ] {
            let want = (want * &ut).unwrap().flatten_all().unwrap();
            let mut g = x.clone();
            gated(act, &mut g, &up);
            close(&g, &want.to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn kept_buffers_do_not_grow_again() {
        let w = Widths {
            n_embd: 64,
            q: 64,
            kv: 32,
            n_ff: 128,
        };
        let mut s = Scratch::default();
        s.size(4, w);
        let before = s.gate.as_ptr();
        s.size(1, w);
        s.size(4, w);
        assert_eq!(s.gate.as_ptr(), before);
        assert_eq!(s.gate.len(), 4 * 128);
        assert!(Scratch::keeps(8) && !Scratch::keeps(Scratch::KEEP_ROWS + 1));
    }
}
