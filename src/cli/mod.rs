//! Subcommands, one file each. They parse arguments, call the library and print.

mod bench;
mod chat;
mod common;
mod detect;
mod emotions;
mod ethics;
mod eval;
mod generate;
mod models;
mod rewrite;
mod serve;
mod steer;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Never touch the network (also PATHOS_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long, global = true)]
    pub threads: Option<usize>,
    /// Where models run: `local` (this process) or `openai:URL[,URL…]`, any
    /// OpenAI-compatible server (pathos serve, llama-server, vLLM); its key in
    /// PATHOS_BACKEND_KEY.
    #[arg(long, global = true, env = "PATHOS_BACKEND")]
    pub backend: Option<String>,
    /// More log output (-v info, -vv debug); RUST_LOG also works.
    #[arg(short = 'v', long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Parser)]
#[command(
    name = "pathos",
    version,
    about = "Local GGUF inference: emotion-aware debate rewrites and ethics checks, offline"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, fetch, inspect and verify models.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Generate a reply to a prompt, streamed to stdout.
    Generate(generate::GenerateArgs),
    /// Interactive multi-turn chat.
    Chat(chat::ChatArgs),
    /// Measure prompt processing and generation speed (llama-bench columns).
    Bench(bench::BenchArgs),
    /// Print the BEAM emotion table (7 spectra × 7 levels).
    Emotions(emotions::EmotionsArgs),
    /// Read where a text sits on each emotion spectrum.
    Detect(detect::DetectArgs),
    /// Rewrite a text toward an emotion by multi-agent debate.
    Rewrite(Box<rewrite::RewriteArgs>),
    /// Check texts against codes of conduct; learn, review, and take human feedback.
    #[command(subcommand)]
    Ethics(ethics::EthicsCommand),
    /// Measure rewrite methods over a corpus.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Emotion steering vectors: learn, calibrate, list.
    #[command(subcommand)]
    Steer(steer::SteerCommand),
    /// Serve the models over HTTP: OpenAI-compatible API, pathos endpoints, debate viewer.
    Serve(Box<serve::ServeArgs>),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let offline = cli.global.offline || pathos::engine::registry::offline_from_env();
    let threads = cli.global.threads;
    common::set_backend(cli.global.backend.clone())?;
    match cli.command {
        Command::Models(c) => models::run(c, offline),
        Command::Generate(a) => generate::run(a, offline),
        Command::Chat(a) => chat::run(a, offline),
        Command::Bench(a) => bench::run(a, offline, threads),
        Command::Emotions(a) => emotions::run(a),
        Command::Detect(a) => detect::run(a, offline),
        Command::Rewrite(a) => rewrite::run(*a, offline),
        Command::Ethics(c) => ethics::run(c, offline),
        Command::Eval(c) => eval::run(c, offline),
        Command::Steer(c) => steer::run(c, offline),
        Command::Serve(a) => serve::run(*a, offline),
    }
}

/// Sets up `tracing` on stderr.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// Exit status for an error: 2 for bad usage or input values, 1 otherwise.
pub fn error_exit_code(e: &anyhow::Error) -> u8 {
    use pathos::engine::Error;
    if e.downcast_ref::<pathos::emotion::EmotionError>().is_some()
        || matches!(
            e.downcast_ref::<pathos::debate::DebateError>(),
            Some(pathos::debate::DebateError::Config(_) | pathos::debate::DebateError::Emotion(_))
        )
    {
        return 2;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::InvalidSampling(_)) => 2,
        _ => 1,
    }
}
