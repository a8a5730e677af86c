//! pathos's own endpoints: multiple-choice scoring (what remote detection uses),
//! emotion detection, the ethics check and the rewrite debate streamed turn by turn.
//!
//! The debate, detection and ethics code is synchronous; it runs on blocking threads
//! over the [`Scheduler`](crate::backend::scheduler::Scheduler), so its requests share
//! batches with every other client's. Debates are limited to `max_debates` at once.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{ApiError, AppState, parse_body, timed};
use crate::backend::{Backend, Prompt, ScoreRequest};
use crate::debate::config::{DebateConfig, SteerMethod, WriterSpec};
use crate::debate::protocol::{Event, Observer, Quiet, rewrite as run_debate};
use crate::debate::transcript::{TEMP_PREFIX, TranscriptFile, TranscriptWriteError};
use crate::emotion::beam::Beam;
use crate::emotion::detect::Detector;
use crate::ethics::check::Method;

fn nonempty(text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(Some("text"), "`text` must not be empty"));
    }
    Ok(())
}

/// Runs blocking library code on a worker thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

#[derive(Deserialize)]
struct ScoreBody {
    model: Option<String>,
    prompt: Prompt,
    options: Vec<String>,
}

/// `POST /v1/pathos/score`: the log-probability of each option as the continuation of
/// the prompt, exactly (remote pathos backends use it for detection and judging).
pub async fn score(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "score", async {
        let b: ScoreBody = parse_body(&body)?;
        if b.options.is_empty() || b.options.len() > 64 || b.options.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("options"),
                "`options` takes 1 to 64 non-empty strings",
            ));
        }
        let (model, _) = st.model(b.model.as_deref())?;
        let mut rx = st.scheduler.submit_score(ScoreRequest {
            model,
            prompt: b.prompt,
            options: b.options,
        });
        let s = rx
            .recv()
            .await
            .ok_or_else(|| ApiError::internal("the engine stopped"))??;
        Ok(Json(json!(s)).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct DetectBody {
    text: String,
    model: Option<String>,
    #[serde(default = "yes")]
    calibrate: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/pathos/detect`: where a text sits on each BEAM spectrum.
pub async fn detect(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "detect", async {
        let b: DetectBody = parse_body(&body)?;
        nonempty(&b.text)?;
        let (model, _) = st.model(b.model.as_deref())?;
        let st2 = st.clone();
        let d = blocking(move || {
            Detector::new(&*st2.scheduler, Beam::builtin(), &model, b.calibrate)
                .detect(&b.text)
                .map_err(ApiError::from)
        })
        .await?;
        Ok(Json(json!(d)).into_response())
    })
    .await
}

#[derive(Deserialize)]
struct EthicsBody {
    text: String,
    model: Option<String>,
    #[serde(default)]
    method: Method,
    /// Rewrite a violating text by debate until it passes (or block it).
    #[serde(default)]
    rectify: bool,
    #[serde(default = "one")]
    max_iterations: usize,
    /// Have ERIS argue against a violation verdict; disagreement goes to the human
    /// review queue (the journal).
    #[serde(default)]
    review: bool,
    #[serde(default = "two")]
    review_rounds: usize,
}

fn one() -> usize {
    1
}

fn two() -> usize {
    2
}

/// `POST /v1/pathos/ethics/check`: the DIKE verdict, optionally reviewed by ERIS and
/// rectified by debate; the same JSON as `pathos ethics check --json`.
pub async fn ethics_check(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "ethics_check", async {
        let b: EthicsBody = parse_body(&body)?;
        nonempty(&b.text)?;
        let (model, _) = st.model(b.model.as_deref())?;
        if st.standards.is_none() {
            return Err(ApiError::internal(
                "the server was started without ethics standards",
            ));
        }
        let permit = (b.rectify || b.review)
            .then(|| st.debates.clone().try_acquire_owned())
            .transpose()
            .map_err(|_| ApiError::busy("too many debates are running; retry shortly", 5))?;
        let st2 = st.clone();
        let v = blocking(move || {
            let _permit = permit;
            ethics_json(&st2, &model, &b.text, &b).map_err(|e| ApiError::internal(e.to_string()))
        })
        .await?;
        Ok(Json(v).into_response())
    })
    .await
}

fn ethics_json(
    st: &AppState,
    model: &str,
    text: &str,
    b: &EthicsBody,
) -> Result<Value, crate::ethics::EthicsError> {
    use crate::ethics::check::Outcome;
    use crate::ethics::eris::{Reviewers, review};
    use crate::ethics::feedback::Verdict;
    let standards = st.standards.as_ref().expect("checked by the caller");
    let backend: &dyn Backend = &*st.scheduler;
    let checker = standards.checker(backend, model, b.method);
    let report = checker.check(text)?;
    let mut out = json!({ "report": &report });
    let mut verdict = report.verdict;
    if verdict == Verdict::Violation && b.review && report.precedent.is_none() {
        let cfg = crate::debate::argue::ArgueConfig {
            max_rounds: b.review_rounds,
            context: standards.policy.context.clone(),
            ..Default::default()
        };
        let who = Reviewers {
            advocate_model: model.to_string(),
            eris_model: model.to_string(),
        };
        let r = review(
            backend,
            text,
            &report,
            &who,
            &cfg,
            &standards.journal,
            &Quiet,
        )?;
        verdict = r.verdict;
        out["review"] = json!(r);
    }
    if verdict == Verdict::Violation && b.rectify {
        let cfg = DebateConfig::new(model);
        let r = checker.rectify(text, report.clone(), &cfg, b.max_iterations, &Quiet)?;
        if let Outcome::Passed { .. } = r.outcome {
            verdict = Verdict::Pass;
        }
        out["rectification"] = json!(r);
    }
    out["verdict"] = json!(verdict);
    Ok(out)
}

/// `GET /v1/pathos/emotions`: the BEAM table, for the viewer's grid.
pub async fn emotions() -> Json<&'static Beam> {
    Json(Beam::builtin())
}

#[derive(Deserialize)]
struct RewriteBody {
    text: String,
    /// A level word (`joy`), or `SPECTRUM:LEVEL` (`sadness-joy:+0.6`).
    target: String,
    model: Option<String>,
    max_rounds: Option<usize>,
    writers: Option<usize>,
    candidates: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    method: SteerMethod,
    /// Check the final text against the ethics standards.
    #[serde(default)]
    ethics: bool,
    /// Write the transcript to the server's transcript directory.
    #[serde(default)]
    keep_transcript: bool,
}

/// Sends debate progress as SSE events; a client gone makes the sends fail harmlessly.
struct Forward(UnboundedSender<SseEvent>);

impl Forward {
    fn send(&self, name: &str, data: Value) {
        let _ = self
            .0
            .send(SseEvent::default().event(name).data(data.to_string()));
    }
}

impl Observer for Forward {
    fn event(&self, e: Event) {
        match e {
            Event::Detected { what, detection } => {
                let stage = if what == "source" { "before" } else { "after" };
                self.send("detect", json!({"stage": stage, "detection": detection}));
            }
            Event::Round {
                index,
                of,
                contentiousness,
            } => self.send(
                "round",
                json!({"index": index, "of": of, "contentiousness": contentiousness}),
            ),
            Event::Turn { round, turn } => self.send("turn", json!({"round": round, "turn": turn})),
            Event::RoundEnd(r) => self.send("round_end", json!({"round": r})),
            Event::Step(s) => self.send("step", json!({"text": s})),
            Event::Detecting(what) => self.send(
                "step",
                json!({"text": format!("reading the emotions of the {what}")}),
            ),
            Event::Synthesis => self.send("step", json!({"text": "synthesis"})),
            Event::Done(stop) => self.send("step", json!({"text": "done", "stop_reason": stop})),
        }
    }
}

/// `POST /v1/pathos/rewrite`: runs the debate and streams it as SSE events (`detect`,
/// `round`, `turn`, `round_end`, `step`), then `result` with the transcript (and the
/// ethics verdict when asked), or `error`.
pub async fn rewrite(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "rewrite", async {
        let b: RewriteBody = parse_body(&body)?;
        nonempty(&b.text)?;
        let beam = Beam::builtin();
        let target = beam
            .parse_target(&b.target, false, false)
            .map_err(|e| ApiError::invalid(Some("target"), e.to_string()))?;
        let (model, _) = st.model(b.model.as_deref())?;
        let mut cfg = DebateConfig::new(&model);
        if let Some(n) = b.writers {
            cfg.writers = (0..n)
                .map(|i| WriterSpec {
                    model: model.clone(),
                    temperature: if i % 2 == 0 { 0.8 } else { 1.0 },
                })
                .collect();
        }
        if let Some(r) = b.max_rounds {
            cfg.max_rounds = r;
        }
        if let Some(c) = b.candidates {
            cfg.candidates = c;
        }
        if let Some(s) = b.seed {
            cfg.seed = s;
        }
        cfg.method = b.method;
        cfg.validate()
            .map_err(|e| ApiError::invalid(None, e.to_string()))?;
        if b.ethics && st.standards.is_none() {
            return Err(ApiError::internal(
                "the server was started without ethics standards",
            ));
        }
        let permit = st
            .debates
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy("too many debates are running; retry shortly", 5))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let fwd = Forward(tx);
            match debate_result(&st2, &b, &cfg, target, &fwd) {
                Ok(v) => fwd.send("result", v),
                Err(e) => fwd.send("error", e.body()),
            }
        });
        Ok(
            Sse::new(UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>))
                .keep_alive(KeepAlive::default())
                .into_response(),
        )
    })
    .await
}

fn debate_result(
    st: &AppState,
    b: &RewriteBody,
    cfg: &DebateConfig,
    target: crate::emotion::beam::Target,
    fwd: &Forward,
) -> Result<Value, ApiError> {
    let backend: &dyn Backend = &*st.scheduler;
    let t = run_debate(backend, Beam::builtin(), cfg, &b.text, target, fwd)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let ethics = if b.ethics {
        let standards = st.standards.as_ref().expect("checked before the debate");
        let report = standards
            .checker(backend, &cfg.judge_model, Method::default())
            .check(&t.final_text)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Some(json!({"report": &report, "verdict": report.verdict}))
    } else {
        None
    };
    let path = if b.keep_transcript {
        Some(save_transcript(&st.options.transcript_dir, &t)?)
    } else {
        None
    };
    Ok(json!({"transcript": t, "ethics": ethics, "transcript_path": path}))
}

/// Removes half-written transcripts a crashed server left behind (they were never
/// renamed into place, so no client was told of them). Returns how many.
pub fn remove_stale_transcripts(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Writes a transcript atomically (a synced temporary file renamed into place), so a
/// crash leaves either the whole file or none.
fn save_transcript(
    dir: &std::path::Path,
    t: &crate::debate::transcript::Transcript,
) -> Result<PathBuf, ApiError> {
    let fail = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!(
            "cannot write the transcript to {}: {e}",
            dir.display()
        ))
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    let name = format!(
        "rewrite-{}-{:08x}.json",
        super::openai::now(),
        rand::random::<u32>()
    );
    let path = dir.join(name);
    TranscriptFile::in_dir(dir)
        .map_err(|e| fail(&e))?
        .persist(&path, t)
        .map_err(|e| match e {
            TranscriptWriteError::Persist { source, .. } => fail(&source.error),
            e => fail(&e),
        })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}
