//! Generated tokens to text as they arrive, without a heap allocation per token.
//!
//! Decoding a growing window of ids through `tokenizers` twice per token (what the text
//! was, what it is now) cost ~22 allocations per generated token. For the two decoders
//! pathos builds itself, the text of a sequence is a plain function of per-token bytes,
//! so [`TokenPieces`] keeps each token's bytes in one table and [`StreamDecoder`]
//! replays the decoder's rules on them:
//! - byte-level BPE (`gpt2` vocabularies): the text is the UTF-8 reading of all tokens'
//!   bytes, each invalid sequence read as U+FFFD;
//! - SentencePiece with byte fallback (`llama` vocabularies): `▁` reads as a space, each
//!   run of `<0xNN>` tokens is its bytes when they are valid UTF-8 and one U+FFFD per
//!   token otherwise, and one leading space of the whole text is dropped when the
//!   tokenizer prepends one to what it encodes.
//!
//! The streamed text is exactly `Tokenizer::decode` of all ids (tests check it on the
//! real vocabularies); a tokenizer from a `tokenizer.json` is decoded through
//! `tokenizers`, a window at a time, as before.

use super::error::Result;
use super::tokenizer::Tokenizer;

/// Which decoding rules a vocabulary's tokens follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeRules {
    /// Byte-level BPE.
    ByteLevel,
    /// SentencePiece with byte fallback; `strip_space`: drop one leading space.
    SentencePiece { strip_space: bool },
}

/// What [`push_token_bytes`] found a token's text to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenBytes {
    /// Text, appended (SentencePiece's `▁` as a space, byte-level characters as their
    /// bytes).
    Text,
    /// A SentencePiece byte-fallback token `<0xNN>`: its one byte, appended.
    Byte,
    /// A byte-level token with a character outside the byte alphabet (an added token):
    /// nothing appended, the caller decides what it stands for.
    Foreign,
}

/// Appends to `out` the bytes a vocabulary token's text stands for: the one rule the
/// streaming decoder and the grammar matcher's token table share (`byte_of`: the byte
/// a byte-level character stands for).
pub(crate) fn push_token_bytes(
    text: &str,
    byte_level: bool,
    byte_of: impl Fn(char) -> Option<u8>,
    out: &mut Vec<u8>,
) -> TokenBytes {
    if byte_level {
        let start = out.len();
        for c in text.chars() {
            match byte_of(c) {
                Some(b) => out.push(b),
                None => {
                    out.truncate(start);
                    return TokenBytes::Foreign;
                }
            }
        }
        return TokenBytes::Text;
    }
    let byte = (text.len() == 6 && text.starts_with("<0x") && text.ends_with('>'))
        .then(|| u8::from_str_radix(&text[3..5], 16).ok())
        .flatten();
    if let Some(b) = byte {
        out.push(b);
        return TokenBytes::Byte;
    }
    for (i, piece) in text.split('\u{2581}').enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(piece.as_bytes());
    }
    TokenBytes::Text
}

/// Every token's bytes, in one buffer.
#[derive(Debug)]
pub struct TokenPieces {
    rules: DecodeRules,
    /// Token `i`'s bytes are `bytes[ends[i - 1]..ends[i]]` (from 0 for token 0).
    ends: Vec<u32>,
    bytes: Vec<u8>,
    /// SentencePiece `<0xNN>` tokens (their one byte is in `bytes`).
    byte_token: Vec<bool>,
}

impl TokenPieces {
    /// The table of `tokens` (their texts as the decoder receives them, by id), `byte_of`
    /// giving the byte a byte-level character stands for. `None` when the table would
    /// not fit 32-bit offsets.
    pub fn build(
        rules: DecodeRules,
        tokens: &[&str],
        byte_of: impl Fn(char) -> Option<u8>,
    ) -> Option<Self> {
        let mut ends = Vec::with_capacity(tokens.len());
        let mut bytes = Vec::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut byte_token = vec![false; tokens.len()];
        let byte_level = rules == DecodeRules::ByteLevel;
        for (t, is_byte) in tokens.iter().zip(byte_token.iter_mut()) {
            match push_token_bytes(t, byte_level, &byte_of, &mut bytes) {
                TokenBytes::Text => {}
                TokenBytes::Byte => *is_byte = true,
                // As the byte-level decoder: a token with a character outside the byte
                // alphabet (an added token) stands for its own UTF-8 bytes.
                TokenBytes::Foreign => bytes.extend_from_slice(t.as_bytes()),
            }
            ends.push(u32::try_from(bytes.len()).ok()?);
        }
        Some(Self {
            rules,
            ends,
            bytes,
            byte_token,
        })
    }

    /// Token `id`'s bytes; `None` for an id outside the vocabulary (the decoder skips
    /// those).
    fn piece(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.bytes[start..end])
    }
}

/// Turns generated ids into text deltas as they arrive, holding back bytes until they
/// form whole UTF-8 characters (byte-fallback and byte-level tokens can split one).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// The text of the latest push or flush.
    out: String,
    /// Byte-level: the bytes of an unfinished character. SentencePiece: the current run
    /// of byte tokens' bytes.
    pending: Vec<u8>,
    /// Text has begun (the leading space, if any, has been dealt with).
    began: bool,
    /// For tokenizers decoded through `tokenizers`: the ids, the start of the window
    /// last sent, and how far it was sent.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl StreamDecoder {
    /// A decoder that starts with no tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<&str>> {
        self.out.clear();
        let Some(pieces) = tokenizer.pieces() else {
            return self.push_windowed(tokenizer, id);
        };
        let Some(piece) = pieces.piece(id) else {
            return Ok(None);
        };
        match pieces.rules {
            DecodeRules::ByteLevel => {
                self.pending.extend_from_slice(piece);
                drain_utf8(&mut self.pending, &mut self.out, false);
            }
            DecodeRules::SentencePiece { strip_space } => {
                if pieces.byte_token[id as usize] {
                    self.pending.extend_from_slice(piece);
                } else {
                    self.end_byte_run(strip_space);
                    // Token texts are whole strings (the table was built from them).
                    let text = std::str::from_utf8(piece).unwrap_or_default();
                    self.emit(text, strip_space);
                }
            }
        }
        Ok(Some(self.out.as_str()).filter(|s| !s.is_empty()))
    }

    /// Text held back at the end (an incomplete character or a run of byte tokens).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<&str>> {
        self.out.clear();
        match tokenizer.pieces().map(|p| p.rules) {
            None => return self.flush_windowed(tokenizer),
            Some(DecodeRules::ByteLevel) => drain_utf8(&mut self.pending, &mut self.out, true),
            Some(DecodeRules::SentencePiece { strip_space }) => self.end_byte_run(strip_space),
        }
        Ok(Some(self.out.as_str()).filter(|s| !s.is_empty()))
    }

    /// Appends a finished run of byte tokens: its text when the bytes are valid UTF-8,
    /// one U+FFFD per byte otherwise.
    fn end_byte_run(&mut self, strip_space: bool) {
        if self.pending.is_empty() {
            return;
        }
        let mut run = std::mem::take(&mut self.pending);
        match std::str::from_utf8(&run) {
            Ok(text) => self.emit(text, strip_space),
            Err(_) => {
                for _ in 0..run.len() {
                    self.emit("\u{FFFD}", strip_space);
                }
            }
        }
        run.clear();
        self.pending = run;
    }

    /// Appends `text`, dropping the first space of the whole text when asked to.
    fn emit(&mut self, text: &str, strip_space: bool) {
        if text.is_empty() {
            return;
        }
        let text = match self.began {
            false if strip_space => text.strip_prefix(' ').unwrap_or(text),
            _ => text,
        };
        self.began = true;
        self.out.push_str(text);
    }

    fn push_windowed(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<&str>> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        let delta = unsent(&prefix, &full);
        if delta.is_empty() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        self.out.push_str(delta);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(Some(self.out.as_str()))
    }

    fn flush_windowed(&mut self, tokenizer: &Tokenizer) -> Result<Option<&str>> {
        if self.read_offset >= self.ids.len() {
            return Ok(None);
        }
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        self.out.push_str(unsent(&prefix, &full));
        Ok(Some(self.out.as_str()).filter(|s| !s.is_empty()))
    }
}

/// Moves the whole characters at the start of `pending` into `out`, each invalid
/// sequence as U+FFFD (as a lossy UTF-8 reading of all the bytes would), and keeps an
/// unfinished character at the end for the next token, unless `at_end`.
fn drain_utf8(pending: &mut Vec<u8>, out: &mut String, at_end: bool) {
    loop {
        match std::str::from_utf8(pending) {
            Ok(text) => {
                out.push_str(text);
                pending.clear();
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // SAFETY: `from_utf8` says the first `valid` bytes are UTF-8.
                out.push_str(unsafe { std::str::from_utf8_unchecked(&pending[..valid]) });
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        pending.drain(..valid + bad);
                    }
                    None if at_end => {
                        out.push('\u{FFFD}');
                        pending.clear();
                        return;
                    }
                    None => {
                        pending.drain(..valid);
                        return;
                    }
                }
            }
        }
    }
}

/// The part of a window's text `full` not sent yet, `prefix` having been sent. When the
/// decoder has changed text already sent (byte fallback turns a whole run of byte tokens
/// into U+FFFD once an invalid byte joins it), what was sent stays sent and the unsent
/// part starts as many characters in: the text that follows is never held back for good.
fn unsent<'a>(prefix: &str, full: &'a str) -> &'a str {
    full.strip_prefix(prefix).unwrap_or_else(|| {
        let sent = prefix.chars().count();
        full.char_indices()
            .nth(sent)
            .map_or("", |(i, _)| &full[i..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_texts_become_the_bytes_their_decoder_gives() {
        // A two-character byte alphabet: 'Ġ' is the space, 'a' itself.
        let byte_of = |c: char| match c {
            'Ġ' => Some(b' '),
            'a' => Some(b'a'),
            _ => None,
        };
        let bytes = |text: &str, byte_level: bool| {
            let mut out = b"x".to_vec();
            let kind = push_token_bytes(text, byte_level, byte_of, &mut out);
            (kind, out)
        };
        assert_eq!(bytes("Ġa", true), (TokenBytes::Text, b"x a".to_vec()));
        // An outside character leaves what was there before the token.
        assert_eq!(
            bytes("aĠ<|im|>", true),
            (TokenBytes::Foreign, b"x".to_vec())
        );
        assert_eq!(bytes("<0x0A>", false), (TokenBytes::Byte, b"x\n".to_vec()));
        assert_eq!(
            bytes("\u{2581}a\u{2581}", false),
            (TokenBytes::Text, b"x a ".to_vec())
        );
        // Only a well-formed byte token is one; anything else is text.
        assert_eq!(
            bytes("<0xZZ>", false),
            (TokenBytes::Text, b"x<0xZZ>".to_vec())
        );
    }

    #[test]
    fn unsent_is_the_rest_of_the_window_even_when_sent_text_changed() {
        assert_eq!(unsent("ab", "abc"), "c");
        assert_eq!(unsent("ab", "ab"), "");
        assert_eq!(unsent("", "\u{FFFD}"), "\u{FFFD}");
        // "\0" was sent; an invalid byte then turned the run into two U+FFFD.
        assert_eq!(unsent("\0", "\u{FFFD}\u{FFFD}a"), "\u{FFFD}a");
        assert_eq!(unsent("é", "\u{FFFD}"), "");
        assert_eq!(unsent("\u{20AC}x", "\u{FFFD}\u{FFFD}y"), "y");
    }

    #[test]
    fn utf8_is_drained_as_a_lossy_reading_of_all_the_bytes() {
        let cases: [&[&[u8]]; 5] = [
            &[b"ab", &[0xE2, 0x82], &[0xAC, b'c']],
            &[&[0xE2], &[0x82], &[0xAC]],
            &[&[0xFF, b'a'], &[0xE2, 0x82], b"x"],
            &[&[0xF0, 0x9F], &[0x98]],
            &[&[0xC0, 0x80, 0xED, 0xA0], &[0x80, b'z']],
        ];
        for pieces in cases {
            let all: Vec<u8> = pieces.concat();
            let (mut pending, mut out) = (Vec::new(), String::new());
            for p in pieces {
                pending.extend_from_slice(p);
                drain_utf8(&mut pending, &mut out, false);
            }
            drain_utf8(&mut pending, &mut out, true);
            assert_eq!(out, String::from_utf8_lossy(&all), "{pieces:?}");
        }
    }
}
