//! Debate reports: a saved transcript turned into one self-contained HTML page.
//!
//! The page is the debate viewer ([`VIEWER_HTML`], the same file `pathos serve` shows at
//! `/` in live mode). [`render`] embeds a transcript (and optionally an ethics verdict)
//! as JSON in the page's `<script type="application/json">` tags; the page's own script
//! draws it when opened, offline, with no other file. [`render_files`] does the same
//! from paths and names the file in every error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::debate::transcript::Transcript;

/// The debate viewer page: inline CSS and JS, no external assets. Served as is in live
/// mode; [`render`] fills its data tags for report mode.
pub const VIEWER_HTML: &str = include_str!("server/viewer/index.html");

/// The empty tag of the page that receives the transcript.
const TRANSCRIPT_TAG: &str = r#"<script type="application/json" id="pathos-transcript"></script>"#;
/// The empty tag of the page that receives the ethics verdict.
const ETHICS_TAG: &str = r#"<script type="application/json" id="pathos-ethics"></script>"#;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what}is not a pathos debate transcript ({source}); write one with `pathos rewrite --transcript FILE`"
    )]
    NotTranscript {
        /// `"FILE "`, or `"the JSON "` when it came from memory.
        what: String,
        source: serde_json::Error,
    },
    #[error(
        "{what}holds {count} transcripts (a `rewrite --sweep`); a report shows one debate: rewrite with --to, or split the array"
    )]
    Sweep { what: String, count: usize },
    #[error(
        "{what}is not an ethics verdict ({reason}); write one with `pathos ethics check --json TEXT > FILE`"
    )]
    NotVerdict { what: String, reason: String },
    #[error("the viewer page lacks its data tag {0}; the build is broken")]
    Template(&'static str),
}

/// The viewer page with `transcript` (the JSON `pathos rewrite --transcript` writes) and,
/// if given, `ethics` (`pathos ethics check --json` output) embedded.
///
/// Both are checked before they are embedded, so a report never opens onto a page that
/// cannot draw its data.
pub fn render(transcript: &str, ethics: Option<&str>) -> Result<String, ReportError> {
    render_named(transcript, ethics, None, None)
}

/// [`render`] from files; errors name the file at fault.
pub fn render_files(transcript: &Path, ethics: Option<&Path>) -> Result<String, ReportError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ReportError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let t = read(transcript)?;
    let e = ethics.map(read).transpose()?;
    render_named(&t, e.as_deref(), Some(transcript), ethics)
}

fn render_named(
    transcript: &str,
    ethics: Option<&str>,
    transcript_path: Option<&Path>,
    ethics_path: Option<&Path>,
) -> Result<String, ReportError> {
    let what = |p: Option<&Path>| p.map_or("the JSON ".into(), |p| format!("{} ", p.display()));
    let value = check_transcript(transcript).map_err(|e| match e {
        Refusal::Sweep(count) => ReportError::Sweep {
            what: what(transcript_path),
            count,
        },
        Refusal::Json(source) => ReportError::NotTranscript {
            what: what(transcript_path),
            source,
        },
    })?;
    let verdict = ethics
        .map(|text| {
            check_verdict(text).map_err(|reason| ReportError::NotVerdict {
                what: what(ethics_path),
                reason,
            })
        })
        .transpose()?;
    let page = fill(VIEWER_HTML, TRANSCRIPT_TAG, &value)?;
    match verdict {
        Some(v) => fill(&page, ETHICS_TAG, &v),
        None => Ok(page),
    }
}

enum Refusal {
    Sweep(usize),
    Json(serde_json::Error),
}

/// Parses the transcript as the debate wrote it; the JSON value is what gets embedded,
/// so fields a newer pathos adds survive.
fn check_transcript(text: &str) -> Result<serde_json::Value, Refusal> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(Refusal::Json)?;
    if let Some(all) = value.as_array() {
        return Err(Refusal::Sweep(all.len()));
    }
    Transcript::deserialize(&value).map_err(Refusal::Json)?;
    Ok(value)
}

/// An ethics verdict is what `pathos ethics check --json` prints: an object with the
/// check's `report` and the final `verdict`.
fn check_verdict(text: &str) -> Result<serde_json::Value, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = value.as_object().ok_or("not a JSON object")?;
    match obj.get("verdict").and_then(|v| v.as_str()) {
        Some("pass" | "violation") => {}
        Some(other) => return Err(format!("unknown verdict {other:?}")),
        None => return Err("no \"verdict\" field".into()),
    }
    if let Some(report) = obj.get("report") {
        serde_json::from_value::<crate::ethics::check::Report>(report.clone())
            .map_err(|e| format!("its report: {e}"))?;
    }
    Ok(value)
}

/// Puts `value` into the page's empty data tag `tag`.
fn fill(page: &str, tag: &'static str, value: &serde_json::Value) -> Result<String, ReportError> {
    let at = page.find(tag).ok_or(ReportError::Template(tag))?;
    let open = tag.len() - "</script>".len();
    let json = script_safe_json(value);
    let mut out = String::with_capacity(page.len() + json.len());
    out.push_str(&page[..at + open]);
    out.push_str(&json);
    out.push_str(&page[at + open..]);
    Ok(out)
}

/// JSON that cannot end or confuse the `<script>` element holding it. Every `<` in JSON
/// text sits inside a string, where `\u003c` means the same character; with no `<` left,
/// neither `</script>` nor `<!--` (which changes how HTML finds the end tag) can appear.
pub fn script_safe_json(value: &serde_json::Value) -> String {
    serde_json::to_string(value)
        .expect("a serde_json::Value always serializes")
        .replace('<', "\\u003c")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transcript made by hand, with every field the type requires.
    fn transcript(source: &str, final_text: &str) -> serde_json::Value {
        let detection = serde_json::json!({
            "model": "m", "calibrated": true, "ms": 1.0,
            "spectra": [{"spectrum": "sadness-joy", "distribution": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                         "level": 0.0, "word": "surprise", "expected": 0.0}]
        });
        let config = serde_json::to_value(crate::debate::config::DebateConfig::new("m")).unwrap();
        serde_json::json!({
            "version": 1, "source": source,
            "target": {"spectrum": "sadness-joy", "level": 0.6, "word": "joy"},
            "config": config, "detect_before": detection, "rounds": [],
            "stop_reason": "max_rounds",
            "synthesis": {"contentiousness": 0.3, "turns": [], "candidates": [], "chosen": "best_draft"},
            "features_turn": null, "features": [], "final_text": final_text, "accepted": true,
            "detect_after": detection,
            "totals": {"generated_tokens": 0, "prompt_tokens": 0, "score_calls": 0, "ms": 0.0}
        })
    }

    /// The JSON inside the page's transcript tag.
    fn embedded(page: &str) -> &str {
        let open = r#"<script type="application/json" id="pathos-transcript">"#;
        let start = page.find(open).unwrap() + open.len();
        let len = page[start..].find("</script>").unwrap();
        &page[start..start + len]
    }

    #[test]
    fn text_cannot_break_out_of_the_script_tag() {
        let evil = "</script><script>alert(1)</script> <!-- <script> </SCRIPT >";
        let t = transcript(evil, evil);
        let page = render(&t.to_string(), None).unwrap();
        let json = embedded(&page);
        assert!(!json.contains('<'), "a '<' survived: {json}");
        assert!(!page.contains("<script>alert(1)"));
        let back: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            back, t,
            "the escaped JSON reads back as the same transcript"
        );
        assert_eq!(back["final_text"], evil);
    }

    #[test]
    fn the_page_names_no_web_address() {
        assert!(!VIEWER_HTML.contains("http://") && !VIEWER_HTML.contains("https://"));
    }

    #[test]
    fn the_page_has_each_data_tag_once() {
        assert_eq!(VIEWER_HTML.matches(TRANSCRIPT_TAG).count(), 1);
        assert_eq!(VIEWER_HTML.matches(ETHICS_TAG).count(), 1);
    }

    #[test]
    fn bad_json_is_refused_with_a_clear_error() {
        let e = render("{not json", None).unwrap_err().to_string();
        assert!(e.contains("not a pathos debate transcript"), "{e}");
        let e = render(r#"{"version": 1}"#, None).unwrap_err().to_string();
        assert!(e.contains("missing field"), "{e}");
        let sweep = serde_json::json!([transcript("a", "b"), transcript("a", "c")]);
        let e = render(&sweep.to_string(), None).unwrap_err().to_string();
        assert!(e.contains("2 transcripts"), "{e}");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "[1, 2").unwrap();
        let e = render_files(&bad, None).unwrap_err().to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let missing = dir.path().join("missing.json");
        let e = render_files(&missing, None).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("missing.json"),
            "{e}"
        );
        let good = dir.path().join("t.json");
        std::fs::write(&good, transcript("a", "b").to_string()).unwrap();
        let verdict = dir.path().join("v.json");
        std::fs::write(&verdict, r#"{"verdict": "maybe"}"#).unwrap();
        let e = render_files(&good, Some(&verdict)).unwrap_err().to_string();
        assert!(
            e.contains("v.json") && e.contains("not an ethics verdict"),
            "{e}"
        );
    }

    #[test]
    fn an_ethics_verdict_is_embedded_beside_the_transcript() {
        let t = transcript("a", "b").to_string();
        let page = render(&t, Some(r#"{"verdict": "pass", "note": "</script>"}"#)).unwrap();
        let open = r#"<script type="application/json" id="pathos-ethics">"#;
        let start = page.find(open).unwrap() + open.len();
        let len = page[start..].find("</script>").unwrap();
        let v: serde_json::Value = serde_json::from_str(&page[start..start + len]).unwrap();
        assert_eq!(v["verdict"], "pass");
        assert_eq!(v["note"], "</script>");
    }
}
