//! Calibration: which raw scale makes the detector read each BEAM level.
//!
//! The model writes a fixed set of rewrites at every scale of a grid, steered along the
//! spectrum; the detector reads each output on that spectrum (its expected level). The
//! mean reading per scale, made non-decreasing (isotonic regression: more steering
//! toward the positive pole never reads as less), is inverted by linear interpolation.
//!
//! Levels are placed on the range the detector actually reads, not on its absolute
//! scale: level 0 is the reading of unsteered text, +1 the highest reading steering
//! reaches, +0.6 the scale where the reading has come 60% of the way from one to the
//! other (and the same toward −1). A small model's detector reads steered text within
//! about ±0.3, never at ±1; an absolute mapping would put every level but 0 at the end
//! of the grid. The stored curve keeps the absolute readings. A side the detector does
//! not see move at all falls back to a straight line through the grid's end.

use std::sync::Arc;

use crate::backend::Backend;
use crate::emotion::beam::Beam;
use crate::emotion::detect::Detector;
use crate::engine::generate::{GenerateRequest, generate_all};
use crate::engine::model::Model;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::Message;

use super::SteerError;
use super::vector::{Calibration, ControlVector};

/// Texts the calibration rewrites (not among the training texts).
pub const TEXTS: &[&str] = &[
    "The parcel was left at the front door this afternoon.",
    "We have a meeting with the new team on Wednesday morning.",
    "The kettle is in the cupboard next to the sink.",
    "I finished painting the fence and cleaned the brushes.",
    "The flight lands at half past seven local time.",
    "My brother is visiting us next weekend with his children.",
    "The library moved the old newspapers to the basement.",
    "Our street gets a new bus stop at the end of the month.",
];

/// What `calibrate` does.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// Raw scales to try.
    pub grid: Vec<f64>,
    /// How many of [`TEXTS`] to rewrite at each scale.
    pub texts: usize,
    pub max_tokens: usize,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        Self {
            grid: vec![
                -10.0, -8.0, -6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0,
            ],
            texts: TEXTS.len(),
            max_tokens: 32,
        }
    }
}

/// Pool-adjacent-violators: the non-decreasing sequence closest to `y` (least squares).
pub fn isotonic(y: &[f64]) -> Vec<f64> {
    // Blocks of (sum, count).
    let mut blocks: Vec<(f64, usize)> = Vec::with_capacity(y.len());
    for &v in y {
        blocks.push((v, 1));
        while blocks.len() > 1 {
            let (s1, n1) = blocks[blocks.len() - 1];
            let (s0, n0) = blocks[blocks.len() - 2];
            if s0 / n0 as f64 <= s1 / n1 as f64 {
                break;
            }
            blocks.pop();
            *blocks.last_mut().expect("two blocks") = (s0 + s1, n0 + n1);
        }
    }
    blocks
        .iter()
        .flat_map(|&(s, n)| std::iter::repeat_n(s / n as f64, n))
        .collect()
}

/// The scale at which the non-decreasing `curve` (over ascending `grid`) reads `level`.
pub fn invert(grid: &[f64], curve: &[f64], level: f64) -> f64 {
    let n = grid.len();
    if n == 0 {
        return 0.0;
    }
    if level <= curve[0] {
        return grid[0];
    }
    if level >= curve[n - 1] {
        return grid[n - 1];
    }
    // Where the curve first reaches the level and where it last stays at or below it:
    // a flat stretch at exactly `level` maps to its middle.
    let lo = (0..n).rev().find(|&i| curve[i] < level).unwrap_or(0);
    let hi = (0..n).find(|&i| curve[i] > level).unwrap_or(n - 1);
    if hi > lo + 1 && curve[lo + 1] == level {
        let last_eq = hi - 1;
        return (grid[lo + 1] + grid[last_eq]) / 2.0;
    }
    let (x0, x1, y0, y1) = (grid[lo], grid[hi], curve[lo], curve[hi]);
    x0 + (level - y0) / (y1 - y0) * (x1 - x0)
}

/// Readings that move less than this over a side of the grid are taken as no movement.
const MIN_SPAN: f64 = 0.02;

/// The scale for each level from the mean readings `measured` over the ascending
/// `grid` (which should hold 0), on the detector's own range (see the module doc).
pub fn levels_to_scales(grid: &[f64], measured: &[f64], levels: &[f64]) -> Vec<f64> {
    let curve = isotonic(measured);
    let zero = grid
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .map_or(0, |(i, _)| i);
    let base = curve[zero];
    let (lo, hi) = (curve[0], curve[curve.len() - 1]);
    let (gmin, gmax) = (grid[0], grid[grid.len() - 1]);
    levels
        .iter()
        .map(|&l| {
            if l == 0.0 {
                grid[zero]
            } else if l > 0.0 {
                if hi - base < MIN_SPAN {
                    l * gmax
                } else {
                    invert(&grid[zero..], &curve[zero..], base + l * (hi - base))
                }
            } else if base - lo < MIN_SPAN {
                -l * gmin
            } else {
                invert(&grid[..=zero], &curve[..=zero], base + (-l) * (lo - base))
            }
        })
        .collect()
}

/// Calibrates `vector` (learned for `spectrum`) on `model`, reading with `detector`'s
/// backend. `progress` is called after each scale of the grid.
pub fn calibrate(
    model: &Model,
    backend: &dyn Backend,
    beam: &Beam,
    vector: &ControlVector,
    opts: &CalibrateOptions,
    progress: &mut dyn FnMut(f64, f64),
) -> Result<Calibration, SteerError> {
    let si = beam
        .find_spectrum(&vector.provenance.spectrum)
        .map_err(|e| SteerError::Spectrum(e.to_string()))?;
    let detector = Detector::new(backend, beam, &model.name, true);
    let texts = &TEXTS[..opts.texts.clamp(1, TEXTS.len())];
    let mut grid = opts.grid.clone();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    let mut measured = Vec::with_capacity(grid.len());
    for &scale in &grid {
        let steering = super::with_vectors(model, &[(vector.clone(), scale)])?;
        let outputs = rewrite_all(model, texts, steering, opts.max_tokens)?;
        let mut sum = 0.0;
        for out in &outputs {
            sum += detector.spectrum(out, si)?.expected;
        }
        let mean = sum / outputs.len() as f64;
        measured.push(mean);
        progress(scale, mean);
    }
    let levels = beam.levels.clone();
    let scales = levels_to_scales(&grid, &measured, &levels);
    Ok(Calibration {
        levels,
        scales,
        grid,
        measured,
    })
}

/// Greedy rewrites of `texts` under `steering`, decoded as one batch.
pub fn rewrite_all(
    model: &Model,
    texts: &[&str],
    steering: Option<Arc<crate::engine::steering::Steering>>,
    max_tokens: usize,
) -> Result<Vec<String>, SteerError> {
    let reqs = texts
        .iter()
        .map(|t| {
            Ok(GenerateRequest {
                prompt: model.encode_chat(
                    &[Message::new(
                        "user",
                        format!("Rewrite this text in your own words: {t}"),
                    )],
                    "",
                )?,
                sampling: SamplingParams::greedy(),
                max_tokens,
                stop: vec![],
                constraint: None,
                steering: steering.clone(),
                logprobs: None,
            })
        })
        .collect::<Result<Vec<_>, SteerError>>()?;
    let mut sessions = reqs
        .iter()
        .map(|_| model.new_session())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(generate_all(model, &mut sessions, &reqs)?
        .into_iter()
        .map(|g| g.text)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_pools_violations_and_keeps_order() {
        assert_eq!(isotonic(&[1.0, 2.0, 3.0]), vec![1.0, 2.0, 3.0]);
        assert_eq!(isotonic(&[1.0, 3.0, 2.0]), vec![1.0, 2.5, 2.5]);
        assert_eq!(isotonic(&[3.0, 2.0, 1.0]), vec![2.0, 2.0, 2.0]);
    }

    #[test]
    fn levels_land_on_the_range_the_detector_reads() {
        let grid = [-4.0, -2.0, 0.0, 2.0, 4.0];
        let measured = [-0.3, -0.1, 0.0, 0.1, 0.2];
        let levels = [-1.0, -0.5, 0.0, 0.5, 1.0];
        let s = levels_to_scales(&grid, &measured, &levels);
        assert_eq!(s[2], 0.0);
        assert_eq!(s[4], 4.0);
        assert_eq!(s[0], -4.0);
        assert!((s[3] - 2.0).abs() < 1e-9, "{s:?}");
        assert!((s[1] + 2.5).abs() < 1e-9, "{s:?}");
        // Increasing in the level.
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
        // A side that does not move falls back to a straight line.
        let flat = [0.0, 0.0, 0.0, 0.1, 0.2];
        let s = levels_to_scales(&grid, &flat, &levels);
        assert_eq!(s[0], -4.0);
        assert_eq!(s[1], -2.0);
    }

    #[test]
    fn inverting_the_curve_interpolates_and_saturates() {
        let grid = [-4.0, -2.0, 0.0, 2.0, 4.0];
        let curve = [-0.5, -0.3, 0.0, 0.3, 0.4];
        assert!((invert(&grid, &curve, 0.0) - 0.0).abs() < 1e-9);
        assert!((invert(&grid, &curve, 0.15) - 1.0).abs() < 1e-9);
        assert!((invert(&grid, &curve, -0.4) + 3.0).abs() < 1e-9);
        // Beyond what steering reaches: the end of the grid.
        assert_eq!(invert(&grid, &curve, 1.0), 4.0);
        assert_eq!(invert(&grid, &curve, -1.0), -4.0);
        // A flat stretch at the level maps to its middle.
        let flat = [-0.2, 0.0, 0.0, 0.0, 0.3];
        assert!((invert(&grid, &flat, 0.0) - 0.0).abs() < 1e-9);
    }
}
