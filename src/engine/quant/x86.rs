//! AVX2 products of eight interleaved weight rows ([`super::packed`]) with up to four
//! activation rows at once.
//!
//! Each group of weight blocks is unpacked into eight vectors once and multiplied with
//! every activation row of the call, so a batch of sequences (debating agents, or a
//! prompt's tokens) reads and unpacks the weights once for all of them. The eight rows'
//! sums build up in the lanes of one register: no horizontal sums, one scale multiply
//! per group. Selected at run time, so one binary runs on CPUs without AVX2 too; where
//! the build targets a CPU with VNNI, the byte products use it (see [`VNNI`]).

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::blocks::ActBlock;
use super::packed::{Interleaved, Q4_0x8, Q4_1x8, Q4Kx8, Q5_0x8, Q6Kx8, Q8_0x8};
use super::{Kernel, MAX_OUT};

/// Whether this CPU runs the kernels of this module.
pub fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the integer products use VNNI's `vpdpbusd`: four byte products summed into
/// each 32-bit lane in one instruction, where AVX2 needs `maddubs` (pairs into 16 bits),
/// a 16-bit add and a `madd` to widen. The sums are the same integers either way, so
/// the outputs are identical bit for bit. Chosen at compile time (the build targets the
/// host CPU); a build for a CPU without VNNI keeps the AVX2 sequence.
const VNNI: bool = cfg!(any(
    target_feature = "avxvnni",
    all(target_feature = "avx512vnni", target_feature = "avx512vl")
));

/// Whether two groups (sixteen rows) can be multiplied at once in 512-bit registers. A
/// 512-bit `vpdpbusd` does twice the work of a 256-bit one at the same rate (measured on
/// a Xeon with AVX-512: two of either per cycle), which pays where the weights are in
/// cache and many rows share them (prompts, see `super::WIDE_ROWS`). Each lane does the
/// same arithmetic as in the 256-bit kernel, so the results are identical bit for bit.
pub const WIDE: bool = cfg!(all(
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512dq",
    target_feature = "avx512vl",
    target_feature = "avx512vnni"
));

/// A register width the kernels run at: [`Y`] (one group of eight rows in 256 bits) or
/// [`Z`] (two groups, sixteen rows, in 512 bits). The groups are unpacked 256 bits at a
/// time and joined, so each type's unpacking is written once.
pub trait Width: Copy {
    /// Groups multiplied at once.
    const GROUPS: usize;
    /// Integer lanes: one per row of the groups.
    type I: Copy;
    /// Float lanes: one per row of the groups.
    type F: Copy;
    /// The first group's vector, and the second's above it where there is one.
    unsafe fn join(lo: __m256i, hi: __m256i) -> Self::I;
    /// [`Self::join`] for floats.
    unsafe fn join_ps(lo: __m256, hi: __m256) -> Self::F;
    unsafe fn set1(x: i32) -> Self::I;
    unsafe fn set1_ps(x: f32) -> Self::F;
    unsafe fn zero() -> Self::I;
    unsafe fn zero_ps() -> Self::F;
    unsafe fn mul_ps(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`.
    unsafe fn fmadd_ps(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn cvt_ps(a: Self::I) -> Self::F;
    /// `acc +` Σ over vectors `range` of unsigned weights `u` × activations, in 32-bit
    /// lanes. Without VNNI the caller keeps the 16-bit pair sums in range (weights ≤ 15
    /// for eight vectors, ≤ 31 for four, ≤ 63 for two: activations are within ±127);
    /// with it every product is summed in 32 bits.
    unsafe fn unsigned_dot(
        acc: Self::I,
        u: &[Self::I; 8],
        a: &ActBlock,
        range: std::ops::Range<usize>,
    ) -> Self::I;
    /// `acc +` the products of signed weights `w` (`magnitude`: |w|) with four
    /// activation bytes per lane (`a`, broadcast), summed into 32-bit lanes.
    unsafe fn signed_dot(acc: Self::I, w: Self::I, magnitude: Self::I, a: i32) -> Self::I;
    /// |w| per byte.
    unsafe fn abs_epi8(w: Self::I) -> Self::I;
    /// `v` with 16 added to each byte whose bit is set in `lo` (the first group's
    /// bytes) and, at [`Z`], `hi` (the second's): Q5_0's fifth bits onto their nibbles.
    unsafe fn add_fifth_bits(v: Self::I, lo: u32, hi: u32) -> Self::I;
    /// Writes the lanes to `out` (8 or 16 floats).
    unsafe fn store(out: &mut [f32; MAX_OUT], v: Self::F);
}

/// One group of eight rows in 256-bit registers.
#[derive(Clone, Copy)]
pub struct Y;

/// Two groups, sixteen rows, in 512-bit registers ([`WIDE`] builds only).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_feature = "avx512vnni"), allow(dead_code))]
pub struct Z;

/// Four activation bytes (elements `4i..4i + 4`) as one integer.
#[inline(always)]
unsafe fn act4(a: &ActBlock, i: usize) -> i32 {
    (a.qs.as_ptr() as *const i32).add(i).read_unaligned()
}

/// `acc +` Σ over each lane's four byte pairs of u · s (`u` unsigned, `s` signed), exact
/// in 32 bits. Only called where [`VNNI`] holds. The AVX-512 form comes first where both
/// exist: only its encoding takes a broadcast memory operand, so the activations' four
/// bytes are read by the product itself instead of broadcast into a register first (a
/// second instruction per row and vector that the VEX form needs).
#[inline(always)]
unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
    {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[cfg(all(
        target_feature = "avxvnni",
        not(all(target_feature = "avx512vnni", target_feature = "avx512vl"))
    ))]
    {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
    #[cfg(not(any(
        target_feature = "avxvnni",
        all(target_feature = "avx512vnni", target_feature = "avx512vl")
    )))]
    {
        let _ = (u, s);
        unreachable!("dpbusd without VNNI: {acc:?}")
    }
}

impl Width for Y {
    const GROUPS: usize = 1;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn join(lo: __m256i, _: __m256i) -> __m256i {
        lo
    }
    #[inline(always)]
    unsafe fn join_ps(lo: __m256, _: __m256) -> __m256 {
        lo
    }
    #[inline(always)]
    unsafe fn set1(x: i32) -> __m256i {
        _mm256_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn set1_ps(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_ps() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn mul_ps(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd_ps(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn cvt_ps(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn unsigned_dot(
        acc: __m256i,
        u: &[__m256i; 8],
        a: &ActBlock,
        range: std::ops::Range<usize>,
    ) -> __m256i {
        if VNNI {
            // Two chains: each vpdpbusd waits on the one before it in its chain.
            let (mut even, mut odd) = (acc, _mm256_setzero_si256());
            for i in range {
                let s = _mm256_set1_epi32(act4(a, i));
                if i % 2 == 0 {
                    even = dpbusd(even, u[i], s);
                } else {
                    odd = dpbusd(odd, u[i], s);
                }
            }
            return _mm256_add_epi32(even, odd);
        }
        let mut s = _mm256_setzero_si256();
        for i in range {
            let p = _mm256_maddubs_epi16(u[i], _mm256_set1_epi32(act4(a, i)));
            s = _mm256_add_epi16(s, p);
        }
        _mm256_add_epi32(acc, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }
    /// The weight's sign moves onto the activation so the unsigned operand is |w|; a
    /// pair of products fits 16 bits, so without VNNI each vector widens alone.
    #[inline(always)]
    unsafe fn signed_dot(acc: __m256i, w: __m256i, magnitude: __m256i, a: i32) -> __m256i {
        let a = _mm256_sign_epi8(_mm256_set1_epi32(a), w);
        if VNNI {
            return dpbusd(acc, magnitude, a);
        }
        let p = _mm256_maddubs_epi16(magnitude, a);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn abs_epi8(w: __m256i) -> __m256i {
        _mm256_sign_epi8(w, w)
    }
    #[inline(always)]
    unsafe fn add_fifth_bits(v: __m256i, lo: u32, _: u32) -> __m256i {
        #[cfg(all(target_feature = "avx512bw", target_feature = "avx512vl"))]
        {
            _mm256_mask_add_epi8(v, lo, v, _mm256_set1_epi8(0x10))
        }
        #[cfg(not(all(target_feature = "avx512bw", target_feature = "avx512vl")))]
        {
            _mm256_or_si256(v, fifth_bits(lo))
        }
    }
    #[inline(always)]
    unsafe fn store(out: &mut [f32; MAX_OUT], v: __m256) {
        _mm256_storeu_ps(out.as_mut_ptr(), v)
    }
}

/// The 512-bit operations exist only in builds for CPUs with AVX-512 ([`WIDE`]); other
/// builds never call these (the kernels pick [`Y`]).
#[cfg(all(
    target_feature = "avx512f",
    target_feature = "avx512bw",
    target_feature = "avx512dq",
    target_feature = "avx512vl",
    target_feature = "avx512vnni"
))]
impl Width for Z {
    const GROUPS: usize = 2;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
    #[inline(always)]
    unsafe fn join_ps(lo: __m256, hi: __m256) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(lo), hi)
    }
    #[inline(always)]
    unsafe fn set1(x: i32) -> __m512i {
        _mm512_set1_epi32(x)
    }
    #[inline(always)]
    unsafe fn set1_ps(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_ps() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn mul_ps(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd_ps(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn cvt_ps(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn unsigned_dot(
        acc: __m512i,
        u: &[__m512i; 8],
        a: &ActBlock,
        range: std::ops::Range<usize>,
    ) -> __m512i {
        let (mut even, mut odd) = (acc, _mm512_setzero_si512());
        for i in range {
            let s = _mm512_set1_epi32(act4(a, i));
            if i % 2 == 0 {
                even = _mm512_dpbusd_epi32(even, u[i], s);
            } else {
                odd = _mm512_dpbusd_epi32(odd, u[i], s);
            }
        }
        _mm512_add_epi32(even, odd)
    }
    /// AVX-512 has no byte sign instruction: the activation bytes are negated where the
    /// weight's sign bit is set.
    #[inline(always)]
    unsafe fn signed_dot(acc: __m512i, w: __m512i, magnitude: __m512i, a: i32) -> __m512i {
        let a = _mm512_set1_epi32(a);
        let negative = _mm512_movepi8_mask(w);
        let a = _mm512_mask_sub_epi8(a, negative, _mm512_setzero_si512(), a);
        _mm512_dpbusd_epi32(acc, magnitude, a)
    }
    #[inline(always)]
    unsafe fn abs_epi8(w: __m512i) -> __m512i {
        _mm512_abs_epi8(w)
    }
    /// The two groups' 32-bit masks side by side are the 64-bit vector's byte mask.
    #[inline(always)]
    unsafe fn add_fifth_bits(v: __m512i, lo: u32, hi: u32) -> __m512i {
        let mask = (hi as u64) << 32 | lo as u64;
        _mm512_mask_add_epi8(v, mask, v, _mm512_set1_epi8(0x10))
    }
    #[inline(always)]
    unsafe fn store(out: &mut [f32; MAX_OUT], v: __m512) {
        _mm512_storeu_ps(out.as_mut_ptr(), v)
    }
}

/// A group type the kernels multiply.
pub trait Avx2Group: Interleaved {
    /// Fewest activation rows below [`super::WIDE_ROWS`] (a decode batch) that the
    /// two-group kernels, prefetching [`BATCH_PREFETCH_AHEAD`], take for this type:
    /// none unless a type says so.
    const BATCH_WIDE_ROWS: usize = usize::MAX;
    /// The group (or two, at [`Z`]) in registers: weights and scales.
    type Unpacked<W: Width>: Copy;
    /// Loads `self` and, at [`Z`], `hi` above it; shared by every activation row
    /// multiplied with them.
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W>;
    /// Adds the rows' products with one activation block to `acc` (lane `r`: row `r`).
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F;
    /// Adds the groups' products with `R` activation blocks to `acc`: unpacked once,
    /// then [`Self::accumulate`] per row. A type whose unpacked form would not leave
    /// registers for `R` rows overrides it.
    #[inline(always)]
    unsafe fn accumulate_rows<W: Width, const R: usize>(
        &self,
        hi: &Self,
        a: [&ActBlock; R],
        acc: &mut [W::F; R],
    ) {
        let u = self.unpack::<W>(hi);
        for r in 0..R {
            acc[r] = Self::accumulate::<W>(&u, a[r], acc[r]);
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

/// Eight vectors of each group, joined.
#[inline(always)]
unsafe fn join8<W: Width>(lo: [__m256i; 8], hi: [__m256i; 8]) -> [W::I; 8] {
    std::array::from_fn(|i| W::join(lo[i], hi[i]))
}

/// `acc + sums · (dw · a.d)`.
#[inline(always)]
unsafe fn scaled<W: Width>(sums: W::I, dw: W::F, a: &ActBlock, acc: W::F) -> W::F {
    let scale = W::mul_ps(dw, W::set1_ps(a.d));
    W::fmadd_ps(W::cvt_ps(sums), scale, acc)
}

impl Avx2Group for Q4_0x8 {
    type Unpacked<W: Width> = ([W::I; 8], W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        (
            join8::<W>(unpack_nibbles(&self.qs), unpack_nibbles(&hi.qs)),
            W::join_ps(load_f16x8(&self.d), load_f16x8(&hi.d)),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        // Σ (q - 8)·a = Σ q·a - 8·Σ a, the products summed onto the offset.
        let s = W::unsigned_dot(W::set1(-8 * a.sum), &u.0, a, 0..8);
        scaled::<W>(s, u.1, a, acc)
    }
}

impl Avx2Group for Q4_1x8 {
    /// Four: SmolLM2's four agents ran faster with the two-group kernels prefetching
    /// twice as far ahead (see [`super::WIDE_ROWS`]).
    const BATCH_WIDE_ROWS: usize = 4;
    type Unpacked<W: Width> = ([W::I; 8], W::F, W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        (
            join8::<W>(unpack_nibbles(&self.qs), unpack_nibbles(&hi.qs)),
            W::join_ps(load_f16x8(&self.d), load_f16x8(&hi.d)),
            W::join_ps(load_f16x8(&self.m), load_f16x8(&hi.m)),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        let s = W::unsigned_dot(W::zero(), &u.0, a, 0..8);
        let acc = scaled::<W>(s, u.1, a, acc);
        W::fmadd_ps(u.2, W::set1_ps(a.s), acc)
    }
}

impl Avx2Group for Q4Kx8 {
    type Unpacked<W: Width> = ([W::I; 8], W::F, W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        (
            join8::<W>(unpack_nibbles(&self.qs), unpack_nibbles(&hi.qs)),
            W::join_ps(load_f32x8(&self.d), load_f32x8(&hi.d)),
            W::join_ps(load_f32x8(&self.m), load_f32x8(&hi.m)),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        let s = W::unsigned_dot(W::zero(), &u.0, a, 0..8);
        let acc = scaled::<W>(s, u.1, a, acc);
        W::fmadd_ps(u.2, W::set1_ps(a.d * a.sum as f32), acc)
    }
}

/// 32 bits → 32 bytes, 0x10 where the bit is set.
#[cfg(any(
    test,
    not(all(target_feature = "avx512bw", target_feature = "avx512vl"))
))]
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

/// Two Q5_0 groups' 5-bit values (one at [`Y`]) in eight vectors: nibbles joined, then
/// the fifth bits added at the joined width. Where AVX-512BW and VL exist a vector's 32
/// fifth bits are its byte mask as they stand (bit `j` for byte `j`), so one masked add
/// replaces the five instructions of [`fifth_bits`]; the values are the same bytes.
#[inline(always)]
unsafe fn unpack_q5<W: Width>(g: &Q5_0x8, hi: &Q5_0x8) -> [W::I; 8] {
    let v = join8::<W>(unpack_nibbles(&g.qs), unpack_nibbles(&hi.qs));
    std::array::from_fn(|i| W::add_fifth_bits(v[i], g.qh[i], hi.qh[i]))
}

impl Avx2Group for Q5_0x8 {
    type Unpacked<W: Width> = ([W::I; 8], W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        (
            unpack_q5::<W>(self, hi),
            W::join_ps(load_f16x8(&self.d), load_f16x8(&hi.d)),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        // Values are 0..=31 stored for q - 16, the products summed onto -16·Σ a. Without
        // VNNI two halves keep the pair sums in 16 bits; with it one pass sums all eight
        // vectors in 32 bits (the same integers, two fewer adds per row).
        let offset = W::set1(-16 * a.sum);
        let s = if VNNI {
            W::unsigned_dot(offset, &u.0, a, 0..8)
        } else {
            W::unsigned_dot(W::unsigned_dot(offset, &u.0, a, 0..4), &u.0, a, 4..8)
        };
        scaled::<W>(s, u.1, a, acc)
    }
}

/// One Q6_K group's 6-bit values (0..64) in eight vectors: the nibbles, each vector's
/// two high bits shifted to 0x30 and or-ed on (see [`Q6Kx8`]).
#[inline(always)]
unsafe fn unpack_q6(g: &Q6Kx8) -> [__m256i; 8] {
    let low = unpack_nibbles(&g.ql);
    let p = g.qh.as_ptr() as *const __m256i;
    let high = [_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))];
    let mask = _mm256_set1_epi8(0x30);
    std::array::from_fn(|i| {
        let h = high[i / 4];
        // Q6K_HIGH_SHIFT: bits at 4, 6, 0, 2 move to 4.
        let h = match i % 4 {
            0 => h,
            1 => _mm256_srli_epi16(h, 2),
            2 => _mm256_slli_epi16(h, 4),
            _ => _mm256_slli_epi16(h, 2),
        };
        _mm256_or_si256(low[i], _mm256_and_si256(h, mask))
    })
}

/// Each half's eight row scales, `d · sc[h]` (exact in `f32`), `d` converted once.
#[inline(always)]
unsafe fn q6_scales(g: &Q6Kx8) -> [__m256; 2] {
    let d = load_f16x8(&g.d);
    g.sc.map(|sc| {
        let sc = _mm_loadl_epi64(sc.as_ptr() as *const __m128i);
        _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)))
    })
}

impl Avx2Group for Q6Kx8 {
    type Unpacked<W: Width> = ([W::I; 8], W::F, W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        let ([lo0, lo1], [hi0, hi1]) = (q6_scales(self), q6_scales(hi));
        (
            join8::<W>(unpack_q6(self), unpack_q6(hi)),
            W::join_ps(lo0, hi0),
            W::join_ps(lo1, hi1),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        // Values are 0..=63 stored for q - 32, each half (16 elements) with its scale,
        // its products summed onto -32·Σ a (in one pass with VNNI, in pairs of vectors
        // without it, to keep the pair sums in 16 bits).
        let half = |range: std::ops::Range<usize>, sum: i32| {
            let offset = W::set1(-32 * sum);
            if VNNI {
                return W::unsigned_dot(offset, &u.0, a, range);
            }
            let mid = range.start + 2;
            let s = W::unsigned_dot(offset, &u.0, a, range.start..mid);
            W::unsigned_dot(s, &u.0, a, mid..range.end)
        };
        let acc = scaled::<W>(half(0..4, a.sum_lo), u.1, a, acc);
        scaled::<W>(half(4..8, a.sum - a.sum_lo), u.2, a, acc)
    }
}

/// 256 bytes of Q8_0 weights: vector `i` of one group.
#[inline(always)]
unsafe fn q8_vector(g: &Q8_0x8, i: usize) -> __m256i {
    _mm256_loadu_si256((g.qs.as_ptr() as *const __m256i).add(i))
}

impl Avx2Group for Q8_0x8 {
    type Unpacked<W: Width> = ([W::I; 8], W::F);
    #[inline(always)]
    unsafe fn unpack<W: Width>(&self, hi: &Self) -> Self::Unpacked<W> {
        (
            std::array::from_fn(|i| W::join(q8_vector(self, i), q8_vector(hi, i))),
            W::join_ps(load_f16x8(&self.d), load_f16x8(&hi.d)),
        )
    }
    #[inline(always)]
    unsafe fn accumulate<W: Width>(u: &Self::Unpacked<W>, a: &ActBlock, acc: W::F) -> W::F {
        let mut s = W::zero();
        for (i, &w) in u.0.iter().enumerate() {
            s = W::signed_dot(s, w, W::abs_epi8(w), act4(a, i));
        }
        scaled::<W>(s, u.1, a, acc)
    }
    /// Vector by vector across two or four rows: eight weight vectors and their
    /// magnitudes held for four rows left no registers for the sums (the compiler
    /// spilled to the stack inside the loop of the output projection). The integer sums
    /// are exact, so the order changes nothing.
    #[inline(always)]
    unsafe fn accumulate_rows<W: Width, const R: usize>(
        &self,
        hi: &Self,
        a: [&ActBlock; R],
        acc: &mut [W::F; R],
    ) {
        if R == 1 {
            // One row has the registers, and loads all eight vectors first (a third
            // faster than this order for one row).
            let u = self.unpack::<W>(hi);
            acc[0] = Self::accumulate::<W>(&u, a[0], acc[0]);
            return;
        }
        let mut s = [W::zero(); R];
        for i in 0..8 {
            let w = W::join(q8_vector(self, i), q8_vector(hi, i));
            let magnitude = W::abs_epi8(w);
            for r in 0..R {
                s[r] = W::signed_dot(s[r], w, magnitude, act4(a[r], i));
            }
        }
        let d = W::join_ps(load_f16x8(&self.d), load_f16x8(&hi.d));
        for r in 0..R {
            acc[r] = scaled::<W>(s[r], d, a[r], acc[r]);
        }
    }
}

/// How many bytes ahead of the group being multiplied the weights are requested from
/// memory. A decode step streams every weight once from DRAM, and the hardware
/// prefetcher alone kept the cores waiting on it: a one-row product over 70 MB of
/// SmolLM2-shaped Q4_1 groups took 5.5 ns per group block on two threads without this,
/// 4.3 with it; single-stream generation gained 8-20% (Gemma 3, SmolLM2, Qwen2.5), four
/// agents 10%. 1-4 KiB measured alike on SmolLM2, but the larger models' decode wanted
/// more: 6 KiB against 2.5 gave Qwen2.5 +6% single stream and +8% at four agents, Gemma 3
/// +5% and +10% (medians of interleaved rounds; 8 KiB no better). The two-group kernels
/// over prompts keep [`PROMPT_PREFETCH_AHEAD`]; builds without AVX-512, whose prompts run
/// on the one-group kernels, take this distance there too (not measured).
const PREFETCH_AHEAD: usize = 6144;

/// [`PREFETCH_AHEAD`] for the two-group kernels over prompts, where each group is reused
/// by many rows and the farther prefetch cost SmolLM2's 128-token prompts 10-25%.
const PROMPT_PREFETCH_AHEAD: usize = 2560;

/// [`PREFETCH_AHEAD`] for the two-group kernels in a decode batch, where they read two
/// streams from memory (the two groups), twice the bytes per step: at 2560 their
/// four-agent decode of SmolLM2 ran slower than the one-group kernels', at 5120 faster;
/// over prompts (the weights reused from cache) 5120 was slower, so prompts keep 2560.
const BATCH_PREFETCH_AHEAD: usize = 5120;

/// Requests the cache lines `AHEAD` bytes past `g`. Past the end of a weight that is
/// the next allocation or unmapped memory: a prefetch never faults.
///
/// Into L2 (`T1`), not L1: a request for L1 holds one of the core's few L1 miss
/// buffers until its line arrives, which capped how many lines were on their way from
/// DRAM while memory was slow. With memory streaming at ~30 GB/s on two threads,
/// `T1` against `T0` ran SmolLM2 at 321 vs 292 t/s single stream and 915 vs 805 at four
/// agents, Qwen2.5 75.7 vs 72.2 and 276 vs 254, Gemma 3 134 vs 129 and 470 vs 450
/// (medians of 3 interleaved rounds); `NTA` fell between them, and twice the distance
/// with `T1` gained nothing more. Prompts measured alike.
#[inline(always)]
unsafe fn prefetch_ahead<G, const AHEAD: usize>(g: &G) {
    let ahead = (g as *const G as *const i8).wrapping_add(AHEAD);
    for line in 0..std::mem::size_of::<G>().div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(line * 64));
    }
}

/// `out[r][j] = row j of the groups · acts[r]` for one group of eight weight rows
/// (`w`: its blocks in order; `hi` unused) at [`Y`], or two at [`Z`] (`hi`: the second
/// group's blocks, rows 8..16 of `out`), and `R` activation rows.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (and AVX-512 at [`Z`], which only builds
/// for such CPUs have); every `acts[r]` and `hi` are at least as long as `w`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemv<G: Avx2Group, W: Width, const R: usize, const AHEAD: usize>(
    w: &[G],
    hi: &[G],
    acts: [&[ActBlock]; R],
    out: &mut [[f32; MAX_OUT]; R],
) {
    let mut acc = [W::zero_ps(); R];
    for (b, g) in w.iter().enumerate() {
        let h = if W::GROUPS == 2 {
            hi.get_unchecked(b)
        } else {
            g
        };
        prefetch_ahead::<G, AHEAD>(g);
        if W::GROUPS == 2 {
            // The second group is a stream of its own: without this the two-group
            // kernel ran a quarter slower than the one-group one on SmolLM2's decode.
            prefetch_ahead::<G, AHEAD>(h);
        }
        g.accumulate_rows::<W, R>(
            h,
            std::array::from_fn(|r| acts[r].get_unchecked(b)),
            &mut acc,
        );
    }
    for r in 0..R {
        W::store(&mut out[r], acc[r]);
    }
}

/// [`gemv`] behind the checks its safety needs, as a plain function pointer.
fn checked<G: Avx2Group, W: Width, const R: usize, const AHEAD: usize>(
    w: &[G],
    hi: &[G],
    a: [&[ActBlock]; R],
    out: &mut [[f32; MAX_OUT]; R],
) {
    assert!(W::GROUPS == 1 || hi.len() >= w.len());
    for r in &a {
        assert!(r.len() >= w.len());
    }
    // SAFETY: the kernels are picked only after `available()` checked the CPU has AVX2,
    // FMA and F16C (and `Z` exists only in builds for CPUs with AVX-512); every
    // activation row and `hi` are as long as the group's blocks.
    unsafe { gemv::<G, W, R, AHEAD>(w, hi, a, out) }
}

/// The single-group kernels.
pub(crate) fn kernel<G: Avx2Group>() -> Kernel<G> {
    Kernel {
        groups: 1,
        k1: checked::<G, Y, 1, PREFETCH_AHEAD>,
        k2: checked::<G, Y, 2, PREFETCH_AHEAD>,
        k4: checked::<G, Y, 4, PREFETCH_AHEAD>,
    }
}

/// The two-group kernels, in builds for CPUs with AVX-512 ([`WIDE`]), prefetching
/// `AHEAD` bytes ahead ([`PROMPT_PREFETCH_AHEAD`] for prompts, [`BATCH_PREFETCH_AHEAD`] for
/// decode batches).
fn wide_kernel_ahead<G: Avx2Group, const AHEAD: usize>() -> Option<Kernel<G>> {
    #[cfg(all(
        target_feature = "avx512f",
        target_feature = "avx512bw",
        target_feature = "avx512dq",
        target_feature = "avx512vl",
        target_feature = "avx512vnni"
    ))]
    return Some(Kernel {
        groups: 2,
        k1: checked::<G, Z, 1, AHEAD>,
        k2: checked::<G, Z, 2, AHEAD>,
        k4: checked::<G, Z, 4, AHEAD>,
    });
    #[allow(unreachable_code)]
    None
}

/// The two-group kernels for prompts.
pub(crate) fn wide_kernel<G: Avx2Group>() -> Option<Kernel<G>> {
    wide_kernel_ahead::<G, PROMPT_PREFETCH_AHEAD>()
}

/// The two-group kernels for decode batches of at least `G::BATCH_WIDE_ROWS` rows, and
/// that row count; none for types that keep the one-group kernels there.
pub(crate) fn batch_wide_kernel<G: Avx2Group>() -> Option<(Kernel<G>, usize)> {
    if G::BATCH_WIDE_ROWS >= super::WIDE_ROWS {
        return None;
    }
    wide_kernel_ahead::<G, BATCH_PREFETCH_AHEAD>().map(|k| (k, G::BATCH_WIDE_ROWS))
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
    use super::*;

    #[test]
    fn fifth_bits_land_on_their_bytes_in_both_forms() {
        if !super::available() {
            return;
        }
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut group = || Q5_0x8 {
            qs: std::array::from_fn(|_| next() as u8),
            qh: std::array::from_fn(|_| next()),
            d: [0; 8],
        };
        for _ in 0..500 {
            let g = group();
            // SAFETY: `available()` said the CPU has AVX2; the masked form is compiled
            // only where the build targets AVX-512BW and VL.
            let (got, shuffled) = unsafe {
                let lo = unpack_nibbles(&g.qs);
                let shuffled: [__m256i; 8] =
                    std::array::from_fn(|i| _mm256_or_si256(lo[i], fifth_bits(g.qh[i])));
                (unpack_q5::<Y>(&g, &g), shuffled)
            };
            for i in 0..8 {
                let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
                // SAFETY: 32-byte stores into 32-byte arrays.
                unsafe {
                    _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, got[i]);
                    _mm256_storeu_si256(b.as_mut_ptr() as *mut __m256i, shuffled[i]);
                }
                assert_eq!(a, b, "vector {i}");
                for (j, &v) in a.iter().enumerate() {
                    let nibble = if i < 4 {
                        g.qs[32 * i + j] & 0x0f
                    } else {
                        g.qs[32 * (i - 4) + j] >> 4
                    };
                    assert_eq!(v, nibble | (((g.qh[i] >> j) & 1) as u8) << 4);
                }
            }
            #[cfg(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512dq",
                target_feature = "avx512vl",
                target_feature = "avx512vnni"
            ))]
            {
                // Two groups joined: each half holds its own group's values.
                let h = group();
                // SAFETY: the build targets AVX-512 (this block exists only there).
                unsafe {
                    let (joined, lo, hi) = (
                        unpack_q5::<Z>(&g, &h),
                        unpack_q5::<Y>(&g, &g),
                        unpack_q5::<Y>(&h, &h),
                    );
                    for i in 0..8 {
                        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
                        _mm512_storeu_si512(a.as_mut_ptr() as *mut __m512i, joined[i]);
                        _mm256_storeu_si256(b.as_mut_ptr() as *mut __m256i, lo[i]);
                        _mm256_storeu_si256(b[32..].as_mut_ptr() as *mut __m256i, hi[i]);
                        assert_eq!(a, b, "joined vector {i}");
                    }
                }
            }
        }
    }

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
