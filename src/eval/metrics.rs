//! Text metrics for judging rewrites without a model: how much of the source survives
//! (ROUGE-L, word overlap), whether a draft merely copies it, and rank correlation for
//! intensity sweeps.

/// Lowercased words (letters and digits, with inner apostrophes), the unit every metric
/// here counts in, so punctuation and case never decide a score.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe = (c == '\'' || c == '\u{2019}')
            && !cur.is_empty()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1 over words: the standard measure of how much of a reference's wording, in
/// order, a rewrite keeps.
pub fn rouge_l_f1(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (words(candidate), words(reference));
    match (c.is_empty(), r.is_empty()) {
        (true, true) => return 1.0,
        (true, false) | (false, true) => return 0.0,
        _ => {}
    }
    let l = lcs(&c, &r) as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, rec) = (l / c.len() as f64, l / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// Share of the reference's distinct words found in the candidate: content kept, even
/// when the rewrite reorders it.
pub fn token_overlap(candidate: &str, reference: &str) -> f64 {
    let r: std::collections::HashSet<String> = words(reference).into_iter().collect();
    if r.is_empty() {
        return 1.0;
    }
    let c: std::collections::HashSet<String> = words(candidate).into_iter().collect();
    r.iter().filter(|w| c.contains(*w)).count() as f64 / r.len() as f64
}

/// ROUGE-L at or above which a draft counts as the source with cosmetic edits: small
/// models asked to rewrite often return the text with a word or two changed.
pub const COPY_THRESHOLD: f64 = 0.9;

/// Whether a draft is the source with only trivial changes.
pub fn is_copy(candidate: &str, source: &str) -> bool {
    words(candidate) == words(source) || rouge_l_f1(candidate, source) >= COPY_THRESHOLD
}

fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (ties get average ranks): whether detected intensity
/// rises with target intensity, without assuming the scale is linear.
pub fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    if xs.len() != ys.len() || xs.len() < 2 {
        return None;
    }
    let (rx, ry) = (ranks(xs), ranks(ys));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        return None;
    }
    Some(cov / (vx * vy).sqrt())
}

/// Arithmetic mean; `None` for no values, so an empty table cell is not a zero.
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Sample standard deviation; `None` below two values.
pub fn stddev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    Some((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_of_a_known_pair() {
        let f = rouge_l_f1("the cat was on the mat", "the cat sat on the mat");
        assert!((f - 5.0 / 6.0).abs() < 1e-9);
        assert_eq!(rouge_l_f1("", ""), 1.0);
        assert_eq!(rouge_l_f1("a", ""), 0.0);
    }

    #[test]
    fn words_keep_unicode_and_inner_apostrophes() {
        assert_eq!(words("Café, naïve—don't!"), vec!["café", "naïve", "don't"]);
    }

    #[test]
    fn copies_are_recognized() {
        let src = "The fox looked up at the grapes and walked away.";
        assert!(is_copy(
            "The fox looked up at the grapes, and walked away!",
            src
        ));
        assert!(!is_copy(
            "Delighted, the fox gazed at the shining grapes and skipped off happily.",
            src
        ));
        assert!((token_overlap("fox grapes", "the fox the grapes") - 2.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn spearman_monotone_reversed_ties_constant() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!(s > 0.9 && s < 1.0);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert!((stddev(&[1.0, 3.0]).unwrap() - 2f64.sqrt()).abs() < 1e-12);
    }
}
