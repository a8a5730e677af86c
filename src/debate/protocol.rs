//! The debate itself: [`rewrite`] runs rounds of drafting, critique and judging under a
//! falling contentiousness, stops on the first rule that fires, and closes with a
//! conciliatory synthesis.
//!
//! A round: every writer draws `candidates` drafts (round 1 from the source, later
//! rounds revising its last draft against the critiques it received); drafts that copy
//! the source, lose its content or have the wrong length are set aside and the rest are
//! read by the judge's emotion detector, each writer keeping its closest; every writer
//! then critiques every other writer's draft at the round's contentiousness and says
//! whether it has anything left to add; the judge scores each critique with CRIT and
//! picks the round's best draft, asked in both orders. Stop rules: every critic done,
//! mean CRIT not improving, contentiousness below the floor, the round cap.

use super::DebateError;
use super::config::{DebateConfig, derive_seed};
use super::judge::{self, Task};
use super::schedule::tone;
use super::select::{clean, closeness, fitness, screen};
use super::transcript::{
    Candidate, Critique, DraftScore, Feature, Pick, Role, Round, StopReason, Synthesis,
    TRANSCRIPT_VERSION, Totals, Transcript, Turn,
};
use crate::backend::{Backend, ChatRequest, Completion, Prompt};
use crate::emotion::beam::{Beam, Target, format_level};
use crate::emotion::detect::Detector;
use crate::emotion::examples::{Examples, Guidance};
use crate::engine::constrain::Constraint;
use crate::engine::sampler::SamplingParams;
use crate::eval::metrics::token_overlap;

/// Progress of a debate, for a progress bar or a live view.
#[derive(Debug, Clone)]
pub enum Event {
    /// Reading the emotions of the source or of the final text.
    Detecting(&'static str),
    /// A round begins.
    Round {
        index: usize,
        of: usize,
        contentiousness: f64,
    },
    /// A step within the current round.
    Step(String),
    /// An agent's turn has finished (a writer's draw or a critique), with the round it
    /// belongs to (0 for the synthesis).
    Turn { round: usize, turn: Box<Turn> },
    /// A round is over: its drafts, critiques, CRIT scores and pick.
    RoundEnd(Box<Round>),
    /// The emotions of the source (`"source"`) or the final text (`"result"`) were read.
    Detected {
        what: &'static str,
        detection: Box<crate::emotion::detect::Detection>,
    },
    /// The closing synthesis begins.
    Synthesis,
    /// The debate is over.
    Done(StopReason),
}

/// Receives debate progress.
pub trait Observer {
    fn event(&self, event: Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: Event) {}
}

/// Things every step of one debate needs.
struct Debate<'a> {
    backend: &'a dyn Backend,
    beam: &'a Beam,
    cfg: &'a DebateConfig,
    source: &'a str,
    target: Target,
    detector: Detector<'a>,
    guidance: Guidance,
    observer: &'a dyn Observer,
    totals: Totals,
    judge_seed: u64,
    /// The round under way (0 before the first and during the synthesis).
    round: usize,
}

/// Wording of a target for prompts.
fn target_words(beam: &Beam, target: Target) -> (String, String, String, String, String) {
    let s = &beam.spectra[target.spectrum];
    let level = beam.level(target);
    let pole = if level > 0.0 {
        s.positive.clone()
    } else if level < 0.0 {
        s.negative.clone()
    } else {
        "neither pole".into()
    };
    (
        beam.word(target).to_string(),
        beam.intensity[target.level].clone(),
        pole,
        format!("{}↔{}", s.negative, s.positive),
        format_level(level),
    )
}

/// Tokens a writer may spend on a draft of a text of `words` words.
pub(crate) fn draft_budget(words: usize) -> usize {
    (words * 3 + 32).min(512)
}

/// The values every writer prompt template reads: the target in words, the source and
/// the guidance the config allows.
pub(crate) fn writer_values(
    beam: &Beam,
    cfg: &DebateConfig,
    guidance: &Guidance,
    source: &str,
    target: Target,
) -> minijinja::Value {
    let (word, intensity, pole, spectrum, level) = target_words(beam, target);
    // With steering alone the prompt asks for a plain rewrite: the vector carries the
    // emotion.
    let named = cfg.method.prompts();
    minijinja::context! {
        word => word, intensity => intensity, pole => pole, spectrum => spectrum,
        level => level, source => source.trim(), text => source.trim(),
        steer_only => !named,
        use_words => if cfg.word_guidance && named { guidance.use_words.clone() } else { Vec::new() },
        avoid_words => if cfg.word_guidance && named { guidance.avoid_words.clone() } else { Vec::new() },
        example => if cfg.few_shot && named { guidance.example.clone() } else { None },
    }
}

/// The steering a writer runs with: the target's spectrum at the target's level when
/// the method steers (nothing for a neutral target).
pub(crate) fn writer_steering(
    beam: &Beam,
    cfg: &DebateConfig,
    target: Target,
) -> Vec<crate::steer::SteerSpec> {
    if !cfg.method.steers() || beam.level(target) == 0.0 {
        return Vec::new();
    }
    vec![crate::steer::SteerSpec {
        spectrum: beam.spectra[target.spectrum].name.clone(),
        amount: crate::steer::Amount::Level(beam.level(target)),
    }]
}

/// The start of a writer's answer for one draw, taking the openers in turn so that the
/// draws of a round differ; empty when openers are off or the target is neutral.
pub(crate) fn opener(cfg: &DebateConfig, guidance: &Guidance, index: usize) -> String {
    if !cfg.openers || !cfg.method.prompts() || guidance.openers.is_empty() {
        return String::new();
    }
    guidance.openers[index % guidance.openers.len()].clone()
}

/// Stops that keep a writer from carrying on into a new example or a second answer.
pub(crate) fn writer_stops() -> Vec<String> {
    [
        "\nText:",
        "\nRewrite:",
        "\nOriginal:",
        "\nExample",
        "\nCritic:",
        "\nNote:",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl<'a> Debate<'a> {
    fn prompt_values(&self) -> minijinja::Value {
        writer_values(
            self.beam,
            self.cfg,
            &self.guidance,
            self.source,
            self.target,
        )
    }

    fn chat(&mut self, requests: &[ChatRequest]) -> Result<Vec<Completion>, DebateError> {
        let out = self.backend.chat(requests)?;
        for c in &out {
            self.totals.generated_tokens += c.generated_tokens;
            self.totals.prompt_tokens += c.prompt_tokens - c.cached_tokens;
        }
        Ok(out)
    }

    /// Screens and reads a draw, giving its candidate record.
    fn assess(
        &mut self,
        writer: usize,
        turn: usize,
        output: &str,
    ) -> Result<Candidate, DebateError> {
        let text = clean(output, self.source);
        let rejected = screen(&text, self.source, self.cfg.min_content);
        let content_kept = token_overlap(&text, self.source);
        let (reading, close) = if rejected.is_none() {
            self.totals.score_calls += 1;
            let r = self.detector.spectrum(&text, self.target.spectrum)?;
            let c = closeness(self.beam, self.target, &r);
            (Some(r), c)
        } else {
            (None, 0.0)
        };
        Ok(Candidate {
            writer,
            turn,
            fitness: fitness(close, content_kept),
            text,
            rejected,
            reading,
            closeness: close,
            content_kept,
        })
    }

    fn writer_steering(&self) -> Vec<crate::steer::SteerSpec> {
        writer_steering(self.beam, self.cfg, self.target)
    }

    /// Every writer draws its candidates; returns the turns and candidates.
    fn draw(
        &mut self,
        round: usize,
        role: Role,
        delta: f64,
        prompts: &[(usize, Prompt)],
    ) -> Result<(Vec<Turn>, Vec<Candidate>), DebateError> {
        let budget = draft_budget(self.source.split_whitespace().count());
        let mut requests = Vec::new();
        let tag = if role == Role::Synthesizer {
            "synthesize"
        } else {
            "write"
        };
        for (w, prompt) in prompts {
            let spec = &self.cfg.writers[*w];
            for d in 0..self.cfg.candidates {
                let start = opener(
                    self.cfg,
                    &self.guidance,
                    round + *w * self.cfg.candidates + d,
                );
                requests.push(ChatRequest {
                    model: spec.model.clone(),
                    prompt: prompt.clone().with_prefix(start),
                    sampling: SamplingParams {
                        temperature: spec.temperature,
                        seed: derive_seed(self.cfg.seed, tag, round, *w, d),
                        ..SamplingParams::default()
                    },
                    max_tokens: budget,
                    stop: writer_stops(),
                    constraint: None,
                    steer: self.writer_steering(),
                    logprobs: None,
                });
            }
        }
        self.observer.event(Event::Step(format!(
            "{} draws from {} writer(s)",
            requests.len(),
            prompts.len()
        )));
        let completions = self.chat(&requests)?;
        let mut turns = Vec::new();
        let mut candidates = Vec::new();
        for (i, (req, c)) in requests.iter().zip(&completions).enumerate() {
            let w = prompts[i / self.cfg.candidates].0;
            turns.push(
                Turn::new(
                    role,
                    format!("writer-{w}"),
                    &req.model,
                    &req.sampling,
                    req.max_tokens,
                    delta,
                    &req.prompt,
                    c,
                )
                .steered(&req.steer),
            );
            if let Some(t) = turns.last() {
                self.observer.event(Event::Turn {
                    round: self.round,
                    turn: Box::new(Turn::clone(t)),
                });
            }
            self.observer.event(Event::Step(format!(
                "reading draw {} of writer {w}",
                i % self.cfg.candidates + 1
            )));
            candidates.push(self.assess(w, i, &format!("{}{}", req.prompt.prefix, c.text))?);
        }
        Ok((turns, candidates))
    }

    fn full_detect(
        &mut self,
        what: &'static str,
        text: &str,
    ) -> Result<crate::emotion::detect::Detection, DebateError> {
        self.observer.event(Event::Detecting(what));
        self.totals.score_calls += self.beam.spectra.len();
        let detection = self.detector.detect(text)?;
        self.observer.event(Event::Detected {
            what,
            detection: Box::new(detection.clone()),
        });
        Ok(detection)
    }
}

/// The best accepted candidate of each writer, by fitness.
fn best_per_writer(candidates: &[Candidate], writers: usize) -> Vec<Option<&Candidate>> {
    (0..writers)
        .map(|w| {
            candidates
                .iter()
                .filter(|c| c.writer == w && c.rejected.is_none())
                .max_by(|a, b| a.fitness.total_cmp(&b.fitness))
        })
        .collect()
}

/// Rewrites `source` toward `target` by debate and returns the full transcript.
pub fn rewrite(
    backend: &dyn Backend,
    beam: &Beam,
    cfg: &DebateConfig,
    source: &str,
    target: Target,
    observer: &dyn Observer,
) -> Result<Transcript, DebateError> {
    cfg.validate()?;
    let source = source.trim();
    if source.is_empty() {
        return Err(DebateError::EmptyText);
    }
    check_room(backend, cfg, source)?;
    let start = std::time::Instant::now();
    let mut d = Debate {
        backend,
        beam,
        cfg,
        source,
        target,
        detector: Detector::new(backend, beam, &cfg.judge_model, true),
        guidance: Examples::builtin().guidance(beam, target),
        observer,
        totals: Totals::default(),
        judge_seed: derive_seed(cfg.seed, "judge", 0, 0, 0),
        round: 0,
    };
    let detect_before = d.full_detect("source", source)?;
    let n = cfg.writers.len();
    let mut drafts: Vec<Option<String>> = vec![None; n];
    let mut received: Vec<Vec<String>> = vec![Vec::new(); n];
    let mut rounds: Vec<Round> = Vec::new();
    let mut best: Option<Candidate> = None;
    let mut fallback: Option<Candidate> = None;
    let mut prev_crit: Option<f64> = None;
    let mut stop = StopReason::MaxRounds;
    let values = d.prompt_values();

    for index in 1..=cfg.max_rounds {
        d.round = index;
        let delta = cfg.schedule.at(index);
        observer.event(Event::Round {
            index,
            of: cfg.max_rounds,
            contentiousness: delta,
        });
        // Writers.
        let prompts: Vec<(usize, Prompt)> = (0..n)
            .map(|w| {
                let own = drafts[w]
                    .clone()
                    .or_else(|| best.as_ref().map(|b| b.text.clone()));
                let user = match own {
                    Some(draft) if index > 1 => crate::prompts::render(
                        "revise",
                        minijinja::context! { ..values.clone(), ..minijinja::context! {
                        draft => draft, critiques => received[w].clone() } },
                    ),
                    _ => crate::prompts::render("write", values.clone()),
                };
                (w, Prompt::user(None, user))
            })
            .collect();
        let (mut turns, candidates) = d.draw(index, Role::Writer, delta, &prompts)?;
        for c in &candidates {
            if c.rejected != Some(super::transcript::Rejection::Empty)
                && fallback.as_ref().is_none_or(|f| {
                    c.content_kept > f.content_kept
                        && c.rejected != Some(super::transcript::Rejection::CopiesSource)
                })
            {
                fallback = Some(c.clone());
            }
        }
        let chosen = best_per_writer(&candidates, n);
        for (w, c) in chosen.iter().enumerate() {
            if let Some(c) = c {
                drafts[w] = Some(c.text.clone());
            }
        }
        // Critics: every writer on every other writer's current draft.
        let t = tone(delta);
        let (word, intensity, pole, _, _) = target_words(beam, target);
        let mut pairs = Vec::new();
        let mut requests = Vec::new();
        for critic in 0..n {
            for (author, draft) in drafts.iter().enumerate() {
                let Some(draft) = draft.as_ref().filter(|_| author != critic || n == 1) else {
                    continue;
                };
                let user = crate::prompts::render(
                    "critique",
                    minijinja::context! { ..values.clone(), ..minijinja::context! {
                    draft => draft, delta => delta, tone => &t.tone, emphasis => &t.emphasis,
                    language => &t.language } },
                );
                let spec = &cfg.writers[critic];
                pairs.push((critic, author));
                requests.push(ChatRequest {
                    model: spec.model.clone(),
                    prompt: Prompt::user(None, user),
                    sampling: SamplingParams {
                        temperature: 0.7,
                        seed: derive_seed(cfg.seed, "critique", index, critic, author),
                        ..SamplingParams::default()
                    },
                    max_tokens: cfg.critique_tokens,
                    stop: vec!["Verdict".into(), "\n\n\n".into()],
                    constraint: None,
                    steer: vec![],
                    logprobs: None,
                });
            }
        }
        if !requests.is_empty() {
            observer.event(Event::Step(format!("{} critiques", requests.len())));
        }
        let completions = d.chat(&requests)?;
        let task = Task {
            source,
            word: &word,
            intensity: &intensity,
            pole: &pole,
        };
        let mut critiques = Vec::new();
        received.iter_mut().for_each(Vec::clear);
        for ((&(critic, author), req), c) in pairs.iter().zip(&requests).zip(&completions) {
            let turn = turns.len();
            turns.push(Turn::new(
                Role::Critic,
                format!("writer-{critic}"),
                &req.model,
                &req.sampling,
                req.max_tokens,
                delta,
                &req.prompt,
                c,
            ));
            observer.event(Event::Turn {
                round: index,
                turn: Box::new(turns[turn].clone()),
            });
            let draft = drafts[author].as_deref().unwrap_or_default();
            let argument = c.text.trim();
            observer.event(Event::Step(format!(
                "judging critique of writer {author} by writer {critic}"
            )));
            let keep = judge::keep_probability(backend, &req.model, &req.prompt, argument)?;
            let crit = judge::crit_score(
                backend,
                &cfg.judge_model,
                d.judge_seed,
                &task,
                draft,
                argument,
            )?;
            d.totals.score_calls += 2;
            received[author].push(argument.to_string());
            critiques.push(Critique {
                critic,
                draft_author: author,
                turn,
                quotes: judge::verified_quotes(argument, draft),
                keep,
                crit,
            });
        }
        let crit_mean =
            crate::eval::metrics::mean(&critiques.iter().map(|c| c.crit.score).collect::<Vec<_>>());
        // The judge's pick among this round's drafts.
        let live: Vec<&Candidate> = chosen.iter().flatten().copied().collect();
        let pick = if live.is_empty() {
            None
        } else {
            observer.event(Event::Step("judge picks the best draft".into()));
            let texts: Vec<&str> = live.iter().map(|c| c.text.as_str()).collect();
            let (pref, prompts) = judge::pick(backend, &cfg.judge_model, &task, &texts)?;
            d.totals.score_calls += prompts.len();
            let drafts_scored: Vec<DraftScore> = live
                .iter()
                .zip(&pref)
                .map(|(c, &p)| DraftScore {
                    author: c.writer,
                    text: c.text.clone(),
                    preference: p,
                    closeness: c.closeness,
                    score: cfg.judge_weight * p + (1.0 - cfg.judge_weight) * c.closeness,
                })
                .collect();
            let top = (0..drafts_scored.len())
                .max_by(|&a, &b| drafts_scored[a].score.total_cmp(&drafts_scored[b].score))
                .unwrap_or(0);
            best = Some(live[top].clone());
            Some(Pick {
                best: drafts_scored[top].author,
                drafts: drafts_scored,
                prompts,
            })
        };
        // A debate needs one exchange (critique, then revision) before agreement counts:
        // small models say "keep" to almost any first draft.
        let all_done = index > 1 && !critiques.is_empty() && critiques.iter().all(|c| c.keep > 0.5);
        let plateau = matches!((prev_crit, crit_mean), (Some(p), Some(c)) if c <= p);
        rounds.push(Round {
            index,
            contentiousness: delta,
            tone: t.tone.clone(),
            turns,
            candidates,
            critiques,
            crit_mean,
            pick,
            best: best.as_ref().map(|b| b.text.clone()),
        });
        if let Some(r) = rounds.last() {
            observer.event(Event::RoundEnd(Box::new(r.clone())));
        }
        let fired = if all_done && best.is_some() {
            Some(StopReason::AgentsDone)
        } else if plateau && best.is_some() {
            Some(StopReason::CritPlateau)
        } else if cfg.schedule.exhausted_after(index) {
            Some(StopReason::ContentiousnessFloor)
        } else if index == cfg.max_rounds {
            Some(StopReason::MaxRounds)
        } else {
            None
        };
        if let Some(s) = fired {
            stop = s;
            break;
        }
        prev_crit = crit_mean.or(prev_crit);
    }

    // Conciliatory synthesis by the author of the best draft.
    observer.event(Event::Synthesis);
    d.round = 0;
    let delta = cfg.schedule.synthesis;
    let t = tone(delta);
    let author = best.as_ref().map_or(0, |b| b.writer);
    let shown: Vec<_> = drafts
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, text)| minijinja::context! { label => char::from(b'A' + i as u8).to_string(), text => text })
        .collect();
    let points: Vec<String> = received.iter().flatten().take(4).cloned().collect();
    let (synth_turns, synth_candidates) = if shown.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let user = crate::prompts::render(
            "synthesize",
            minijinja::context! { ..values.clone(), ..minijinja::context! {
            drafts => shown, critiques => points, delta => delta, tone => &t.tone } },
        );
        d.draw(
            cfg.max_rounds + 1,
            Role::Synthesizer,
            delta,
            &[(author, Prompt::user(None, user))],
        )?
    };
    let synth_best = synth_candidates
        .iter()
        .filter(|c| c.rejected.is_none())
        .max_by(|a, b| a.fitness.total_cmp(&b.fitness))
        .cloned();
    let (final_candidate, chosen, accepted) = match (synth_best, best.clone()) {
        (Some(s), Some(b)) if b.fitness > s.fitness => (Some(b), "best_draft", true),
        (Some(s), _) => (Some(s), "synthesis", true),
        (None, Some(b)) => (Some(b), "best_draft", true),
        (None, None) => (fallback.clone(), "least_bad_draw", false),
    };
    let final_text = final_candidate.map_or_else(|| source.to_string(), |c| c.text);
    let synthesis = Synthesis {
        contentiousness: delta,
        turns: synth_turns,
        candidates: synth_candidates,
        chosen: chosen.to_string(),
    };

    // The writer names the features its final text uses.
    observer.event(Event::Step("listing linguistic features".into()));
    let (word, _, _, _, _) = target_words(beam, target);
    let user = crate::prompts::render(
        "features",
        minijinja::context! { source => source, word => word, text => &final_text },
    );
    let spec = &cfg.writers[author];
    let req = ChatRequest {
        model: spec.model.clone(),
        prompt: Prompt::user(None, user),
        sampling: SamplingParams {
            seed: derive_seed(cfg.seed, "features", 0, author, 0),
            ..SamplingParams::greedy()
        },
        max_tokens: 220,
        stop: Vec::new(),
        constraint: Some(Constraint::JsonSchema(features_schema())),
        steer: vec![],
        logprobs: None,
    };
    let c = d.chat(std::slice::from_ref(&req))?.remove(0);
    let features = parse_features(&c.text);
    let features_turn = Some(Turn::new(
        Role::Writer,
        format!("writer-{author}"),
        &req.model,
        &req.sampling,
        req.max_tokens,
        delta,
        &req.prompt,
        &c,
    ));

    let detect_after = d.full_detect("final text", &final_text)?;
    observer.event(Event::Done(stop));
    let mut totals = d.totals.clone();
    totals.ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok(Transcript {
        version: TRANSCRIPT_VERSION,
        source: source.to_string(),
        target: beam.view(target),
        config: cfg.clone(),
        detect_before,
        rounds,
        stop_reason: stop,
        synthesis,
        features_turn,
        features,
        final_text,
        accepted,
        detect_after,
        totals,
    })
}

/// The linguistic features the paper's case studies name, as (JSON key, label).
const FEATURES: [(&str, &str); 5] = [
    ("diction", "Diction"),
    ("imagery", "Imagery"),
    ("figurative_language", "Figurative language"),
    ("sentence_structure", "Sentence structure"),
    ("tone", "Tone"),
];

/// The JSON object the features answer is constrained to: one short string per
/// feature, so even the smallest model returns all five, parseable.
pub fn features_schema() -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = FEATURES
        .iter()
        .map(|(key, _)| {
            (
                key.to_string(),
                serde_json::json!({"type": "string", "minLength": 3, "maxLength": 100}),
            )
        })
        .collect();
    serde_json::json!({
        "type": "object",
        "properties": properties,
        "required": FEATURES.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// The features of a constrained answer, in the paper's order; empty when the answer
/// was cut off before it closed.
pub fn parse_features(text: &str) -> Vec<Feature> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) else {
        return Vec::new();
    };
    FEATURES
        .iter()
        .filter_map(|(key, label)| {
            let text = map.get(*key)?.as_str()?.trim();
            (!text.is_empty()).then(|| Feature {
                name: label.to_lowercase(),
                text: text.to_string(),
            })
        })
        .collect()
}

/// Refuses a text too long for the debate's longest prompt (the synthesis, which shows
/// every writer's draft beside the source) before any work is done.
fn check_room(backend: &dyn Backend, cfg: &DebateConfig, source: &str) -> Result<(), DebateError> {
    let mut models: Vec<&str> = cfg.writers.iter().map(|w| w.model.as_str()).collect();
    models.push(&cfg.judge_model);
    for model in models {
        let (tokens, context) = backend.prompt_room(model, &Prompt::user(None, source))?;
        let n = cfg.writers.len();
        let needed =
            tokens * (n + 2) * 3 / 2 + 400 + draft_budget(source.split_whitespace().count());
        if needed > context {
            return Err(DebateError::TextTooLong {
                text_tokens: tokens,
                writers: n,
                needed,
                model: model.to_string(),
                context,
            });
        }
    }
    Ok(())
}
