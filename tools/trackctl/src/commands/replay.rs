//! `trackctl replay`: loads an order's history, lets go of the source, then plays the timeline
//! paced (or at once), optionally re-streaming the route as the courier of another order.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use trackline_core::filter::FilterConfig;
use trackline_core::fix::Fix;
use trackline_core::stops::StopKind;
use trackline_core::OrderId;

use crate::api::Api;
use crate::cli::{GlobalArgs, ReplayArgs};
use crate::courier::{
    run_courier, CourierPlan, CourierReport, CourierSettings, Stats, Stop, TokenSource,
};
use crate::exit::{is_broken_pipe, nothing_found};
use crate::history::{ops_token, Source};
use crate::replay::{self, Event};
use crate::trip::{Trip, TripPoint};
use crate::when::{format_clock, format_span, format_utc};
use trackline_rest::OrderDetail;

/// The pace without --speed or --fast on a terminal: a 10-minute delivery in a minute.
const TERMINAL_SPEED: f64 = 10.0;
/// Re-streaming "as fast as possible" still keeps the courier plausible to the server's GPS
/// filter: this fraction of the largest speedup at which every step of the route passes its
/// speed gate...
const FAST_STREAM_MARGIN: f64 = 0.8;
/// ...and never above this speedup (a trip that barely moves would otherwise be instant).
const FAST_STREAM_MAX: f64 = 50.0;

/// How the timeline is paced.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pace {
    /// Everything at once.
    Fast,
    /// This many times real time.
    Speed(f64),
}

pub fn run(global: &GlobalArgs, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let source = Source::open(global, args.data_dir.data_dir.as_deref())?;
    let (detail, fixes) = source.read_whole_order(&runtime, &args.order)?;
    let (from, to) = (args.range.from, args.range.to);
    let events = replay::window(replay::timeline(&detail, &fixes), from, to);
    if !events.iter().any(Event::is_fix) {
        return Err(nothing_found(if fixes.is_empty() {
            format!(
                "order {} has no stored fixes yet (status {})",
                args.order, detail.state.status
            )
        } else {
            format!(
                "order {} has no fixes{}; its fixes span {} .. {}",
                args.order,
                super::describe_range(from, to),
                format_utc(fixes[0].time_ms),
                format_utc(fixes[fixes.len() - 1].time_ms)
            )
        }));
    }
    let events = match args.every {
        Some(every) => replay::thin(events, i64::try_from(every.as_millis()).unwrap_or(i64::MAX)),
        None => events,
    };
    let in_window: Vec<Fix> = fixes
        .iter()
        .filter(|f| (from.unwrap_or(i64::MIN)..=to.unwrap_or(i64::MAX)).contains(&f.time_ms))
        .copied()
        .collect();
    let history_start_ms = fixes[0].time_ms;
    runtime.block_on(play(
        global,
        args,
        &detail,
        &in_window,
        &events,
        history_start_ms,
    ))
}

async fn play(
    global: &GlobalArgs,
    args: &ReplayArgs,
    detail: &OrderDetail,
    fixes: &[Fix],
    events: &[Event],
    history_start_ms: i64,
) -> anyhow::Result<ExitCode> {
    let mut pace = match (args.fast, args.speed) {
        (true, _) => Pace::Fast,
        (false, Some(speed)) => Pace::Speed(speed),
        (false, None) if args.to_order.is_some() => Pace::Speed(1.0),
        (false, None) if std::io::stdout().is_terminal() => Pace::Speed(TERMINAL_SPEED),
        (false, None) => Pace::Fast,
    };

    // re-streaming sets the pace of the timeline too, so the two stay in step
    let mut stream = None;
    if let Some(target) = &args.to_order {
        let trip = trip_of(&args.order, fixes);
        let speedup = match pace {
            Pace::Speed(speed) => speed,
            Pace::Fast => fast_stream_speedup(&trip),
        };
        pace = Pace::Speed(speedup);
        stream = Some(Restream::start(global, target, trip, speedup).await?);
    }

    announce(detail, fixes, events, pace);
    let first_fix_ms = fixes.first().map_or(0, |f| f.time_ms);
    let last_fix_ms = fixes.last().map_or(0, |f| f.time_ms);
    let bar = match pace {
        Pace::Speed(_) => crate::progress::timeline_bar(events.len() as u64),
        Pace::Fast => None,
    };
    let mut printing = true;
    if !args.json {
        printing = print(&bar, |out| replay::write_header(out), stream.is_some())?;
    }

    let started = Instant::now();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    for event in events {
        if let Pace::Speed(speed) = pace {
            // statuses before the first fix or after the last come without waiting for them
            let trip_ms = event.time_ms().clamp(first_fix_ms, last_fix_ms) - first_fix_ms;
            let due = started + Duration::from_secs_f64(trip_ms.max(0) as f64 / 1000.0 / speed);
            tokio::select! {
                () = sleep_until(due) => {}
                _ = &mut ctrl_c => {
                    interrupted = true;
                    break;
                }
            }
        }
        if printing {
            printing = print(
                &bar,
                |out| {
                    if args.json {
                        serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)?;
                        writeln!(out)
                    } else {
                        replay::write_row(out, event, history_start_ms)
                    }
                },
                stream.is_some(),
            )?;
        }
        if let Some(bar) = &bar {
            bar.inc(1);
            bar.set_message(format!("{} UTC", format_clock(event.time_ms())));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if interrupted {
        eprintln!("replay interrupted");
    }
    match stream {
        Some(stream) => stream.finish(interrupted).await,
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Writes through the bar (so it does not tear) to stdout. Returns whether to keep printing: a
/// closed stdout ends a plain replay (an error that exits 0), but a re-stream goes on without
/// its printout.
fn print(
    bar: &Option<ProgressBar>,
    write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>,
    streaming: bool,
) -> anyhow::Result<bool> {
    let written = || {
        let mut stdout = std::io::stdout().lock();
        write(&mut stdout).and_then(|()| stdout.flush())
    };
    let result = match bar {
        Some(bar) => bar.suspend(written),
        None => written(),
    };
    match result {
        Ok(()) => Ok(true),
        Err(err) => {
            let err = anyhow::Error::new(err).context("writing the timeline");
            if streaming && is_broken_pipe(&err) {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// One line on stderr about what is being played.
fn announce(detail: &OrderDetail, fixes: &[Fix], events: &[Event], pace: Pace) {
    let (Some(first), Some(last)) = (fixes.first(), fixes.last()) else {
        return;
    };
    let state = &detail.state;
    let courier = state
        .courier_id
        .as_ref()
        .map_or_else(String::new, |c| format!(", courier {c}"));
    let statuses = events.iter().filter(|e| !e.is_fix()).count();
    let route = detail.route.as_ref().map_or_else(
        || "no planned route".to_string(),
        |r| format!("planned route of {} points", r.len()),
    );
    let pace = match pace {
        Pace::Fast => "all at once".to_string(),
        Pace::Speed(x) => format!("at {x:.1}x real time"),
    };
    eprintln!(
        "order {} ({}{courier}): {} fixes {} .. {} UTC ({}), {statuses} status changes, {route}; {pace}",
        state.order_id,
        state.status,
        fixes.len(),
        format_utc(first.time_ms),
        format_clock(last.time_ms),
        format_span((last.time_ms - first.time_ms) as f64 / 1000.0),
    );
    if !state.stops.is_empty() {
        let stops: Vec<String> = state
            .stops
            .iter()
            .map(|stop| {
                let kind = match stop.kind {
                    StopKind::Pickup => "pickup",
                    StopKind::Dropoff => "dropoff",
                };
                let reached = stop.reached_at_ms.map_or_else(
                    || "not reached".to_string(),
                    |at| format!("reached {} UTC", format_clock(at)),
                );
                format!("{kind} {:.6},{:.6} {reached}", stop.lat, stop.lon)
            })
            .collect();
        eprintln!("stops: {}", stops.join("; "));
    }
}

/// The stored fixes as a trip the simulator can ride.
fn trip_of(order: &OrderId, fixes: &[Fix]) -> Trip {
    Trip {
        name: format!("order {order}"),
        points: fixes
            .iter()
            .map(|f| TripPoint {
                t_s: f.time_ms as f64 / 1000.0,
                pos: f.pos,
            })
            .collect(),
    }
}

/// The largest speedup at which every step of `trip` still passes the server's speed gate
/// (default [`FilterConfig`]: distance at most `max_speed x dt` plus both fixes' assumed noise;
/// the simulator sends no accuracy). Steps the recording itself makes too fast (a GPS jump) are
/// refused at any speedup and left out. `None` when no step constrains it.
fn plausible_speedup(trip: &Trip) -> Option<f64> {
    let gate = FilterConfig::default();
    let slack_m = 2.0 * gate.assumed_accuracy_m;
    trip.points
        .windows(2)
        .filter_map(|w| {
            let dt_s = w[1].t_s - w[0].t_s;
            let distance_m = w[0].pos.distance_m(w[1].pos);
            let possible = distance_m <= gate.max_speed_mps * dt_s + slack_m;
            (dt_s > 0.0 && distance_m > slack_m && possible)
                .then(|| gate.max_speed_mps * dt_s / (distance_m - slack_m))
        })
        .reduce(f64::min)
}

/// The speedup of `--fast --to-order`: a margin under [`plausible_speedup`].
fn fast_stream_speedup(trip: &Trip) -> f64 {
    plausible_speedup(trip)
        .map_or(FAST_STREAM_MAX, |s| s * FAST_STREAM_MARGIN)
        .clamp(1.0, FAST_STREAM_MAX)
}

/// The route going out again as the courier of another order.
struct Restream {
    target: OrderId,
    courier_id: String,
    stats: Arc<Stats>,
    stop: watch::Sender<Stop>,
    task: JoinHandle<anyhow::Result<CourierReport>>,
}

impl Restream {
    /// Checks the target order, gets a courier token and starts riding.
    async fn start(
        global: &GlobalArgs,
        target: &OrderId,
        trip: Trip,
        speedup: f64,
    ) -> anyhow::Result<Restream> {
        let api = Api::new(&global.server)?;
        let ops = ops_token(global).context("--to-order streams into the server")?;
        let Some(other) = api.order(&ops, target.as_str()).await? else {
            return Err(nothing_found(format!(
                "order {target} does not exist on {}; create it first (or pick one with `trackctl orders`)",
                api.base()
            )));
        };
        let Some(courier) = other.state.courier_id.clone() else {
            bail!(
                "order {target} has no courier to stream as: assign one first (POST /v1/orders/{target}/assign)"
            );
        };
        if !other.state.status.takes_fixes() {
            bail!(
                "order {target} is {}: fixes only go to assigned, picked-up or arriving orders; pick an active one (`trackctl orders`)",
                other.state.status
            );
        }
        if let Some(plausible) = plausible_speedup(&trip).filter(|p| speedup > *p) {
            eprintln!(
                "warning: at {speedup:.1}x parts of the route move faster than the server believes a courier can: \
                 expect impossible_speed rejections; --speed {:.1} or less keeps it plausible (--fast picks that)",
                (plausible * FAST_STREAM_MARGIN).max(1.0)
            );
        }
        let trip = Arc::new(trip);
        let (tokens, watch_token) = match global.secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => {
                let keys = crate::token::keys_from_secret(Some(secret))?;
                let watch = crate::token::mint(
                    &keys,
                    "watch",
                    Some(target.as_str()),
                    trackline_core::auth::DEFAULT_TTL_S,
                )?;
                (TokenSource::Keys(Box::new(keys)), watch)
            }
            None => {
                let watch = api.mint_token(&ops, "watch", Some(target.as_str())).await?;
                (
                    TokenSource::Server {
                        api: api.clone(),
                        ops_token: ops.clone(),
                    },
                    watch,
                )
            }
        };
        eprintln!(
            "streaming the route into order {target} as courier {courier} at {speedup:.1}x\n  watch: {}",
            api.watch_url(target.as_str(), &watch_token)
        );
        let settings = CourierSettings {
            ws_url: api.ws_url("/v1/courier/ws"),
            speedup,
            looping: false,
            batch: 1,
            retry_for: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        };
        let plan = CourierPlan {
            courier_id: courier.to_string(),
            trip,
            start_delay: Duration::ZERO,
        };
        let stats = Arc::new(Stats::default());
        let (stop, stop_requests) = watch::channel(Stop::Run);
        let task = tokio::spawn(run_courier(
            plan,
            settings,
            Arc::new(tokens),
            stats.clone(),
            stop_requests,
        ));
        Ok(Restream {
            target: target.clone(),
            courier_id: courier.to_string(),
            stats,
            stop,
            task,
        })
    }

    /// Waits for the last acks (stopping early when `interrupted`) and reports on stderr.
    async fn finish(self, interrupted: bool) -> anyhow::Result<ExitCode> {
        if interrupted {
            self.stop.send_replace(Stop::Drain);
        }
        let report = self
            .task
            .await
            .context("the streaming courier failed")?
            .with_context(|| format!("streaming into order {}", self.target))?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let codes: Vec<String> = self
            .stats
            .rejected_codes()
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let codes = if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        };
        eprintln!(
            "streamed {} fixes into order {} as courier {}: acked {}, rejected {}{codes}, unacked {}",
            load(&self.stats.generated),
            self.target,
            self.courier_id,
            load(&self.stats.acked),
            load(&self.stats.rejected),
            report.unacked
        );
        if report.unacked > 0 && !interrupted {
            bail!(
                "{} fixes were never acknowledged by the server; check its logs and run the replay again",
                report.unacked
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_core::LatLon;

    #[test]
    fn fast_restreams_stay_under_the_servers_speed_gate() {
        // ~11 m steps every second, one step of ~55 m (a burst), and one GPS jump of ~5 km
        let mut lat = 45.0;
        let mut points = Vec::new();
        for i in 0..20 {
            lat += match i {
                5 => 5e-4,
                12 => 0.045,
                13 => -0.045,
                _ => 1e-4,
            };
            points.push(TripPoint {
                t_s: f64::from(i),
                pos: LatLon::new(lat, 13.0),
            });
        }
        let trip = Trip {
            name: "car".into(),
            points,
        };
        // the 55.6 m step decides: 55 m/s x 1 s / (55.6 m - 30 m of noise)
        let plausible = plausible_speedup(&trip).unwrap();
        assert!((plausible - 2.15).abs() < 0.05, "{plausible}");
        let speedup = fast_stream_speedup(&trip);
        assert!((speedup - plausible * FAST_STREAM_MARGIN).abs() < 1e-9);
        let still = Trip {
            name: "still".into(),
            points: trip.points[..1].to_vec(),
        };
        assert_eq!(plausible_speedup(&still), None);
        assert_eq!(fast_stream_speedup(&still), FAST_STREAM_MAX);
    }
}
