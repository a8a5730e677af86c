//! Inputs the fuzz targets found, pinned as plain tests named after the bug.

use pathos::engine::gguf::GgufFile;
use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::ResolvedModel;

use crate::gguf_build::{self, V};

/// Writes the tiny model with `extra` metadata entries, which replace earlier ones.
fn tiny_with(extra: &[(&str, V)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let mut meta = gguf_build::tiny_meta();
    meta.extend(
        extra
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone())),
    );
    let enc = gguf_build::encode(&meta, &gguf_build::tiny_tensors());
    std::fs::write(&path, enc.bytes).unwrap();
    (dir, path)
}

fn load_error(path: &std::path::Path) -> String {
    let resolved = ResolvedModel {
        path: path.to_path_buf(),
        entry: None,
    };
    match Model::load(&resolved, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// candle divides by `general.alignment`; 0 panicked inside `GgufFile::open`.
#[test]
fn alignment_zero_is_an_error_not_a_panic() {
    for v in [V::U32(0), V::U8(0), V::I16(0)] {
        let (_d, p) = tiny_with(&[("general.alignment", v)]);
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(e.contains("`general.alignment` is 0"), "{e}");
    }
    // A later valid entry replaces the 0, as in candle's map: the file opens.
    let (_d, p) = tiny_with(&[
        ("general.alignment", V::U32(0)),
        ("general.alignment", V::U32(32)),
    ]);
    GgufFile::open(&p).unwrap();
}

/// A huge `block_count` allocated per-layer settings before any tensor was read:
/// capacity overflow panics, or an abort when the allocation failed.
#[test]
fn huge_block_count_is_an_error_not_an_abort() {
    for n in [u64::MAX, 1 << 40, 13] {
        let (_d, p) = tiny_with(&[("llama.block_count", V::U64(n))]);
        let e = load_error(&p);
        assert!(e.contains(&format!("{n} layers declared")), "{e}");
    }
}

/// A head size in the metadata that the weights do not have sized the RoPE tables
/// (`key_length` 2^40 asked for terabytes) and broke the forward pass.
#[test]
fn attention_shape_disagreeing_with_weights_is_an_error() {
    for (k, v) in [
        ("llama.attention.key_length", V::U64(1 << 40)),
        ("llama.attention.key_length", V::U64(u64::MAX / 2)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.embedding_length", V::U32(64)),
        ("llama.feed_forward_length", V::U32(64)),
    ] {
        let (_d, p) = tiny_with(&[(k, v)]);
        let e = load_error(&p);
        assert!(
            e.contains("the metadata implies") || e.contains("impossible attention shape"),
            "{k}: {e}"
        );
    }
}

/// After an invalid byte joined a run of byte-fallback tokens whose start was already
/// sent, the streaming decoder never found its place again and dropped everything
/// after it (SentencePiece vocabularies: Gemma). A run of byte tokens is now held until
/// it ends, so the streamed text is the decoded text, U+FFFD for U+FFFD.
#[test]
fn stream_decoder_keeps_text_after_an_invalid_byte_run() {
    let t = crate::tokenizer::tiny_spm();
    let (nul, stray, a) = (3, 3 + 0x80, t.token_id("a").unwrap());
    assert_eq!(t.token_text(nul).as_deref(), Some("<0x00>"));
    let ids = [nul, stray, a, a];
    assert_eq!(t.decode(&ids).unwrap(), "\u{FFFD}\u{FFFD}aa");
    let text = crate::tokenizer::streamed(t, &ids).unwrap();
    assert_eq!(text, "\u{FFFD}\u{FFFD}aa");
}
