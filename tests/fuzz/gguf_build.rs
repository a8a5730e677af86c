//! Writes GGUF files byte by byte for the fuzz targets: a small valid model header with a
//! real byte-level BPE tokenizer, a chat template and a few tensors of several types, and
//! the position of every length, count and type field written, so that mutations can aim
//! hostile values at exactly those fields.

/// A metadata value, with every GGUF value type.
#[derive(Clone, Debug)]
pub enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    /// The raw byte, so that values other than 0 and 1 can be written.
    Bool(u8),
    Str(Vec<u8>),
    /// Element type tag and elements (written as given, even if they disagree).
    Arr(u32, Vec<V>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl V {
    pub fn str(s: &str) -> Self {
        V::Str(s.as_bytes().to_vec())
    }

    pub fn strs<S: AsRef<str>>(items: &[S]) -> Self {
        V::Arr(8, items.iter().map(|s| V::str(s.as_ref())).collect())
    }

    /// The GGUF type tag of this value.
    pub fn tag(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }
}

/// One tensor: name, dims (innermost first, as stored), ggml type id, data.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

/// What kind of field sits at a recorded offset, so a mutation writes a value of its width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// A u64 length or count (string length, array length, tensor and metadata counts).
    Len,
    /// A u32 type tag (value type, array element type, ggml tensor type) or dim count.
    Tag,
    /// A u64 tensor dimension or data offset.
    Dim,
}

/// The bytes of a GGUF file and the offsets of its fields.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub fields: Vec<(usize, Field)>,
}

struct Writer {
    b: Vec<u8>,
    fields: Vec<(usize, Field)>,
}

impl Writer {
    fn u32(&mut self, v: u32, f: Option<Field>) {
        if let Some(f) = f {
            self.fields.push((self.b.len(), f));
        }
        self.b.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64, f: Option<Field>) {
        if let Some(f) = f {
            self.fields.push((self.b.len(), f));
        }
        self.b.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &[u8]) {
        self.u64(s.len() as u64, Some(Field::Len));
        self.b.extend_from_slice(s);
    }

    fn value(&mut self, v: &V) {
        match v {
            V::U8(x) | V::Bool(x) => self.b.push(*x),
            V::I8(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::U16(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::I16(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::U32(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::I32(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::F32(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::Str(s) => self.string(s),
            V::Arr(tag, items) => {
                self.u32(*tag, Some(Field::Tag));
                self.u64(items.len() as u64, Some(Field::Len));
                for it in items {
                    self.value(it);
                }
            }
            V::U64(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::I64(x) => self.b.extend_from_slice(&x.to_le_bytes()),
            V::F64(x) => self.b.extend_from_slice(&x.to_le_bytes()),
        }
    }
}

/// Encodes a GGUF v3 file with data aligned to 32 bytes.
pub fn encode(meta: &[(Vec<u8>, V)], tensors: &[Tensor]) -> Encoded {
    let mut w = Writer {
        b: Vec::new(),
        fields: Vec::new(),
    };
    w.b.extend_from_slice(b"GGUF");
    w.u32(3, Some(Field::Tag));
    w.u64(tensors.len() as u64, Some(Field::Len));
    w.u64(meta.len() as u64, Some(Field::Len));
    for (k, v) in meta {
        w.string(k);
        w.u32(v.tag(), Some(Field::Tag));
        w.value(v);
    }
    let mut offset = 0u64;
    for t in tensors {
        w.string(t.name.as_bytes());
        w.u32(t.dims.len() as u32, Some(Field::Tag));
        for &d in &t.dims {
            w.u64(d, Some(Field::Dim));
        }
        w.u32(t.ty, Some(Field::Tag));
        w.u64(offset, Some(Field::Dim));
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    while !w.b.len().is_multiple_of(32) {
        w.b.push(0);
    }
    for t in tensors {
        w.b.extend_from_slice(&t.data);
        while !w.b.len().is_multiple_of(32) {
            w.b.push(0);
        }
    }
    Encoded {
        bytes: w.b,
        fields: w.fields,
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the others
/// are shifted to code points from 256 up.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b)
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap()
            }
        })
        .collect()
}

/// Special tokens of the tiny vocabulary (control tokens, type 3).
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Merges of the tiny vocabulary, in byte-level spelling (`Ġ` is a space).
const MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("Ã", "©"),
    ("Ġ", "Ġ"),
];

/// The metadata of a small valid model: byte-level BPE over all 256 bytes plus a few
/// merges and control tokens, the ChatML template, and values of every type.
pub fn tiny_meta() -> Vec<(Vec<u8>, V)> {
    let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    for (a, b) in MERGES {
        tokens.push(format!("{a}{b}"));
    }
    let mut types = vec![V::I32(1); tokens.len()];
    for s in SPECIALS {
        tokens.push(s.to_string());
        types.push(V::I32(3));
    }
    let merges: Vec<String> = MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let n = tokens.len() as u32;
    let kv = |k: &str, v: V| (k.as_bytes().to_vec(), v);
    vec![
        kv("general.architecture", V::str("llama")),
        kv("general.name", V::str("fuzz-tiny")),
        kv("general.alignment", V::U32(32)),
        kv("llama.context_length", V::U32(64)),
        kv("llama.embedding_length", V::U64(32)),
        kv("llama.feed_forward_length", V::U32(32)),
        kv("llama.block_count", V::U16(1)),
        kv("llama.attention.head_count", V::U8(2)),
        kv("llama.attention.head_count_kv", V::I8(1)),
        kv("llama.rope.freq_base", V::F32(10000.0)),
        kv("llama.attention.layer_norm_rms_epsilon", V::F64(1e-5)),
        kv("fuzz.i16", V::I16(-3)),
        kv("fuzz.i64", V::I64(-1)),
        kv("fuzz.nested", V::Arr(9, vec![V::Arr(0, vec![V::U8(1)])])),
        kv("tokenizer.ggml.model", V::str("gpt2")),
        kv("tokenizer.ggml.pre", V::str("smollm")),
        kv("tokenizer.ggml.tokens", V::strs(&tokens)),
        kv("tokenizer.ggml.token_type", V::Arr(5, types)),
        kv("tokenizer.ggml.merges", V::strs(&merges)),
        kv("tokenizer.ggml.bos_token_id", V::U32(n - 3)),
        kv("tokenizer.ggml.eos_token_id", V::U32(n - 1)),
        kv("tokenizer.ggml.add_bos_token", V::Bool(0)),
        kv(
            "tokenizer.chat_template",
            V::str(include_str!("../../src/engine/templates/chatml.jinja")),
        ),
    ]
}

/// Bytes of `n` f32 values, small and varied.
fn f32s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (((i % 17) as f32 - 8.0) * 0.01).to_le_bytes())
        .collect()
}

/// Bytes of `n` f16 values (0.01 and -0.01 alternating).
fn f16s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| if i % 2 == 0 { 0x211Fu16 } else { 0xA11F }.to_le_bytes())
        .collect()
}

/// Bytes of `n` Q8_0 values: blocks of a 0.01 f16 scale and 32 signed bytes.
fn q8_0s(n: usize) -> Vec<u8> {
    (0..n / 32)
        .flat_map(|b| {
            let mut block = 0x211Fu16.to_le_bytes().to_vec();
            block.extend((0..32).map(|i| ((i * 5 + b) % 31) as u8));
            block
        })
        .collect()
}

/// Tensors of a complete one-layer Llama (32 wide, 2 query heads, 1 KV head) in F32,
/// F16 and Q8_0, plus one Q4_K tensor no layer uses.
pub fn tiny_tensors() -> Vec<Tensor> {
    let vocab = byte_chars().len() + MERGES.len() + SPECIALS.len();
    let t = |name: &str, dims: &[u64], ty: u32| {
        let n = dims.iter().product::<u64>() as usize;
        let data = match ty {
            0 => f32s(n),
            1 => f16s(n),
            8 => q8_0s(n),
            _ => (0..n / 256 * 144).map(|i| (i * 7) as u8).collect(),
        };
        Tensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        }
    };
    vec![
        t("token_embd.weight", &[32, vocab as u64], 8),
        t("output_norm.weight", &[32], 0),
        t("blk.0.attn_norm.weight", &[32], 0),
        t("blk.0.attn_q.weight", &[32, 32], 8),
        t("blk.0.attn_k.weight", &[32, 16], 1),
        t("blk.0.attn_v.weight", &[32, 16], 0),
        t("blk.0.attn_output.weight", &[32, 32], 8),
        t("blk.0.ffn_norm.weight", &[32], 0),
        t("blk.0.ffn_gate.weight", &[32, 32], 8),
        t("blk.0.ffn_up.weight", &[32, 32], 1),
        t("blk.0.ffn_down.weight", &[32, 32], 0),
        t("fuzz.q4k", &[256], 12),
    ]
}

/// Names of the tensors of [`tiny_tensors`].
pub const TENSOR_NAMES: [&str; 12] = [
    "token_embd.weight",
    "output_norm.weight",
    "blk.0.attn_norm.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.attn_v.weight",
    "blk.0.attn_output.weight",
    "blk.0.ffn_norm.weight",
    "blk.0.ffn_gate.weight",
    "blk.0.ffn_up.weight",
    "blk.0.ffn_down.weight",
    "fuzz.q4k",
];

/// The small valid model file.
pub fn tiny() -> Encoded {
    encode(&tiny_meta(), &tiny_tensors())
}

/// The metadata of a SentencePiece-style (`llama`) vocabulary as Gemma stores it: byte
/// fallback tokens, `▁` for spaces, scored pieces and turn markers.
pub fn tiny_spm_meta() -> Vec<(Vec<u8>, V)> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![V::I32(2), V::I32(3), V::I32(3)];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(V::I32(6));
    }
    let pieces = [
        "▁", "t", "h", "e", "a", "n", "d", "é", "▁t", "he", "▁the", "an", "▁an", "▁and", "▁▁",
    ];
    for p in pieces {
        tokens.push(p.to_string());
        types.push(V::I32(1));
    }
    for s in ["<start_of_turn>", "<end_of_turn>"] {
        tokens.push(s.to_string());
        types.push(V::I32(3));
    }
    let scores: Vec<V> = (0..tokens.len()).map(|i| V::F32(-(i as f32))).collect();
    let kv = |k: &str, v: V| (k.as_bytes().to_vec(), v);
    vec![
        kv("general.architecture", V::str("gemma3")),
        kv("tokenizer.ggml.model", V::str("llama")),
        kv("tokenizer.ggml.tokens", V::strs(&tokens)),
        kv("tokenizer.ggml.token_type", V::Arr(5, types)),
        kv("tokenizer.ggml.scores", V::Arr(6, scores)),
        kv("tokenizer.ggml.unknown_token_id", V::U32(0)),
        // As in Gemma 3: no space is prepended (with one, llama.cpp and pathos also put a
        // space after every special token, and text would not round-trip).
        kv("tokenizer.ggml.add_space_prefix", V::Bool(0)),
        kv("tokenizer.ggml.bos_token_id", V::U32(1)),
        kv("tokenizer.ggml.eos_token_id", V::U32(2)),
    ]
}
