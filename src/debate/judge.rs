//! The judge's and critics' decisions, read from token probabilities: CRIT scores
//! (0–10), which draft is best (asked in both presentation orders to cancel order
//! bias), and whether a critic has anything left to add.

use super::transcript::CritScore;
use crate::backend::{Backend, Prompt, ScoreRequest, softmax};
use crate::engine::Result;

/// What every judge prompt needs to know about the task.
pub struct Task<'a> {
    pub source: &'a str,
    pub word: &'a str,
    pub intensity: &'a str,
    pub pole: &'a str,
}

/// Scores one argument with CRIT: the expected value of the judge's 0–10 answer.
pub fn crit_score(
    backend: &dyn Backend,
    judge_model: &str,
    judge_seed: u64,
    task: &Task<'_>,
    draft: &str,
    argument: &str,
) -> Result<CritScore> {
    let user = crate::prompts::render(
        "crit",
        minijinja::context! {
            source => task.source, draft => draft, word => task.word, argument => argument.trim(),
        },
    );
    let prompt = Prompt::user(None, user).with_prefix("Score:");
    let scores = backend.score(&ScoreRequest {
        model: judge_model.to_string(),
        prompt: prompt.clone(),
        options: (0..=10).map(|i| format!(" {i}")).collect(),
    })?;
    let distribution = softmax(&scores.logprobs);
    let score = distribution
        .iter()
        .enumerate()
        .map(|(i, p)| i as f64 * p)
        .sum();
    Ok(CritScore {
        judge_model: judge_model.to_string(),
        judge_seed,
        prompt,
        distribution,
        score,
    })
}

/// Probability that a critic, having written `critique` in answer to `prompt`, gives
/// the verdict "keep" rather than "revise".
pub fn keep_probability(
    backend: &dyn Backend,
    model: &str,
    prompt: &Prompt,
    critique: &str,
) -> Result<f64> {
    let mut p = prompt.clone();
    p.prefix = format!("{}{}\nVerdict:", p.prefix, critique.trim_end());
    let scores = backend.score(&ScoreRequest {
        model: model.to_string(),
        prompt: p,
        options: vec![" keep".into(), " revise".into()],
    })?;
    Ok(softmax(&scores.logprobs)[0])
}

/// Letter labels for drafts shown to the judge.
fn label(i: usize) -> String {
    char::from(b'A' + (i % 26) as u8).to_string()
}

/// The judge's preference for each draft (summing to 1), averaged over the drafts shown
/// in the given order and in reverse, with the prompts of both orders.
pub fn pick(
    backend: &dyn Backend,
    judge_model: &str,
    task: &Task<'_>,
    drafts: &[&str],
) -> Result<(Vec<f64>, Vec<Prompt>)> {
    let n = drafts.len();
    if n < 2 {
        return Ok((vec![1.0; n], Vec::new()));
    }
    let mut pref = vec![0.0; n];
    let mut prompts = Vec::new();
    for reversed in [false, true] {
        let order: Vec<usize> = if reversed {
            (0..n).rev().collect()
        } else {
            (0..n).collect()
        };
        let shown: Vec<_> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| minijinja::context! { label => label(pos), text => drafts[i] })
            .collect();
        let user = crate::prompts::render(
            "pick",
            minijinja::context! {
                source => task.source, word => task.word, intensity => task.intensity,
                pole => task.pole, drafts => shown,
            },
        );
        let prompt = Prompt::user(None, user).with_prefix("The best rewrite is Rewrite");
        let scores = backend.score(&ScoreRequest {
            model: judge_model.to_string(),
            prompt: prompt.clone(),
            options: (0..n).map(|pos| format!(" {}", label(pos))).collect(),
        })?;
        for (pos, p) in softmax(&scores.logprobs).into_iter().enumerate() {
            pref[order[pos]] += p / 2.0;
        }
        prompts.push(prompt);
    }
    Ok((pref, prompts))
}

/// Spans a critic quoted (in straight or curly double quotes) that really occur in the
/// draft, so the transcript shows only quotes that point at something.
pub fn verified_quotes(critique: &str, draft: &str) -> Vec<String> {
    let normalized = critique.replace(['\u{201c}', '\u{201d}'], "\"");
    let draft_lower = draft.to_lowercase();
    normalized
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::trim)
        .filter(|q| !q.is_empty() && draft_lower.contains(&q.to_lowercase()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::scripted::ScriptedBackend;

    fn task() -> Task<'static> {
        Task {
            source: "src",
            word: "joy",
            intensity: "clear, strong",
            pole: "joy",
        }
    }

    #[test]
    fn pick_cancels_order_bias() {
        // A judge that always prefers whatever is shown first, plus a real preference
        // for the draft mentioning "sun".
        let b = ScriptedBackend::new(
            &["j"],
            |_| String::new(),
            |r| {
                let text = &r.prompt.messages[0].content;
                let first_is_sun = text.find("Rewrite A: sun").is_some();
                r.options
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        let mut lp = if i == 0 { 0.0 } else { -2.0 };
                        if (i == 0) == first_is_sun {
                            lp += 1.0;
                        }
                        lp
                    })
                    .collect()
            },
        );
        let (pref, prompts) = pick(&b, "j", &task(), &["rain", "sun"]).unwrap();
        assert_eq!(prompts.len(), 2);
        assert!(prompts[0].messages[0].content.contains("Rewrite A: rain"));
        assert!(prompts[1].messages[0].content.contains("Rewrite A: sun"));
        assert!((pref.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(pref[1] > pref[0], "{pref:?}");
    }

    #[test]
    fn crit_score_is_an_expected_value_in_range() {
        let b = ScriptedBackend::new(
            &["j"],
            |_| String::new(),
            |r| {
                r.options
                    .iter()
                    .map(|o| if o == " 8" { 0.0 } else { -30.0 })
                    .collect()
            },
        );
        let s = crit_score(
            &b,
            "j",
            7,
            &task(),
            "draft",
            "It is joyful because of \"sun\".",
        )
        .unwrap();
        assert!((s.score - 8.0).abs() < 1e-6);
        assert_eq!(s.distribution.len(), 11);
        assert_eq!(s.judge_seed, 7);
    }

    #[test]
    fn only_quotes_found_in_the_draft_are_kept() {
        let q = verified_quotes(
            "The words \u{201c}grey sky\u{201d} and \"purple cow\" are off.",
            "A grey sky hung low.",
        );
        assert_eq!(q, vec!["grey sky"]);
    }
}
