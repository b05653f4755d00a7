//! The command line: every subcommand and flag, with the help text and examples people read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use trackline_core::order::OrderView;
use trackline_core::{LatLon, OrderId};

use crate::duration::{parse_duration, parse_seconds};
use crate::export::Format;
use crate::when::parse_instant;

const EXAMPLES: &str = "\
Examples:
  # a simulated delivery you can watch in a browser (the server runs with the same secret)
  export TRACKLINE_SECRET=dev-secret
  trackctl simulate ../shared/trajectories/car_visnjan_hr.csv --speedup 4

  # what is going on, and where was the rider of o-1 at 10:05?
  trackctl orders
  trackctl replay o-1 --from '2024-05-01 10:04' --to '2024-05-01 10:06' --fast

  # a route for a dispute, from a stopped server's data
  trackctl export o-1 -o o-1.gpx --data-dir ./trackline-data

  # an ops token for curl
  TOKEN=$(trackctl token ops)
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/v1/orders/o-1";

/// The trackline ops CLI: tokens, simulated couriers, and the route history of orders.
///
/// Talk goes to stderr and data to stdout, so `TOKEN=$(trackctl token ops)` and
/// `trackctl export o-1 --format gpx > o-1.gpx` work. Exit codes: 0 ok, 1 nothing found (an
/// unknown order, an empty range), 2 error.
///
/// The history commands (replay, export, stats, orders, purge) ask the server (--server, with an
/// ops token from --token or minted from --secret), or read a stopped server's data dir with
/// --data-dir.
#[derive(Debug, Parser)]
#[command(name = "trackctl", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (before or after the subcommand).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Server and credentials")]
pub struct GlobalArgs {
    /// Base URL of the trackline server
    #[arg(
        long,
        global = true,
        env = "TRACKLINE_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,

    /// Bearer token for the server (an ops token for most commands)
    #[arg(
        long,
        global = true,
        env = "TRACKLINE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The server's token-signing secret, to mint tokens locally (prefer the environment variable:
    /// a flag shows up in `ps`)
    #[arg(
        long,
        global = true,
        env = "TRACKLINE_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Token(TokenArgs),
    Simulate(SimulateArgs),
    Orders(OrdersArgs),
    Replay(ReplayArgs),
    Export(ExportArgs),
    Stats(StatsArgs),
    Purge(PurgeArgs),
    EtaEval(EtaEvalArgs),
    Webhooks(WebhooksArgs),
}

/// Where the history commands read from when not from the server.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Offline")]
pub struct DataDirArg {
    /// Read a stopped server's data dir instead of asking the server (read-only, except for
    /// purge); refused while a server holds it
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// A time range of an order's history.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// Only from this time on: 2024-05-01T10:00:00Z (RFC 3339), 2024-05-01 10:00 (UTC),
    /// unix seconds, or a duration ago such as 2h
    #[arg(long, value_parser = parse_instant, value_name = "TIME")]
    pub from: Option<i64>,

    /// Only up to this time (same forms as --from)
    #[arg(long, value_parser = parse_instant, value_name = "TIME")]
    pub to: Option<i64>,
}

const ORDERS_EXAMPLES: &str = "\
Examples:
  trackctl orders                          # active orders, most recently updated first
  trackctl orders --status ended --limit 20
  trackctl orders --status all --json | jq -r '.orders[].order_id'
  trackctl orders --data-dir ./trackline-data";

/// List orders with their status, courier, last position and ETA
///
/// Exit code 1 when no order matches.
#[derive(Debug, Args)]
#[command(after_help = ORDERS_EXAMPLES)]
pub struct OrdersArgs {
    /// Which orders
    #[arg(long, value_enum, default_value = "active")]
    pub status: StatusFilter,

    /// At most this many, the most recently updated first
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,

    /// Print `{"orders": [...]}` as the server answers it
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub data_dir: DataDirArg,
}

const REPLAY_EXAMPLES: &str = "\
Examples:
  # where was the rider when the customer called at 10:05 (UTC)?
  trackctl replay o-1 --from '2024-05-01 10:03' --to '2024-05-01 10:06' --fast

  # watch it again at 20 times real time, one line every 10 s of trip
  trackctl replay o-1 --speed 20 --every 10s

  # machine-readable timeline, one JSON object per line
  trackctl replay o-1 --fast --json | jq -c 'select(.type == \"status\")'

  # re-stream o-1's route as the courier of o-2, to watch it on the live map
  trackctl replay o-1 --to-order o-2 --speed 4

Pacing: --speed N plays N times faster than recorded, --fast prints at once. Without either, a
terminal gets --speed 10 and a pipe or file gets --fast; with --to-order the default is real time.

The ETA of each line is recomputed by the server's own GPS filter and ETA estimator (default
settings) over the stored history with the order's destination and planned route, so it is the
ETA the customer saw at that moment. Refused fixes are not stored, so right after one the replay
can differ from what was shown live.";

/// Play an order's route history as a timeline: time, position, speed, status changes, and
/// the ETA at each moment
///
/// Lines go to stdout (a table, or JSON lines with --json); a progress bar goes to stderr on a
/// terminal. Exit code 1 for an unknown order or a range without fixes.
#[derive(Debug, Args)]
#[command(after_help = REPLAY_EXAMPLES)]
pub struct ReplayArgs {
    /// The order to replay
    #[arg(value_parser = parse_order_id, value_name = "ORDER")]
    pub order: OrderId,

    /// Play N times faster than recorded (1 is real time)
    #[arg(long, value_parser = parse_speedup, value_name = "N", conflicts_with = "fast")]
    pub speed: Option<f64>,

    /// Print the whole timeline at once (with --to-order: as fast as the server's speed limit
    /// for couriers allows)
    #[arg(long)]
    pub fast: bool,

    /// At most one fix line per this much trip time (status changes are always shown)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub every: Option<Duration>,

    #[command(flatten)]
    pub range: RangeArgs,

    /// Also stream the route, live and paced, as the courier of this other order (which must
    /// exist and have a courier assigned); its watchers see the courier move. Fixes go to every
    /// active order of that courier, and a courier already streaming is disconnected by the server
    #[arg(long, value_parser = parse_order_id, value_name = "OTHER")]
    pub to_order: Option<OrderId>,

    /// One JSON object per line: {"type": "fix", ...} and {"type": "status", ...}
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub data_dir: DataDirArg,
}

const EXPORT_EXAMPLES: &str = "\
Examples:
  trackctl export o-1 --format gpx > o-1.gpx
  trackctl export o-1 -o o-1.geojson               # the format follows the extension
  trackctl export o-1 --format csv --from 2h | trackctl eta-eval /dev/stdin
  trackctl export o-1 -o o-1.csv --data-dir ./trackline-data

GPX and GeoJSON are written with the gpx and geojson crates and open in any GPS or GIS tool.
CSV is `t_unix,lat,lon,seq,accuracy_m,speed_mps,heading_deg`, which simulate and eta-eval read.";

/// Export an order's route history as GPX, GeoJSON or CSV
///
/// Exit code 1 for an unknown order or a range without fixes (no file is written then).
#[derive(Debug, Args)]
#[command(after_help = EXPORT_EXAMPLES)]
pub struct ExportArgs {
    /// The order to export
    #[arg(value_parser = parse_order_id, value_name = "ORDER")]
    pub order: OrderId,

    /// Output format [default: from the extension of --output]
    #[arg(long, short = 'f', value_enum)]
    pub format: Option<Format>,

    /// Write to this file instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub range: RangeArgs,

    #[command(flatten)]
    pub data_dir: DataDirArg,
}

const STATS_EXAMPLES: &str = "\
Examples:
  trackctl stats o-1
  trackctl stats o-1 --json | jq '.distance_filtered_m'
  trackctl stats o-1 --stop-below 1 --stop-for 1m --data-dir ./trackline-data";

/// Figures of an order's route: distance (raw and filtered), duration, moving time, stops,
/// speeds, and the fixes refused and why
///
/// The filtered distance follows the marker as the server's GPS filter showed it; stops are
/// found on that path. Exit code 1 for an unknown order or one without fixes.
#[derive(Debug, Args)]
#[command(after_help = STATS_EXAMPLES)]
pub struct StatsArgs {
    /// The order to measure
    #[arg(value_parser = parse_order_id, value_name = "ORDER")]
    pub order: OrderId,

    /// A stop is slower than this on average, m/s...
    #[arg(long, default_value_t = 0.5, value_parser = parse_positive, value_name = "M/S")]
    pub stop_below: f64,

    /// ...for at least this long
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub stop_for: Duration,

    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub data_dir: DataDirArg,
}

const PURGE_EXAMPLES: &str = "\
Examples:
  trackctl purge --older-than 30d
  trackctl purge --before 2024-05-01
  trackctl purge                                   # the server's own retention period
  trackctl purge --older-than 90d --data-dir ./trackline-data";

/// Delete old route history: fixes older than the cutoff, and orders that ended before it
///
/// Active orders keep their record whatever their age. Prints what was deleted.
#[derive(Debug, Args)]
#[command(after_help = PURGE_EXAMPLES)]
pub struct PurgeArgs {
    /// Delete history from before this time (same forms as replay --from)
    #[arg(long, value_parser = parse_instant, value_name = "TIME", conflicts_with = "older_than")]
    pub before: Option<i64>,

    /// Delete history older than this: 30d, 12h, 2w
    #[arg(long, value_parser = parse_seconds, value_name = "DURATION")]
    pub older_than: Option<i64>,

    /// Print `{"before_ms", "fixes", "orders"}`
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub data_dir: DataDirArg,
}

const WEBHOOKS_EXAMPLES: &str = "\
Examples:
  trackctl webhooks add https://example.com/hooks --event order.status --event order.eta
  trackctl webhooks list
  trackctl webhooks deliveries wh_0123 --status failed
  trackctl webhooks redeliver wh_0123                      # every failed one
  trackctl webhooks redeliver wh_0123 --event msg_1717_4_o-1
  trackctl webhooks rm wh_0123";

/// Signed webhooks: receivers of order and courier events, their deliveries
#[derive(Debug, Args)]
#[command(after_help = WEBHOOKS_EXAMPLES)]
pub struct WebhooksArgs {
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register a receiver; prints its id and signing secret (shown only now)
    Add {
        /// An http(s) URL events are POSTed to
        url: String,
        /// An event type to receive (repeat; default every type): order.created,
        /// order.assigned, order.status, order.eta, courier.offline, courier.online
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// The signing secret, whsec_ + base64 (default: the server generates one; --secret is
        /// the token secret)
        #[arg(long = "signing-secret", value_name = "WHSEC")]
        signing_secret: Option<String>,
        /// Print `{"id", "url", "events", "secret"}`
        #[arg(long)]
        json: bool,
    },
    /// List the receivers (exit code 1 when there is none)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a receiver with its pending and failed deliveries
    Rm { id: String },
    /// A receiver's pending or failed deliveries (exit code 1 when there is none)
    Deliveries {
        id: String,
        #[arg(long, default_value = "pending", value_parser = ["pending", "failed"])]
        status: String,
        #[arg(long)]
        json: bool,
    },
    /// Try failed deliveries again: every one, or the one of --event
    Redeliver {
        id: String,
        /// The event's webhook-id
        #[arg(long, value_name = "ID")]
        event: Option<String>,
    },
}

const ETA_EVAL_EXAMPLES: &str = "\
Examples:
  trackctl eta-eval tests/data/*.csv
  trackctl eta-eval trip.csv --trace
  trackctl eta-eval tests/data/*.csv --pickup-at 0.4
  trackctl export o-1 --format csv > o-1.csv && trackctl eta-eval o-1.csv --json

Protocol: destination = the trip's last fix; planned route = its path simplified at 15 m; every
fix through the server's GPS filter and ETA estimator; every 10 s of trip time while more than
60 s remain, the ETA is compared with the time actually left. Baselines: (a) straight line /
mean speed so far, (b) remaining route from the true progress / mean speed so far. The arrival
window is scored by its coverage (share of instants whose true arrival is inside) and width.
With --pickup-at, the same trips are scored again with a pickup at that fraction of each trip's
duration (two legs, dwell 0; the door ETA over the whole trip), after the single-leg table.";

/// Score the ETA on recorded trips: MAE and MAPE per trip and pooled, for trackline and two
/// baselines
///
/// Trips are CSV with a `t_unix,lat,lon` header (more columns are fine, e.g. from export).
#[derive(Debug, Args)]
#[command(after_help = ETA_EVAL_EXAMPLES)]
pub struct EtaEvalArgs {
    /// Trip files, CSV with a `t_unix,lat,lon` header
    #[arg(required = true, value_name = "TRIP.csv")]
    pub trips: Vec<PathBuf>,

    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,

    /// Also print every evaluated instant of every trip
    #[arg(long)]
    pub trace: bool,

    /// Also score the two-leg protocol: a pickup at this fraction of each trip's duration
    /// (0.4 is the one services/core/ETA.md reports)
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub pickup_at: Option<f64>,
}

/// A fraction strictly between 0 and 1.
fn parse_fraction(text: &str) -> Result<f64, String> {
    let f: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number: give a fraction such as 0.4"))?;
    if f > 0.0 && f < 1.0 {
        Ok(f)
    } else {
        Err(format!(
            "{f} is not between 0 and 1 (exclusive): give one such as 0.4"
        ))
    }
}

const TOKEN_EXAMPLES: &str = "\
Examples:
  TOKEN=$(trackctl token ops --secret \"$TRACKLINE_SECRET\")
  trackctl token courier bike-7 --ttl 12h
  trackctl token watch order-42 --ttl 3600";

/// Mint a token offline from the server's secret; prints the token alone on stdout
#[derive(Debug, Args)]
#[command(after_help = TOKEN_EXAMPLES)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub role: TokenRole,

    /// How long the token stays valid: seconds (3600) or 90s, 15m, 12h, 1d, 1w, 1h30m
    #[arg(long, global = true, default_value = "1d", value_parser = parse_seconds, value_name = "DURATION")]
    pub ttl: i64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenRole {
    /// A courier's token: opens the courier stream as that courier
    Courier {
        /// The courier id (1-64 characters of A-Z a-z 0-9 _ . -)
        id: String,
    },
    /// A token that reads one order, as a customer's tracking link does
    Watch {
        /// The order id
        order: String,
    },
    /// An ops token: everything under /v1
    Ops,
}

const SIMULATE_EXAMPLES: &str = "\
Examples:
  # one courier per trip, real time, orders created and printed with their watch links
  trackctl simulate --secret dev-secret car_visnjan_hr.csv bike_joensuu_1412412627743.csv

  # 50 couriers from two trips, ten times faster, 5 fixes per frame, until Ctrl-C
  trackctl simulate -n 50 --speedup 10 --batch 5 --loop car_visnjan_hr.csv run_vincennes_DC2_garmin.csv

  # with an ops token and no secret: the server mints the courier tokens
  TRACKLINE_TOKEN=$OPS_TOKEN trackctl simulate trip.csv

  # as one real courier, into the orders already assigned to it
  trackctl simulate --token \"$(trackctl token courier bike-7)\" --no-create-orders trip.csv

  # a GPX recording, resampled to one fix every 2 s
  trackctl simulate --secret dev-secret --rate 0.5 ride.gpx

  # a delivery with a pickup 40 % into the trip: collected when the courier gets there
  trackctl simulate --secret dev-secret --pickup-at 0.4 --deliver car_visnjan_hr.csv

  # one courier, three drops along its trip, visited in that order (its plan)
  trackctl simulate --secret dev-secret --orders-per-courier 3 --deliver car_visnjan_hr.csv

  # 200 random couriers around Helsinki centre, 3 km radius, 20 min by car, reproducible
  trackctl simulate --secret dev-secret --random 60.1699,24.9384 --radius-m 3000 \\
      --duration 20m --speed-mps 12 --seed 7 -n 200

Credentials: --secret mints everything locally. Without it, --token takes an ops token (orders are
created with it and the server mints courier tokens via POST /v1/tokens) or one courier's token (a
single courier streaming into its existing orders: add --no-create-orders).

Trips are CSV `t_unix,lat,lon` (seconds, degrees; a header line is optional). Timestamps are
rewritten: the first fix is stamped now, the rest follow the recorded intervals divided by --speedup.
Speeds scale with --speedup too, so a fast car at a high speedup can trip the server's
impossible-speed filter. Seqs start from the clock (unix ms x 1000), so reruns for the same courier
never go backwards.

GPX trips (.gpx) use every track point of every track and segment in order; each point needs a
<time>. --random generates one trip per courier instead: a smooth random walk (straight legs,
gentle curves) at about --speed-mps, one point per second (or per 1/--rate s), never farther than
--radius-m from the point; --seed makes it repeatable.

Rate: --rate F resamples every trip to F fixes per second of trip time, so each courier sends
F x --speedup fixes per second (without --rate: the recording's own rate x --speedup). The server
closes a courier connection that sends more than 20 frames per second (close 1008), so when that
would be exceeded with --batch, the batch is raised automatically (said on stderr).";

/// Stream CSV or GPX trips, or random ones, as simulated couriers over the real courier stream
///
/// Each trip file is one courier (reused round-robin with --couriers); with --random each courier
/// gets its own random trip. Like a real app, each courier keeps its unacknowledged fixes,
/// reconnects with backoff when the connection drops and resends them with the same seqs. Watch links go to stderr at the start, progress on a terminal,
/// and a summary (fixes sent, acked, rejected by code) at the end.
#[derive(Debug, Args)]
#[command(after_help = SIMULATE_EXAMPLES)]
pub struct SimulateArgs {
    /// Trip files, CSV `t_unix,lat,lon` or GPX (by the .gpx ending); one courier each
    // not `conflicts_with = "random"`: clap then stops enforcing `requires = "random"` of the
    // random-only flags next to trip files; `simulate` refuses files and --random together itself
    #[arg(required_unless_present = "random", value_name = "TRIP.csv|TRIP.gpx")]
    pub trips: Vec<PathBuf>,

    /// Instead of trip files, one random trip per courier around this point (degrees)
    #[arg(long, value_parser = parse_lat_lon, value_name = "LAT,LON", allow_hyphen_values = true, help_heading = "Random trips")]
    pub random: Option<LatLon>,

    /// How far from the --random point the couriers may wander, in metres
    #[arg(long, default_value_t = 2000.0, value_parser = parse_positive, value_name = "METRES", requires = "random", help_heading = "Random trips")]
    pub radius_m: f64,

    /// How long each random trip lasts (in trip time: --speedup shortens it)
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION", requires = "random", help_heading = "Random trips")]
    pub duration: Duration,

    /// Typical speed of the random couriers in m/s (5 a bike, 12 a car in town); kept within 10 %
    #[arg(long, default_value_t = 5.0, value_parser = parse_random_speed, value_name = "M/S", requires = "random", help_heading = "Random trips")]
    pub speed_mps: f64,

    /// Seed of the random trips: the same seed gives the same trips [default: a new one, printed]
    #[arg(
        long,
        value_name = "N",
        requires = "random",
        help_heading = "Random trips"
    )]
    pub seed: Option<u64>,

    /// Fixes per second per courier, in trip time: each trip is resampled (positions interpolated)
    /// to one fix every 1/F seconds [default: as recorded; 1 for --random]
    ///
    /// Independent of --speedup: the server receives F x SPEEDUP fixes per second per courier.
    #[arg(long, value_parser = parse_rate, value_name = "F")]
    pub rate: Option<f64>,

    /// How many couriers; trips are reused round-robin [default: one per trip, 1 with --random]
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub couriers: Option<u32>,

    /// Play time this many times faster than recorded (0.5 is half speed)
    #[arg(long, default_value_t = 1.0, value_parser = parse_speedup, value_name = "X")]
    pub speedup: f64,

    /// Order ids are PREFIX1, PREFIX2, ... [default: sim-STAMP-o, STAMP new on every run]
    #[arg(long, value_name = "PREFIX")]
    pub order_prefix: Option<String>,

    /// Courier ids are PREFIX1, PREFIX2, ... [default: sim-STAMP-c, STAMP new on every run]
    ///
    /// Fixes go to every active order of a courier, so reusing courier ids across runs also feeds
    /// the orders earlier runs left open; seqs stay increasing across runs either way.
    #[arg(long, value_name = "PREFIX")]
    pub courier_prefix: Option<String>,

    /// Create each courier's order first (the default): destination = the trip's last point,
    /// route = its path thinned to a point every ~50 m, the courier assigned
    #[arg(long, overrides_with = "no_create_orders")]
    pub create_orders: bool,

    /// Only stream fixes; they go to whatever orders are already assigned to the couriers
    #[arg(long, overrides_with = "create_orders")]
    pub no_create_orders: bool,

    /// Also mark each order picked up at the start (with --pickup-at: when its courier gets
    /// there) and delivered when its trip ends
    #[arg(long)]
    pub deliver: bool,

    /// Give each created order a pickup at this fraction of its trip's duration (e.g. 0.4): the
    /// trip's point there, no handover time (the recording did not stop), the planned route split
    /// there into the route to the pickup and the route from it
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction)]
    pub pickup_at: Option<f64>,

    /// Orders each courier carries (multi-drop): its trip cut into N equal stretches of time, a
    /// drop at the end of each, the courier's plan set to visit them in that order; with
    /// --deliver each is delivered when its courier gets there. Order ids are PREFIX{i}-{j}
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=20), conflicts_with = "pickup_at")]
    pub orders_per_courier: u32,

    /// Fixes per frame, as an app that batches its uploads
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
    pub batch: u32,

    /// Ride each trip back and forth until Ctrl-C (back and forth, so the track never jumps)
    #[arg(long = "loop")]
    pub looping: bool,

    /// Give up when the server stays unreachable (or acknowledges nothing) this long
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub retry_for: Duration,

    /// After the last fix, wait this long at most for the remaining acks
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// Distance between route points of created orders, in metres
    #[arg(long, default_value_t = 50.0, value_name = "METRES")]
    pub route_spacing: f64,

    /// Print the summary (and the orders with their watch links) as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

fn parse_positive(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{raw:?} is not a positive number")),
    }
}

/// The fastest typical speed --speed-mps takes: random trips wander 10 % above it, and the server
/// refuses anything faster than 55 m/s between two fixes.
const MAX_RANDOM_SPEED_MPS: f64 = 45.0;

fn parse_random_speed(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= MAX_RANDOM_SPEED_MPS => Ok(x),
        _ => Err(format!(
            "{raw:?} is not a speed in m/s between 0 and {MAX_RANDOM_SPEED_MPS} (the server refuses couriers \
             faster than 55 m/s)"
        )),
    }
}

fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= 100.0 => Ok(x),
        _ => Err(format!(
            "{raw:?} is not a rate in fixes per second between 0 and 100 (0.2 is one fix every 5 s)"
        )),
    }
}

fn parse_lat_lon(raw: &str) -> Result<LatLon, String> {
    let parsed = raw.split_once(',').and_then(|(lat, lon)| {
        Some(LatLon::new(
            lat.trim().parse::<f64>().ok()?,
            lon.trim().parse::<f64>().ok()?,
        ))
    });
    match parsed {
        Some(p) if p.lat.is_finite() && p.lon.is_finite() && p.is_valid() => Ok(p),
        _ => Err(format!(
            "{raw:?} is not LAT,LON in degrees, e.g. 60.1699,24.9384 (lat -90..90, lon -180..180)"
        )),
    }
}

fn parse_speedup(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "{raw:?} is not a positive number (1 is real time, 10 is ten times faster)"
        )),
    }
}

/// Which orders a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    /// Not delivered or cancelled yet
    Active,
    /// Delivered or cancelled
    Ended,
    /// Both
    All,
}

impl StatusFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Active => "active",
            StatusFilter::Ended => "ended",
            StatusFilter::All => "all",
        }
    }

    pub fn wants(self, view: &OrderView) -> bool {
        match self {
            StatusFilter::Active => !view.status.is_final(),
            StatusFilter::Ended => view.status.is_final(),
            StatusFilter::All => true,
        }
    }
}

/// Parses an order id for clap.
///
/// # Errors
/// When the id has characters or a length the server refuses.
pub fn parse_order_id(raw: &str) -> Result<OrderId, String> {
    OrderId::new(raw).map_err(|e| format!("{raw:?} is not an order id: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["trackctl", "token", "ops", "--ttl", "2h", "--secret", "s"])
            .unwrap();
        assert_eq!(cli.global.secret.as_deref(), Some("s"));
        let Command::Token(args) = cli.command else {
            panic!("not token")
        };
        assert_eq!(args.ttl, 7200);
    }

    #[test]
    fn create_orders_is_on_unless_turned_off_last() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["trackctl", "simulate", "t.csv"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).unwrap().command {
                Command::Simulate(args) => !args.no_create_orders,
                _ => unreachable!(),
            }
        };
        assert!(parse(&[]));
        assert!(!parse(&["--no-create-orders"]));
        assert!(parse(&["--no-create-orders", "--create-orders"]));
    }

    #[test]
    fn bad_numbers_are_refused() {
        for argv in [
            &["trackctl", "simulate", "t.csv", "--speedup", "0"][..],
            &["trackctl", "simulate", "t.csv", "--batch", "0"],
            &["trackctl", "simulate", "t.csv", "-n", "0"],
            &["trackctl", "token", "ops", "--ttl", "0"],
            &["trackctl", "simulate"],
            &["trackctl", "replay", "o-1", "--speed", "2", "--fast"],
            &["trackctl", "replay", "bad id"],
            &["trackctl", "export", "o-1", "--format", "kml"],
            &[
                "trackctl",
                "purge",
                "--before",
                "2024-05-01",
                "--older-than",
                "30d",
            ],
            &["trackctl", "replay", "o-1", "--from", "yesterday"],
            &["trackctl", "eta-eval"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn random_trips_need_no_trip_files() {
        let simulate = |argv: &[&str]| {
            let mut full = vec!["trackctl", "simulate"];
            full.extend_from_slice(argv);
            match Cli::try_parse_from(full).map(|cli| cli.command) {
                Ok(Command::Simulate(args)) => Ok(args),
                Ok(_) => unreachable!(),
                Err(err) => Err(err.to_string()),
            }
        };
        let args = simulate(&["--random", "-33.87,151.21", "-n", "3", "--seed", "9"]).unwrap();
        assert_eq!(args.random, Some(LatLon::new(-33.87, 151.21)));
        assert!(args.trips.is_empty());
        assert_eq!(args.radius_m, 2000.0);
        assert_eq!(args.duration, Duration::from_secs(600));
        assert_eq!(args.speed_mps, 5.0);
        assert_eq!(args.seed, Some(9));
        assert_eq!(args.rate, None);
        let args = simulate(&[
            "--random",
            "60.17,24.94",
            "--radius-m",
            "500",
            "--duration",
            "90s",
            "--speed-mps",
            "12",
            "--rate",
            "0.5",
        ])
        .unwrap();
        assert_eq!((args.radius_m, args.speed_mps), (500.0, 12.0));
        assert_eq!(args.duration, Duration::from_secs(90));
        assert_eq!(args.rate, Some(0.5));
        assert_eq!(simulate(&["t.gpx", "--rate", "2"]).unwrap().rate, Some(2.0));
        // both parse; `simulate` refuses them together with a message
        assert!(simulate(&["--random", "60.17,24.94", "t.csv"]).is_ok());

        for bad in [
            &["--random", "91,0"][..],
            &["--random", "60.17"],
            &["--random", "60,24", "--speed-mps", "60"],
            &["--random", "60,24", "--radius-m", "0"],
            &["t.csv", "--rate", "0"],
            &["t.csv", "--seed", "1"],
            &["t.csv", "--radius-m", "100"],
        ] {
            assert!(simulate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_commands_take_ranges_and_a_data_dir() {
        let cli = Cli::try_parse_from([
            "trackctl",
            "replay",
            "o-1",
            "--from",
            "2024-05-01T10:00:00Z",
            "--to",
            "1714557660",
            "--to-order",
            "o-2",
            "--data-dir",
            "/tmp/d",
        ])
        .unwrap();
        let Command::Replay(args) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(args.range.from, Some(1_714_557_600_000));
        assert_eq!(args.range.to, Some(1_714_557_660_000));
        assert_eq!(args.to_order.unwrap().as_str(), "o-2");
        assert_eq!(args.data_dir.data_dir, Some(PathBuf::from("/tmp/d")));
    }
}
