//! The check itself (DIKE with SSHF's rules): read the text's emotions, classify its
//! behaviour by the nearest profile, decide against the allowed range, name the codes
//! at stake with the spans that break them, the emotions driving the behaviour and the
//! adjustments that would bring it into range. [`Checker::rectify`] rewrites a failing
//! text by the rewrite debate toward those adjustments and checks again, a bounded
//! number of times, then blocks.

use serde::{Deserialize, Serialize};

use super::EthicsError;
use super::dike::{Adjustment, Driver, adjustments, classify, drivers, emotion_vector};
use super::feedback::{Precedents, Verdict};
use super::learn::Profiles;
use super::policy::Policy;
use super::rules::{CodeChecker, CodeFinding, Ruleset};
use crate::backend::Backend;
use crate::debate::config::DebateConfig;
use crate::debate::protocol::{Observer, rewrite};
use crate::emotion::beam::{Beam, Target, TargetView};
use crate::emotion::detect::{Detection, Detector};
use crate::eval::metrics::token_overlap;

/// How the verdict is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Emotion-mediated: the behaviour's place against the allowed range (DIKE).
    #[default]
    Dike,
    /// The codes' rules alone (SSHF self-check).
    Rules,
    /// A violation when either finds one.
    Both,
}

/// The result of checking one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub method: Method,
    /// The behaviour DIKE assigns and whether the policy allows it.
    pub behaviour: String,
    pub behaviour_allowed: bool,
    pub allowed: [String; 2],
    /// Cosine similarity to every behaviour's profile, in scale order.
    pub similarities: Vec<(String, f64)>,
    /// On a violation, the codes at stake (up to two at or above the threshold, at least
    /// the most likely one), with quoted spans; empty on a pass.
    pub codes: Vec<CodeFinding>,
    /// Every code's probability of being broken.
    pub code_probabilities: Vec<(String, f64)>,
    pub drivers: Vec<Driver>,
    pub adjustments: Vec<Adjustment>,
    /// A human decision on this exact text that overrides the machine, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precedent: Option<u64>,
    pub detection: Detection,
    pub model: String,
    pub ms: f64,
}

/// Everything a check needs, loaded once and reused across texts.
pub struct Checker<'a> {
    pub backend: &'a dyn Backend,
    pub beam: &'a Beam,
    pub policy: &'a Policy,
    pub profiles: &'a Profiles,
    pub rules: Ruleset,
    pub precedents: Precedents,
    pub model: String,
    pub method: Method,
    /// A code counts as at stake from this probability.
    pub threshold: f64,
    detector: Detector<'a>,
}

/// Codes named as at stake in a violation.
const MAX_CODES: usize = 2;

/// Smallest change in expected level worth proposing.
const MIN_ADJUSTMENT: f64 = 0.1;

impl<'a> Checker<'a> {
    /// A checker asking `model`, with rules from the policy, the profiles file and the
    /// journal's decisions.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        backend: &'a dyn Backend,
        beam: &'a Beam,
        policy: &'a Policy,
        profiles: &'a Profiles,
        rules: Ruleset,
        precedents: Precedents,
        model: &str,
        method: Method,
    ) -> Self {
        Self {
            backend,
            beam,
            policy,
            profiles,
            rules,
            precedents,
            model: model.to_string(),
            method,
            threshold: 0.5,
            detector: Detector::new(backend, beam, model, true),
        }
    }

    /// Checks one text.
    pub fn check(&self, text: &str) -> Result<Report, EthicsError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EthicsError::EmptyText);
        }
        let start = std::time::Instant::now();
        let detection = self.detector.detect(text)?;
        let v = emotion_vector(&detection);
        let class = classify(&self.profiles.behaviours, &v, self.profiles.top_m);
        let behaviour_allowed = self.policy.allows(class.behaviour);
        let codes_checker = CodeChecker::new(self.backend, &self.model, self.policy, &self.rules);
        let all = codes_checker.check(text)?;
        let rules_violation = all.first().is_some_and(|f| f.probability >= self.threshold);
        let mut verdict = match self.method {
            Method::Dike => !behaviour_allowed,
            Method::Rules => rules_violation,
            Method::Both => !behaviour_allowed || rules_violation,
        };
        let precedent = self.precedents.get(text);
        if let Some((_, human)) = precedent {
            verdict = human == Verdict::Violation;
        }
        // Codes at stake, with their spans, only for a violation: at most the two most
        // likely at or above the threshold, or the most likely one.
        let mut codes: Vec<CodeFinding> = Vec::new();
        if verdict {
            for f in all.iter().take(MAX_CODES) {
                if f.probability >= self.threshold || codes.is_empty() {
                    let mut f = f.clone();
                    f.spans = codes_checker.spans(text, &f.code, self.threshold)?;
                    codes.push(f);
                }
            }
        }
        let allowed: Vec<&_> = self
            .profiles
            .behaviours
            .iter()
            .enumerate()
            .filter(|(i, _)| self.policy.allows(*i))
            .map(|(_, p)| &p.emotions)
            .collect();
        let goal = self.goal_profile(&class.similarities);
        let (drivers, adjustments) = if verdict {
            (
                drivers(self.beam, &v, &allowed, 3),
                adjustments(
                    self.beam,
                    &v,
                    &self.profiles.behaviours[goal].emotions,
                    MIN_ADJUSTMENT,
                ),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let names = &self.policy.behaviours;
        Ok(Report {
            verdict: if verdict {
                Verdict::Violation
            } else {
                Verdict::Pass
            },
            method: self.method,
            behaviour: class.label.clone(),
            behaviour_allowed,
            allowed: [
                names[*self.policy.allowed.start()].name.clone(),
                names[*self.policy.allowed.end()].name.clone(),
            ],
            similarities: names
                .iter()
                .map(|b| b.name.clone())
                .zip(class.similarities.iter().copied())
                .collect(),
            code_probabilities: all
                .iter()
                .map(|f| (f.code.clone(), f.probability))
                .collect(),
            codes,
            drivers,
            adjustments,
            precedent: precedent.map(|(id, _)| id),
            detection,
            model: self.model.clone(),
            ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    }

    /// The allowed behaviour whose profile the text is closest to.
    fn goal_profile(&self, similarities: &[f64]) -> usize {
        self.policy
            .allowed
            .clone()
            .filter(|&i| i < similarities.len())
            .max_by(|&a, &b| similarities[a].total_cmp(&similarities[b]))
            .unwrap_or(*self.policy.allowed.start())
    }

    /// The rewrite target for a failing report: the largest proposed adjustment, moved
    /// at least one level past where the text now is; the first allowed behaviour above
    /// neutral on the policy's spectrum when no adjustment is proposed.
    pub fn rectify_target(&self, report: &Report) -> Target {
        if let Some(a) = report.adjustments.first()
            && let Ok(spectrum) = self.beam.find_spectrum(&a.spectrum)
        {
            let now = self.beam.nearest_level(a.from);
            let mut level = self.beam.nearest_level(a.to);
            if a.to > a.from && level <= now {
                level = (now + 1).min(self.beam.levels.len() - 1);
            } else if a.to < a.from && level >= now {
                level = now.saturating_sub(1);
            }
            return Target { spectrum, level };
        }
        let allowed = &self.policy.allowed;
        let b = (*allowed.start() + 1).min(*allowed.end());
        Target {
            spectrum: self.policy.spectrum,
            level: self.beam.nearest_level(self.policy.behaviour_level(b)),
        }
    }

    /// Rewrites a failing text toward the allowed range and checks again, at most
    /// `max_iterations` times; blocks it when it still fails.
    pub fn rectify(
        &self,
        text: &str,
        first: Report,
        debate: &DebateConfig,
        max_iterations: usize,
        observer: &dyn Observer,
    ) -> Result<Rectification, EthicsError> {
        let mut current = text.trim().to_string();
        let mut report = first;
        let mut attempts = Vec::new();
        for _ in 0..max_iterations {
            if report.verdict == Verdict::Pass {
                break;
            }
            let target = self.rectify_target(&report);
            let transcript = rewrite(self.backend, self.beam, debate, &current, target, observer)?;
            let rewritten = transcript.final_text.clone();
            let next = self.check(&rewritten)?;
            attempts.push(Attempt {
                target: self.beam.view(target),
                text: rewritten.clone(),
                content_kept: token_overlap(&rewritten, text),
                verdict: next.verdict,
                behaviour: next.behaviour.clone(),
                rounds: transcript.rounds.len(),
            });
            current = rewritten;
            report = next;
        }
        let outcome = if report.verdict == Verdict::Pass {
            Outcome::Passed { text: current }
        } else {
            Outcome::Blocked {
                reason: format!(
                    "still {} after {} rewrite(s): behaviour `{}` is outside the allowed range `{}`..`{}`{}",
                    report.verdict,
                    attempts.len(),
                    report.behaviour,
                    report.allowed[0],
                    report.allowed[1],
                    report
                        .codes
                        .first()
                        .map(|c| format!("; code `{}` at stake (p = {:.2})", c.code, c.probability))
                        .unwrap_or_default()
                ),
            }
        };
        Ok(Rectification {
            attempts,
            outcome,
            last: report,
        })
    }
}

/// One rewrite-and-recheck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub target: TargetView,
    pub text: String,
    /// Share of the original's words the rewrite kept.
    pub content_kept: f64,
    pub verdict: Verdict,
    pub behaviour: String,
    pub rounds: usize,
}

/// How rectification ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A rewrite passed (or the text passed to begin with).
    Passed { text: String },
    /// Nothing passed within the bound: the text is withheld.
    Blocked { reason: String },
}

/// Every attempt and the outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rectification {
    pub attempts: Vec<Attempt>,
    pub outcome: Outcome,
    /// The check of the last text tried.
    pub last: Report,
}
