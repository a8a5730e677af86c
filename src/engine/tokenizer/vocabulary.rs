//! pathos's own tokenizer models: a vocabulary whose every text is stored once, and the
//! merge loop llama.cpp runs over it, under one of two rules.
//!
//! A text starts as one symbol per character, and the best adjacent pair merges first
//! (the leftmost on a tie) until no adjacent pair merges:
//! - SentencePiece (GGUF `tokenizer.ggml.model = llama`: Gemma, Llama 2, Mistral …): a
//!   pair merges when its concatenation is a token, the highest-scoring first; a symbol
//!   left outside the vocabulary becomes its bytes' `<0xXX>` tokens. The scores are the
//!   whole model: no merge table is derived from them (one would hold every way of
//!   writing a token as two tokens, 515k for Gemma 3's 262k).
//! - byte-level BPE (`gpt2`: SmolLM2, Qwen2 …, behind the byte-level pre-tokenizer): a pair
//!   merges when the file's merge list has it, the earliest first.
//!
//! `tokenizers`' BPE keeps its vocabulary twice as owned strings plus a merge map of
//! strings' ids, built by hashing every text again: ~100 MB and ~0.65 s for Gemma 3's
//! derived table, ~45 MB for Qwen2.5's 151k merges. Here a vocabulary is one string, an
//! index of ids and the scores or the ranks.

use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokenizers::{AddedToken, Model, Token, Trainer};

/// A vocabulary with the rule its pairs merge by.
pub struct Vocabulary {
    texts: Texts,
    rule: Rule,
}

/// Every token's text stored once, with an index from text to id.
struct Texts {
    /// Every token's text, concatenated in id order.
    all: String,
    /// Where token `i`'s text ends in `all` (it starts where token `i - 1`'s ends).
    ends: Vec<u32>,
    /// Token ids by text; a text listed twice finds its later id, as in llama.cpp.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

enum Rule {
    Scores {
        scores: Vec<f32>,
        /// The `<0xXX>` token of each byte.
        byte_tokens: Vec<Option<u32>>,
        unk: Option<u32>,
    },
    /// (left, right) ids to (rank, merged id).
    Ranks(HashMap<(u32, u32), (u32, u32), DefaultHashBuilder>),
}

impl Texts {
    fn new(tokens: &[&str]) -> Self {
        let hasher = DefaultHashBuilder::default();
        let mut all = String::with_capacity(tokens.iter().map(|t| t.len()).sum());
        let mut ends = Vec::with_capacity(tokens.len());
        let mut index = HashTable::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            all.push_str(t);
            ends.push(all.len() as u32);
            let hash = hasher.hash_one(t);
            let text_of = |i: u32| text_in(&all, &ends, i);
            match index.find_mut(hash, |&i| text_of(i) == *t) {
                Some(slot) => *slot = id as u32,
                None => {
                    index.insert_unique(hash, id as u32, |&i| hasher.hash_one(text_of(i)));
                }
            }
        }
        Self {
            all,
            ends,
            index,
            hasher,
        }
    }

    fn text(&self, id: u32) -> &str {
        text_in(&self.all, &self.ends, id)
    }

    fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.index.find(hash, |&i| self.text(i) == text).copied()
    }
}

impl Vocabulary {
    /// A SentencePiece vocabulary: `tokens` in id order with their `scores`; `unk`
    /// stands for a byte no token covers.
    pub fn sentencepiece(tokens: &[&str], scores: &[f32], unk: Option<u32>) -> Self {
        let texts = Texts::new(tokens);
        let rule = Rule::Scores {
            scores: (0..tokens.len())
                .map(|i| scores.get(i).copied().unwrap_or(0.0))
                .collect(),
            byte_tokens: (0..=255u8)
                .map(|b| texts.id(&format!("<0x{b:02X}>")))
                .collect(),
            unk,
        };
        Self { texts, rule }
    }

    /// A byte-level BPE vocabulary: `tokens` in id order and `merges` ("left right",
    /// earliest first), each naming two tokens whose concatenation is a token.
    pub fn byte_level_bpe(tokens: &[&str], merges: &[&str]) -> Result<Self, String> {
        let texts = Texts::new(tokens);
        let mut ranks =
            HashMap::with_capacity_and_hasher(merges.len(), DefaultHashBuilder::default());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .ok_or_else(|| format!("malformed merge `{m}`"))?;
            joined.clear();
            joined.push_str(l);
            joined.push_str(r);
            let id = |t: &str| {
                texts
                    .id(t)
                    .ok_or_else(|| format!("merge `{m}` names `{t}`, which is not a token"))
            };
            // A pair listed twice keeps its earliest rank.
            ranks
                .entry((id(l)?, id(r)?))
                .or_insert((rank as u32, id(&joined)?));
        }
        Ok(Self {
            texts,
            rule: Rule::Ranks(ranks),
        })
    }

    fn text(&self, id: u32) -> &str {
        self.texts.text(id)
    }

    fn id(&self, text: &str) -> Option<u32> {
        self.texts.id(text)
    }

    /// What the pair `left`, `right` merges into and how early: higher merges first.
    fn merge(&self, text: &str, left: &Symbol, right: &Symbol) -> Option<(f32, u32)> {
        match &self.rule {
            Rule::Scores { scores, .. } => {
                let id = self.id(&text[left.start..right.start + right.len])?;
                Some((scores[id as usize], id))
            }
            Rule::Ranks(ranks) => {
                let &(rank, id) = ranks.get(&(left.id?, right.id?))?;
                // Ranks stay below 2^24, so they are exact as floats.
                Some((-(rank as f32), id))
            }
        }
    }

    /// The token of one byte of a symbol outside the vocabulary: its `<0xXX>` token, the
    /// byte itself when it is a one-character token, else the unknown token.
    fn byte_token(&self, byte: u8) -> Option<u32> {
        let Rule::Scores {
            byte_tokens, unk, ..
        } = &self.rule
        else {
            return None;
        };
        byte_tokens[usize::from(byte)]
            .or_else(|| {
                byte.is_ascii()
                    .then(|| self.id(char::from(byte).encode_utf8(&mut [0; 4])))
                    .flatten()
            })
            .or(*unk)
    }

    /// Token ids of `text` with their byte ranges in it.
    fn encode(&self, text: &str) -> Result<Vec<(u32, usize, usize)>, String> {
        let mut symbols: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                id: self.id(&text[start..start + c.len_utf8()]),
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
            symbols[l].id = Some(pair.id);
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
            match s.id {
                Some(id) => out.push((id, s.start, end)),
                // Byte-level vocabularies hold every character their pre-tokenizer
                // makes; one that does not has nothing to stand for it, which
                // `tokenizers`' BPE also skips.
                None if matches!(self.rule, Rule::Ranks(_)) => {}
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
        if let Some((score, id)) = self.merge(text, l, r) {
            queue.push(Pair {
                score,
                left,
                right,
                len: l.len + r.len,
                id,
            });
        }
    }
}

fn text_in<'t>(all: &'t str, ends: &[u32], id: u32) -> &'t str {
    let i = id as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &all[start..ends[i] as usize]
}

const NONE: usize = usize::MAX;

/// A run of the text that is one token so far, linked to its neighbours.
struct Symbol {
    start: usize,
    /// Bytes; 0 once merged into the symbol on its left.
    len: usize,
    /// The token it is, if it is one (a character may not be).
    id: Option<u32>,
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
    /// The token the pair merges into.
    id: u32,
}

/// The queue's order: the highest score (or earliest rank) first, then the leftmost pair.
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

impl Model for Vocabulary {
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
        ((id as usize) < self.texts.ends.len()).then(|| self.text(id).to_string())
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        self.texts
            .index
            .iter()
            .map(|&id| (self.text(id).to_string(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.texts.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("a vocabulary read from a GGUF file is not saved as tokenizer files".into())
    }

    fn get_trainer(&self) -> Untrainable {
        Untrainable
    }
}

/// `tokenizers` asks every model for a trainer; a vocabulary read from a GGUF file is
/// never trained.
pub struct Untrainable;

impl Trainer for Untrainable {
    type Model = Vocabulary;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, _model: &mut Vocabulary) -> tokenizers::Result<Vec<AddedToken>> {
        Err("a vocabulary read from a GGUF file cannot be trained".into())
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

    fn ids(vocab: &Vocabulary, text: &str) -> Vec<u32> {
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
        let v = Vocabulary::sentencepiece(&tokens, &scores, None);
        assert_eq!(ids(&v, "abc"), [5]);
        // Without "abc" the better pair wins and the rest stays apart.
        let v = Vocabulary::sentencepiece(&tokens[..5], &scores[..5], None);
        assert_eq!(ids(&v, "abc"), [0, 4]);
        // "ab" ahead of "bc".
        let v = Vocabulary::sentencepiece(&tokens[..5], &[0.0, 0.0, 0.0, -0.5, -1.0], None);
        assert_eq!(ids(&v, "abc"), [3, 2]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let tokens = ["a", "aa"];
        let v = Vocabulary::sentencepiece(&tokens, &[0.0, -1.0], None);
        assert_eq!(ids(&v, "aaa"), [1, 0]);
        assert_eq!(ids(&v, "aaaa"), [1, 1]);
    }

    #[test]
    fn characters_outside_the_vocabulary_fall_back_to_bytes() {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "a".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let tokens: Vec<&str> = tokens.iter().map(|t| t.as_str()).collect();
        let v = Vocabulary::sentencepiece(&tokens, &[], Some(0));
        // é is C3 A9.
        assert_eq!(ids(&v, "aé"), [1, 2 + 0xC3, 2 + 0xA9]);
        let spans: Vec<(usize, usize)> =
            v.encode("aé").unwrap().iter().map(|t| (t.1, t.2)).collect();
        assert_eq!(spans, [(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn a_missing_byte_token_is_the_unknown_token_or_an_error() {
        let v = Vocabulary::sentencepiece(&["<unk>", "a"], &[], Some(0));
        assert_eq!(ids(&v, "ab"), [1, 0]);
        let v = Vocabulary::sentencepiece(&["a"], &[], None);
        assert!(v.encode("ab").unwrap_err().contains("0x62"));
    }

    #[test]
    fn a_repeated_text_finds_its_later_id() {
        let v = Vocabulary::sentencepiece(&["a", "b", "a"], &[], None);
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
        let v = Vocabulary::sentencepiece(&["a"], &[], None);
        assert!(ids(&v, "").is_empty());
    }

    #[test]
    fn listed_pairs_merge_earliest_rank_first() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        // "bc" is listed before "ab": b+c first, then a+bc.
        let v = Vocabulary::byte_level_bpe(&tokens, &["b c", "a b", "a bc"]).unwrap();
        assert_eq!(ids(&v, "abc"), [5]);
        let v = Vocabulary::byte_level_bpe(&tokens, &["a b", "b c", "ab c"]).unwrap();
        assert_eq!(ids(&v, "abc"), [5]);
        // A concatenation that is a token but not a listed merge stays apart.
        let v = Vocabulary::byte_level_bpe(&tokens, &["b c"]).unwrap();
        assert_eq!(ids(&v, "abc"), [0, 4]);
        // Equal pairs merge leftmost first.
        let v = Vocabulary::byte_level_bpe(&["a", "aa"], &["a a"]).unwrap();
        assert_eq!(ids(&v, "aaa"), [1, 0]);
    }

    #[test]
    fn a_pair_listed_twice_keeps_its_earliest_rank() {
        let tokens = ["a", "b", "c", "ab", "bc"];
        let v = Vocabulary::byte_level_bpe(&tokens, &["a b", "b c", "a b"]).unwrap();
        assert_eq!(ids(&v, "abc"), [3, 2]);
    }

    #[test]
    fn a_bad_merge_is_an_error_naming_it() {
        let tokens = ["a", "b", "ab"];
        let err = Vocabulary::byte_level_bpe(&tokens, &["ab"]).err().unwrap();
        assert!(err.contains("malformed merge `ab`"), "{err}");
        let err = Vocabulary::byte_level_bpe(&tokens, &["a c"]).err().unwrap();
        assert!(err.contains("`c`"), "{err}");
        let err = Vocabulary::byte_level_bpe(&["a", "b"], &["a b"])
            .err()
            .unwrap();
        assert!(err.contains("`ab`"), "{err}");
    }

    #[test]
    fn a_character_outside_a_byte_level_vocabulary_is_skipped() {
        let v = Vocabulary::byte_level_bpe(&["a", "b", "ab"], &["a b"]).unwrap();
        assert_eq!(ids(&v, "aéb"), [0, 1]);
        assert_eq!(ids(&v, "ab"), [2]);
    }
}
