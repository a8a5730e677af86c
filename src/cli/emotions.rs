//! `pathos emotions`: the BEAM table.

use std::process::ExitCode;

use clap::Args;
use pathos::emotion::beam::{Beam, format_level};

#[derive(Debug, Args)]
pub struct EmotionsArgs {
    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EmotionsArgs) -> anyhow::Result<ExitCode> {
    let beam = Beam::builtin();
    if args.json {
        println!("{}", serde_json::to_string_pretty(beam)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = vec!["spectrum".to_string()];
    header.extend(beam.levels.iter().map(|&l| format_level(l)));
    let mut rows = vec![header];
    for s in &beam.spectra {
        let mut row = vec![s.name.clone()];
        row.extend(s.words.iter().cloned());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if i == 0 {
            println!(
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    println!(
        "\nA target is a word (serenity), spectrum:level (sadness-joy:+0.6), or either with --antonym."
    );
    Ok(ExitCode::SUCCESS)
}
