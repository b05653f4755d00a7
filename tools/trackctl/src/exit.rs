//! Exit codes (0 ok, 1 nothing found, 2 error) and the quiet exit on a closed stdout.

use std::io;
use std::process::ExitCode;

/// The command did what was asked.
pub const OK: u8 = 0;
/// The command ran, but what was asked for does not exist (an unknown order, an empty range).
pub const NOTHING_FOUND: u8 = 1;
/// Bad usage, an unreachable server, a refused token: something must change before a retry.
pub const ERROR: u8 = 2;

/// The exit code for a command's result, printing the error chain on stderr.
///
/// A broken pipe (`trackctl ... | head -1`) is not an error: the reader has what it wanted.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::from(OK),
        Err(err) => {
            eprintln!("trackctl: error: {err:#}");
            ExitCode::from(ERROR)
        }
    }
}

/// True when any cause in the chain is an EPIPE from writing to a closed reader.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn broken_pipe_is_found_under_context() {
        let err = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing the token")
            .unwrap_err();
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
