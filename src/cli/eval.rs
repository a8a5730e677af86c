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
    Rewrite(EvalRewriteArgs),
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
    #[command(flatten)]
    pub debate: super::rewrite::DebateArgs,
}

pub fn run(cmd: EvalCommand, offline: bool) -> anyhow::Result<ExitCode> {
    let EvalCommand::Rewrite(args) = cmd;
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
    let cfg = config(d, writer_names, &judge);
    let detect_model = args.detect_model.clone().unwrap_or_else(|| judge.clone());
    let bar =
        indicatif::ProgressBar::new((corpus.len() * targets.len() * args.methods.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
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
