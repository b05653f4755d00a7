//! `trackctl`: parses the command line and runs the command; the work lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = trackctl::cli::Cli::parse();
    // diagnostics only (RUST_LOG=info shows each reconnect); what people need is printed directly
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    trackctl::exit::report(trackctl::commands::run(cli))
}
