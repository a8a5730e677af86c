//! `pathos eval rewrite`: single pass vs self-refine vs debate over a corpus.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use pathos::emotion::beam::Beam;
use pathos::eval::rewrite::{Method, evaluate, load_corpus, summary_table};

use super::common::load_backend;
use super::rewrite::config;

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Compare rewrite methods over a corpus of texts and a set of targets.
    Rewrite(Box<EvalRewriteArgs>),
    /// Measure the ethics check over a labelled corpus (harmful / harmless).
    Ethics(Box<EvalEthicsArgs>),
}

#[derive(Debug, Args)]
pub struct EvalEthicsArgs {
    /// TOML corpus of [[item]] entries (id, label, code, text).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Use N items, evenly spaced through the corpus (so every code and label stays in).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Also rectify flagged harmful items and report the success rate.
    #[arg(long)]
    pub rectify: bool,
    /// Rewrite-and-check attempts per item when rectifying.
    #[arg(long, default_value_t = 1)]
    pub max_iterations: usize,
    /// Also run ERIS's review on flagged items and report the escalation rate.
    #[arg(long)]
    pub review: bool,
    /// Model ERIS speaks with (default: the checking model).
    #[arg(long)]
    pub reviewer_model: Option<String>,
    /// Rounds of each review debate.
    #[arg(long, default_value_t = 2)]
    pub review_rounds: usize,
    /// How the checker decides which items to rectify and review.
    #[arg(long, value_enum, default_value = "dike")]
    pub method: super::ethics::MethodArg,
    #[command(flatten)]
    pub sources: super::ethics::Sources,
    #[command(flatten)]
    pub debate: super::rewrite::DebateArgs,
}

#[derive(Debug, Args)]
pub struct EvalRewriteArgs {
    /// TOML corpus ([[text]] entries) or a text file of blank-line-separated paragraphs.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Targets, comma-separated (default: -0.6 and +0.6 on every spectrum).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Methods to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::Single, Method::SelfRefine, Method::Debate])]
    pub methods: Vec<Method>,
    /// Use only the first N texts of the corpus.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Model that reads the emotions of every output (default: the judge's).
    #[arg(long)]
    pub detect_model: Option<String>,
    /// How writers are moved toward the target: the prompt, steering vectors inside the
    /// model at the target's calibrated level, or both.
    #[arg(long, value_enum, default_value_t = pathos::debate::config::SteerMethod::Prompt)]
    pub method: pathos::debate::config::SteerMethod,
    #[command(flatten)]
    pub debate: super::rewrite::DebateArgs,
}

pub fn run(cmd: EvalCommand, offline: bool) -> anyhow::Result<ExitCode> {
    let args = match cmd {
        EvalCommand::Rewrite(a) => *a,
        EvalCommand::Ethics(a) => return ethics(*a, offline),
    };
    let beam = Beam::builtin();
    let mut corpus = load_corpus(&args.corpus)?;
    if let Some(n) = args.limit {
        corpus.truncate(n);
    }
    let targets = if args.targets.is_empty() {
        (0..beam.spectra.len())
            .flat_map(|s| {
                [-0.6f64, 0.6].map(|l| pathos::emotion::beam::Target {
                    spectrum: s,
                    level: beam.nearest_level(l),
                })
            })
            .collect()
    } else {
        args.targets
            .iter()
            .map(|t| beam.parse_target(t, false, false))
            .collect::<Result<Vec<_>, _>>()?
    };
    let d = &args.debate;
    let mut specs = d.model.clone();
    if let Some(j) = &d.judge_model {
        specs.push(j.clone());
    }
    if let Some(m) = &args.detect_model {
        specs.push(m.clone());
    }
    let (backend, names) = load_backend(&specs, &d.run, offline)?;
    let writer_names = &names[..d.model.len().max(1)];
    let judge = d
        .judge_model
        .clone()
        .unwrap_or_else(|| writer_names[0].clone());
    let mut cfg = config(d, writer_names, &judge);
    cfg.method = args.method;
    let detect_model = args.detect_model.clone().unwrap_or_else(|| judge.clone());
    let bar = progress_bar(corpus.len() * targets.len() * args.methods.len());
    let report = evaluate(
        &backend,
        beam,
        &cfg,
        &detect_model,
        &corpus,
        &targets,
        &args.methods,
        &|done, _, what| {
            bar.set_position(done as u64);
            bar.set_message(what.to_string());
        },
    );
    bar.finish_and_clear();
    let report = report?;
    if d.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} texts × {} targets; writers {}, judge {}, detector {}\n",
            corpus.len(),
            targets.len(),
            report.writers.join(","),
            report.judge_model,
            report.detect_model
        );
        print!("{}", summary_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn ethics(args: EvalEthicsArgs, offline: bool) -> anyhow::Result<ExitCode> {
    use pathos::eval::ethics::{Options, evaluate, load_items, table};

    let mut items = load_items(&args.corpus)?;
    if let Some(n) = args.sample.filter(|&n| n > 0 && n < items.len()) {
        let len = items.len();
        items = (0..n).map(|i| items[i * len / n].clone()).collect();
    }
    let loaded = super::ethics::load_sources(&args.sources)?;
    let d = &args.debate;
    let (backend, names) =
        super::ethics::load_checking_backend(d, args.reviewer_model.as_deref(), offline)?;
    let model = names[0].clone();
    let checker = loaded.checker(&backend, &model, args.method.into());
    let judge = d.judge_model.clone().unwrap_or_else(|| model.clone());
    let debate = config(d, &names[..d.model.len().max(1)], &judge);
    let who = pathos::ethics::eris::Reviewers {
        advocate_model: model.clone(),
        eris_model: args.reviewer_model.clone().unwrap_or_else(|| model.clone()),
    };
    let argue = pathos::debate::argue::ArgueConfig {
        max_rounds: args.review_rounds,
        seed: d.seed,
        context: loaded.policy.context.clone(),
        ..Default::default()
    };
    // Review cases of an evaluation go to a scratch journal, not the user's queue.
    let scratch = tempfile::tempdir()?;
    let scratch_journal = pathos::ethics::journal::Journal::open(scratch.path())?;
    let opts = Options {
        rectify: args.rectify.then_some((&debate, args.max_iterations)),
        review: args.review.then_some((&who, &argue, &scratch_journal)),
        min_content: debate.min_content,
    };
    let bar = progress_bar(items.len());
    let report = evaluate(&checker, &items, &opts, &|done, _, what| {
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    });
    bar.finish_and_clear();
    let report = report?;
    if d.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar over `len` evaluation steps.
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}
