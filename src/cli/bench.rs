//! `pathos bench`: llama-bench style throughput report.

use std::process::ExitCode;

use clap::Args;
use pathos::bench::{BenchOptions, markdown, run as run_bench};
use pathos::engine::device::backend_name;

use super::common::{ModelArgs, SteerArgs, load_model};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens for the pp test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens for the tg test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Also decode this many sequences together (comma-separated, e.g. 2,4,8): the
    /// aggregate t/s of a debate's agents sharing one copy of the weights.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<usize>,
    /// Also time prompts sharing a prefix of this many tokens, computed per agent and
    /// computed once then copied (0 skips it).
    #[arg(long, default_value_t = 0)]
    pub shared_prefix: usize,
    #[command(flatten)]
    pub steer: SteerArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs, offline: bool, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let specs = args.steer.specs()?;
    let model = load_model(&args.model, offline)?;
    let steering = pathos::steer::resolve(&model, pathos::emotion::beam::Beam::builtin(), &specs)?;
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = BenchOptions {
        n_prompt: args.n_prompt,
        n_gen: args.n_gen,
        repetitions: args.repetitions,
        threads,
        backend: backend_name(model.transformer.device()).to_string(),
        agents: args.agents,
        shared_prefix: args.shared_prefix,
        steering,
    };
    let total = pathos::bench::count(&model, &opts);
    let bar = pathos::engine::fetch::progress_bar(
        true,
        total as u64,
        "benchmarking [{bar:30}] {pos}/{len}",
    );
    let rows = run_bench(&model, &opts, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", markdown(&rows));
    }
    Ok(ExitCode::SUCCESS)
}
