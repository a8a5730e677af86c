//! Storage for packed weights on 2 MiB pages.
//!
//! A model's packed weights are a few hundred tensors, most far smaller than 2 MiB
//! (a SmolLM2 projection is 0.2-0.6 MB). Allocated one by one they land on 4 KiB
//! pages: a decode step that streams ~100 MB of them crosses ~25 000 pages, far more
//! than the TLB maps, so each page costs a table walk and the hardware prefetchers
//! start over at each page's end. Carved out of shared regions aligned to 2 MiB and
//! advised for transparent huge pages, the same tensors sit on ~50 pages.
//!
//! A region is reserved as address space only: pages become memory as tensors are
//! written into them. Tensors hold their region alive; the region is unmapped when the
//! last of them goes, and the open region is filled again from its start once no tensor
//! uses it any more (a model loaded after another reuses its pages).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

/// Size and alignment of a huge page.
const HUGE: usize = 2 << 20;
/// Address space reserved per shared region.
const REGION: usize = 32 << 20;
/// Alignment of each tensor inside a region: a cache line.
const LINE: usize = 64;

/// One anonymous mapping, unmapped on drop.
struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; the tensors carved from it
// are disjoint and each written once, by the thread that allocates it, before sharing.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// A mapping of `len` bytes (a multiple of [`HUGE`]) starting on a 2 MiB boundary,
    /// advised for huge pages. `None` when the system refuses it.
    #[cfg(target_os = "linux")]
    fn map(len: usize) -> Option<Self> {
        // Over-reserve by one huge page to align, then give back the ends.
        let span = len + HUGE;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let base = start.next_multiple_of(HUGE);
        // SAFETY: both ranges lie inside the mapping just made and are not used again;
        // MADV_HUGEPAGE only changes how the kept range is backed.
        unsafe {
            if base > start {
                libc::munmap(raw, base - start);
            }
            let end = base + len;
            if start + span > end {
                libc::munmap(end as *mut libc::c_void, start + span - end);
            }
            libc::madvise(base as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some(Self {
            base: base as *mut u8,
            len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_: usize) -> Option<Self> {
        None
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: `base..base + len` is this value's mapping, no longer referenced (every
        // tensor carved from it held an `Arc` to this region).
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// A region tensors are carved from, and how much of it is taken.
type Open = Mutex<Option<(Arc<Region>, usize)>>;

/// The process's open region.
static OPEN: Open = Mutex::new(None);

/// `bytes` of a region: a place in the open one, or a region of its own for a tensor
/// larger than half of one. `None` when no mapping can be made.
fn carve(open: &Open, bytes: usize) -> Option<(Arc<Region>, *mut u8)> {
    if bytes > REGION / 2 {
        let region = Arc::new(Region::map(bytes.next_multiple_of(HUGE))?);
        let at = region.base;
        return Some((region, at));
    }
    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((region, used)) = open.as_mut() {
        if Arc::strong_count(region) == 1 {
            // No tensor lives in it any more: start again from the top.
            *used = 0;
        }
        if *used + bytes <= region.len {
            // SAFETY: `used + bytes` is within the region's length.
            let at = unsafe { region.base.add(*used) };
            *used = (*used + bytes).next_multiple_of(LINE);
            return Some((region.clone(), at));
        }
    }
    let region = Arc::new(Region::map(REGION)?);
    let at = region.base;
    *open = Some((region.clone(), bytes.next_multiple_of(LINE)));
    Some((region, at))
}

/// A fixed-length array of plain values (the packed weight groups), on huge pages where
/// the system gives them, else on the heap.
pub struct Pages<T> {
    ptr: *const T,
    len: usize,
    /// What owns the memory: kept only to be dropped.
    _owner: Owner<T>,
}

enum Owner<T> {
    Region(#[allow(dead_code)] Arc<Region>),
    Heap(#[allow(dead_code)] Vec<T>),
}

// SAFETY: `Pages` owns its values (through the region or the vector) and hands out only
// shared references to them once built.
unsafe impl<T: Send + Sync> Send for Pages<T> {}
unsafe impl<T: Send + Sync> Sync for Pages<T> {}

impl<T: Copy> Pages<T> {
    /// `len` values written by `fill`, which must initialize every slot it is given.
    pub fn build(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Self {
        Self::build_in(&OPEN, len, fill)
    }

    fn build_in(open: &Open, len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        let aligned = std::mem::align_of::<T>() <= LINE;
        if let Some((region, at)) = (bytes > 0 && aligned).then(|| carve(open, bytes)).flatten() {
            let slots = at as *mut MaybeUninit<T>;
            // SAFETY: `at` is `bytes` bytes of this process's writable mapping, aligned
            // to a cache line (≥ T's alignment, checked), handed out to this tensor only.
            fill(unsafe { std::slice::from_raw_parts_mut(slots, len) });
            return Self {
                ptr: slots as *const T,
                len,
                _owner: Owner::Region(region),
            };
        }
        let mut v: Vec<T> = Vec::with_capacity(len);
        fill(&mut v.spare_capacity_mut()[..len]);
        // SAFETY: `fill` initialized the first `len` slots; the capacity is `len`.
        unsafe { v.set_len(len) };
        Self {
            ptr: v.as_ptr(),
            len,
            _owner: Owner::Heap(v),
        }
    }
}

impl<T> std::ops::Deref for Pages<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points at `len` initialized values owned by `_owner`, which
        // lives as long as `self` (a vector's buffer does not move when it is moved).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(open: &Open, len: usize, seed: u32) -> Pages<u32> {
        Pages::build_in(open, len, |s| {
            for (i, v) in s.iter_mut().enumerate() {
                v.write(seed.wrapping_mul(i as u32 + 1));
            }
        })
    }

    fn holds(p: &Pages<u32>, len: usize, seed: u32) -> bool {
        p.len() == len
            && (p.as_ptr() as usize).is_multiple_of(LINE)
            && p.iter()
                .enumerate()
                .all(|(i, &v)| v == seed.wrapping_mul(i as u32 + 1))
    }

    #[test]
    fn tensors_keep_their_values_and_share_aligned_regions() {
        let open = Open::new(None);
        let a = make(&open, 1000, 3);
        let b = make(&open, 70_000, 5);
        let big = make(&open, REGION / 4 + 1, 7);
        assert!(holds(&a, 1000, 3));
        assert!(holds(&b, 70_000, 5));
        assert!(holds(&big, REGION / 4 + 1, 7));
        assert!(make(&open, 0, 9).is_empty());
        #[cfg(target_os = "linux")]
        {
            // The two small tensors follow each other from the start of one region; the
            // large one has its own, on a huge-page boundary.
            assert!((a.as_ptr() as usize).is_multiple_of(HUGE));
            let gap = b.as_ptr() as usize - a.as_ptr() as usize;
            assert_eq!(gap, (1000 * 4usize).next_multiple_of(LINE));
            assert!((big.as_ptr() as usize).is_multiple_of(HUGE));
            // Once no tensor uses the open region, the next one starts at its top again.
            let top = a.as_ptr();
            drop((a, b));
            let c = make(&open, 500, 11);
            assert_eq!(c.as_ptr(), top);
            assert!(holds(&c, 500, 11));
            // A tensor that does not fit what is left opens a new region.
            let d = make(&open, REGION / 8, 13);
            let e = make(&open, REGION / 8, 17);
            assert!(holds(&d, REGION / 8, 13) && holds(&e, REGION / 8, 17));
            assert!((e.as_ptr() as usize).is_multiple_of(HUGE));
            assert!(holds(&c, 500, 11));
        }
    }
}
