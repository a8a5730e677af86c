//! Scoring continuations: how likely the model finds each of several answers to a prompt.
//!
//! This is how pathos asks a model a multiple-choice question without trusting numbers it
//! writes out: [`score_options`] returns the real log-probability of each option's
//! tokens following the prompt. The prompt is processed once; each option is run from
//! the cached prompt and the cache is cut back after it.

use super::arch::transformer::Logits;
use super::error::{Error, Result};
use super::model::{Model, Session};

/// Natural-log probability of `id` under `logits`, computed stably in f64.
fn log_prob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits
        .get(id as usize)
        .map_or(f64::NEG_INFINITY, |&l| l as f64 - max - sum.ln())
}

/// Log-probability of each option (already tokenized) as the continuation of `prompt`,
/// summed over the option's tokens. Reuses any prefix of `prompt` cached in `session`.
pub fn score_options(
    model: &Model,
    session: &mut Session,
    prompt: &[u32],
    options: &[Vec<u32>],
) -> Result<Vec<f64>> {
    if prompt.is_empty() {
        return Err(Error::InvalidSampling(
            "the prompt to score is empty".into(),
        ));
    }
    let longest = options.iter().map(Vec::len).max().unwrap_or(0);
    if prompt.len() + longest > session.capacity() {
        return Err(Error::ContextOverflow {
            prompt_tokens: prompt.len() + longest,
            context: session.capacity(),
            max_tokens: 0,
        });
    }
    let tf = &model.transformer;
    let cached = session.reuse_prefix(prompt);
    let last = tf.forward(&prompt[cached..], &mut session.cache, Logits::Last)?;
    session.tokens.extend_from_slice(&prompt[cached..]);
    let last: Vec<f32> = last.squeeze(0)?.to_vec1()?;
    let base = session.tokens.len();
    let mut out = Vec::with_capacity(options.len());
    for option in options {
        let Some((&first, _)) = option.split_first() else {
            return Err(Error::InvalidSampling("an option to score is empty".into()));
        };
        let mut lp = log_prob(&last, first);
        if option.len() > 1 {
            let rows = tf.forward(&option[..option.len() - 1], &mut session.cache, Logits::All)?;
            let rows: Vec<Vec<f32>> = rows.to_vec2()?;
            for (row, &next) in rows.iter().zip(&option[1..]) {
                lp += log_prob(row, next);
            }
            session.cache.truncate(base);
        }
        out.push(lp);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::log_prob;

    #[test]
    fn log_prob_is_a_normalized_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_prob(&logits, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(log_prob(&logits, 2) > log_prob(&logits, 0));
        assert_eq!(log_prob(&logits, 7), f64::NEG_INFINITY);
    }
}
