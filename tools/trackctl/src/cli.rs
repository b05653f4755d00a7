//! The command line: every subcommand and flag, with the help text and examples people read.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration::{parse_duration, parse_seconds};

const EXAMPLES: &str = "\
Examples:
  # a simulated delivery you can watch in a browser (the server runs with the same secret)
  export TRACKLINE_SECRET=dev-secret
  trackctl simulate ../shared/trajectories/car_visnjan_hr.csv --speedup 4

  # an ops token for curl
  TOKEN=$(trackctl token ops)
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/v1/orders/o-1";

/// The trackline ops CLI: mint tokens and stream simulated couriers.
///
/// Talk goes to stderr and data to stdout, so `TOKEN=$(trackctl token ops)` works. Exit codes:
/// 0 ok, 1 nothing found, 2 error.
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

Credentials: --secret mints everything locally. Without it, --token takes an ops token (orders are
created with it and the server mints courier tokens via POST /v1/tokens) or one courier's token (a
single courier streaming into its existing orders: add --no-create-orders).

Trips are CSV `t_unix,lat,lon` (seconds, degrees; a header line is optional). Timestamps are
rewritten: the first fix is stamped now, the rest follow the recorded intervals divided by --speedup.
Speeds scale with --speedup too, so a fast car at a high speedup can trip the server's
impossible-speed filter. Seqs start from the clock (unix ms x 1000), so reruns for the same courier
never go backwards.";

/// Stream CSV trips as simulated couriers over the real courier stream
///
/// Each trip file is one courier (reused round-robin with --couriers). Like a real app, each
/// courier keeps its unacknowledged fixes, reconnects with backoff when the connection drops and
/// resends them with the same seqs. Watch links go to stderr at the start, progress on a terminal,
/// and a summary (fixes sent, acked, rejected by code) at the end.
#[derive(Debug, Args)]
#[command(after_help = SIMULATE_EXAMPLES)]
pub struct SimulateArgs {
    /// Trip files, CSV `t_unix,lat,lon`; one courier each
    #[arg(required = true, value_name = "TRIP.csv")]
    pub trips: Vec<PathBuf>,

    /// How many couriers; trips are reused round-robin [default: one per trip]
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

    /// Also mark each order picked up at the start and delivered when its trip ends
    #[arg(long)]
    pub deliver: bool,

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

fn parse_speedup(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!(
            "{raw:?} is not a positive number (1 is real time, 10 is ten times faster)"
        )),
    }
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
                Command::Token(_) => unreachable!(),
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
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
