//! DIKE's emotion-mediated behaviour classification: a text's emotions, compared with
//! the emotion profile Γ of each behaviour on the policy's scale, give its behaviour;
//! the distance to the nearest allowed profile gives the emotion adjustments that would
//! bring it into range.
//!
//! An emotion vector is, per BEAM spectrum, the probability of each level, as
//! [`crate::emotion::detect`] reads it from token probabilities. Classification keeps
//! the M most probable (spectrum, level) cells of the text and of each profile (the
//! paper's "top-M dominant emotions") and compares them by cosine similarity.

use serde::{Deserialize, Serialize};

use crate::emotion::beam::Beam;
use crate::emotion::detect::Detection;

/// Per spectrum, the probability of each level (negative → positive).
pub type EmotionVector = Vec<Vec<f64>>;

/// The emotion vector of a detection.
pub fn emotion_vector(d: &Detection) -> EmotionVector {
    d.spectra.iter().map(|s| s.distribution.clone()).collect()
}

/// The M largest cells of `v`, flattened spectrum by spectrum, the rest set to 0, then
/// normalized to sum to 1: the text's dominant emotions and their weights.
pub fn top_m(v: &EmotionVector, m: usize) -> Vec<f64> {
    let flat: Vec<f64> = v.iter().flatten().copied().collect();
    let mut order: Vec<usize> = (0..flat.len()).collect();
    order.sort_by(|&a, &b| flat[b].total_cmp(&flat[a]).then(a.cmp(&b)));
    let mut out = vec![0.0; flat.len()];
    for &i in order.iter().take(m) {
        out[i] = flat[i].max(0.0);
    }
    let sum: f64 = out.iter().sum();
    if sum > 0.0 {
        out.iter_mut().for_each(|x| *x /= sum);
    }
    out
}

/// Cosine similarity; 0 when either vector is all zeros.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The cell-wise mean of emotion vectors of one shape; empty for no vectors.
pub fn average(vectors: &[EmotionVector]) -> EmotionVector {
    let Some(first) = vectors.first() else {
        return Vec::new();
    };
    let n = vectors.len() as f64;
    let mut mean: EmotionVector = first.iter().map(|row| vec![0.0; row.len()]).collect();
    for v in vectors {
        for (acc, row) in mean.iter_mut().zip(v) {
            for (a, x) in acc.iter_mut().zip(row) {
                *a += x / n;
            }
        }
    }
    mean
}

/// The probability-weighted mean level of each spectrum.
pub fn expected_levels(beam: &Beam, v: &EmotionVector) -> Vec<f64> {
    v.iter()
        .map(|row| row.iter().zip(&beam.levels).map(|(p, l)| p * l).sum())
        .collect()
}

/// The emotion profile Γ of one behaviour: the mean emotion vector of the texts written
/// in that behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviourProfile {
    pub behaviour: String,
    /// Texts averaged into the profile.
    pub variants: usize,
    pub emotions: EmotionVector,
}

/// Which behaviour a text shows, and how close it came to every profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub behaviour: usize,
    pub label: String,
    /// Cosine similarity to each profile, in scale order.
    pub similarities: Vec<f64>,
}

/// Assigns `v` the behaviour of its most similar profile (top-M cells each).
pub fn classify(profiles: &[BehaviourProfile], v: &EmotionVector, m: usize) -> Classification {
    let text = top_m(v, m);
    let similarities: Vec<f64> = profiles
        .iter()
        .map(|p| cosine(&text, &top_m(&p.emotions, m)))
        .collect();
    let behaviour = similarities
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i);
    Classification {
        behaviour,
        label: profiles
            .get(behaviour)
            .map_or_else(String::new, |p| p.behaviour.clone()),
        similarities,
    }
}

/// A change to one spectrum that moves the text toward an allowed profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adjustment {
    pub spectrum: String,
    /// Expected level now and in the allowed profile.
    pub from: f64,
    pub to: f64,
    /// In words: which pole to damp and which to boost.
    pub advice: String,
}

/// Spectra on which `v` differs from `goal` by at least `min_change` in expected level,
/// largest change first.
pub fn adjustments(
    beam: &Beam,
    v: &EmotionVector,
    goal: &EmotionVector,
    min_change: f64,
) -> Vec<Adjustment> {
    let now = expected_levels(beam, v);
    let want = expected_levels(beam, goal);
    let mut out: Vec<Adjustment> = beam
        .spectra
        .iter()
        .zip(now.iter().zip(&want))
        .filter(|(_, (a, b))| (*b - *a).abs() >= min_change)
        .map(|(s, (&from, &to))| {
            let (damp, boost) = if to > from {
                (&s.negative, &s.positive)
            } else {
                (&s.positive, &s.negative)
            };
            Adjustment {
                spectrum: s.name.clone(),
                from,
                to,
                advice: format!("damp {damp}, boost {boost}"),
            }
        })
        .collect();
    out.sort_by(|a, b| (b.to - b.from).abs().total_cmp(&(a.to - a.from).abs()));
    out
}

/// An emotion cell the text holds more of than the allowed behaviours do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    pub spectrum: String,
    pub word: String,
    pub level: f64,
    /// The text's probability of this cell minus the allowed profiles' mean.
    pub excess: f64,
}

/// The `n` emotions most over-represented in `v` relative to the mean of `allowed`.
pub fn drivers(
    beam: &Beam,
    v: &EmotionVector,
    allowed: &[&EmotionVector],
    n: usize,
) -> Vec<Driver> {
    let owned: Vec<EmotionVector> = allowed.iter().map(|a| (*a).clone()).collect();
    let base = average(&owned);
    let mut cells: Vec<Driver> = Vec::new();
    for (s, spectrum) in beam.spectra.iter().enumerate() {
        for (l, word) in spectrum.words.iter().enumerate() {
            let p = v.get(s).and_then(|r| r.get(l)).copied().unwrap_or(0.0);
            let b = base.get(s).and_then(|r| r.get(l)).copied().unwrap_or(0.0);
            if p - b > 0.0 {
                cells.push(Driver {
                    spectrum: spectrum.name.clone(),
                    word: word.clone(),
                    level: beam.levels[l],
                    excess: p - b,
                });
            }
        }
    }
    cells.sort_by(|a, b| b.excess.total_cmp(&a.excess));
    cells.truncate(n);
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(spectra: usize, cells: &[(usize, usize, f64)]) -> EmotionVector {
        let mut v = vec![vec![0.0; 7]; spectra];
        for &(s, l, p) in cells {
            v[s][l] = p;
        }
        v
    }

    fn profile(name: &str, v: EmotionVector) -> BehaviourProfile {
        BehaviourProfile {
            behaviour: name.into(),
            variants: 1,
            emotions: v,
        }
    }

    #[test]
    fn averaging_is_cellwise() {
        let a = one_hot(2, &[(0, 0, 1.0), (1, 6, 1.0)]);
        let b = one_hot(2, &[(0, 2, 1.0), (1, 6, 1.0)]);
        let m = average(&[a, b]);
        assert_eq!(m[0][0], 0.5);
        assert_eq!(m[0][2], 0.5);
        assert_eq!(m[1][6], 1.0);
        assert!(average(&[]).is_empty());
    }

    #[test]
    fn top_m_keeps_the_largest_cells_and_normalizes() {
        let v = one_hot(1, &[(0, 0, 0.5), (0, 1, 0.3), (0, 2, 0.2)]);
        let t = top_m(&v, 2);
        assert!((t[0] - 0.625).abs() < 1e-12 && (t[1] - 0.375).abs() < 1e-12);
        assert_eq!(t[2], 0.0);
    }

    #[test]
    fn nearest_profile_wins() {
        let hostile = profile(
            "hostile",
            one_hot(2, &[(0, 0, 0.8), (0, 1, 0.2), (1, 1, 1.0)]),
        );
        let kind = profile("kind", one_hot(2, &[(0, 5, 0.7), (0, 6, 0.3), (1, 5, 1.0)]));
        let angry_text = one_hot(2, &[(0, 0, 0.6), (0, 1, 0.4), (1, 1, 0.9), (1, 5, 0.1)]);
        let c = classify(&[hostile.clone(), kind.clone()], &angry_text, 4);
        assert_eq!((c.behaviour, c.label.as_str()), (0, "hostile"));
        assert!(c.similarities[0] > c.similarities[1]);
        let warm_text = one_hot(2, &[(0, 6, 0.9), (1, 5, 0.8)]);
        assert_eq!(classify(&[hostile, kind], &warm_text, 4).behaviour, 1);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }

    #[test]
    fn adjustments_point_from_the_text_to_the_goal() {
        let beam = Beam::builtin();
        let n = beam.spectra.len();
        let mut text = vec![vec![0.0; 7]; n];
        let mut goal = vec![vec![0.0; 7]; n];
        for s in 0..n {
            text[s][3] = 1.0;
            goal[s][3] = 1.0;
        }
        let anger = beam.find_spectrum("anger-peace").unwrap();
        text[anger] = vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]; // expected -0.8
        goal[anger] = vec![0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0]; // expected +0.15
        let adj = adjustments(beam, &text, &goal, 0.1);
        assert_eq!(adj.len(), 1);
        assert_eq!(adj[0].spectrum, "anger-peace");
        assert!((adj[0].from + 0.8).abs() < 1e-9 && (adj[0].to - 0.15).abs() < 1e-9);
        assert!(adj[0].advice.starts_with("damp anger"), "{}", adj[0].advice);
        let d = drivers(beam, &text, &[&goal], 2);
        assert_eq!(d[0].spectrum, "anger-peace");
        assert!(d.iter().all(|x| x.excess > 0.0));
    }
}
