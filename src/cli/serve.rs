//! `pathos serve`: the OpenAI-compatible server, pathos's endpoints and the viewer.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pathos::backend::scheduler::Scheduler;
use pathos::server::{AppState, ServeOptions, bind, check_bind, serve};

use super::common::{RunArgs, load_local_backend};
use super::ethics::{Sources, load_sources};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models to serve, by manifest name or path (default: the default model); the
    /// first answers requests that name none.
    #[arg(short = 'm', long, value_delimiter = ',')]
    pub model: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Address to listen on. Anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Bearer token clients must send (`Authorization: Bearer KEY`).
    #[arg(long, env = "PATHOS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests that may wait for a place in the batch; past it, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue_limit: usize,
    /// Seconds a request may take before it is cancelled.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub body_limit: usize,
    /// Debates (rewrites, ethics reviews and rectifications) run at once.
    #[arg(long, default_value_t = 2)]
    pub max_debates: usize,
    /// Where kept rewrite transcripts go (default: $PATHOS_HOME/transcripts).
    #[arg(long)]
    pub transcript_dir: Option<PathBuf>,
    #[command(flatten)]
    pub sources: Sources,
}

pub fn run(args: ServeArgs, offline: bool) -> anyhow::Result<ExitCode> {
    // A refused address fails before minutes of loading.
    check_bind(args.host, args.api_key.as_deref())?;
    let mut options = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key.clone(),
        queue_limit: args.queue_limit,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        body_limit: args.body_limit,
        max_debates: args.max_debates,
        ..ServeOptions::default()
    };
    if let Some(d) = args.transcript_dir.clone() {
        options.transcript_dir = d;
    }
    let standards = load_sources(&args.sources)?;
    let (backend, _names) = load_local_backend(&args.model, &args.run, offline)?;
    let scheduler = Arc::new(Scheduler::start(Arc::new(backend), options.queue_limit)?);
    let state = Arc::new(AppState::new(scheduler, options.clone(), Some(standards))?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the server runtime")?;
    rt.block_on(async move {
        let listener = bind(&options).await?;
        let addr = listener.local_addr()?;
        let models: Vec<&str> = state.models.iter().map(|m| m.0.as_str()).collect();
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        }
        eprintln!(
            "pathos: serving {} · OpenAI API at http://{addr}/v1 · debate viewer at http://{addr}/{}",
            models.join(", "),
            if options.api_key.is_some() { " · API key required" } else { "" }
        );
        serve(listener, state, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("pathos: shutting down");
}
