//! The K-quant types the supported models use for a fifth of their weights (Q4_K for
//! attention outputs and feed-forward down projections, Q6_K for the other half of the
//! latter), taken apart into 32-element blocks at load time so that the same grouped
//! kernels multiply them.
//!
//! A K-quant super-block holds 256 weights with one `f16` scale and small integer
//! sub-block scales. Each 32-weight slice becomes a block whose scales give the file's
//! values exactly, so products are those of the file. Q4_K slices keep `d · sc` in
//! `f32` (6 bits per weight instead of the file's 4.5). Q6_K slices keep the super-block's
//! `f16` scale and their two `i8` sub-block scales, multiplied in the kernel (exact in
//! `f32`), and their 6-bit values as nibbles plus two high bits once grouped: 7 bits
//! per weight instead of the file's 6.6.

use half::f16;

use super::blocks::{ActBlock, QK, WeightBlock};

/// Weights per super-block.
pub const QK_K: usize = 256;
/// File bytes of a Q4_K super-block: `d`, `dmin`, 12 scale bytes, 128 nibble bytes.
pub const Q4K_BYTES: usize = 144;
/// File bytes of a Q6_K super-block: 128 low-nibble bytes, 64 high-bit bytes, 16
/// scales, `d`.
pub const Q6K_BYTES: usize = 210;

/// 32 weights of a Q4_K super-block: `d * q + m`, `q` in 0..16, nibbles laid out as
/// Q4_1's (byte `j` holds elements `j` and `j + 16`).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ4K32 {
    pub d: f32,
    pub m: f32,
    pub qs: [u8; 16],
}

/// 32 weights of a Q6_K super-block: `d * sc[j / 16] * (q[j] - 32)`, `q` in 0..64,
/// `d` the super-block's `f16` scale (bits).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ6K32 {
    pub d: u16,
    pub sc: [i8; 2],
    pub q: [u8; QK],
}

impl BlockQ6K32 {
    /// Half `h`'s scale, `d · sc[h]`: exact in `f32` (11 by 8 significant bits).
    pub fn scale(&self, h: usize) -> f32 {
        f16::from_bits(self.d).to_f32() * f32::from(self.sc[h])
    }
}

fn h(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Sub-block `j`'s 6-bit scale and minimum, packed in 12 bytes.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The eight 32-weight blocks of one Q4_K super-block (`bytes`: 144).
pub fn split_q4k(bytes: &[u8], out: &mut [BlockQ4K32]) {
    let (d, dmin) = (h(&bytes[0..2]), h(&bytes[2..4]));
    let scales = &bytes[4..16];
    let qs = &bytes[16..144];
    for (j, b) in out.iter_mut().enumerate().take(QK_K / QK) {
        // Sub-blocks 2c and 2c + 1 are the low and high nibbles of bytes 32c..32c + 32.
        let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let v: [u8; QK] = std::array::from_fn(|i| {
            if j % 2 == 0 {
                chunk[i] & 0xf
            } else {
                chunk[i] >> 4
            }
        });
        let (sc, m) = scale_min(j, scales);
        *b = BlockQ4K32 {
            d: d * f32::from(sc),
            m: -(dmin * f32::from(m)),
            qs: std::array::from_fn(|i| v[i] | (v[i + 16] << 4)),
        };
    }
}

/// The eight 32-weight blocks of one Q6_K super-block (`bytes`: 210).
pub fn split_q6k(bytes: &[u8], out: &mut [BlockQ6K32]) {
    let (ql, qh) = (&bytes[0..128], &bytes[128..192]);
    let scales = &bytes[192..208];
    let d = u16::from_le_bytes([bytes[208], bytes[209]]);
    let mut q = [0u8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let q = &mut q[128 * half..];
        for l in 0..32 {
            q[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
            q[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    for (j, b) in out.iter_mut().enumerate().take(QK_K / QK) {
        *b = BlockQ6K32 {
            d,
            sc: [scales[2 * j] as i8, scales[2 * j + 1] as i8],
            q: q[QK * j..QK * (j + 1)].try_into().expect("32 values"),
        };
    }
}

/// Splits a matrix of `n` rows × `k` weights stored as `super_bytes`-byte super-blocks
/// into 32-weight blocks, row after row. `None` when the byte count does not match.
pub fn split_matrix<B: WeightBlock>(
    bytes: &[u8],
    n: usize,
    k: usize,
    super_bytes: usize,
    split: fn(&[u8], &mut [B]),
) -> Option<Vec<B>> {
    if !k.is_multiple_of(QK_K) || bytes.len() != n.checked_mul(k / QK_K)? * super_bytes {
        return None;
    }
    let mut out = vec![B::ZERO; n * k / QK];
    for (sb, blocks) in bytes
        .chunks_exact(super_bytes)
        .zip(out.chunks_exact_mut(QK_K / QK))
    {
        split(sb, blocks);
    }
    Some(out)
}

impl WeightBlock for BlockQ4K32 {
    const BYTES: usize = 24;
    const ZERO: Self = Self {
        d: 0.0,
        m: 0.0,
        qs: [0; 16],
    };
    fn dequantize(&self) -> [f32; QK] {
        std::array::from_fn(|i| {
            let q = if i < 16 {
                self.qs[i] & 0xf
            } else {
                self.qs[i - 16] >> 4
            };
            self.d * f32::from(q) + self.m
        })
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let isum: i32 = (0..16)
                    .map(|i| {
                        i32::from(w.qs[i] & 0xf) * i32::from(a.qs[i])
                            + i32::from(w.qs[i] >> 4) * i32::from(a.qs[i + 16])
                    })
                    .sum();
                w.d * a.d * isum as f32 + w.m * (a.d * a.sum as f32)
            })
            .sum()
    }
}

impl WeightBlock for BlockQ6K32 {
    const BYTES: usize = 36;
    const ZERO: Self = Self {
        d: 0,
        sc: [0; 2],
        q: [0; QK],
    };
    fn dequantize(&self) -> [f32; QK] {
        std::array::from_fn(|i| self.scale(i / 16) * (i32::from(self.q[i]) - 32) as f32)
    }
    fn dot_scalar(w: &[Self], a: &[ActBlock]) -> f32 {
        w.iter()
            .zip(a)
            .map(|(w, a)| {
                let half = |h: usize| -> i32 {
                    (16 * h..16 * h + 16)
                        .map(|i| (i32::from(w.q[i]) - 32) * i32::from(a.qs[i]))
                        .sum()
                };
                a.d * (w.scale(0) * half(0) as f32 + w.scale(1) * half(1) as f32)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    #[test]
    fn split_blocks_dequantize_like_candle() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (3, 512), &dev).unwrap();
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let t = QTensor::quantize(&w, dtype).unwrap();
            let want: Vec<f32> = t
                .dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let data = t.data().unwrap();
            let got: Vec<f32> = match dtype {
                GgmlDType::Q4K => split_matrix(&data, 3, 512, Q4K_BYTES, split_q4k)
                    .unwrap()
                    .iter()
                    .flat_map(|b| b.dequantize())
                    .collect(),
                _ => split_matrix(&data, 3, 512, Q6K_BYTES, split_q6k)
                    .unwrap()
                    .iter()
                    .flat_map(|b| b.dequantize())
                    .collect(),
            };
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{dtype:?}: {g} vs {w}"
                );
            }
        }
    }
}
