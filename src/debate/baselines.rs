//! What the debate is measured against: a single-pass rewrite, and self-refine (one
//! writer critiques and revises its own draft until it has spent the same number of
//! tokens as the debate). Both use the debate's first writer, prompts and seeds.

use serde::{Deserialize, Serialize};

use super::DebateError;
use super::config::{DebateConfig, derive_seed};
use super::protocol::{draft_budget, opener, writer_stops, writer_values};
use super::schedule::tone;
use super::select::clean;
use super::transcript::{Role, Turn};
use crate::backend::{Backend, ChatRequest, Prompt};
use crate::emotion::beam::{Beam, Target};
use crate::emotion::examples::{Examples, Guidance};
use crate::engine::sampler::SamplingParams;

/// The outcome of a baseline rewrite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRun {
    pub method: String,
    pub text: String,
    pub turns: Vec<Turn>,
    pub generated_tokens: usize,
    pub ms: f64,
}

struct Runner<'a> {
    backend: &'a dyn Backend,
    cfg: &'a DebateConfig,
    turns: Vec<Turn>,
    generated: usize,
    steer: Vec<crate::steer::SteerSpec>,
}

impl Runner<'_> {
    fn ask(
        &mut self,
        role: Role,
        prompt: Prompt,
        seed: u64,
        temperature: f32,
        max_tokens: usize,
        stop: Vec<String>,
    ) -> Result<String, DebateError> {
        let w = &self.cfg.writers[0];
        let req = ChatRequest {
            model: w.model.clone(),
            prompt,
            sampling: SamplingParams {
                temperature,
                seed,
                ..SamplingParams::default()
            },
            max_tokens,
            stop,
            constraint: None,
            steer: self.steer.clone(),
            logprobs: None,
        };
        let c = self.backend.chat(std::slice::from_ref(&req))?.remove(0);
        self.generated += c.generated_tokens;
        self.turns.push(
            Turn::new(
                role,
                "writer-0".into(),
                &w.model,
                &req.sampling,
                max_tokens,
                0.0,
                &req.prompt,
                &c,
            )
            .steered(&req.steer),
        );
        Ok(format!("{}{}", req.prompt.prefix, c.text))
    }
}

/// The first writer's prompt for its first draw, as the debate gives it.
fn first_prompt(cfg: &DebateConfig, guidance: &Guidance, values: minijinja::Value) -> Prompt {
    let user = crate::prompts::render("write", values);
    Prompt::user(None, user).with_prefix(opener(cfg, guidance, 1))
}

/// One draw from the first writer with the debate's first prompt and seed.
pub fn single_pass(
    backend: &dyn Backend,
    beam: &Beam,
    cfg: &DebateConfig,
    source: &str,
    target: Target,
) -> Result<BaselineRun, DebateError> {
    let start = std::time::Instant::now();
    let mut r = Runner {
        backend,
        cfg,
        turns: Vec::new(),
        generated: 0,
        steer: super::protocol::writer_steering(beam, cfg, target),
    };
    let guidance = Examples::builtin().guidance(beam, target);
    let values = writer_values(beam, cfg, &guidance, source, target);
    let t = cfg.writers[0].temperature;
    let out = r.ask(
        Role::Writer,
        first_prompt(cfg, &guidance, values),
        derive_seed(cfg.seed, "write", 1, 0, 0),
        t,
        draft_budget(source.split_whitespace().count()),
        writer_stops(),
    )?;
    Ok(BaselineRun {
        method: "single".into(),
        text: clean(&out, source),
        turns: r.turns,
        generated_tokens: r.generated,
        ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Draft, then critique-and-revise by the same writer until `token_budget` tokens are
/// spent (at least one revision, at most `2 × max_rounds`).
pub fn self_refine(
    backend: &dyn Backend,
    beam: &Beam,
    cfg: &DebateConfig,
    source: &str,
    target: Target,
    token_budget: usize,
) -> Result<BaselineRun, DebateError> {
    let start = std::time::Instant::now();
    let mut r = Runner {
        backend,
        cfg,
        turns: Vec::new(),
        generated: 0,
        steer: super::protocol::writer_steering(beam, cfg, target),
    };
    let guidance = Examples::builtin().guidance(beam, target);
    let v = writer_values(beam, cfg, &guidance, source, target);
    let t = cfg.writers[0].temperature;
    let mut draft = clean(
        &r.ask(
            Role::Writer,
            first_prompt(cfg, &guidance, v.clone()),
            derive_seed(cfg.seed, "write", 1, 0, 0),
            t,
            draft_budget(source.split_whitespace().count()),
            writer_stops(),
        )?,
        source,
    );
    for round in 1..=cfg.max_rounds * 2 {
        if round > 1 && r.generated >= token_budget {
            break;
        }
        let delta = cfg.schedule.at(round);
        let tn = tone(delta);
        let critique_prompt = crate::prompts::render(
            "critique",
            minijinja::context! { ..v.clone(), ..minijinja::context! {
            draft => draft.clone(), delta => delta, tone => &tn.tone, emphasis => &tn.emphasis,
            language => &tn.language } },
        );
        let critique = r.ask(
            Role::Critic,
            Prompt::user(None, critique_prompt),
            derive_seed(cfg.seed, "critique", round, 0, 0),
            0.7,
            cfg.critique_tokens,
            vec!["Verdict".into()],
        )?;
        let revise_prompt = crate::prompts::render(
            "revise",
            minijinja::context! { ..v.clone(), ..minijinja::context! {
            draft => draft.clone(), critiques => vec![critique.trim().to_string()] } },
        );
        let revised = clean(
            &r.ask(
                Role::Writer,
                Prompt::user(None, revise_prompt).with_prefix(opener(cfg, &guidance, round + 1)),
                derive_seed(cfg.seed, "write", round + 1, 0, 0),
                t,
                draft_budget(source.split_whitespace().count()),
                writer_stops(),
            )?,
            source,
        );
        if !revised.is_empty() {
            draft = revised;
        }
    }
    Ok(BaselineRun {
        method: "self_refine".into(),
        text: draft,
        turns: r.turns,
        generated_tokens: r.generated,
        ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}
