//! Exit codes (0 ok, 1 nothing found, 2 error) and the quiet exit on a closed stdout.

use std::io;
use std::process::ExitCode;

/// The command did what was asked.
pub const OK: u8 = 0;
/// The command ran, but what was asked for does not exist (an unknown order, an empty range).
pub const NOTHING_FOUND: u8 = 1;
/// Bad usage, an unreachable server, a refused token: something must change before a retry.
pub const ERROR: u8 = 2;

/// What was asked for does not exist: an unknown order, a range without fixes. Returned as an
/// error so it can come from deep inside a command; [`report`] prints it and exits with 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NothingFound(pub String);

/// A [`NothingFound`] error, for `return Err(nothing_found(...))` and `ok_or_else`.
pub fn nothing_found(message: impl Into<String>) -> anyhow::Error {
    NothingFound(message.into()).into()
}

/// The exit code for a command's result, printing the error chain on stderr.
///
/// A broken pipe (`trackctl ... | head -1`) is not an error: the reader has what it wanted.
/// [`NothingFound`] is exit code 1, with its message.
pub fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::from(OK),
        Err(err) if err.downcast_ref::<NothingFound>().is_some() => {
            eprintln!("trackctl: {err:#}");
            ExitCode::from(NOTHING_FOUND)
        }
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

    #[test]
    fn nothing_found_is_exit_code_one() {
        assert_eq!(
            report(Err(nothing_found("order o-9 does not exist"))),
            ExitCode::from(NOTHING_FOUND)
        );
        assert_eq!(report(Err(anyhow::anyhow!("boom"))), ExitCode::from(ERROR));
    }
}
