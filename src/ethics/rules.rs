//! SSHF's readable rules and the self-check that applies them: for each code of
//! conduct, how likely the text breaks it and which of its sentences do.
//!
//! A [`Rule`] is a code of conduct made concrete: a one-sentence statement of what
//! breaks it, marker words, and harmful and harmless examples. Rules start from the
//! policy's examples, grow from what `pathos ethics learn` has the model write and
//! extract, and change with human feedback; never the model's weights. The check asks
//! the model a yes/no question per code and reads the answer's probability; the text
//! comes first in the prompt so every code reuses its computed prefix.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::policy::Policy;
use crate::backend::{Backend, Prompt, ScoreRequest, softmax};
use crate::engine::Result;
use crate::eval::metrics::words;

/// Where a rule's content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOrigin {
    Policy,
    Learned,
    Feedback,
}

/// A code of conduct made concrete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub code: String,
    /// What breaks the code, in one readable sentence; empty when nothing was learned.
    #[serde(default)]
    pub text: String,
    /// Words found in the harmful examples and not in the harmless ones.
    #[serde(default)]
    pub markers: Vec<String>,
    #[serde(default)]
    pub harmful: Vec<String>,
    #[serde(default)]
    pub harmless: Vec<String>,
    /// Examples a person confirmed through feedback, shown to the model before any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub human_harmful: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub human_harmless: Vec<String>,
    pub origin: RuleOrigin,
}

/// Words too common to mark anything.
const STOP: &[&str] = &[
    "the", "and", "that", "this", "with", "you", "your", "for", "are", "was", "have", "not", "but",
    "will", "they", "them", "their", "from", "what", "when", "just", "about", "would", "there",
    "been", "were", "into", "than", "then", "like", "could", "should", "please",
];

/// Words of the harmful examples that no harmless example uses, most frequent first.
pub fn markers(harmful: &[String], harmless: &[String], n: usize) -> Vec<String> {
    let safe: HashSet<String> = harmless.iter().flat_map(|t| words(t)).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in harmful.iter().flat_map(|t| words(t)) {
        if w.chars().count() > 3 && !safe.contains(&w) && !STOP.contains(&w.as_str()) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().take(n).map(|(w, _)| w).collect()
}

/// Every code's rule, in policy order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ruleset {
    pub rules: Vec<Rule>,
}

/// Examples shown per side in a check prompt: enough to anchor a small model, few
/// enough to keep the prompt short.
const SHOWN_EXAMPLES: usize = 3;

impl Ruleset {
    /// Rules from the policy's own examples, before anything is learned.
    pub fn from_policy(policy: &Policy) -> Self {
        Self {
            rules: policy
                .codes
                .iter()
                .map(|c| Rule {
                    code: c.id.clone(),
                    text: String::new(),
                    markers: markers(&c.harmful, &c.harmless, 8),
                    harmful: c.harmful.clone(),
                    harmless: c.harmless.clone(),
                    human_harmful: Vec::new(),
                    human_harmless: Vec::new(),
                    origin: RuleOrigin::Policy,
                })
                .collect(),
        }
    }

    /// The policy's rules with learned ones folded in for the codes the policy still has
    /// (learned text and markers, policy examples first).
    pub fn with_learned(policy: &Policy, learned: &[Rule]) -> Self {
        let mut set = Self::from_policy(policy);
        for r in &mut set.rules {
            if let Some(l) = learned.iter().find(|l| l.code == r.code) {
                r.text = l.text.clone();
                r.markers = l.markers.clone();
                for e in &l.harmful {
                    if !r.harmful.contains(e) {
                        r.harmful.push(e.clone());
                    }
                }
                for e in &l.harmless {
                    if !r.harmless.contains(e) {
                        r.harmless.push(e.clone());
                    }
                }
                r.origin = RuleOrigin::Learned;
            }
        }
        set
    }

    /// The rule of one code.
    pub fn get(&self, code: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.code == code)
    }

    /// Mutable access for feedback.
    pub fn get_mut(&mut self, code: &str) -> Option<&mut Rule> {
        self.rules.iter_mut().find(|r| r.code == code)
    }
}

/// One code's result for a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeFinding {
    pub code: String,
    /// Probability that the text breaks the code (calibrated).
    pub probability: f64,
    /// Sentences of the text that break it, quoted.
    pub spans: Vec<String>,
}

/// Splits a text into sentences at `.`, `!`, `?` and line breaks, keeping the
/// punctuation.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\n' {
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_string());
            }
            cur.clear();
            continue;
        }
        cur.push(c);
        if matches!(c, '.' | '!' | '?') && chars.peek().is_none_or(|n| n.is_whitespace()) {
            out.push(cur.trim().to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Text standing in for "no content", to measure the model's yes/no bias per code.
const CONTENT_FREE: &str = "N/A";

/// Asks a model, code by code, whether a text breaks the policy.
pub struct CodeChecker<'a> {
    backend: &'a dyn Backend,
    model: String,
    policy: &'a Policy,
    rules: &'a Ruleset,
    bias: Mutex<HashMap<String, f64>>,
}

impl<'a> CodeChecker<'a> {
    /// A checker asking `model` with `rules`.
    pub fn new(
        backend: &'a dyn Backend,
        model: &str,
        policy: &'a Policy,
        rules: &'a Ruleset,
    ) -> Self {
        Self {
            backend,
            model: model.to_string(),
            policy,
            rules,
            bias: Mutex::new(HashMap::new()),
        }
    }

    /// The yes/no question about one code. The model sees the code's description, the
    /// policy's examples and the latest examples people confirmed; what a small model
    /// learned by itself (rule sentence, generated examples) only feeds the span markers,
    /// because the default model's own examples and rules read as noise (see the note in
    /// `learn`).
    pub fn prompt(&self, text: &str, code: &str) -> Prompt {
        let c = self.policy.code(code);
        let r = self.rules.get(code);
        let shown = |policy: Option<&Vec<String>>, human: Option<&Vec<String>>| -> Vec<String> {
            let mut v: Vec<String> = human
                .map(|h| h.iter().rev().take(SHOWN_EXAMPLES).cloned().collect())
                .unwrap_or_default();
            for e in policy.into_iter().flatten() {
                if v.len() < SHOWN_EXAMPLES + 1 && !v.contains(e) {
                    v.push(e.clone());
                }
            }
            v
        };
        let user = crate::prompts::render(
            "ethics-code",
            minijinja::context! {
                text => text.trim(),
                id => code,
                description => c.map(|c| c.description.as_str()).unwrap_or_default(),
                harmful => shown(c.map(|c| &c.harmful), r.map(|r| &r.human_harmful)),
                harmless => shown(c.map(|c| &c.harmless), r.map(|r| &r.human_harmless)),
            },
        );
        Prompt::user(None, user).with_prefix("Answer:")
    }

    fn raw_yes(&self, text: &str, code: &str) -> Result<f64> {
        let s = self.backend.score(&ScoreRequest {
            model: self.model.clone(),
            prompt: self.prompt(text, code),
            options: vec![" yes".into(), " no".into()],
        })?;
        Ok(softmax(&s.logprobs)[0])
    }

    /// Probability the text breaks `code`, with the model's content-free lean toward
    /// "yes" divided out (contextual calibration, as detection does).
    pub fn probability(&self, text: &str, code: &str) -> Result<f64> {
        let p = self.raw_yes(text, code)?;
        let bias = {
            let cached = self
                .bias
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(code)
                .copied();
            match cached {
                Some(b) => b,
                None => {
                    let b = self.raw_yes(CONTENT_FREE, code)?;
                    self.bias
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(code.to_string(), b);
                    b
                }
            }
        };
        Ok(calibrate(p, bias))
    }

    /// Every code's probability for `text`, most likely broken first, without spans
    /// (ask [`CodeChecker::spans`] for the codes that matter).
    pub fn check(&self, text: &str) -> Result<Vec<CodeFinding>> {
        let mut out = Vec::new();
        for code in &self.policy.codes {
            out.push(CodeFinding {
                code: code.id.clone(),
                probability: self.probability(text, &code.id)?,
                spans: Vec::new(),
            });
        }
        out.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        Ok(out)
    }

    /// The sentences that break `code` by themselves, or contain one of its markers;
    /// the likeliest sentence when none passes the threshold alone.
    pub fn spans(&self, text: &str, code: &str, threshold: f64) -> Result<Vec<String>> {
        let all = sentences(text);
        if all.len() <= 1 {
            return Ok(all);
        }
        let markers = self
            .rules
            .get(code)
            .map(|r| r.markers.clone())
            .unwrap_or_default();
        let mut scored = Vec::new();
        for s in &all {
            let has_marker = words(s).iter().any(|w| markers.contains(w));
            scored.push((s.clone(), self.probability(s, code)?, has_marker));
        }
        let mut hits: Vec<String> = scored
            .iter()
            .filter(|(_, p, m)| *p >= threshold || *m)
            .map(|(s, _, _)| s.clone())
            .collect();
        if hits.is_empty()
            && let Some((s, _, _)) = scored.iter().max_by(|a, b| a.1.total_cmp(&b.1))
        {
            hits.push(s.clone());
        }
        Ok(hits)
    }

    /// The paper's baseline: ask the model directly whether the text is acceptable;
    /// returns the calibrated probability that it is not.
    pub fn direct(&self, text: &str) -> Result<f64> {
        let ask = |t: &str| -> Result<f64> {
            let user = crate::prompts::render(
                "ethics-direct",
                minijinja::context! { text => t.trim(), codes => self.policy.codes.iter().map(|c| minijinja::context! { id => &c.id, description => &c.description }).collect::<Vec<_>>() },
            );
            let s = self.backend.score(&ScoreRequest {
                model: self.model.clone(),
                prompt: Prompt::user(None, user).with_prefix("Answer:"),
                options: vec![" no".into(), " yes".into()],
            })?;
            Ok(softmax(&s.logprobs)[0])
        };
        let key = "\u{0}direct".to_string();
        let cached = self
            .bias
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let bias = match cached {
            Some(b) => b,
            None => {
                let b = ask(CONTENT_FREE)?;
                self.bias
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, b);
                b
            }
        };
        Ok(calibrate(ask(text)?, bias))
    }
}

/// A two-way probability with the content-free probability `bias` divided out: the odds
/// are divided by the bias odds, so a model that always says "yes" at 0.8 reads 0.5 on a
/// text it is indifferent to.
pub fn calibrate(p: f64, bias: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let b = bias.clamp(1e-9, 1.0 - 1e-9);
    let odds = (p / (1.0 - p)) / (b / (1.0 - b));
    odds / (1.0 + odds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_words_only_harmful_examples_use() {
        let m = markers(
            &["You pathetic idiot, you are pathetic.".into()],
            &["You did well, not an idiot at all.".into()],
            5,
        );
        assert_eq!(m, vec!["pathetic".to_string()]);
    }

    #[test]
    fn sentences_split_on_ends_and_lines() {
        assert_eq!(
            sentences("Hi there. You are late!\nWhy? 3.5 km away"),
            vec!["Hi there.", "You are late!", "Why?", "3.5 km away"]
        );
        assert!(sentences("   ").is_empty());
    }

    #[test]
    fn calibration_centres_the_bias() {
        assert!((calibrate(0.8, 0.8) - 0.5).abs() < 1e-9);
        assert!(calibrate(0.9, 0.5) > 0.89);
        assert!(calibrate(0.5, 0.9) < 0.2);
    }

    #[test]
    fn learned_rules_fold_into_policy_rules() {
        let p = Policy::builtin();
        let learned = vec![Rule {
            code: "respect".into(),
            text: "It insults the reader.".into(),
            markers: vec!["idiot".into()],
            harmful: vec!["You idiot.".into()],
            harmless: vec![],
            human_harmful: vec![],
            human_harmless: vec![],
            origin: RuleOrigin::Learned,
        }];
        let set = Ruleset::with_learned(&p, &learned);
        let r = set.get("respect").unwrap();
        assert_eq!(r.origin, RuleOrigin::Learned);
        assert_eq!(r.text, "It insults the reader.");
        assert_eq!(r.harmful.len(), 2);
        assert_eq!(set.get("fairness").unwrap().origin, RuleOrigin::Policy);
    }
}
