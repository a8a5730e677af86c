//! `pathos rewrite`: the debate rewrite. The final text alone goes to stdout, the
//! summary and progress to stderr, so the command pipes cleanly.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pathos::debate::config::{DebateConfig, SteerMethod, WriterSpec};
use pathos::debate::protocol::{Event, Observer, rewrite};
use pathos::debate::transcript::{Transcript, TranscriptFile};
use pathos::emotion::beam::{Beam, Target, format_level};
use pathos::eval::metrics::spearman;

use super::common::{RunArgs, load_backend, read_text};

/// The text `--example` rewrites: plain, neutral, with facts a rewrite must keep.
pub const EXAMPLE_TEXT: &str = "The meeting has been moved to Thursday at ten. Please bring the quarterly figures and your notes from last week.";

#[derive(Debug, Args)]
pub struct RewriteArgs {
    /// Target emotion: a BEAM word (serenity), or spectrum:level (sadness-joy:+0.6).
    #[arg(long = "to", required_unless_present = "sweep")]
    pub to: Option<String>,
    /// Rewrite the text at all seven levels of this spectrum (sadness-joy, or a pole
    /// such as joy) and print a table.
    #[arg(long, value_name = "SPECTRUM", conflicts_with_all = ["to", "antonym", "snap"])]
    pub sweep: Option<String>,
    /// Aim at the opposite of --to across neutral (joy → sadness).
    #[arg(long)]
    pub antonym: bool,
    /// Take the nearest grid level when --to gives an off-grid level.
    #[arg(long)]
    pub snap: bool,
    /// The text; `-` or nothing reads stdin.
    pub text: Option<String>,
    /// Rewrite a short built-in example text instead.
    #[arg(long, conflicts_with = "text")]
    pub example: bool,
    /// How writers are moved toward the target: the prompt, steering vectors inside the
    /// model at the target's calibrated level, or both.
    #[arg(long, value_enum, default_value_t = SteerMethod::Prompt)]
    pub method: SteerMethod,
    #[command(flatten)]
    pub debate: DebateArgs,
    /// Write the whole debate as JSON to this file (a sweep writes every level's debate).
    #[arg(long)]
    pub transcript: Option<PathBuf>,
    /// Check the rewrite against the ethics policy; rectify or block it on a violation.
    #[arg(long, conflicts_with = "sweep")]
    pub guard: bool,
}

/// Who debates and how: shared by `rewrite` and `eval rewrite`.
#[derive(Debug, Args)]
pub struct DebateArgs {
    /// Writer models, comma-separated, assigned in turn (default: the manifest default).
    #[arg(short = 'm', long, value_delimiter = ',')]
    pub model: Vec<String>,
    /// Number of writers (each also critiques the others).
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Judge model (default: the first writer's model; it never shares a seed or history
    /// with a writer).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Writer temperatures, comma-separated, assigned in turn.
    #[arg(long, value_delimiter = ',', default_values_t = [0.8f32, 1.0])]
    pub temperatures: Vec<f32>,
    /// Draws per writer per round.
    #[arg(long, default_value_t = 2)]
    pub candidates: usize,
    #[arg(long, default_value_t = 4)]
    pub max_rounds: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Do not show writers a worked example of the target pole.
    #[arg(long)]
    pub no_few_shot: bool,
    /// Do not give writers words to use and avoid.
    #[arg(long)]
    pub no_word_guidance: bool,
    /// Do not start writers' answers with an opener in the target's voice.
    #[arg(long)]
    pub no_openers: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// A progress bar fed by debate events; `label` names the sweep level, if any.
struct Progress {
    bar: indicatif::ProgressBar,
    label: Option<String>,
}

impl Observer for Progress {
    fn event(&self, e: Event) {
        let bar = &self.bar;
        let prefix = |s: String| match &self.label {
            Some(l) => format!("{l} · {s}"),
            None => s,
        };
        match e {
            Event::Detecting(what) => {
                bar.set_message(format!("reading the emotions of the {what}"))
            }
            Event::Round {
                index,
                of,
                contentiousness,
            } => {
                bar.set_length(of as u64);
                bar.set_position(index as u64 - 1);
                bar.set_prefix(prefix(format!(
                    "round {index}/{of} · contentiousness {contentiousness:.2}"
                )));
            }
            Event::Step(s) => bar.set_message(s),
            Event::Synthesis => {
                bar.set_position(bar.length().unwrap_or(0));
                bar.set_prefix(prefix("synthesis · contentiousness 0.30".into()));
            }
            Event::Done(_) => bar.finish_and_clear(),
            Event::Turn { .. } | Event::RoundEnd(_) | Event::Detected { .. } => {}
        }
    }
}

/// Builds the debate's settings from the arguments and the loaded model names.
pub fn config(args: &DebateArgs, names: &[String], judge: &str) -> DebateConfig {
    let mut cfg = DebateConfig::new(&names[0]);
    let temps = if args.temperatures.is_empty() {
        vec![0.8]
    } else {
        args.temperatures.clone()
    };
    cfg.writers = (0..args.writers)
        .map(|i| WriterSpec {
            model: names[i % names.len()].clone(),
            temperature: temps[i % temps.len()],
        })
        .collect();
    cfg.judge_model = judge.to_string();
    cfg.candidates = args.candidates;
    cfg.max_rounds = args.max_rounds;
    cfg.seed = args.seed;
    cfg.few_shot = !args.no_few_shot;
    cfg.word_guidance = !args.no_word_guidance;
    cfg.openers = !args.no_openers;
    cfg
}

pub fn run(args: RewriteArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let beam = Beam::builtin();
    let targets: Vec<Target> = match (&args.sweep, &args.to) {
        (Some(spectrum), _) => {
            let spectrum = beam.find_spectrum(spectrum)?;
            (0..beam.levels.len())
                .map(|level| Target { spectrum, level })
                .collect()
        }
        (None, Some(to)) => vec![beam.parse_target(to, args.antonym, args.snap)?],
        (None, None) => anyhow::bail!("give a target with --to, or a spectrum with --sweep"),
    };
    let d = &args.debate;
    if d.writers == 0 {
        anyhow::bail!("--writers must be at least 1");
    }
    let text = if args.example {
        EXAMPLE_TEXT.to_string()
    } else {
        read_text(args.text.clone())?
    };
    // Open the transcript file's temporary sibling now, so a bad path fails before the
    // debate rather than after it.
    let transcript_tmp = match &args.transcript {
        Some(path) => Some(
            TranscriptFile::beside(path)
                .with_context(|| format!("cannot write the transcript to {}", path.display()))?,
        ),
        None => None,
    };
    let mut specs = d.model.clone();
    if let Some(j) = &d.judge_model {
        specs.push(j.clone());
    }
    let (backend, names) = load_backend(&specs, &d.run, offline)?;
    let writer_names = &names[..d.model.len().max(1)];
    let judge = d
        .judge_model
        .clone()
        .unwrap_or_else(|| writer_names[0].clone());
    let mut cfg = config(d, writer_names, &judge);
    cfg.method = args.method;
    let mut transcripts = Vec::with_capacity(targets.len());
    for (i, &target) in targets.iter().enumerate() {
        let bar = indicatif::ProgressBar::new(cfg.max_rounds as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:20}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let label = (targets.len() > 1).then(|| {
            format!(
                "level {}/{} ({} {})",
                i + 1,
                targets.len(),
                beam.word(target),
                format_level(beam.level(target))
            )
        });
        let progress = Progress { bar, label };
        let t = rewrite(&backend, beam, &cfg, &text, target, &progress);
        progress.bar.finish_and_clear();
        transcripts.push(t?);
    }
    if let (Some(tmp), Some(path)) = (transcript_tmp, &args.transcript) {
        match transcripts.as_slice() {
            [t] => tmp.persist(path, t)?,
            all => tmp.persist(path, &all)?,
        }
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.sweep.is_some() {
        sweep_report(&mut out, beam, &transcripts, d.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (t, target) = (&transcripts[0], targets[0]);
    let mut t = t.clone();
    if args.guard {
        match super::ethics::guard(&backend, &names[0], &t.final_text, &cfg)? {
            Some(text) => t.final_text = text,
            None => return Ok(ExitCode::from(1)),
        }
    }
    let t = &t;
    if d.json {
        let v = serde_json::json!({
            "text": t.final_text,
            "accepted": t.accepted,
            "target": t.target,
            "before": t.detect_before.get(target.spectrum),
            "after": t.detect_after.get(target.spectrum),
            "rounds": t.rounds.len(),
            "stop_reason": t.stop_reason,
            "chosen": t.synthesis.chosen,
            "features": t.features,
            "totals": t.totals,
            "transcript": args.transcript,
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
    } else {
        // A closed pipe is not an error worth reporting.
        let _ = writeln!(out, "{}", t.final_text);
        summary(t, target.spectrum);
    }
    Ok(ExitCode::SUCCESS)
}

/// The sweep's table (level, target word, detected level, first line of the rewrite)
/// and the rank correlation of target and detected levels; or all of it as JSON.
fn sweep_report(
    out: &mut impl Write,
    beam: &Beam,
    transcripts: &[Transcript],
    json: bool,
) -> anyhow::Result<()> {
    let spectrum = transcripts[0].target.spectrum.clone();
    let idx = beam.find_spectrum(&spectrum)?;
    let detected = |t: &Transcript| t.detect_after.get(idx).map(|r| (r.level, r.expected));
    let targets: Vec<f64> = transcripts.iter().map(|t| t.target.level).collect();
    let expected: Vec<f64> = transcripts
        .iter()
        .map(|t| detected(t).map_or(0.0, |d| d.1))
        .collect();
    let rho = spearman(&targets, &expected);
    if json {
        let levels: Vec<_> = transcripts
            .iter()
            .map(|t| {
                serde_json::json!({
                    "target": t.target,
                    "before": t.detect_before.get(idx),
                    "after": t.detect_after.get(idx),
                    "text": t.final_text,
                    "accepted": t.accepted,
                    "rounds": t.rounds.len(),
                    "stop_reason": t.stop_reason,
                })
            })
            .collect();
        let v = serde_json::json!({ "spectrum": spectrum, "spearman": rho, "levels": levels });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<14} {:>17}  rewrite (first line)",
        "level", "target", "detected"
    );
    for t in transcripts {
        let shown = detected(t).map_or("?".to_string(), |(level, e)| {
            format!("{} ({:+.2})", format_level(level), e)
        });
        let first = t.final_text.lines().next().unwrap_or("");
        let _ = writeln!(
            out,
            "{:>6}  {:<14} {:>17}  {}",
            format_level(t.target.level),
            t.target.word,
            shown,
            first
        );
    }
    let _ = writeln!(
        out,
        "Spearman (target level, detected expectation): {}",
        rho.map_or("undefined".into(), |r| format!("{r:+.2}"))
    );
    Ok(())
}

fn summary(t: &Transcript, spectrum: usize) {
    let (b, a) = (t.detect_before.get(spectrum), t.detect_after.get(spectrum));
    let reading = |r: Option<&pathos::emotion::detect::SpectrumReading>| {
        r.map_or("?".into(), |r| {
            format!("{} {} ({:+.2})", format_level(r.level), r.word, r.expected)
        })
    };
    eprintln!(
        "target {} ({} {}) · detected {} → {} · {} round(s), stopped: {} · final text from {}{}",
        t.target.word,
        t.target.spectrum,
        format_level(t.target.level),
        reading(b),
        reading(a),
        t.rounds.len(),
        t.stop_reason,
        t.synthesis.chosen.replace('_', " "),
        if t.accepted {
            ""
        } else {
            " (no draw changed the text while keeping it; this is the least bad)"
        },
    );
    if !t.features.is_empty() {
        for f in &t.features {
            eprintln!("  {}: {}", f.name, f.text);
        }
    }
}
