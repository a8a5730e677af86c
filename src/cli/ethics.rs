//! `pathos ethics`: policy, check (with rectification and review), learn, and the human
//! feedback queue. `check` exits 0 on pass, 1 on violation and 2 on error, so scripts
//! can gate on it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use pathos::backend::Backend;
use pathos::debate::argue::ArgueConfig;
use pathos::debate::protocol::Quiet;
use pathos::emotion::beam::{Beam, format_level};
use pathos::engine::registry::{Manifest, pathos_home};
use pathos::ethics::Standards;
use pathos::ethics::check::{Method, Outcome, Report};
use pathos::ethics::eris::{Reviewers, Settlement, review};
use pathos::ethics::feedback::{self, Entry, Verdict};
use pathos::ethics::journal::Journal;
use pathos::ethics::learn::{LearnConfig, learn};
use pathos::ethics::policy::Policy;
use pathos::eval::rewrite::load_corpus;
use sha2::{Digest, Sha256};

use super::common::{RunArgs, load_backend, read_text};
use super::rewrite::{DebateArgs, config};

#[derive(Debug, Subcommand)]
pub enum EthicsCommand {
    /// Print or validate a policy file.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check a text against the policy: exit 0 on pass, 1 on violation, 2 on error.
    Check(Box<CheckArgs>),
    /// Learn behaviour profiles and rules from a corpus (self-supervised).
    Learn(LearnArgs),
    /// List the cases waiting for human review.
    Queue(ListArgs),
    /// Record a human decision on a case.
    Feedback(FeedbackArgs),
    /// Show the human decisions and the rule changes they caused.
    History(ListArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print a policy (default: the built-in one).
    Show {
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a policy file; errors name the line.
    Validate { file: PathBuf },
}

/// Where the policy, profiles and journal come from.
#[derive(Debug, Args, Clone)]
pub struct Sources {
    /// Policy file (default: the built-in policy).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Profiles-and-rules file from `pathos ethics learn` (default: the built-in one).
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    #[command(flatten)]
    pub journal: JournalArgs,
}

#[derive(Debug, Args, Clone)]
pub struct JournalArgs {
    /// Directory of the human feedback journal (default: $PATHOS_HOME/ethics).
    #[arg(long, env = "PATHOS_JOURNAL")]
    pub journal: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The text; `-` or nothing reads stdin.
    pub text: Option<String>,
    #[command(flatten)]
    pub sources: Sources,
    /// How the verdict is reached: dike (emotion-mediated behaviour), rules (the codes'
    /// self-check) or both.
    #[arg(long, value_enum, default_value = "dike")]
    pub method: MethodArg,
    /// On a violation, rewrite the text toward the allowed range and check again.
    #[arg(long)]
    pub rectify: bool,
    /// Rewrite-and-check attempts before the text is blocked.
    #[arg(long, default_value_t = 3)]
    pub max_iterations: usize,
    /// Before a violation verdict stands, have ERIS argue against it.
    #[arg(long)]
    pub review: bool,
    /// Model ERIS speaks with (default: the checking model).
    #[arg(long)]
    pub reviewer_model: Option<String>,
    /// Cultural context ERIS argues from (default: the policy's).
    #[arg(long)]
    pub context: Option<String>,
    /// Rounds of the review debate.
    #[arg(long, default_value_t = 4)]
    pub review_rounds: usize,
    #[command(flatten)]
    pub debate: DebateArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    Dike,
    Rules,
    Both,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Dike => Method::Dike,
            MethodArg::Rules => Method::Rules,
            MethodArg::Both => Method::Both,
        }
    }
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    /// A TOML corpus ([[text]] entries), a text file of blank-line-separated paragraphs,
    /// or a directory of such files.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Use only texts of these kinds (TOML corpora), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// Use only the first N texts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where to write the profiles-and-rules file.
    #[arg(short = 'o', long, default_value = "profiles.json")]
    pub output: PathBuf,
    /// Policy file (default: the built-in policy).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Model name or .gguf path.
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Emotion cells kept per vector when comparing (the paper's M).
    #[arg(long, default_value_t = 10)]
    pub top_m: usize,
    /// Examples the model writes per code and side.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct FeedbackArgs {
    /// Case id, from `pathos ethics queue`.
    pub id: u64,
    /// The machine's verdict was right.
    #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
    pub accept: bool,
    /// The machine's verdict was wrong.
    #[arg(long)]
    pub reject: bool,
    /// Why, for the record.
    #[arg(long)]
    pub note: Option<String>,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EthicsCommand, offline: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        EthicsCommand::Policy(c) => policy(c),
        EthicsCommand::Check(a) => Ok(match check(*a, offline) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", super::one_line(&e));
                ExitCode::from(2)
            }
        }),
        EthicsCommand::Learn(a) => learn_cmd(a, offline),
        EthicsCommand::Queue(a) => queue(a),
        EthicsCommand::Feedback(a) => feedback_cmd(a),
        EthicsCommand::History(a) => history(a),
    }
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<Policy> {
    Ok(match path {
        Some(p) => Policy::load(p)?,
        None => Policy::builtin(),
    })
}

fn journal_dir(a: &JournalArgs) -> PathBuf {
    a.journal
        .clone()
        .unwrap_or_else(|| pathos_home().join("ethics"))
}

fn open_journal(a: &JournalArgs) -> anyhow::Result<Journal> {
    Ok(Journal::open(&journal_dir(a))?)
}

fn policy(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Show { file, json } => {
            let p = load_policy(file.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("policy: {}", p.name);
            println!("context: {}", p.context);
            println!("behaviour scale (along {}):", p.spectrum_name);
            for (i, b) in p.behaviours.iter().enumerate() {
                let mark = if p.allows(i) { "allowed" } else { "       " };
                println!(
                    "  {:>5}  {mark}  {:<14} {}",
                    format_level(p.behaviour_level(i)),
                    b.name,
                    b.description
                );
            }
            println!("codes of conduct:");
            for c in &p.codes {
                println!("  {:<14} {}", c.id, c.description);
            }
            println!("wheel of virtues (deficit ← virtue → excess):");
            for v in &p.virtues {
                println!(
                    "  {:<14} ← {:<13} → {:<14} [{}]",
                    v.deficit,
                    v.name,
                    v.excess,
                    if v.origin == "paper" {
                        "paper"
                    } else {
                        "pathos default"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Validate { file } => {
            let p = Policy::load(&file)?;
            println!(
                "{}: valid ({} codes, {} behaviours, allowed {}..{}, {} virtues)",
                file.display(),
                p.codes.len(),
                p.behaviours.len(),
                p.behaviours[*p.allowed.start()].name,
                p.behaviours[*p.allowed.end()].name,
                p.virtues.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads the policy, profiles and journal the arguments name (built-in defaults
/// otherwise).
pub fn load_sources(s: &Sources) -> anyhow::Result<Standards> {
    Ok(Standards::load(
        s.policy.as_deref(),
        s.profiles.as_deref(),
        &journal_dir(&s.journal),
    )?)
}

fn print_report(r: &Report) {
    let mark = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Violation => "VIOLATION",
    };
    println!("verdict: {mark}");
    println!(
        "behaviour: {} ({}; allowed {}..{})",
        r.behaviour,
        if r.behaviour_allowed {
            "in range"
        } else {
            "out of range"
        },
        r.allowed[0],
        r.allowed[1]
    );
    if let Some(id) = r.precedent {
        println!("decided by a person: case #{id}");
    }
    for c in &r.codes {
        println!("code at stake: {} (p = {:.2})", c.code, c.probability);
        for s in &c.spans {
            println!("  \"{s}\"");
        }
    }
    if !r.drivers.is_empty() {
        let d: Vec<String> = r
            .drivers
            .iter()
            .map(|d| format!("{} ({} {})", d.word, d.spectrum, format_level(d.level)))
            .collect();
        println!("driven by: {}", d.join(", "));
    }
    for a in &r.adjustments {
        println!(
            "adjust: {} {:+.2} → {:+.2} ({})",
            a.spectrum, a.from, a.to, a.advice
        );
    }
}

/// Loads the checking models (`-m`, the default when none) and ERIS's, if any; the
/// checking model comes first in the names.
pub fn load_checking_backend(
    d: &DebateArgs,
    reviewer: Option<&str>,
    offline: bool,
) -> anyhow::Result<(Box<dyn Backend>, Vec<String>)> {
    let mut specs = d.model.clone();
    if let Some(r) = reviewer {
        if specs.is_empty() {
            specs.push(Manifest::builtin()?.default.clone());
        }
        specs.push(r.to_string());
    }
    load_backend(&specs, &d.run, offline)
}

fn check(args: CheckArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let text = read_text(args.text.clone())?;
    let loaded = load_sources(&args.sources)?;
    let d = &args.debate;
    let (backend, names) = load_checking_backend(d, args.reviewer_model.as_deref(), offline)?;
    let model = names[0].clone();
    let checker = loaded.checker(&backend, &model, args.method.into());
    let bar = spinner("checking");
    let report = checker.check(&text)?;
    let mut out = serde_json::json!({ "report": &report });
    let mut verdict = report.verdict;
    if verdict == Verdict::Violation && args.review && report.precedent.is_none() {
        bar.set_message("ERIS review");
        let cfg = ArgueConfig {
            max_rounds: args.review_rounds,
            seed: d.seed,
            context: args
                .context
                .clone()
                .unwrap_or_else(|| loaded.policy.context.clone()),
            ..ArgueConfig::default()
        };
        let who = Reviewers {
            advocate_model: model.clone(),
            eris_model: args.reviewer_model.clone().unwrap_or_else(|| model.clone()),
        };
        let r = review(
            &backend,
            &text,
            &report,
            &who,
            &cfg,
            &loaded.journal,
            &Quiet,
        )?;
        verdict = r.verdict;
        out["review"] = serde_json::to_value(&r)?;
        if let Settlement::Escalated { case } = r.settlement {
            bar.finish_and_clear();
            if args.debate.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_report(&report);
                println!(
                    "review: DIKE and ERIS did not agree; sent to human review as case #{case} (`pathos ethics queue`)"
                );
            }
            return Ok(ExitCode::from(1));
        }
    }
    let mut final_text: Option<String> = None;
    if verdict == Verdict::Violation && args.rectify {
        bar.set_message("rectifying");
        let judge = d.judge_model.clone().unwrap_or_else(|| model.clone());
        let cfg = config(d, &names[..d.model.len().max(1)], &judge);
        let r = checker.rectify(&text, report.clone(), &cfg, args.max_iterations, &Quiet)?;
        out["rectification"] = serde_json::to_value(&r)?;
        match &r.outcome {
            Outcome::Passed { text } => {
                verdict = Verdict::Pass;
                final_text = Some(text.clone());
            }
            Outcome::Blocked { .. } => verdict = Verdict::Violation,
        }
    }
    bar.finish_and_clear();
    if args.debate.json {
        out["verdict"] = serde_json::to_value(verdict)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report);
        if let Some(r) = out.get("review") {
            println!(
                "review: {}",
                r["settlement"]["result"].as_str().unwrap_or("?")
            );
        }
        if let Some(r) = out.get("rectification") {
            match r["outcome"]["outcome"].as_str() {
                Some("passed") => {
                    println!(
                        "rectified after {} rewrite(s):",
                        r["attempts"].as_array().map_or(0, Vec::len)
                    );
                    println!("{}", final_text.as_deref().unwrap_or_default());
                }
                _ => println!(
                    "blocked: {}",
                    r["outcome"]["reason"].as_str().unwrap_or_default()
                ),
            }
        }
    }
    Ok(match verdict {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Violation => ExitCode::from(1),
    })
}

fn spinner(msg: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(msg.to_string());
    bar
}

/// Every source text of a corpus path (file or directory), with a hash of the bytes
/// read, in a stable order.
fn read_corpus(path: &Path, kinds: &[String]) -> anyhow::Result<(Vec<String>, String)> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading corpus directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut hash = Sha256::new();
    let mut texts = Vec::new();
    for f in &files {
        hash.update(std::fs::read(f).with_context(|| format!("reading {}", f.display()))?);
        for t in load_corpus(f)? {
            if kinds.is_empty() || kinds.contains(&t.kind) {
                texts.push(t.text);
            }
        }
    }
    if texts.is_empty() {
        anyhow::bail!(
            "the corpus {} holds no texts of the kinds asked",
            path.display()
        );
    }
    Ok((texts, format!("{:x}", hash.finalize())))
}

fn learn_cmd(args: LearnArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let policy = load_policy(args.policy.as_deref())?;
    let (mut texts, corpus_sha256) = read_corpus(&args.corpus, &args.kind)?;
    if let Some(n) = args.limit {
        texts.truncate(n);
    }
    // Fail on an unwritable output before the long run, not after it.
    let out_dir = args
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::NamedTempFile::new_in(out_dir)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let specs: Vec<String> = args.model.iter().cloned().collect();
    let (backend, names) = load_backend(&specs, &args.run, offline)?;
    let model = names[0].clone();
    let model_sha256 = Manifest::builtin()?
        .get(&model)
        .map(|e| e.sha256.clone())
        .unwrap_or_else(|| "unknown (model given as a file)".into());
    let cfg = LearnConfig {
        model: model.clone(),
        model_sha256,
        seed: args.seed,
        top_m: args.top_m,
        examples: args.examples,
        corpus: args.corpus.display().to_string(),
        corpus_sha256,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |done: usize, total: usize, what: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    };
    let profiles = learn(&backend, Beam::builtin(), &policy, &texts, &cfg, &progress)?;
    bar.finish_and_clear();
    profiles.save(&args.output)?;
    eprintln!(
        "learned {} behaviour profiles from {} texts and rules for {} codes with {} → {}",
        profiles.behaviours.len(),
        texts.len(),
        profiles.rules.len(),
        model,
        args.output.display()
    );
    let _ = backend.models();
    Ok(ExitCode::SUCCESS)
}

fn queue(a: ListArgs) -> anyhow::Result<ExitCode> {
    let j = open_journal(&a.journal)?;
    let pending = feedback::queue(&j)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&pending)?);
        return Ok(ExitCode::SUCCESS);
    }
    if pending.is_empty() {
        println!("no cases waiting for review ({})", j.path().display());
    }
    for r in pending {
        if let Entry::Case(c) = r.entry {
            println!(
                "#{}  {}  {} ({}), codes: {}\n    \"{}\"\n    {}",
                r.seq,
                r.time,
                c.verdict,
                c.behaviour,
                c.codes.join(", "),
                c.text,
                c.reason
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn feedback_cmd(a: FeedbackArgs) -> anyhow::Result<ExitCode> {
    let j = open_journal(&a.journal)?;
    let (d, changes) = feedback::decide(&j, a.id, a.accept, a.note)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"decision": d, "rule_changes": changes})
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "case #{}: {} → the verdict is now {}",
        d.case,
        if d.accept { "accepted" } else { "rejected" },
        d.verdict
    );
    for c in changes {
        println!("rule `{}`: {} added", c.code, c.added.replace('_', " "));
    }
    Ok(ExitCode::SUCCESS)
}

fn history(a: ListArgs) -> anyhow::Result<ExitCode> {
    let j = open_journal(&a.journal)?;
    let h = feedback::history(&j)?;
    if a.json {
        let v: Vec<_> = h
            .iter()
            .map(|(d, c)| serde_json::json!({"decision": d, "rule_changes": c}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if h.is_empty() {
        println!("no decisions yet ({})", j.path().display());
    }
    for (r, changes) in h {
        if let Entry::Decision(d) = r.entry {
            println!(
                "{}  case #{} {} → {}{}",
                r.time,
                d.case,
                if d.accept { "accepted" } else { "rejected" },
                d.verdict,
                d.note.map(|n| format!(" ({n})")).unwrap_or_default()
            );
            for c in changes {
                println!("    rule `{}`: {} added", c.code, c.added.replace('_', " "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--guard` on `generate` and `rewrite`: checks `text` with the built-in policy and
/// profiles (and the journal's decisions); on a violation rewrites it toward the allowed
/// range up to three times. Returns the text to print, or `None` when it is blocked, the
/// reason then printed to stderr instead of the text.
pub fn guard(
    backend: &dyn Backend,
    model: &str,
    text: &str,
    debate: &pathos::debate::config::DebateConfig,
) -> anyhow::Result<Option<String>> {
    let sources = Sources {
        policy: None,
        profiles: None,
        journal: JournalArgs { journal: None },
    };
    let loaded = load_sources(&sources)?;
    let checker = loaded.checker(backend, model, Method::Dike);
    let bar = spinner("ethics check");
    let report = checker.check(text)?;
    if report.verdict == Verdict::Pass {
        bar.finish_and_clear();
        return Ok(Some(text.to_string()));
    }
    bar.set_message("rectifying");
    let r = checker.rectify(text, report, debate, 3, &Quiet)?;
    bar.finish_and_clear();
    match r.outcome {
        Outcome::Passed { text } => {
            eprintln!(
                "guard: the text broke the policy and was rewritten ({} attempt(s))",
                r.attempts.len()
            );
            Ok(Some(text))
        }
        Outcome::Blocked { reason } => {
            eprintln!("guard: blocked, {reason}");
            Ok(None)
        }
    }
}
