//! The per-sequence key/value cache.
//!
//! [`KvCache`] is allocated once, at its full capacity, when a sequence starts; each step
//! writes the new keys and values in place and attention reads a view of the filled part.
//! Nothing grows by concatenation, so a step costs the same at position 10 and 4 000.
//! The weights are shared by every sequence; this is all a sequence owns.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::error::{Error, Result};
use super::steering::Steering;

/// Keys and values of every layer for one sequence: `[n_head_kv, capacity, head_dim]`.
///
/// On the CPU the cache is plain buffers of f16 values (as bits) that attention reads in
/// place, converting 32 positions at a time into L1 as it goes: a decode step reads every
/// cached position once per layer, and at f32 those reads were the largest part of the
/// attention time of four agents. f16 halves them and the cache's RAM. (Converting a
/// whole f16 tensor cache back to f32 at every step, as the tensor path does, cost 15%
/// of a step.) The allocation is zeroed memory the system maps lazily, so only the
/// positions written take up RAM. Other devices keep f16 tensors and convert there.
pub struct KvCache {
    store: Store,
    /// The steering the cached positions were computed under.
    steering: Option<Arc<Steering>>,
    len: usize,
    capacity: usize,
    n_head_kv: usize,
    head_dim: usize,
}

enum Store {
    Host { k: Vec<Vec<u16>>, v: Vec<Vec<u16>> },
    Device { k: Vec<Tensor>, v: Vec<Tensor> },
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
        if !device.is_cpu() {
            return Self::new_tensor_store(n_layer, n_head_kv, head_dim, capacity, device);
        }
        lazy_zero_pages();
        // u16 (f16 bits), not `half::f16`: a zeroed vector of integers is calloc'd.
        let alloc = || vec![0u16; n_head_kv * capacity * head_dim];
        let store = Store::Host {
            k: (0..n_layer).map(|_| alloc()).collect(),
            v: (0..n_layer).map(|_| alloc()).collect(),
        };
        Ok(Self::with_store(store, capacity, n_head_kv, head_dim))
    }

    /// A cache in the form GPU devices use (f16 tensors) wherever `device` is, so the
    /// tensor forward pass can be checked against the host one on a machine without a
    /// GPU. Not for generation on the CPU: it is slower there.
    #[doc(hidden)]
    pub fn new_tensor_store(
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Result<Self> {
        let alloc = || Tensor::zeros((n_head_kv, capacity, head_dim), DType::F16, device);
        let store = Store::Device {
            k: (0..n_layer)
                .map(|_| alloc())
                .collect::<candle_core::Result<_>>()?,
            v: (0..n_layer)
                .map(|_| alloc())
                .collect::<candle_core::Result<_>>()?,
        };
        Ok(Self::with_store(store, capacity, n_head_kv, head_dim))
    }

    fn with_store(store: Store, capacity: usize, n_head_kv: usize, head_dim: usize) -> Self {
        Self {
            store,
            steering: None,
            len: 0,
            capacity,
            n_head_kv,
            head_dim,
        }
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

    /// The steering this sequence runs under.
    pub fn steering(&self) -> Option<&Steering> {
        self.steering.as_deref()
    }

    /// Makes the sequence run under `steering` from now on. A different steering than
    /// the cached positions were computed under empties the cache: those keys and
    /// values belong to another model, in effect.
    pub fn set_steering(&mut self, steering: Option<Arc<Steering>>) {
        if !Steering::same(self.steering(), steering.as_deref()) {
            self.len = 0;
        }
        self.steering = steering;
    }

    /// Whether the cache is plain memory that [`Self::write_host`] and
    /// [`Self::host_layer`] reach (the CPU).
    pub fn is_host(&self) -> bool {
        matches!(self.store, Store::Host { .. })
    }

    /// Writes one position's keys and values of `layer` (`[n_head_kv * head_dim]` each)
    /// at `pos`. Host caches only; `pos` must be below the capacity.
    pub fn write_host(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (cap, d) = (self.capacity, self.head_dim);
        if let Store::Host { k: ks, v: vs } = &mut self.store {
            for (dst, src) in [(&mut ks[layer], k), (&mut vs[layer], v)] {
                for (g, head) in src.chunks_exact(d).enumerate() {
                    let at = (g * cap + pos) * d;
                    dst[at..at + d]
                        .reinterpret_cast_mut::<half::f16>()
                        .convert_from_f32_slice(head);
                }
            }
        }
    }

    /// Keys and values of `layer`, `[n_head_kv, capacity, head_dim]`, as f16 bits (host
    /// caches).
    pub fn host_layer(&self, layer: usize) -> Option<(&[u16], &[u16])> {
        match &self.store {
            Store::Host { k, v } => Some((&k[layer], &v[layer])),
            Store::Device { .. } => None,
        }
    }

    /// Writes layer `layer`'s new keys and values (`[n_head_kv, t, head_dim]`) at the
    /// current position and returns all keys and values so far as f32 tensors (device
    /// caches; the CPU path uses [`Self::write_host`] and [`Self::host_layer`]).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(1)?;
        let n = self.len + t;
        match &mut self.store {
            Store::Device { k: ks, v: vs } => {
                ks[layer].slice_set(&k.to_dtype(DType::F16)?, 1, self.len)?;
                vs[layer].slice_set(&v.to_dtype(DType::F16)?, 1, self.len)?;
                Ok((
                    ks[layer].narrow(1, 0, n)?.to_dtype(DType::F32)?,
                    vs[layer].narrow(1, 0, n)?.to_dtype(DType::F32)?,
                ))
            }
            // The CPU path writes with `write_host` and reads with `host_layer`.
            Store::Host { .. } => Err(candle_core::Error::Msg(
                "host caches are written with write_host, not append".into(),
            )
            .into()),
        }
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
        let mismatch = || Error::ContextOverflow {
            prompt_tokens: n,
            context: self.capacity,
            max_tokens: 0,
        };
        if n > self.capacity || self.n_head_kv != other.n_head_kv || self.head_dim != other.head_dim
        {
            return Err(mismatch());
        }
        let d = self.head_dim;
        match (&mut self.store, &other.store) {
            (Store::Host { k, v }, Store::Host { k: ok, v: ov }) if k.len() == ok.len() => {
                for (dst, src) in k.iter_mut().zip(ok).chain(v.iter_mut().zip(ov)) {
                    for g in 0..self.n_head_kv {
                        let (a, b) = (g * self.capacity * d, g * other.capacity * d);
                        dst[a..a + n * d].copy_from_slice(&src[b..b + n * d]);
                    }
                }
            }
            (Store::Device { k, v }, Store::Device { k: ok, v: ov }) if k.len() == ok.len() => {
                if n > 0 {
                    for (dst, src) in k.iter().zip(ok).chain(v.iter().zip(ov)) {
                        dst.slice_set(&src.narrow(1, 0, n)?.contiguous()?, 1, 0)?;
                    }
                }
            }
            _ => return Err(mismatch()),
        }
        self.steering = other.steering.clone();
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
        match &self.store {
            Store::Host { k, v } => k.iter().chain(v).map(|b| b.len() * 2).sum(),
            Store::Device { k, v } => k
                .iter()
                .chain(v)
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum(),
        }
    }
}
