//! "Did you mean" suggestions for names a user mistyped (models, emotions, spectra).
//!
//! Shared by every layer that rejects a name, so all of them suggest the same way.

/// Levenshtein distance between two strings, counted in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidates within `max` edits of `typed` (case-insensitive), closest first, so an
/// error can offer them instead of the whole list.
pub fn closest<'a>(typed: &str, candidates: &[&'a str], max: usize) -> Vec<&'a str> {
    let typed = typed.to_lowercase();
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .map(|c| (edit_distance(&typed, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= max)
        .collect();
    scored.sort();
    scored.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_and_closest() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("Joi", &["joy", "grief", "rage"], 2), vec!["joy"]);
        assert!(closest("zzzzzz", &["joy"], 2).is_empty());
    }
}
