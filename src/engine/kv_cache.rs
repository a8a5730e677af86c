//! The per-sequence key/value cache.
//!
//! [`KvCache`] is allocated once, at its full capacity, when a sequence starts; each step
//! writes the new keys and values in place and attention reads a view of the filled part.
//! Nothing grows by concatenation, so a step costs the same at position 10 and 4 000.
//! The weights are shared by every sequence; this is all a sequence owns.

use candle_core::{DType, Device, Tensor};

use super::error::{Error, Result};

/// Keys and values of every layer for one sequence: `[n_head_kv, capacity, head_dim]`.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    capacity: usize,
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
        let alloc = || Tensor::zeros((n_head_kv, capacity, head_dim), DType::F16, device);
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
        self.k[layer].slice_set(&k.to_dtype(DType::F16)?, 1, self.len)?;
        self.v[layer].slice_set(&v.to_dtype(DType::F16)?, 1, self.len)?;
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

    /// Bytes held by this cache.
    pub fn size_in_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}
