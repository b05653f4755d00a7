//! The server on threads of its own, for tests and tools: [`spawn`] returns once it listens, and
//! its [`ServerHandle`] stops it gracefully.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;

use crate::config::Config;
use crate::startup::{in_system, Running};

/// A running server, started by [`spawn`].
pub struct ServerHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    /// Shuts down gracefully (sockets closed with 1001, history flushed and closed) and returns
    /// when the data dir can be opened again.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Err(error)) => tracing::error!("server ended with an error: {error:#}"),
                Err(_) => tracing::error!("server thread panicked"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the server on threads of its own and returns once it is listening.
///
/// # Errors
/// When the address cannot be bound or the data dir cannot be opened.
pub fn spawn(config: Config) -> anyhow::Result<ServerHandle> {
    let listener =
        TcpListener::bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("trackline".into())
        .spawn(move || {
            in_system(async move {
                let running = match Running::build(config, listener).await {
                    Ok(running) => running,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("{error:#}")));
                        return Err(error);
                    }
                };
                let _ = ready_tx.send(Ok(()));
                Ok(running
                    .until(async move {
                        let _ = stop_rx.await;
                    })
                    .await)
            })
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ServerHandle {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }),
        Ok(Err(message)) => {
            let _ = thread.join();
            Err(anyhow::anyhow!(message))
        }
        Err(_) => match thread.join() {
            Ok(Err(error)) => Err(error),
            _ => Err(anyhow::anyhow!("server thread ended before it was ready")),
        },
    }
}
