//! The decoder-only transformer all supported architectures share, configured by
//! [`ArchConfig`]. Weights are loaded once and shared (read-only) by every sequence; each
//! call takes the sequence's own [`KvCache`]. On the CPU a pass runs over host memory
//! (plain slices in per-thread buffers, [`host_ops`], [`super::host_attention`]) and
//! allocates nothing per decode step; on GPU devices it is a chain of candle tensor
//! operations.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::host_attention::{Heads, KvView, RopeTable, Span, attend};
use super::host_ops::{self, Scratch, Widths};
use super::{Activation, ArchConfig, RopeStyle};
use crate::engine::error::{Error, Result};
use crate::engine::gguf::GgufFile;
use crate::engine::kv_cache::KvCache;
use crate::engine::quant::{HostInput, Linear, QWeight};

thread_local! {
    /// The buffers of the CPU forward pass on this thread, kept between decode steps.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's (generation).
    Last,
    /// Every position's (scoring a text).
    All,
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    post_ffn_norm: Option<Tensor>,
    /// Index into [`Transformer::rope_tables`].
    rope: usize,
    sliding_window: Option<usize>,
    /// The norm weights and biases as plain values, for the CPU forward pass.
    host: HostVectors,
}

/// A layer's vectors (norm weights, biases) in host memory; empty off the CPU.
#[derive(Default)]
struct HostVectors {
    attn_norm: Vec<f32>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Option<Vec<f32>>,
}

/// The values of a vector tensor, when it lives on the CPU (the host forward pass reads
/// them); nothing otherwise.
fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    if t.device().is_cpu() {
        Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    } else {
        Ok(Vec::new())
    }
}

impl HostVectors {
    /// The plain values of `l`'s vector tensors.
    fn of(l: &Layer) -> Result<Self> {
        let opt = |t: &Option<Tensor>| t.as_ref().map(host_values).transpose();
        Ok(Self {
            attn_norm: host_values(&l.attn_norm)?,
            bq: opt(&l.bq)?,
            bk: opt(&l.bk)?,
            bv: opt(&l.bv)?,
            q_norm: opt(&l.q_norm)?,
            k_norm: opt(&l.k_norm)?,
            post_attn_norm: opt(&l.post_attn_norm)?,
            ffn_norm: host_values(&l.ffn_norm)?,
            post_ffn_norm: opt(&l.post_ffn_norm)?,
        })
    }
}

/// The token embedding table.
enum Embeddings {
    /// Tied to the output projection, which pathos's kernels keep: rows are read from
    /// [`Transformer::output`] (one copy of the table).
    Output,
    /// A table of its own in pathos's layout (untied models whose table type needs no
    /// wider layout): rows are dequantized straight into the forward pass's buffer.
    Own(QWeight),
    /// A table candle keeps (other types, other devices).
    Candle(Arc<QTensor>),
}

/// Weights and precomputed tables of one model.
pub struct Transformer {
    cfg: ArchConfig,
    /// Where token rows are read from.
    embed: Embeddings,
    vocab: usize,
    layers: Vec<Layer>,
    out_norm: Tensor,
    out_norm_host: Vec<f32>,
    output: Linear,
    /// One per distinct RoPE base, `[context_length, head_dim / 2]`.
    rope_tables: Vec<RopeTables>,
    device: Device,
}

/// Lays the new tokens of every sequence one after another into `tokens` and records
/// where each sequence's rows are and at which position they start, checking each has
/// tokens and room in its cache. Both forward passes start here.
fn gather(
    seqs: &[(&[u32], &mut KvCache)],
    tokens: &mut Vec<u32>,
    spans: &mut Vec<Span>,
) -> Result<()> {
    tokens.clear();
    spans.clear();
    for (new, cache) in seqs {
        if new.is_empty() {
            return Err(Error::InvalidSampling("no tokens to process".into()));
        }
        cache.check_room(new.len())?;
        spans.push(Span {
            first: tokens.len(),
            t: new.len(),
            pos: cache.len(),
        });
        tokens.extend_from_slice(new);
    }
    Ok(())
}

/// Runs `f` with this thread's kept forward-pass buffers when a pass of `rows` rows may
/// keep them ([`Scratch::keeps`]), with fresh ones otherwise (or when the kept ones are
/// in use further up this thread's stack).
fn with_scratch<R>(rows: usize, f: impl FnOnce(&mut Scratch) -> R) -> R {
    if !Scratch::keeps(rows) {
        return f(&mut Scratch::default());
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}

fn rope_table(theta: f32, head_dim: usize, n_pos: usize, device: &Device) -> Result<RopeTables> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(n_pos * half);
    let mut sin = Vec::with_capacity(n_pos * half);
    for p in 0..n_pos {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok(RopeTables {
        cos_t: Tensor::from_vec(cos.clone(), (n_pos, half), device)?,
        sin_t: Tensor::from_vec(sin.clone(), (n_pos, half), device)?,
        cos,
        sin,
    })
}

/// cos and sin of one RoPE base, `[positions, head_dim / 2]`: as tensors for the device
/// path, as plain values for [`host_attention`].
struct RopeTables {
    cos_t: Tensor,
    sin_t: Tensor,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Transformer {
    /// Loads the weights of `gguf` onto `device`. `max_positions` bounds the RoPE tables
    /// (the longest context any sequence will use).
    pub fn load(
        gguf: &GgufFile,
        cfg: ArchConfig,
        device: &Device,
        max_positions: usize,
    ) -> Result<Self> {
        // Every weight is checked against the shape the metadata implies before it is
        // used: the metadata sizes the RoPE tables, KV caches and scratch rows, so a file
        // whose header disagrees with its weights must fail here, not in the forward pass.
        let shaped = |name: &str, want: &[usize]| -> Result<QTensor> {
            let t = gguf.tensor(name, device)?;
            if t.shape().dims() != want {
                return Err(Error::CorruptGguf {
                    path: gguf.path().to_path_buf(),
                    detail: format!(
                        "tensor `{name}` is {:?}, the metadata implies {want:?}",
                        t.shape().dims()
                    ),
                });
            }
            Ok(t)
        };
        // Weights pathos multiplies itself are regrouped straight from the mapped file:
        // no intermediate candle tensor, no copy through a buffer.
        let own = |name: &str, rows: usize, cols: usize| -> Result<Option<QWeight>> {
            match gguf.tensor_info(name) {
                Some((dtype, _)) if QWeight::handles(dtype, device) => {}
                _ => return Ok(None),
            }
            gguf.with_tensor_data(name, |dtype, dims, bytes| {
                if dims != [rows, cols] {
                    return Err(Error::CorruptGguf {
                        path: gguf.path().to_path_buf(),
                        detail: format!(
                            "tensor `{name}` is {dims:?}, the metadata implies {:?}",
                            [rows, cols]
                        ),
                    });
                }
                QWeight::from_file_bytes(dtype, bytes, rows, cols, &|done| gguf.release(done))
                    .map(Some)
                    .ok_or_else(|| Error::CorruptGguf {
                        path: gguf.path().to_path_buf(),
                        detail: format!("tensor `{name}` has the wrong size for its type"),
                    })
            })
        };
        let mm = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
            match own(name, rows, cols)? {
                Some(w) => Ok(Linear::Own(w)),
                None => Ok(Linear::new(shaped(name, &[rows, cols])?, device)?),
            }
        };
        let dense = |name: &str, len: usize| -> Result<Tensor> {
            Ok(shaped(name, &[len])?.dequantize(device)?)
        };
        let opt_dense = |name: &str, len: usize| -> Result<Option<Tensor>> {
            if gguf.has_tensor(name) {
                dense(name, len).map(Some)
            } else {
                Ok(None)
            }
        };
        let (n_embd, n_ff, head_dim) = (cfg.n_embd, cfg.n_ff, cfg.head_dim);
        let too_big = || Error::CorruptGguf {
            path: gguf.path().to_path_buf(),
            detail: format!(
                "impossible attention shape: {} heads of size {head_dim}",
                cfg.n_head
            ),
        };
        let q_rows = cfg.n_head.checked_mul(head_dim).ok_or_else(too_big)?;
        let kv_rows = cfg.n_head_kv.checked_mul(head_dim).ok_or_else(too_big)?;
        let vocab = match gguf.tensor_info("token_embd.weight").map(|(_, d)| d) {
            Some(&[vocab, cols]) if cols == n_embd => vocab,
            dims => {
                return Err(Error::CorruptGguf {
                    path: gguf.path().to_path_buf(),
                    detail: match dims {
                        Some(dims) => format!(
                            "tensor `token_embd.weight` is {dims:?}, the metadata implies [_, {n_embd}]"
                        ),
                        None => "tensor `token_embd.weight` is missing".into(),
                    },
                });
            }
        };
        // Tied embeddings: the output projection shares the embedding matrix (one copy),
        // and token rows are read from it when pathos multiplies it.
        let tied_own = if gguf.has_tensor("output.weight") {
            None
        } else {
            own("token_embd.weight", vocab, n_embd)?
        };
        let (output, embed) = match tied_own {
            Some(w) => (Linear::Own(w), Embeddings::Output),
            None if gguf.has_tensor("output.weight") => {
                let output = mm("output.weight", vocab, n_embd)?;
                // A separate table is kept in pathos's layout when that costs no memory
                // (the 32-weight block types); K-quant tables stay with candle.
                let compact = matches!(
                    gguf.tensor_info("token_embd.weight").map(|(t, _)| t),
                    Some(GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q8_0)
                );
                let embed = match compact.then(|| own("token_embd.weight", vocab, n_embd)) {
                    Some(Ok(Some(w))) => Embeddings::Own(w),
                    Some(Err(e)) => return Err(e),
                    _ => Embeddings::Candle(Arc::new(gguf.tensor("token_embd.weight", device)?)),
                };
                (output, embed)
            }
            None => {
                let embed = Arc::new(gguf.tensor("token_embd.weight", device)?);
                let out = Linear::shared(embed.clone(), device)?;
                match out {
                    Linear::Own(_) => (out, Embeddings::Output),
                    Linear::Candle(_) => (out, Embeddings::Candle(embed)),
                }
            }
        };
        tracing::debug!(
            table = match &embed {
                Embeddings::Output => "tied to the output projection",
                Embeddings::Own(_) => "own layout",
                Embeddings::Candle(_) => "candle",
            },
            dtype = ?gguf.tensor_info("token_embd.weight").map(|(t, _)| t),
            "token embeddings"
        );
        let mut thetas: Vec<f32> = Vec::new();
        let ropes: Vec<usize> = cfg
            .layers
            .iter()
            .map(|la| match thetas.iter().position(|t| *t == la.rope_theta) {
                Some(r) => r,
                None => {
                    thetas.push(la.rope_theta);
                    thetas.len() - 1
                }
            })
            .collect();
        let layer = |i: usize| -> Result<Layer> {
            let p = |s: &str| format!("blk.{i}.{s}");
            let mut layer = Layer {
                attn_norm: dense(&p("attn_norm.weight"), n_embd)?,
                wq: mm(&p("attn_q.weight"), q_rows, n_embd)?,
                wk: mm(&p("attn_k.weight"), kv_rows, n_embd)?,
                wv: mm(&p("attn_v.weight"), kv_rows, n_embd)?,
                wo: mm(&p("attn_output.weight"), n_embd, q_rows)?,
                bq: opt_dense(&p("attn_q.bias"), q_rows)?,
                bk: opt_dense(&p("attn_k.bias"), kv_rows)?,
                bv: opt_dense(&p("attn_v.bias"), kv_rows)?,
                q_norm: opt_dense(&p("attn_q_norm.weight"), head_dim)?,
                k_norm: opt_dense(&p("attn_k_norm.weight"), head_dim)?,
                post_attn_norm: opt_dense(&p("post_attention_norm.weight"), n_embd)?,
                ffn_norm: dense(&p("ffn_norm.weight"), n_embd)?,
                w_gate: mm(&p("ffn_gate.weight"), n_ff, n_embd)?,
                w_up: mm(&p("ffn_up.weight"), n_ff, n_embd)?,
                w_down: mm(&p("ffn_down.weight"), n_embd, n_ff)?,
                post_ffn_norm: opt_dense(&p("post_ffw_norm.weight"), n_embd)?,
                rope: ropes[i],
                sliding_window: cfg.layers[i].sliding_window,
                host: HostVectors::default(),
            };
            layer.host = HostVectors::of(&layer)?;
            Ok(layer)
        };
        // Regrouping the weights is CPU work proportional to the model: two threads take
        // half the layers each (start-up time is a target; the tokenizer is built on a
        // third thread meanwhile).
        let split = cfg.n_layer / 2;
        let layers = std::thread::scope(|s| -> Result<Vec<Layer>> {
            let back = s.spawn(|| (split..cfg.n_layer).map(layer).collect::<Result<Vec<_>>>());
            let front = (0..split).map(layer).collect::<Result<Vec<_>>>();
            let back = back.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            let mut layers = front?;
            layers.extend(back?);
            Ok(layers)
        });
        let layers = layers?;
        let n_pos = max_positions.min(cfg.context_length).max(1);
        let rope_tables = thetas
            .iter()
            .map(|t| rope_table(*t, cfg.head_dim, n_pos, device))
            .collect::<Result<Vec<_>>>()?;
        let out_norm = dense("output_norm.weight", n_embd)?;
        Ok(Self {
            out_norm_host: host_values(&out_norm)?,
            out_norm,
            embed,
            vocab,
            layers,
            output,
            rope_tables,
            device: device.clone(),
            cfg,
        })
    }

    /// The architecture configuration.
    pub fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Longest sequence the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.rope_tables.first().map_or(0, |t| t.cos_t.dims()[0])
    }

    /// A KV cache for one sequence of up to `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(
            self.cfg.n_layer,
            self.cfg.n_head_kv,
            self.cfg.head_dim,
            capacity.min(self.max_positions()),
            &self.device,
        )
    }

    /// A cache in the GPU form (see [`KvCache::new_tensor_store`]): a pass over it runs
    /// the tensor forward pass even on the CPU, to check that pass without a GPU.
    #[doc(hidden)]
    pub fn new_tensor_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new_tensor_store(
            self.cfg.n_layer,
            self.cfg.n_head_kv,
            self.cfg.head_dim,
            capacity.min(self.max_positions()),
            &self.device,
        )
    }

    /// Width of the logits: the embedding table's rows, which may exceed the
    /// tokenizer's vocabulary (padding rows).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Runs `tokens` (the continuation of the sequence in `cache`) through the model and
    /// returns logits `[n, vocab]` for the last position or for all of them.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Tensor> {
        let mut seqs = [(tokens, cache)];
        if self.on_host(&seqs) {
            let mut out = Vec::new();
            self.forward_host(&mut seqs, logits, &mut out)?;
            let n = out.len() / self.vocab.max(1);
            return Ok(Tensor::from_vec(out, (n, self.vocab), &self.device)?);
        }
        let x = self.hidden(&mut seqs, None)?;
        let x = match logits {
            Logits::Last => x.narrow(0, tokens.len() - 1, 1)?,
            Logits::All => x,
        };
        self.logits(&x)
    }

    /// Runs several sequences' continuations as one batch and returns the logits of each
    /// one's last position, `[sequences, vocab]` in the order given. Every weight matrix
    /// is read once per call for all of them; attention stays per sequence, over its own
    /// cache. A row's result does not depend on what else is in the batch for the weight
    /// types pathos multiplies itself.
    pub fn forward_batch(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> Result<Tensor> {
        if self.on_host(seqs) {
            let mut out = Vec::new();
            self.forward_host(seqs, Logits::Last, &mut out)?;
            return Ok(Tensor::from_vec(
                out,
                (seqs.len(), self.vocab),
                &self.device,
            )?);
        }
        let x = self.hidden(seqs, None)?;
        let mut last = Vec::with_capacity(seqs.len());
        let mut end = 0u32;
        for (tokens, _) in seqs.iter() {
            end += tokens.len() as u32;
            last.push(end - 1);
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        self.logits(&x)
    }

    /// Runs several sequences' continuations through the layers only, filling their
    /// caches: for a shared prompt prefix, whose logits nobody samples from, so the
    /// output projection (the largest matrix of a small model) is skipped.
    pub fn prefill(&self, seqs: &mut [(&[u32], &mut KvCache)]) -> Result<()> {
        if self.on_host(seqs) {
            let rows = seqs.iter().map(|(t, _)| t.len()).sum();
            return with_scratch(rows, |s| self.hidden_host(seqs, None, s));
        }
        self.hidden(seqs, None).map(drop)
    }

    /// [`Self::forward_batch`] writing the logits into `logits` (`[sequences, vocab]`,
    /// resized): the decode step's form. On the CPU it allocates nothing once its
    /// buffers have grown to the batch (see [`host_ops`]).
    pub fn forward_batch_into(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        if self.on_host(seqs) {
            return self.forward_host(seqs, Logits::Last, logits);
        }
        let t = self.forward_batch(seqs)?;
        logits.clear();
        logits.extend(t.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = candle_nn::ops::rms_norm(x, &self.out_norm, self.cfg.rms_eps as f32)?;
        Ok(self.output.forward(&x)?)
    }

    /// The residual stream after every layer at the last of `tokens` (the continuation
    /// of the sequence in `cache`, under its steering): what steering directions are
    /// learned from. `[n_layer][n_embd]`.
    pub fn layer_states(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<Vec<f32>>> {
        let mut states = Vec::with_capacity(self.layers.len());
        let last = tokens.len().saturating_sub(1);
        let mut seqs = [(tokens, cache)];
        if self.on_host(&seqs) {
            let n = self.cfg.n_embd;
            let mut observe = |_: usize, x: &[f32]| -> Result<()> {
                states.push(x[last * n..(last + 1) * n].to_vec());
                Ok(())
            };
            let rows = tokens.len();
            with_scratch(rows, |s| self.hidden_host(&mut seqs, Some(&mut observe), s))?;
            return Ok(states);
        }
        let mut observe = |_: usize, x: &Tensor| -> Result<()> {
            states.push(x.narrow(0, last, 1)?.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        };
        self.hidden(&mut seqs, Some(&mut observe))?;
        Ok(states)
    }

    /// Whether a pass over `seqs` runs in host memory: weights on the CPU and every
    /// cache in host memory (always so on the CPU).
    fn on_host(&self, seqs: &[(&[u32], &mut KvCache)]) -> bool {
        self.device.is_cpu() && seqs.iter().all(|(_, c)| c.is_host())
    }

    /// The host pass: hidden states into a scratch buffer, then logits of the chosen
    /// rows into `out`.
    fn forward_host(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        which: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rows = seqs.iter().map(|(t, _)| t.len()).sum();
        with_scratch(rows, |s| {
            self.hidden_host(seqs, None, s)?;
            self.logits_host(s, which, out)
        })
    }

    /// The hidden states after the last layer, `[Σ tokens, n_embd]` in `s.x`, computed
    /// in host memory; each cache takes its new keys and values. `observe` sees the
    /// residual stream after each layer (steering included).
    #[allow(clippy::type_complexity)]
    fn hidden_host(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        mut observe: Option<&mut dyn FnMut(usize, &[f32]) -> Result<()>>,
        s: &mut Scratch,
    ) -> Result<()> {
        let c = &self.cfg;
        let n = c.n_embd;
        gather(seqs, &mut s.tokens, &mut s.spans)?;
        let rows = s.tokens.len();
        s.size(
            rows,
            Widths {
                n_embd: n,
                q: c.n_head * c.head_dim,
                kv: c.n_head_kv * c.head_dim,
                n_ff: c.n_ff,
            },
        );
        match (&self.embed, &self.output) {
            (Embeddings::Candle(table), _) => {
                let ids = Tensor::new(s.tokens.as_slice(), &self.device)?;
                let e = table.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?;
                s.x.copy_from_slice(&e);
            }
            (Embeddings::Own(w), _) | (Embeddings::Output, Linear::Own(w)) => {
                w.rows_into(&s.tokens, &mut s.x)?
            }
            (Embeddings::Output, Linear::Candle(_)) => {
                return Err(candle_core::Error::Msg("no token embedding table".into()).into());
            }
        }
        if c.scale_embeddings {
            let f = (n as f64).sqrt() as f32;
            s.x.iter_mut().for_each(|v| *v *= f);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            self.block_host(layer, i, seqs, s)?;
            for (span, (_, cache)) in s.spans.iter().zip(seqs.iter()) {
                if let Some(add) = cache.steering().and_then(|st| st.at_host(i)) {
                    let rows = &mut s.x[span.first * n..(span.first + span.t) * n];
                    host_ops::add_to_rows(rows, add);
                }
            }
            if let Some(f) = observe.as_mut() {
                f(i, &s.x)?;
            }
        }
        for (tokens, cache) in seqs.iter_mut() {
            cache.advance(tokens.len());
        }
        Ok(())
    }

    /// One transformer block over `s.x` in host memory (see [`Self::block`]).
    fn block_host(
        &self,
        l: &Layer,
        li: usize,
        seqs: &mut [(&[u32], &mut KvCache)],
        s: &mut Scratch,
    ) -> Result<()> {
        let c = &self.cfg;
        let eps = c.rms_eps as f32;
        let (n, hv) = (c.n_embd, &l.host);
        host_ops::rms_norm(&s.x, &hv.attn_norm, eps, &mut s.h);
        let mut input = HostInput::new(&s.h, n, &mut s.acts);
        Linear::forward_host_many(
            [&l.wq, &l.wk, &l.wv],
            &mut input,
            [&mut s.q, &mut s.k, &mut s.v],
        )?;
        for (b, y) in [(&hv.bq, &mut s.q), (&hv.bk, &mut s.k), (&hv.bv, &mut s.v)] {
            if let Some(b) = b {
                host_ops::add_to_rows(y, b);
            }
        }
        if let Some(w) = &hv.q_norm {
            host_ops::rms_norm_in_place(&mut s.q, w, eps);
        }
        if let Some(w) = &hv.k_norm {
            host_ops::rms_norm_in_place(&mut s.k, w, eps);
        }
        self.attend_host(l, li, seqs, s);
        let mut input = HostInput::new(&s.att, c.n_head * c.head_dim, &mut s.acts);
        l.wo.forward_host(&mut input, &mut s.o)?;
        if let Some(w) = &hv.post_attn_norm {
            host_ops::rms_norm_in_place(&mut s.o, w, eps);
        }
        host_ops::add(&mut s.x, &s.o);
        host_ops::rms_norm(&s.x, &hv.ffn_norm, eps, &mut s.h);
        let mut input = HostInput::new(&s.h, n, &mut s.acts);
        let act = c.activation;
        Linear::forward_host_gated(
            &l.w_gate,
            &l.w_up,
            &mut input,
            &mut s.gate,
            &mut s.up,
            &|gate, up| host_ops::gated(act, gate, up),
        )?;
        let mut input = HostInput::new(&s.gate, c.n_ff, &mut s.acts);
        l.w_down.forward_host(&mut input, &mut s.o)?;
        if let Some(w) = &hv.post_ffn_norm {
            host_ops::rms_norm_in_place(&mut s.o, w, eps);
        }
        host_ops::add(&mut s.x, &s.o);
        Ok(())
    }

    /// Rotation, cache writes and attention of every sequence's new rows (`s.q`, `s.k`,
    /// `s.v`) into `s.att`, over plain memory, split over the worker threads.
    fn attend_host(
        &self,
        l: &Layer,
        li: usize,
        seqs: &mut [(&[u32], &mut KvCache)],
        s: &mut Scratch,
    ) {
        let c = &self.cfg;
        let d = c.head_dim;
        let tables = &self.rope_tables[l.rope];
        let rope = RopeTable {
            cos: &tables.cos,
            sin: &tables.sin,
            style: c.rope,
        };
        let (qw, kw) = (c.n_head * d, c.n_head_kv * d);
        for (span, (_, cache)) in s.spans.iter().zip(seqs.iter_mut()) {
            for r in span.first..span.first + span.t {
                let p = span.pos + r - span.first;
                rope.apply(&mut s.q[r * qw..(r + 1) * qw], d, p);
                rope.apply(&mut s.k[r * kw..(r + 1) * kw], d, p);
                cache.write_host(
                    li,
                    p,
                    &s.k[r * kw..(r + 1) * kw],
                    &s.v[r * kw..(r + 1) * kw],
                );
            }
        }
        let caches: &[(&[u32], &mut KvCache)] = seqs;
        let kv = |i: usize| {
            let cache = &caches[i].1;
            let (k, v) = cache
                .host_layer(li)
                .expect("the host pass runs only over host caches");
            KvView {
                k,
                v,
                capacity: cache.capacity(),
            }
        };
        let heads = Heads {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: d,
            scale: c.attention_scale as f32,
            window: l.sliding_window,
        };
        attend(heads, &s.q, &s.spans, &kv, &mut s.att);
    }

    /// Final norm and output projection of the rows `which` picks (each sequence's last,
    /// or all), into `out` (`[picked, vocab]`).
    fn logits_host(&self, s: &mut Scratch, which: Logits, out: &mut Vec<f32>) -> Result<()> {
        let n = self.cfg.n_embd;
        let eps = self.cfg.rms_eps as f32;
        let w = &self.out_norm_host;
        let picked = match which {
            Logits::All => {
                host_ops::rms_norm(&s.x, w, eps, &mut s.h);
                s.tokens.len()
            }
            Logits::Last => {
                for (j, sp) in s.spans.iter().enumerate() {
                    let r = sp.first + sp.t - 1;
                    host_ops::rms_norm(
                        &s.x[r * n..(r + 1) * n],
                        w,
                        eps,
                        &mut s.h[j * n..(j + 1) * n],
                    );
                }
                s.spans.len()
            }
        };
        out.clear();
        out.resize(picked * self.vocab, 0.0);
        let mut input = HostInput::new(&s.h[..picked * n], n, &mut s.acts);
        self.output.forward_host(&mut input, out)?;
        Ok(())
    }

    /// Adds each sequence's steering for layer `layer` to its rows of `x`.
    fn steer(
        &self,
        x: Tensor,
        layer: usize,
        spans: &[Span],
        seqs: &[(&[u32], &mut KvCache)],
    ) -> Result<Tensor> {
        let adds: Vec<Option<&Tensor>> = seqs
            .iter()
            .map(|(_, c)| c.steering().and_then(|s| s.at(layer)))
            .collect();
        match adds.as_slice() {
            _ if adds.iter().all(Option::is_none) => Ok(x),
            [Some(v)] => Ok(x.broadcast_add(v)?),
            _ => {
                let n_embd = x.dim(1)?;
                let parts = spans
                    .iter()
                    .zip(&adds)
                    .map(|(&Span { t, .. }, add)| match add {
                        Some(v) => v.unsqueeze(0)?.broadcast_as((t, n_embd))?.contiguous(),
                        None => Tensor::zeros((t, n_embd), x.dtype(), x.device()),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok((x + Tensor::cat(&parts, 0)?)?)
            }
        }
    }

    /// The final hidden states `[Σ tokens, n_embd]` of every sequence's new tokens,
    /// sequences one after another, computed with candle tensor operations (GPU
    /// devices; the CPU runs [`Self::hidden_host`]); each cache takes its new keys and
    /// values.
    /// `observe` sees the residual stream after each layer (steering included).
    #[allow(clippy::type_complexity)]
    fn hidden(
        &self,
        seqs: &mut [(&[u32], &mut KvCache)],
        mut observe: Option<&mut dyn FnMut(usize, &Tensor) -> Result<()>>,
    ) -> Result<Tensor> {
        let (mut all, mut spans) = (Vec::new(), Vec::with_capacity(seqs.len()));
        gather(seqs, &mut all, &mut spans)?;
        let mut x = match (&self.embed, &self.output) {
            (Embeddings::Candle(table), _) => {
                table.embedding(&Tensor::new(all.as_slice(), &self.device)?)?
            }
            (Embeddings::Own(w), _) | (Embeddings::Output, Linear::Own(w)) => {
                w.rows_of(&all, &self.device)?
            }
            (Embeddings::Output, Linear::Candle(_)) => {
                return Err(candle_core::Error::Msg("no token embedding table".into()).into());
            }
        };
        if self.cfg.scale_embeddings {
            x = (x * (self.cfg.n_embd as f64).sqrt())?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.block(layer, i, &x, &spans, seqs)?;
            x = self.steer(x, i, &spans, seqs)?;
            if let Some(f) = observe.as_mut() {
                f(i, &x)?;
            }
        }
        for ((tokens, cache), _) in seqs.iter_mut().zip(&spans) {
            cache.advance(tokens.len());
        }
        Ok(x)
    }

    /// One transformer block over the rows of every sequence: projections and the
    /// feed-forward on all rows at once, attention per sequence (`spans`: first row,
    /// row count, position of the first row).
    fn block(
        &self,
        l: &Layer,
        li: usize,
        x: &Tensor,
        spans: &[Span],
        seqs: &mut [(&[u32], &mut KvCache)],
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let eps = c.rms_eps as f32;
        let rows = x.dim(0)?;
        let h = candle_nn::ops::rms_norm(x, &l.attn_norm, eps)?;
        let (q, k, v) = (l.wq.forward(&h)?, l.wk.forward(&h)?, l.wv.forward(&h)?);
        let proj = |y: Tensor, b: &Option<Tensor>, heads: usize| -> Result<Tensor> {
            let y = match b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            Ok(y.reshape((rows, heads, c.head_dim))?)
        };
        let mut q = proj(q, &l.bq, c.n_head)?;
        let mut k = proj(k, &l.bk, c.n_head_kv)?;
        let v = proj(v, &l.bv, c.n_head_kv)?;
        if let Some(n) = &l.q_norm {
            q = candle_nn::ops::rms_norm(&q, n, eps)?;
        }
        if let Some(n) = &l.k_norm {
            k = candle_nn::ops::rms_norm(&k, n, eps)?;
        }
        let mut outs = Vec::with_capacity(spans.len());
        for (&Span { first, t, pos }, (_, cache)) in spans.iter().zip(seqs.iter_mut()) {
            let one = |a: &Tensor| a.narrow(0, first, t);
            outs.push(self.attention(l, li, &one(&q)?, &one(&k)?, &one(&v)?, pos, cache)?);
        }
        let o = if outs.len() == 1 {
            outs.pop().expect("one output")
        } else {
            Tensor::cat(&outs, 0)?
        };
        let mut o = l.wo.forward(&o)?;
        if let Some(n) = &l.post_attn_norm {
            o = candle_nn::ops::rms_norm(&o, n, eps)?;
        }
        let x = (x + o)?;
        let h = candle_nn::ops::rms_norm(&x, &l.ffn_norm, eps)?;
        let (gate, up) = (l.w_gate.forward(&h)?, l.w_up.forward(&h)?);
        let gate = match c.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        let mut f = l.w_down.forward(&(gate * up)?)?;
        if let Some(n) = &l.post_ffn_norm {
            f = candle_nn::ops::rms_norm(&f, n, eps)?;
        }
        Ok((x + f)?)
    }

    /// Attention of one sequence's `t` new rows (`q`, `k`, `v`: `[t, heads, head_dim]`,
    /// positions `pos..pos + t`) over its cache; returns `[t, n_head * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: &Layer,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let t = q.dim(0)?;
        // [t, heads, d] -> [1, heads, t, d] for the RoPE kernels.
        let q = q.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let k = k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?;
        let v = v.transpose(0, 1)?.contiguous()?;
        let tables = &self.rope_tables[l.rope];
        let cos = tables.cos_t.narrow(0, pos, t)?;
        let sin = tables.sin_t.narrow(0, pos, t)?;
        let (q, k) = match c.rope {
            RopeStyle::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
            ),
            RopeStyle::Neox => (
                candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
            ),
        };
        let q = (q.squeeze(0)? * c.attention_scale)?;
        let (k_all, v_all) = cache.append(li, &k.squeeze(0)?, &v)?;
        let n_kv = k_all.dim(1)?;
        // Query heads that share a kv head are stacked so one batched matmul per kv head
        // serves them all: [n_head, t, d] -> [n_kv_head, rep * t, d].
        let rep = c.n_head / c.n_head_kv;
        let q = q.reshape((c.n_head_kv, rep * t, c.head_dim))?;
        let mut att = q.matmul(&k_all.t()?)?;
        if let Some(mask) = attention_mask(t, pos, n_kv, l.sliding_window, &self.device)? {
            att = att
                .reshape((c.n_head_kv, rep, t, n_kv))?
                .broadcast_add(&mask)?
                .reshape((c.n_head_kv, rep * t, n_kv))?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let o = att.matmul(&v_all)?; // [n_kv_head, rep * t, d]
        Ok(o.reshape((c.n_head, t, c.head_dim))?
            .transpose(0, 1)?
            .reshape((t, c.n_head * c.head_dim))?)
    }
}

/// Additive mask `[t, n_kv]` for `t` new queries at `pos..pos + t` over `n_kv` keys:
/// causal, and limited to `window` past positions for sliding-window layers. `None`
/// when nothing is masked (a single query without a window in reach).
fn attention_mask(
    t: usize,
    pos: usize,
    n_kv: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let windowed = window.is_some_and(|w| pos + t > w);
    if t == 1 && !windowed {
        return Ok(None);
    }
    let mut m = vec![0f32; t * n_kv];
    for i in 0..t {
        let qp = pos + i;
        for (j, cell) in m[i * n_kv..(i + 1) * n_kv].iter_mut().enumerate() {
            let future = j > qp;
            let too_old = window.is_some_and(|w| qp - j.min(qp) >= w);
            if future || too_old {
                *cell = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(
        Tensor::from_vec(m, (t, n_kv), device)?.to_dtype(DType::F32)?,
    ))
}
