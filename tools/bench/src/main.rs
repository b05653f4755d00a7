//! trackline-bench: trackline against a bare relay, NATS, Mosquitto and Redis, side by side, on
//! one machine, with one load generator. `tools/bench/run.sh` is the one command; this binary
//! runs the scenarios, writes the JSON report and BENCHMARKS.md.

mod course;
mod fleet;
mod load;
mod peers;
mod report;
mod scenarios;
mod stats;
mod webhooks;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::load::{LoadSpec, Pace};
use crate::peers::Peer;

#[derive(Parser)]
#[command(
    name = "trackline-bench",
    about = "Benchmarks trackline against its peers, side by side"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The bare relay (a peer): courier /pub/{id} -> watchers /sub/{id}, nothing stored.
    Relay {
        #[arg(long, default_value = "127.0.0.1:18181")]
        listen: SocketAddr,
        /// Durable relay: append every courier frame to this log, sync it in a group commit,
        /// ack it, then forward it.
        #[arg(long)]
        durable_log: Option<PathBuf>,
        /// The durable relay's shortest time between two syncs (trackline's default).
        #[arg(long, default_value_t = 3)]
        commit_window_ms: u64,
    },
    /// One load against one peer (started and stopped by the tool), printed as JSON.
    Load {
        #[arg(long, default_value = "trackline")]
        peer: String,
        #[arg(long, default_value_t = 100)]
        couriers: usize,
        /// Closed loop: fixes in flight per courier (ignored with --rate).
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Open loop: total fixes per second over all couriers.
        #[arg(long)]
        rate: Option<f64>,
        /// Fixes per frame; 0: as many as the window allows (closed loop).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Watchers per order.
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// trackline: unwatched orders each courier carries besides the watched one.
        #[arg(long, default_value_t = 0)]
        extra_orders: usize,
    },
    /// Many couriers at one fix per 1-5 s against every peer, printed as JSON: CPU per fix,
    /// latency, memory and disk over time, the highest rate within the p99 bar.
    Fleet(fleet::FleetArgs),
    /// trackline alone, every fix making a webhook event: courier ack latency and CPU with no
    /// webhook, with a receiver dead for the whole run, and with a live one (delivery rate).
    Webhooks(webhooks::WebhookArgs),
    /// Every scenario against every peer; writes the JSON report and BENCHMARKS.md.
    // Boxed: the suite's flags are many times the size of any other command's.
    All(Box<report::SuiteArgs>),
}

/// The id prefix of the fleet flags; see [`fleet::FleetArgs`].
const FLEET_ID_PREFIX: &str = "fleet_";

/// Parses the command line. Inside `all` the fleet scenario's flags would clash with the suite's
/// own (`--couriers`, `--seconds`, ...), so there each is renamed after its id:
/// `--fleet-couriers`, `--fleet-seconds`, ... (clap has no prefix for flattened flags).
fn parse_cli() -> Cli {
    let cmd = Cli::command()
        .mut_subcommand("fleet", |c| fleet_flags(c, false))
        .mut_subcommand("all", |c| fleet_flags(c, true));
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Names the fleet flags' values after their ids (`--couriers <COURIERS>`, not the id) and, with
/// `prefixed`, their long names too (`--fleet-couriers`).
fn fleet_flags(cmd: clap::Command, prefixed: bool) -> clap::Command {
    cmd.mut_args(|arg| {
        let id = arg.get_id().as_str().to_string();
        let Some(bare) = id.strip_prefix(FLEET_ID_PREFIX) else {
            return arg;
        };
        // Leaked once per flag at start-up: clap keeps names as &'static str.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let arg = arg.value_name(leak(bare.to_uppercase()));
        if prefixed {
            let long = leak(id.replace('_', "-"));
            arg.long(long)
        } else {
            arg
        }
    })
}

fn main() -> Result<()> {
    let limit = stats::raise_nofile_limit();
    let cli = parse_cli();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Relay {
                listen,
                durable_log,
                commit_window_ms,
            } => {
                let window = Duration::from_millis(commit_window_ms);
                peers::run_relay(listen, durable_log.map(|log| (log, window))).await
            }
            Cmd::Load {
                peer,
                couriers,
                window,
                rate,
                batch,
                watchers,
                seconds,
                warmup,
                extra_orders,
            } => {
                let Some(peer) = Peer::parse(&peer) else {
                    bail!("unknown peer {peer}");
                };
                let spec = LoadSpec {
                    couriers,
                    pace: match rate {
                        Some(r) => Pace::Rate(r / couriers as f64),
                        None => Pace::Window(window),
                    },
                    batch,
                    watchers,
                    warmup: Duration::from_secs_f64(warmup),
                    duration: Duration::from_secs_f64(seconds),
                    extra_orders,
                };
                let work = std::env::temp_dir().join("trackline-bench");
                let server = peers::start(peer, &work).await?;
                let r = load::run(peer, server.addr, server.pid(), &spec).await;
                server.stop(Duration::from_secs(20)).await;
                println!("{}", serde_json::to_string_pretty(&r?)?);
                Ok(())
            }
            Cmd::Fleet(args) => {
                let work = std::env::temp_dir().join("trackline-bench");
                std::fs::create_dir_all(&work)?;
                let (peers, missing): (Vec<Peer>, Vec<Peer>) = args
                    .peer_list()?
                    .into_iter()
                    .partition(|p| p.missing().is_none());
                let mut r = fleet::run(&args, &peers, &work, limit).await;
                for p in missing {
                    r.errors
                        .push(format!("{}: {}", p.name(), p.missing().unwrap_or_default()));
                }
                println!("{}", serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            Cmd::Webhooks(args) => {
                let work = std::env::temp_dir().join("trackline-bench");
                let runs = webhooks::run(&args, &work).await?;
                println!("{}", serde_json::to_string_pretty(&runs)?);
                Ok(())
            }
            Cmd::All(args) => {
                let work = args
                    .work
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/tmp/trackline-bench"));
                report::run_suite(*args, &work, limit).await
            }
        }
    })
}
