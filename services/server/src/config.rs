//! Server configuration: every flag also reads a `TRACKLINE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// trackline: live delivery tracking. Couriers stream GPS fixes, customers watch them arrive.
#[derive(Parser, Debug, Clone)]
#[command(name = "trackline", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TRACKLINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded history store (sled); created if missing.
    #[arg(long, env = "TRACKLINE_DATA_DIR", default_value = "./trackline-data")]
    pub data_dir: PathBuf,

    /// Seconds of history kept in the store's write-ahead log before they are folded into sled
    /// as compact blocks (each fix is durable in the log at once; this bounds the log's size and
    /// how often sled is written).
    #[arg(long, env = "TRACKLINE_COMPACT_EVERY_S", default_value_t = 15.0)]
    pub compact_every_s: f64,

    /// Shortest time between two syncs of the history writer, in milliseconds: writes that come
    /// within it are synced together (less CPU and disk work per fix, for up to this much
    /// latency under load); a write that finds the writer idle is synced at once.
    #[arg(long, env = "TRACKLINE_COMMIT_WINDOW_MS", default_value_t = 3.0)]
    pub commit_window_ms: f64,

    /// MiB of history pages the store keeps in memory (sled's page cache): reads of recent
    /// history come from memory up to this much, the rest from the files (which the kernel
    /// caches), and the process's RSS grows towards it as history is written. 16 MiB fills in
    /// minutes under a fleet's load and RSS is flat from then on; 256 MiB took some 75 minutes
    /// at 2,000 fixes/s, for history reads 7 % faster (tools/bench/NOTES.md, "Soak").
    #[arg(long, env = "TRACKLINE_STORE_CACHE_MIB", default_value_t = trackline_core::history::DEFAULT_CACHE_MIB, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub store_cache_mib: u64,

    /// Secret that signs and verifies tokens. Without one a random development secret is used.
    #[arg(long, env = "TRACKLINE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "TRACKLINE_WORKERS")]
    pub workers: Option<usize>,

    /// Oldest accepted fix, in seconds before the server's clock (phones buffer while offline).
    #[arg(long, env = "TRACKLINE_MAX_FIX_AGE_S", default_value_t = 24 * 3600)]
    pub max_fix_age_s: i64,

    /// How far a fix's device time may be ahead of the server's clock, in seconds.
    #[arg(long, env = "TRACKLINE_MAX_FIX_FUTURE_S", default_value_t = 60)]
    pub max_fix_future_s: i64,

    /// Radius around the destination within which an order becomes `arriving`, in metres.
    #[arg(long, env = "TRACKLINE_ARRIVAL_RADIUS_M", default_value_t = 100.0)]
    pub arrival_radius_m: f64,

    /// Updates kept per order so that a reconnecting watcher can resume without a gap: at most
    /// this many, none older than --resume-max-age-s and within --resume-max-bytes. A resume from
    /// further back gets a snapshot with `recovered: false`. 0 keeps none.
    #[arg(long, env = "TRACKLINE_RESUME_BUFFER", default_value_t = 64)]
    pub resume_buffer: usize,

    /// Oldest update a resuming watcher is still replayed, in seconds since it was published.
    #[arg(long, env = "TRACKLINE_RESUME_MAX_AGE_S", default_value_t = 60)]
    pub resume_max_age_s: u64,

    /// Memory the resume buffer of one order may hold, in bytes (an update takes 72).
    #[arg(long, env = "TRACKLINE_RESUME_MAX_BYTES", default_value_t = 8192)]
    pub resume_max_bytes: usize,

    /// Frames that may wait for one watcher before it counts as slow and gets only the latest
    /// state (conflation). Frames are shared between watchers, so a queued frame costs a pointer;
    /// the queue must hold a whole burst (a courier's offline buffer flushed at once).
    #[arg(long, env = "TRACKLINE_WATCHER_QUEUE", default_value_t = 256)]
    pub watcher_queue: usize,

    /// Bytes a connection's HTTP writer holds before it stops taking more from the response, and
    /// the most a watch session writes at once (a watch stream's session then stops running, its
    /// frames wait in its queue as shared pointers and its order conflates it). The writer's
    /// buffer is 8 KiB of which only the pages written count: with 1 KiB a stuck watcher's
    /// buffer stays within the page its handshake touched (2 KiB took a second page, 32 KiB,
    /// actix's default, some 90 KiB per stuck watcher). A watch frame is a few hundred bytes, so a
    /// small buffer costs a healthy stream nothing.
    #[arg(long, env = "TRACKLINE_WRITE_BUFFER_BYTES", default_value_t = 1024)]
    pub write_buffer_bytes: usize,

    /// A watcher that stays slow this long is closed with 4008, in seconds.
    #[arg(long, env = "TRACKLINE_SLOW_WATCHER_TIMEOUT_S", default_value_t = 10)]
    pub slow_watcher_timeout_s: u64,

    /// Largest WebSocket frame accepted, in bytes (larger: close 1009).
    #[arg(long, env = "TRACKLINE_MAX_FRAME_BYTES", default_value_t = 256 * 1024)]
    pub max_frame_bytes: usize,

    /// Most fixes accepted in one courier frame (more: close 1009).
    #[arg(long, env = "TRACKLINE_MAX_FIXES_PER_FRAME", default_value_t = 2000)]
    pub max_fixes_per_frame: usize,

    /// Interval between WebSocket pings, in seconds.
    #[arg(long, env = "TRACKLINE_HEARTBEAT_S", default_value_t = 10)]
    pub heartbeat_s: u64,

    /// A WebSocket silent for this long (no frame, no pong) is dropped, in seconds.
    #[arg(long, env = "TRACKLINE_CLIENT_TIMEOUT_S", default_value_t = 30)]
    pub client_timeout_s: u64,

    /// Seconds a SIGTERM may take: sockets are closed with 1001 and history flushed within it.
    #[arg(long, env = "TRACKLINE_SHUTDOWN_GRACE_S", default_value_t = 20)]
    pub shutdown_grace_s: u64,

    /// A courier without a fix for this long leaves the live index, in seconds.
    #[arg(long, env = "TRACKLINE_LIVE_TTL_S", default_value_t = 600)]
    pub live_ttl_s: i64,

    /// Lifetime of the watch token returned when an order is created, in seconds.
    #[arg(long, env = "TRACKLINE_WATCH_TOKEN_TTL_S", default_value_t = 24 * 3600)]
    pub watch_token_ttl_s: i64,

    /// Base of the `watch_url` returned when an order is created (e.g. https://track.example.com);
    /// without it the URL is relative to this server.
    #[arg(long, env = "TRACKLINE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Fixes older than this many days are purged in the background, and so are orders that
    /// ended before then (location history is personal data). 0 keeps everything.
    #[arg(long, env = "TRACKLINE_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u32,

    /// How often the retention purge runs, in seconds.
    #[arg(long, env = "TRACKLINE_PURGE_EVERY_S", default_value_t = 3600)]
    pub purge_every_s: u64,

    /// Frames per second a courier connection may send on average (bursts of twice that pass);
    /// above it the connection is closed with 1008.
    #[arg(long, env = "TRACKLINE_MAX_FRAMES_PER_S", default_value_t = 20.0)]
    pub max_frames_per_s: f64,

    /// WebSocket connections (courier and watch) the server holds at once; more get 503.
    #[arg(long, env = "TRACKLINE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Courier-stream connections one courier may hold; a newer one closes the oldest with 1008.
    #[arg(
        long,
        env = "TRACKLINE_MAX_CONNECTIONS_PER_COURIER",
        default_value_t = 1
    )]
    pub max_connections_per_courier: usize,

    /// Time a client has to send its request head (the WebSocket upgrade included), in seconds.
    #[arg(long, env = "TRACKLINE_HANDSHAKE_TIMEOUT_S", default_value_t = 5)]
    pub handshake_timeout_s: u64,

    /// Map tile URL template for the live pages (`/track/{id}`, `/ops/map`), e.g.
    /// `https://tile.example.com/{z}/{x}/{y}.png` (Leaflet's `{s}`, `{z}`, `{x}`, `{y}`, `{r}`).
    /// Without one the maps draw on a plain background with a scale, needing no network.
    #[arg(long, env = "TRACKLINE_TILE_URL")]
    pub tile_url: Option<String>,

    /// Broker mode: the NATS server that carries updates and forwarded requests between
    /// trackline nodes, e.g. `nats://nats:4222`. Without it this process is the whole service.
    #[arg(long, env = "TRACKLINE_BROKER", requires_all = ["node_id", "cluster_nodes"])]
    pub broker: Option<String>,

    /// Broker mode: this node's name, one of `--cluster-nodes` (on Kubernetes, the pod name).
    #[arg(long, env = "TRACKLINE_NODE_ID")]
    pub node_id: Option<String>,

    /// Broker mode: the names of every node, comma-separated, the same list on every node.
    /// Orders and couriers are placed by hashing over this list.
    #[arg(long, env = "TRACKLINE_CLUSTER_NODES", value_delimiter = ',')]
    pub cluster_nodes: Vec<String>,

    /// Broker mode: prefix of every subject, so that clusters can share one NATS server.
    #[arg(long, env = "TRACKLINE_BROKER_PREFIX", default_value = "trackline")]
    pub broker_prefix: String,

    /// Broker mode: how long a node waits for another node's answer, in milliseconds.
    #[arg(long, env = "TRACKLINE_BROKER_TIMEOUT_MS", default_value_t = 2000)]
    pub broker_timeout_ms: u64,

    /// An origin (`https://shop.example.com`) whose pages may read an order's state and history
    /// and watch it with a watch token (CORS, and the watch upgrade's Origin check). Repeat it,
    /// or comma-separate it in the variable. None by default: only this server's own pages.
    #[arg(long = "cors-origin", env = "TRACKLINE_CORS_ORIGINS", value_delimiter = ',',
          value_parser = crate::http::cors::parse_origin)]
    pub cors_origins: Vec<String>,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "TRACKLINE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Webhooks: an `order.eta` event when the arrival time moved by at least this many seconds
    /// since the last one sent for the order.
    #[arg(long, env = "TRACKLINE_WEBHOOK_ETA_STEP_S", default_value_t = 120)]
    pub webhook_eta_step_s: u64,

    /// Webhooks: `courier.offline` after this many seconds without a fix from the courier of an
    /// active order (and `courier.online` at its next fix).
    #[arg(long, env = "TRACKLINE_COURIER_OFFLINE_S", default_value_t = 60.0)]
    pub courier_offline_s: f64,

    /// Webhooks: how long an event is retried before it is kept as failed (e.g. 24h, 90m, 30s).
    #[arg(long, env = "TRACKLINE_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_age)]
    pub webhook_max_age: Duration,

    /// Webhooks: the first retry's delay in milliseconds; each next one doubles (with jitter).
    #[arg(long, env = "TRACKLINE_WEBHOOK_RETRY_MIN_MS", default_value_t = 5000)]
    pub webhook_retry_min_ms: u64,

    /// Webhooks: the longest delay between two attempts, in milliseconds.
    #[arg(
        long,
        env = "TRACKLINE_WEBHOOK_RETRY_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_retry_max_ms: u64,

    /// Webhooks: deliveries in flight at once per endpoint (each to a different order).
    #[arg(long, env = "TRACKLINE_WEBHOOK_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub webhook_concurrency: u64,
}

/// A duration as `90`, `90s`, `15m`, `24h` or `7d` (seconds without a unit).
fn parse_age(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: a number followed by s, m, h or d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

impl Config {
    /// A configuration for tests: an ephemeral port on loopback, the given data dir and secret,
    /// and short timeouts so that tests of them are quick.
    pub fn for_tests(data_dir: impl Into<PathBuf>, secret: &str) -> Self {
        let mut config = Config::parse_from(["trackline"]);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config.secret = Some(secret.to_string());
        config.workers = Some(2);
        config.heartbeat_s = 1;
        config.client_timeout_s = 5;
        config.shutdown_grace_s = 5;
        config.slow_watcher_timeout_s = 2;
        // Tests stream recorded trips as fast as acks come back.
        config.max_frames_per_s = 1000.0;
        config
    }

    /// What makes an order's webhook events.
    pub fn webhook_tracking(&self) -> trackline_core::webhooks::TrackerSettings {
        trackline_core::webhooks::TrackerSettings {
            eta_step: Duration::from_secs(self.webhook_eta_step_s),
            courier_offline_after: Duration::from_secs_f64(
                self.courier_offline_s.clamp(0.1, 86_400.0),
            ),
        }
    }

    /// The retention period, if any.
    pub fn retention(&self) -> Option<Duration> {
        (self.retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.retention_days) * 24 * 3600))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_s.max(1))
    }

    pub fn client_timeout(&self) -> Duration {
        Duration::from_secs(self.client_timeout_s.max(1))
    }

    /// `--write-buffer-bytes`, at least 512.
    pub fn write_buffer(&self) -> usize {
        self.write_buffer_bytes.max(512)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    pub fn time_bounds(&self) -> trackline_core::fix::TimeBounds {
        trackline_core::fix::TimeBounds {
            max_age_ms: self.max_fix_age_s.saturating_mul(1000),
            max_future_ms: self.max_fix_future_s.saturating_mul(1000),
        }
    }
}
