//! The `trackline` binary: parses flags, sets up logging, and runs the server until a signal.

use std::net::TcpListener;
use std::process::ExitCode;

use clap::Parser;
use trackline_server::Config;

/// jemalloc rather than glibc's malloc: every fix allocates and frees across threads (actor
/// messages, and sled's node copies in the history writer), where glibc's malloc and free took
/// about 15 % of the server's CPU under load; jemalloc leaves untouched pages of a buffer
/// untouched, so an idle connection costs no more than before (mimalloc's free lists did not).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(format: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A log line that cannot be written (its disk is full) is lost quietly: by default the
    // subscriber reports the failure on stderr, and printing to a failing stderr panics, which
    // took the whole server down with its log.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT (Kubernetes sends SIGTERM, a terminal SIGINT).
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(&config.log_format);
    let listener = match TcpListener::bind(config.listen) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(listen = %config.listen, %error, "cannot listen; is another trackline running? pick another --listen");
            return ExitCode::from(2);
        }
    };
    match trackline_server::run_to_end(config, listener, termination()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(2)
        }
    }
}
