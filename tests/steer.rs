//! Emotion steering on the real default model: a learned direction changes what the
//! model writes, scale 0 changes nothing, opposite scales move the detector in opposite
//! directions over a set of texts, vectors fit only their model, and bad input is
//! refused with a clear message.

mod common;

use std::sync::OnceLock;

use common::{model, pathos_cmd, stderr, stdout};
use pathos::backend::local::LocalBackend;
use pathos::emotion::beam::Beam;
use pathos::emotion::detect::Detector;
use pathos::steer::calibrate::{TEXTS, rewrite_all};
use pathos::steer::train::{TrainOptions, train};
use pathos::steer::vector::ControlVector;
use pathos::steer::{SteerError, library, with_vectors};

/// A sadness↔joy vector learned once for this test binary (16 pairs).
fn vector() -> ControlVector {
    static V: OnceLock<ControlVector> = OnceLock::new();
    V.get_or_init(|| {
        let opts = TrainOptions {
            pairs: 16,
            ..TrainOptions::default()
        };
        train(
            &model("smollm2-135m"),
            Beam::builtin(),
            "sadness-joy",
            &opts,
            &mut || {},
        )
        .unwrap()
    })
    .clone()
}

#[test]
fn steering_changes_the_text_and_scale_zero_changes_nothing() {
    let m = model("smollm2-135m");
    let v = vector();
    assert_eq!(v.layers(), (7..=28).collect::<Vec<_>>());
    let texts = &TEXTS[..3];
    let plain = rewrite_all(&m, texts, None, 24).unwrap();
    let zero = with_vectors(&m, &[(v.clone(), 0.0)]).unwrap();
    assert!(zero.is_none(), "scale 0 adds nothing");
    assert_eq!(rewrite_all(&m, texts, zero, 24).unwrap(), plain);
    let steered = rewrite_all(&m, texts, with_vectors(&m, &[(v, 8.0)]).unwrap(), 24).unwrap();
    assert!(
        steered.iter().zip(&plain).any(|(a, b)| a != b),
        "steered {steered:?} vs plain {plain:?}"
    );
}

#[test]
fn opposite_scales_move_the_detector_in_opposite_directions() {
    let m = model("smollm2-135m");
    let v = vector();
    let beam = Beam::builtin();
    let si = beam.find_spectrum("sadness-joy").unwrap();
    let backend = LocalBackend::new(vec![(m.name.clone(), m.clone())]);
    let detector = Detector::new(&backend, beam, &m.name, true);
    let mean_reading = |scale: f64| {
        let s = with_vectors(&m, &[(v.clone(), scale)]).unwrap();
        let outs = rewrite_all(&m, TEXTS, s, 32).unwrap();
        let sum: f64 = outs
            .iter()
            .map(|o| detector.spectrum(o, si).unwrap().expected)
            .sum();
        sum / outs.len() as f64
    };
    let (sad, glad) = (mean_reading(-8.0), mean_reading(8.0));
    assert!(
        sad < glad,
        "toward sadness reads {sad:+.3}, toward joy {glad:+.3}"
    );
}

#[test]
fn a_vector_round_trips_and_fits_only_its_model() {
    let m = model("smollm2-135m");
    let v = vector();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sj.gguf");
    v.write(&path).unwrap();
    let back = library::open(&m, &path).unwrap();
    assert_eq!(back, v);

    let mut other = v.clone();
    other.provenance.model_sha256 = "0".repeat(64);
    let p2 = dir.path().join("other-sha.gguf");
    other.write(&p2).unwrap();
    let err = library::open(&m, &p2).unwrap_err();
    assert!(matches!(err, SteerError::WrongModel { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");

    let mut narrow = v.clone();
    narrow.n_embd = 8;
    narrow.directions = vec![None, Some(vec![0.5; 8])];
    let p3 = dir.path().join("narrow.gguf");
    narrow.write(&p3).unwrap();
    let err = library::open(&m, &p3).unwrap_err().to_string();
    assert!(err.contains("8 wide") && err.contains("576"), "{err}");
}

#[test]
fn layers_outside_the_model_are_refused() {
    let m = model("smollm2-135m");
    for layers in [(0, 5), (5, 30), (9, 8)] {
        let opts = TrainOptions {
            pairs: 1,
            layers: Some(layers),
            seed: 0,
        };
        let err = train(&m, Beam::builtin(), "sadness-joy", &opts, &mut || {}).unwrap_err();
        assert!(
            matches!(err, SteerError::Layers { .. }),
            "{layers:?}: {err}"
        );
    }
    let err = train(
        &m,
        Beam::builtin(),
        "sadnes-joy",
        &TrainOptions::default(),
        &mut || {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("sadness-joy"), "{err}");
}

#[test]
fn the_cli_steers_by_level_only_with_a_calibrated_vector_and_explains_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("smollm2-135m");
    std::fs::create_dir_all(&mine).unwrap();
    vector().write(&mine.join("sadness-joy.gguf")).unwrap();
    let run = |args: &[&str]| {
        let mut c = pathos_cmd(args);
        c.env("PATHOS_STEER_DIR", dir.path());
        c.output().unwrap()
    };
    let prompt = "Rewrite this text in your own words: The bus was late again.";
    let base = [
        "generate",
        "-m",
        "smollm2-135m",
        "--temperature",
        "0",
        "-n",
        "12",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a.push(prompt);
        run(&a)
    };
    // Uncalibrated: a level has no scale yet, and the message says what to do.
    let o = with(&["--steer", "sadness-joy:+0.6"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("steer calibrate"), "{}", stderr(&o));
    // A raw scale works without calibration.
    let o = with(&["--steer-scale", "sadness-joy:-6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    // Unknown spectrum, off-grid level, malformed spec.
    for (flag, spec, says) in [
        ("--steer", "sadnes-joy:+0.6", "sadness-joy"),
        ("--steer", "sadness-joy:+0.5", "+0.6"),
        ("--steer", "sadness-joy", "SPECTRUM:LEVEL"),
        ("--steer-scale", "sadness-joy:much", "not a number"),
    ] {
        let o = with(&[flag, spec]);
        assert_eq!(o.status.code(), Some(1), "{spec}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{spec}: {}", stderr(&o));
    }
    // `steer list` shows the user's vector.
    let o = run(&["steer", "list", "--json"]);
    assert!(o.status.success());
    let listed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["origin"] == "user" && l["spectrum"] == "sadness-joy")
    );
}

#[test]
fn a_rewrite_with_method_steer_runs_its_writers_under_the_shipped_vector() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("t.json");
    let o = pathos_cmd(&[
        "rewrite",
        "--to",
        "joy",
        "--method",
        "steer",
        "--candidates",
        "1",
        "--max-rounds",
        "1",
        "--seed",
        "7",
        "--transcript",
        transcript.to_str().unwrap(),
        "The meeting moved to Thursday, so I will bring the notes then.",
    ])
    // An empty vector directory: the shipped, calibrated vector is used.
    .env("PATHOS_STEER_DIR", dir.path().join("none"))
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&transcript).unwrap()).unwrap();
    assert_eq!(t["config"]["method"], "steer");
    let writers: Vec<&serde_json::Value> = t["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["turns"].as_array().unwrap())
        // Writers also critique each other's drafts; only their writing turns are steered.
        .filter(|turn| turn["role"] == "writer")
        .collect();
    assert!(!writers.is_empty());
    for w in writers {
        assert_eq!(w["steer"][0]["spectrum"], "sadness-joy", "{w}");
        assert_eq!(w["steer"][0]["amount"]["level"], 0.6, "{w}");
        // The prompt asks for a plain rewrite: the vector carries the emotion.
        let prompt = w["prompt"].to_string();
        assert!(prompt.contains("in your own words"), "{prompt}");
        assert!(!prompt.contains("joy"), "{prompt}");
    }
}

#[test]
fn the_fluency_measure_tells_text_from_word_salad() {
    let m = model("smollm2-135m");
    let backend = LocalBackend::new(vec![(m.name.clone(), m.clone())]);
    let ppl = |t: &str| {
        pathos::eval::rewrite::perplexity_per_word(&backend, &m.name, t)
            .unwrap()
            .unwrap()
    };
    let fluent = ppl("The train arrived late, so I waited on the platform and read the timetable.");
    let salad = ppl("Timetable the late platform so arrived waited read I on the train and, the.");
    assert!(fluent < salad, "fluent {fluent:.1} vs salad {salad:.1}");
    assert!(
        pathos::eval::rewrite::perplexity_per_word(&backend, &m.name, "  ")
            .unwrap()
            .is_none()
    );
}
