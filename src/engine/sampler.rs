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
    /// A strided sample of the logits, for estimating the top-k cut-off.
    sample: Vec<f32>,
}

impl Sampler {
    /// A sampler; fails on invalid parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(params.seed),
            params,
            candidates: Vec::new(),
            sample: Vec::new(),
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
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        match p.top_k.filter(|&k| k < logits.len()) {
            Some(k) => top_k_into(logits, k, &mut self.sample, c),
            None => c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l))),
        }
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
    let best = max_value(logits);
    // Blocks of 64 are tested without early exit (vectorised), then searched.
    let mut base = 0;
    for block in logits.chunks(64) {
        if block.iter().fold(false, |hit, &v| hit | (v == best)) {
            let at = block.iter().position(|&v| v == best).unwrap_or_default();
            return (base + at) as u32;
        }
        base += block.len();
    }
    0
}

/// The largest value, NaNs ignored (`-inf` when there is none). Eight independent lanes,
/// so the compiler keeps them in one vector register: a vocabulary of 262k logits is
/// read at memory speed instead of one dependent comparison per value.
fn max_value(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Puts into `out` a superset of the `k` largest logits (with their ids) that is
/// usually a few hundred entries, not the whole vocabulary, so the caller's selection
/// runs over those. The cut-off is estimated from an evenly strided sample of about a
/// thousand logits (the value that about `4k` of the vocabulary should exceed) and
/// checked with one counting pass; when fewer than `k` pass, cut-offs at fixed
/// distances below the maximum are tried. The set holds every logit at least as large
/// as its smallest member, so selecting the top `k` from it picks exactly what a
/// selection over the whole vocabulary would, ties included.
fn top_k_into(logits: &[f32], k: usize, sample: &mut Vec<f32>, out: &mut Vec<(u32, f32)>) {
    let n = logits.len();
    let count_from = |floor: f32| logits.iter().filter(|&&v| v >= floor).count();
    let stride = (n / 1024).max(1);
    sample.clear();
    sample.extend(
        logits
            .iter()
            .step_by(stride)
            .copied()
            .filter(|v| !v.is_nan()),
    );
    let rank = (4 * k * sample.len()).div_ceil(n);
    let estimate = (rank < sample.len())
        .then(|| *sample.select_nth_unstable_by(rank, |a, b| b.total_cmp(a)).1)
        .filter(|&floor| floor.is_finite() && count_from(floor) >= k);
    let floor = estimate.or_else(|| {
        let max = max_value(logits);
        [1f32, 4.0, 16.0, 64.0, 256.0]
            .into_iter()
            .map(|delta| max - delta)
            .take_while(|floor| floor.is_finite())
            .find(|&floor| count_from(floor) >= k)
    });
    match floor {
        Some(floor) => {
            // Blocks of 64 are tested without branches (vectorised); few hold a member.
            for (b, block) in logits.chunks(64).enumerate() {
                if block.iter().fold(false, |hit, &v| hit | (v >= floor)) {
                    let base = b * 64;
                    out.extend(
                        block
                            .iter()
                            .enumerate()
                            .filter(|&(_, &v)| v >= floor)
                            .map(|(i, &v)| ((base + i) as u32, v)),
                    );
                }
            }
        }
        // Fewer than k finite logits near the top (a constraint masked the rest, or the
        // values are not finite): every value is a candidate.
        None => out.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l))),
    }
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
    fn top_k_candidates_select_what_the_whole_vocabulary_would() {
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut x = 7u32;
        for case in 0..200 {
            let n = 1 + case * 37 % 3000;
            // Coarse values make ties at the cut-off common; some cases are spread wide,
            // some have masked (-inf) entries.
            let spread = [0.5f32, 8.0, 600.0][case % 3];
            let logits: Vec<f32> = (0..n)
                .map(|i| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    if case % 5 == 0 && i % 3 != 0 {
                        return f32::NEG_INFINITY;
                    }
                    ((x >> 20) as f32 / 4096.0 * spread * 8.0).round() / 8.0
                })
                .collect();
            for k in [1usize, 3, 40, n.saturating_sub(1).max(1)] {
                if k >= n {
                    continue;
                }
                let mut got = Vec::new();
                top_k_into(&logits, k, &mut Vec::new(), &mut got);
                if k < got.len() {
                    got.select_nth_unstable_by(k, by_logit);
                    got.truncate(k);
                }
                got.sort_unstable_by(by_logit);
                let mut want: Vec<(u32, f32)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as u32, v))
                    .collect();
                want.sort_unstable_by(by_logit);
                want.truncate(k);
                assert_eq!(got, want, "case {case}, n {n}, k {k}");
            }
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima_and_skips_nan() {
        let mut v = vec![0.0f32; 37];
        v[3] = f32::NAN;
        v[20] = 2.0;
        v[33] = 2.0;
        assert_eq!(argmax(&v), 20);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
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
