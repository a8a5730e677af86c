//! The GGUF header, parsed where it lies in the mapped file.
//!
//! A model's header is mostly its vocabulary: tens of thousands to a quarter of a
//! million token strings, scores, types and merges. Parsing them into owned values (one
//! allocation per string) cost 20 ms of SmolLM2's start-up and 33 MB of memory for
//! Gemma 3's, and the tokenizer then copied them once more. Here only scalars and keys
//! are decoded; strings and arrays are kept as byte ranges of the file and read when
//! asked for, borrowing from the map.

use std::collections::HashMap;
use std::ops::Range;

/// Largest number of dimensions a tensor may have (as ggml).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: u32 = 64;
/// Alignment of the tensor data when `general.alignment` does not say.
const DEFAULT_ALIGNMENT: u64 = 32;

/// Type tags of GGUF metadata values.
pub(super) mod tag {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Bytes of a fixed-size value of type `ty` (`None` for strings, arrays and unknown
/// tags).
fn fixed_size(ty: u32) -> Option<usize> {
    match ty {
        tag::U8 | tag::I8 | tag::BOOL => Some(1),
        tag::U16 | tag::I16 => Some(2),
        tag::U32 | tag::I32 | tag::F32 => Some(4),
        tag::U64 | tag::I64 | tag::F64 => Some(8),
        _ => None,
    }
}

/// One metadata value: scalars decoded, strings and arrays as ranges of the file.
#[derive(Debug, Clone)]
pub(super) enum Meta {
    /// A number or boolean: its type tag and little-endian bits, zero-extended.
    Scalar { ty: u32, bits: u64 },
    /// A string's bytes (not yet checked to be UTF-8).
    Str(Range<usize>),
    /// `len` elements of type `ty`, laid out in `body`.
    Array {
        ty: u32,
        len: usize,
        body: Range<usize>,
    },
}

impl Meta {
    /// The value as a signed integer, when it is an integer of any width.
    pub fn int(&self) -> Option<i128> {
        match *self {
            Meta::Scalar { ty, bits } => scalar_int(ty, bits),
            _ => None,
        }
    }

    /// The value as a float, when it is an `f32` or `f64`.
    pub fn float(&self) -> Option<f64> {
        match *self {
            Meta::Scalar { ty, bits } => scalar_float(ty, bits),
            _ => None,
        }
    }
}

/// A scalar's value as a signed integer, when its type is an integer of any width.
pub(super) fn scalar_int(ty: u32, bits: u64) -> Option<i128> {
    Some(match ty {
        tag::U8 | tag::U16 | tag::U32 | tag::U64 => bits as i128,
        tag::I8 => bits as u8 as i8 as i128,
        tag::I16 => bits as u16 as i16 as i128,
        tag::I32 => bits as u32 as i32 as i128,
        tag::I64 => bits as i64 as i128,
        _ => return None,
    })
}

/// A scalar's value as a float, when its type is `f32` or `f64`.
pub(super) fn scalar_float(ty: u32, bits: u64) -> Option<f64> {
    match ty {
        tag::F32 => Some(f32::from_bits(bits as u32) as f64),
        tag::F64 => Some(f64::from_bits(bits)),
        _ => None,
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone)]
pub(super) struct TensorEntry {
    /// The ggml type id (checked to be one candle loads).
    pub dtype: candle_core::quantized::GgmlDType,
    /// Dimensions, rows last-but-one (as candle orders them: the file's reversed).
    pub dims: Vec<usize>,
    /// Offset from the start of the tensor data.
    pub offset: u64,
}

/// A parsed header.
#[derive(Debug)]
pub(super) struct Header {
    /// Lengths and counts are `u64` (versions 2 and 3), not `u32` (version 1).
    pub wide: bool,
    pub metadata: HashMap<String, Meta>,
    pub tensors: HashMap<String, TensorEntry>,
    /// Where the tensor data starts in the file.
    pub data_offset: u64,
}

/// Why a header could not be parsed.
#[derive(Debug)]
pub(super) enum HeaderError {
    /// The file ends inside the header (what was being read).
    Truncated(String),
    /// The header is malformed.
    Corrupt(String),
    /// A tensor has a type candle cannot load: its name and the type id.
    UnsupportedType { tensor: String, id: u32 },
}

/// A cursor over the file's bytes that reports where it ran out.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Lengths and counts are `u32` in version 1, `u64` later.
    wide: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], HeaderError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| HeaderError::Truncated(format!("header ends early, in {what}")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, HeaderError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, HeaderError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A length or count, as a `usize` no larger than the bytes left could hold (each
    /// element takes at least `min_bytes`), so a lying header fails here instead of
    /// sizing an allocation.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, HeaderError> {
        let n = if self.wide {
            self.u64(what)?
        } else {
            u64::from(self.u32(what)?)
        };
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            return Err(HeaderError::Truncated(format!(
                "header ends early: {what} says {n}, more than the {left} bytes left hold"
            )));
        }
        Ok(n as usize)
    }

    /// A string's byte range.
    fn string(&mut self, what: &str) -> Result<Range<usize>, HeaderError> {
        let n = self.count(1, what)?;
        let start = self.at;
        self.take(n, what)?;
        Ok(start..start + n)
    }

    /// Moves past one value of type `ty`, returning it.
    fn value(&mut self, ty: u32, depth: u32, what: &str) -> Result<Meta, HeaderError> {
        if let Some(size) = fixed_size(ty) {
            let b = self.take(size, what)?;
            let mut bits = [0u8; 8];
            bits[..size].copy_from_slice(b);
            return Ok(Meta::Scalar {
                ty,
                bits: u64::from_le_bytes(bits),
            });
        }
        match ty {
            tag::STRING => Ok(Meta::Str(self.string(what)?)),
            tag::ARRAY if depth < MAX_DEPTH => {
                let inner = self.u32(what)?;
                // Each element takes at least its fixed size, or a length prefix.
                let prefix = if self.wide { 8 } else { 4 };
                let len = self.count(fixed_size(inner).unwrap_or(prefix), what)?;
                let start = self.at;
                match fixed_size(inner) {
                    Some(size) => {
                        self.take(len * size, what)?;
                    }
                    None => {
                        for _ in 0..len {
                            self.value(inner, depth + 1, what)?;
                        }
                    }
                }
                Ok(Meta::Array {
                    ty: inner,
                    len,
                    body: start..self.at,
                })
            }
            tag::ARRAY => Err(HeaderError::Corrupt(format!(
                "`{what}` nests arrays deeper than {MAX_DEPTH}"
            ))),
            _ => Err(HeaderError::Corrupt(format!(
                "`{what}` has unknown value type {ty}"
            ))),
        }
    }
}

/// Parses the header at the start of `bytes` (the whole file).
pub(super) fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
    let mut r = Reader {
        bytes,
        at: 4, // the magic, checked by the caller
        wide: true,
    };
    r.wide = match r.u32("the version")? {
        1 => false,
        2 | 3 => true,
        v => return Err(HeaderError::Corrupt(format!("unknown GGUF version {v}"))),
    };
    let prefix = if r.wide { 8 } else { 4 };
    let n_tensors = r.count(prefix + 4 + 4 + 8, "the tensor count")?;
    let n_kv = r.count(prefix + 4 + 1, "the metadata count")?;
    let mut metadata = HashMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string("a metadata key")?;
        let key = std::str::from_utf8(&bytes[key])
            .map_err(|_| HeaderError::Corrupt("a metadata key is not UTF-8".into()))?
            .to_string();
        let ty = r.u32(&key)?;
        let value = r.value(ty, 0, &key)?;
        metadata.insert(key, value);
    }
    let mut tensors = HashMap::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string("a tensor name")?;
        let name = std::str::from_utf8(&bytes[name])
            .map_err(|_| HeaderError::Corrupt("a tensor name is not UTF-8".into()))?
            .to_string();
        let n_dims = r.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(HeaderError::Corrupt(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = if r.wide {
                r.u64(&name)?
            } else {
                u64::from(r.u32(&name)?)
            };
            dims.push(usize::try_from(d).map_err(|_| {
                HeaderError::Corrupt(format!("tensor `{name}` has an impossible dimension {d}"))
            })?);
        }
        dims.reverse();
        let id = r.u32(&name)?;
        let offset = r.u64(&name)?;
        let Some(dtype) = ggml_dtype(id) else {
            return Err(HeaderError::UnsupportedType { tensor: name, id });
        };
        tensors.insert(
            name,
            TensorEntry {
                dtype,
                dims,
                offset,
            },
        );
    }
    // The alignment as ggml takes it: an unsigned or non-negative integer up to 32 bits;
    // other types are ignored.
    let alignment = match metadata.get("general.alignment") {
        Some(Meta::Scalar { ty, bits })
            if matches!(
                *ty,
                tag::U8 | tag::U16 | tag::U32 | tag::I8 | tag::I16 | tag::I32
            ) =>
        {
            match scalar_int(*ty, *bits) {
                Some(0) => {
                    return Err(HeaderError::Corrupt(
                        "`general.alignment` is 0; tensor data cannot be aligned to it".into(),
                    ));
                }
                Some(a) if a > 0 => a as u64,
                _ => DEFAULT_ALIGNMENT,
            }
        }
        _ => DEFAULT_ALIGNMENT,
    };
    let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
    Ok(Header {
        wide: r.wide,
        metadata,
        tensors,
        data_offset,
    })
}

/// The candle type of a ggml type id, for the types candle loads.
fn ggml_dtype(id: u32) -> Option<candle_core::quantized::GgmlDType> {
    use candle_core::quantized::GgmlDType as T;
    Some(match id {
        0 => T::F32,
        1 => T::F16,
        2 => T::Q4_0,
        3 => T::Q4_1,
        6 => T::Q5_0,
        7 => T::Q5_1,
        8 => T::Q8_0,
        9 => T::Q8_1,
        10 => T::Q2K,
        11 => T::Q3K,
        12 => T::Q4K,
        13 => T::Q5K,
        14 => T::Q6K,
        15 => T::Q8K,
        30 => T::BF16,
        _ => return None,
    })
}

/// The elements of an array of strings, borrowed from `bytes`; `None` when the array
/// holds something else or a string is not UTF-8.
pub(super) fn strings(
    bytes: &[u8],
    len: usize,
    body: Range<usize>,
    wide: bool,
) -> Option<Vec<&str>> {
    let mut r = Reader {
        bytes: &bytes[..body.end],
        at: body.start,
        wide,
    };
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let s = r.string("").ok()?;
        out.push(std::str::from_utf8(&bytes[s]).ok()?);
    }
    Some(out)
}

/// The elements of an array of fixed-size numbers, each decoded by `f` from its type
/// tag and bits.
pub(super) fn numbers<T>(
    bytes: &[u8],
    ty: u32,
    body: Range<usize>,
    f: impl Fn(u32, u64) -> Option<T>,
) -> Option<Vec<T>> {
    let size = fixed_size(ty)?;
    bytes[body]
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            f(ty, u64::from_le_bytes(b))
        })
        .collect()
}
