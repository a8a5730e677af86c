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
        // Signed × signed: the weight's sign moves onto the activation so `maddubs`
        // takes |w|; a pair of products fits 16 bits, so each vector widens on its own.
        let mut s = _mm256_setzero_si256();
        for (i, &w) in u.0.iter().enumerate() {
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(act4(a, i), w));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
        }
        scaled(s, u.1, a, acc)
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
        let u = g.unpack();
        for r in 0..R {
            acc[r] = G::accumulate(&u, acts[r].get_unchecked(b), acc[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
    }
}
