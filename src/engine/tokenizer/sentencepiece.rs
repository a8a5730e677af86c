//! SentencePiece vocabularies (GGUF `tokenizer.ggml.model = llama`: Gemma, Llama 2,
//! Mistral …) tokenized as llama.cpp's SPM tokenizer does.
//!
//! A text starts as one symbol per character; the adjacent pair whose concatenation is
//! the highest-scoring token merges first (the leftmost pair on a tie), until no adjacent
//! pair forms a token. A symbol left outside the vocabulary becomes its bytes' `<0xXX>`
//! tokens. The vocabulary's scores are the whole model: no merge table is derived from
//! them. A merge table would have to hold every way of writing a token as two tokens
//! (Gemma 3: 515k for 262k tokens), and `tokenizers`' BPE keeps it beside two copies of
//! the vocabulary: ~70 MB resident and about 0.55 s of start-up for Gemma 3, against
//! ~7 MB and ~0.1 s here.

use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokenizers::{AddedToken, Model, Token, Trainer};

/// A scored vocabulary, every text stored once.
pub struct SentencePiece {
    /// Every token's text, concatenated in id order.
    texts: String,
    /// Where token `i`'s text ends in `texts` (it starts where token `i - 1`'s ends).
    ends: Vec<u32>,
    scores: Vec<f32>,
    /// Token ids by text; a text listed twice finds its later id, as in llama.cpp.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// The `<0xXX>` token of each byte.
    byte_tokens: Vec<Option<u32>>,
    unk: Option<u32>,
}

impl SentencePiece {
    /// The vocabulary of `tokens` (in id order) with their `scores`; `unk` stands for a
    /// byte no token covers.
    pub fn new(tokens: &[&str], scores: &[f32], unk: Option<u32>) -> Self {
        let hasher = DefaultHashBuilder::default();
        let mut texts = String::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut ends = Vec::with_capacity(tokens.len());
        let mut index = HashTable::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            texts.push_str(t);
            ends.push(texts.len() as u32);
            let hash = hasher.hash_one(t);
            let text_of = |i: u32| text_in(&texts, &ends, i);
            match index.find_mut(hash, |&i| text_of(i) == *t) {
                Some(slot) => *slot = id as u32,
                None => {
                    index.insert_unique(hash, id as u32, |&i| hasher.hash_one(text_of(i)));
                }
            }
        }
        let mut vocab = Self {
            texts,
            ends,
            scores: (0..tokens.len())
                .map(|i| scores.get(i).copied().unwrap_or(0.0))
                .collect(),
            index,
            hasher,
            byte_tokens: Vec::new(),
            unk,
        };
        vocab.byte_tokens = (0..=255u8)
            .map(|b| vocab.id(&format!("<0x{b:02X}>")))
            .collect();
        vocab
    }

    fn text(&self, id: u32) -> &str {
        text_in(&self.texts, &self.ends, id)
    }

    fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.index.find(hash, |&i| self.text(i) == text).copied()
    }

    /// The token of one byte of a symbol outside the vocabulary: its `<0xXX>` token, the
    /// byte itself when it is a one-character token, else the unknown token.
    fn byte_token(&self, byte: u8) -> Option<u32> {
        self.byte_tokens[usize::from(byte)]
            .or_else(|| {
                byte.is_ascii()
                    .then(|| self.id(char::from(byte).encode_utf8(&mut [0; 4])))
                    .flatten()
            })
            .or(self.unk)
    }

    /// Token ids of `text` with their byte ranges in it.
    fn encode(&self, text: &str) -> Result<Vec<(u32, usize, usize)>, String> {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                next: NONE,
                prev: NONE,
            })
            .collect();
        let n = symbols.len();
        for (i, s) in symbols.iter_mut().enumerate() {
            s.prev = if i == 0 { NONE } else { i - 1 };
            s.next = if i + 1 == n { NONE } else { i + 1 };
        }
        let mut queue = BinaryHeap::new();
        for right in 1..n {
            self.push_pair(&mut queue, text, &symbols, right - 1, right);
        }
        while let Some(pair) = queue.pop() {
            let (l, r) = (pair.left, pair.right);
            // A pair made stale by an earlier merge of either side.
            if symbols[l].len == 0
                || symbols[r].len == 0
                || symbols[l].len + symbols[r].len != pair.len
            {
                continue;
            }
            symbols[l].len += symbols[r].len;
            symbols[r].len = 0;
            let next = symbols[r].next;
            symbols[l].next = next;
            if next != NONE {
                symbols[next].prev = l;
            }
            let prev = symbols[l].prev;
            if prev != NONE {
                self.push_pair(&mut queue, text, &symbols, prev, l);
            }
            if next != NONE {
                self.push_pair(&mut queue, text, &symbols, l, next);
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut i = if n == 0 { NONE } else { 0 };
        while i != NONE {
            let s = &symbols[i];
            let end = s.start + s.len;
            match self.id(&text[s.start..end]) {
                Some(id) => out.push((id, s.start, end)),
                None => {
                    for (b, at) in text.as_bytes()[s.start..end].iter().zip(s.start..) {
                        let id = self.byte_token(*b).ok_or_else(|| {
                            format!("no token for byte 0x{b:02X} and no unknown token")
                        })?;
                        out.push((id, at, at + 1));
                    }
                }
            }
            i = s.next;
        }
        Ok(out)
    }

    fn push_pair(
        &self,
        queue: &mut BinaryHeap<Pair>,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
    ) {
        let (l, r) = (&symbols[left], &symbols[right]);
        let len = l.len + r.len;
        if let Some(id) = self.id(&text[l.start..l.start + len]) {
            queue.push(Pair {
                score: self.scores[id as usize],
                left,
                right,
                len,
            });
        }
    }
}

fn text_in<'t>(texts: &'t str, ends: &[u32], id: u32) -> &'t str {
    let i = id as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &texts[start..ends[i] as usize]
}

const NONE: usize = usize::MAX;

/// A run of the text that is one token so far, linked to its neighbours.
struct Symbol {
    start: usize,
    /// Bytes; 0 once merged into the symbol on its left.
    len: usize,
    prev: usize,
    next: usize,
}

/// Two adjacent symbols whose concatenation is a token.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Bytes of the concatenation, to tell a pair whose sides changed since.
    len: usize,
}

/// The queue's order: the highest score first, then the leftmost pair.
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Pair {}

impl Model for SentencePiece {
    type Trainer = Untrainable;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        Ok(self
            .encode(sequence)?
            .into_iter()
            .map(|(id, start, end)| Token::new(id, self.text(id).to_string(), (start, end)))
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.ends.len()).then(|| self.text(id).to_string())
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        self.index
            .iter()
            .map(|&id| (self.text(id).to_string(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("a GGUF SentencePiece vocabulary is not saved as tokenizer files".into())
    }

    fn get_trainer(&self) -> Untrainable {
        Untrainable
    }
}

/// `tokenizers` asks every model for a trainer; a vocabulary read from a GGUF file is
/// never trained.
pub struct Untrainable;

impl Trainer for Untrainable {
    type Model = SentencePiece;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, _model: &mut SentencePiece) -> tokenizers::Result<Vec<AddedToken>> {
        Err("a GGUF SentencePiece vocabulary cannot be trained".into())
    }

    fn feed<I, S, F>(&mut self, _iterator: I, _process: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(vocab: &SentencePiece, text: &str) -> Vec<u32> {
        vocab
            .encode(text)
            .unwrap()
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    #[test]
    fn the_highest_scoring_pair_merges_first() {
        // "abc": "ab" (-1) against "bc" (-0.5): bc first, then a+bc is a token.
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let v = SentencePiece::new(&tokens, &scores, None);
        assert_eq!(ids(&v, "abc"), [5]);
        // Without "abc" the better pair wins and the rest stays apart.
        let v = SentencePiece::new(&tokens[..5], &scores[..5], None);
        assert_eq!(ids(&v, "abc"), [0, 4]);
        // "ab" ahead of "bc".
        let v = SentencePiece::new(&tokens[..5], &[0.0, 0.0, 0.0, -0.5, -1.0], None);
        assert_eq!(ids(&v, "abc"), [3, 2]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let tokens = ["a", "aa"];
        let v = SentencePiece::new(&tokens, &[0.0, -1.0], None);
        assert_eq!(ids(&v, "aaa"), [1, 0]);
        assert_eq!(ids(&v, "aaaa"), [1, 1]);
    }

    #[test]
    fn characters_outside_the_vocabulary_fall_back_to_bytes() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "a".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let tokens: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
        let v = SentencePiece::new(&tokens, &[], Some(0));
        // é is C3 A9.
        assert_eq!(ids(&v, "aé"), [1, 2 + 0xC3, 2 + 0xA9]);
        let spans: Vec<(usize, usize)> =
            v.encode("aé").unwrap().iter().map(|t| (t.1, t.2)).collect();
        assert_eq!(spans, [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn a_missing_byte_token_is_the_unknown_token_or_an_error() {
        let v = SentencePiece::new(&["<unk>", "a"], &[], Some(0));
        assert_eq!(ids(&v, "ab"), [1, 0]);
        let v = SentencePiece::new(&["a"], &[], None);
        assert!(v.encode("ab").unwrap_err().contains("0x62"));
    }

    #[test]
    fn a_repeated_text_finds_its_later_id() {
        let v = SentencePiece::new(&["a", "b", "a"], &[], None);
        assert_eq!(v.id("a"), Some(2));
        assert_eq!(v.id("b"), Some(1));
        assert_eq!(v.id("c"), None);
        assert_eq!(v.get_vocab().len(), 2);
        assert_eq!(v.get_vocab_size(), 3);
        assert_eq!(v.id_to_token(0).as_deref(), Some("a"));
        assert_eq!(v.id_to_token(3), None);
    }

    #[test]
    fn an_empty_text_has_no_tokens() {
        let v = SentencePiece::new(&["a"], &[], None);
        assert!(ids(&v, "").is_empty());
    }
}
