//! `pathos chat`: an interactive conversation that keeps its KV cache between turns.
//!
//! Each turn renders the whole conversation with the chat template, but only the tokens
//! after the longest prefix already in the cache are processed, so a turn costs its own
//! length, not the history's.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Args;
use pathos::engine::generate::{GenerateRequest, generate};
use pathos::engine::template::Message;

use super::common::{ModelArgs, SamplingArgs, load_model};

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// After each reply, print how many prompt tokens were reused from the cache.
    #[arg(long)]
    pub show_stats: bool,
}

pub fn run(args: ChatArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let sampling = args.sampling.params()?;
    let model = load_model(&args.model, offline)?;
    let mut session = model.new_session()?;
    let start: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let mut messages = start.clone();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!(
        "chatting with {} (/reset to start over, /exit to quit)",
        model.name
    );
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\n', '\r']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = start.clone();
                session.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", input));
        let text = model.template.render(&messages, true)?;
        let add_special =
            model.tokenizer.bos_text().is_empty() || !text.starts_with(&model.tokenizer.bos_text());
        let prompt = model.tokenizer.encode(&text, add_special)?;
        let req = GenerateRequest {
            prompt,
            sampling: sampling.clone(),
            max_tokens: args.sampling.max_tokens,
            stop: args.sampling.stop.clone(),
            constraint: None,
            steering: None,
            logprobs: None,
        };
        let mut sink = |s: &str| {
            out.write_all(s.as_bytes())
                .and_then(|_| out.flush())
                .is_ok()
        };
        let g = match generate(&model, &mut session, &req, &mut sink) {
            Ok(g) => g,
            Err(e @ pathos::engine::Error::ContextOverflow { .. }) => {
                messages.pop();
                eprintln!("\n{e}; /reset to start a new conversation");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(out)?;
        if args.show_stats {
            eprintln!(
                "[prompt {} tokens, {} from cache; {} generated, {:.1} tok/s]",
                g.timings.prompt_tokens,
                g.timings.cached_tokens,
                g.timings.generated_tokens,
                g.timings.generation_tokens_per_second
            );
        }
        messages.push(Message::new("assistant", g.text));
    }
    Ok(ExitCode::SUCCESS)
}
