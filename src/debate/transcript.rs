//! The record of a debate: every turn, every score, why it stopped. Written as JSON by
//! `--transcript`; with the same seeds a rerun reproduces it exactly except for the
//! timings ([`strip_timings`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::DebateConfig;
use crate::backend::{Completion, Prompt};
use crate::emotion::beam::TargetView;
use crate::emotion::detect::{Detection, SpectrumReading};
use crate::engine::generate::FinishReason;
use crate::engine::sampler::SamplingParams;

/// Format version of the transcript, raised on incompatible changes.
pub const TRANSCRIPT_VERSION: u32 = 1;

/// The part an agent plays in a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Writer,
    Critic,
    Judge,
    Synthesizer,
}

/// One generation by one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub agent: String,
    pub model: String,
    pub seed: u64,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub contentiousness: f64,
    pub prompt: Prompt,
    pub output: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// Steering vectors the turn ran under (writers with `--method steer|both`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steer: Vec<crate::steer::SteerSpec>,
}

impl Turn {
    /// Builds the record of a finished request.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        role: Role,
        agent: String,
        model: &str,
        sampling: &SamplingParams,
        max_tokens: usize,
        contentiousness: f64,
        prompt: &Prompt,
        c: &Completion,
    ) -> Self {
        Self {
            role,
            agent,
            model: model.to_string(),
            seed: sampling.seed,
            sampling: sampling.clone(),
            max_tokens,
            contentiousness,
            prompt: prompt.clone(),
            output: c.text.clone(),
            finish_reason: c.finish_reason,
            prompt_tokens: c.prompt_tokens,
            cached_tokens: c.cached_tokens,
            generated_tokens: c.generated_tokens,
            prompt_ms: c.prompt_ms,
            generation_ms: c.generation_ms,
            steer: Vec::new(),
        }
    }

    /// The same record, noting the steering it ran under.
    pub fn steered(mut self, steer: &[crate::steer::SteerSpec]) -> Self {
        self.steer = steer.to_vec();
        self
    }
}

/// Why a candidate draft was set aside before judging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Empty,
    CopiesSource,
    LosesContent,
    WrongLength,
}

/// One writer's draw and how it fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub writer: usize,
    /// Index of the turn that produced it in the round's `turns`.
    pub turn: usize,
    pub text: String,
    pub rejected: Option<Rejection>,
    /// The judge's reading of the target spectrum (accepted candidates only).
    pub reading: Option<SpectrumReading>,
    /// 1 at the target level, 0 at the far end of the spectrum.
    pub closeness: f64,
    /// Share of the source's words still present.
    pub content_kept: f64,
    pub fitness: f64,
}

/// A critic's argument about one draft, and what the judge made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Critique {
    pub critic: usize,
    pub draft_author: usize,
    pub turn: usize,
    /// Quoted spans that really occur in the draft.
    pub quotes: Vec<String>,
    /// Probability the critic's verdict is "keep" (nothing to add).
    pub keep: f64,
    pub crit: CritScore,
}

/// The judge's CRIT score of one argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CritScore {
    pub judge_model: String,
    pub judge_seed: u64,
    pub prompt: Prompt,
    /// Probability of each score 0..=10.
    pub distribution: Vec<f64>,
    /// Expected score, 0–10.
    pub score: f64,
}

/// How the judge ranked the round's drafts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DraftScore {
    pub author: usize,
    pub text: String,
    /// The judge's preference, averaged over both presentation orders.
    pub preference: f64,
    pub closeness: f64,
    pub score: f64,
}

/// The judge's pick of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub drafts: Vec<DraftScore>,
    /// Prompts of both presentation orders (the role swap).
    pub prompts: Vec<Prompt>,
    pub best: usize,
}

/// One round of the debate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub index: usize,
    pub contentiousness: f64,
    pub tone: String,
    pub turns: Vec<Turn>,
    pub candidates: Vec<Candidate>,
    pub critiques: Vec<Critique>,
    pub crit_mean: Option<f64>,
    pub pick: Option<Pick>,
    /// The draft the round ends with (the pick), if any draft survived.
    pub best: Option<String>,
}

/// Why the debate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Contentiousness fell below the floor.
    ContentiousnessFloor,
    /// The mean CRIT score did not improve on the previous round.
    CritPlateau,
    /// Every critic's verdict was "keep".
    AgentsDone,
    MaxRounds,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::ContentiousnessFloor => "contentiousness fell below the floor",
            StopReason::CritPlateau => "CRIT scores stopped improving",
            StopReason::AgentsDone => "every critic had nothing to add",
            StopReason::MaxRounds => "the round limit was reached",
        })
    }
}

/// The closing synthesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Synthesis {
    pub contentiousness: f64,
    pub turns: Vec<Turn>,
    pub candidates: Vec<Candidate>,
    /// `synthesis` when a synthesized text was taken, `best_draft` when the debate's best
    /// draft read closer to the target than every synthesis.
    pub chosen: String,
}

/// A linguistic feature the final text uses, as the writer describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub text: String,
}

/// Token and time totals over the whole debate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub generated_tokens: usize,
    pub prompt_tokens: usize,
    pub score_calls: usize,
    pub ms: f64,
}

/// The whole debate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub version: u32,
    pub source: String,
    pub target: TargetView,
    pub config: DebateConfig,
    pub detect_before: Detection,
    pub rounds: Vec<Round>,
    pub stop_reason: StopReason,
    pub synthesis: Synthesis,
    pub features_turn: Option<Turn>,
    pub features: Vec<Feature>,
    pub final_text: String,
    /// False when no draw ever changed the text enough while keeping its content; the
    /// final text is then the least bad draw.
    pub accepted: bool,
    pub detect_after: Detection,
    pub totals: Totals,
}

/// Zeroes every timing field of a transcript's JSON, so two runs can be compared.
pub fn strip_timings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if k == "ms" || k.ends_with("_ms") {
                    *val = serde_json::Value::from(0.0);
                } else {
                    strip_timings(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_timings),
        _ => {}
    }
}

/// Name prefix of the temporary files transcripts are written through; one left behind
/// is a write a crash interrupted.
pub const TEMP_PREFIX: &str = ".pathos-transcript.";

/// A transcript file written atomically: the JSON goes to a temporary sibling of the
/// destination, which is synced and then renamed into place, so a crash leaves either
/// the whole file or none.
pub struct TranscriptFile(tempfile::NamedTempFile);

/// Why a [`TranscriptFile`] could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptWriteError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("writing the transcript to {path}")]
    Persist {
        path: String,
        source: tempfile::PersistError,
    },
}

impl TranscriptFile {
    /// Opens the temporary file in `dir`.
    pub fn in_dir(dir: &Path) -> std::io::Result<Self> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)
            .map(Self)
    }

    /// Opens the temporary file in the directory `path` will be in, so a path that
    /// cannot be written fails now rather than after the debate.
    pub fn beside(path: &Path) -> std::io::Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::in_dir(dir)
    }

    /// Writes `value` as pretty JSON, syncs it and renames it to `path`.
    pub fn persist<T: Serialize + ?Sized>(
        self,
        path: &Path,
        value: &T,
    ) -> Result<(), TranscriptWriteError> {
        let mut tmp = self.0;
        serde_json::to_writer_pretty(tmp.as_file_mut(), value)?;
        tmp.as_file_mut().sync_all()?;
        tmp.persist(path)
            .map_err(|source| TranscriptWriteError::Persist {
                path: path.display().to_string(),
                source,
            })?;
        Ok(())
    }
}
