//! `pathos models list|fetch|info|verify`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use pathos::engine::fetch::{fetch, sha256_file};
use pathos::engine::gguf::GgufFile;
use pathos::engine::registry::{Manifest, cached_path, is_cached, resolve_model};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Models in the manifest and whether they are cached.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Bring a model into the cache (re-fetch with --force).
    Fetch {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// GGUF metadata of a model name or a .gguf path.
    Info {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Check a cached model's sha256 against the manifest.
    Verify { name: String },
}

fn human_size(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(cmd: ModelsCommand, offline: bool) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::builtin()?;
    match cmd {
        ModelsCommand::List { json } => {
            if json {
                let v: Vec<_> = manifest
                    .models
                    .iter()
                    .map(|m| {
                        json!({
                            "name": m.name, "architecture": m.architecture,
                            "quantization": m.quantization, "size": m.size,
                            "instruct": m.instruct, "default": m.name == manifest.default,
                            "cached": is_cached(m), "path": cached_path(m),
                            "description": m.description,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<22} {:<8} {:<8} {:>9}  {:<7} DESCRIPTION",
                    "NAME", "ARCH", "QUANT", "SIZE", "CACHED"
                );
                for m in &manifest.models {
                    let name = if m.name == manifest.default {
                        format!("{} *", m.name)
                    } else {
                        m.name.clone()
                    };
                    println!(
                        "{:<22} {:<8} {:<8} {:>9}  {:<7} {}",
                        name,
                        m.architecture,
                        m.quantization,
                        human_size(m.size),
                        if is_cached(m) { "yes" } else { "no" },
                        m.description
                    );
                }
                println!(
                    "(* default; cache: {})",
                    pathos::engine::registry::models_dir().display()
                );
            }
        }
        ModelsCommand::Fetch { name, force } => {
            let entry = manifest.get(&name).ok_or_else(|| manifest.unknown(&name))?;
            let path = cached_path(entry);
            if is_cached(entry) && !force {
                eprintln!("{} is already cached at {}", entry.name, path.display());
            } else {
                if offline {
                    return Err(pathos::engine::Error::Offline { model: name }.into());
                }
                fetch(entry, &path, true, force)?;
                eprintln!(
                    "fetched {} → {} (sha256 verified)",
                    entry.name,
                    path.display()
                );
            }
        }
        ModelsCommand::Info { model, json } => {
            let resolved = resolve_model(&manifest, Some(&model), offline, true)?;
            let info = GgufFile::open(&resolved.path)?.info()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                println!("path            {}", info.path.display());
                println!("name            {}", info.name.as_deref().unwrap_or("-"));
                println!("architecture    {}", info.architecture);
                println!("file size       {}", human_size(info.file_size));
                println!("parameters      {:.1} M", info.parameters as f64 / 1e6);
                println!("context length  {}", opt(info.context_length));
                println!("embedding       {}", opt(info.embedding_length));
                println!("layers          {}", opt(info.block_count));
                println!(
                    "heads (kv)      {} ({})",
                    opt(info.head_count),
                    opt(info.head_count_kv)
                );
                println!(
                    "vocabulary      {} ({})",
                    info.vocab_size,
                    info.tokenizer_model.as_deref().unwrap_or("-")
                );
                println!(
                    "chat template   {}",
                    if info.chat_template { "yes" } else { "no" }
                );
                let q: Vec<String> = info
                    .quantization
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect();
                println!("tensors         {} ({})", info.tensor_count, q.join(", "));
            }
        }
        ModelsCommand::Verify { name } => {
            let entry = manifest.get(&name).ok_or_else(|| manifest.unknown(&name))?;
            let path = cached_path(entry);
            let actual = sha256_file(&path).with_context(|| format!("{name} is not cached"))?;
            if actual != entry.sha256 {
                anyhow::bail!(
                    "{} does not match the manifest (sha256 {actual}, expected {}); run `pathos models fetch {name} --force`",
                    path.display(),
                    entry.sha256
                );
            }
            println!("{}: ok ({})", path.display(), actual);
        }
    }
    Ok(ExitCode::SUCCESS)
}
