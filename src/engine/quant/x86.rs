//! AVX2 dot products of weight rows with up to four activation rows at once.
//!
//! Each weight block is unpacked into 32 bytes once and multiplied with every activation
//! row of the call, so a batch of sequences (debating agents, or a prompt's tokens)
//! reads and unpacks the weights once for all of them. Selected at run time, so one
//! binary runs on CPUs without AVX2 too.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use half::f16;

use super::blocks::{ActBlock, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0};

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[inline(always)]
fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn unpack_nibbles(qs: &[u8; 16]) -> __m256i {
    let lo = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let hi = _mm_srli_epi16(lo, 4);
    let both = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// 32 bits → 32 bytes, 0xff where the bit is set.
#[inline(always)]
unsafe fn spread_bits(bits: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
}

/// Σ x·y of unsigned `x` and signed `y` bytes, as 8 floats of pair sums.
#[inline(always)]
unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(x, y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Σ x·y of signed bytes (the sign moves onto `y` so `maddubs` can take |x|).
#[inline(always)]
unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn load_act(a: &ActBlock) -> __m256i {
    _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i)
}

/// Defines a kernel `$name::<R>(w, acts, out)`: `out[r] = w · acts[r]` for `R` rows.
/// `$unpack` turns a weight block into (32 bytes, signed?) and `$extra` adds the
/// per-block constant term (Q4_1's offset).
///
/// Blocks go in pairs into two sets of accumulators, so a single row's sum is two
/// dependency chains of fused multiply-adds instead of one: at batch 1 (one sequence
/// decoding) the chain's latency, not the arithmetic, set the pace.
macro_rules! kernel {
    ($name:ident, $block:ty, $dot:ident, |$w:ident| $unpack:expr, |$wb:ident, $a:ident| $extra:expr) => {
        /// # Safety
        /// The CPU must support AVX2 and FMA; every `acts[r]` is at least as long as `w`.
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $name<const R: usize>(
            w: &[$block],
            acts: [&[ActBlock]; R],
            out: &mut [f32; R],
        ) {
            let mut acc = [[_mm256_setzero_ps(); R]; 2];
            let mut extra = [[0f32; R]; 2];
            let step = |b: usize, $w: &$block, acc: &mut [__m256; R], extra: &mut [f32; R]| {
                let x = $unpack;
                let dw = _mm256_set1_ps(h($w.d));
                for r in 0..R {
                    let $a = acts[r].get_unchecked(b);
                    let p = $dot(x, load_act($a));
                    let scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&$a.d));
                    acc[r] = _mm256_fmadd_ps(scale, p, acc[r]);
                    let $wb = $w;
                    extra[r] += $extra;
                }
            };
            let [acc0, acc1] = &mut acc;
            let [extra0, extra1] = &mut extra;
            let pairs = w.len() / 2;
            for i in 0..pairs {
                step(2 * i, w.get_unchecked(2 * i), acc0, extra0);
                step(2 * i + 1, w.get_unchecked(2 * i + 1), acc1, extra1);
            }
            if w.len() % 2 == 1 {
                step(w.len() - 1, w.get_unchecked(w.len() - 1), acc0, extra0);
            }
            for r in 0..R {
                out[r] = hsum(_mm256_add_ps(acc0[r], acc1[r])) + extra0[r] + extra1[r];
            }
        }
    };
}

kernel!(
    dot_q4_0,
    BlockQ4_0,
    dot_i8_i8,
    |w| _mm256_sub_epi8(unpack_nibbles(&w.qs), _mm256_set1_epi8(8)),
    |_wb, _a| 0.0
);
kernel!(
    dot_q4_1,
    BlockQ4_1,
    dot_u8_i8,
    |w| unpack_nibbles(&w.qs),
    |wb, a| h(wb.m) * a.s
);
kernel!(
    dot_q5_0,
    BlockQ5_0,
    dot_i8_i8,
    |w| {
        // Values are nibble | fifth bit << 4, minus 16: set the high nibble to 0xf0
        // (i.e. subtract 16) where the fifth bit is clear.
        let high = _mm256_andnot_si256(
            spread_bits(u32::from_le_bytes(w.qh)),
            _mm256_set1_epi8(0xf0u8 as i8),
        );
        _mm256_or_si256(unpack_nibbles(&w.qs), high)
    },
    |_wb, _a| 0.0
);
kernel!(
    dot_q8_0,
    BlockQ8_0,
    dot_i8_i8,
    |w| _mm256_loadu_si256(w.qs.as_ptr() as *const __m256i),
    |_wb, _a| 0.0
);
