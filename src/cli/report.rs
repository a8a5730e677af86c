//! `pathos report`: a saved debate transcript as one self-contained HTML page.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The transcript, as `pathos rewrite --transcript FILE` wrote it.
    pub transcript: PathBuf,
    /// Where to write the page; `-` writes it to stdout (default: the transcript's name
    /// with `.html`).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// An ethics verdict to show with the debate (`pathos ethics check --json` output).
    #[arg(long, value_name = "VERDICT.json")]
    pub ethics: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let page = pathos::report::render_files(&args.transcript, args.ethics.as_deref())?;
    let out = args
        .output
        .unwrap_or_else(|| args.transcript.with_extension("html"));
    if out == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        // A closed pipe is not an error worth reporting.
        let _ = lock.write_all(page.as_bytes()).and_then(|_| lock.flush());
        return Ok(ExitCode::SUCCESS);
    }
    write_atomically(&out, page.as_bytes())
        .with_context(|| format!("cannot write the report to {}", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Writes through a temporary sibling and a rename, so a reader never sees half a page
/// and a failed write leaves any earlier report in place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".pathos-report.")
        .tempfile_in(dir)?;
    tmp.as_file_mut().write_all(bytes)?;
    tmp.as_file_mut().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
