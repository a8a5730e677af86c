//! Quantized matrix products on the CPU, for the weight types the supported models are
//! made of (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K).
//!
//! candle multiplies Q4_1 and Q5_0 with portable scalar code and reads each weight row
//! once per activation row. [`QWeight`] regroups the file's blocks eight rows at a time
//! when the model loads ([`packed`]; K-quant super-blocks are first split into 32-weight
//! slices, [`kquants`]) and multiplies them with AVX2 where the CPU has it: eight rows'
//! sums build up side by side in one register, and each group of blocks is unpacked
//! once for up to four activation rows, so one pass over the weights serves a whole
//! batch of sequences. Other types and other devices stay with candle's `QMatMul`;
//! [`Linear`] picks. The CPU forward pass hands these products host memory
//! ([`Linear::forward_host`]); the tensor interface ([`Module`]) serves the rest.

pub mod blocks;
pub mod kquants;
pub mod packed;
pub mod pages;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Module, Shape, Tensor};

use blocks::{ActBlock, QK, WeightBlock};
use packed::{Interleaved, Q4_0x8, Q4_1x8, Q4Kx8, Q5_0x8, Q6Kx8, Q8_0x8, ROWS};
use pages::Pages;

/// The block types [`QWeight::from_bytes`] takes (a test checks the two agree).
const OWN_TYPES: [GgmlDType; 6] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// A weight matrix `[n, k]` in one of the block types this module multiplies, its rows
/// regrouped eight at a time ([`packed`]).
pub struct QWeight {
    n: usize,
    k: usize,
    groups: Groups,
}

enum Groups {
    Q4_0(Pages<Q4_0x8>),
    Q4_1(Pages<Q4_1x8>),
    Q5_0(Pages<Q5_0x8>),
    Q8_0(Pages<Q8_0x8>),
    Q4K(Pages<Q4Kx8>),
    Q6K(Pages<Q6Kx8>),
}

/// Which code multiplies: chosen once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Avx2,
    Scalar,
    /// candle's `QMatMul` for every type (to compare).
    Candle,
}

/// The fastest kernels this CPU runs. `PATHOS_KERNELS=scalar` forces the portable ones
/// and `PATHOS_KERNELS=candle` candle's for every type, to compare.
pub fn kernels() -> Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    *K.get_or_init(|| {
        match std::env::var("PATHOS_KERNELS").as_deref() {
            Ok("scalar") => return Kernels::Scalar,
            Ok("candle") => return Kernels::Candle,
            _ => {}
        }
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            return Kernels::Avx2;
        }
        Kernels::Scalar
    })
}

impl QWeight {
    /// The blocks of `t` (`[n, k]`), when its type is one this module multiplies.
    pub fn from_qtensor(t: &QTensor) -> Option<Self> {
        let (n, k) = t.shape().dims2().ok()?;
        Self::from_bytes(t.dtype(), &t.data().ok()?, n, k)
    }

    /// A matrix `[n, k]` of type `dtype` from its stored bytes (as in the file), when
    /// the type is one this module multiplies and the byte count fits.
    pub fn from_bytes(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Option<Self> {
        Self::from_file_bytes(dtype, data, n, k, &|_| {})
    }

    /// [`Self::from_bytes`] from bytes mapped from the file, `release` handed each run of
    /// them once it has been read for the last time (the whole of them, for the K-quants,
    /// once they are split): the loader drops those pages as it goes, so the largest
    /// tensor is not held twice while it is regrouped.
    pub fn from_file_bytes(
        dtype: GgmlDType,
        data: &[u8],
        n: usize,
        k: usize,
        release: &(dyn Fn(&[u8]) + Sync),
    ) -> Option<Self> {
        if !k.is_multiple_of(QK) {
            return None;
        }
        let kb = k / QK;
        let groups = match dtype {
            GgmlDType::Q4_0 => Groups::Q4_0(packed::pack_matrix(data, n, kb, release)?),
            GgmlDType::Q4_1 => Groups::Q4_1(packed::pack_matrix(data, n, kb, release)?),
            GgmlDType::Q5_0 => Groups::Q5_0(packed::pack_matrix(data, n, kb, release)?),
            GgmlDType::Q8_0 => Groups::Q8_0(packed::pack_matrix(data, n, kb, release)?),
            GgmlDType::Q4K => {
                let blocks =
                    kquants::split_matrix(data, n, k, kquants::Q4K_BYTES, kquants::split_q4k)?;
                release(data);
                Groups::Q4K(packed::pack_blocks(&blocks, n, kb))
            }
            GgmlDType::Q6K => {
                let blocks =
                    kquants::split_matrix(data, n, k, kquants::Q6K_BYTES, kquants::split_q6k)?;
                release(data);
                Groups::Q6K(packed::pack_blocks(&blocks, n, kb))
            }
            _ => return None,
        };
        Some(Self { n, k, groups })
    }

    /// Whether weights of `dtype` on `device` are multiplied by this module.
    pub fn handles(dtype: GgmlDType, device: &Device) -> bool {
        device.is_cpu() && kernels() != Kernels::Candle && OWN_TYPES.contains(&dtype)
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// The rows `ids` as an f32 tensor `[ids.len(), k]` (token embeddings of a tied table).
    pub fn rows_of(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.k];
        self.rows_into(ids, &mut out)?;
        Tensor::from_vec(out, (ids.len(), self.k), device)
    }

    /// Writes the rows `ids`, dequantized, into `out` (`[ids.len(), k]`): token
    /// embeddings read straight into the forward pass's buffer.
    pub fn rows_into(&self, ids: &[u32], out: &mut [f32]) -> candle_core::Result<()> {
        if out.len() != ids.len() * self.k {
            candle_core::bail!(
                "embedding rows: {} values for {} rows",
                out.len(),
                ids.len()
            )
        }
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.k.max(1))) {
            let id = id as usize;
            if id >= self.n {
                candle_core::bail!("token id {id} is outside the vocabulary of {}", self.n)
            }
            match &self.groups {
                Groups::Q4_0(g) => self.write_row(g, id, row),
                Groups::Q4_1(g) => self.write_row(g, id, row),
                Groups::Q5_0(g) => self.write_row(g, id, row),
                Groups::Q8_0(g) => self.write_row(g, id, row),
                Groups::Q4K(g) => self.write_row(g, id, row),
                Groups::Q6K(g) => self.write_row(g, id, row),
            }
        }
        Ok(())
    }

    fn write_row<G: Interleaved>(&self, groups: &[G], row: usize, out: &mut [f32]) {
        let kb = self.k / QK;
        let g = row / ROWS;
        for (group, dst) in groups[g * kb..(g + 1) * kb]
            .iter()
            .zip(out.chunks_exact_mut(QK))
        {
            dst.copy_from_slice(&group.block(row % ROWS).dequantize());
        }
    }

    /// `dst[m, n] = x[m, k] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "activation shape");
        self.matmul_quantized(&Activations::quantize(x, self.k), dst);
    }

    /// `dst[m, n] = acts[m, k] · selfᵀ` for activations already quantized (one input
    /// feeding several weights, such as the query, key and value projections).
    pub fn matmul_quantized(&self, acts: &Activations, dst: &mut [f32]) {
        dispatch(&[Job::new(self, acts, dst)]);
    }
}

/// Activation rows quantized to 8 bits, the form the kernels multiply.
#[derive(Default)]
pub struct Activations {
    rows: usize,
    k: usize,
    blocks: Vec<ActBlock>,
}

impl Activations {
    /// Quantizes the rows of `x` (`k` values each; `k` a multiple of 32).
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let mut acts = Self::default();
        acts.quantize_from(x, k);
        acts
    }

    /// Replaces the rows with those of `x` quantized (`k` values each; `k` a multiple
    /// of 32), reusing the buffer: a decode step quantizes into the same memory each time.
    pub fn quantize_from(&mut self, x: &[f32], k: usize) {
        let kb = k / QK;
        let rows = x.len() / k.max(1);
        // Every block is overwritten below: only new ones are filled first.
        self.blocks.resize(rows * kb, ActBlock::ZERO);
        for (row, out) in x
            .chunks_exact(k.max(1))
            .zip(self.blocks.chunks_exact_mut(kb.max(1)))
        {
            #[cfg(target_arch = "x86_64")]
            if kernels() == Kernels::Avx2 {
                // SAFETY: `kernels()` returned Avx2 only after checking the CPU has AVX2,
                // FMA and F16C.
                unsafe { x86::quantize_row(row, out) };
                continue;
            }
            blocks::quantize_row(row, out);
        }
        self.rows = rows;
        self.k = k;
    }
}

/// Most outputs one kernel call writes per activation row: two groups of eight rows.
pub(crate) const MAX_OUT: usize = 2 * ROWS;

/// Products of one group of eight weight rows (or two: `hi` is the second's blocks,
/// unused by single-group kernels) with 1, 2 or 4 activation rows.
pub(crate) type GroupKernel<G, const R: usize> =
    fn(&[G], &[G], [&[ActBlock]; R], &mut [[f32; MAX_OUT]; R]);

/// The kernels of one width: how many groups a call multiplies and the calls for 1, 2
/// and 4 activation rows.
pub(crate) struct Kernel<G> {
    pub groups: usize,
    pub k1: GroupKernel<G, 1>,
    pub k2: GroupKernel<G, 2>,
    pub k4: GroupKernel<G, 4>,
}

/// Single-group kernels, and two-group ones where the CPU has them.
struct Picked<G> {
    one: Kernel<G>,
    two: Option<Kernel<G>>,
    /// Two-group kernels for decode batches, and the fewest rows they take.
    batch: Option<(Kernel<G>, usize)>,
}

/// Portable products over the interleaved layout, block by block as the file's
/// row-order code would sum them.
fn gemv_scalar<G: Interleaved, const R: usize>(
    w: &[G],
    _hi: &[G],
    acts: [&[ActBlock]; R],
    out: &mut [[f32; MAX_OUT]; R],
) {
    for r in 0..R {
        for (j, o) in out[r][..ROWS].iter_mut().enumerate() {
            *o = w
                .iter()
                .zip(acts[r])
                .map(|(g, a)| {
                    G::Block::dot_scalar(std::slice::from_ref(&g.block(j)), std::slice::from_ref(a))
                })
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
trait Pick: x86::Avx2Group {}
#[cfg(target_arch = "x86_64")]
impl<G: x86::Avx2Group> Pick for G {}
#[cfg(not(target_arch = "x86_64"))]
trait Pick: Interleaved {}
#[cfg(not(target_arch = "x86_64"))]
impl<G: Interleaved> Pick for G {}

fn pick<G: Pick>() -> Picked<G> {
    #[cfg(target_arch = "x86_64")]
    if kernels() == Kernels::Avx2 {
        return Picked {
            one: x86::kernel::<G>(),
            two: x86::wide_kernel::<G>(),
            batch: x86::batch_wide_kernel::<G>(),
        };
    }
    Picked {
        one: Kernel {
            groups: 1,
            k1: gemv_scalar::<G, 1>,
            k2: gemv_scalar::<G, 2>,
            k4: gemv_scalar::<G, 4>,
        },
        two: None,
        batch: None,
    }
}

/// Fewest activation rows the two-group kernels take. Where the weights stream from
/// memory once per step (a decode step of up to eight agents) the one-group kernels
/// were faster on SmolLM2 (four agents 596-609 t/s against 552-603 two-group, eight
/// 700-719 against 677-686, same binary, interleaved runs); over a 128-token prompt the
/// two-group ones were 12-20% faster (1370-1460 t/s against 1220-1230). Q4_1 takes
/// them from four rows (`x86::Avx2Group::BATCH_WIDE_ROWS`) through kernels of their own
/// that prefetch 5120 bytes ahead: SmolLM2's four agents ran 4% faster (median of the
/// per-round ratios over 10 interleaved rounds). The same prefetch for
/// prompts cut 128-token prompts from 2419-2839 to 2104-2404 t/s, so prompts keep theirs.
pub(crate) const WIDE_ROWS: usize = 16;

/// Groups a worker takes at a time: two where the kernels multiply two at once, so no
/// chunk of a dispatch ends with a group left to multiply alone.
fn unit() -> usize {
    #[cfg(target_arch = "x86_64")]
    if kernels() == Kernels::Avx2 && x86::WIDE {
        return 2;
    }
    1
}

/// Multiplies groups `range` of `w` (`n` rows in groups of eight, `kb` blocks each)
/// with `m` activation rows into `dst` (`[m, n]`, as an address: several workers write
/// disjoint parts of it). Each group (or pair of groups) is multiplied with every
/// activation row, four at a time, while its blocks sit in L1.
#[allow(clippy::too_many_arguments)]
fn run_groups<G: Interleaved>(
    w: &[G],
    n: usize,
    kb: usize,
    acts: &[ActBlock],
    m: usize,
    dst: usize,
    kernels: Picked<G>,
    range: std::ops::Range<usize>,
) {
    let dst = dst as *mut f32;
    let mut g = range.start;
    while g < range.end {
        let kernel = match (&kernels.two, &kernels.batch) {
            (Some(two), _) if g + 1 < range.end && m >= WIDE_ROWS => two,
            (_, Some((batch, rows))) if g + 1 < range.end && m >= *rows => batch,
            _ => &kernels.one,
        };
        let first = g * ROWS;
        let width = (kernel.groups * ROWS).min(n - first);
        let put = |i: usize, out: &[f32; MAX_OUT]| {
            // SAFETY: `i < m` and `first + width <= n`, so the span lies inside `dst`
            // (m * n floats, checked by `Job::new`, which borrows it mutably for the
            // job's life); rows `first..first + width` of every output row belong to
            // these groups alone, and each group is run by exactly one worker.
            unsafe {
                let to = dst.add(i * n + first);
                if width == ROWS {
                    // Whole groups: a constant-length copy is a few stores, not a call.
                    std::ptr::copy_nonoverlapping(out.as_ptr(), to, ROWS);
                } else if width == MAX_OUT {
                    std::ptr::copy_nonoverlapping(out.as_ptr(), to, MAX_OUT);
                } else {
                    std::ptr::copy_nonoverlapping(out.as_ptr(), to, width);
                }
            }
        };
        let wg = &w[g * kb..(g + 1) * kb];
        let hi = if kernel.groups == 2 {
            &w[(g + 1) * kb..(g + 2) * kb]
        } else {
            wg
        };
        let a = |i: usize| &acts[i * kb..(i + 1) * kb];
        let mut i = 0;
        while i + 4 <= m {
            let mut o = [[0f32; MAX_OUT]; 4];
            (kernel.k4)(wg, hi, [a(i), a(i + 1), a(i + 2), a(i + 3)], &mut o);
            for (j, o) in o.iter().enumerate() {
                put(i + j, o);
            }
            i += 4;
        }
        if i + 2 <= m {
            let mut o = [[0f32; MAX_OUT]; 2];
            (kernel.k2)(wg, hi, [a(i), a(i + 1)], &mut o);
            put(i, &o[0]);
            put(i + 1, &o[1]);
            i += 2;
        }
        if i < m {
            let mut o = [[0f32; MAX_OUT]; 1];
            (kernel.k1)(wg, hi, [a(i)], &mut o);
            put(i, &o[0]);
        }
        g += kernel.groups;
    }
}

/// One weight's share of a dispatch: `dst = acts · wᵀ`, split by groups of eight rows.
/// A plain value (no boxed closure), so a dispatch allocates nothing.
struct Job<'a> {
    w: &'a QWeight,
    acts: &'a [ActBlock],
    m: usize,
    /// Address of the destination, `[m, n]`, borrowed mutably by `'a`.
    dst: usize,
    _dst: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> Job<'a> {
    fn new(w: &'a QWeight, acts: &'a Activations, dst: &'a mut [f32]) -> Self {
        assert_eq!(acts.k, w.k, "activation width");
        let m = acts.rows;
        assert_eq!(dst.len(), m * w.n, "output shape");
        let kb = w.k / QK;
        assert!(acts.blocks.len() >= m * kb, "activation rows");
        Self {
            w,
            acts: &acts.blocks[..m * kb],
            m,
            dst: dst.as_mut_ptr() as usize,
            _dst: std::marker::PhantomData,
        }
    }

    fn groups(&self) -> usize {
        self.w.n.div_ceil(ROWS)
    }

    /// Work units of the dispatch: groups taken [`unit`] at a time.
    fn units(&self) -> usize {
        self.groups().div_ceil(unit())
    }

    /// The groups of work units `units`.
    fn groups_of(&self, units: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let u = unit();
        units.start * u..(units.end * u).min(self.groups())
    }

    /// Multiplies the groups of work units `units`.
    fn run(&self, units: std::ops::Range<usize>) {
        let range = self.groups_of(units);
        let (n, kb, a, m, d) = (self.w.n, self.w.k / QK, self.acts, self.m, self.dst);
        match &self.w.groups {
            Groups::Q4_0(g) => run_groups(g, n, kb, a, m, d, pick::<Q4_0x8>(), range),
            Groups::Q4_1(g) => run_groups(g, n, kb, a, m, d, pick::<Q4_1x8>(), range),
            Groups::Q5_0(g) => run_groups(g, n, kb, a, m, d, pick::<Q5_0x8>(), range),
            Groups::Q8_0(g) => run_groups(g, n, kb, a, m, d, pick::<Q8_0x8>(), range),
            Groups::Q4K(g) => run_groups(g, n, kb, a, m, d, pick::<Q4Kx8>(), range),
            Groups::Q6K(g) => run_groups(g, n, kb, a, m, d, pick::<Q6Kx8>(), range),
        }
    }
}

// SAFETY: a job only reads its weight and activations and writes, through `dst`,
// disjoint group columns of a buffer it borrows mutably for its whole life; which
// groups a worker runs is decided by the dispatch, each group by exactly one worker.
unsafe impl Sync for Job<'_> {}

/// Runs the groups of several weights as one dispatch over candle's CPU worker pool (the
/// same threads candle's own kernels use, so the two never compete for cores): the
/// query, key and value projections, or the gate and up projections, then cost one
/// hand-off and one wait instead of three or two, and a worker done with one weight's
/// groups moves on to the next weight's instead of idling at a barrier.
fn dispatch(jobs: &[Job<'_>]) {
    let total: usize = jobs.iter().map(Job::units).sum();
    let work = |range: std::ops::Range<usize>| {
        let mut start = 0;
        for job in jobs {
            let end = start + job.units();
            let (lo, hi) = (range.start.max(start), range.end.min(end));
            if lo < hi {
                job.run(lo - start..hi - start);
            }
            start = end;
        }
    };
    split_over_workers(total, work);
}

/// Runs `work` over `0..total` in chunks taken by candle's CPU worker pool (the threads
/// candle's own kernels use), or on this thread when there is one item or none: every
/// parallel part of the CPU forward pass goes through here.
///
/// Each thread takes a share of what is left (half of it split over the threads, at
/// least one item), so chunks shrink as the work runs out and the threads finish
/// together: fixed sixteenths left the last thread up to a sixteenth of the dispatch
/// behind the other, waiting at the barrier, about 150 times per decode step.
pub(crate) fn split_over_workers(total: usize, work: impl Fn(std::ops::Range<usize>) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if total <= 1 {
        work(0..total);
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    let cursor = AtomicUsize::new(0);
    let take_shares = |_: std::ops::Range<usize>| {
        let mut start = cursor.load(Ordering::Relaxed);
        while start < total {
            let take = ((total - start) / (2 * threads)).max(1);
            match cursor.compare_exchange_weak(
                start,
                start + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    work(start..start + take);
                    start = cursor.load(Ordering::Relaxed);
                }
                Err(now) => start = now,
            }
        }
    };
    // One item per thread: each takes shares until none is left (run inline, all on
    // this thread, where the pool is already busy with the caller).
    pool.execute_chunked(threads, take_shares);
}

/// Combines a gate projection's output with the up projection's, column for column, in
/// place in the first (the gated feed-forward's activation).
pub type Combine<'a> = &'a (dyn Fn(&mut [f32], &[f32]) + Sync);

/// The gate and up projections of a gated feed-forward, run group by group by one worker,
/// which then combines those groups' columns while they are in its cache. The activation
/// (an `exp` and a division per value) was the largest piece of a decode step left on
/// one thread while the other workers waited.
struct GatedJob<'a> {
    gate: Job<'a>,
    up: Job<'a>,
    combine: Combine<'a>,
}

// SAFETY: as for `Job`: each worker combines only the columns of the groups it ran.
unsafe impl Sync for GatedJob<'_> {}

impl GatedJob<'_> {
    fn run(&self, units: std::ops::Range<usize>) {
        self.gate.run(units.clone());
        self.up.run(units.clone());
        let range = self.gate.groups_of(units);
        let n = self.gate.w.n;
        let (first, end) = (range.start * ROWS, (range.end * ROWS).min(n));
        for i in 0..self.gate.m {
            let at = i * n + first;
            // SAFETY: columns `first..end` of row `i` lie inside both `[m, n]`
            // destinations (checked by `Job::new`, which borrow them for the job's life);
            // they belong to groups `range`, which this worker alone ran and combines.
            let (gate, up) = unsafe {
                (
                    std::slice::from_raw_parts_mut(
                        (self.gate.dst as *mut f32).add(at),
                        end - first,
                    ),
                    std::slice::from_raw_parts((self.up.dst as *const f32).add(at), end - first),
                )
            };
            (self.combine)(gate, up);
        }
    }
}

impl QWeight {
    /// `gate = combine(acts · gateᵀ, acts · upᵀ)` column for column, `up` keeping the
    /// up projection, in one dispatch whose workers also run the combining.
    pub fn matmul_gated(
        gate: &QWeight,
        up: &QWeight,
        acts: &Activations,
        gate_dst: &mut [f32],
        up_dst: &mut [f32],
        combine: Combine<'_>,
    ) {
        assert_eq!(gate.n, up.n, "gate and up widths");
        let job = GatedJob {
            gate: Job::new(gate, acts, gate_dst),
            up: Job::new(up, acts, up_dst),
            combine,
        };
        split_over_workers(job.gate.units(), |r| job.run(r));
    }

    /// `dsts[i] = acts · ws[i]ᵀ` for several weights reading one input, in one dispatch.
    pub fn matmul_many<const N: usize>(
        ws: [&QWeight; N],
        acts: &Activations,
        dsts: [&mut [f32]; N],
    ) {
        let mut dsts = dsts.into_iter();
        let jobs = ws.map(|w| Job::new(w, acts, dsts.next().expect("one destination per weight")));
        dispatch(&jobs);
    }
}

impl CustomOp1 for &QWeight {
    fn name(&self) -> &'static str {
        "pathos-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            candle_core::bail!("qmatmul: input width {k}, weight takes {}", self.k)
        }
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("qmatmul: needs contiguous f32 input"),
        };
        let m = x.len() / k.max(1);
        let mut dst = vec![0f32; m * self.n];
        self.matmul(x, m, &mut dst);
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.n;
        }
        Ok((CpuStorage::F32(dst), Shape::from(out_dims)))
    }
}

/// A linear layer without bias: pathos's own kernels where they apply, candle's
/// otherwise.
pub enum Linear {
    Own(QWeight),
    Candle(QMatMul),
}

impl Linear {
    /// Wraps `t`, choosing pathos's kernels for the types and device they cover.
    pub fn new(t: QTensor, device: &Device) -> candle_core::Result<Self> {
        if device.is_cpu()
            && kernels() != Kernels::Candle
            && let Some(w) = QWeight::from_qtensor(&t)
        {
            return Ok(Self::Own(w));
        }
        Ok(Self::Candle(QMatMul::from_qtensor(t)?))
    }

    /// Wraps a tensor shared with another user (tied embeddings).
    pub fn shared(t: std::sync::Arc<QTensor>, device: &Device) -> candle_core::Result<Self> {
        if device.is_cpu()
            && kernels() != Kernels::Candle
            && let Some(w) = QWeight::from_qtensor(&t)
        {
            return Ok(Self::Own(w));
        }
        Ok(Self::Candle(QMatMul::from_arc(t)?))
    }

    /// `dst = x · Wᵀ` over host memory (`dst`: `[rows, n]`). candle's layers go
    /// through a tensor.
    pub fn forward_host(
        &self,
        input: &mut HostInput<'_>,
        dst: &mut [f32],
    ) -> candle_core::Result<()> {
        match self {
            Self::Own(w) => {
                let acts = input.activations();
                if acts.k != w.k {
                    candle_core::bail!("qmatmul: input width {}, weight takes {}", acts.k, w.k)
                }
                w.matmul_quantized(acts, dst);
            }
            Self::Candle(m) => {
                let rows = input.x.len() / input.k.max(1);
                let t = Tensor::from_slice(input.x, (rows, input.k), &Device::Cpu)?;
                let y = m.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
                if y.len() != dst.len() {
                    candle_core::bail!("qmatmul: {} outputs for {} places", y.len(), dst.len())
                }
                dst.copy_from_slice(&y);
            }
        }
        Ok(())
    }

    /// [`Self::forward_host`] for several layers reading one input: one dispatch over
    /// all their weights when pathos multiplies every one of them.
    pub fn forward_host_many<const N: usize>(
        layers: [&Linear; N],
        input: &mut HostInput<'_>,
        dsts: [&mut [f32]; N],
    ) -> candle_core::Result<()> {
        let own = layers.map(|l| match l {
            Self::Own(w) => Some(w),
            Self::Candle(_) => None,
        });
        if own.iter().any(Option::is_none) {
            for (l, d) in layers.into_iter().zip(dsts) {
                l.forward_host(input, d)?;
            }
            return Ok(());
        }
        let ws = own.map(|w| w.expect("checked above"));
        let acts = input.activations();
        if let Some(w) = ws.iter().find(|w| w.k != acts.k) {
            candle_core::bail!("qmatmul: input width {}, weight takes {}", acts.k, w.k)
        }
        for (w, d) in ws.iter().zip(&dsts) {
            if d.len() != acts.rows * w.n {
                candle_core::bail!(
                    "qmatmul: {} places for {} outputs",
                    d.len(),
                    acts.rows * w.n
                )
            }
        }
        QWeight::matmul_many(ws, acts, dsts);
        Ok(())
    }

    /// `gate_dst = combine(x · gateᵀ, x · upᵀ)` (`up_dst` keeps the up projection): the
    /// gated feed-forward's input to its down projection, combined by the workers that
    /// computed it when pathos multiplies both, after both otherwise.
    pub fn forward_host_gated(
        gate: &Linear,
        up: &Linear,
        input: &mut HostInput<'_>,
        gate_dst: &mut [f32],
        up_dst: &mut [f32],
        combine: Combine<'_>,
    ) -> candle_core::Result<()> {
        let (Self::Own(g), Self::Own(u)) = (gate, up) else {
            Self::forward_host_many([gate, up], input, [&mut *gate_dst, &mut *up_dst])?;
            combine(gate_dst, up_dst);
            return Ok(());
        };
        let acts = input.activations();
        for w in [g, u] {
            if w.k != acts.k {
                candle_core::bail!("qmatmul: input width {}, weight takes {}", acts.k, w.k)
            }
        }
        if g.n != u.n || gate_dst.len() != acts.rows * g.n || up_dst.len() != acts.rows * u.n {
            candle_core::bail!(
                "qmatmul: gate {} and up {} outputs for {} and {} places",
                acts.rows * g.n,
                acts.rows * u.n,
                gate_dst.len(),
                up_dst.len()
            )
        }
        QWeight::matmul_gated(g, u, acts, gate_dst, up_dst, combine);
        Ok(())
    }
}

/// A host-memory input (`[rows, k]`) several [`Linear`] layers read: quantized into a
/// reused buffer on first use, once for all of them.
pub struct HostInput<'a> {
    x: &'a [f32],
    k: usize,
    acts: &'a mut Activations,
    ready: bool,
}

impl<'a> HostInput<'a> {
    pub fn new(x: &'a [f32], k: usize, acts: &'a mut Activations) -> Self {
        Self {
            x,
            k,
            acts,
            ready: false,
        }
    }

    fn activations(&mut self) -> &Activations {
        if !self.ready {
            self.acts.quantize_from(self.x, self.k);
            self.ready = true;
        }
        self.acts
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Own(w) => x.contiguous()?.apply_op1_no_bwd(&w),
            Self::Candle(m) => m.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn reference(t: &QTensor, x: &Tensor) -> Vec<f32> {
        let w = t.dequantize(&Device::Cpu).unwrap();
        x.matmul(&w.t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Row `row`'s dot product with `a`, by the file's row-order scalar code.
    fn row_dot<G: Interleaved>(groups: &[G], row: usize, a: &[ActBlock]) -> f32 {
        let kb = a.len();
        let blocks: Vec<G::Block> = groups[(row / ROWS) * kb..(row / ROWS + 1) * kb]
            .iter()
            .map(|g| g.block(row % ROWS))
            .collect();
        G::Block::dot_scalar(&blocks, a)
    }

    fn check(dtype: GgmlDType) {
        let dev = Device::Cpu;
        let (n, k) = (37, 512);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let t = QTensor::quantize(&w, dtype).unwrap();
        let q = QWeight::from_qtensor(&t).expect("supported type");
        for m in [1usize, 2, 3, 4, 5, 7, 9, 16, 19] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let want = reference(&t, &x);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let mut got = vec![0f32; m * n];
            q.matmul(&xs, m, &mut got);
            let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
            for (g, w) in got.iter().zip(&want) {
                // Activations are quantized to 8 bits: errors of ~1% of the largest output.
                assert!((g - w).abs() <= 0.02 * scale, "{dtype:?} m={m}: {g} vs {w}");
            }
            // Scalar and SIMD kernels agree to float rounding.
            let mut acts = vec![ActBlock::ZERO; m * k / QK];
            for (r, o) in xs.chunks_exact(k).zip(acts.chunks_exact_mut(k / QK)) {
                blocks::quantize_row(r, o);
            }
            for i in 0..m {
                let a = &acts[i * k / QK..(i + 1) * k / QK];
                for row in 0..n {
                    let s = match &q.groups {
                        Groups::Q4_0(g) => row_dot(g, row, a),
                        Groups::Q4_1(g) => row_dot(g, row, a),
                        Groups::Q5_0(g) => row_dot(g, row, a),
                        Groups::Q8_0(g) => row_dot(g, row, a),
                        Groups::Q4K(g) => row_dot(g, row, a),
                        Groups::Q6K(g) => row_dot(g, row, a),
                    };
                    let g = got[i * n + row];
                    assert!(
                        (s - g).abs() <= 1e-4 * (1.0 + s.abs()),
                        "{dtype:?}: {s} vs {g}"
                    );
                }
            }
        }
    }

    #[test]
    fn gated_products_equal_the_two_products_combined() {
        // Enough groups that several workers take a share, and a ragged last group.
        let dev = Device::Cpu;
        let (n, k) = (8 * 40 + 3, 256);
        let quantized = |seed: f64| {
            let w = (Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap() * seed).unwrap();
            QWeight::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()).unwrap()
        };
        let (gate, up) = (quantized(1.0), quantized(0.5));
        let combine = |g: &mut [f32], u: &[f32]| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        };
        for m in [1usize, 4, 6] {
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let acts = Activations::quantize(&x, k);
            let (mut want_gate, mut want_up) = (vec![0f32; m * n], vec![0f32; m * n]);
            gate.matmul_quantized(&acts, &mut want_gate);
            up.matmul_quantized(&acts, &mut want_up);
            combine(&mut want_gate, &want_up);
            let (mut got_gate, mut got_up) = (vec![0f32; m * n], vec![0f32; m * n]);
            QWeight::matmul_gated(&gate, &up, &acts, &mut got_gate, &mut got_up, &combine);
            assert_eq!(got_up, want_up, "m={m}");
            assert_eq!(got_gate, want_gate, "m={m}");
        }
    }

    /// A batch large enough for the two-group kernels (where the build has them) gives
    /// each row exactly what that row alone gets from the one-group kernels: prompts
    /// and single-stream decoding agree to the bit.
    #[test]
    fn rows_multiplied_together_equal_each_row_alone_to_the_bit() {
        let dev = Device::Cpu;
        // Odd group count with a ragged last group: pairs, a lone group and padding.
        let (n, k) = (8 * 9 + 5, 256);
        for dtype in OWN_TYPES {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q = QWeight::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let m = WIDE_ROWS + 3;
            let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let mut together = vec![0f32; m * n];
            q.matmul(&x, m, &mut together);
            for (i, row) in x.chunks_exact(k).enumerate() {
                let mut alone = vec![0f32; n];
                q.matmul(row, 1, &mut alone);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&together[i * n..(i + 1) * n]),
                    bits(&alone),
                    "{dtype:?} row {i}"
                );
            }
        }
    }

    #[test]
    fn matmul_matches_dequantized_reference() {
        for dtype in OWN_TYPES {
            check(dtype);
        }
    }

    #[test]
    fn dequantize_matches_candle() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (19, 256), &dev).unwrap();
        for dtype in OWN_TYPES {
            let t = QTensor::quantize(&w, dtype).unwrap();
            let want: Vec<f32> = t
                .dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let q = QWeight::from_qtensor(&t).unwrap();
            let ids: Vec<u32> = (0..19).collect();
            let got: Vec<f32> = q
                .rows_of(&ids, &dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want, "{dtype:?}");
        }
    }

    #[test]
    fn the_listed_types_are_the_ones_regrouped() {
        use GgmlDType::*;
        for dtype in [
            F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2K, Q3K, Q4K, Q5K, Q6K, Q8K,
        ] {
            let (n, k) = (8, 256);
            let bytes = vec![0u8; n * k / dtype.block_size() * dtype.type_size()];
            assert_eq!(
                QWeight::from_bytes(dtype, &bytes, n, k).is_some(),
                OWN_TYPES.contains(&dtype),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn other_types_are_left_to_candle() {
        let w = Tensor::zeros((4, 256), DType::F32, &Device::Cpu).unwrap();
        let t = QTensor::quantize(&w, GgmlDType::Q5K).unwrap();
        assert!(QWeight::from_qtensor(&t).is_none());
    }
}
