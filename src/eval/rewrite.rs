//! `pathos eval rewrite`: over a corpus and a set of targets, run a single-pass
//! rewrite, self-refine and the debate with the same model and seeds, read every output
//! with one detector, and report how often each method moves the text toward the
//! target, hits the exact level, tracks the target across levels (Spearman), keeps the
//! content, and what it costs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::{mean, rouge_l_f1, spearman, token_overlap};
use crate::backend::{Backend, Prompt, ScoreRequest};
use crate::debate::DebateError;
use crate::debate::baselines::{self_refine, single_pass};
use crate::debate::config::DebateConfig;
use crate::debate::protocol::{Quiet, rewrite};
use crate::emotion::beam::{Beam, Target, TargetView};
use crate::emotion::detect::Detector;

/// One text of an evaluation corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusText {
    pub id: String,
    #[serde(default)]
    pub kind: String,
    /// Where the text comes from.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub tone: String,
    pub text: String,
}

#[derive(Deserialize)]
struct CorpusFile {
    text: Vec<CorpusText>,
}

/// What can go wrong reading a corpus or running the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("reading corpus {path}: {detail}")]
    Corpus { path: String, detail: String },
    #[error(transparent)]
    Debate(#[from] DebateError),
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
}

/// Reads a corpus: a TOML file of `[[text]]` entries (id, kind, source, tone, text), or
/// any other text file, whose blank-line-separated paragraphs become the texts.
pub fn load_corpus(path: &Path) -> Result<Vec<CorpusText>, EvalError> {
    let err = |detail: String| EvalError::Corpus {
        path: path.display().to_string(),
        detail,
    };
    let raw = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let texts = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str::<CorpusFile>(&raw)
            .map_err(|e| err(e.to_string()))?
            .text
    } else {
        raw.split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
            .map(|(i, p)| CorpusText {
                id: format!("paragraph-{}", i + 1),
                kind: String::new(),
                source: path.display().to_string(),
                tone: String::new(),
                text: p.to_string(),
            })
            .collect()
    };
    if texts.is_empty() {
        return Err(err("no texts in it".into()));
    }
    Ok(texts)
}

/// A rewrite method under evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Single,
    SelfRefine,
    Debate,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Single => "single",
            Method::SelfRefine => "self_refine",
            Method::Debate => "debate",
        }
    }
}

/// One text × target × method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub text_id: String,
    pub target: TargetView,
    pub method: Method,
    pub output: String,
    pub before: f64,
    pub after: f64,
    pub after_level: f64,
    pub direction_hit: bool,
    pub exact_hit: bool,
    pub rouge_l: f64,
    pub content_kept: f64,
    /// Perplexity per word of the output under the detecting model (fluency: low for
    /// fluent text, high for word salad); `None` for an empty output.
    #[serde(default)]
    pub perplexity: Option<f64>,
    pub generated_tokens: usize,
    pub seconds: f64,
}

/// The figures of one method over every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub method: Method,
    pub rewrites: usize,
    pub direction_hit_rate: f64,
    pub exact_hit_rate: f64,
    /// Mean over spectra of the Spearman correlation between target and detected level.
    pub spearman: Option<f64>,
    pub rouge_l: f64,
    pub content_kept: f64,
    /// Median of the rows' perplexity per word.
    #[serde(default)]
    pub perplexity: Option<f64>,
    pub tokens_per_rewrite: f64,
    pub seconds_per_rewrite: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub writers: Vec<String>,
    pub judge_model: String,
    pub detect_model: String,
    pub rows: Vec<Row>,
    pub summary: Vec<Summary>,
}

/// A detected move smaller than this counts as no move.
const MOVE_EPS: f64 = 0.02;

/// Runs every method on every text × target; `progress` hears (done, total, what).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    backend: &dyn Backend,
    beam: &Beam,
    cfg: &DebateConfig,
    detect_model: &str,
    corpus: &[CorpusText],
    targets: &[Target],
    methods: &[Method],
    progress: &dyn Fn(usize, usize, &str),
) -> Result<Report, EvalError> {
    let detector = Detector::new(backend, beam, detect_model, true);
    let total = corpus.len() * targets.len() * methods.len();
    let mut rows = Vec::new();
    for text in corpus {
        for &target in targets {
            let before = detector.spectrum(&text.text, target.spectrum)?.expected;
            let mut debate_tokens = None;
            // The debate runs first so self-refine can be given the same token budget.
            let mut order: Vec<Method> = methods.to_vec();
            order.sort_by_key(|m| match m {
                Method::Debate => 0,
                Method::Single => 1,
                Method::SelfRefine => 2,
            });
            for method in order {
                progress(
                    rows.len(),
                    total,
                    &format!("{} {} {}", text.id, beam.word(target), method.name()),
                );
                let start = std::time::Instant::now();
                let (output, tokens) = match method {
                    Method::Single => {
                        let r = single_pass(backend, beam, cfg, &text.text, target)?;
                        (r.text, r.generated_tokens)
                    }
                    Method::SelfRefine => {
                        let budget = debate_tokens.unwrap_or(400);
                        let r = self_refine(backend, beam, cfg, &text.text, target, budget)?;
                        (r.text, r.generated_tokens)
                    }
                    Method::Debate => {
                        let t = rewrite(backend, beam, cfg, &text.text, target, &Quiet)?;
                        debate_tokens = Some(t.totals.generated_tokens);
                        (t.final_text, t.totals.generated_tokens)
                    }
                };
                let seconds = start.elapsed().as_secs_f64();
                let reading = detector.spectrum(&output, target.spectrum)?;
                let goal = beam.level(target);
                let moved = reading.expected - before;
                let wanted = goal - before;
                rows.push(Row {
                    text_id: text.id.clone(),
                    target: beam.view(target),
                    method,
                    before,
                    after: reading.expected,
                    after_level: reading.level,
                    direction_hit: moved.abs() > MOVE_EPS && moved.signum() == wanted.signum(),
                    exact_hit: (reading.level - beam.level(target)).abs() < 1e-3,
                    rouge_l: rouge_l_f1(&output, &text.text),
                    content_kept: token_overlap(&output, &text.text),
                    perplexity: perplexity_per_word(backend, detect_model, &output)?,
                    generated_tokens: tokens,
                    seconds,
                    output,
                });
            }
        }
    }
    let summary = methods.iter().map(|&m| summarize(&rows, m)).collect();
    Ok(Report {
        writers: cfg.writers.iter().map(|w| w.model.clone()).collect(),
        judge_model: cfg.judge_model.clone(),
        detect_model: detect_model.to_string(),
        rows,
        summary,
    })
}

/// Perplexity per word of `text` under `model`, read as the answer to a plain request
/// for a few sentences; `None` for an empty text.
pub fn perplexity_per_word(
    backend: &dyn Backend,
    model: &str,
    text: &str,
) -> Result<Option<f64>, EvalError> {
    let words = text.split_whitespace().count();
    if words == 0 {
        return Ok(None);
    }
    let s = backend.score(&ScoreRequest {
        model: model.to_string(),
        prompt: Prompt::user(None, "Write a few sentences."),
        options: vec![text.trim().to_string()],
    })?;
    Ok(s.logprobs.first().map(|lp| (-lp / words as f64).exp()))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn summarize(rows: &[Row], method: Method) -> Summary {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.method == method).collect();
    let n = mine.len().max(1) as f64;
    let rate = |f: &dyn Fn(&Row) -> bool| mine.iter().filter(|r| f(r)).count() as f64 / n;
    let avg = |f: &dyn Fn(&Row) -> f64| {
        mean(&mine.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(0.0)
    };
    let mut spectra: Vec<&str> = mine.iter().map(|r| r.target.spectrum.as_str()).collect();
    spectra.sort();
    spectra.dedup();
    let per_spectrum: Vec<f64> = spectra
        .iter()
        .filter_map(|s| {
            let (xs, ys): (Vec<f64>, Vec<f64>) = mine
                .iter()
                .filter(|r| r.target.spectrum == *s)
                .map(|r| (r.target.level, r.after))
                .unzip();
            spearman(&xs, &ys)
        })
        .collect();
    Summary {
        method,
        rewrites: mine.len(),
        direction_hit_rate: rate(&|r| r.direction_hit),
        exact_hit_rate: rate(&|r| r.exact_hit),
        spearman: mean(&per_spectrum),
        rouge_l: avg(&|r| r.rouge_l),
        content_kept: avg(&|r| r.content_kept),
        perplexity: median(mine.iter().filter_map(|r| r.perplexity).collect()),
        tokens_per_rewrite: avg(&|r| r.generated_tokens as f64),
        seconds_per_rewrite: avg(&|r| r.seconds),
    }
}

/// The summary as a markdown table.
pub fn summary_table(report: &Report) -> String {
    let mut s = String::from(
        "| method | rewrites | direction hit | exact level | Spearman | ROUGE-L | content kept | perplexity/word | tokens/rewrite | s/rewrite |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for m in &report.summary {
        s.push_str(&format!(
            "| {} | {} | {:.0}% | {:.0}% | {} | {:.2} | {:.2} | {} | {:.0} | {:.1} |\n",
            m.method.name(),
            m.rewrites,
            m.direction_hit_rate * 100.0,
            m.exact_hit_rate * 100.0,
            m.spearman.map_or("–".into(), |v| format!("{v:.2}")),
            m.rouge_l,
            m.content_kept,
            m.perplexity.map_or("–".into(), |v| format!("{v:.1}")),
            m.tokens_per_rewrite,
            m.seconds_per_rewrite,
        ));
    }
    s
}
