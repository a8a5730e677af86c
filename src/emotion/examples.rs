//! Few-shot material for rewriting toward a pole of a spectrum (`examples.toml`): one
//! neutral sentence rewritten toward each pole, and words that carry each pole.

use std::sync::OnceLock;

use serde::Deserialize;

use super::EmotionError;
use super::beam::{Beam, Target};

const BUILTIN: &str = include_str!("examples.toml");

/// The rewrites and word lists of one spectrum.
#[derive(Debug, Clone, Deserialize)]
pub struct SpectrumExamples {
    pub name: String,
    pub negative: String,
    pub positive: String,
    pub negative_words: Vec<String>,
    pub positive_words: Vec<String>,
    /// Sentence starters in each pole's voice, given as the start of a writer's answer.
    #[serde(default)]
    pub negative_openers: Vec<String>,
    #[serde(default)]
    pub positive_openers: Vec<String>,
}

/// All few-shot material.
#[derive(Debug, Clone, Deserialize)]
pub struct Examples {
    pub source: String,
    #[serde(rename = "spectrum")]
    pub spectra: Vec<SpectrumExamples>,
}

/// What a writer is shown for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Guidance {
    /// The neutral example sentence and its rewrite toward the target's pole (absent for
    /// a neutral target).
    pub example: Option<(String, String)>,
    /// Words to lean on: the table's words on the target's side, then the pole's words.
    pub use_words: Vec<String>,
    /// Words of the opposite pole, to avoid.
    pub avoid_words: Vec<String>,
    /// Starts for a writer's answer in the target pole's voice (none for neutral).
    pub openers: Vec<String>,
}

impl Examples {
    /// The material shipped with pathos.
    pub fn builtin() -> &'static Examples {
        static EX: OnceLock<Examples> = OnceLock::new();
        EX.get_or_init(|| Examples::parse(BUILTIN).expect("the shipped examples.toml is valid"))
    }

    /// Reads the material.
    pub fn parse(text: &str) -> Result<Self, EmotionError> {
        toml::from_str(text).map_err(|e| EmotionError::Table(format!("examples: {e}")))
    }

    /// What to show a writer aiming at `target`.
    pub fn guidance(&self, beam: &Beam, target: Target) -> Guidance {
        let spectrum = &beam.spectra[target.spectrum];
        let neutral = beam.neutral();
        let ex = self.spectra.iter().find(|e| e.name == spectrum.name);
        let side: Vec<String> = if target.level > neutral {
            spectrum.words[neutral + 1..].to_vec()
        } else if target.level < neutral {
            spectrum.words[..neutral].iter().rev().cloned().collect()
        } else {
            vec![spectrum.words[neutral].clone()]
        };
        let (example, pole, anti, openers) = match (ex, target.level.cmp(&neutral)) {
            (Some(e), std::cmp::Ordering::Greater) => (
                Some((self.source.clone(), e.positive.clone())),
                e.positive_words.clone(),
                e.negative_words.clone(),
                e.positive_openers.clone(),
            ),
            (Some(e), std::cmp::Ordering::Less) => (
                Some((self.source.clone(), e.negative.clone())),
                e.negative_words.clone(),
                e.positive_words.clone(),
                e.negative_openers.clone(),
            ),
            (Some(e), std::cmp::Ordering::Equal) => {
                let mut anti = e.negative_words.clone();
                anti.extend(e.positive_words.iter().cloned());
                (None, Vec::new(), anti, Vec::new())
            }
            (None, _) => (None, Vec::new(), Vec::new(), Vec::new()),
        };
        let mut use_words = side;
        use_words.extend(pole);
        Guidance {
            example,
            use_words,
            avoid_words: anti,
            openers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spectrum_has_examples_and_guidance_points_the_right_way() {
        let beam = Beam::builtin();
        let ex = Examples::builtin();
        for s in &beam.spectra {
            assert!(ex.spectra.iter().any(|e| e.name == s.name), "{}", s.name);
        }
        let joy = beam.parse_target("joy", false, false).unwrap();
        let g = ex.guidance(beam, joy);
        assert_eq!(g.use_words[..3], ["serenity", "joy", "ecstasy"]);
        assert!(g.avoid_words.contains(&"tears".to_string()));
        assert!(g.example.unwrap().1.contains("smiling"));
        let grief = beam.parse_target("grief", false, false).unwrap();
        assert_eq!(ex.guidance(beam, grief).use_words[0], "pensiveness");
        assert!(
            ex.guidance(beam, grief)
                .openers
                .contains(&"Sadly,".to_string())
        );
        let neutral = beam.parse_target("sadness-joy:0", false, false).unwrap();
        assert!(ex.guidance(beam, neutral).openers.is_empty());
    }
}
