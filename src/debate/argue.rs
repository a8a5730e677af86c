//! A two-sided SocraSynth debate over a claim: each side argues its stance at the
//! round's contentiousness and answers the other; after each exchange each side is asked
//! (by token probabilities) whether the other has convinced it; the debate ends on a
//! concession, when contentiousness falls below the floor, or at the round cap, with
//! closing statements at the conciliatory level. ERIS's review of an ethics verdict is
//! this debate with DIKE's advocate and ERIS as the sides.
//!
//! It shares the rewrite debate's schedule, tone table, seeds and turn records; what
//! differs is only what is argued about.

use serde::{Deserialize, Serialize};

use super::DebateError;
use super::config::derive_seed;
use super::protocol::{Event, Observer};
use super::schedule::{Schedule, tone};
use super::transcript::{Role, Turn};
use crate::backend::{Backend, ChatRequest, Prompt, ScoreRequest, softmax};
use crate::engine::sampler::SamplingParams;

/// One debater: who it is, which model speaks for it, what it argues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub name: String,
    pub model: String,
    pub stance: String,
}

/// How the argument runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArgueConfig {
    pub schedule: Schedule,
    pub max_rounds: usize,
    pub seed: u64,
    /// Token budget of one argument.
    pub max_tokens: usize,
    pub temperature: f32,
    /// A side concedes when its probability of answering "yes, convinced" reaches this.
    pub concede_at: f64,
    /// Setting both sides argue within (for example a cultural context).
    pub context: String,
}

impl Default for ArgueConfig {
    fn default() -> Self {
        Self {
            schedule: Schedule::default(),
            max_rounds: 4,
            seed: 42,
            max_tokens: 80,
            temperature: 0.7,
            concede_at: 0.5,
            context: String::new(),
        }
    }
}

/// One round: both sides' arguments and how convinced each then was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub round: usize,
    pub contentiousness: f64,
    pub turns: Vec<Turn>,
    /// Per side, the probability it concedes to the other.
    pub concessions: Vec<f64>,
}

/// How the argument ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Side `side` was convinced by the other: consensus on the other's position.
    Conceded { side: usize },
    /// Neither side gave way.
    NoConsensus,
}

/// The whole argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Argument {
    pub subject: String,
    pub sides: Vec<Side>,
    pub config: ArgueConfig,
    pub exchanges: Vec<Exchange>,
    /// Closing statements at the conciliatory level, one per side.
    pub closing: Vec<Turn>,
    pub outcome: Outcome,
    /// `concession`, `contentiousness_floor` or `max_rounds`.
    pub stop: String,
    pub ms: f64,
}

#[allow(clippy::too_many_arguments)]
fn speak(
    backend: &dyn Backend,
    subject: &str,
    sides: &[Side; 2],
    cfg: &ArgueConfig,
    round: usize,
    delta: f64,
    last: &[Option<String>; 2],
    closing: bool,
) -> Result<Vec<Turn>, DebateError> {
    let t = tone(delta);
    let requests: Vec<ChatRequest> = (0..2)
        .map(|i| {
            let other = 1 - i;
            let user = crate::prompts::render(
                "argue",
                minijinja::context! {
                    subject => subject, stance => &sides[i].stance, context => &cfg.context,
                    opponent => last[other].as_deref().unwrap_or_default(),
                    opponent_name => &sides[other].name, delta => delta, tone => &t.tone,
                    emphasis => &t.emphasis, language => &t.language, closing => closing,
                },
            );
            ChatRequest {
                model: sides[i].model.clone(),
                prompt: Prompt::user(None, user),
                sampling: SamplingParams {
                    temperature: cfg.temperature,
                    seed: derive_seed(cfg.seed, &sides[i].name, round, i, usize::from(closing)),
                    ..SamplingParams::default()
                },
                max_tokens: cfg.max_tokens,
                stop: vec!["\n\n\n".into()],
                constraint: None,
                steer: vec![],
                logprobs: None,
            }
        })
        .collect();
    let completions = backend.chat(&requests)?;
    Ok(requests
        .iter()
        .zip(&completions)
        .enumerate()
        .map(|(i, (r, c))| {
            Turn::new(
                if closing {
                    Role::Synthesizer
                } else {
                    Role::Critic
                },
                sides[i].name.clone(),
                &r.model,
                &r.sampling,
                r.max_tokens,
                delta,
                &r.prompt,
                c,
            )
        })
        .collect())
}

fn concessions(
    backend: &dyn Backend,
    subject: &str,
    sides: &[Side; 2],
    said: &[String; 2],
) -> Result<Vec<f64>, DebateError> {
    (0..2)
        .map(|i| {
            let other = 1 - i;
            let user = crate::prompts::render(
                "concede",
                minijinja::context! {
                    subject => subject, stance => &sides[i].stance,
                    opponent => &said[other], opponent_name => &sides[other].name,
                },
            );
            let s = backend.score(&ScoreRequest {
                model: sides[i].model.clone(),
                prompt: Prompt::user(None, user).with_prefix("Answer:"),
                options: vec![" yes".into(), " no".into()],
            })?;
            Ok(softmax(&s.logprobs)[0])
        })
        .collect()
}

/// The first side at or above the concession threshold, the less convinced first.
fn conceding(cfg: &ArgueConfig, c: &[f64]) -> Option<usize> {
    (0..c.len())
        .filter(|&i| c[i] >= cfg.concede_at)
        .max_by(|&a, &b| c[a].total_cmp(&c[b]))
}

/// Runs the argument between `sides` over `subject`.
pub fn argue(
    backend: &dyn Backend,
    subject: &str,
    sides: &[Side; 2],
    cfg: &ArgueConfig,
    observer: &dyn Observer,
) -> Result<Argument, DebateError> {
    if cfg.max_rounds == 0 {
        return Err(DebateError::Config(
            "--max-rounds must be at least 1".into(),
        ));
    }
    cfg.schedule.validate().map_err(DebateError::Config)?;
    let start = std::time::Instant::now();
    let mut last: [Option<String>; 2] = [None, None];
    let mut exchanges = Vec::new();
    let mut outcome = Outcome::NoConsensus;
    let mut stop = "max_rounds";
    for round in 1..=cfg.max_rounds {
        let delta = cfg.schedule.at(round);
        observer.event(Event::Round {
            index: round,
            of: cfg.max_rounds,
            contentiousness: delta,
        });
        let turns = speak(backend, subject, sides, cfg, round, delta, &last, false)?;
        let said = [
            turns[0].output.trim().to_string(),
            turns[1].output.trim().to_string(),
        ];
        let c = concessions(backend, subject, sides, &said)?;
        last = [Some(said[0].clone()), Some(said[1].clone())];
        let conceded = conceding(cfg, &c);
        exchanges.push(Exchange {
            round,
            contentiousness: delta,
            turns,
            concessions: c,
        });
        if let Some(side) = conceded {
            outcome = Outcome::Conceded { side };
            stop = "concession";
            break;
        }
        if cfg.schedule.exhausted_after(round) {
            stop = "contentiousness_floor";
            break;
        }
    }
    observer.event(Event::Synthesis);
    let closing = speak(
        backend,
        subject,
        sides,
        cfg,
        exchanges.len() + 1,
        cfg.schedule.synthesis,
        &last,
        true,
    )?;
    if outcome == Outcome::NoConsensus {
        let said = [
            closing[0].output.trim().to_string(),
            closing[1].output.trim().to_string(),
        ];
        if let Some(side) = conceding(cfg, &concessions(backend, subject, sides, &said)?) {
            outcome = Outcome::Conceded { side };
            stop = "concession";
        }
    }
    Ok(Argument {
        subject: subject.to_string(),
        sides: sides.to_vec(),
        config: cfg.clone(),
        exchanges,
        closing,
        outcome,
        stop: stop.into(),
        ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::scripted::ScriptedBackend;
    use crate::debate::protocol::Quiet;

    fn sides() -> [Side; 2] {
        [
            Side {
                name: "dike".into(),
                model: "m".into(),
                stance: "the text breaks the code".into(),
            },
            Side {
                name: "eris".into(),
                model: "m".into(),
                stance: "the text is acceptable".into(),
            },
        ]
    }

    /// A backend whose `eris` side is convinced once it has heard `word`.
    fn backend(word: &'static str) -> ScriptedBackend {
        ScriptedBackend::new(
            &["m"],
            |r| {
                let u = &r.prompt.messages[0].content;
                if u.contains("for this position: the text breaks the code") {
                    "It insults the reader by name.".into()
                } else {
                    "It is a blunt but fair complaint.".into()
                }
            },
            move |r| {
                let u = &r.prompt.messages[0].content;
                let eris = u.contains("position: the text is acceptable");
                if eris && u.contains(word) {
                    vec![-0.1, -3.0]
                } else {
                    vec![-3.0, -0.1]
                }
            },
        )
    }

    #[test]
    fn a_concession_ends_the_argument_with_consensus() {
        let b = backend("insults");
        let a = argue(
            &b,
            "S: is it fine?",
            &sides(),
            &ArgueConfig::default(),
            &Quiet,
        )
        .unwrap();
        assert_eq!(a.outcome, Outcome::Conceded { side: 1 });
        assert_eq!(a.stop, "concession");
        assert_eq!(a.exchanges.len(), 1);
        assert_eq!(a.closing.len(), 2);
        assert!(a.closing.iter().all(|t| t.contentiousness == 0.3));
    }

    #[test]
    fn without_concession_it_runs_to_the_cap_with_falling_contentiousness() {
        let b = backend("never said");
        let cfg = ArgueConfig {
            max_rounds: 3,
            ..ArgueConfig::default()
        };
        let a = argue(&b, "S: is it fine?", &sides(), &cfg, &Quiet).unwrap();
        assert_eq!(a.outcome, Outcome::NoConsensus);
        assert_eq!(a.stop, "max_rounds");
        let d: Vec<f64> = a.exchanges.iter().map(|e| e.contentiousness).collect();
        assert_eq!(d.len(), 3);
        assert!((d[0] - 0.9).abs() < 1e-12 && (d[1] - 0.75).abs() < 1e-12);
        // Seeds differ between sides and rounds.
        let seeds: std::collections::HashSet<u64> = a
            .exchanges
            .iter()
            .flat_map(|e| e.turns.iter().map(|t| t.seed))
            .collect();
        assert_eq!(seeds.len(), 6);
        // The floor stops a long argument before the cap.
        let cfg = ArgueConfig {
            max_rounds: 50,
            ..ArgueConfig::default()
        };
        let a = argue(&b, "S: is it fine?", &sides(), &cfg, &Quiet).unwrap();
        assert_eq!(a.stop, "contentiousness_floor");
        // 0.9 / 1.2^12 = 0.101 is the last round at or above 0.1.
        assert_eq!(a.exchanges.len(), 13);
    }
}
