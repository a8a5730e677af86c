//! `pathos report` on a real debate: the default model rewrites a sentence and checks the
//! result's ethics, the report embeds both in the viewer page, and a real headless
//! browser draws it (report mode, and live mode by replaying the same debate as the
//! server's event stream).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{pathos, stderr, stdout};
use pathos::engine::registry::Manifest;

const TEXT: &str = "The train arrived late and I waited on the platform.";

/// The files of the one debate every test here looks at.
struct Debate {
    transcript: PathBuf,
    ethics: PathBuf,
    report: PathBuf,
}

/// Runs the debate, the ethics check and the report once per test binary.
fn debate() -> &'static Debate {
    static DEBATE: OnceLock<Debate> = OnceLock::new();
    DEBATE.get_or_init(|| {
        common::model_path(&Manifest::builtin().unwrap().default);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
        std::fs::create_dir_all(&dir).unwrap();
        let transcript = dir.join("debate.json");
        let o = pathos(&[
            "rewrite",
            "--to",
            "joy",
            "--candidates",
            "1",
            "--max-rounds",
            "2",
            "--seed",
            "7",
            "--transcript",
            transcript.to_str().unwrap(),
            TEXT,
        ]);
        assert!(o.status.success(), "rewrite failed: {}", stderr(&o));
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&transcript).unwrap()).unwrap();
        let final_text = t["final_text"].as_str().unwrap();
        let journal = dir.join("journal");
        let o = pathos(&[
            "ethics",
            "check",
            "--json",
            "--journal",
            journal.to_str().unwrap(),
            final_text,
        ]);
        // Exit 1 is a violation verdict, still a verdict.
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "ethics check failed: {}",
            stderr(&o)
        );
        let ethics = dir.join("verdict.json");
        std::fs::write(&ethics, o.stdout).unwrap();
        let report = dir.join("debate.html");
        let o = pathos(&[
            "report",
            transcript.to_str().unwrap(),
            "--ethics",
            ethics.to_str().unwrap(),
            "-o",
            report.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "report failed: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), report.display().to_string());
        Debate {
            transcript,
            ethics,
            report,
        }
    })
}

/// The JSON in the page's data tag `id`.
fn embedded(page: &str, id: &str) -> serde_json::Value {
    let open = format!(r#"<script type="application/json" id="{id}">"#);
    let start = page.find(&open).unwrap_or_else(|| panic!("no {id} tag")) + open.len();
    let len = page[start..].find("</script>").unwrap();
    serde_json::from_str(&page[start..start + len]).unwrap()
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn report_embeds_the_debate_and_needs_nothing_from_the_network() {
    let d = debate();
    let page = std::fs::read_to_string(&d.report).unwrap();
    assert_eq!(
        embedded(&page, "pathos-transcript"),
        json_file(&d.transcript)
    );
    assert_eq!(embedded(&page, "pathos-ethics"), json_file(&d.ethics));
    // The page outside its data tags: model text inside them is data, never loaded.
    let mut shell = page.clone();
    for id in ["pathos-transcript", "pathos-ethics"] {
        let open = format!(r#"<script type="application/json" id="{id}">"#);
        let start = shell.find(&open).unwrap() + open.len();
        let len = shell[start..].find("</script>").unwrap();
        shell.replace_range(start..start + len, "");
    }
    let lower = shell.to_ascii_lowercase();
    for remote in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
        "@import",
        "<link",
        "<script src",
    ] {
        assert!(!lower.contains(remote), "the page loads {remote}…");
    }
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "the page names a web address"
    );
}

#[test]
fn report_writes_to_stdout_with_a_dash() {
    let d = debate();
    let o = pathos(&["report", d.transcript.to_str().unwrap(), "-o", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(
        embedded(&page, "pathos-transcript"),
        json_file(&d.transcript)
    );
}

#[test]
fn report_refuses_what_is_not_a_transcript_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("detect.json");
    std::fs::write(&bad, r#"{"model": "x", "spectra": []}"#).unwrap();
    let out = dir.path().join("out.html");
    let o = pathos(&["report", bad.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&bad.display().to_string()) && e.contains("not a pathos debate transcript"),
        "{e}"
    );
    assert!(!out.exists(), "a page was written for a bad transcript");
    let o = pathos(&["report", dir.path().join("none.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("none.json"), "{}", stderr(&o));
}

/// Runs scripts/browser-test.sh; false (after saying why) when no browser can be had.
fn browser_test(args: &[&str]) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/browser-test.sh");
    let o = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("PATHOS_BIN", env!("CARGO_BIN_EXE_pathos"))
        .output();
    let o = match o {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: the browser check needs bash: {e}");
            return false;
        }
    };
    if o.status.code() == Some(77) {
        eprintln!(
            "SKIPPED: the browser check cannot run here: {}",
            stderr(&o).trim()
        );
        return false;
    }
    assert!(
        o.status.success(),
        "browser check failed:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    eprintln!("{}", stdout(&o));
    true
}

#[test]
fn report_renders_in_a_real_browser() {
    let d = debate();
    browser_test(&[d.report.to_str().unwrap()]);
}

#[test]
fn live_mode_draws_the_replayed_event_stream_in_a_real_browser() {
    let d = debate();
    browser_test(&["--replay", d.transcript.to_str().unwrap()]);
}
