//! `pathos steer`: learn, calibrate and list emotion steering vectors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use pathos::backend::local::LocalBackend;
use pathos::emotion::beam::Beam;
use pathos::engine::fetch::progress_bar;
use pathos::steer::calibrate::{CalibrateOptions, calibrate};
use pathos::steer::library;
use pathos::steer::train::{TrainOptions, train};
use pathos::steer::vector::ControlVector;

use super::common::{ModelArgs, load_model};

#[derive(Debug, Subcommand)]
pub enum SteerCommand {
    /// Learn a spectrum's direction per layer from the model's own hidden states.
    Train(TrainArgs),
    /// Find the scales at which the detector reads each BEAM level.
    Calibrate(CalibrateArgs),
    /// Show the vectors pathos finds (yours, then the shipped ones).
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// BEAM spectrum, e.g. sadness-joy.
    #[arg(long)]
    pub spectrum: String,
    /// Contrastive pairs (texts at the two poles).
    #[arg(long, default_value_t = 32)]
    pub pairs: usize,
    /// Layers to steer, A..B inclusive (default: a quarter of the depth to the
    /// next-to-last layer).
    #[arg(long, value_name = "A..B")]
    pub layers: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the vector (default: $PATHOS_HOME/steer/MODEL/SPECTRUM.gguf, where
    /// --steer finds it).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Calibrate right after learning.
    #[arg(long)]
    pub calibrate: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub spectrum: String,
    /// The vector file to calibrate (default: the one --steer would use); the result is
    /// written to the user's vector path.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Rewrites per scale (at most 8).
    #[arg(long, default_value_t = 8)]
    pub texts: usize,
    /// Raw scales to try, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub grid: Vec<f64>,
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

fn parse_layers(s: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("--layers {s}: write it as A..B, e.g. 8..28"))?;
    let n = |x: &str| {
        x.trim()
            .parse::<usize>()
            .with_context(|| format!("--layers {s}: `{x}` is not a layer number"))
    };
    Ok((n(a)?, n(b)?))
}

pub fn run(cmd: SteerCommand, offline: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        SteerCommand::Train(a) => run_train(a, offline),
        SteerCommand::Calibrate(a) => run_calibrate(a, offline),
        SteerCommand::List(a) => run_list(a),
    }
}

fn run_train(a: TrainArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let beam = Beam::builtin();
    beam.find_spectrum(&a.spectrum)?;
    let layers = a.layers.as_deref().map(parse_layers).transpose()?;
    let model = load_model(&a.model, offline)?;
    let opts = TrainOptions {
        pairs: a.pairs,
        layers,
        seed: a.seed,
    };
    let bar = progress_bar(
        true,
        a.pairs as u64,
        "learning directions [{bar:30}] {pos}/{len} pairs",
    );
    let t0 = std::time::Instant::now();
    let mut v = train(&model, beam, &a.spectrum, &opts, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    let train_s = t0.elapsed().as_secs_f64();
    if a.calibrate {
        v.calibration = Some(run_calibration(
            &model,
            beam,
            &v,
            &CalibrateOptions::default(),
        )?);
    }
    let path = a
        .output
        .unwrap_or_else(|| library::user_path(&model.name, &v.provenance.spectrum));
    v.write(&path)?;
    report(&v, &path, train_s, a.json)
}

fn run_calibration(
    model: &pathos::engine::model::Model,
    beam: &Beam,
    v: &ControlVector,
    opts: &CalibrateOptions,
) -> anyhow::Result<pathos::steer::vector::Calibration> {
    let backend = LocalBackend::new(vec![(model.name.clone(), model.clone())]);
    let bar = progress_bar(
        true,
        opts.grid.len() as u64,
        "calibrating [{bar:30}] {pos}/{len} scales {msg}",
    );
    let cal = calibrate(model, &backend, beam, v, opts, &mut |scale, read| {
        bar.set_message(format!("(scale {scale:+} reads {read:+.2})"));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    Ok(cal)
}

fn run_calibrate(a: CalibrateArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let beam = Beam::builtin();
    beam.find_spectrum(&a.spectrum)?;
    let model = load_model(&a.model, offline)?;
    let mut v = match &a.file {
        Some(f) => library::open(&model, f)?,
        None => library::find(&model, beam, &a.spectrum)?,
    };
    let mut opts = CalibrateOptions {
        texts: a.texts,
        ..CalibrateOptions::default()
    };
    if !a.grid.is_empty() {
        opts.grid = a.grid.clone();
    }
    let t0 = std::time::Instant::now();
    v.calibration = Some(run_calibration(&model, beam, &v, &opts)?);
    let path = a
        .output
        .unwrap_or_else(|| library::user_path(&model.name, &v.provenance.spectrum));
    v.write(&path)?;
    report(&v, &path, t0.elapsed().as_secs_f64(), a.json)
}

fn report(
    v: &ControlVector,
    path: &std::path::Path,
    secs: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        let out = serde_json::json!({
            "path": path,
            "layers": v.layers(),
            "n_embd": v.n_embd,
            "provenance": v.provenance,
            "calibration": v.calibration,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let layers = v.layers();
    println!(
        "{} on {}: {} layers ({}..{}), {} pairs → {} ({:.1} s)",
        v.provenance.spectrum,
        v.provenance.model_name,
        layers.len(),
        layers.first().unwrap_or(&0),
        layers.last().unwrap_or(&0),
        v.provenance.pairs,
        path.display(),
        secs
    );
    if let Some(c) = &v.calibration {
        println!("scale → detected level:");
        for (s, m) in c.grid.iter().zip(&c.measured) {
            println!("  {s:+6.1} → {m:+.2}");
        }
        println!("level → scale:");
        for (l, s) in c.levels.iter().zip(&c.scales) {
            println!("  {:>4} → {s:+.2}", pathos::emotion::beam::format_level(*l));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let all = library::list();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!(
            "no steering vectors yet; learn one with `pathos steer train --spectrum sadness-joy`"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("| model | spectrum | from | layers | pairs | calibrated |");
    println!("| --- | --- | --- | --- | ---: | --- |");
    for l in all {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            l.model,
            l.spectrum,
            l.path.map_or(l.origin.clone(), |p| p.display().to_string()),
            l.layers,
            l.pairs,
            if l.calibrated { "yes" } else { "no" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
