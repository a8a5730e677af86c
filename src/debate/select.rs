//! Screening and ranking of drafts: set aside those that copy the source, lose its
//! content or have the wrong length, and rank the rest by how close the judge reads
//! them to the target.

use super::transcript::Rejection;
use crate::emotion::beam::{Beam, Target};
use crate::emotion::detect::SpectrumReading;
use crate::eval::metrics::{is_copy, token_overlap};

/// Weight of content kept in a draft's fitness, next to its closeness to the target.
pub const CONTENT_WEIGHT: f64 = 0.3;

/// Cleans a writer's output: drops a leading label the model echoed ("Rewrite:"),
/// surrounding quotes and whitespace, and whatever follows the rewrite (notes on what
/// was changed) when the source has no such break: a paragraph ends at a blank line,
/// a single line at its end.
pub fn clean(output: &str, source: &str) -> String {
    let mut s = output.trim();
    let end = if !source.trim().contains('\n') {
        s.find('\n')
    } else if !source.trim().contains("\n\n") {
        s.find("\n\n")
    } else {
        None
    };
    if let Some(end) = end {
        s = s[..end].trim_end();
    }
    for label in [
        "Rewrite:",
        "Final text:",
        "Rewritten text:",
        "Improved rewrite:",
    ] {
        if let Some(rest) = s.strip_prefix(label) {
            s = rest.trim_start();
        }
    }
    let s = s.trim();
    let unquoted = s
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('"'))
        .unwrap_or(s);
    unquoted.trim().to_string()
}

/// Why `draft` should not be judged, if it should not.
pub fn screen(draft: &str, source: &str, min_content: f64) -> Option<Rejection> {
    let words = |s: &str| s.split_whitespace().count();
    if draft.trim().is_empty() {
        return Some(Rejection::Empty);
    }
    if is_copy(draft, source) {
        return Some(Rejection::CopiesSource);
    }
    if token_overlap(draft, source) < min_content {
        return Some(Rejection::LosesContent);
    }
    let ratio = words(draft) as f64 / words(source).max(1) as f64;
    if !(0.33..=3.0).contains(&ratio) {
        return Some(Rejection::WrongLength);
    }
    None
}

/// How near a reading is to the target: 1 at the target level, 0 at the far end.
pub fn closeness(beam: &Beam, target: Target, reading: &SpectrumReading) -> f64 {
    let span = beam.levels[beam.levels.len() - 1] - beam.levels[0];
    (1.0 - (reading.expected - beam.level(target)).abs() / span).clamp(0.0, 1.0)
}

/// A draft's fitness: closeness to the target plus a share for content kept.
pub fn fitness(closeness: f64, content_kept: f64) -> f64 {
    closeness + CONTENT_WEIGHT * content_kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "The fox saw the grapes hanging high on the vine and tried to reach them.";

    #[test]
    fn copies_and_content_loss_are_set_aside() {
        assert_eq!(screen("", SRC, 0.25), Some(Rejection::Empty));
        assert_eq!(screen(SRC, SRC, 0.25), Some(Rejection::CopiesSource));
        assert_eq!(
            screen("I love sunny mornings with my family.", SRC, 0.25),
            Some(Rejection::LosesContent)
        );
        let good = "Joyfully the fox spotted the sweet grapes hanging high on the vine and happily leapt to reach them.";
        assert_eq!(screen(good, SRC, 0.25), None);
        let long = format!("{good} {good} {good} {good}");
        assert_eq!(screen(&long, SRC, 0.25), Some(Rejection::WrongLength));
    }

    #[test]
    fn clean_drops_labels_and_quotes() {
        assert_eq!(clean("Rewrite: \"Hello there.\"\n", SRC), "Hello there.");
        assert_eq!(
            clean("He said \"hi\" and \"bye\"", SRC),
            "He said \"hi\" and \"bye\""
        );
        assert_eq!(
            clean("Glad news.\n\nI added the word glad.", SRC),
            "Glad news."
        );
        let poem = "Line one\nline two";
        assert_eq!(
            clean("Bright one\nbright two\n\nNotes.", poem),
            "Bright one\nbright two"
        );
    }

    #[test]
    fn closeness_is_one_at_target_and_falls_with_distance() {
        let beam = Beam::builtin();
        let joy = beam.parse_target("joy", false, false).unwrap();
        let reading = |expected| SpectrumReading {
            spectrum: "sadness-joy".into(),
            distribution: vec![],
            level: 0.0,
            word: String::new(),
            expected,
        };
        assert!((closeness(beam, joy, &reading(0.6)) - 1.0).abs() < 1e-6);
        assert!((closeness(beam, joy, &reading(-1.0)) - 0.2).abs() < 1e-6);
        assert!(fitness(1.0, 1.0) > fitness(1.0, 0.5));
    }
}
