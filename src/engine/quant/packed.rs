//! Weight blocks regrouped eight rows at a time, the layout the kernels multiply.
//!
//! In the file a weight row's blocks follow one another, and a dot product of one row
//! with one activation row ends in a horizontal sum per block. Interleaving the blocks
//! of eight rows puts, in each 32-byte vector, four consecutive weights of each of the
//! eight rows: multiplied with the matching four activations broadcast to every lane,
//! the eight rows' sums build up side by side in the lanes of one register, and their
//! scales load as one vector. The kernels then spend about a third of the instructions
//! per weight block that a row-at-a-time product needs, and write eight outputs at once.
//!
//! For every type, vector `i` (0..8) of a group holds elements `4i..4i + 4` of each row:
//! byte `32i + 4r + k` (or nibble, see [`Q4_1x8`]) is element `4i + k` of row `r`.

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ8_0, WeightBlock};
use super::kquants::{BlockQ4K32, BlockQ6K32};
use super::pages::Pages;

/// Rows per group.
pub const ROWS: usize = 8;

/// Eight rows' blocks at one block index, interleaved.
pub trait Interleaved: Copy + Send + Sync + 'static {
    /// The file's block type.
    type Block: WeightBlock;
    /// Interleaves block `b` of eight rows.
    fn pack(rows: &[Self::Block; ROWS]) -> Self;
    /// Row `r`'s block, as the file stores it.
    fn block(&self, r: usize) -> Self::Block;
}

/// Interleaves eight rows of `N` bytes in four-byte runs: byte `32i + 4r + k` of the
/// result is row `r`'s byte `4i + k` (`M = 8N`). For the byte types that is vector `i`'s
/// layout directly; for 4-bit blocks, whose byte `j` holds element `j` (low nibble) and
/// `j + 16` (high nibble), the low nibbles of packed vector `p` are elements `4p..4p + 4`
/// and the high nibbles elements `16 + 4p..`, i.e. vector `p + 4`.
fn interleave<T: Copy + Default, const N: usize, const M: usize>(rows: [&[T; N]; ROWS]) -> [T; M] {
    debug_assert_eq!(M, N * ROWS);
    let mut out = [T::default(); M];
    for i in 0..N / 4 {
        for (r, row) in rows.iter().enumerate() {
            out[i * 32 + r * 4..i * 32 + r * 4 + 4].copy_from_slice(&row[4 * i..4 * i + 4]);
        }
    }
    out
}

/// Row `r` of an [`interleave`]d array.
fn deinterleave<T: Copy + Default, const N: usize, const M: usize>(q: &[T; M], r: usize) -> [T; N] {
    std::array::from_fn(|j| q[(j / 4) * 32 + r * 4 + j % 4])
}

/// Eight [`BlockQ4_0`]s.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_0x8 {
    pub qs: [u8; 128],
    pub d: [u16; ROWS],
}

/// Eight [`BlockQ4_1`]s.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4_1x8 {
    pub qs: [u8; 128],
    pub d: [u16; ROWS],
    pub m: [u16; ROWS],
}

/// Eight [`BlockQ5_0`]s. `qh[i]` bit `4r + k` is the fifth bit of row `r`'s element
/// `4i + k`, lined up with the bytes of vector `i`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q5_0x8 {
    pub qs: [u8; 128],
    pub qh: [u32; ROWS],
    pub d: [u16; ROWS],
}

/// Eight [`BlockQ8_0`]s.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q8_0x8 {
    pub qs: [i8; 256],
    pub d: [u16; ROWS],
}

impl Interleaved for Q4_0x8 {
    type Block = BlockQ4_0;
    fn pack(rows: &[BlockQ4_0; ROWS]) -> Self {
        Self {
            qs: interleave(std::array::from_fn(|r| &rows[r].qs)),
            d: rows.map(|b| b.d),
        }
    }
    fn block(&self, r: usize) -> BlockQ4_0 {
        BlockQ4_0 {
            d: self.d[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

impl Interleaved for Q4_1x8 {
    type Block = BlockQ4_1;
    fn pack(rows: &[BlockQ4_1; ROWS]) -> Self {
        Self {
            qs: interleave(std::array::from_fn(|r| &rows[r].qs)),
            d: rows.map(|b| b.d),
            m: rows.map(|b| b.m),
        }
    }
    fn block(&self, r: usize) -> BlockQ4_1 {
        BlockQ4_1 {
            d: self.d[r],
            m: self.m[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

impl Interleaved for Q5_0x8 {
    type Block = BlockQ5_0;
    fn pack(rows: &[BlockQ5_0; ROWS]) -> Self {
        // Bits 4i..4i + 4 of each row's fifth bits go to nibble r of `qh[i]`.
        let mut qh = [0u32; ROWS];
        for (r, b) in rows.iter().enumerate() {
            let bits = u32::from_le_bytes(b.qh);
            for (i, q) in qh.iter_mut().enumerate() {
                *q |= ((bits >> (4 * i)) & 0xF) << (4 * r);
            }
        }
        Self {
            qs: interleave(std::array::from_fn(|r| &rows[r].qs)),
            qh,
            d: rows.map(|b| b.d),
        }
    }
    fn block(&self, r: usize) -> BlockQ5_0 {
        let mut bits = 0u32;
        for j in 0..32 {
            bits |= ((self.qh[j / 4] >> (r * 4 + j % 4)) & 1) << j;
        }
        BlockQ5_0 {
            d: self.d[r],
            qh: bits.to_le_bytes(),
            qs: deinterleave(&self.qs, r),
        }
    }
}

impl Interleaved for Q8_0x8 {
    type Block = BlockQ8_0;
    fn pack(rows: &[BlockQ8_0; ROWS]) -> Self {
        Self {
            qs: interleave(std::array::from_fn(|r| &rows[r].qs)),
            d: rows.map(|b| b.d),
        }
    }
    fn block(&self, r: usize) -> BlockQ8_0 {
        BlockQ8_0 {
            d: self.d[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

/// Eight [`BlockQ4K32`]s (Q4_K slices): nibbles as [`Q4_1x8`], scales in `f32`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q4Kx8 {
    pub qs: [u8; 128],
    pub d: [f32; ROWS],
    pub m: [f32; ROWS],
}

/// Eight [`BlockQ6K32`]s (Q6_K slices). The low four bits of each 6-bit value are
/// nibbles laid out as [`Q4_1x8`]'s; `qh` holds the top two bits, 32 bytes for vectors
/// 0..4 and 32 for 4..8: vector `4j + k`'s byte `p` has its two bits in byte `p` of half
/// `j`, at bits 4..6, 6..8, 0..2, 2..4 for `k` = 0..4, so that a shift by 0, 2 right, 4
/// left, 2 left and a mask place them at 0x30. `sc[h][r]` scales half `h` (elements
/// `16h..16h + 16`) of row `r`, times `d[r]`. 224 bytes for 256 weights, against 320
/// with a byte per value and the scales multiplied out in `f32`: the bytes one
/// stream's decode reads are what bounds it.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Q6Kx8 {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub d: [u16; ROWS],
    pub sc: [[i8; ROWS]; 2],
}

/// Where vector `k` (0..4) of a [`Q6Kx8`] half keeps its two high bits in a byte.
pub const Q6K_HIGH_SHIFT: [u32; 4] = [4, 6, 0, 2];

impl Interleaved for Q4Kx8 {
    type Block = BlockQ4K32;
    fn pack(rows: &[BlockQ4K32; ROWS]) -> Self {
        Self {
            qs: interleave(std::array::from_fn(|r| &rows[r].qs)),
            d: rows.map(|b| b.d),
            m: rows.map(|b| b.m),
        }
    }
    fn block(&self, r: usize) -> BlockQ4K32 {
        BlockQ4K32 {
            d: self.d[r],
            m: self.m[r],
            qs: deinterleave(&self.qs, r),
        }
    }
}

impl Interleaved for Q6Kx8 {
    type Block = BlockQ6K32;
    fn pack(rows: &[BlockQ6K32; ROWS]) -> Self {
        // Nibble bytes as Q4_1's (byte j: element j low, j + 16 high), interleaved alike.
        let nibbles: [[u8; 16]; ROWS] = std::array::from_fn(|r| {
            std::array::from_fn(|j| (rows[r].q[j] & 0xf) | ((rows[r].q[j + 16] & 0xf) << 4))
        });
        let q: [u8; 256] = interleave(std::array::from_fn(|r| &rows[r].q));
        let mut qh = [0u8; 64];
        for (i, v) in q.chunks_exact(32).enumerate() {
            for (p, &x) in v.iter().enumerate() {
                qh[32 * (i / 4) + p] |= (x >> 4) << Q6K_HIGH_SHIFT[i % 4];
            }
        }
        Self {
            ql: interleave(std::array::from_fn(|r| &nibbles[r])),
            qh,
            d: rows.map(|b| b.d),
            sc: [rows.map(|b| b.sc[0]), rows.map(|b| b.sc[1])],
        }
    }
    fn block(&self, r: usize) -> BlockQ6K32 {
        let nibbles: [u8; 16] = deinterleave(&self.ql, r);
        BlockQ6K32 {
            d: self.d[r],
            sc: [self.sc[0][r], self.sc[1][r]],
            q: std::array::from_fn(|e| {
                let low = if e < 16 {
                    nibbles[e] & 0xf
                } else {
                    nibbles[e - 16] >> 4
                };
                // Element e of row r sits in vector e / 4 at byte 4r + e % 4.
                let (i, p) = (e / 4, 4 * r + e % 4);
                let high = (self.qh[32 * (i / 4) + p] >> Q6K_HIGH_SHIFT[i % 4]) & 3;
                low | (high << 4)
            }),
        }
    }
}

/// Groups `n` rows × `kb` blocks, `block(row, b)` giving each, into groups of eight
/// rows: group `g`'s block `b` is element `g * kb + b`. Rows past `n` in the last group
/// are zero blocks (their outputs are never written).
///
/// `done` is told, in runs of [`DONE_GROUPS`] groups, which rows have been read for the
/// last time (rows past `n` left out), so that the source can let them go.
fn group_rows<G: Interleaved>(
    n: usize,
    kb: usize,
    block: impl Fn(usize, usize) -> G::Block + Sync,
    done: Done<'_>,
) -> Pages<G> {
    if kb == 0 {
        // No blocks to write (and no chunks of `kb` slots to cut).
        return Pages::build(0, |_| {});
    }
    let groups = n.div_ceil(ROWS);
    // Group by group, block by block: no division per slot to find its row and block.
    let fill = |first: usize, dst: &mut [std::mem::MaybeUninit<G>]| {
        let mut from = first * ROWS;
        let count = dst.len() / kb;
        for (j, group) in dst.chunks_exact_mut(kb).enumerate() {
            let rows0 = (first + j) * ROWS;
            if j > 0 && j % DONE_GROUPS == 0 {
                done(from.min(n)..rows0.min(n));
                from = rows0;
            }
            for (b, slot) in group.iter_mut().enumerate() {
                let rows = std::array::from_fn(|r| {
                    if rows0 + r < n {
                        block(rows0 + r, b)
                    } else {
                        <G::Block as WeightBlock>::ZERO
                    }
                });
                slot.write(G::pack(&rows));
            }
        }
        let end = ((first + count) * ROWS).min(n);
        if from < end {
            done(from..end);
        }
    };
    // Every one of the `groups * kb` slots is written: by one pass, or by two halves.
    Pages::build(groups * kb, |spare| {
        // Large tables (an embedding of tens of MB) are regrouped by two threads: start-up
        // time is a target, and this is most of it for a model with a large vocabulary.
        if groups * kb * std::mem::size_of::<G>() >= 8 << 20 {
            let half = groups / 2;
            let (front, back) = spare.split_at_mut(half * kb);
            std::thread::scope(|s| {
                s.spawn(|| fill(half, back));
                fill(0, front);
            });
        } else {
            fill(0, spare);
        }
    })
}

/// Rows `group_rows` has read for the last time.
type Done<'a> = &'a (dyn Fn(std::ops::Range<usize>) + Sync);

/// Groups between two [`Done`] reports: 512 rows, ~350 KB of a Gemma 3 embedding.
const DONE_GROUPS: usize = 64;

/// Groups a matrix stored as in the file (`bytes`: `n` rows × `kb` blocks). `None`
/// when the byte count does not match. `release` is handed the source's bytes in runs,
/// each once it has been read for the last time: a source mapped from the file can drop
/// those pages as the regrouping goes, so a large table (Gemma 3's 178 MB embedding)
/// is never resident twice.
pub fn pack_matrix<G: Interleaved>(
    bytes: &[u8],
    n: usize,
    kb: usize,
    release: &(dyn Fn(&[u8]) + Sync),
) -> Option<Pages<G>> {
    let size = <G::Block as WeightBlock>::BYTES;
    if std::mem::size_of::<G::Block>() != size || bytes.len() != n.checked_mul(kb)? * size {
        return None;
    }
    let row_bytes = kb * size;
    let done = |rows: std::ops::Range<usize>| {
        release(&bytes[rows.start * row_bytes..rows.end * row_bytes]);
    };
    let block = |row: usize, b: usize| {
        let at = &bytes[(row * kb + b) * size..(row * kb + b + 1) * size];
        // SAFETY: `at` holds `size_of::<G::Block>()` bytes (checked above); the block
        // types are `repr(C)` structs of integers, valid for any bytes; the read is
        // unaligned because the file gives no alignment.
        unsafe { std::ptr::read_unaligned(at.as_ptr() as *const G::Block) }
    };
    Some(group_rows(n, kb, block, &done))
}

/// Groups a matrix already split into blocks (`blocks`: `n` rows × `kb`, row order).
pub fn pack_blocks<G: Interleaved>(blocks: &[G::Block], n: usize, kb: usize) -> Pages<G>
where
    G::Block: Sync,
{
    debug_assert_eq!(blocks.len(), n * kb);
    group_rows(n, kb, |row, b| blocks[row * kb + b], &|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// `valid` maps a block's raw byte at offset `i` to one the type can hold.
    fn roundtrip<G: Interleaved>(valid: fn(usize, u8) -> u8)
    where
        G::Block: std::fmt::Debug,
    {
        let size = <G::Block as WeightBlock>::BYTES;
        let (n, kb) = (11, 3);
        let raw: Vec<u8> = bytes(n * kb * size, 5)
            .into_iter()
            .enumerate()
            .map(|(i, x)| valid(i % size, x))
            .collect();
        let packed: Pages<G> = pack_matrix(&raw, n, kb, &|_| {}).expect("sizes match");
        assert_eq!(packed.len(), 2 * kb);
        for row in 0..n {
            for b in 0..kb {
                let got = packed[(row / ROWS) * kb + b].block(row % ROWS);
                // SAFETY: a block is `size` bytes of plain integers.
                let got: &[u8] = unsafe {
                    std::slice::from_raw_parts(&got as *const G::Block as *const u8, size)
                };
                assert_eq!(got, &raw[(row * kb + b) * size..(row * kb + b + 1) * size]);
            }
        }
        assert!(pack_matrix::<G>(&raw[1..], n, kb, &|_| {}).is_none());
    }

    #[test]
    fn packing_keeps_every_block() {
        let any = |_, x| x;
        roundtrip::<Q4_0x8>(any);
        roundtrip::<Q4_1x8>(any);
        roundtrip::<Q5_0x8>(any);
        roundtrip::<Q8_0x8>(any);
        roundtrip::<Q4Kx8>(any);
        // Q6_K values are six bits; they follow the scale (2 bytes) and sub-scales (2).
        roundtrip::<Q6Kx8>(|i, x| if i >= 4 { x & 63 } else { x });
    }

    /// A matrix without columns packs to nothing instead of failing.
    #[test]
    fn a_matrix_without_columns_packs_to_nothing() {
        let packed: Pages<Q8_0x8> = pack_matrix(&[], 5, 0, &|_| {}).expect("sizes match");
        assert!(packed.is_empty());
    }

    /// Every source byte is released exactly once, in order within each of the two
    /// halves a large table is split into, and only rows that exist.
    #[test]
    fn the_source_is_released_once_in_runs() {
        // Over 8 MiB packed, so two threads fill it; a ragged last group.
        let (n, kb) = (8 * 3000 + 5, 12);
        let size = <BlockQ8_0 as WeightBlock>::BYTES;
        let raw = bytes(n * kb * size, 1);
        let runs = std::sync::Mutex::new(Vec::new());
        let base = raw.as_ptr() as usize;
        let release = |b: &[u8]| {
            let start = b.as_ptr() as usize - base;
            runs.lock().unwrap().push(start..start + b.len());
        };
        let packed: Pages<Q8_0x8> = pack_matrix(&raw, n, kb, &release).expect("sizes match");
        assert_eq!(packed.len(), n.div_ceil(ROWS) * kb);
        let mut runs = runs.into_inner().unwrap();
        assert!(runs.len() > 2, "released in runs, not at the end");
        runs.sort_by_key(|r| r.start);
        assert_eq!(runs[0].start, 0);
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start, "no gap, no overlap");
        }
        assert_eq!(runs.last().unwrap().end, raw.len());
    }
}
