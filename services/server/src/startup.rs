//! Start-up and shutdown, as phases: [`Running::build`] opens the store, recovers the active
//! orders, joins the cluster (broker mode), starts the actors and binds HTTP, and returns once
//! the server is listening (or why it cannot); [`Running::until`] serves until told to stop, then
//! closes sockets with 1001, flushes history and returns.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use tokio::sync::watch;
use trackline_core::auth::TokenKeys;
use trackline_core::history::{HistoryStore, StoreOptions, WriterGuard};
use trackline_core::links::LinkStore;
use trackline_core::order::OrderRecord;
use trackline_core::plans::PlanStore;
use trackline_core::spatial::SpatialIndex;
use trackline_core::{CourierId, OrderId};

use crate::cluster::client::Cluster;
use crate::cluster::protocol::headers;
use crate::cluster::remote_watch::RemoteWatches;
use crate::cluster::serve::{self, Serving};
use crate::config::Config;
use crate::http;
use crate::live::LiveIndex;
use crate::metrics;
use crate::orders::order_actor::OrderSettings;
use crate::orders::registry::{Kept, Registry};
use crate::orders::resume_buffer::ResumeLimits;
use crate::state::AppState;
use crate::topology::{BrokerNode, Topology};
use crate::webhooks;

/// Runs the server in an actix System of its own on this thread until `shutdown` resolves, then
/// shuts down gracefully and returns once the history store is flushed and closed.
///
/// # Errors
/// When the data dir cannot be opened or recovered, or the HTTP server cannot listen.
pub fn run_to_end(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    in_system(async move {
        Ok(Running::build(config, listener)
            .await?
            .until(shutdown)
            .await)
    })
}

/// Runs `server` (which builds and runs the server) in an actix System of its own on this
/// thread, and returns once the history store's writer has drained.
pub(crate) fn in_system(
    server: impl Future<Output = anyhow::Result<WriterGuard>>,
) -> anyhow::Result<()> {
    let system = actix_rt::System::new();
    let outcome = system.block_on(server);
    // Dropping the system drops the actors that still hold store handles; then the writer drains.
    drop(system);
    outcome.map(WriterGuard::join)
}

/// A server that is built and listening: every actor started, the HTTP server bound. It serves
/// once [`Running::until`] runs it.
pub struct Running {
    state: Arc<AppState>,
    server: actix_web::dev::Server,
    /// Tells the sessions to close with 1001.
    shutdown: watch::Sender<bool>,
    arbiters: Vec<Arbiter>,
    writer: WriterGuard,
    webhooks: webhooks::Dispatcher,
}

impl Running {
    /// Builds the server in phases: opens the store and recovers the active orders, joins the
    /// cluster (broker mode), starts the actors, binds HTTP on `listener`. Must run inside an
    /// actix System.
    ///
    /// # Errors
    /// When the data dir cannot be opened or recovered, the broker cannot be joined, or the HTTP
    /// server cannot listen.
    pub async fn build(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        let (store, writer) = open_store(&config)?;
        let recovered = recover(&store, config.live_ttl_s)?;
        let joined = join_cluster(&config, &store).await?;
        metrics::install();
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let arbiters: Vec<Arbiter> = (0..workers.max(1)).map(|_| Arbiter::new()).collect();
        let recovered_orders = recovered.orders.len();
        let (state, shutdown) = start_actors(config, store, recovered, joined, &arbiters);
        let listen = listener.local_addr()?;
        serve_other_nodes(&state, listen);
        if let Some(retention) = state.config.retention() {
            actix_rt::spawn(purge_periodically(
                state.store.clone(),
                retention,
                Duration::from_secs(state.config.purge_every_s.max(1)),
            ));
        }
        let webhooks = webhooks::start(
            state.store.webhooks().clone(),
            webhooks::DispatchSettings::from_config(&state.config),
        )?;
        let server = bind_http(&state, listener, workers)?;
        tracing::info!(%listen, recovered_orders, startup_ms = started.elapsed().as_millis() as u64, "trackline ready");
        Ok(Self {
            state,
            server,
            shutdown,
            arbiters,
            writer,
            webhooks,
        })
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: sockets closed with 1001,
    /// the HTTP server stopped within the grace period, the actors stopped, history flushed. The
    /// returned guard's `join` waits for the last flush once the System is dropped.
    pub async fn until(self, shutdown: impl Future<Output = ()>) -> WriterGuard {
        let Self {
            state,
            server,
            shutdown: sessions_close,
            arbiters,
            writer,
            webhooks,
        } = self;
        let server_handle = server.handle();
        let serving = actix_rt::spawn(server);
        shutdown.await;

        tracing::info!("shutting down: closing sockets with 1001, flushing history");
        let _ = sessions_close.send(true);
        // Give sessions a moment to write their close frames before the server stops accepting.
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        let stopping = server_handle.stop(true);
        if tokio::time::timeout(state.config.shutdown_grace(), stopping)
            .await
            .is_err()
        {
            tracing::warn!("grace period over; dropping the remaining connections");
        }
        let _ = serving.await;
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for arbiter in arbiters {
            let _ = arbiter.join();
        }
        // Deliveries cut short are pending still: the next start sends them again.
        webhooks.stop();
        let store = state.store.clone();
        drop(state);
        if let Err(error) = store.flush() {
            tracing::error!(%error, "final flush failed");
        }
        writer
    }
}

/// Starts the long-lived actors (registry, live index, and in broker mode the mirrors of foreign
/// orders) and gathers what handlers and sessions share; the sender tells sessions to close.
fn start_actors(
    config: Config,
    store: HistoryStore,
    recovered: Recovered,
    joined: Option<Joined>,
    arbiters: &[Arbiter],
) -> (Arc<AppState>, watch::Sender<bool>) {
    let order_settings = Arc::new(OrderSettings {
        arrival_radius_m: config.arrival_radius_m,
        resume: ResumeLimits::from_config(&config),
        slow_watcher_timeout: Duration::from_secs(config.slow_watcher_timeout_s),
        webhooks: config.webhook_tracking(),
        silence_told_by_home: joined.is_some(),
        ..Default::default()
    });
    // The one place that tells one node from a cluster.
    let (topology, links, sharing) = match joined {
        None => (Topology::Alone, Vec::new(), None),
        Some((cluster, links, link_store)) => {
            let remote_watches =
                RemoteWatches::new(cluster.clone(), order_settings.clone()).start();
            let broker = BrokerNode {
                cluster: cluster.clone(),
                remote_watches,
                links: link_store,
            };
            (Topology::Broker(Arc::new(broker)), links, Some(cluster))
        }
    };
    let registry = Registry::new(
        recovered.orders,
        arbiters.iter().map(Arbiter::handle).collect(),
        store.clone(),
        order_settings.clone(),
        config.max_connections_per_courier,
        topology.clone(),
        Kept {
            links,
            plans: recovered.plans,
            plan_store: recovered.plan_store,
        },
    )
    .start();
    let live_index = LiveIndex::new(recovered.live, config.live_ttl_s, sharing);
    let live_positions = live_index.positions();
    let live_index = live_index.start();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let keys = token_keys(&config);
    let state = Arc::new(AppState {
        config,
        keys,
        store,
        registry,
        live_index,
        live_positions,
        order_settings,
        shutdown: shutdown_rx,
        connections: Arc::default(),
        topology,
    });
    (state, shutdown_tx)
}

/// Broker mode: answers what other nodes ask of this one, in the background.
fn serve_other_nodes(state: &AppState, listen: SocketAddr) {
    let Topology::Broker(broker) = &state.topology else {
        return;
    };
    let serving = Serving::new(
        broker.cluster.clone(),
        state.registry.clone(),
        broker.remote_watches.clone(),
        state.live_index.clone(),
        state.store.clone(),
        broker.links.clone(),
        format!("http://{}", loopback(listen)),
    );
    let serving = serve::serve(Arc::new(serving));
    actix_rt::spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!("serving other nodes failed: {error:#}");
        }
    });
}

/// Binds the HTTP server (REST, streams, pages, metrics) on `listener`.
fn bind_http(
    state: &Arc<AppState>,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<actix_web::dev::Server> {
    let config = &state.config;
    let handshake_timeout_s = config.handshake_timeout_s.max(1);
    let client_timeout = config.client_timeout();
    let grace = config.shutdown_grace();
    let write_buffer_bytes = config.write_buffer();
    let node_header = state.topology.node().map(str::to_string);
    let data = web::Data::new(state.clone());
    let cors_origins = config.cors_origins.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(http::json_config())
            .app_data(http::query_config())
            .configure(|cfg| http::routes(cfg, &cors_origins))
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
    .h1_write_buffer_size(write_buffer_bytes)
    .shutdown_timeout(grace.as_secs())
    .listen(listener)?
    .run();
    Ok(server)
}

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

/// What the store holds of the active orders at start.
struct Recovered {
    orders: Vec<OrderRecord>,
    /// The couriers of active orders with a recent position.
    live: SpatialIndex,
    /// The plans ops gave couriers, and where they are kept.
    plans: Vec<(CourierId, Vec<trackline_core::stops::PlanStop>)>,
    plan_store: PlanStore,
}

/// Opens the history store at the data dir (its writer's guard too).
fn open_store(config: &Config) -> anyhow::Result<(HistoryStore, WriterGuard)> {
    let store_options = StoreOptions {
        compact_every: Duration::from_secs_f64(config.compact_every_s.clamp(0.01, 86_400.0)),
        commit_window: Duration::from_secs_f64(config.commit_window_ms.clamp(0.0, 1000.0) / 1e3),
        cache_bytes: config.store_cache_mib * 1024 * 1024,
        ..Default::default()
    };
    HistoryStore::open_with(&config.data_dir, store_options)
        .with_context(|| format!("opening history at {}", config.data_dir.display()))
}

/// Reads every order and seeds the live index with the couriers of active orders.
fn recover(store: &HistoryStore, live_ttl_s: i64) -> anyhow::Result<Recovered> {
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
    let live = SpatialIndex::bulk_load(live);
    let plan_store = PlanStore::open(store).context("opening the courier plans")?;
    let plans = plan_store.all().context("reading the courier plans")?;
    Ok(Recovered {
        orders: records,
        live,
        plans,
        plan_store,
    })
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

/// Broker mode: the cluster, the courier links read at start, and the store that keeps them.
type Joined = (Arc<Cluster>, Vec<(CourierId, OrderId)>, LinkStore);

/// Broker mode: connects to the broker and reads the courier links kept here.
async fn join_cluster(config: &Config, store: &HistoryStore) -> anyhow::Result<Option<Joined>> {
    let Some(cluster) = Cluster::connect(config).await? else {
        return Ok(None);
    };
    let links = LinkStore::open(store)?;
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
