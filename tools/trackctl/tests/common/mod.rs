//! What every trackctl test binary shares: the trackctl binary with a clean environment, its
//! output, and the shared test data (looked up in one place, [`testdata`]).

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::process::{Command, Output};

use trackctl::trip::Trip;

/// The trackctl binary with no TRACKLINE_* variables from the environment.
pub fn trackctl(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trackctl"));
    command.args(args);
    for var in [
        "TRACKLINE_SECRET",
        "TRACKLINE_TOKEN",
        "TRACKLINE_SERVER",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

/// A file of the recorded trips every crate's tests read (`tests/data`).
pub fn testdata(name: &str) -> PathBuf {
    trackline_testdata::path(name)
}

pub fn testdata_trip(name: &str) -> Trip {
    Trip::from_path(&testdata(name)).unwrap()
}

/// Runs the command, returning its output.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("running trackctl")
}

/// Runs the command, expecting exit code 0, and returns its stdout.
pub fn stdout_of(command: &mut Command) -> String {
    let output = run(command);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}
