//! Choosing the next token from logits.
//!
//! [`SamplingParams`] is what a user sets; [`Sampler`] applies it in llama.cpp's order:
//! repetition penalty, top-k, top-p, min-p, temperature, then a draw from a seeded RNG.
//! Temperature 0 is greedy. The sampler keeps its candidate buffer between calls, so a
//! step allocates nothing once warm.

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// User-facing sampling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep only the k most likely tokens; `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 disables).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0 disables).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens (1.0 disables).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(40),
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Rejects values that have no meaning, naming the parameter and its valid range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSampling(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be 0 (greedy) or positive, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        if self.top_k == Some(0) {
            return bad("top-k must be at least 1 (leave it out to keep all tokens)".into());
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!(
                "repeat-penalty must be positive, got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// Applies [`SamplingParams`] to logits, one step at a time.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler; fails on invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
        })
    }

    /// The settings in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is modified in place (penalties); `history` is the
    /// sequence so far, for the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 && p.repeat_last_n > 0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            for &t in &history[start..] {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = p.top_k.filter(|&k| k < c.len()) {
            c.select_nth_unstable_by(k, by_logit);
            c.truncate(k);
        }
        c.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 decide the top-p and min-p cut-offs.
        let max = c[0].1;
        let mut sum = 0f32;
        for e in c.iter_mut() {
            e.1 = (e.1 - max).exp();
            sum += e.1;
        }
        let mut keep = c.len();
        if p.top_p < 1.0 {
            let mut acc = 0f32;
            for (i, e) in c.iter().enumerate() {
                acc += e.1 / sum;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * c[0].1;
            keep = keep.min(c.iter().take_while(|e| e.1 >= floor).count().max(1));
        }
        c.truncate(keep);
        // Temperature reshapes the survivors: p^(1/T) is softmax(logit / T) renormalised.
        let inv_t = 1.0 / p.temperature;
        let mut total = 0f32;
        for e in c.iter_mut() {
            e.1 = e.1.powf(inv_t);
            total += e.1;
        }
        let mut r = self.rng.random::<f32>() * total;
        for e in c.iter() {
            r -= e.1;
            if r <= 0.0 {
                return e.0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, -1.0, 2.9]
    }

    #[test]
    fn greedy_takes_the_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn repeat_penalty_can_change_the_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 1.5,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
    }

    #[test]
    fn top_k_one_is_greedy_whatever_the_seed() {
        for seed in 0..20 {
            let mut s = Sampler::new(SamplingParams {
                top_k: Some(1),
                seed,
                ..SamplingParams::default()
            })
            .unwrap();
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn same_seed_same_draws_and_only_kept_tokens() {
        let params = SamplingParams {
            temperature: 1.5,
            top_k: Some(3),
            min_p: 0.0,
            top_p: 1.0,
            ..SamplingParams::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(a.iter().all(|t| [1, 4, 2].contains(t)), "{a:?}");
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.5,
            ..SamplingParams::default()
        })
        .unwrap();
        for _ in 0..50 {
            let t = s.sample(&mut logits(), &[]);
            assert!(t == 1 || t == 4, "{t}");
        }
    }

    #[test]
    fn invalid_values_are_rejected_with_their_name() {
        let check = |p: SamplingParams, word: &str| {
            let e = Sampler::new(p).err().unwrap().to_string();
            assert!(e.contains(word), "{e}");
        };
        check(
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top-p",
        );
        check(
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            "temperature",
        );
        check(
            SamplingParams {
                top_k: Some(0),
                ..Default::default()
            },
            "top-k",
        );
        check(
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            "min-p",
        );
        check(
            SamplingParams {
                repeat_penalty: 0.0,
                ..Default::default()
            },
            "repeat-penalty",
        );
    }
}
