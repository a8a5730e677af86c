//! Self-supervised learning of what `check` needs (DIKE steps 1–3, SSHF steps 2–3):
//! every source text is rewritten into every behaviour of the policy's scale, each
//! variant's emotions are read, and the mean per behaviour is its profile Γ; for every
//! code of conduct the model writes harmful and harmless examples and states, in one
//! sentence, what separates them. The labels are the instructions given, not human
//! annotations. The result is a [`Profiles`] file with its provenance.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EthicsError;
use super::dike::{BehaviourProfile, EmotionVector, average, emotion_vector};
use super::policy::Policy;
use super::rules::{Rule, RuleOrigin, markers};
use crate::backend::{Backend, ChatRequest, Prompt};
use crate::debate::baselines::single_pass;
use crate::debate::config::{DebateConfig, derive_seed};
use crate::emotion::beam::{Beam, Target};
use crate::emotion::detect::Detector;
use crate::engine::sampler::SamplingParams;

const BUILTIN: &str = include_str!("profiles.json");

/// Format version of the profiles file.
pub const PROFILES_VERSION: u32 = 1;

/// Where a profiles file came from, so a check can say what it relies on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub model: String,
    pub model_sha256: String,
    pub seed: u64,
    pub corpus: String,
    pub corpus_sha256: String,
    pub sources: usize,
    pub policy: String,
    /// UTC, RFC 3339.
    pub date: String,
    pub pathos_version: String,
}

/// The behaviour profiles and rules `check` loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profiles {
    pub version: u32,
    pub provenance: Provenance,
    /// Emotion cells kept per vector when comparing (the paper's M).
    pub top_m: usize,
    pub behaviours: Vec<BehaviourProfile>,
    pub rules: Vec<Rule>,
}

impl Profiles {
    /// The profiles learned with the default model from the shipped corpus.
    pub fn builtin() -> Result<Self, EthicsError> {
        Self::parse(BUILTIN, Path::new("builtin profiles"))
    }

    /// Reads a profiles file.
    pub fn load(path: &Path) -> Result<Self, EthicsError> {
        let text = std::fs::read_to_string(path).map_err(|e| EthicsError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, EthicsError> {
        let bad = |message: String| EthicsError::Profiles {
            path: path.to_path_buf(),
            message,
        };
        let p: Profiles = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if p.version != PROFILES_VERSION {
            return Err(bad(format!(
                "format version {} is not the supported {PROFILES_VERSION}",
                p.version
            )));
        }
        if p.behaviours.is_empty() {
            return Err(bad(
                "it holds no behaviour profiles; run `pathos ethics learn`".into(),
            ));
        }
        Ok(p)
    }

    /// Checks the profiles were learned for this policy's scale.
    pub fn fits(&self, policy: &Policy, path: &Path) -> Result<(), EthicsError> {
        let have: Vec<&str> = self
            .behaviours
            .iter()
            .map(|b| b.behaviour.as_str())
            .collect();
        let want: Vec<&str> = policy.behaviours.iter().map(|b| b.name.as_str()).collect();
        if have != want {
            return Err(EthicsError::Profiles {
                path: path.to_path_buf(),
                message: format!(
                    "learned for the behaviours [{}] but the policy's scale is [{}]; run `pathos ethics learn --policy …` to learn profiles for it",
                    have.join(", "),
                    want.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Writes the file atomically (temp file, then rename), so a crash never leaves
    /// half a profiles file.
    pub fn save(&self, path: &Path) -> Result<(), EthicsError> {
        let io = |e: std::io::Error| EthicsError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        let json = serde_json::to_string_pretty(self).map_err(|e| EthicsError::Profiles {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::io::Write::write_all(&mut tmp, json.as_bytes()).map_err(io)?;
        std::io::Write::write_all(&mut tmp, b"\n").map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

/// What a learning run uses.
#[derive(Debug, Clone)]
pub struct LearnConfig {
    pub model: String,
    pub model_sha256: String,
    pub seed: u64,
    pub top_m: usize,
    /// Examples the model writes per code and side.
    pub examples: usize,
    pub corpus: String,
    pub corpus_sha256: String,
    pub date: String,
}

/// Progress of a learning run: `done` of `total` steps.
pub trait Progress {
    fn step(&self, done: usize, total: usize, what: &str);
}

impl<F: Fn(usize, usize, &str)> Progress for F {
    fn step(&self, done: usize, total: usize, what: &str) {
        self(done, total, what)
    }
}

/// The behaviour profiles: every source rewritten into every behaviour, read, averaged.
pub fn learn_profiles(
    backend: &dyn Backend,
    beam: &Beam,
    policy: &Policy,
    sources: &[String],
    cfg: &LearnConfig,
    progress: &dyn Progress,
) -> Result<Vec<BehaviourProfile>, EthicsError> {
    let detector = Detector::new(backend, beam, &cfg.model, true);
    let total = sources.len() * policy.behaviours.len();
    let mut done = 0;
    let mut profiles = Vec::new();
    for (b, behaviour) in policy.behaviours.iter().enumerate() {
        let target = Target {
            spectrum: policy.spectrum,
            level: beam.nearest_level(policy.behaviour_level(b)),
        };
        let mut vectors: Vec<EmotionVector> = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            progress.step(done, total, &behaviour.name);
            let mut debate = DebateConfig::new(&cfg.model);
            debate.seed = derive_seed(cfg.seed, "learn", i, b, 0);
            let variant = single_pass(backend, beam, &debate, source, target)?;
            let text = if variant.text.trim().is_empty() {
                source.clone()
            } else {
                variant.text
            };
            vectors.push(emotion_vector(&detector.detect(&text)?));
            done += 1;
        }
        profiles.push(BehaviourProfile {
            behaviour: behaviour.name.clone(),
            variants: vectors.len(),
            emotions: average(&vectors),
        });
    }
    progress.step(done, total, "profiles done");
    Ok(profiles)
}

/// One generated example, cut to its first paragraph and stripped of quotes.
fn example_text(raw: &str) -> String {
    raw.trim()
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches('"')
        .trim()
        .to_string()
}

/// Rules for every code: examples written by the model on both sides, the words that
/// separate them, and the model's one-sentence statement of the difference.
pub fn learn_rules(
    backend: &dyn Backend,
    policy: &Policy,
    cfg: &LearnConfig,
    progress: &dyn Progress,
) -> Result<Vec<Rule>, EthicsError> {
    let mut rules = Vec::new();
    for (k, code) in policy.codes.iter().enumerate() {
        progress.step(k, policy.codes.len(), &code.id);
        let mut sides: [Vec<String>; 2] = [code.harmful.clone(), code.harmless.clone()];
        let requests: Vec<(usize, ChatRequest)> = (0..2)
            .flat_map(|side| (0..cfg.examples).map(move |i| (side, i)))
            .map(|(side, i)| {
                let seed_example = sides[side].first().cloned().unwrap_or_default();
                let user = crate::prompts::render(
                    "ethics-example",
                    minijinja::context! {
                        description => &code.description, harmful => side == 0, example => seed_example,
                    },
                );
                (
                    side,
                    ChatRequest {
                        model: cfg.model.clone(),
                        prompt: Prompt::user(None, user),
                        sampling: SamplingParams {
                            temperature: 0.9,
                            seed: derive_seed(cfg.seed, "example", k, side, i),
                            ..SamplingParams::default()
                        },
                        max_tokens: 60,
                        stop: vec!["\n\n".into()],
                        constraint: None,
                        steer: vec![],
                        logprobs: None,
                    },
                )
            })
            .collect();
        let reqs: Vec<ChatRequest> = requests.iter().map(|(_, r)| r.clone()).collect();
        let completions = backend.chat(&reqs)?;
        for ((side, _), c) in requests.iter().zip(&completions) {
            let t = example_text(&c.text);
            if t.split_whitespace().count() >= 3 && !sides[*side].contains(&t) {
                sides[*side].push(t);
            }
        }
        let user = crate::prompts::render(
            "ethics-rule",
            minijinja::context! {
                description => &code.description, harmful => &sides[0], harmless => &sides[1],
            },
        );
        let req = ChatRequest {
            model: cfg.model.clone(),
            prompt: Prompt::user(None, user).with_prefix("They"),
            sampling: SamplingParams::greedy(),
            max_tokens: 48,
            stop: vec!["\n".into()],
            constraint: None,
            steer: vec![],
            logprobs: None,
        };
        let c = backend.chat(std::slice::from_ref(&req))?.remove(0);
        let sentence = format!("They{}", c.text)
            .split_inclusive(['.', '!', '?'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let [harmful, harmless] = sides;
        rules.push(Rule {
            code: code.id.clone(),
            text: sentence,
            markers: markers(&harmful, &harmless, 8),
            harmful,
            harmless,
            human_harmful: Vec::new(),
            human_harmless: Vec::new(),
            origin: RuleOrigin::Learned,
        });
    }
    progress.step(policy.codes.len(), policy.codes.len(), "rules done");
    Ok(rules)
}

/// The whole learning run.
pub fn learn(
    backend: &dyn Backend,
    beam: &Beam,
    policy: &Policy,
    sources: &[String],
    cfg: &LearnConfig,
    progress: &dyn Progress,
) -> Result<Profiles, EthicsError> {
    let behaviours = learn_profiles(backend, beam, policy, sources, cfg, progress)?;
    let rules = learn_rules(backend, policy, cfg, progress)?;
    Ok(Profiles {
        version: PROFILES_VERSION,
        provenance: Provenance {
            model: cfg.model.clone(),
            model_sha256: cfg.model_sha256.clone(),
            seed: cfg.seed,
            corpus: cfg.corpus.clone(),
            corpus_sha256: cfg.corpus_sha256.clone(),
            sources: sources.len(),
            policy: policy.name.clone(),
            date: cfg.date.clone(),
            pathos_version: env!("CARGO_PKG_VERSION").into(),
        },
        top_m: cfg.top_m,
        behaviours,
        rules,
    })
}
