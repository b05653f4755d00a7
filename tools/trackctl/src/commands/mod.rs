//! What each subcommand does with its parsed arguments.

mod simulate;
mod token;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever the command fails with; [`crate::exit::report`] turns it into exit code 2.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Token(args) => token::run(&cli.global, &args),
        Command::Simulate(args) => simulate::run(&cli.global, &args),
    }
}
