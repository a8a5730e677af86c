//! The `pathos` command line: a thin layer over the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.global.verbose);
    if let Some(t) = args.global.threads {
        // candle's CPU kernels size their thread pools from this variable, read once at
        // first use, so it is set before anything runs.
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            ExitCode::from(cli::error_exit_code(&e))
        }
    }
}
