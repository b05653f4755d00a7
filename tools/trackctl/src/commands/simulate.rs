//! `trackctl simulate`: loads the trips, prepares the run, announces the watch links, streams until
//! done or Ctrl-C, and prints the summary.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use crate::cli::{GlobalArgs, SimulateArgs};
use crate::courier::Stop;
use crate::random::RandomTrips;
use crate::simulate::{SimConfig, Simulation, Summary};
use crate::trip::Trip;

/// Above this many orders the start lists only the first few links (`--json` has them all).
const LIST_ALL_ORDERS_UP_TO: usize = 20;
const LISTED_WHEN_MANY: usize = 5;

pub fn run(global: &GlobalArgs, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let trips = load_trips(args)?;
    let batch = auto_batch(&trips, args);
    for fast in crate::simulate::too_fast(&trips, args.speedup) {
        eprintln!(
            "warning: at --speedup {} {} moves at about {:.0} m/s, faster than the server believes a courier \
             can ({:.0} m/s): expect impossible_speed rejections; --speedup {:.1} or less keeps it plausible",
            args.speedup,
            fast.trip,
            fast.apparent_mps,
            crate::simulate::SERVER_MAX_SPEED_MPS,
            fast.max_speedup
        );
    }
    // one stamp for the run's default ids: a rerun never collides with (or feeds) the orders an
    // earlier run created or left open
    let stamp = run_stamp();
    let config = SimConfig {
        server: global.server.clone(),
        // random trips are one per courier already
        couriers: args.couriers.map_or(trips.len(), |n| n as usize),
        trips,
        speedup: args.speedup,
        order_prefix: args
            .order_prefix
            .clone()
            .unwrap_or_else(|| format!("{stamp}o")),
        courier_prefix: args
            .courier_prefix
            .clone()
            .unwrap_or_else(|| format!("{stamp}c")),
        create_orders: !args.no_create_orders,
        deliver: args.deliver,
        pickup_at: args.pickup_at,
        orders_per_courier: args.orders_per_courier as usize,
        batch,
        looping: args.looping,
        retry_for: args.retry_for,
        drain_timeout: args.drain_timeout,
        route_spacing_m: args.route_spacing,
        secret: global.secret.clone(),
        token: global.token.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(simulate(config, args.json))
}

/// The trip files, or the random trips; resampled to `--rate` when given.
fn load_trips(args: &SimulateArgs) -> anyhow::Result<Vec<Arc<Trip>>> {
    if args.random.is_some() && !args.trips.is_empty() {
        anyhow::bail!(
            "pass trip files or --random, not both: --random makes one trip per courier (-n) by itself"
        );
    }
    let trips: Vec<Trip> = if let Some(center) = args.random {
        let seed = args.seed.unwrap_or_else(rand::random);
        if args.seed.is_none() {
            eprintln!("random trips from --seed {seed} (pass it again for the same trips)");
        }
        let params = RandomTrips {
            center,
            radius_m: args.radius_m,
            duration_s: args.duration.as_secs_f64(),
            speed_mps: args.speed_mps,
            interval_s: 1.0,
            seed,
        };
        params.check()?;
        let couriers = args.couriers.map_or(1, |n| n as usize);
        (0..couriers)
            .map(|i| params.trip(i))
            .collect::<anyhow::Result<_>>()?
    } else {
        args.trips
            .iter()
            .map(|path| Trip::from_path(path))
            .collect::<anyhow::Result<_>>()?
    };
    Ok(trips
        .into_iter()
        .map(|trip| match args.rate {
            Some(rate) => Arc::new(trip.resampled(rate)),
            None => Arc::new(trip),
        })
        .collect())
}

/// `--batch`, raised when one courier would send more frames per second than the server takes.
fn auto_batch(trips: &[Arc<Trip>], args: &SimulateArgs) -> usize {
    let requested = args.batch as usize;
    let fixes_per_s = crate::simulate::peak_fixes_per_s(trips, args.speedup);
    let batch = crate::simulate::batch_for(fixes_per_s, requested);
    let frames_per_s = fixes_per_s / batch as f64;
    if batch != requested {
        eprintln!(
            "note: each courier sends up to {fixes_per_s:.1} fixes/s (its trip's rate x --speedup {}); at --batch \
             {requested} that is more frames than the server takes ({:.0} per second per connection, close 1008 \
             above): batching {batch} fixes per frame ({frames_per_s:.1} frames/s); a lower --rate or --speedup \
             keeps smaller frames",
            args.speedup,
            crate::simulate::SERVER_MAX_FRAMES_PER_S,
        );
    }
    if frames_per_s > crate::simulate::SERVER_MAX_FRAMES_PER_S {
        eprintln!(
            "warning: even {batch} fixes per frame is {frames_per_s:.0} frames/s, above the server's limit of {:.0}: \
             expect connections closed with 1008; lower --rate or --speedup",
            crate::simulate::SERVER_MAX_FRAMES_PER_S,
        );
    }
    batch
}

async fn simulate(config: SimConfig, json: bool) -> anyhow::Result<ExitCode> {
    let simulation = Simulation::prepare(config).await?;
    announce(&simulation);

    let (stop, stop_requests) = watch::channel(Stop::Run);
    tokio::spawn(async move {
        // first Ctrl-C: finish politely (wait for the last acks); second: now
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.send_replace(Stop::Drain);
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.send_replace(Stop::Abort);
            }
        }
        // keep the sender (and so "keep running") until the runtime ends
        std::future::pending::<()>().await;
    });
    let finished = simulation.run(stop_requests, true).await;

    let summary = finished.summary;
    summary
        .write_human(std::io::stderr().lock())
        .context("writing the summary")?;
    if json {
        write_json(&summary)?;
    }
    if let Some(err) = finished.error {
        return Err(err);
    }
    if summary.unacked > 0 && !summary.interrupted {
        eprintln!(
            "trackctl: error: {} fixes were never acknowledged; raise --drain-timeout or check the server's logs",
            summary.unacked
        );
        return Ok(ExitCode::from(crate::exit::ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

fn announce(simulation: &Simulation) {
    let orders = simulation.orders();
    if orders.is_empty() {
        let couriers: Vec<&str> = simulation.courier_ids().collect();
        eprintln!(
            "streaming as {} (no orders created: fixes go to the orders already assigned)",
            summarise_list(&couriers)
        );
        return;
    }
    let listed = if orders.len() <= LIST_ALL_ORDERS_UP_TO {
        orders.len()
    } else {
        LISTED_WHEN_MANY
    };
    for order in &orders[..listed] {
        eprintln!(
            "order {} ({} riding {})",
            order.order_id, order.courier_id, order.trip
        );
        eprintln!("  watch: {}", order.watch_url);
    }
    if listed < orders.len() {
        eprintln!(
            "... and {} more orders (--json lists them all)",
            orders.len() - listed
        );
    }
    if !std::io::stderr().is_terminal() {
        let s = if orders.len() == 1 { "" } else { "s" };
        eprintln!("streaming {} courier{s}", orders.len());
    }
}

fn summarise_list(items: &[&str]) -> String {
    match items {
        [one] => format!("courier {one}"),
        [first, .., last] => format!("{} couriers ({first} .. {last})", items.len()),
        [] => "no courier".to_string(),
    }
}

fn write_json(summary: &Summary) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, summary)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(stdout))
        .and_then(|()| stdout.flush())
        .context("writing the summary to stdout")
}

/// `sim-<unix seconds in base 36>-`: new every second, and short enough to read in a URL.
fn run_stamp() -> String {
    let mut seconds = u64::try_from(trackline_core::now_ms() / 1000).unwrap_or(0);
    let mut digits = Vec::new();
    loop {
        let digit = (seconds % 36) as u8;
        digits.push(if digit < 10 {
            b'0' + digit
        } else {
            b'a' + digit - 10
        });
        seconds /= 36;
        if seconds == 0 {
            break;
        }
    }
    digits.reverse();
    format!("sim-{}-", String::from_utf8_lossy(&digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_stamp_makes_valid_ids() {
        let prefix = run_stamp();
        assert!(
            prefix.starts_with("sim-") && prefix.ends_with('-'),
            "{prefix}"
        );
        assert!(trackline_core::OrderId::new(&format!("{prefix}9999")).is_ok());
    }

    #[test]
    fn long_courier_lists_are_shortened() {
        assert_eq!(summarise_list(&["a"]), "courier a");
        assert_eq!(summarise_list(&["a", "b", "c"]), "3 couriers (a .. c)");
    }
}
