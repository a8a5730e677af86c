//! The BEAM table and emotion targets.
//!
//! [`Beam`] is the table of `beam.toml` (shipped in the crate, editable as data):
//! spectra × levels, one word per cell. [`Target`] is a point of the table to rewrite
//! toward; [`Beam::parse_target`] reads the forms a user types: a word (`serenity`),
//! `spectrum:level` (`sadness-joy:+0.6`), and takes `--antonym` and `--snap` into account.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::EmotionError;
use crate::suggest::closest;

const BUILTIN: &str = include_str!("beam.toml");

/// One row of the table: a negative and a positive pole and a word per level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    pub name: String,
    pub negative: String,
    pub positive: String,
    pub words: Vec<String>,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Beam {
    pub levels: Vec<f64>,
    /// Intensity words per level, written into prompts beside the number.
    pub intensity: Vec<String>,
    #[serde(rename = "spectrum")]
    pub spectra: Vec<Spectrum>,
}

/// A cell of the table: which spectrum, which level (indices into the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub spectrum: usize,
    pub level: usize,
}

/// A target spelled out, for transcripts and JSON output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    pub spectrum: String,
    pub level: f64,
    pub word: String,
}

/// Tolerance for matching a typed level to a grid level.
const LEVEL_EPS: f64 = 1e-3;

/// Formats a level the way users type it: `+0.6`, `-1`, `0`.
pub fn format_level(level: f64) -> String {
    if level == 0.0 {
        "0".into()
    } else if level.fract() == 0.0 {
        format!("{level:+.0}")
    } else {
        format!("{level:+.1}")
    }
}

impl Beam {
    /// The table shipped with pathos.
    pub fn builtin() -> &'static Beam {
        static TABLE: OnceLock<Beam> = OnceLock::new();
        TABLE.get_or_init(|| Beam::parse(BUILTIN).expect("the shipped beam.toml is valid"))
    }

    /// Reads and checks a table: levels strictly increasing and symmetric, one word and
    /// one intensity per level, no word used twice (a word must name one cell).
    pub fn parse(text: &str) -> Result<Self, EmotionError> {
        let beam: Beam = toml::from_str(text).map_err(|e| EmotionError::Table(e.to_string()))?;
        let bad = |m: String| Err(EmotionError::Table(m));
        let n = beam.levels.len();
        if n < 3 || beam.levels.windows(2).any(|w| w[0] >= w[1]) {
            return bad("levels must be at least 3, strictly increasing".into());
        }
        if beam.intensity.len() != n {
            return bad(format!(
                "{n} levels but {} intensity words",
                beam.intensity.len()
            ));
        }
        if beam.spectra.is_empty() {
            return bad("no spectra".into());
        }
        let mut seen = std::collections::HashSet::new();
        for s in &beam.spectra {
            if s.words.len() != n {
                return bad(format!(
                    "spectrum `{}` has {} words for {n} levels",
                    s.name,
                    s.words.len()
                ));
            }
            for w in &s.words {
                if !seen.insert(w.to_lowercase()) {
                    return bad(format!("word `{w}` appears twice"));
                }
            }
        }
        Ok(beam)
    }

    /// Index of the neutral level (0).
    pub fn neutral(&self) -> usize {
        self.nearest_level(0.0)
    }

    /// The grid level closest to `x`.
    pub fn nearest_level(&self, x: f64) -> usize {
        let mut best = 0;
        for (i, l) in self.levels.iter().enumerate() {
            if (l - x).abs() < (self.levels[best] - x).abs() {
                best = i;
            }
        }
        best
    }

    /// The word of a cell.
    pub fn word(&self, t: Target) -> &str {
        &self.spectra[t.spectrum].words[t.level]
    }

    /// The level value of a cell.
    pub fn level(&self, t: Target) -> f64 {
        self.levels[t.level]
    }

    /// A target written out in full.
    pub fn view(&self, t: Target) -> TargetView {
        TargetView {
            spectrum: self.spectra[t.spectrum].name.clone(),
            level: self.levels[t.level],
            word: self.word(t).to_string(),
        }
    }

    /// The mirror cell across the neutral level: joy +0.6 → sadness −0.6.
    pub fn antonym(&self, t: Target) -> Target {
        Target {
            spectrum: t.spectrum,
            level: self.levels.len() - 1 - t.level,
        }
    }

    /// The cell a word names.
    pub fn find_word(&self, word: &str) -> Option<Target> {
        let word = word.trim().to_lowercase();
        self.spectra.iter().enumerate().find_map(|(si, s)| {
            s.words
                .iter()
                .position(|w| w.to_lowercase() == word)
                .map(|level| Target {
                    spectrum: si,
                    level,
                })
        })
    }

    /// The spectrum a name refers to: its `negative-positive` name, either order.
    pub fn find_spectrum(&self, name: &str) -> Result<usize, EmotionError> {
        let name = name.trim().to_lowercase();
        self.spectra
            .iter()
            .position(|s| s.name == name || format!("{}-{}", s.positive, s.negative) == name)
            .ok_or_else(|| EmotionError::UnknownSpectrum {
                typed: name.clone(),
                valid: self.spectrum_names().join(", "),
            })
    }

    /// Every spectrum name, for error messages and help.
    pub fn spectrum_names(&self) -> Vec<&str> {
        self.spectra.iter().map(|s| s.name.as_str()).collect()
    }

    fn valid_levels(&self) -> String {
        self.levels
            .iter()
            .map(|&l| format_level(l))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads a typed level; off-grid values are an error unless `snap` allows taking the
    /// nearest grid level.
    pub fn parse_level(&self, typed: &str, snap: bool) -> Result<usize, EmotionError> {
        let off_grid = |hint: String| EmotionError::OffGrid {
            typed: typed.to_string(),
            valid: self.valid_levels(),
            hint,
        };
        let x: f64 = typed
            .trim()
            .trim_start_matches('+')
            .parse()
            .map_err(|_| off_grid(String::new()))?;
        let lo = self.levels[0];
        let hi = self.levels[self.levels.len() - 1];
        if !x.is_finite() || x < lo - LEVEL_EPS || x > hi + LEVEL_EPS {
            return Err(off_grid(format!(
                "; levels run from {} to {}",
                format_level(lo),
                format_level(hi)
            )));
        }
        let i = self.nearest_level(x);
        if (self.levels[i] - x).abs() <= LEVEL_EPS || snap {
            Ok(i)
        } else {
            Err(off_grid(format!(
                "; the nearest is {} (pass --snap to use it)",
                format_level(self.levels[i])
            )))
        }
    }

    /// Reads a target as a user types it: `serenity`, `sadness-joy:+0.6`,
    /// `anger-peace:-0.3`; `antonym` mirrors it across neutral.
    pub fn parse_target(
        &self,
        typed: &str,
        antonym: bool,
        snap: bool,
    ) -> Result<Target, EmotionError> {
        let t = match typed.split_once(':') {
            Some((spectrum, level)) => Target {
                spectrum: self.find_spectrum(spectrum)?,
                level: self.parse_level(level, snap)?,
            },
            None => self
                .find_word(typed)
                .ok_or_else(|| self.unknown_word(typed))?,
        };
        Ok(if antonym { self.antonym(t) } else { t })
    }

    fn unknown_word(&self, typed: &str) -> EmotionError {
        let words: Vec<&str> = self
            .spectra
            .iter()
            .flat_map(|s| s.words.iter().map(String::as_str))
            .collect();
        let near = closest(typed, &words, 3);
        let hint = if near.is_empty() {
            format!(
                "; give a BEAM word ({}) or spectrum:level with a spectrum among {} (see `pathos emotions`)",
                words.join(", "),
                self.spectrum_names().join(", ")
            )
        } else {
            format!(
                "; did you mean {}? (see `pathos emotions` for all 49 words, or use spectrum:level)",
                near.iter()
                    .take(3)
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        };
        EmotionError::UnknownEmotion {
            typed: typed.to_string(),
            hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beam() -> &'static Beam {
        Beam::builtin()
    }

    #[test]
    fn table_has_seven_spectra_of_seven_levels() {
        let b = beam();
        assert_eq!(b.spectra.len(), 7);
        assert_eq!(b.levels, vec![-1.0, -0.6, -0.3, 0.0, 0.3, 0.6, 1.0]);
        assert_eq!(b.neutral(), 3);
    }

    #[test]
    fn targets_parse_from_words_levels_and_antonyms() {
        let b = beam();
        let t = b.parse_target("Serenity", false, false).unwrap();
        assert_eq!(b.view(t).spectrum, "sadness-joy");
        assert_eq!(b.level(t), 0.3);
        let t = b.parse_target("sadness-joy:+0.6", false, false).unwrap();
        assert_eq!(b.word(t), "joy");
        let t = b.parse_target("anger-peace:-0.3", false, false).unwrap();
        assert_eq!(b.word(t), "annoyance");
        let t = b.parse_target("joy-sadness:1", false, false).unwrap();
        assert_eq!(b.word(t), "ecstasy");
        let t = b.parse_target("joy", true, false).unwrap();
        assert_eq!(b.word(t), "sadness");
        let t = b.parse_target("fear-courage:0", true, false).unwrap();
        assert_eq!(b.word(t), "calm");
    }

    #[test]
    fn bad_targets_name_the_valid_choices() {
        let b = beam();
        let e = b.parse_target("joi", false, false).unwrap_err().to_string();
        assert!(e.contains("`joy`"), "{e}");
        let e = b
            .parse_target("zzzzzzzz", false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("serenity") && e.contains("sadness-joy"), "{e}");
        let e = b
            .parse_target("sadness-joy:0.5", false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("+0.6") && e.contains("--snap"), "{e}");
        assert_eq!(
            b.word(b.parse_target("sadness-joy:0.5", false, true).unwrap()),
            "joy"
        );
        let e = b
            .parse_target("sadness-joy:1.5", false, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("from -1 to +1"), "{e}");
        let e = b
            .parse_target("happy-sad:0.3", false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("anger-peace"), "{e}");
        assert!(b.parse_target("sadness-joy:abc", false, false).is_err());
    }

    #[test]
    fn invalid_tables_are_rejected() {
        let short = BUILTIN.replacen("\"grief\", ", "", 1);
        assert!(
            Beam::parse(&short)
                .unwrap_err()
                .to_string()
                .contains("6 words")
        );
        let dup = BUILTIN.replacen("\"grief\"", "\"rage\"", 1);
        assert!(Beam::parse(&dup).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn levels_format_like_users_type_them() {
        assert_eq!(format_level(0.6), "+0.6");
        assert_eq!(format_level(-1.0), "-1");
        assert_eq!(format_level(0.0), "0");
    }
}
