//! Attention on the CPU over plain slices: RoPE, the KV cache write and the softmax
//! attention of every sequence of a batch, split over the worker threads.
//!
//! Done with candle tensor operations, a decode step of one sequence is a dozen small
//! operations per layer (transposes, copies, a batched matmul sized for large problems,
//! a mask, a softmax), each allocating and each run on one thread while the other
//! threads wait: a third of a step. Here each (sequence, query, kv head) is one unit of
//! work that reads its keys and values in place and writes its own slice of the output.

use std::cell::RefCell;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::RopeStyle;
#[cfg(target_arch = "x86_64")]
use crate::engine::quant::Kernels;

/// What the attention of one layer needs to know about the model.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Multiplies the scores (1/√d or the architecture's own).
    pub scale: f32,
    /// Keys older than this many positions are not attended (sliding-window layers).
    pub window: Option<usize>,
}

/// RoPE tables as plain values, `[positions, head_dim / 2]`.
pub struct RopeTable<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub style: RopeStyle,
}

impl RopeTable<'_> {
    /// Rotates each `head_dim`-wide head of `row` for position `pos`.
    pub fn apply(&self, row: &mut [f32], head_dim: usize, pos: usize) {
        let half = head_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Neox => {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x, y) = (a[i], b[i]);
                        a[i] = x * cos[i] - y * sin[i];
                        b[i] = y * cos[i] + x * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (x, y) = (pair[0], pair[1]);
                        pair[0] = x * cos[i] - y * sin[i];
                        pair[1] = x * sin[i] + y * cos[i];
                    }
                }
            }
        }
    }
}

/// One sequence's rows of a batch: `t` rows from row `first`, at positions
/// `pos..pos + t`. Sequences follow one another (`first` is the sum of the earlier `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: usize,
    pub t: usize,
    pub pos: usize,
}

/// One sequence's cache of one layer, `[n_head_kv, capacity, head_dim]` for keys and
/// for values as f16 bits, already holding the positions its new rows attend to.
pub struct KvView<'a> {
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub capacity: usize,
}

/// Cached rows (f16 bits) into f32, a chunk at a time into a buffer that stays in L1.
#[inline]
fn widen(src: &[u16], dst: &mut [f32]) {
    src.reinterpret_cast::<half::f16>()
        .convert_to_f32_slice(dst);
}

/// Asks for the cache lines of `rows` ahead of their use: a sequence's keys and values
/// of one head are a few KiB per chunk in pages of their own, and the hardware's
/// prefetcher does not cross from one page into the next, so each chunk started with
/// the core waiting on memory.
#[inline(always)]
fn prefetch(rows: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = rows.as_ptr() as *const i8;
        for off in (0..std::mem::size_of_val(rows)).step_by(64) {
            // SAFETY: the address lies inside `rows`; a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = rows;
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent lanes: the compiler turns this into one vector accumulator.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `f` folded over eight lanes of `v` (a lane per eighth of the values, the tail in
/// lane order), then over the lanes: a fold one value at a time is a chain the compiler
/// must keep in order, eight lanes are one vector.
#[inline(always)]
fn fold8(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let chunks = v.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            lanes[l] = f(lanes[l], c[l]);
        }
    }
    for (l, &x) in tail.iter().enumerate() {
        lanes[l] = f(lanes[l], x);
    }
    lanes.into_iter().fold(init, f)
}

/// Softmax of one head's scores in place, in vector-wide passes (maximum, `exp`, sum,
/// scale): a single pass that summed as it went kept every `exp` scalar.
fn softmax(scores: &mut [f32]) {
    let max = fold8(scores, f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = super::host_ops::exp(*s - max);
    }
    let inv = 1.0 / fold8(scores, 0.0, |a, b| a + b);
    scores.iter_mut().for_each(|w| *w *= inv);
}

/// Cached rows widened and taken together (keys against every head of a group, values
/// by [`add_weighted_rows`]): 32 rows of a 64-wide head are 8 KiB, in L1 while each head
/// of a group goes over them.
const CHUNK_ROWS: usize = 32;

/// Columns of a head summed in registers at a time (eight AVX vectors).
const COLS: usize = 64;

/// `o += Σ_j w[j] · rows[j]` (`rows`: `w.len()` rows as wide as `o`), each element's
/// sum taken in row order as a plain loop would take it, but 64 columns at a time held
/// in registers across the rows: a plain loop loads and stores `o` once per row, and
/// those stores were what bounded attention over long contexts.
fn add_weighted_rows(o: &mut [f32], w: &[f32], rows: &[f32]) {
    let d = o.len();
    let mut c0 = 0;
    while c0 + COLS <= d {
        let mut acc: [f32; COLS] = o[c0..c0 + COLS].try_into().expect("64 columns");
        for (&w, row) in w.iter().zip(rows.chunks_exact(d)) {
            let v: &[f32; COLS] = row[c0..c0 + COLS].try_into().expect("64 columns");
            for l in 0..COLS {
                acc[l] = w.mul_add(v[l], acc[l]);
            }
        }
        o[c0..c0 + COLS].copy_from_slice(&acc);
        c0 += COLS;
    }
    if c0 < d {
        for (&w, row) in w.iter().zip(rows.chunks_exact(d)) {
            for (x, y) in o[c0..].iter_mut().zip(&row[c0..]) {
                *x = w.mul_add(*y, *x);
            }
        }
    }
}

/// `out[rows, n_head * head_dim]` = softmax(scale · q·Kᵀ) · V for every row of `q`
/// (`[rows, n_head * head_dim]`, already rotated), each over its own sequence's cache:
/// `kv(i)` is the cache of the sequence of `spans[i]`. Allocates nothing once each
/// worker's score buffer has grown to the longest sequence.
pub fn attend<'a>(
    heads: Heads,
    q: &[f32],
    spans: &[Span],
    kv: &(dyn Fn(usize) -> KvView<'a> + Sync),
    out: &mut [f32],
) {
    let Heads {
        n_head,
        n_head_kv,
        head_dim: d,
        scale,
        window,
    } = heads;
    let rep = n_head / n_head_kv;
    let width = n_head * d;
    // Units: (row, kv head), rows in sequence order.
    let total = spans.last().map_or(0, |s| (s.first + s.t) * n_head_kv);
    let out_addr = out.as_mut_ptr() as usize;
    let out_len = out.len();
    #[cfg(target_arch = "x86_64")]
    let direct = d % f16c::COLS == 0 && crate::engine::quant::kernels() == Kernels::Avx2;
    let work = |units: std::ops::Range<usize>| {
        thread_local! {
            /// Scores, and one chunk of cached rows widened to f32.
            static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> =
                const { RefCell::new((Vec::new(), Vec::new())) };
        }
        SCRATCH.with(|cell| {
            let (scores, rows) = &mut *cell.borrow_mut();
            if rows.len() < CHUNK_ROWS * d {
                rows.resize(CHUNK_ROWS * d, 0.0);
            }
            for u in units {
                let (row, g) = (u / n_head_kv, u % n_head_kv);
                let si = spans.partition_point(|s| s.first <= row) - 1;
                let s = spans[si];
                let cache = kv(si);
                let i = row - s.first;
                let p = s.pos + i;
                let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let n = p + 1 - lo;
                if scores.len() < rep * n {
                    // Room for the whole cache at once: growing with the context would
                    // allocate again every time it doubles.
                    scores.resize(rep * n.max(cache.capacity), 0.0);
                }
                let base = g * cache.capacity * d;
                let keys = &cache.k[base + lo * d..base + (lo + n) * d];
                let values = &cache.v[base + lo * d..base + (lo + n) * d];
                // The group's query heads, and its output heads, lie side by side.
                let start = row * width + g * rep * d;
                let qs = &q[start..start + rep * d];
                let sc = &mut scores[..rep * n];
                // Every head of the group against each key in turn: a key is read once
                // for all of them (each head's sums are still taken in the same order).
                for j0 in (0..n).step_by(CHUNK_ROWS) {
                    let j1 = (j0 + CHUNK_ROWS).min(n);
                    // The next chunk of keys, or after the last the first of values.
                    if j1 < n {
                        prefetch(&keys[j1 * d..(j1 + CHUNK_ROWS).min(n) * d]);
                    } else {
                        prefetch(&values[..CHUNK_ROWS.min(n) * d]);
                    }
                    let cached = &keys[j0 * d..j1 * d];
                    #[cfg(target_arch = "x86_64")]
                    if direct {
                        // SAFETY: `direct` only where the CPU has AVX2, FMA and F16C and
                        // heads are a multiple of 64 wide.
                        unsafe { f16c::scores(qs, cached, d, scale, sc, n, j0) };
                        continue;
                    }
                    let chunk = &mut rows[..(j1 - j0) * d];
                    widen(cached, chunk);
                    for (j, key) in chunk.chunks_exact(d).enumerate() {
                        for (r, qh) in qs.chunks_exact(d).enumerate() {
                            sc[r * n + j0 + j] = scale * dot(qh, key);
                        }
                    }
                }
                for head in sc.chunks_exact_mut(n) {
                    softmax(head);
                }
                assert!(
                    start + rep * d <= out_len,
                    "attention output slice in range"
                );
                // SAFETY: the slice is inside `out` (checked above) and unit (row, g) is
                // the only one writing heads g·rep..(g+1)·rep of `row`.
                let o = unsafe {
                    std::slice::from_raw_parts_mut((out_addr as *mut f32).add(start), rep * d)
                };
                o.fill(0.0);
                // Value rows a chunk at a time (small enough to stay in L1 while every
                // head of the group reads them).
                for j0 in (0..n).step_by(CHUNK_ROWS) {
                    let j1 = (j0 + CHUNK_ROWS).min(n);
                    if j1 < n {
                        prefetch(&values[j1 * d..(j1 + CHUNK_ROWS).min(n) * d]);
                    }
                    let cached = &values[j0 * d..j1 * d];
                    #[cfg(target_arch = "x86_64")]
                    if direct {
                        for (r, oh) in o.chunks_exact_mut(d).enumerate() {
                            // SAFETY: as for the scores.
                            unsafe {
                                f16c::add_weighted_rows(oh, &sc[r * n + j0..r * n + j1], cached)
                            };
                        }
                        continue;
                    }
                    let chunk = &mut rows[..(j1 - j0) * d];
                    widen(cached, chunk);
                    let chunk = &*chunk;
                    for (r, oh) in o.chunks_exact_mut(d).enumerate() {
                        add_weighted_rows(oh, &sc[r * n + j0..r * n + j1], chunk);
                    }
                }
            }
        });
    };
    crate::engine::quant::split_over_workers(total, work);
}

/// The products with cached rows read straight from their f16 bits (F16C) and the
/// scores of eight keys reduced together: at a debate's short contexts each score's
/// own horizontal sum (seven dependent scalar adds after eight multiply-adds) was most
/// of attention's time. Each sum is taken in the same order as [`dot`] and
/// [`super::add_weighted_rows`] take it, so results are the same to the bit.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    /// Head widths this path takes: whole 64-column blocks of eight vectors.
    pub const COLS: usize = super::COLS;

    /// `sc[r * n + j0 + j] = scale · q_r·key_j` for every head `r` of `qs` (`d` wide) and
    /// every key row `j` of `keys`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `d` must be a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(
        qs: &[f32],
        keys: &[u16],
        d: usize,
        scale: f32,
        sc: &mut [f32],
        n: usize,
        j0: usize,
    ) {
        // `dot`'s reduction: its lanes in order from the empty sum, then its (empty)
        // tail.
        let empty: f32 = [0f32; 0].iter().sum();
        let rows = keys.len() / d;
        let mut j = 0;
        // Eight keys at a time: eight independent sums, whose lanes are then
        // transposed and added in lane order, one vector add for all eight instead of
        // seven scalar adds for each.
        while j + 8 <= rows {
            for (r, qh) in qs.chunks_exact(d).enumerate() {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    // SAFETY: `c + 8 <= d`, the width of the query and of each key row
                    // `j + t < rows`.
                    unsafe {
                        let q = _mm256_loadu_ps(qh.as_ptr().add(c));
                        for (t, a) in acc.iter_mut().enumerate() {
                            let k = key_bits(keys, (j + t) * d + c);
                            *a = _mm256_fmadd_ps(q, k, *a);
                        }
                    }
                }
                let lanes = transpose(acc);
                let mut sum = _mm256_set1_ps(empty);
                for l in lanes {
                    sum = _mm256_add_ps(sum, l);
                }
                let sum = _mm256_mul_ps(
                    _mm256_set1_ps(scale),
                    _mm256_add_ps(sum, _mm256_set1_ps(empty)),
                );
                // SAFETY: `j + 8 <= rows <= n - j0`, so the eight scores lie in head r's.
                unsafe { _mm256_storeu_ps(sc.as_mut_ptr().add(r * n + j0 + j), sum) };
            }
            j += 8;
        }
        for (jj, key) in keys.chunks_exact(d).enumerate().skip(j) {
            for (r, qh) in qs.chunks_exact(d).enumerate() {
                let mut acc = _mm256_setzero_ps();
                for c in (0..d).step_by(8) {
                    // SAFETY: `c + 8 <= d`, the length of both rows.
                    let (k, q) = unsafe { (key_bits(key, c), _mm256_loadu_ps(qh.as_ptr().add(c))) };
                    acc = _mm256_fmadd_ps(q, k, acc);
                }
                let mut lanes = [0f32; 8];
                // SAFETY: eight floats of room.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
                let sum = lanes.iter().fold(empty, |a, &b| a + b);
                sc[r * n + j0 + jj] = scale * (sum + empty);
            }
        }
    }

    /// Eight f16 values from `bits[at..]` as floats.
    ///
    /// # Safety
    /// `at + 8 <= bits.len()`; the CPU must have F16C.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn key_bits(bits: &[u16], at: usize) -> __m256 {
        debug_assert!(at + 8 <= bits.len());
        // SAFETY: in bounds (the caller's promise).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().add(at).cast())) }
    }

    /// Rows of an 8×8 block as its columns: `out[l]` holds lane `l` of every `rows[t]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// `o += Σ_j w[j] · rows[j]`, `rows` as f16 bits, 64 columns at a time in registers.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `o.len()` must be a multiple of 64.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn add_weighted_rows(o: &mut [f32], w: &[f32], rows: &[u16]) {
        let d = o.len();
        for c0 in (0..d).step_by(COLS) {
            let mut acc = [_mm256_setzero_ps(); COLS / 8];
            for (v, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c0 + 64 <= d`.
                *a = unsafe { _mm256_loadu_ps(o.as_ptr().add(c0 + 8 * v)) };
            }
            for (&wj, row) in w.iter().zip(rows.chunks_exact(d)) {
                let wv = _mm256_set1_ps(wj);
                for (v, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `c0 + 64 <= d`, the row's length.
                    let x = unsafe {
                        _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(c0 + 8 * v).cast()))
                    };
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
            for (v, a) in acc.iter().enumerate() {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(c0 + 8 * v), *a) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written the plain way, for one head over explicit key/value lists.
    fn reference(q: &[f32], keys: &[&[f32]], values: &[&[f32]], scale: f32) -> Vec<f32> {
        let s: Vec<f32> = keys
            .iter()
            .map(|k| scale * q.iter().zip(*k).map(|(a, b)| a * b).sum::<f32>())
            .collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        let mut o = vec![0f32; q.len()];
        for (w, v) in e.iter().zip(values) {
            for (x, y) in o.iter_mut().zip(*v) {
                *x += w / z * y;
            }
        }
        o
    }

    /// Cache contents: values an f16 holds exactly, and their bits.
    fn cached(n: usize, seed: u32) -> (Vec<f32>, Vec<u16>) {
        let h: Vec<half::f16> = values(n, seed)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        (
            h.iter().map(|x| x.to_f32()).collect(),
            h.iter().map(|x| x.to_bits()).collect(),
        )
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn products_read_from_f16_bits_equal_the_widened_ones_to_the_bit() {
        if crate::engine::quant::kernels() != crate::engine::quant::Kernels::Avx2 {
            return;
        }
        for d in [64, 128, 256] {
            let (rep, n) = (3, 37);
            let qs = values(rep * d, 7);
            let (_, keys) = cached(n * d, 11);
            let (_, vals) = cached(n * d, 13);
            let mut widened = vec![0f32; n * d];
            widen(&keys, &mut widened);
            let mut want = vec![0f32; rep * n];
            for (j, key) in widened.chunks_exact(d).enumerate() {
                for (r, qh) in qs.chunks_exact(d).enumerate() {
                    want[r * n + j] = 0.125 * dot(qh, key);
                }
            }
            let mut got = vec![0f32; rep * n];
            // SAFETY: the kernels are AVX2 ones (checked above); d is a multiple of 64.
            unsafe { f16c::scores(&qs, &keys, d, 0.125, &mut got, n, 0) };
            assert_eq!(bits(&got), bits(&want), "scores, d = {d}");
            let w = values(n, 17);
            widen(&vals, &mut widened);
            let (mut want, mut got) = (values(d, 19), values(d, 19));
            add_weighted_rows(&mut want, &w, &widened);
            // SAFETY: as above.
            unsafe { f16c::add_weighted_rows(&mut got, &w, &vals) };
            assert_eq!(bits(&got), bits(&want), "weighted rows, d = {d}");
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn matches_plain_attention_with_grouped_heads_causality_and_a_window() {
        let (n_head, n_kv, d, cap) = (4, 2, 16, 12);
        for window in [None, Some(3)] {
            let heads = Heads {
                n_head,
                n_head_kv: n_kv,
                head_dim: d,
                scale: 0.25,
                window,
            };
            let (k, k_bits) = cached(n_kv * cap * d, 1);
            let (v, v_bits) = cached(n_kv * cap * d, 2);
            // Two sequences sharing the cache contents: 3 new rows at 5.., 1 row at 9.
            let spans = [
                Span {
                    first: 0,
                    t: 3,
                    pos: 5,
                },
                Span {
                    first: 3,
                    t: 1,
                    pos: 9,
                },
            ];
            let kv = |_: usize| KvView {
                k: &k_bits,
                v: &v_bits,
                capacity: cap,
            };
            let q = values(4 * n_head * d, 3);
            let mut out = vec![f32::NAN; 4 * n_head * d];
            attend(heads, &q, &spans, &kv, &mut out);
            for (row, p) in [(0, 5), (1, 6), (2, 7), (3, 9)] {
                let lo = window.map_or(0, |w: usize| (p + 1usize).saturating_sub(w));
                for h in 0..n_head {
                    let g = h / (n_head / n_kv);
                    let key = |j: usize| &k[g * cap * d + j * d..g * cap * d + (j + 1) * d];
                    let val = |j: usize| &v[g * cap * d + j * d..g * cap * d + (j + 1) * d];
                    let ks: Vec<&[f32]> = (lo..=p).map(key).collect();
                    let vs: Vec<&[f32]> = (lo..=p).map(val).collect();
                    let qh = &q[row * n_head * d + h * d..row * n_head * d + (h + 1) * d];
                    let want = reference(qh, &ks, &vs, 0.25);
                    let got = &out[row * n_head * d + h * d..row * n_head * d + (h + 1) * d];
                    for (a, b) in want.iter().zip(got) {
                        assert!((a - b).abs() < 1e-5, "row {row} head {h}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// One head at a time in the order of operations a single head's attention takes:
    /// scores key by key, softmax, then values row by row.
    fn one_head(q: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32) -> Vec<f32> {
        let mut sc: Vec<f32> = keys.chunks_exact(d).map(|k| scale * dot(q, k)).collect();
        softmax(&mut sc);
        let mut o = vec![0f32; d];
        for (&w, value) in sc.iter().zip(values.chunks_exact(d)) {
            for (x, y) in o.iter_mut().zip(value) {
                *x = w.mul_add(*y, *x);
            }
        }
        o
    }

    #[test]
    fn grouped_heads_give_each_head_exactly_its_own_attention() {
        // Seven query heads per key head (Qwen2.5's grouping), 70 keys (two value
        // chunks and a part), head widths of 64 (SmolLM2, Qwen2.5), 256 (Gemma 3) and
        // one that is not a multiple of the 64 columns summed together.
        for d in [64, 256, 80] {
            grouped_heads_at_width(d);
        }
    }

    fn grouped_heads_at_width(d: usize) {
        let (n_head, n_kv, cap, pos) = (14, 2, 72, 69);
        let heads = Heads {
            n_head,
            n_head_kv: n_kv,
            head_dim: d,
            scale: 0.125,
            window: None,
        };
        let (k, k_bits) = cached(n_kv * cap * d, 4);
        let (v, v_bits) = cached(n_kv * cap * d, 5);
        let q = values(n_head * d, 6);
        let kv = |_: usize| KvView {
            k: &k_bits,
            v: &v_bits,
            capacity: cap,
        };
        let spans = [Span {
            first: 0,
            t: 1,
            pos,
        }];
        let mut out = vec![f32::NAN; n_head * d];
        attend(heads, &q, &spans, &kv, &mut out);
        for h in 0..n_head {
            let g = h / (n_head / n_kv);
            let span = g * cap * d..g * cap * d + (pos + 1) * d;
            let want = one_head(&q[h * d..(h + 1) * d], &k[span.clone()], &v[span], d, 0.125);
            assert_eq!(
                &out[h * d..(h + 1) * d],
                want.as_slice(),
                "width {d} head {h}"
            );
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position_in_both_layouts() {
        // One head of width 4 (two frequencies), position 1 of a table with angles
        // 0.5 and 0.25 at position 1.
        let (a0, a1) = (0.5f32, 0.25f32);
        let cos = [1.0, 1.0, a0.cos(), a1.cos()];
        let sin = [0.0, 0.0, a0.sin(), a1.sin()];
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut neox = x;
        RopeTable {
            cos: &cos,
            sin: &sin,
            style: RopeStyle::Neox,
        }
        .apply(&mut neox, 4, 1);
        // Pairs (0, 2) and (1, 3).
        assert!((neox[0] - (1.0 * a0.cos() - 3.0 * a0.sin())).abs() < 1e-6);
        assert!((neox[2] - (3.0 * a0.cos() + 1.0 * a0.sin())).abs() < 1e-6);
        assert!((neox[1] - (2.0 * a1.cos() - 4.0 * a1.sin())).abs() < 1e-6);
        let mut inter = x;
        RopeTable {
            cos: &cos,
            sin: &sin,
            style: RopeStyle::Interleaved,
        }
        .apply(&mut inter, 4, 1);
        // Pairs (0, 1) and (2, 3).
        assert!((inter[0] - (1.0 * a0.cos() - 2.0 * a0.sin())).abs() < 1e-6);
        assert!((inter[1] - (1.0 * a0.sin() + 2.0 * a0.cos())).abs() < 1e-6);
        assert!((inter[3] - (3.0 * a1.sin() + 4.0 * a1.cos())).abs() < 1e-6);
        // Position 0 leaves everything as it is.
        let mut same = x;
        RopeTable {
            cos: &cos,
            sin: &sin,
            style: RopeStyle::Neox,
        }
        .apply(&mut same, 4, 0);
        assert_eq!(same, x);
    }
}
