//! Constrained decoding: token masks that make an answer follow a JSON schema, one of a
//! list of choices, or a lark grammar.
//!
//! A machine-read answer (a score, a verdict, a pick) must parse even when a 135M model
//! writes it. Before each sampling step the [`Guide`] computes which tokens keep the
//! output inside the grammar and the others get a logit of −∞; after it, the chosen
//! token advances the grammar. The grammar engine is llguidance; this module only builds
//! its token trie from pathos's own tokenizer and maps its errors.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::tokenizer::Tokenizer;

/// What an answer must look like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Constraint {
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A JSON value valid under this schema.
    JsonSchema(serde_json::Value),
    /// Text in the language of a lark grammar (llguidance's dialect).
    Lark(String),
}

impl Constraint {
    fn grammar(&self) -> Result<TopLevelGrammar> {
        match self {
            Constraint::Choice(options) => {
                if options.is_empty() || options.iter().any(|o| o.is_empty()) {
                    return Err(Error::Constraint(
                        "a choice needs at least one option and no empty option".into(),
                    ));
                }
                // JSON string literals are lark string literals.
                let alternatives: Vec<String> = options
                    .iter()
                    .map(|o| serde_json::to_string(o).expect("strings serialize"))
                    .collect();
                Ok(TopLevelGrammar::from_lark(format!(
                    "start: {}",
                    alternatives.join(" | ")
                )))
            }
            Constraint::JsonSchema(schema) => {
                let mut schema = schema.clone();
                // Compact JSON unless the schema says otherwise: free whitespace lets a
                // small model wander into newlines between every token.
                if let Some(obj) = schema.as_object_mut() {
                    obj.entry("x-guidance").or_insert_with(|| {
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "item_separator": ", ",
                            "key_separator": ": ",
                        })
                    });
                }
                Ok(TopLevelGrammar::from_json_schema(schema))
            }
            Constraint::Lark(g) => Ok(TopLevelGrammar::from_lark(g.clone())),
        }
    }
}

/// The grammar side of a model: its vocabulary as a byte trie, built once per model and
/// shared by every constrained generation.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie of `tokenizer`, padded to `n_vocab` (the width of the
    /// model's logits, which may exceed the tokenizer's vocabulary).
    pub fn new(tokenizer: &Tokenizer, n_vocab: usize) -> Result<Self> {
        let mut words = tokenizer.token_bytes();
        if words.len() > n_vocab {
            return Err(Error::Constraint(format!(
                "the tokenizer has {} tokens but the model only {n_vocab} logits",
                words.len()
            )));
        }
        while words.len() < n_vocab {
            let mut pad = format!(".<[{}]>", words.len()).into_bytes();
            pad[0] = TokTrie::SPECIAL_TOKEN_MARKER;
            words.push(pad);
        }
        let eos = tokenizer.end_of_generation_ids();
        let mut info = TokRxInfo::new(n_vocab as u32, eos.first().copied().unwrap_or(0));
        info.tok_end_of_turn = eos.get(1).copied();
        let mut trie = TokTrie::from(&info, &words);
        if eos.len() > 1 {
            trie = trie.with_eos_tokens(eos);
        }
        let env: TokEnv = Arc::new(TrieEnv { trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(constraint_err)?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// A fresh guide for one answer.
    pub fn guide(&self, constraint: &Constraint) -> Result<Guide> {
        let parser = self.factory.create_parser(constraint.grammar()?);
        let matcher = Matcher::new(parser);
        if let Some(e) = matcher.get_error() {
            return Err(Error::Constraint(e));
        }
        Ok(Guide { matcher })
    }
}

/// Tokenization for llguidance from the trie alone: it is only asked to tokenize text
/// the grammar forces, where greedy longest match is good enough.
struct TrieEnv {
    trie: TokTrie,
}

impl TokenizerEnv for TrieEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.trie.greedy_tokenize(s)
    }
}

fn constraint_err(e: impl std::fmt::Display) -> Error {
    Error::Constraint(e.to_string())
}

/// The state of one constrained answer.
pub struct Guide {
    matcher: Matcher,
}

impl Guide {
    /// Sets the logits of every token the grammar forbids now to −∞. End-of-generation
    /// tokens are allowed exactly when the answer is complete.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask().map_err(constraint_err)?;
        if allowed.is_zero() {
            return Err(Error::Constraint(
                "the grammar allows no token here (it cannot be completed)".into(),
            ));
        }
        for (id, l) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances the grammar past the sampled token.
    pub fn accept(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(constraint_err)
    }

    /// Whether the answer is complete and nothing more may follow.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_choices_are_refused() {
        assert!(Constraint::Choice(vec![]).grammar().is_err());
        assert!(
            Constraint::Choice(vec!["a".into(), "".into()])
                .grammar()
                .is_err()
        );
        assert!(
            Constraint::Choice(vec!["say \"hi\"".into()])
                .grammar()
                .is_ok()
        );
    }
}
