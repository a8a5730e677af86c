//! How a debate is set up: who writes, who judges, how long it may run.

use serde::{Deserialize, Serialize};

use super::DebateError;
use super::schedule::Schedule;

/// One writer: which model, its sampling temperature and the seed its draws start from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriterSpec {
    pub model: String,
    pub temperature: f32,
}

/// Everything that decides a debate's course; with the same config, source and target
/// the same backend gives the same transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebateConfig {
    pub writers: Vec<WriterSpec>,
    /// Scores arguments, picks drafts and reads emotions; never writes or critiques.
    pub judge_model: String,
    /// Draws each writer makes per round; the best by the judge's reading is its draft.
    pub candidates: usize,
    pub max_rounds: usize,
    pub schedule: Schedule,
    pub seed: u64,
    /// Show writers a worked example of the target pole.
    pub few_shot: bool,
    /// Tell writers which words carry the target emotion and which to avoid.
    pub word_guidance: bool,
    /// Start each writer's answer with an opener in the target pole's voice.
    #[serde(default)]
    pub openers: bool,
    /// Weight of the judge's preference against the emotion reading when picking.
    pub judge_weight: f64,
    /// Below this share of the source's words kept, a draft has lost the content.
    pub min_content: f64,
    /// Token budget of a critique.
    pub critique_tokens: usize,
    /// How writers are moved toward the target: by the prompt, by steering vectors
    /// inside the model, or both.
    #[serde(default)]
    pub method: SteerMethod,
}

/// How writers are moved toward the target emotion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SteerMethod {
    /// The prompt names the target (and shows words, an example, an opener).
    #[default]
    Prompt,
    /// The prompt only asks for a rewrite; a steering vector at the target's
    /// calibrated level moves the text inside the model.
    Steer,
    /// Both the prompt and the steering vector.
    Both,
}

impl SteerMethod {
    /// Whether writers run with a steering vector.
    pub fn steers(self) -> bool {
        self != Self::Prompt
    }

    /// Whether writer prompts name the target.
    pub fn prompts(self) -> bool {
        self != Self::Steer
    }
}

impl DebateConfig {
    /// Defaults sized for small models: two writers at different temperatures, two draws
    /// each, four rounds.
    pub fn new(model: &str) -> Self {
        Self {
            writers: vec![
                WriterSpec {
                    model: model.to_string(),
                    temperature: 0.8,
                },
                WriterSpec {
                    model: model.to_string(),
                    temperature: 1.0,
                },
            ],
            judge_model: model.to_string(),
            candidates: 2,
            max_rounds: 4,
            schedule: Schedule::default(),
            seed: 42,
            few_shot: true,
            word_guidance: true,
            openers: true,
            judge_weight: 0.5,
            min_content: 0.25,
            critique_tokens: 96,
            method: SteerMethod::Prompt,
        }
    }

    /// Rejects settings a debate cannot run with, saying which and why.
    pub fn validate(&self) -> Result<(), DebateError> {
        let bad = |m: String| Err(DebateError::Config(m));
        if self.writers.is_empty() {
            return bad("a debate needs at least one writer (--writers 1 or more)".into());
        }
        if self.candidates == 0 {
            return bad(
                "each writer needs at least one candidate per round (--candidates 1 or more)"
                    .into(),
            );
        }
        if self.max_rounds == 0 {
            return bad("--max-rounds must be at least 1".into());
        }
        for w in &self.writers {
            if !w.temperature.is_finite() || w.temperature < 0.0 {
                return bad(format!(
                    "writer temperature must be 0 or positive, got {}",
                    w.temperature
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.judge_weight) {
            return bad(format!(
                "judge weight must be in [0, 1], got {}",
                self.judge_weight
            ));
        }
        self.schedule.validate().map_err(DebateError::Config)
    }
}

/// A seed for one draw, derived from the debate's seed and where the draw happens, so
/// that no two agents (and never the judge) share one, and a rerun gets the same ones.
pub fn derive_seed(base: u64, role: &str, round: usize, agent: usize, draw: usize) -> u64 {
    // FNV-1a over the parts, then a splitmix64 finalizer to spread the bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&base.to_le_bytes());
    eat(role.as_bytes());
    eat(&(round as u64).to_le_bytes());
    eat(&(agent as u64).to_le_bytes());
    eat(&(draw as u64).to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_role_round_agent_and_draw() {
        let mut seen = std::collections::HashSet::new();
        for role in ["write", "critique", "judge"] {
            for r in 0..4 {
                for a in 0..4 {
                    for d in 0..3 {
                        assert!(seen.insert(derive_seed(42, role, r, a, d)));
                    }
                }
            }
        }
        assert_eq!(
            derive_seed(1, "write", 1, 0, 0),
            derive_seed(1, "write", 1, 0, 0)
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = DebateConfig::new("m");
        c.writers.clear();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("at least one writer")
        );
        let mut c = DebateConfig::new("m");
        c.candidates = 0;
        assert!(c.validate().is_err());
        assert!(DebateConfig::new("m").validate().is_ok());
    }
}
