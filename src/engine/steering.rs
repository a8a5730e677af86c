//! Activation steering: vectors added to the residual stream after chosen layers.
//!
//! A [`Steering`] is the sum of scaled per-layer directions (one control vector per
//! emotion spectrum, each with its scale), ready to add. It belongs to a sequence: the
//! keys and values a steered sequence caches differ from an unsteered one's, so a cache
//! filled under one steering is never reused under another (see
//! [`crate::engine::kv_cache::KvCache::set_steering`]).

use std::hash::{Hash, Hasher};

use candle_core::{Device, Tensor};

use super::error::{Error, Result};

/// Per-layer additions, `[n_embd]` each, indexed by layer (the vector is added to the
/// output of that layer, as llama.cpp's `direction.N` is).
pub struct Steering {
    layers: Vec<Option<Tensor>>,
    /// The same vectors as plain values, for the CPU forward pass.
    host: Vec<Option<Vec<f32>>>,
    key: u64,
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steered: Vec<usize> = (0..self.layers.len())
            .filter(|&i| self.layers[i].is_some())
            .collect();
        f.debug_struct("Steering")
            .field("layers", &steered)
            .field("key", &self.key)
            .finish()
    }
}

impl Steering {
    /// Σ scale · direction over `parts`, for a model of `n_layer` layers and width
    /// `n_embd`. Each part's directions are indexed by layer (`None`: not steered).
    /// Returns `None` when nothing is added (no parts, or every scale 0), so a zero
    /// steering runs exactly the unsteered model.
    pub fn combine(
        n_layer: usize,
        n_embd: usize,
        parts: &[(&[Option<Vec<f32>>], f32)],
        device: &Device,
    ) -> Result<Option<Self>> {
        let mut sums: Vec<Option<Vec<f32>>> = vec![None; n_layer];
        for (dirs, scale) in parts {
            if *scale == 0.0 {
                continue;
            }
            if dirs.len() > n_layer {
                return Err(Error::Steering(format!(
                    "the vector has directions for {} layers; the model has {n_layer}",
                    dirs.len()
                )));
            }
            for (layer, dir) in dirs.iter().enumerate() {
                let Some(dir) = dir else { continue };
                if dir.len() != n_embd {
                    return Err(Error::Steering(format!(
                        "the vector is {} wide; the model's hidden state is {n_embd}",
                        dir.len()
                    )));
                }
                let sum = sums[layer].get_or_insert_with(|| vec![0.0; n_embd]);
                for (s, d) in sum.iter_mut().zip(dir) {
                    *s += scale * d;
                }
            }
        }
        if sums.iter().all(Option::is_none) {
            return Ok(None);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (i, s) in sums.iter().enumerate() {
            if let Some(s) = s {
                i.hash(&mut h);
                s.iter().for_each(|x| x.to_bits().hash(&mut h));
            }
        }
        let layers = sums
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|v| Tensor::from_slice(v, n_embd, device))
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(Self {
            layers,
            host: sums,
            key: h.finish(),
        }))
    }

    /// What to add after layer `layer`, if anything.
    pub fn at(&self, layer: usize) -> Option<&Tensor> {
        self.layers.get(layer).and_then(Option::as_ref)
    }

    /// What to add after layer `layer`, as plain values (`[n_embd]`).
    pub fn at_host(&self, layer: usize) -> Option<&[f32]> {
        self.host.get(layer).and_then(Option::as_deref)
    }

    /// Whether two steerings add the same vectors (then caches filled under one serve
    /// the other).
    pub fn same(a: Option<&Steering>, b: Option<&Steering>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.key == b.key,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_by_layer_and_zero_scales_drop_out() {
        let dev = Device::Cpu;
        let a: Vec<Option<Vec<f32>>> = vec![None, Some(vec![1.0, 0.0]), Some(vec![0.0, 1.0])];
        let b: Vec<Option<Vec<f32>>> = vec![None, None, Some(vec![1.0, 1.0])];
        let s = Steering::combine(3, 2, &[(&a, 2.0), (&b, -1.0)], &dev)
            .unwrap()
            .unwrap();
        assert!(s.at(0).is_none());
        assert_eq!(s.at(1).unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 0.0]);
        assert_eq!(s.at(2).unwrap().to_vec1::<f32>().unwrap(), vec![-1.0, 1.0]);
        assert!(
            Steering::combine(3, 2, &[(&a, 0.0)], &dev)
                .unwrap()
                .is_none()
        );
        assert!(Steering::combine(3, 2, &[], &dev).unwrap().is_none());
        let again = Steering::combine(3, 2, &[(&b, -1.0), (&a, 2.0)], &dev)
            .unwrap()
            .unwrap();
        assert!(Steering::same(Some(&s), Some(&again)));
        let other = Steering::combine(3, 2, &[(&a, 1.0)], &dev)
            .unwrap()
            .unwrap();
        assert!(!Steering::same(Some(&s), Some(&other)));
        assert!(!Steering::same(Some(&s), None));
    }

    #[test]
    fn a_vector_for_another_shape_is_refused() {
        let dev = Device::Cpu;
        let wide: Vec<Option<Vec<f32>>> = vec![None, Some(vec![1.0; 3])];
        let err = Steering::combine(2, 2, &[(&wide, 1.0)], &dev).unwrap_err();
        assert!(err.to_string().contains("3 wide"), "{err}");
        let deep: Vec<Option<Vec<f32>>> = vec![None; 5];
        let err = Steering::combine(2, 2, &[(&deep, 1.0)], &dev).unwrap_err();
        assert!(err.to_string().contains("5 layers"), "{err}");
    }
}
