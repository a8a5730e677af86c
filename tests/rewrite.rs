//! The main job on the real default model: emotion detection from token probabilities,
//! the debate rewrite and the sweep, through the `pathos` binary as a user runs them.

mod common;

use common::{pathos, stderr, stdout};
use pathos::debate::transcript::strip_timings;

const TEXT: &str = "The fox saw the grapes hanging high on the vine and tried to reach them.";

fn ok(args: &[&str]) -> String {
    let o = pathos(args);
    assert!(o.status.success(), "pathos {args:?} failed: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn detect_gives_a_distribution_on_every_spectrum() {
    let out = ok(&["detect", "--json", TEXT]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("detect --json is JSON");
    let spectra = v["spectra"].as_array().expect("spectra");
    assert_eq!(spectra.len(), 7);
    for s in spectra {
        let p: Vec<f64> = s["distribution"]
            .as_array()
            .expect("distribution")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        assert_eq!(p.len(), 7, "{s}");
        assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0), "{s}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{s}");
        let e = s["expected"].as_f64().expect("expected");
        assert!((-1.0..=1.0).contains(&e), "{s}");
    }
}

/// A cheap but complete debate: two writers, one draw each, one scored round.
fn debate(transcript: &std::path::Path) -> serde_json::Value {
    let path = transcript.to_str().expect("utf-8 path");
    let out = ok(&[
        "rewrite",
        "--to",
        "joy",
        "--candidates",
        "1",
        "--max-rounds",
        "1",
        "--seed",
        "7",
        "--transcript",
        path,
        TEXT,
    ]);
    assert!(!out.trim().is_empty(), "no rewrite printed");
    let text = std::fs::read_to_string(transcript).expect("transcript written");
    serde_json::from_str(&text).expect("transcript is JSON")
}

#[test]
fn rewrite_completes_and_reproduces_its_transcript() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = debate(&dir.path().join("a.json"));
    let mut b = debate(&dir.path().join("b.json"));
    assert!(
        !a["final_text"]
            .as_str()
            .expect("final text")
            .trim()
            .is_empty()
    );
    assert_eq!(a["config"]["writers"].as_array().map(Vec::len), Some(2));
    let rounds = a["rounds"].as_array().expect("rounds");
    assert!(!rounds.is_empty());
    let critiques = rounds[0]["critiques"].as_array().expect("critiques");
    assert!(!critiques.is_empty(), "round 1 was not scored");
    for c in critiques {
        let s = c["crit"]["score"].as_f64().expect("CRIT score");
        assert!((0.0..=10.0).contains(&s));
    }
    assert_eq!(
        a["detect_before"]["spectra"].as_array().map(Vec::len),
        Some(7)
    );
    assert_eq!(
        a["detect_after"]["spectra"].as_array().map(Vec::len),
        Some(7)
    );
    strip_timings(&mut a);
    strip_timings(&mut b);
    assert_eq!(a, b, "same seeds, different transcripts");
}

#[test]
fn sweep_rewrites_at_every_level() {
    let out = ok(&[
        "rewrite",
        "--sweep",
        "sadness-joy",
        "--writers",
        "1",
        "--candidates",
        "1",
        "--max-rounds",
        "1",
        "--json",
        TEXT,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("sweep --json is JSON");
    let levels = v["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 7);
    let words: Vec<&str> = levels
        .iter()
        .map(|l| l["target"]["word"].as_str().expect("word"))
        .collect();
    assert_eq!(
        words,
        [
            "grief",
            "sadness",
            "pensiveness",
            "surprise",
            "serenity",
            "joy",
            "ecstasy"
        ]
    );
    for l in levels {
        assert!(!l["text"].as_str().expect("text").trim().is_empty());
    }
}

#[test]
fn generate_follows_a_json_schema_and_a_choice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"score":{"type":"integer","minimum":0,"maximum":10},"verdict":{"enum":["keep","revise"]}},"required":["score","verdict"],"additionalProperties":false}"#,
    )
    .expect("write schema");
    for seed in ["1", "2", "3"] {
        let out = ok(&[
            "generate",
            "--json-schema",
            schema.to_str().unwrap(),
            "--temperature",
            "1",
            "--seed",
            seed,
            "-n",
            "40",
            "Score this draft from 0 to 10: The sun is out.",
        ]);
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        let score = v["score"].as_i64().expect("integer score");
        assert!((0..=10).contains(&score), "{v}");
        assert!(["keep", "revise"].contains(&v["verdict"].as_str().expect("verdict")));
    }
    for seed in ["1", "2", "3"] {
        let out = ok(&[
            "generate",
            "--choice",
            "yes,no,not sure",
            "--temperature",
            "1.5",
            "--seed",
            seed,
            "Is the sky green?",
        ]);
        assert!(["yes", "no", "not sure"].contains(&out.trim()), "{out:?}");
    }
}
