//! Fuzz targets of the tokenizers pathos builds from GGUF metadata: the tiny byte-level
//! BPE and SentencePiece vocabularies of `gguf_build`, and the real SmolLM2 (byte-level
//! BPE) and Gemma 3 (SentencePiece) tokenizers when those models are in the cache.

use std::sync::OnceLock;

use pathos::engine::gguf::GgufFile;
use pathos::engine::registry::{Manifest, resolve_model};
use pathos::engine::stream_decode::StreamDecoder;
use pathos::engine::tokenizer::Tokenizer;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::gguf_build::{self, SPECIALS};
use crate::harness::fuzz;

fn from_bytes(bytes: &[u8]) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.gguf");
    std::fs::write(&path, bytes).unwrap();
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
}

/// The tiny byte-level BPE tokenizer (all 256 bytes, a few merges, ChatML specials).
pub fn tiny_bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| from_bytes(&gguf_build::tiny().bytes))
}

/// The tiny SentencePiece tokenizer (byte fallback, scored pieces, Gemma turn markers).
pub fn tiny_spm() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| from_bytes(&gguf_build::encode(&gguf_build::tiny_spm_meta(), &[]).bytes))
}

/// A cached manifest model's tokenizer, or `None` (with a note) when it is not cached:
/// fuzzing never downloads.
fn cached(name: &'static str) -> Option<&'static Tokenizer> {
    static SMOL: OnceLock<Option<Tokenizer>> = OnceLock::new();
    static GEMMA: OnceLock<Option<Tokenizer>> = OnceLock::new();
    let cell = if name == "smollm2-135m" {
        &SMOL
    } else {
        &GEMMA
    };
    cell.get_or_init(|| {
        let manifest = Manifest::builtin().unwrap();
        match resolve_model(&manifest, Some(name), true, false) {
            Ok(r) => Some(Tokenizer::from_gguf(&GgufFile::open(&r.path).unwrap()).unwrap()),
            Err(e) => {
                eprintln!("note: {name} is not cached ({e}); its fuzz cases are skipped");
                None
            }
        }
    })
    .as_ref()
}

/// Text that stresses tokenizers: any Unicode, control characters, lone combining marks,
/// long runs of one character, special-token texts and their fragments, mixed scripts.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{1,8}",
        "[\\u{300}-\\u{36f}\\u{20d0}-\\u{20ff}]{1,6}",
        "[ \\t\\n\\r]{1,12}",
        "[0-9]{1,24}",
        "[a-zA-Z' ]{1,24}",
        "[\\u{1F300}-\\u{1FAFF}\\u{200d}\\u{fe0f}]{1,6}",
        "[\\u{4e00}-\\u{9fff}\\u{ac00}-\\u{d7a3}\\u{590}-\\u{6ff}]{1,8}",
        "[\\u{2581}\\u{fffd}\\u{feff}\\u{10ffff}]{1,4}",
        (any::<char>(), 1usize..2048).prop_map(|(c, n)| c.to_string().repeat(n)),
        prop::sample::select(
            &[
                "<|im_start|>",
                "<|im_end|>",
                "<|endoftext|>",
                "<start_of_turn>",
                "<end_of_turn>",
                "<s>",
                "</s>",
                "<unk>",
                "<|im_",
                "|>",
                "<0x41>",
                "'s",
                "'LL",
            ][..]
        )
        .prop_map(str::to_string),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

/// Whether `s` holds text that a SentencePiece vocabulary cannot give back as it was:
/// `▁` is how it writes spaces, and its unknown-token and control texts decode to
/// themselves only when encoded as those tokens.
fn spm_lossy(s: &str) -> bool {
    s.contains('\u{2581}')
}

/// The bytes a byte-level vocabulary has a token for. SmolLM2 has none for 04 06 13 14
/// 16 1D C0 C1 F1 F2 F5–FF: encoding drops them (as llama.cpp does), so text holding
/// those control characters or code points U+40000–U+BFFFF cannot come back unchanged.
fn byte_tokens(t: &Tokenizer) -> [bool; 256] {
    let chars = gguf_build::byte_chars();
    std::array::from_fn(|b| t.token_id(&chars[b].to_string()).is_some())
}

/// Checks `decode(encode(s)) == s`.
fn roundtrip(name: &str, t: &Tokenizer, s: &str) -> Result<(), TestCaseError> {
    let ids = t
        .encode(s, false)
        .map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
    let back = t
        .decode(&ids)
        .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
    prop_assert_eq!(back, s, "{}: ids {:?}", name, ids);
    Ok(())
}

/// Feeds `ids` one by one to a [`StreamDecoder`], then flushes it.
pub fn streamed(t: &Tokenizer, ids: &[u32]) -> pathos::engine::Result<String> {
    let mut d = StreamDecoder::new();
    let mut text = String::new();
    for &id in ids {
        if let Some(delta) = d.push(t, id)? {
            text.push_str(delta);
        }
    }
    text.extend(d.flush(t)?);
    Ok(text)
}

/// The deltas of a [`StreamDecoder`] and its final flush must add up to decoding all
/// the ids at once, invalid UTF-8 and byte-fallback runs included (the decoder replays
/// the tokenizer's own rules on per-token bytes). Out-of-range ids must not panic.
fn stream(t: &Tokenizer, ids: &[u32]) -> Result<(), TestCaseError> {
    let whole = t.decode(ids);
    let text = match streamed(t, ids) {
        Ok(text) => text,
        Err(e) => {
            prop_assert!(
                whole.is_err(),
                "streaming failed ({e}) where decode did not"
            );
            return Ok(());
        }
    };
    let Ok(whole) = whole else { return Ok(()) };
    prop_assert_eq!(text, whole, "ids {:?}", ids);
    Ok(())
}

/// Token ids: mostly in the vocabulary, some just past it, some anywhere in u32.
fn ids(vocab: u32) -> impl Strategy<Value = Vec<u32>> {
    let id = prop_oneof![
        8 => 0..vocab,
        1 => vocab..vocab + 16,
        1 => any::<u32>(),
    ];
    prop::collection::vec(id, 0..48)
}

/// Byte-level BPE (tiny and SmolLM2) encodes any string and decodes it back unchanged,
/// special-token texts included, unless it holds a byte the vocabulary lacks (see
/// [`byte_tokens`]; such strings must still encode and decode). Defends against panics in the pre-tokenizer regexes and
/// the byte mapping, and against text lost or altered on the way through the model.
#[test]
fn bpe_roundtrip() {
    let smol = cached("smollm2-135m").map(|t| (t, byte_tokens(t)));
    assert!(byte_tokens(tiny_bpe()).iter().all(|&b| b));
    fuzz("tokenizer::bpe_roundtrip", text(), |s| {
        roundtrip("tiny", tiny_bpe(), s)?;
        if let Some((t, bytes)) = &smol {
            if s.bytes().all(|b| bytes[b as usize]) {
                roundtrip("smollm2", t, s)?;
            } else {
                let ids = t.encode(s, false);
                let ids = ids.map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
                t.decode(&ids)
                    .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
            }
        }
        Ok(())
    });
}

/// SentencePiece (tiny and Gemma 3) encodes any string without panicking, and decodes
/// it back unchanged unless it contains `▁`, the character that stands for a space.
/// Defends against panics in byte fallback and score-derived merges.
#[test]
fn spm_roundtrip() {
    let gemma = cached("gemma3-270m");
    fuzz("tokenizer::spm_roundtrip", text(), |s| {
        for (name, t) in [("tiny", tiny_spm())]
            .into_iter()
            .chain(gemma.map(|g| ("gemma3", g)))
        {
            if spm_lossy(s) {
                t.encode(s, true)
                    .map_err(|e| TestCaseError::fail(format!("encode failed: {e}")))?;
            } else {
                roundtrip(name, t, s)?;
            }
        }
        Ok(())
    });
}

/// Arbitrary id sequences, out-of-range ids included, decode to `Ok` or an error and
/// stream to the same text as decoding them at once. Defends against panics on ids a
/// client or a corrupt model sends, and against text the streaming decoder drops.
#[test]
fn decode_ids() {
    let smol = cached("smollm2-135m");
    let gemma = cached("gemma3-270m");
    let mut all = vec![tiny_bpe(), tiny_spm()];
    all.extend(smol);
    all.extend(gemma);
    let vocab = all.iter().map(|t| t.vocab_size()).max().unwrap() as u32;
    fuzz("tokenizer::decode_ids", ids(vocab), |ids| {
        for t in &all {
            // Ids past this vocabulary but inside the largest one are out of range here.
            let _ = t.decode(ids);
            stream(t, ids)?;
        }
        Ok(())
    });
}

/// The special texts of the tiny vocabulary are single tokens, so the round trip above
/// also covers the added-token path.
#[test]
fn specials_are_single_tokens() {
    for s in SPECIALS {
        assert_eq!(tiny_bpe().encode(s, false).unwrap().len(), 1, "{s}");
    }
}

/// Every token of the real vocabularies streams to what decoding it gives, alone and
/// after a plain token (the streaming decoder reads per-token bytes, not `tokenizers`;
/// repeated token texts and added tokens must read the same).
#[test]
fn every_token_streams_as_it_decodes() {
    for t in [cached("smollm2-135m"), cached("gemma3-270m")]
        .into_iter()
        .flatten()
    {
        let plain = t.encode("a", false).unwrap()[0];
        for id in 0..t.vocab_size() as u32 + 2 {
            for ids in [&[id][..], &[plain, id]] {
                let whole = t.decode(ids).unwrap();
                assert_eq!(streamed(t, ids).unwrap(), whole, "ids {ids:?}");
            }
        }
    }
}
