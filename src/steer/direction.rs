//! Direction extraction: from hidden states of texts at the two poles of a spectrum to
//! one unit direction per layer.
//!
//! pathos takes the mean of the pairwise differences (positive − negative), then scales
//! it to unit length. With a few dozen pairs that differ mainly in the emotion, the
//! mean difference is the contrast itself: it keeps the sign (positive pole = positive
//! scale), which a principal component does not, and it does not depend on a
//! component's variance ordering, which small sets get wrong when the content varies
//! more than the emotion. Unit length makes raw scales comparable across layers and
//! models, as llama.cpp's control vectors are.

/// The unit mean difference of `positive[i] − negative[i]` over the pairs; `None` when
/// there are no pairs or the difference vanishes.
pub fn mean_difference(positive: &[Vec<f32>], negative: &[Vec<f32>]) -> Option<Vec<f32>> {
    let n = positive.len().min(negative.len());
    let width = positive.first()?.len();
    if n == 0 || width == 0 {
        return None;
    }
    let mut sum = vec![0f64; width];
    for (p, q) in positive.iter().zip(negative).take(n) {
        for ((s, a), b) in sum.iter_mut().zip(p).zip(q) {
            *s += (*a - *b) as f64;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm < 1e-12 || !norm.is_finite() {
        return None;
    }
    Some(sum.iter().map(|x| (x / norm) as f32).collect())
}

/// Cosine similarity (for tests and diagnostics).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard-ish normal noise.
    fn noise(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let mut s = 0f32;
                for _ in 0..12 {
                    *seed ^= *seed << 13;
                    *seed ^= *seed >> 7;
                    *seed ^= *seed << 17;
                    s += (*seed >> 40) as f32 / (1u64 << 24) as f32;
                }
                s - 6.0
            })
            .collect()
    }

    #[test]
    fn a_planted_direction_is_recovered_from_noisy_pairs() {
        let width = 256;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let planted: Vec<f32> = {
            let v = noise(width, &mut seed);
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect()
        };
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for _ in 0..32 {
            // Content shared by the pair (large), noise of each text, and the emotion
            // contrast of strength 3 along the planted direction.
            let content = noise(width, &mut seed);
            let (a, b) = (noise(width, &mut seed), noise(width, &mut seed));
            pos.push(
                (0..width)
                    .map(|i| 10.0 * content[i] + 0.05 * a[i] + 1.5 * planted[i])
                    .collect(),
            );
            neg.push(
                (0..width)
                    .map(|i| 10.0 * content[i] + 0.05 * b[i] - 1.5 * planted[i])
                    .collect(),
            );
        }
        let found = mean_difference(&pos, &neg).unwrap();
        assert!(
            cosine(&found, &planted) > 0.99,
            "cosine {}",
            cosine(&found, &planted)
        );
        let norm: f32 = found.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        // Swapping the poles flips the direction.
        let flipped = mean_difference(&neg, &pos).unwrap();
        assert!(cosine(&flipped, &planted) < -0.99);
    }

    #[test]
    fn no_pairs_or_no_difference_gives_nothing() {
        assert!(mean_difference(&[], &[]).is_none());
        let same = vec![vec![1.0f32, 2.0]];
        assert!(mean_difference(&same, &same).is_none());
    }
}
