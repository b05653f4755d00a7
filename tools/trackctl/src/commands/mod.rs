//! What each subcommand does with its parsed arguments.

mod eta_eval;
mod export;
mod orders;
mod purge;
mod replay;
mod simulate;
mod stats;
mod token;
mod webhooks;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command};

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command fails with; [`crate::exit::report`] turns it into exit code 2 (1 for
/// [`crate::exit::NothingFound`]).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Token(args) => token::run(&cli.global, &args),
        Command::Simulate(args) => simulate::run(&cli.global, &args),
        Command::Orders(args) => orders::run(&cli.global, &args),
        Command::Replay(args) => replay::run(&cli.global, &args),
        Command::Export(args) => export::run(&cli.global, &args),
        Command::Stats(args) => stats::run(&cli.global, &args),
        Command::Purge(args) => purge::run(&cli.global, &args),
        Command::EtaEval(args) => eta_eval::run(&args),
        Command::Webhooks(args) => webhooks::run(&cli.global, &args),
    }
}

/// The async runtime the network commands run on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `value` as pretty JSON and a newline on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(stdout))
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// "between A and B", "from A", "up to B" or "" for a range, in UTC.
fn describe_range(from_ms: Option<i64>, to_ms: Option<i64>) -> String {
    use crate::when::format_utc;
    match (from_ms, to_ms) {
        (Some(a), Some(b)) => format!(" between {} and {}", format_utc(a), format_utc(b)),
        (Some(a), None) => format!(" from {}", format_utc(a)),
        (None, Some(b)) => format!(" up to {}", format_utc(b)),
        (None, None) => String::new(),
    }
}
