//! Fuzz targets of the GGUF reader and of everything that reads a GGUF header: the
//! bounds checks of [`GgufFile::open`], the metadata accessors, tensor loading, the
//! tokenizer and chat template built from metadata, and [`Model::load`].

use std::path::{Path, PathBuf};

use candle_core::Device;
use pathos::engine::gguf::GgufFile;
use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::ResolvedModel;
use pathos::engine::template::{ChatTemplate, Message};
use pathos::engine::tokenizer::Tokenizer;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use crate::gguf_build::{self, Encoded, Field, TENSOR_NAMES, V};
use crate::harness::fuzz;

/// A scratch directory for the file each case writes, in memory when /dev/shm exists
/// (the parser takes a path), and fresh so that no `tokenizer.json` sits beside it.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("creating a scratch directory");
    let path = dir.path().join("model.gguf");
    (dir, path)
}

/// Fails the case unless `e` reads as an error message: one non-empty line.
fn clean(what: &str, e: &pathos::engine::Error) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty(), "{what}: empty error message");
    Ok(())
}

/// Metadata keys whose values pathos reads.
const KEYS: [&str; 16] = [
    "general.architecture",
    "general.name",
    "general.alignment",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
];

/// Writes `bytes` to `path` and reads them the way pathos does, all the way to a loaded
/// model; every step must return `Ok` or an error, and nothing may panic.
fn read_everything(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).expect("writing the scratch file");
    let g = match GgufFile::open(path) {
        Ok(g) => g,
        Err(e) => return clean("open", &e),
    };
    if let Err(e) = g.info() {
        clean("info", &e)?;
    }
    for k in KEYS {
        let _ = (g.str(k), g.u64(k), g.f64(k), g.opt_bool(k), g.array_len(k));
        let _ = (g.str_array(k), g.int_array(k), g.f32_array(k));
    }
    for name in TENSOR_NAMES {
        if g.has_tensor(name)
            && let Err(e) = g.tensor(name, &Device::Cpu)
        {
            clean("tensor", &e)?;
        }
    }
    match Tokenizer::from_gguf(&g) {
        Ok(t) => {
            let ids = t.encode("Hi <|im_start|>the café\n", true);
            if let Ok(ids) = ids {
                let _ = t.decode(&ids);
            }
            let _ = t.token_bytes();
            let _ = (t.bos_text(), t.eos_text(), t.vocab_size());
        }
        Err(e) => clean("tokenizer", &e)?,
    }
    match ChatTemplate::new(g.opt_str("tokenizer.chat_template"), "", "", false) {
        Ok(t) => {
            if let Err(e) = t.render(&[Message::new("user", "hi")], true) {
                clean("template", &e)?;
            }
        }
        Err(e) => clean("template", &e)?,
    }
    drop(g);
    let resolved = ResolvedModel {
        path: path.to_path_buf(),
        entry: None,
    };
    if let Err(e) = Model::load(&resolved, &LoadOptions::default()) {
        clean("load", &e)?;
    }
    Ok(())
}

/// Random bytes, most of them after a GGUF magic and version so that they reach the
/// header parser. Defends against panics and unbounded reads on files that are not GGUF
/// at all or whose header is noise.
#[test]
fn random_bytes() {
    let (_dir, path) = scratch();
    let header = prop_oneof![
        Just(Vec::new()),
        (1u32..5).prop_map(|v| [&b"GGUF"[..], &v.to_le_bytes()].concat()),
        (0u64..4, 0u64..4).prop_map(|(t, m)| {
            [
                &b"GGUF"[..],
                &3u32.to_le_bytes(),
                &t.to_le_bytes(),
                &m.to_le_bytes(),
            ]
            .concat()
        }),
    ];
    let input = (header, prop::collection::vec(any::<u8>(), 0..2048))
        .prop_map(|(h, rest)| [h, rest].concat());
    fuzz("gguf::random_bytes", input, |bytes| {
        read_everything(&path, bytes)
    });
}

/// A change to the bytes of a valid file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flips one bit.
    Flip(Index, u8),
    /// Overwrites one byte.
    Set(Index, u8),
    /// Cuts the file short.
    Truncate(Index),
    /// Inserts bytes.
    Insert(Index, Vec<u8>),
    /// Removes up to this many bytes.
    Remove(Index, u8),
    /// Writes a hostile value into a length, count, type tag, dimension or offset field.
    Field(Index, u64),
}

fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 62),
        Just(1 << 32),
        Just(u32::MAX as u64),
        Just(1 << 30),
        Just((1 << 30) + 1),
        0u64..64,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1u8..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::Field(i, v)),
        (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::Field(i, v)),
        (any::<Index>(), hostile_u64()).prop_map(|(i, v)| Mutation::Field(i, v)),
    ]
}

fn apply(enc: &Encoded, muts: &[Mutation]) -> Vec<u8> {
    let mut b = enc.bytes.clone();
    for m in muts {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Flip(i, bit) => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
            }
            Mutation::Set(i, v) => {
                let at = i.index(b.len());
                b[at] = *v;
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len())),
            Mutation::Insert(i, bytes) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i.index(b.len());
                let end = (at + *n as usize).min(b.len());
                b.drain(at..end);
            }
            Mutation::Field(i, v) => {
                let (at, kind) = enc.fields[i.index(enc.fields.len())];
                let width = if kind == Field::Tag { 4 } else { 8 };
                let bytes = v.to_le_bytes();
                if at + width <= b.len() {
                    b[at..at + width].copy_from_slice(&bytes[..width]);
                }
            }
        }
    }
    b
}

/// A metadata value of any type, nested arrays included, with integer values biased to
/// the sizes that break allocations (for keys such as `llama.block_count`).
fn value() -> impl Strategy<Value = V> {
    let leaf = prop_oneof![
        hostile_u64().prop_map(V::U64),
        hostile_u64().prop_map(|v| V::U32(v as u32)),
        any::<i32>().prop_map(V::I32),
        any::<u8>().prop_map(V::U8),
        any::<i8>().prop_map(V::I8),
        any::<u16>().prop_map(V::U16),
        any::<i16>().prop_map(V::I16),
        any::<i64>().prop_map(V::I64),
        any::<f32>().prop_map(V::F32),
        any::<f64>().prop_map(V::F64),
        any::<u8>().prop_map(V::Bool),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(V::Str),
        "[a-z<>|{}% ]{0,12}".prop_map(|s| V::str(&s)),
    ];
    let arrays = leaf.clone().prop_recursive(3, 24, 6, |inner| {
        (0u32..14, prop::collection::vec(inner, 0..6)).prop_map(|(tag, items)| V::Arr(tag, items))
    });
    prop_oneof![3 => leaf, 1 => arrays]
}

/// Extra metadata entries, written after the valid ones so that they replace them.
fn extra_meta() -> impl Strategy<Value = Vec<(Vec<u8>, V)>> {
    let key = prop_oneof![
        4 => prop::sample::select(&KEYS[..]).prop_map(|k| k.as_bytes().to_vec()),
        1 => prop::sample::select(&[
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.scores",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.add_space_prefix",
        ][..])
        .prop_map(|k| k.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec((key, value()), 0..3)
}

/// A valid one-layer model with hostile metadata entries added and bytes changed:
/// flipped bits, truncations, huge string lengths and array counts, bad type tags,
/// impossible tensor dimensions and offsets. Defends against panics, absurd allocations
/// and hangs in the header parser and in everything built from the header.
#[test]
fn mutated() {
    let (_dir, path) = scratch();
    let base = gguf_build::tiny();
    let input = (extra_meta(), prop::collection::vec(mutation(), 0..4));
    fuzz("gguf::mutated", input, |(extra, muts)| {
        let bytes = if extra.is_empty() {
            apply(&base, muts)
        } else {
            let mut meta = gguf_build::tiny_meta();
            meta.extend(extra.iter().cloned());
            apply(
                &gguf_build::encode(&meta, &gguf_build::tiny_tensors()),
                muts,
            )
        };
        read_everything(&path, &bytes)
    });
}

/// The unmutated tiny model loads: without this, the mutations above would only ever
/// exercise the first error path.
#[test]
fn tiny_model_is_valid() {
    let (_dir, path) = scratch();
    std::fs::write(&path, gguf_build::tiny().bytes).unwrap();
    let resolved = ResolvedModel {
        path: path.clone(),
        entry: None,
    };
    let m = Model::load(&resolved, &LoadOptions::default()).unwrap();
    assert_eq!(m.tokenizer.vocab_size(), 267);
    let g = GgufFile::open(&path).unwrap();
    for name in TENSOR_NAMES {
        g.tensor(name, &Device::Cpu).unwrap();
    }
}
