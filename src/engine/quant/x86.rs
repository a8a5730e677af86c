//! AVX2 products of eight interleaved weight rows ([`super::packed`]) with up to four
//! activation rows at once.
//!
//! Each group of weight blocks is unpacked into eight vectors once and multiplied with
//! every activation row of the call, so a batch of sequences (debating agents, or a
//! prompt's tokens) reads and unpacks the weights once for all of them. The eight rows'
//! sums build up in the lanes of one register: no horizontal sums, one scale multiply
//! per group. Selected at run time, so one binary runs on CPUs without AVX2 too.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::blocks::ActBlock;
use super::packed::{Interleaved, Q4_0x8, Q4_1x8, Q4Kx8, Q5_0x8, Q6Kx8, Q8_0x8};

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// A group type the AVX2 kernel multiplies.
pub trait Avx2Group: Interleaved {
    /// The group in registers: weights and scales.
    type Unpacked: Copy;
    /// Loads the group; shared by every activation row multiplied with it.
    unsafe fn unpack(&self) -> Self::Unpacked;
    /// Adds the eight rows' products with one activation block to `acc` (lane `r`:
    /// row `r`).
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256;
    /// Adds the group's products with `R` activation blocks to `acc`: unpacked once,
    /// then [`Self::accumulate`] per row. A type whose unpacked form would not leave
    /// registers for `R` rows overrides it.
    #[inline(always)]
    unsafe fn accumulate_rows<const R: usize>(&self, a: [&ActBlock; R], acc: &mut [__m256; R]) {
        let u = self.unpack();
        for r in 0..R {
            acc[r] = Self::accumulate(&u, a[r], acc[r]);
        }
    }
}

#[inline(always)]
unsafe fn load_f16x8(v: &[u16; 8]) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr() as *const __m128i))
}

#[inline(always)]
unsafe fn load_f32x8(v: &[f32; 8]) -> __m256 {
    _mm256_loadu_ps(v.as_ptr())
}

/// Four activation bytes (elements `4i..4i + 4`) in every 32-bit lane.
#[inline(always)]
unsafe fn act4(a: &ActBlock, i: usize) -> __m256i {
    _mm256_set1_epi32((a.qs.as_ptr() as *const i32).add(i).read_unaligned())
}

/// 128 packed nibble bytes → eight vectors (low nibbles are vectors 0..4, high 4..8).
#[inline(always)]
unsafe fn unpack_nibbles(qs: &[u8; 128]) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0f);
    let p = qs.as_ptr() as *const __m256i;
    let v: [__m256i; 4] = std::array::from_fn(|i| _mm256_loadu_si256(p.add(i)));
    std::array::from_fn(|i| {
        if i < 4 {
            _mm256_and_si256(v[i], mask)
        } else {
            _mm256_and_si256(_mm256_srli_epi16(v[i - 4], 4), mask)
        }
    })
}

/// 256 bytes → eight vectors.
#[inline(always)]
unsafe fn load_bytes(q: &[u8; 256]) -> [__m256i; 8] {
    let p = q.as_ptr() as *const __m256i;
    std::array::from_fn(|i| _mm256_loadu_si256(p.add(i)))
}

/// Σ over vectors `range` of unsigned weights × activations, widened to 32-bit lanes.
/// The caller keeps the 16-bit pair sums in range (weights ≤ 15 for eight vectors,
/// ≤ 31 for four, ≤ 63 for two: activations are within ±127).
#[inline(always)]
unsafe fn unsigned_dot(u: &[__m256i; 8], a: &ActBlock, range: std::ops::Range<usize>) -> __m256i {
    let mut s = _mm256_setzero_si256();
    for i in range {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(u[i], act4(a, i)));
    }
    _mm256_madd_epi16(s, _mm256_set1_epi16(1))
}

/// `acc + sums · (dw · a.d)`.
#[inline(always)]
unsafe fn scaled(sums: __m256i, dw: __m256, a: &ActBlock, acc: __m256) -> __m256 {
    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a.d));
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc)
}

impl Avx2Group for Q4_0x8 {
    type Unpacked = ([__m256i; 8], __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        (unpack_nibbles(&self.qs), load_f16x8(&self.d))
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        // Σ (q - 8)·a = Σ q·a - 8·Σ a.
        let s = _mm256_sub_epi32(unsigned_dot(&u.0, a, 0..8), _mm256_set1_epi32(8 * a.sum));
        scaled(s, u.1, a, acc)
    }
}

impl Avx2Group for Q4_1x8 {
    type Unpacked = ([__m256i; 8], __m256, __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        (
            unpack_nibbles(&self.qs),
            load_f16x8(&self.d),
            load_f16x8(&self.m),
        )
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        let acc = scaled(unsigned_dot(&u.0, a, 0..8), u.1, a, acc);
        _mm256_fmadd_ps(u.2, _mm256_set1_ps(a.s), acc)
    }
}

impl Avx2Group for Q4Kx8 {
    type Unpacked = ([__m256i; 8], __m256, __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        (
            unpack_nibbles(&self.qs),
            load_f32x8(&self.d),
            load_f32x8(&self.m),
        )
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        let acc = scaled(unsigned_dot(&u.0, a, 0..8), u.1, a, acc);
        _mm256_fmadd_ps(u.2, _mm256_set1_ps(a.d * a.sum as f32), acc)
    }
}

/// 32 bits → 32 bytes, 0x10 where the bit is set.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m256i {
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
    let mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

impl Avx2Group for Q5_0x8 {
    type Unpacked = ([__m256i; 8], __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        let lo = unpack_nibbles(&self.qs);
        (
            std::array::from_fn(|i| _mm256_or_si256(lo[i], fifth_bits(self.qh[i]))),
            load_f16x8(&self.d),
        )
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        // Values are 0..=31 stored for q - 16: two halves keep the pair sums in 16 bits.
        let s = _mm256_add_epi32(unsigned_dot(&u.0, a, 0..4), unsigned_dot(&u.0, a, 4..8));
        scaled(
            _mm256_sub_epi32(s, _mm256_set1_epi32(16 * a.sum)),
            u.1,
            a,
            acc,
        )
    }
}

impl Avx2Group for Q6Kx8 {
    type Unpacked = ([__m256i; 8], __m256, __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        (
            load_bytes(&self.q),
            load_f32x8(&self.d[0]),
            load_f32x8(&self.d[1]),
        )
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        // Values are 0..=63 stored for q - 32, each half (16 elements) with its scale.
        let half = |range: std::ops::Range<usize>, sum: i32| {
            let s = _mm256_add_epi32(
                unsigned_dot(&u.0, a, range.start..range.start + 2),
                unsigned_dot(&u.0, a, range.start + 2..range.end),
            );
            _mm256_sub_epi32(s, _mm256_set1_epi32(32 * sum))
        };
        let acc = scaled(half(0..4, a.sum_lo), u.1, a, acc);
        scaled(half(4..8, a.sum - a.sum_lo), u.2, a, acc)
    }
}

impl Avx2Group for Q8_0x8 {
    type Unpacked = ([__m256i; 8], __m256);
    #[inline(always)]
    unsafe fn unpack(&self) -> Self::Unpacked {
        let p = self.qs.as_ptr() as *const __m256i;
        (
            std::array::from_fn(|i| _mm256_loadu_si256(p.add(i))),
            load_f16x8(&self.d),
        )
    }
    #[inline(always)]
    unsafe fn accumulate(u: &Self::Unpacked, a: &ActBlock, acc: __m256) -> __m256 {
        let mut s = _mm256_setzero_si256();
        for (i, &w) in u.0.iter().enumerate() {
            s = _mm256_add_epi32(s, signed_dot(w, _mm256_sign_epi8(w, w), act4(a, i)));
        }
        scaled(s, u.1, a, acc)
    }
    /// Vector by vector across two or four rows: eight weight vectors and their
    /// magnitudes held for four rows left no registers for the sums (the compiler
    /// spilled to the stack inside the loop of the output projection). The integer sums
    /// are exact, so the order changes nothing.
    #[inline(always)]
    unsafe fn accumulate_rows<const R: usize>(&self, a: [&ActBlock; R], acc: &mut [__m256; R]) {
        if R == 1 {
            // One row has the registers, and loads all eight vectors first (a third
            // faster than this order for one row).
            let u = self.unpack();
            acc[0] = Self::accumulate(&u, a[0], acc[0]);
            return;
        }
        let p = self.qs.as_ptr() as *const __m256i;
        let mut s = [_mm256_setzero_si256(); R];
        for i in 0..8 {
            let w = _mm256_loadu_si256(p.add(i));
            let magnitude = _mm256_sign_epi8(w, w);
            for r in 0..R {
                s[r] = _mm256_add_epi32(s[r], signed_dot(w, magnitude, act4(a[r], i)));
            }
        }
        let d = load_f16x8(&self.d);
        for r in 0..R {
            acc[r] = scaled(s[r], d, a[r], acc[r]);
        }
    }
}

/// Products of signed weights `w` (`magnitude`: |w|) with four activation bytes per
/// lane, pair-summed into 32-bit lanes. The weight's sign moves onto the activation so
/// `maddubs` takes |w|; a pair of products fits 16 bits, so each vector widens alone.
#[inline(always)]
unsafe fn signed_dot(w: __m256i, magnitude: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// How many bytes ahead of the group being multiplied the weights are requested from
/// memory. A decode step streams every weight once from DRAM, and the hardware
/// prefetcher alone kept the cores waiting on it: a one-row product over 70 MB of
/// SmolLM2-shaped Q4_1 groups took 5.5 ns per group block on two threads without this,
/// 4.3 with it; single-stream generation gained 8-20% (Gemma 3, SmolLM2, Qwen2.5), four
/// agents 10%. 1-4 KiB measured alike; prompts (the group already in L1) are unchanged.
const PREFETCH_AHEAD: usize = 2560;

/// Requests the cache lines `PREFETCH_AHEAD` bytes past `g`. Past the end of a weight
/// that is the next allocation or unmapped memory: a prefetch never faults.
#[inline(always)]
unsafe fn prefetch_ahead<G>(g: &G) {
    let ahead = (g as *const G as *const i8).wrapping_add(PREFETCH_AHEAD);
    for line in 0..std::mem::size_of::<G>().div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
    }
}

/// `out[r][j] = row j of the group · acts[r]` for one group of eight weight rows
/// (`w`: its blocks in order) and `R` activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `acts[r]` is at least as long as `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv<G: Avx2Group, const R: usize>(
    w: &[G],
    acts: [&[ActBlock]; R],
    out: &mut [[f32; 8]; R],
) {
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, g) in w.iter().enumerate() {
        prefetch_ahead(g);
        g.accumulate_rows(std::array::from_fn(|r| acts[r].get_unchecked(b)), &mut acc);
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}

/// [`super::blocks::quantize_row`] eight activations at a time, with the same results
/// bit for bit (round half away from zero, f16-rounded scales); a block holding a NaN
/// or an infinity is left to the portable code. The quantization of each layer input
/// runs on one thread while the other workers wait, so its speed shows in every step.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    use super::blocks::QK;
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let p = xs.as_ptr();
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
        let nan = v.iter().fold(_mm256_setzero_ps(), |acc, &x| {
            _mm256_or_ps(acc, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
        });
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for &x in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x));
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        if _mm256_movemask_ps(nan) != 0 || !amax.is_finite() {
            super::blocks::quantize_row(xs, std::slice::from_mut(b));
            continue;
        }
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            let x = _mm256_mul_ps(v[i], id);
            // Half away from zero: truncate, then step away when the fraction is ≥ ½
            // (x − trunc(x) is exact for these magnitudes).
            let t = _mm256_round_ps(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
            let away = _mm256_and_ps(
                _mm256_cmp_ps(frac, half, _CMP_GE_OQ),
                _mm256_or_ps(one, _mm256_and_ps(sign, x)),
            );
            _mm256_cvttps_epi32(_mm256_add_ps(t, away))
        });
        let hsum = |v: __m256i| -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
        };
        let lo = _mm256_add_epi32(q[0], q[1]);
        let sum_lo = hsum(lo);
        let sum = sum_lo + hsum(_mm256_add_epi32(q[2], q[3]));
        // i32 → i8 (all within ±127): the packs interleave 128-bit lanes, the
        // permutation puts the four-byte runs back in order.
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(b.qs.as_mut_ptr() as *mut __m256i, bytes);
        b.d = half::f16::from_f32(d).to_f32();
        b.s = half::f16::from_f32(d * sum as f32).to_f32();
        b.sum = sum;
        b.sum_lo = sum_lo;
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocks::{self, ActBlock, QK};

    #[test]
    fn quantizing_eight_at_a_time_matches_the_portable_code_bit_for_bit() {
        if !super::available() {
            return;
        }
        let mut seed = 0x9e37_79b9u32;
        let mut rand = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let mut rows: Vec<Vec<f32>> = (0..200)
            .map(|r| {
                let scale = [1e-6, 0.01, 1.0, 30.0, 1e4][r % 5];
                (0..4 * QK).map(|_| rand() * scale).collect()
            })
            .collect();
        // Exact halves after scaling (amax 127: the scale is 1), zeros, NaN and infinity.
        rows.push(
            (0..QK)
                .map(|i| {
                    if i == 0 {
                        127.0
                    } else {
                        (i as f32 - 16.0) + 0.5
                    }
                })
                .collect(),
        );
        rows.push(vec![0.0; QK]);
        rows.push(
            (0..QK)
                .map(|i| if i == 3 { f32::NAN } else { i as f32 })
                .collect(),
        );
        rows.push(
            (0..QK)
                .map(|i| if i == 5 { f32::INFINITY } else { -(i as f32) })
                .collect(),
        );
        for row in rows {
            let n = row.len() / QK;
            let (mut want, mut got) = (vec![ActBlock::ZERO; n], vec![ActBlock::ZERO; n]);
            blocks::quantize_row(&row, &mut want);
            // SAFETY: `available()` said the CPU has AVX2, FMA and F16C.
            unsafe { super::quantize_row(&row, &mut got) };
            for (w, g) in want.iter().zip(&got) {
                assert_eq!(w.qs, g.qs, "{row:?}");
                assert_eq!(
                    (w.d.to_bits(), w.s.to_bits(), w.sum, w.sum_lo),
                    (g.d.to_bits(), g.s.to_bits(), g.sum, g.sum_lo),
                    "{row:?}"
                );
            }
        }
    }
}
