//! Where a text sits on each BEAM spectrum, read from the model's token probabilities.
//!
//! For each spectrum the model is asked which of the row's seven words best describes
//! the text, and the answer is not generated: each word is scored as the continuation
//! of "The feeling of the text is", giving a real probability for every level. Small
//! models prefer some words whatever the text says (frequent words, the first listed),
//! so by default the distribution is calibrated: divided by the distribution the same
//! question gets for a content-free text ("N/A"), then renormalized. The result per
//! spectrum is that distribution, its most likely level and its expected level.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::beam::Beam;
use crate::backend::{Backend, Prompt, ScoreRequest, softmax};
use crate::engine::Result;

/// Text standing in for "no content" when measuring the model's bias.
const CONTENT_FREE: &str = "N/A";

/// The words the answer starts with; the level words are scored after it.
const ANSWER_PREFIX: &str = "The feeling of the text is";

/// The reading of one spectrum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumReading {
    pub spectrum: String,
    /// Probability of each level, in the table's order (negative → positive).
    pub distribution: Vec<f64>,
    /// The most likely level and its word.
    pub level: f64,
    pub word: String,
    /// The probability-weighted mean level, a finer position than `level`.
    pub expected: f64,
}

/// The reading of every spectrum of a text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub model: String,
    pub calibrated: bool,
    pub spectra: Vec<SpectrumReading>,
    pub ms: f64,
}

impl Detection {
    /// The reading of one spectrum by index.
    pub fn get(&self, spectrum: usize) -> Option<&SpectrumReading> {
        self.spectra.get(spectrum)
    }
}

/// Reads emotions through a backend, remembering each model's content-free bias.
pub struct Detector<'a> {
    backend: &'a dyn Backend,
    beam: &'a Beam,
    model: String,
    calibrate: bool,
    bias: Mutex<HashMap<usize, Vec<f64>>>,
}

impl<'a> Detector<'a> {
    /// A detector asking `model`; `calibrate` divides out its content-free bias.
    pub fn new(backend: &'a dyn Backend, beam: &'a Beam, model: &str, calibrate: bool) -> Self {
        Self {
            backend,
            beam,
            model: model.to_string(),
            calibrate,
            bias: Mutex::new(HashMap::new()),
        }
    }

    /// The question for one spectrum about `text`.
    pub fn prompt(&self, text: &str, spectrum: usize) -> Prompt {
        let s = &self.beam.spectra[spectrum];
        let user = crate::prompts::render(
            "detect",
            minijinja::context! {
                text => text.trim(),
                negative => &s.negative,
                positive => &s.positive,
                words => &s.words,
            },
        );
        Prompt::user(None, user).with_prefix(ANSWER_PREFIX)
    }

    fn raw_distribution(&self, text: &str, spectrum: usize) -> Result<Vec<f64>> {
        let s = &self.beam.spectra[spectrum];
        let scores = self.backend.score(&ScoreRequest {
            model: self.model.clone(),
            prompt: self.prompt(text, spectrum),
            options: s.words.iter().map(|w| format!(" {w}")).collect(),
        })?;
        Ok(softmax(&scores.logprobs))
    }

    fn bias(&self, spectrum: usize) -> Result<Vec<f64>> {
        if let Some(b) = self
            .bias
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&spectrum)
        {
            return Ok(b.clone());
        }
        let b = self.raw_distribution(CONTENT_FREE, spectrum)?;
        self.bias
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spectrum, b.clone());
        Ok(b)
    }

    /// The distribution over one spectrum's levels for `text`.
    pub fn spectrum(&self, text: &str, spectrum: usize) -> Result<SpectrumReading> {
        let mut p = self.raw_distribution(text, spectrum)?;
        if self.calibrate {
            let b = self.bias(spectrum)?;
            for (pi, bi) in p.iter_mut().zip(&b) {
                *pi /= bi.max(1e-9);
            }
            let sum: f64 = p.iter().sum();
            if sum.is_finite() && sum > 0.0 {
                p.iter_mut().for_each(|x| *x /= sum);
            }
        }
        Ok(self.reading(spectrum, p))
    }

    fn reading(&self, spectrum: usize, distribution: Vec<f64>) -> SpectrumReading {
        let s = &self.beam.spectra[spectrum];
        let best = distribution
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(self.beam.neutral(), |(i, _)| i);
        let expected = distribution
            .iter()
            .zip(&self.beam.levels)
            .map(|(p, &l)| p * l)
            .sum();
        SpectrumReading {
            spectrum: s.name.clone(),
            level: self.beam.levels[best],
            word: s.words[best].clone(),
            expected,
            distribution,
        }
    }

    /// Reads every spectrum.
    pub fn detect(&self, text: &str) -> Result<Detection> {
        let start = std::time::Instant::now();
        let spectra = (0..self.beam.spectra.len())
            .map(|i| self.spectrum(text, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Detection {
            model: self.model.clone(),
            calibrated: self.calibrate,
            spectra,
            ms: start.elapsed().as_secs_f64() * 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::scripted::ScriptedBackend;

    /// A backend that likes the word "joy" for texts that mention sun and is otherwise
    /// biased toward the first option.
    fn backend() -> ScriptedBackend {
        ScriptedBackend::new(
            &["m"],
            |_| String::new(),
            |r| {
                let text = &r.prompt.messages[0].content;
                r.options
                    .iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let mut lp = -(i as f64) * 0.5;
                        if text.contains("sun") && o == " joy" {
                            lp += 4.0;
                        }
                        lp
                    })
                    .collect()
            },
        )
    }

    #[test]
    fn distributions_sum_to_one_and_calibration_removes_position_bias() {
        let b = backend();
        let beam = Beam::builtin();
        let raw = Detector::new(&b, beam, "m", false)
            .detect("a sunny day")
            .unwrap();
        let cal = Detector::new(&b, beam, "m", true)
            .detect("a sunny day")
            .unwrap();
        for d in [&raw, &cal] {
            assert_eq!(d.spectra.len(), 7);
            for s in &d.spectra {
                assert!((s.distribution.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                assert!(s.distribution.iter().all(|p| p.is_finite() && *p >= 0.0));
            }
        }
        // Uncalibrated, the first word wins on spectra the text says nothing about.
        assert_eq!(raw.spectra[0].word, "terror");
        // Calibrated, such spectra are flat and the sunny text reads as joy.
        let flat = &cal.spectra[0].distribution;
        assert!(flat.iter().all(|p| (p - 1.0 / 7.0).abs() < 1e-9));
        assert_eq!(cal.spectra[1].word, "joy");
        assert!(cal.spectra[1].expected > 0.3);
    }

    #[test]
    fn content_free_bias_is_measured_once_per_spectrum() {
        let b = backend();
        let d = Detector::new(&b, Beam::builtin(), "m", true);
        d.detect("one").unwrap();
        d.detect("two").unwrap();
        // 7 content-free questions + 7 per text.
        assert_eq!(b.calls().len(), 7 + 14);
    }
}
