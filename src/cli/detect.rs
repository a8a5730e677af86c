//! `pathos detect`: where a text sits on each BEAM spectrum.

use std::process::ExitCode;

use clap::Args;
use pathos::emotion::beam::{Beam, format_level};
use pathos::emotion::detect::Detector;

use super::common::{RunArgs, load_backend, read_text};

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Model name or .gguf path.
    #[arg(short = 'm', long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
    /// The text; `-` or nothing reads stdin.
    pub text: Option<String>,
    /// Report the model's raw probabilities, without removing its content-free bias.
    #[arg(long)]
    pub no_calibrate: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DetectArgs, offline: bool) -> anyhow::Result<ExitCode> {
    let text = read_text(args.text)?;
    let specs: Vec<String> = args.model.into_iter().collect();
    let (backend, names) = load_backend(&specs, &args.run, offline)?;
    let beam = Beam::builtin();
    let detector = Detector::new(&backend, beam, &names[0], !args.no_calibrate);
    let d = detector.detect(&text)?;
    if args.json {
        // A reader that has gone away (`| head`) is not an error worth a panic.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&d)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>6} {:<13} {:>8}  distribution (-1 … +1)",
        "spectrum", "level", "word", "expected"
    );
    for r in &d.spectra {
        let bars: String = r
            .distribution
            .iter()
            .map(|p| {
                const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
                BLOCKS[((p * 8.0) as usize).min(7)]
            })
            .collect();
        println!(
            "{:<24} {:>6} {:<13} {:>+8.2}  {}",
            r.spectrum,
            format_level(r.level),
            r.word,
            r.expected,
            bars
        );
    }
    Ok(ExitCode::SUCCESS)
}
