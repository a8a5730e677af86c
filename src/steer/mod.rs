//! Emotion steering vectors: BEAM intensity as a knob inside the model.
//!
//! A spectrum's control vector ([`vector::ControlVector`]) holds one unit direction per
//! layer, learned from the model's own hidden states on texts at the spectrum's two
//! poles ([`train`]). Added to the residual stream at a scale, it moves what the model
//! writes along the spectrum; [`calibrate`] finds the scales at which the detector reads
//! each BEAM level, so `sadness-joy:+0.6` means a level, not a raw number.
//! [`resolve`] turns what a user or a debate asks for into the engine's
//! [`crate::engine::steering::Steering`].

pub mod calibrate;
pub mod direction;
pub mod library;
pub mod train;
pub mod vector;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::emotion::beam::Beam;
use crate::engine::model::Model;
use crate::engine::steering::Steering;

/// Why steering could not be set up.
#[derive(Debug, Error)]
pub enum SteerError {
    #[error("{0}")]
    Spectrum(String),
    #[error(
        "no steering vector for {spectrum} on {model}; learn one with `pathos steer train -m {model} --spectrum {spectrum}`"
    )]
    NoVector { model: String, spectrum: String },
    #[error("the steering vector {path} does not fit this model: {why}")]
    WrongModel { path: String, why: String },
    #[error("{0} is not a steering vector file: {1}")]
    BadFile(String, String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error(
        "layers {first}..{last} are outside the model's 1..{} (layer 0 is never steered)",
        n_layer - 1
    )]
    Layers {
        first: usize,
        last: usize,
        n_layer: usize,
    },
    #[error("--pairs must be at least 1")]
    Pairs,
    #[error(
        "the {spectrum} vector is not calibrated, so level {level} has no scale yet; run `pathos steer calibrate --spectrum {spectrum}` or give a raw scale with --steer-scale {spectrum}:SCALE"
    )]
    Uncalibrated { spectrum: String, level: String },
    #[error("level {level} of {spectrum} is outside the calibrated levels {range}")]
    LevelOutOfRange {
        spectrum: String,
        level: String,
        range: String,
    },
    #[error("bad steering `{0}`: {1}")]
    Spec(String, String),
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// How much to steer along one spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    /// A BEAM level, turned into a scale by the vector's calibration.
    Level(f64),
    /// A raw multiple of the unit direction.
    Scale(f64),
}

/// One spectrum to steer along, as a request carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteerSpec {
    pub spectrum: String,
    pub amount: Amount,
}

impl SteerSpec {
    /// Parses `SPECTRUM:VALUE` (`sadness-joy:+0.6`); `raw` makes VALUE a scale, else a
    /// level on BEAM's grid.
    pub fn parse(text: &str, raw: bool, beam: &Beam) -> Result<Self, SteerError> {
        let bad = |why: &str| SteerError::Spec(text.to_string(), why.to_string());
        let (spectrum, value) = text
            .rsplit_once(':')
            .ok_or_else(|| bad("write it as SPECTRUM:LEVEL, e.g. sadness-joy:+0.6"))?;
        let si = beam
            .find_spectrum(spectrum)
            .map_err(|e| SteerError::Spectrum(e.to_string()))?;
        let amount = if raw {
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| bad("the scale is not a number"))?;
            if !v.is_finite() {
                return Err(bad("the scale is not a finite number"));
            }
            Amount::Scale(v)
        } else {
            let li = beam
                .parse_level(value.trim(), false)
                .map_err(|e| SteerError::Spec(text.to_string(), e.to_string()))?;
            Amount::Level(beam.levels[li])
        };
        Ok(Self {
            spectrum: beam.spectra[si].name.clone(),
            amount,
        })
    }
}

/// The raw scale of `spec` with `vector`: its own for a scale, the calibrated one for a
/// level.
pub fn scale_of(spec: &SteerSpec, vector: &vector::ControlVector) -> Result<f64, SteerError> {
    match spec.amount {
        Amount::Scale(s) => Ok(s),
        Amount::Level(level) => {
            let cal = vector
                .calibration
                .as_ref()
                .ok_or_else(|| SteerError::Uncalibrated {
                    spectrum: spec.spectrum.clone(),
                    level: crate::emotion::beam::format_level(level),
                })?;
            cal.scale_for(level)
                .ok_or_else(|| SteerError::LevelOutOfRange {
                    spectrum: spec.spectrum.clone(),
                    level: crate::emotion::beam::format_level(level),
                    range: format!(
                        "{}..{}",
                        cal.levels.first().copied().unwrap_or(0.0),
                        cal.levels.last().copied().unwrap_or(0.0)
                    ),
                })
        }
    }
}

/// Builds the engine steering for `specs` on `model` from the vectors the library finds
/// (`None` when nothing is steered or every scale is 0).
pub fn resolve(
    model: &Model,
    beam: &Beam,
    specs: &[SteerSpec],
) -> Result<Option<Arc<Steering>>, SteerError> {
    let mut loaded = Vec::with_capacity(specs.len());
    for spec in specs {
        let v = library::find(model, beam, &spec.spectrum)?;
        let scale = scale_of(spec, &v)?;
        loaded.push((v, scale));
    }
    with_vectors(model, &loaded)
}

/// Builds the engine steering from vectors already loaded, each with its raw scale.
pub fn with_vectors(
    model: &Model,
    parts: &[(vector::ControlVector, f64)],
) -> Result<Option<Arc<Steering>>, SteerError> {
    let cfg = model.transformer.config();
    let refs: Vec<(&[Option<Vec<f32>>], f32)> = parts
        .iter()
        .map(|(v, s)| (v.directions.as_slice(), *s as f32))
        .collect();
    Ok(
        Steering::combine(cfg.n_layer, cfg.n_embd, &refs, model.transformer.device())?
            .map(Arc::new),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_levels_on_the_grid_and_raw_scales() {
        let beam = Beam::builtin();
        let s = SteerSpec::parse("sadness-joy:+0.6", false, beam).unwrap();
        assert_eq!(s.spectrum, "sadness-joy");
        assert_eq!(s.amount, Amount::Level(0.6));
        let r = SteerSpec::parse("sadness-joy:-2.5", true, beam).unwrap();
        assert_eq!(r.amount, Amount::Scale(-2.5));
        // Off the grid, unknown spectrum, no colon, not a number.
        assert!(SteerSpec::parse("sadness-joy:+0.5", false, beam).is_err());
        let e = SteerSpec::parse("sadnes-joy:+0.6", false, beam).unwrap_err();
        assert!(e.to_string().contains("sadness-joy"), "{e}");
        assert!(SteerSpec::parse("sadness-joy", false, beam).is_err());
        assert!(SteerSpec::parse("sadness-joy:lots", true, beam).is_err());
    }
}
