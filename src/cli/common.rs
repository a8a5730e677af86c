//! Argument groups and helpers shared by the subcommands.

use std::io::Read;

use anyhow::Context;
use clap::Args;
use pathos::engine::device::parse_device;
use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::{Manifest, resolve_model};
use pathos::engine::sampler::SamplingParams;

/// Which model to run and where.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model name from the manifest (see `pathos models list`) or path to a .gguf file.
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long)]
    pub ctx_size: Option<usize>,
}

/// Sampling options (llama.cpp's names and defaults).
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the k most likely tokens (leave out to keep all).
    #[arg(long, default_value = "40", allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The library's parameters, validated.
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(pathos::engine::Error::InvalidSampling(format!(
                    "top-k must be at least 1, got {k}"
                ))
                .into());
            }
            k => k.map(|k| k as usize),
        };
        let p = SamplingParams {
            temperature: self.temperature,
            top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Resolves (fetching if needed) and loads the model, with a spinner on a terminal.
pub fn load_model(args: &ModelArgs, offline: bool) -> anyhow::Result<Model> {
    let manifest = Manifest::builtin()?;
    let resolved = resolve_model(&manifest, args.model.as_deref(), offline, true)?;
    let device = parse_device(&args.device)?;
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("loading {}", resolved.display_name()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(100));
    let model = Model::load(
        &resolved,
        &LoadOptions {
            device,
            context: args.ctx_size,
        },
    );
    spinner.finish_and_clear();
    Ok(model?)
}

/// The prompt argument, or stdin when it is `-` or absent.
pub fn read_prompt(arg: Option<String>) -> anyhow::Result<String> {
    match arg.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the prompt from stdin")?;
            Ok(s)
        }
        Some(p) => Ok(p.to_string()),
    }
}

/// Where several models run: device and context shared by all of them.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Context size in tokens per sequence (default: the model's, at most 4096).
    #[arg(short = 'c', long)]
    pub ctx_size: Option<usize>,
}

/// Loads every distinct model of `specs` once (the manifest's default when `specs` is
/// empty) and serves them by the names given; returns the backend and those names in
/// order.
pub fn load_backend(
    specs: &[String],
    run: &RunArgs,
    offline: bool,
) -> anyhow::Result<(Box<dyn pathos::backend::Backend>, Vec<String>)> {
    if let Some(spec) = remote_backend() {
        let remote = connect_remote(&spec)?;
        let names = if specs.is_empty() {
            vec![pathos::backend::Backend::models(&remote)[0].clone()]
        } else {
            specs.iter().map(|s| s.trim().to_string()).collect()
        };
        tracing::info!("using the remote backend at {}", remote.url());
        return Ok((Box::new(remote), names));
    }
    let (local, names) = load_local_backend(specs, run, offline)?;
    Ok((Box::new(local), names))
}

/// The `--backend` (or `PATHOS_BACKEND`) setting, when it names a remote server.
static BACKEND: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Records `--backend` for [`load_backend`]; `local` (or nothing) keeps models in
/// this process.
pub fn set_backend(spec: Option<String>) -> anyhow::Result<()> {
    let spec = spec.filter(|s| !s.trim().is_empty() && s.trim() != "local");
    if let Some(s) = &spec
        && !s.starts_with("openai:")
    {
        anyhow::bail!("unknown backend `{s}`: use `local` or `openai:URL[,URL…]`");
    }
    let _ = BACKEND.set(spec);
    Ok(())
}

/// The remote backend asked for, if any.
pub fn remote_backend() -> Option<String> {
    BACKEND.get().cloned().flatten()
}

/// Connects to the remote backend `spec` names, with the key in `PATHOS_BACKEND_KEY`
/// (if set and not empty) and a ten-minute request timeout.
pub fn connect_remote(spec: &str) -> anyhow::Result<pathos::backend::remote::RemoteBackend> {
    Ok(pathos::backend::remote::RemoteBackend::connect(
        spec,
        std::env::var("PATHOS_BACKEND_KEY")
            .ok()
            .filter(|k| !k.is_empty()),
        std::time::Duration::from_secs(600),
    )?)
}

/// Loads the models into this process (see [`load_backend`]).
pub fn load_local_backend(
    specs: &[String],
    run: &RunArgs,
    offline: bool,
) -> anyhow::Result<(pathos::backend::local::LocalBackend, Vec<String>)> {
    let manifest = Manifest::builtin()?;
    let names: Vec<String> = if specs.is_empty() {
        vec![manifest.default.clone()]
    } else {
        specs.iter().map(|s| s.trim().to_string()).collect()
    };
    let mut loaded: Vec<(String, Model)> = Vec::new();
    for name in &names {
        if loaded.iter().any(|(n, _)| n == name) {
            continue;
        }
        let args = ModelArgs {
            model: Some(name.clone()),
            device: run.device.clone(),
            ctx_size: run.ctx_size,
        };
        loaded.push((name.clone(), load_model(&args, offline)?));
    }
    Ok((pathos::backend::local::LocalBackend::new(loaded), names))
}

/// Reads the text argument (or stdin) and refuses an empty one.
pub fn read_text(arg: Option<String>) -> anyhow::Result<String> {
    let text = read_prompt(arg)?;
    if text.trim().is_empty() {
        anyhow::bail!("the text is empty: give it as an argument or on stdin");
    }
    Ok(text)
}

/// Emotion steering inside the model (control vectors added to the residual stream).
#[derive(Debug, Args, Clone, Default)]
pub struct SteerArgs {
    /// Steer toward a BEAM level: SPECTRUM:LEVEL (e.g. sadness-joy:+0.6), through the
    /// vector's calibration. Repeat for several spectra.
    #[arg(long, value_name = "SPECTRUM:LEVEL", allow_hyphen_values = true)]
    pub steer: Vec<String>,
    /// Steer by a raw multiple of the unit direction: SPECTRUM:SCALE (e.g.
    /// sadness-joy:3). Repeat for several spectra.
    #[arg(long, value_name = "SPECTRUM:SCALE", allow_hyphen_values = true)]
    pub steer_scale: Vec<String>,
}

impl SteerArgs {
    /// The steering asked for, checked against the BEAM table.
    pub fn specs(&self) -> anyhow::Result<Vec<pathos::steer::SteerSpec>> {
        let beam = pathos::emotion::beam::Beam::builtin();
        let mut out = Vec::new();
        for s in &self.steer {
            out.push(pathos::steer::SteerSpec::parse(s, false, beam)?);
        }
        for s in &self.steer_scale {
            out.push(pathos::steer::SteerSpec::parse(s, true, beam)?);
        }
        Ok(out)
    }
}
