//! Contentiousness: how hard debaters push back, and how that falls over the rounds.
//!
//! SocraSynth starts at Δ = 0.9 and divides by δ = 1.2 each round, ending the debate
//! once Δ falls below 0.1 and closing with a conciliatory synthesis at 0.3. The number
//! means little to a small model, so [`Tone`] gives the words of the nearest row of the
//! contentiousness table (`contentiousness.toml`) to write beside it.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

const TABLE: &str = include_str!("contentiousness.toml");

/// The schedule's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub start: f64,
    pub divisor: f64,
    pub floor: f64,
    pub synthesis: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            start: 0.9,
            divisor: 1.2,
            floor: 0.1,
            synthesis: 0.3,
        }
    }
}

impl Schedule {
    /// Contentiousness of round `round` (1-based).
    pub fn at(&self, round: usize) -> f64 {
        self.start / self.divisor.powi(round.saturating_sub(1) as i32)
    }

    /// Whether the round after `round` would fall below the floor.
    pub fn exhausted_after(&self, round: usize) -> bool {
        self.at(round + 1) < self.floor
    }

    /// Checks the values make a falling schedule.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.start > 0.0 && self.start <= 1.0) {
            return Err(format!(
                "contentiousness must start in (0, 1], got {}",
                self.start
            ));
        }
        if self.divisor.is_nan() || self.divisor <= 1.0 {
            return Err(format!(
                "the contentiousness divisor must be above 1, got {}",
                self.divisor
            ));
        }
        Ok(())
    }
}

/// Words describing one contentiousness level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tone {
    pub at: f64,
    pub tone: String,
    pub emphasis: String,
    pub language: String,
}

#[derive(Deserialize)]
struct Table {
    level: Vec<Tone>,
}

fn table() -> &'static [Tone] {
    static T: OnceLock<Vec<Tone>> = OnceLock::new();
    T.get_or_init(|| {
        toml::from_str::<Table>(TABLE)
            .expect("the shipped contentiousness.toml is valid")
            .level
    })
}

/// The table row nearest to contentiousness `delta`.
pub fn tone(delta: f64) -> &'static Tone {
    table()
        .iter()
        .min_by(|a, b| (a.at - delta).abs().total_cmp(&(b.at - delta).abs()))
        .expect("the table has rows")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_socrasynth() {
        let s = Schedule::default();
        let expect = [0.9, 0.75, 0.625, 0.520_833, 0.434_028];
        for (i, e) in expect.iter().enumerate() {
            assert!((s.at(i + 1) - e).abs() < 1e-5, "round {}", i + 1);
        }
        // 0.9 / 1.2^12 = 0.101 is the last above the floor; 1.2^13 takes it below.
        assert!(!s.exhausted_after(12));
        assert!(s.exhausted_after(13));
        assert!(Schedule { divisor: 1.0, ..s }.validate().is_err());
    }

    #[test]
    fn tone_words_follow_the_level() {
        assert_eq!(tone(0.9).tone, "most confrontational");
        assert_eq!(tone(0.75).at, 0.7);
        assert_eq!(tone(0.3).at, 0.3);
        assert_eq!(tone(0.05).at, 0.0);
    }
}
