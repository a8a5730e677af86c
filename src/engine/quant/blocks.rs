//! Block layouts of the 32-element GGUF quantizations pathos multiplies itself, the
//! activation block they are multiplied with, and portable (scalar) dot products.
//!
//! The weight blocks are the file's bytes; [`super::packed`] regroups them for the
//! kernels. Activations are quantized per row to [`ActBlock`]: 32 signed bytes
//! with an `f32` scale (and the scaled sum that Q4_1's offset needs), so one activation
//! layout serves every weight type.

use half::f16;

/// Elements per block for every type in this module.
pub const QK: usize = 32;

/// 32 activations quantized to signed bytes: `x[i] ≈ d * qs[i]`; `sum = Σ qs` and
/// `s = d * sum` (rounded to f16). Weights stored with an offset (Q4_0's `q - 8`) are
/// multiplied unsigned and corrected by `sum`, exactly; Q4_1's minimum takes `s`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct ActBlock {
    pub qs: [i8; QK],
    pub d: f32,
    pub s: f32,
    pub sum: i32,
    /// `Σ qs` over the first 16 elements (Q6_K scales each half on its own).
    pub sum_lo: i32,
}

impl ActBlock {
    pub const ZERO: Self = Self {
        qs: [0; QK],
        d: 0.0,
        s: 0.0,
        sum: 0,
        sum_lo: 0,
    };
}

/// Quantizes one row of `k` activations (`k` a multiple of [`QK`]) into `out`. The
/// scales are rounded to f16 as GGUF's own Q8_0/Q8_1 activation blocks store them, so
/// products agree with llama.cpp's to summation order.
pub fn quantize_row(x: &[f32], out: &mut [ActBlock]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (i, (q, v)) in b.qs.iter_mut().zip(xs).enumerate() {
            let r = (v * id).round() as i32;
            sum += r;
            if i == 15 {
                b.sum_lo = sum;
            }
            *q = r as i8;
        }
        b.d = f16::from_f32(d).to_f32();
        b.s = f16::from_f32(d * sum as f32).to_f32();
        b.sum = sum;
    }
}

/// A GGUF weight block pathos has its own kernels for.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    /// Bytes per block in the file.
    const BYTES: usize;
    /// The block of 32 zeros (rows that pad a group).
    const ZERO: Self;
    /// The 32 weights of the block.
    fn dequantize(&self) -> [f32; QK];
    /// Dot product of a row of blocks with a row of activation blocks, portable code.
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32;
}

#[inline]
fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// `d * (q - 8)`, 4-bit.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}

/// `d * q + m`, 4-bit.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

/// `d * (q - 16)`, 5-bit: low nibbles in `qs`, fifth bits in `qh`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `d * q`, 8-bit.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK],
}

/// The signed values of a 4-bit block: element `j` is the low nibble of byte `j`,
/// element `j + 16` its high nibble.
#[inline]
fn nibbles(qs: &[u8; 16]) -> [i32; QK] {
    let mut v = [0i32; QK];
    for (j, b) in qs.iter().enumerate() {
        v[j] = (b & 0x0f) as i32;
        v[j + 16] = (b >> 4) as i32;
    }
    v
}

#[inline]
fn idot(a: &[i32; QK], b: &[i8; QK]) -> i32 {
    a.iter().zip(b).map(|(x, y)| x * *y as i32).sum()
}

impl WeightBlock for BlockQ4_0 {
    const BYTES: usize = 18;
    const ZERO: Self = Self { d: 0, qs: [0; 16] };
    fn dequantize(&self) -> [f32; QK] {
        let d = h(self.d);
        nibbles(&self.qs).map(|q| d * (q - 8) as f32)
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let q = nibbles(&w.qs).map(|q| q - 8);
                h(w.d) * a.d * idot(&q, &a.qs) as f32
            })
            .sum()
    }
}

impl WeightBlock for BlockQ4_1 {
    const BYTES: usize = 20;
    const ZERO: Self = Self {
        d: 0,
        m: 0,
        qs: [0; 16],
    };
    fn dequantize(&self) -> [f32; QK] {
        let (d, m) = (h(self.d), h(self.m));
        nibbles(&self.qs).map(|q| d * q as f32 + m)
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| h(w.d) * a.d * idot(&nibbles(&w.qs), &a.qs) as f32 + h(w.m) * a.s)
            .sum()
    }
}

impl BlockQ5_0 {
    fn values(&self) -> [i32; QK] {
        let qh = u32::from_le_bytes(self.qh);
        let mut v = nibbles(&self.qs);
        for (j, x) in v.iter_mut().enumerate() {
            *x = (*x | ((((qh >> j) & 1) as i32) << 4)) - 16;
        }
        v
    }
}

impl WeightBlock for BlockQ5_0 {
    const BYTES: usize = 22;
    const ZERO: Self = Self {
        d: 0,
        qh: [0; 4],
        qs: [0; 16],
    };
    fn dequantize(&self) -> [f32; QK] {
        let d = h(self.d);
        self.values().map(|q| d * q as f32)
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| h(w.d) * a.d * idot(&w.values(), &a.qs) as f32)
            .sum()
    }
}

impl WeightBlock for BlockQ8_0 {
    const BYTES: usize = 34;
    const ZERO: Self = Self { d: 0, qs: [0; QK] };
    fn dequantize(&self) -> [f32; QK] {
        let d = h(self.d);
        self.qs.map(|q| d * q as f32)
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let q = w.qs.map(|q| q as i32);
                h(w.d) * a.d * idot(&q, &a.qs) as f32
            })
            .sum()
    }
}
