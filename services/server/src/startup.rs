//! Start-up and shutdown: open the store, recover, join the cluster, start the actors, bind HTTP,
//! run until told to stop, then close sockets, flush history and return.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::watch;
use trackline_core::auth::TokenKeys;
use trackline_core::history::{HistoryStore, StoreOptions, WriterGuard};
use trackline_core::order::OrderRecord;
use trackline_core::spatial::SpatialIndex;

use crate::cluster::client::Cluster;
use crate::cluster::protocol::headers;
use crate::cluster::remote_watch::RemoteWatches;
use crate::cluster::serve::{self, Serving};
use crate::config::Config;
use crate::http;
use crate::live::LiveIndex;
use crate::metrics;
use crate::orders::order_actor::OrderSettings;
use crate::orders::registry::{ClusterPart, Registry};
use crate::orders::resume_buffer::ResumeLimits;
use crate::state::AppState;

/// The token secret from the config, or a random one with a loud warning.
fn token_keys(config: &Config) -> TokenKeys {
    match &config.secret {
        Some(secret) if !secret.is_empty() => TokenKeys::new(secret.as_bytes()),
        _ => {
            tracing::warn!(
                "no --secret / TRACKLINE_SECRET given: using a random development secret; tokens will not survive a restart \
                 and no other process can mint them"
            );
            TokenKeys::new(&rand::random::<[u8; 32]>())
        }
    }
}

/// Reads every order and seeds the live index with the couriers of active orders.
fn recover(
    store: &HistoryStore,
    live_ttl_s: i64,
) -> anyhow::Result<(Vec<OrderRecord>, SpatialIndex)> {
    let records: Vec<OrderRecord> = store
        .all_orders()
        .filter_map(|r| match r {
            Ok(record) if !record.status.is_final() => Some(Ok(record)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()
        .context("reading orders from the history store")?;
    let cutoff = trackline_core::now_ms() - live_ttl_s * 1000;
    let live = records.iter().filter_map(|r| {
        let p = r.position.filter(|p| p.time_ms >= cutoff)?;
        Some((r.courier_id.clone()?, p.lat_lon(), p.time_ms))
    });
    let index = SpatialIndex::bulk_load(live);
    Ok((records, index))
}

/// Has the kernel abort a connection whose sent data stays unacknowledged for `timeout`.
///
/// A WebSocket session runs only while its socket takes data: a peer that stops reading freezes
/// its session, and with it the session's own heartbeat and its 4008 close. TCP_USER_TIMEOUT
/// (which also bounds zero-window probing) ends such a connection from below, so a stuck
/// client gives its memory and its connection slot back.
fn abort_when_unacknowledged(connection: &dyn std::any::Any, timeout: Duration) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(error) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout)) {
            tracing::warn!(%error, "cannot set TCP_USER_TIMEOUT; stuck clients stay until they go");
        }
    }
}

/// One line per request. The path is logged without its query: WebSocket upgrades and the live
/// page carry their token there, and tokens must not end up in logs.
fn access_log() -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new(r#"%a "%{method}xi %U" %s %b %T"#)
        .custom_request_replace("method", |req| req.method().to_string())
        .log_target("trackline::http")
}

/// Deletes history past the retention period every `every`, off the async threads.
async fn purge_periodically(store: HistoryStore, retention: Duration, every: Duration) {
    let mut ticks = actix_rt::time::interval(every);
    loop {
        ticks.tick().await;
        let cutoff = trackline_core::now_ms() - retention.as_millis() as i64;
        let store = store.clone();
        match actix_web::rt::task::spawn_blocking(move || store.purge_before(cutoff)).await {
            Ok(Ok(stats)) => {
                ::metrics::counter!("trackline_purged_fixes_total").increment(stats.fixes as u64);
                if stats.fixes > 0 || stats.orders > 0 {
                    tracing::info!(
                        fixes = stats.fixes,
                        orders = stats.orders,
                        "retention purge"
                    );
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "retention purge failed"),
            Err(error) => tracing::error!(%error, "retention purge panicked"),
        }
    }
}

/// Broker mode: connects to the broker and reads the courier links kept here.
async fn join_cluster(
    config: &Config,
    store: &HistoryStore,
) -> anyhow::Result<Option<ClusterPart>> {
    let Some(cluster) = Cluster::connect(config).await? else {
        return Ok(None);
    };
    let links = trackline_core::links::LinkStore::open(store)?;
    let linked = links.all()?;
    Ok(Some((cluster, linked, links)))
}

/// Broker mode: every response names the node that produced it (forwarded answers keep the
/// owner's name).
fn node_header_of(node: Option<&str>) -> actix_web::middleware::DefaultHeaders {
    let headers = actix_web::middleware::DefaultHeaders::new();
    match node {
        Some(node) => headers.add((headers::NODE, node.to_string())),
        None => headers,
    }
}

/// Where this node reaches its own listener (an unspecified address means loopback).
fn loopback(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, listen.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

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
            let stopped = async move {
                let _ = stop_rx.await;
            };
            run_to_end(config, listener, stopped, Some(ready_tx))
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

/// Runs the server in an actix System of its own on this thread until `shutdown` resolves, then
/// shuts down gracefully and returns once the history store is flushed and closed.
///
/// # Errors
/// When the data dir cannot be opened or recovered, or the HTTP server fails.
pub fn run_to_end(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
) -> anyhow::Result<()> {
    let system = actix_rt::System::new();
    let outcome = system.block_on(run(config, listener, shutdown, ready));
    // Dropping the system drops the actors that still hold store handles; then the writer drains.
    drop(system);
    outcome.map(WriterGuard::join)
}

/// Runs the server on `listener` until `shutdown` resolves, then shuts down gracefully.
/// Must run inside an actix System; the returned guard's `join` waits for the last flush once the
/// System is dropped.
///
/// # Errors
/// When the data dir cannot be opened or recovered, or the HTTP server fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    ready: Option<std::sync::mpsc::Sender<Result<(), String>>>,
) -> anyhow::Result<WriterGuard> {
    let started = std::time::Instant::now();
    let store_options = StoreOptions {
        compact_every: Duration::from_secs_f64(config.compact_every_s.clamp(0.01, 86_400.0)),
        commit_window: Duration::from_secs_f64(config.commit_window_ms.clamp(0.0, 1000.0) / 1e3),
        ..Default::default()
    };
    let opened = HistoryStore::open_with(&config.data_dir, store_options)
        .with_context(|| format!("opening history at {}", config.data_dir.display()))
        .and_then(|(store, writer)| Ok((recover(&store, config.live_ttl_s)?, store, writer)));
    let opened = match opened {
        Ok(opened) => join_cluster(&config, &opened.1)
            .await
            .map(|cluster| (opened, cluster)),
        Err(error) => Err(error),
    };
    let (((records, index), store, writer), cluster) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            if let Some(ready) = ready {
                let _ = ready.send(Err(format!("{error:#}")));
            }
            return Err(error);
        }
    };
    metrics::install();
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let arbiters: Vec<Arbiter> = (0..workers.max(1)).map(|_| Arbiter::new()).collect();
    let order_settings = Arc::new(OrderSettings {
        arrival_radius_m: config.arrival_radius_m,
        resume: ResumeLimits::from_config(&config),
        slow_watcher_timeout: Duration::from_secs(config.slow_watcher_timeout_s),
        ..Default::default()
    });
    let recovered = records.len();
    let registry = Registry::new(
        records,
        arbiters.iter().map(Arbiter::handle).collect(),
        store.clone(),
        order_settings.clone(),
        config.max_connections_per_courier,
        cluster.clone(),
    )
    .start();
    let cluster = cluster.map(|(cluster, _, links)| (cluster, links));
    let live_index = LiveIndex::new(
        index,
        config.live_ttl_s,
        cluster.as_ref().map(|(cluster, _)| cluster.clone()),
    );
    let live_positions = live_index.positions();
    let live_index = live_index.start();
    let remote_watches = cluster
        .as_ref()
        .map(|(cluster, _)| RemoteWatches::new(cluster.clone(), order_settings.clone()).start());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let keys = token_keys(&config);
    let grace = config.shutdown_grace();
    let handshake_timeout_s = config.handshake_timeout_s.max(1);
    let client_timeout = config.client_timeout();
    let listen = listener.local_addr()?;
    let state = Arc::new(AppState {
        config,
        keys,
        store: store.clone(),
        registry,
        live_index,
        live_positions,
        order_settings,
        shutdown: shutdown_rx,
        connections: Arc::default(),
        cluster: cluster.as_ref().map(|(cluster, _)| cluster.clone()),
        remote_watches: remote_watches.clone(),
    });
    if let (Some((cluster, links)), Some(remote)) = (cluster, remote_watches) {
        let serving = Serving::new(
            cluster,
            state.registry.clone(),
            remote,
            state.live_index.clone(),
            store.clone(),
            links,
            format!("http://{}", loopback(listen)),
        );
        let serving = serve::serve(Arc::new(serving));
        actix_rt::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!("serving other nodes failed: {error:#}");
            }
        });
    }
    let node_header = state
        .cluster
        .as_ref()
        .map(|cluster| cluster.node().to_string());
    if let Some(retention) = state.config.retention() {
        actix_rt::spawn(purge_periodically(
            store.clone(),
            retention,
            Duration::from_secs(state.config.purge_every_s.max(1)),
        ));
    }
    let data = web::Data::new(state.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(http::json_config())
            .app_data(http::query_config())
            .configure(http::routes)
            .default_service(web::to(http::not_found))
            .wrap(node_header_of(node_header.as_deref()))
            .wrap(access_log())
    })
    .workers(workers)
    .on_connect(move |connection, _| abort_when_unacknowledged(connection, client_timeout))
    .disable_signals()
    .client_request_timeout(Duration::from_secs(handshake_timeout_s))
    // actix times only a connection's first request head; on a kept-alive connection the next
    // head could trickle in a byte at a time for ever. Streams are one long request each, and
    // the REST calls are few, so a connection serves one request.
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .shutdown_timeout(grace.as_secs())
    .listen(listener)?
    .run();
    let server_handle = server.handle();
    tracing::info!(%listen, recovered_orders = recovered, startup_ms = started.elapsed().as_millis() as u64, "trackline ready");
    if let Some(ready) = ready {
        let _ = ready.send(Ok(()));
    }
    let serving = actix_rt::spawn(server);
    shutdown.await;

    tracing::info!("shutting down: closing sockets with 1001, flushing history");
    let _ = shutdown_tx.send(true);
    // Give sessions a moment to write their close frames before the server stops accepting.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let stopping = server_handle.stop(true);
    if tokio::time::timeout(grace, stopping).await.is_err() {
        tracing::warn!("grace period over; dropping the remaining connections");
    }
    let _ = serving.await;
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
    drop(state);
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final flush failed");
    }
    Ok(writer)
}
