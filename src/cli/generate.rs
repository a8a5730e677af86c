//! `pathos generate`: one prompt, the reply streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use pathos::engine::constrain::Constraint;
use pathos::engine::generate::{FinishReason, GenerateRequest, generate};
use pathos::engine::template::Message;
use serde_json::json;

use super::common::{ModelArgs, SamplingArgs, SteerArgs, load_model, read_prompt};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub steer: SteerArgs,
    /// The prompt; `-` or nothing reads stdin.
    pub prompt: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message for the chat template.
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    /// Print one JSON object with the text, finish reason, counts and timings.
    #[arg(long)]
    pub json: bool,
    /// Check the reply against the ethics policy before printing it; rectify or block it
    /// on a violation (the reply is then not streamed).
    #[arg(long)]
    pub guard: bool,
    /// Make the reply a JSON value valid under the JSON schema in FILE.
    #[arg(long, value_name = "FILE", group = "shape")]
    pub json_schema: Option<PathBuf>,
    /// Make the reply exactly one of these comma-separated choices.
    #[arg(long, value_delimiter = ',', group = "shape")]
    pub choice: Vec<String>,
    /// Make the reply follow the lark grammar in FILE.
    #[arg(long, value_name = "FILE", group = "shape")]
    pub grammar: Option<PathBuf>,
}

impl GenerateArgs {
    /// The shape the reply must have, read from the flags.
    fn constraint(&self) -> anyhow::Result<Option<Constraint>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        if let Some(p) = &self.json_schema {
            let schema: serde_json::Value = serde_json::from_str(&read(p)?)
                .with_context(|| format!("{} is not valid JSON", p.display()))?;
            return Ok(Some(Constraint::JsonSchema(schema)));
        }
        if let Some(p) = &self.grammar {
            return Ok(Some(Constraint::Lark(read(p)?)));
        }
        if !self.choice.is_empty() {
            return Ok(Some(Constraint::Choice(self.choice.clone())));
        }
        Ok(None)
    }
}

pub fn run(args: GenerateArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let sampling = args.sampling.params()?;
    let constraint = args.constraint()?;
    let specs = args.steer.specs()?;
    let prompt = read_prompt(args.prompt.clone())?;
    if let Some(spec) = super::common::remote_backend() {
        return remote(&args, &spec, prompt, sampling, constraint, specs);
    }
    let model = load_model(&args.model, offline)?;
    let steering = pathos::steer::resolve(&model, pathos::emotion::beam::Beam::builtin(), &specs)?;
    let text = if args.raw {
        prompt
    } else {
        let mut messages = Vec::new();
        if let Some(s) = args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", prompt));
        model.template.render(&messages, true)?
    };
    // A templated prompt already carries BOS when the template prints it.
    let add_special = args.raw
        || !text.starts_with(&model.tokenizer.bos_text())
        || model.tokenizer.bos_text().is_empty();
    let tokens = model.tokenizer.encode(&text, add_special)?;
    let req = GenerateRequest {
        prompt: tokens,
        sampling,
        max_tokens: args.sampling.max_tokens,
        stop: args.sampling.stop.clone(),
        constraint,
        steering,
        logprobs: None,
    };
    let mut session = model.new_session()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let json_mode = args.json;
    // A guarded reply is held back until it has passed the check.
    let hold = json_mode || args.guard;
    let mut sink = |s: &str| -> bool {
        if hold {
            return true;
        }
        // A closed pipe (`| head`) ends generation quietly.
        out.write_all(s.as_bytes())
            .and_then(|_| out.flush())
            .is_ok()
    };
    let mut g = generate(&model, &mut session, &req, &mut sink)?;
    if args.guard {
        drop(session);
        let name = model.name.clone();
        let backend = pathos::backend::local::LocalBackend::new(vec![(name.clone(), model)]);
        let debate = pathos::debate::config::DebateConfig::new(&name);
        match super::ethics::guard(&backend, &name, &g.text, &debate)? {
            Some(text) => g.text = text,
            None => return Ok(ExitCode::from(1)),
        }
        let v = json!({ "model": name, "text": g.text, "finish_reason": g.finish_reason });
        if json_mode {
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
        } else {
            let _ = writeln!(out, "{}", g.text);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if json_mode {
        let v = json!({
            "model": model.name,
            "steer": specs,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "prompt_tokens": g.timings.prompt_tokens,
            "generated_tokens": g.timings.generated_tokens,
            "timings": {
                "load_ms": model.load_time.as_secs_f64() * 1000.0,
                "prompt_ms": g.timings.prompt_ms,
                "generation_ms": g.timings.generation_ms,
                "prompt_tokens_per_second": g.timings.prompt_tokens_per_second,
                "generation_tokens_per_second": g.timings.generation_tokens_per_second,
            },
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
    } else if g.finish_reason != FinishReason::Cancelled {
        let _ = writeln!(out);
    }
    // The process ends here: the system takes the model's memory back at once, where
    // dropping it would free the tokenizer's hundred thousand allocations one by one
    // (about 10 ms of a one-token run).
    std::mem::forget(model);
    Ok(ExitCode::SUCCESS)
}

/// `generate` on a remote backend: the same request through the OpenAI API, printed
/// when it is complete.
fn remote(
    args: &GenerateArgs,
    spec: &str,
    prompt: String,
    sampling: pathos::engine::sampler::SamplingParams,
    constraint: Option<Constraint>,
    steer: Vec<pathos::steer::SteerSpec>,
) -> anyhow::Result<ExitCode> {
    use pathos::backend::{Backend, ChatRequest, Prompt};
    if args.guard {
        anyhow::bail!("--guard runs on the local backend only");
    }
    let backend = super::common::connect_remote(spec)?;
    let model = match &args.model.model {
        Some(m) => m.clone(),
        None => backend.models()[0].clone(),
    };
    let prompt = if args.raw {
        Prompt::raw(prompt)
    } else {
        Prompt::user(args.system.as_deref(), prompt)
    };
    let req = ChatRequest {
        model: model.clone(),
        prompt,
        sampling,
        max_tokens: args.sampling.max_tokens,
        stop: args.sampling.stop.clone(),
        constraint,
        steer,
        logprobs: None,
    };
    let c = backend
        .chat(std::slice::from_ref(&req))?
        .pop()
        .context("the server sent no completion")?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "model": model,
            "backend": backend.url(),
            "text": c.text,
            "finish_reason": c.finish_reason,
            "prompt_tokens": c.prompt_tokens,
            "generated_tokens": c.generated_tokens,
            "timings": { "request_ms": c.generation_ms },
        });
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&v)?);
    } else {
        let _ = writeln!(out, "{}", c.text);
    }
    Ok(ExitCode::SUCCESS)
}
