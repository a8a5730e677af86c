//! The debate's logic against a scripted backend: stop rules, the judge's separation
//! from the debaters, role swaps, the transcript's shape and reproducibility. Fast and
//! exact; the same protocol on a real model is covered in `tests/rewrite.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pathos::backend::scripted::{Call, ScriptedBackend};
use pathos::backend::{ChatRequest, ScoreRequest};
use pathos::debate::DebateError;
use pathos::debate::config::DebateConfig;
use pathos::debate::protocol::{Quiet, rewrite};
use pathos::debate::transcript::{Role, StopReason, Transcript, strip_timings};
use pathos::emotion::beam::{Beam, Target};

const SOURCE: &str = "The meeting has been moved to Thursday at ten. Please bring the quarterly figures and your notes from last week.";
const DRAFT: &str = " the meeting moved to Thursday at ten! Gladly bring the quarterly figures and your bright notes from last week, smiling.";

/// How the scripted agents behave.
#[derive(Clone, Copy)]
struct Script {
    /// Log-probability edge of " keep" over " revise" in critics' verdicts.
    keep_edge: f64,
    /// Whether CRIT scores rise each time they are asked (else they stay flat).
    crit_rises: bool,
}

fn joy() -> Target {
    Beam::builtin()
        .parse_target("joy", false, false)
        .expect("joy is a BEAM word")
}

fn user_text(r: &ChatRequest) -> &str {
    r.prompt.messages.last().map_or("", |m| m.content.as_str())
}

fn backend(script: Script) -> ScriptedBackend {
    let crit_calls = Arc::new(AtomicUsize::new(0));
    ScriptedBackend::new(
        &["writer-model", "judge-model"],
        |r: &ChatRequest| {
            let u = user_text(r);
            if u.starts_with("You are a critic") {
                "The draft says \"moved\" but could sound warmer; the facts are kept.".into()
            } else if u.contains("\"diction\"") {
                r#"{"diction": "glad, bright", "imagery": "smiling", "figurative_language": "none", "sentence_structure": "short", "tone": "cheerful"}"#.into()
            } else {
                DRAFT.into()
            }
        },
        move |r: &ScoreRequest| score(script, &crit_calls, r),
    )
}

fn score(script: Script, crit_calls: &AtomicUsize, r: &ScoreRequest) -> Vec<f64> {
    let n = r.options.len();
    if r.options == [" keep", " revise"] {
        return vec![script.keep_edge, 0.0];
    }
    if n == 11 && r.options[0] == " 0" {
        let call = crit_calls.fetch_add(1, Ordering::SeqCst);
        let peak = if script.crit_rises {
            (3 + call).min(10)
        } else {
            5
        };
        return (0..11).map(|i| -((i as f64 - peak as f64).abs())).collect();
    }
    let prompt = &r.prompt.messages.last().expect("a message").content;
    if prompt.starts_with("Read this text") && n == 7 {
        // Texts with glad words read joyful; the source and "N/A" read neutral.
        let glad = prompt.contains("Gladly");
        return (0..7)
            .map(|i| {
                let centre = if glad { 5.0 } else { 3.0 };
                -((i as f64 - centre).abs())
            })
            .collect();
    }
    vec![0.0; n]
}

fn config(max_rounds: usize) -> DebateConfig {
    let mut cfg = DebateConfig::new("writer-model");
    cfg.judge_model = "judge-model".into();
    cfg.max_rounds = max_rounds;
    cfg
}

fn run(script: Script, cfg: &DebateConfig) -> (Transcript, Vec<Call>) {
    let b = backend(script);
    let t = rewrite(&b, Beam::builtin(), cfg, SOURCE, joy(), &Quiet).expect("debate runs");
    (t, b.calls())
}

const DISAGREE: Script = Script {
    keep_edge: -3.0,
    crit_rises: true,
};

#[test]
fn max_rounds_ends_a_debate_that_keeps_improving() {
    let (t, _) = run(DISAGREE, &config(3));
    assert_eq!(t.stop_reason, StopReason::MaxRounds);
    assert_eq!(t.rounds.len(), 3);
    assert!(t.accepted);
    assert!(t.final_text.contains("Gladly"));
}

#[test]
fn flat_crit_scores_end_the_debate_in_round_two() {
    let script = Script {
        keep_edge: -3.0,
        crit_rises: false,
    };
    let (t, _) = run(script, &config(4));
    assert_eq!(t.stop_reason, StopReason::CritPlateau);
    assert_eq!(t.rounds.len(), 2);
}

#[test]
fn agreement_ends_the_debate_after_one_exchange() {
    let script = Script {
        keep_edge: 3.0,
        crit_rises: true,
    };
    let (t, _) = run(script, &config(4));
    assert_eq!(t.stop_reason, StopReason::AgentsDone);
    assert_eq!(
        t.rounds.len(),
        2,
        "agreement in round 1 alone does not count"
    );
}

#[test]
fn falling_contentiousness_ends_the_debate() {
    let mut cfg = config(10);
    cfg.schedule.divisor = 4.0; // 0.9, 0.225, 0.056 < 0.1
    let (t, _) = run(DISAGREE, &cfg);
    assert_eq!(t.stop_reason, StopReason::ContentiousnessFloor);
    assert_eq!(t.rounds.len(), 2);
    let deltas: Vec<f64> = t.rounds.iter().map(|r| r.contentiousness).collect();
    assert!((deltas[0] - 0.9).abs() < 1e-12 && (deltas[1] - 0.225).abs() < 1e-12);
    assert!((t.synthesis.contentiousness - 0.3).abs() < 1e-12);
}

#[test]
fn contentiousness_falls_by_the_schedule_and_prompts_carry_number_and_tone() {
    let (t, _) = run(DISAGREE, &config(3));
    let expected = [0.9, 0.75, 0.625];
    for (r, e) in t.rounds.iter().zip(expected) {
        assert!((r.contentiousness - e).abs() < 1e-12);
        let critic = r
            .turns
            .iter()
            .find(|turn| turn.role == Role::Critic)
            .expect("every round has critics");
        let prompt = &critic.prompt.messages[0].content;
        assert!(prompt.contains(&format!("{e:.2}")), "{prompt}");
        assert!(prompt.contains(&r.tone), "tone words in the prompt");
    }
}

#[test]
fn the_judge_shares_no_seed_and_no_history_with_debaters() {
    let (t, calls) = run(DISAGREE, &config(2));
    let debater_seeds: Vec<u64> = t
        .rounds
        .iter()
        .flat_map(|r| r.turns.iter().map(|turn| turn.sampling.seed))
        .collect();
    for r in &t.rounds {
        for c in &r.critiques {
            assert_eq!(c.crit.judge_model, "judge-model");
            assert!(!debater_seeds.contains(&c.crit.judge_seed));
        }
    }
    // The judge never generates text, and every question it is asked is a single
    // fresh user message: no debater's conversation is carried into it.
    for call in &calls {
        match call {
            Call::Chat(r) => assert_eq!(r.model, "writer-model"),
            Call::Score(r) if r.model == "judge-model" => {
                assert_eq!(r.prompt.messages.len(), 1);
                assert_eq!(r.prompt.messages[0].role, "user");
            }
            Call::Score(_) => {}
        }
    }
}

#[test]
fn the_judge_sees_every_pick_in_both_orders() {
    let (t, _) = run(DISAGREE, &config(2));
    for r in &t.rounds {
        let pick = r.pick.as_ref().expect("every round has a pick");
        assert_eq!(pick.drafts.len(), 2);
        assert_eq!(pick.prompts.len(), 2, "one prompt per order");
        let (a, b) = (&pick.drafts[0].text, &pick.drafts[1].text);
        let pos = |p: &str, s: &str| p.find(s).expect("draft shown");
        let first = &pick.prompts[0].messages[0].content;
        let second = &pick.prompts[1].messages[0].content;
        if a != b {
            assert!(pos(first, a) < pos(first, b));
            assert!(pos(second, b) < pos(second, a));
        }
    }
}

#[test]
fn critics_argue_about_the_other_writers_drafts() {
    let (t, _) = run(DISAGREE, &config(1));
    let critiques = &t.rounds[0].critiques;
    assert_eq!(critiques.len(), 2);
    for c in critiques {
        assert_ne!(c.critic, c.draft_author);
    }
}

#[test]
fn the_transcript_has_every_field_and_round_trips_through_serde() {
    let (t, _) = run(DISAGREE, &config(2));
    let v = serde_json::to_value(&t).expect("serializes");
    for key in [
        "version",
        "source",
        "target",
        "config",
        "detect_before",
        "rounds",
        "stop_reason",
        "synthesis",
        "features",
        "final_text",
        "detect_after",
        "totals",
    ] {
        assert!(v.get(key).is_some(), "transcript lacks `{key}`");
    }
    let turn = &v["rounds"][0]["turns"][0];
    for key in [
        "role",
        "agent",
        "model",
        "sampling",
        "contentiousness",
        "prompt",
        "output",
        "prompt_tokens",
        "generated_tokens",
    ] {
        assert!(turn.get(key).is_some(), "turn lacks `{key}`: {turn}");
    }
    assert!(v["rounds"][0]["critiques"][0]["crit"]["score"].is_number());
    assert_eq!(t.features.len(), 5);
    let back: Transcript = serde_json::from_value(v).expect("deserializes");
    assert_eq!(back, t);
}

#[test]
fn the_same_seeds_give_the_same_transcript() {
    let cfg = config(2);
    let mut a = serde_json::to_value(run(DISAGREE, &cfg).0).unwrap();
    let mut b = serde_json::to_value(run(DISAGREE, &cfg).0).unwrap();
    strip_timings(&mut a);
    strip_timings(&mut b);
    assert_eq!(a, b);
    let mut other = cfg.clone();
    other.seed += 1;
    let mut c = serde_json::to_value(run(DISAGREE, &other).0).unwrap();
    strip_timings(&mut c);
    assert_ne!(a["config"], c["config"]);
}

#[test]
fn bad_configs_and_texts_are_refused_before_any_call() {
    let b = backend(DISAGREE);
    let beam = Beam::builtin();
    let mut cfg = config(2);
    cfg.writers.clear();
    assert!(matches!(
        rewrite(&b, beam, &cfg, SOURCE, joy(), &Quiet),
        Err(DebateError::Config(_))
    ));
    let cfg = config(2);
    assert!(matches!(
        rewrite(&b, beam, &cfg, "  \n ", joy(), &Quiet),
        Err(DebateError::EmptyText)
    ));
    let long = "word ".repeat(3000);
    assert!(matches!(
        rewrite(&b, beam, &cfg, &long, joy(), &Quiet),
        Err(DebateError::TextTooLong { .. })
    ));
    assert!(b.calls().is_empty());
}
