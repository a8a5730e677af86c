//! The per-sequence key/value cache.
//!
//! [`KvCache`] is allocated once, at its full capacity, when a sequence starts; each step
//! writes the new keys and values in place and attention reads a view of the filled part.
//! Nothing grows by concatenation, so a step costs the same at position 10 and 4 000.
//! The weights are shared by every sequence; this is all a sequence owns.

use candle_core::{DType, Device, Tensor};

use super::error::{Error, Result};

/// Keys and values of every layer for one sequence: `[n_head_kv, capacity, head_dim]`.
///
/// On the CPU the cache holds f32, which attention reads in place: converting an f16
/// cache back to f32 at every step cost 15% of a decode step. The allocation is zeroed
/// memory the system maps lazily, so only the positions written take up RAM. Other
/// devices keep f16 and convert on the device.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
    dtype: DType,
}

/// Makes the C allocator give every allocation of 1 MiB or more fresh pages from the
/// system, which are zero without being written and take RAM only once touched.
///
/// glibc otherwise raises that threshold after the first large free (a prompt's
/// attention scores), and from then on serves a new cache from recycled heap memory it
/// must clear by writing every byte: a 4 096-position cache then takes all its RAM at
/// once (190 MiB for SmolLM2) however few positions a sequence uses.
fn lazy_zero_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator tuning; a fixed threshold is valid at
        // any time and affects allocations made after it.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        });
    }
}

impl KvCache {
    /// A cache for `capacity` positions.
    pub fn new(
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Result<Self> {
        let dtype = if device.is_cpu() {
            lazy_zero_pages();
            DType::F32
        } else {
            DType::F16
        };
        let alloc = || Tensor::zeros((n_head_kv, capacity, head_dim), dtype, device);
        let mut k = Vec::with_capacity(n_layer);
        let mut v = Vec::with_capacity(n_layer);
        for _ in 0..n_layer {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(Self {
            k,
            v,
            len: 0,
            capacity,
            dtype,
        })
    }

    /// Positions filled so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets everything after `len` positions (to roll back or to reset).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Checks that `n` more positions fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.capacity {
            return Err(Error::ContextOverflow {
                prompt_tokens: self.len + n,
                context: self.capacity,
                max_tokens: 0,
            });
        }
        Ok(())
    }

    /// Writes layer `layer`'s new keys and values (`[n_head_kv, t, head_dim]`) at the
    /// current position and returns views of all keys and values so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        self.k[layer].slice_set(&k.to_dtype(self.dtype)?, 1, self.len)?;
        self.v[layer].slice_set(&v.to_dtype(self.dtype)?, 1, self.len)?;
        let n = self.len + t;
        Ok((
            self.k[layer].narrow(1, 0, n)?.to_dtype(DType::F32)?,
            self.v[layer].narrow(1, 0, n)?.to_dtype(DType::F32)?,
        ))
    }

    /// Marks `t` positions as filled, once every layer has appended them.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Makes this cache hold the first `n` positions of `other` (a prompt prefix another
    /// sequence has already computed: copying it costs a memcpy, computing it a forward
    /// pass).
    pub fn copy_prefix(&mut self, other: &KvCache, n: usize) -> Result<()> {
        let n = n.min(other.len);
        if n > self.capacity || self.k.len() != other.k.len() {
            return Err(Error::ContextOverflow {
                prompt_tokens: n,
                context: self.capacity,
                max_tokens: 0,
            });
        }
        if n > 0 {
            for (dst, src) in self
                .k
                .iter()
                .zip(&other.k)
                .chain(self.v.iter().zip(&other.v))
            {
                dst.slice_set(&src.narrow(1, 0, n)?.contiguous()?, 1, 0)?;
            }
        }
        self.len = n;
        Ok(())
    }

    /// Bytes the filled positions take (what a sequence of this length costs in RAM,
    /// since untouched positions are never mapped on the CPU).
    pub fn used_bytes(&self) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        self.size_in_bytes() / self.capacity * self.len
    }

    /// Bytes held by this cache.
    pub fn size_in_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}
