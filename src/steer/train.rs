//! Learning a spectrum's directions from the model itself.
//!
//! Each pair is one everyday text asked to be rewritten twice, once by a writer told to
//! feel the negative pole of the spectrum and once the positive pole, in BEAM's words
//! (`grief` / `ecstasy`, `sadness` / `joy`, alternating over the pairs). Nothing else
//! differs, so the difference of the model's residual stream at the last prompt token
//! (where it starts to answer) is the emotion. The unit mean difference per layer is the
//! direction (see [`super::direction`]).

use crate::emotion::beam::Beam;
use crate::engine::model::Model;
use crate::engine::template::Message;

use super::SteerError;
use super::direction::mean_difference;
use super::library::model_sha256;
use super::vector::{ControlVector, Provenance};

const CONTENTS: &str = include_str!("contents.txt");

/// The everyday texts pairs are made from (written for pathos).
pub fn contents() -> Vec<&'static str> {
    CONTENTS.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// What `train` does.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Contrastive pairs (texts are reused, with the other anchor word, past 32).
    pub pairs: usize,
    /// First and last layer to steer, inclusive; `None`: [`default_layers`].
    pub layers: Option<(usize, usize)>,
    /// Orders the texts.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            pairs: 32,
            layers: None,
            seed: 0,
        }
    }
}

/// The layers steered by default: from a quarter of the depth to the next-to-last, where
/// the evidence on SmolLM2 (layers 8–28 of 30) found the emotion to be readable and
/// steerable without breaking the text.
pub fn default_layers(n_layer: usize) -> (usize, usize) {
    let first = (n_layer / 4).max(1);
    (first, n_layer.saturating_sub(2).max(first))
}

/// Checks a layer range against a model of `n_layer` layers (layer 0 is never steered,
/// as in llama.cpp's format).
pub fn check_layers(range: (usize, usize), n_layer: usize) -> Result<(), SteerError> {
    let (a, b) = range;
    if a == 0 || a > b || b >= n_layer {
        return Err(SteerError::Layers {
            first: a,
            last: b,
            n_layer,
        });
    }
    Ok(())
}

/// The user message asking for a rewrite in the given emotion word.
pub fn pole_prompt(word: &str, text: &str) -> String {
    format!("Act as if you feel intense {word}. Rewrite this text in your own words: {text}")
}

/// The (negative, positive) prompts of every pair, in order.
pub fn pairs(beam: &Beam, spectrum: usize, n: usize, seed: u64) -> Vec<(String, String)> {
    let s = &beam.spectra[spectrum];
    let last = s.words.len() - 1;
    // Extreme words and the pole words one level in.
    let anchors = [
        (s.words[0].as_str(), s.words[last].as_str()),
        (s.words[1].as_str(), s.words[last - 1].as_str()),
    ];
    let mut texts = contents();
    // Fisher–Yates with a small xorshift, so the seed alone fixes the order.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..texts.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        texts.swap(i, (x % (i as u64 + 1)) as usize);
    }
    (0..n)
        .map(|i| {
            let text = texts[i % texts.len()];
            let (neg, pos) = anchors[(i + i / texts.len()) % 2];
            (pole_prompt(neg, text), pole_prompt(pos, text))
        })
        .collect()
}

/// Learns the directions of `spectrum` on `model`. `progress` is called after each pair.
pub fn train(
    model: &Model,
    beam: &Beam,
    spectrum: &str,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(),
) -> Result<ControlVector, SteerError> {
    let si = beam
        .find_spectrum(spectrum)
        .map_err(|e| SteerError::Spectrum(e.to_string()))?;
    if opts.pairs == 0 {
        return Err(SteerError::Pairs);
    }
    let cfg = model.transformer.config();
    let range = opts.layers.unwrap_or_else(|| default_layers(cfg.n_layer));
    check_layers(range, cfg.n_layer)?;
    let mut pos: Vec<Vec<Vec<f32>>> = vec![Vec::new(); cfg.n_layer];
    let mut neg: Vec<Vec<Vec<f32>>> = vec![Vec::new(); cfg.n_layer];
    let mut session = model.new_session()?;
    for (n, p) in pairs(beam, si, opts.pairs, opts.seed) {
        for (prompt, into) in [(n, &mut neg), (p, &mut pos)] {
            let tokens = model.encode_chat(&[Message::new("user", prompt)], "")?;
            session.reset();
            let states = model
                .transformer
                .layer_states(&tokens, session.cache_mut())?;
            for (layer, state) in states.into_iter().enumerate() {
                into[layer].push(state);
            }
        }
        progress();
    }
    let mut directions: Vec<Option<Vec<f32>>> = vec![None; range.1 + 1];
    for layer in range.0..=range.1 {
        directions[layer] = mean_difference(&pos[layer], &neg[layer]);
    }
    Ok(ControlVector {
        directions,
        n_embd: cfg.n_embd,
        provenance: Provenance {
            model_sha256: model_sha256(model)?,
            model_name: model.name.clone(),
            architecture: model.info.architecture.clone(),
            spectrum: beam.spectra[si].name.clone(),
            pairs: opts.pairs,
            seed: opts.seed,
            method: "mean-difference".into(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        },
        calibration: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_differ_only_in_the_pole_word() {
        let beam = Beam::builtin();
        let si = beam.find_spectrum("sadness-joy").unwrap();
        let p = pairs(beam, si, 40, 3);
        assert_eq!(p.len(), 40);
        for (n, q) in &p {
            assert_ne!(n, q);
            let tail = |s: &str| s.split_once("words: ").unwrap().1.to_string();
            assert_eq!(tail(n), tail(q));
        }
        // Both anchor levels are used, and the seed fixes the order.
        assert!(
            p.iter()
                .any(|(n, _)| n.contains(&beam.spectra[si].words[0]))
        );
        assert!(
            p.iter()
                .any(|(n, _)| n.contains(&beam.spectra[si].words[1]))
        );
        assert_eq!(p, pairs(beam, si, 40, 3));
        assert_ne!(p, pairs(beam, si, 40, 4));
    }

    #[test]
    fn layer_ranges_outside_the_model_are_refused() {
        assert!(check_layers((1, 29), 30).is_ok());
        assert!(check_layers((0, 5), 30).is_err());
        assert!(check_layers((5, 30), 30).is_err());
        assert!(check_layers((9, 8), 30).is_err());
        assert_eq!(default_layers(30), (7, 28));
        assert!(check_layers(default_layers(18), 18).is_ok());
    }
}
