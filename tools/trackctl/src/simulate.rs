//! Simulated couriers: each trip (CSV, GPX or random) rides as one courier app over the real courier stream, with
//! its order created first so it can be watched. The front door of the load generator: build a
//! [`SimConfig`], [`Simulation::prepare`] it, then [`Simulation::run`] it.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use trackline_core::auth::{TokenKeys, DEFAULT_TTL_S};
use trackline_core::order::OrderStatus;
use trackline_core::stops::{PlanStop, StopKind};
use trackline_core::{CourierId, OrderId};
use trackline_rest::{CreateOrder, Destination, PickupRequest};

use crate::api::{Api, HttpError};
use crate::courier::{
    run_courier, CourierPlan, CourierReport, CourierSettings, Stats, Stop, TokenSource,
};
use crate::progress::Progress;
use crate::schedule::Schedule;
use crate::trip::Trip;

/// Orders created (and statuses set) at once: enough to set up hundreds of couriers quickly
/// without a burst the server has to queue.
const SETUP_CONCURRENCY: usize = 8;
/// Couriers of one run start spread over this window instead of all in the same millisecond.
const START_SPREAD: Duration = Duration::from_secs(1);

/// The server's default limit on a courier's speed between two fixes (its GPS filter's
/// `max_speed_mps`); faster apparent movement is refused as an impossible jump.
pub const SERVER_MAX_SPEED_MPS: f64 = 55.0;

/// The server's default limit on frames per second on one courier connection
/// (`max_frames_per_s`); a courier sending faster is closed with 1008 (policy).
pub const SERVER_MAX_FRAMES_PER_S: f64 = 20.0;
/// What automatic batching aims at: below the limit, for timer jitter and uneven recordings.
const TARGET_FRAMES_PER_S: f64 = 0.8 * SERVER_MAX_FRAMES_PER_S;
/// The largest batch `--batch` takes.
pub const MAX_BATCH: usize = 500;

/// The most fixes per second (wall clock) any one courier sends: its trip's average rate
/// times the speedup, the highest over the trips. Zero when no trip has a duration.
pub fn peak_fixes_per_s(trips: &[Arc<Trip>], speedup: f64) -> f64 {
    trips.iter().filter_map(|t| t.rate_hz()).fold(0.0, f64::max) * speedup
}

/// The batch that keeps one courier's frames under the server's limit: `batch` when it already
/// does, else the smallest batch that brings `fixes_per_s` under [`TARGET_FRAMES_PER_S`] (at
/// most [`MAX_BATCH`]).
pub fn batch_for(fixes_per_s: f64, batch: usize) -> usize {
    let batch = batch.max(1);
    if !fixes_per_s.is_finite() || fixes_per_s / batch as f64 <= TARGET_FRAMES_PER_S {
        return batch;
    }
    let needed = (fixes_per_s / TARGET_FRAMES_PER_S).ceil() as usize;
    needed.clamp(batch, MAX_BATCH)
}

/// A trip that, at the chosen speedup, moves faster than the server believes a courier can.
#[derive(Debug, Clone, PartialEq)]
pub struct TooFast {
    pub trip: String,
    /// Its typical speed as the server will see it, metres per second.
    pub apparent_mps: f64,
    /// The largest speedup that keeps it plausible.
    pub max_speedup: f64,
}

/// The trips that `speedup` makes implausibly fast: time is compressed, so speeds are multiplied,
/// and the server rejects what a courier could not do (`impossible_speed`).
pub fn too_fast(trips: &[Arc<Trip>], speedup: f64) -> Vec<TooFast> {
    let mut found: Vec<TooFast> = Vec::new();
    for trip in trips {
        let Some(typical) = trip.typical_speed_mps().filter(|s| *s > 0.0) else {
            continue;
        };
        let apparent_mps = typical * speedup;
        if apparent_mps > SERVER_MAX_SPEED_MPS && !found.iter().any(|f| f.trip == trip.name) {
            // half the limit: real trips often go twice their median speed (open roads, GPS noise)
            let max_speedup = SERVER_MAX_SPEED_MPS * 0.5 / typical;
            found.push(TooFast {
                trip: trip.name.clone(),
                apparent_mps,
                max_speedup,
            });
        }
    }
    found
}

/// Everything a simulation needs; the CLI fills it from flags.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The trips; courier `i` rides trip `i % trips.len()`.
    pub trips: Vec<Arc<Trip>>,
    pub couriers: usize,
    /// Time runs this many times faster than recorded (and speeds look this many times higher).
    pub speedup: f64,
    /// Order `i` (from 1) is `{order_prefix}{i}`.
    pub order_prefix: String,
    /// Courier `i` (from 1) is `{courier_prefix}{i}`.
    pub courier_prefix: String,
    /// Create each courier's order (destination: the trip's end, route: its simplified path).
    pub create_orders: bool,
    /// Mark each order picked up at the start (with `pickup_at`: when its courier gets there)
    /// and delivered when its trip ends.
    pub deliver: bool,
    /// A pickup for each created order at this fraction of its trip's duration.
    pub pickup_at: Option<f64>,
    /// Orders each courier carries: its trip cut into this many equal stretches of time, one
    /// drop at the end of each, visited in that order.
    pub orders_per_courier: usize,
    /// Fixes per frame.
    pub batch: usize,
    /// Ride the trips back and forth until stopped.
    pub looping: bool,
    /// Give a courier up when the server is unreachable for this long.
    pub retry_for: Duration,
    /// Wait this long at most for the last acks.
    pub drain_timeout: Duration,
    /// Roughly one route point per this many metres.
    pub route_spacing_m: f64,
    /// The server's signing secret: mints every token locally.
    pub secret: Option<String>,
    /// Without a secret: an ops token (orders, and courier tokens from the server), or one
    /// courier's token (that courier only, no orders created).
    pub token: Option<String>,
}

/// The credentials a run ends up with.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// For creating orders and setting their status.
    pub ops_token: Option<String>,
    pub couriers: CourierCredentials,
}

/// How couriers get their tokens.
#[derive(Debug, Clone)]
pub enum CourierCredentials {
    /// Minted locally for any courier id.
    Keys(Box<TokenKeys>),
    /// Minted by the server with the ops token.
    FromServer,
    /// One courier token: the run is that single courier.
    Single { token: String, courier_id: String },
}

/// Decides how to authenticate from `--secret` and `--token`.
///
/// A secret wins: it mints everything. Without one, an ops token creates orders and asks the
/// server for courier tokens; a courier token can only stream as that one courier into orders
/// already assigned to it.
///
/// # Errors
/// When the credentials cannot do what was asked, saying what to pass instead.
pub fn resolve_credentials(
    secret: Option<&str>,
    token: Option<&str>,
    create_orders: bool,
    couriers: usize,
) -> anyhow::Result<Credentials> {
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        let keys = TokenKeys::new(secret.as_bytes());
        let ops_token =
            create_orders.then(|| keys.mint(&trackline_core::auth::Role::Ops, DEFAULT_TTL_S));
        return Ok(Credentials {
            ops_token,
            couriers: CourierCredentials::Keys(Box::new(keys)),
        });
    }
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        bail!(
            "simulate needs credentials: pass --secret (or set TRACKLINE_SECRET) to mint tokens, or --token with an \
             ops token (`trackctl token ops`)"
        );
    };
    let claimed = crate::token::peek(token)?;
    match claimed.role.as_str() {
        "ops" => Ok(Credentials {
            ops_token: Some(token.to_string()),
            couriers: CourierCredentials::FromServer,
        }),
        "courier" => {
            let courier_id = claimed.sub.context("the courier token names no courier")?;
            ensure!(
                couriers == 1,
                "a courier token streams as one courier ({courier_id}), but {couriers} were asked for: \
                 pass one trip and no --couriers, or pass --secret to mint a token per courier"
            );
            ensure!(
                !create_orders,
                "a courier token cannot create orders: add --no-create-orders to stream into the orders already \
                 assigned to courier {courier_id}, or pass an ops token or --secret"
            );
            Ok(Credentials {
                ops_token: None,
                couriers: CourierCredentials::Single {
                    token: token.to_string(),
                    courier_id,
                },
            })
        }
        other => bail!(
            "a {other} token cannot simulate couriers: pass --secret, or an ops token with --token"
        ),
    }
}

/// One simulated order, as announced at the start.
#[derive(Debug, Clone, Serialize)]
pub struct OrderInfo {
    pub order_id: String,
    pub courier_id: String,
    /// The trip file it rides.
    pub trip: String,
    /// The live-map page (`{server}/track/{order}?token=...`).
    pub watch_url: String,
}

/// A prepared run: orders created, couriers planned, nothing streamed yet.
#[derive(Debug)]
pub struct Simulation {
    api: Api,
    settings: CourierSettings,
    plans: Vec<CourierPlan>,
    orders: Vec<OrderInfo>,
    tokens: Arc<TokenSource>,
    ops_token: Option<String>,
    deliver: bool,
    pickup_at: Option<f64>,
}

/// The numbers of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub couriers: usize,
    pub orders: Vec<OrderInfo>,
    pub elapsed_s: f64,
    /// Stopped before the trips ended (Ctrl-C).
    pub interrupted: bool,
    pub fixes_generated: u64,
    /// Fixes written to sockets, resends included.
    pub fixes_sent: u64,
    pub fixes_resent: u64,
    pub frames: u64,
    pub acked: u64,
    pub rejected: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Fixes never acknowledged.
    pub unacked: u64,
    /// Fixes dropped from a full outbox.
    pub dropped: u64,
    pub reconnects: u64,
}

/// What [`Simulation::run`] hands back: the numbers always, and the first fatal error if any.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    pub error: Option<anyhow::Error>,
}

impl Simulation {
    /// Checks the configuration, works out the credentials and creates the orders.
    ///
    /// # Errors
    /// Bad ids or settings, missing credentials, or an order the server would not create.
    pub async fn prepare(config: SimConfig) -> anyhow::Result<Simulation> {
        ensure!(!config.trips.is_empty(), "no trips given");
        ensure!(config.couriers > 0, "--couriers must be at least 1");
        ensure!(
            config.speedup.is_finite() && config.speedup > 0.0,
            "--speedup must be a positive number"
        );
        ensure!(config.batch > 0, "--batch must be at least 1");
        ensure!(
            !config.deliver || config.create_orders,
            "--deliver needs the orders simulate creates; drop --no-create-orders"
        );
        ensure!(
            config.pickup_at.is_none() || config.create_orders,
            "--pickup-at gives the orders simulate creates a pickup; drop --no-create-orders"
        );
        ensure!(
            config.orders_per_courier >= 1,
            "--orders-per-courier must be at least 1"
        );
        ensure!(
            config.orders_per_courier == 1 || (config.create_orders && config.pickup_at.is_none()),
            "--orders-per-courier creates the orders itself, without a pickup: drop \
             --no-create-orders and --pickup-at"
        );
        let api = Api::new(&config.server)?;
        let credentials = resolve_credentials(
            config.secret.as_deref(),
            config.token.as_deref(),
            config.create_orders,
            config.couriers,
        )?;

        let courier_ids: Vec<String> = match &credentials.couriers {
            CourierCredentials::Single { courier_id, .. } => vec![courier_id.clone()],
            _ => (1..=config.couriers)
                .map(|i| format!("{}{i}", config.courier_prefix))
                .collect(),
        };
        for id in &courier_ids {
            CourierId::new(id)
                .with_context(|| format!("courier id {id:?} (from --courier-prefix)"))?;
        }
        let count = courier_ids.len();
        let plans: Vec<CourierPlan> = courier_ids
            .into_iter()
            .enumerate()
            .map(|(i, courier_id)| CourierPlan {
                courier_id,
                trip: config.trips[i % config.trips.len()].clone(),
                start_delay: START_SPREAD.mul_f64(i as f64 / count as f64),
            })
            .collect();

        let orders = if config.create_orders {
            let ops_token = credentials
                .ops_token
                .clone()
                .context("creating orders needs an ops token")?;
            create_orders(&api, &ops_token, &plans, &config).await?
        } else {
            Vec::new()
        };

        let tokens = match credentials.couriers {
            CourierCredentials::Keys(keys) => TokenSource::Keys(keys),
            CourierCredentials::Single { token, .. } => TokenSource::Fixed(token),
            CourierCredentials::FromServer => TokenSource::Server {
                api: api.clone(),
                ops_token: credentials
                    .ops_token
                    .clone()
                    .context("the server mints courier tokens only for ops")?,
            },
        };
        let settings = CourierSettings {
            ws_url: api.ws_url("/v1/courier/ws"),
            speedup: config.speedup,
            looping: config.looping,
            batch: config.batch,
            retry_for: config.retry_for,
            drain_timeout: config.drain_timeout,
        };
        Ok(Simulation {
            api,
            settings,
            plans,
            orders,
            tokens: Arc::new(tokens),
            ops_token: credentials.ops_token,
            deliver: config.deliver,
            pickup_at: config.pickup_at,
        })
    }

    /// The orders created, in courier order (empty with `create_orders` off).
    pub fn orders(&self) -> &[OrderInfo] {
        &self.orders
    }

    /// The courier ids that will ride.
    pub fn courier_ids(&self) -> impl Iterator<Item = &str> {
        self.plans.iter().map(|p| p.courier_id.as_str())
    }

    /// Fixes the run will produce, or `None` when it loops until stopped.
    pub fn total_fixes(&self) -> Option<u64> {
        self.plans.iter().try_fold(0u64, |total, plan| {
            let schedule = Schedule::new(
                plan.trip.clone(),
                0,
                self.settings.speedup,
                self.settings.looping,
            );
            schedule.len_hint().map(|n| total + n)
        })
    }

    /// Rides every courier until its trip ends and its fixes are acknowledged, or `stop` says
    /// otherwise. One courier's fatal error (a refused token, an unreachable server) stops the others.
    pub async fn run(self, mut stop: watch::Receiver<Stop>, show_progress: bool) -> Finished {
        let started = Instant::now();
        let stats = Arc::new(Stats::default());
        let couriers = self.plans.len();
        let progress = if show_progress {
            Progress::start(stats.clone(), self.total_fixes(), couriers)
        } else {
            None
        };

        let mut error = None;
        if self.deliver && self.pickup_at.is_none() {
            if let Err(err) = self.set_all_statuses(OrderStatus::PickedUp).await {
                error = Some(err);
            }
        }

        // the couriers listen to our own channel, so that one courier's failure can stop the rest
        let (to_couriers, couriers_stop) = watch::channel(Stop::Run);
        let mut riders = JoinSet::new();
        if error.is_none() {
            for plan in self.plans.iter().cloned() {
                let orders: Vec<String> = self
                    .orders
                    .iter()
                    .filter(|o| o.courier_id == plan.courier_id)
                    .map(|o| o.order_id.clone())
                    .collect();
                let ops = match (self.deliver, &self.ops_token) {
                    (true, Some(token)) if !orders.is_empty() => {
                        Some((self.api.clone(), token.clone()))
                    }
                    _ => None,
                };
                // What happens along the trip, when the courier gets there at the run's pace: the
                // pickup collected (--pickup-at), or each drop but the last delivered.
                let mut along: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
                if let Some((api, token)) = &ops {
                    let due = |fraction: f64| {
                        let trip = &plan.trip;
                        let trip_s = trip.points[trip.index_at(fraction)].t_s - trip.points[0].t_s;
                        plan.start_delay + Duration::from_secs_f64(trip_s / self.settings.speedup)
                    };
                    let mut at = |order: &str, status: OrderStatus, due: Duration| {
                        let (api, token, order) = (api.clone(), token.clone(), order.to_string());
                        along.push(tokio::spawn(async move {
                            tokio::time::sleep(due).await;
                            api.set_status(&token, &order, status).await
                        }));
                    };
                    if let Some(fraction) = self.pickup_at {
                        at(&orders[0], OrderStatus::PickedUp, due(fraction));
                    }
                    let drops = orders.len();
                    for (j, order) in orders.iter().enumerate().take(drops - 1) {
                        at(order, OrderStatus::Delivered, due(drop_fraction(j, drops)));
                    }
                }
                let last_drop =
                    ops.map(|(api, token)| (api, token, orders[orders.len() - 1].clone()));
                let task = run_courier(
                    plan,
                    self.settings.clone(),
                    self.tokens.clone(),
                    stats.clone(),
                    couriers_stop.clone(),
                );
                riders.spawn(async move {
                    let report = task.await;
                    for change in along {
                        if change.is_finished() || report.as_ref().is_ok_and(|r| r.completed) {
                            change.await??;
                        } else {
                            // stopped before the courier got there
                            change.abort();
                        }
                    }
                    let report = report?;
                    if let Some((api, token, order_id)) = last_drop {
                        if report.completed && report.unacked == 0 {
                            api.set_status(&token, &order_id, OrderStatus::Delivered)
                                .await?;
                        }
                    }
                    Ok::<CourierReport, anyhow::Error>(report)
                });
            }
        }

        let mut reports = Vec::with_capacity(couriers);
        let mut interrupted = false;
        while !riders.is_empty() {
            tokio::select! {
                joined = riders.join_next() => match joined {
                    Some(Ok(Ok(report))) => reports.push(report),
                    Some(Ok(Err(err))) => {
                        error.get_or_insert(err);
                        to_couriers.send_replace(Stop::Abort);
                    }
                    Some(Err(join_err)) => {
                        error.get_or_insert(anyhow!("a courier task failed: {join_err}"));
                        to_couriers.send_replace(Stop::Abort);
                    }
                    None => break,
                },
                changed = stop.changed() => {
                    let wanted = if changed.is_ok() { *stop.borrow_and_update() } else { Stop::Abort };
                    if wanted != Stop::Run {
                        interrupted = true;
                        if let Some(progress) = &progress {
                            if wanted == Stop::Drain {
                                progress.println("stopping: waiting for the last acks (Ctrl-C again to quit now)");
                            }
                        }
                    }
                    // a stop only ever escalates (Drain, then Abort)
                    if *to_couriers.borrow() != Stop::Abort {
                        to_couriers.send_replace(wanted);
                    }
                    if changed.is_err() {
                        // the caller is gone; keep joining the couriers, which now abort
                        stop = watch::channel(Stop::Abort).1;
                    }
                }
            }
        }
        if let Some(progress) = progress {
            progress.finish();
        }

        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let summary = Summary {
            couriers,
            orders: self.orders.clone(),
            elapsed_s: started.elapsed().as_secs_f64(),
            interrupted,
            fixes_generated: load(&stats.generated),
            fixes_sent: load(&stats.sent),
            fixes_resent: load(&stats.resent),
            frames: load(&stats.frames),
            acked: load(&stats.acked),
            rejected: load(&stats.rejected),
            rejected_by_code: stats.rejected_codes(),
            unacked: load(&stats.unacked),
            dropped: load(&stats.dropped),
            reconnects: load(&stats.reconnects),
        };
        Finished { summary, error }
    }

    async fn set_all_statuses(&self, status: OrderStatus) -> anyhow::Result<()> {
        let token = self
            .ops_token
            .as_deref()
            .context("setting order statuses needs an ops token")?;
        stream::iter(&self.orders)
            .map(|order| self.api.set_status(token, &order.order_id, status))
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

async fn create_orders(
    api: &Api,
    ops_token: &str,
    plans: &[CourierPlan],
    config: &SimConfig,
) -> anyhow::Result<Vec<OrderInfo>> {
    let drops = config.orders_per_courier;
    let mut requests = Vec::with_capacity(plans.len() * drops);
    for (i, plan) in plans.iter().enumerate() {
        let trip = &plan.trip;
        let last = trip.points.len() - 1;
        // an empty plan is left out, as if there were none
        let route_of = |leg: &Trip| {
            let route: Vec<[f64; 2]> = leg
                .simplified_route(config.route_spacing_m)
                .iter()
                .map(|p| [p.lat, p.lon])
                .collect();
            Some(route).filter(|route| route.len() >= 2)
        };
        let mut from = 0;
        for j in 0..drops {
            let order_id = if drops == 1 {
                format!("{}{}", config.order_prefix, i + 1)
            } else {
                format!("{}{}-{}", config.order_prefix, i + 1, j + 1)
            };
            OrderId::new(&order_id)
                .with_context(|| format!("order id {order_id:?} (from --order-prefix)"))?;
            let to = if j + 1 == drops {
                last
            } else {
                trip.index_at(drop_fraction(j, drops))
            };
            let (route, pickup) = match config.pickup_at {
                None => (route_of(&trip.leg(from..=to)), None),
                Some(fraction) => {
                    let k = trip.index_at(fraction);
                    let at = trip.points[k].pos;
                    let pickup = PickupRequest {
                        lat: at.lat,
                        lon: at.lon,
                        ready_at_ms: None,
                        dwell_s: Some(0.0),
                        route: route_of(&trip.leg(0..=k)),
                    };
                    (route_of(&trip.leg(k..=last)), Some(pickup))
                }
            };
            let at = trip.points[to].pos;
            let order = CreateOrder {
                order_id,
                destination: Destination {
                    lat: at.lat,
                    lon: at.lon,
                    // the recording did not stop at a drop along the way: no handover time
                    dwell_s: (drops > 1).then_some(0.0),
                },
                courier_id: Some(plan.courier_id.clone()),
                route,
                promised_at_ms: None,
                pickup,
            };
            requests.push((order, plan));
            from = to;
        }
    }
    let created: Vec<OrderInfo> = stream::iter(requests)
        .map(|(order, plan)| async move {
            let answer = api.create_order(ops_token, &order).await.map_err(|err| {
                if err.downcast_ref::<HttpError>().is_some_and(|e| e.status == 409) {
                    err.context(format!(
                        "order {} exists already: pick another --order-prefix (the default is new on every run)",
                        order.order_id
                    ))
                } else {
                    err
                }
            })?;
            Ok::<_, anyhow::Error>(OrderInfo {
                watch_url: api.watch_url(answer.order_id.as_str(), &answer.watch_token),
                order_id: answer.order_id.to_string(),
                courier_id: plan.courier_id.clone(),
                trip: plan.trip.name.clone(),
            })
        })
        // ordered, so order i belongs to courier i in what we print
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await?;
    if drops > 1 {
        // The orders were created concurrently, so their order of assignment is not the trip's:
        // each courier's plan says it, as a dispatcher's would.
        stream::iter(plans)
            .map(|plan| {
                let stops = created
                    .iter()
                    .filter(|o| o.courier_id == plan.courier_id)
                    .map(|o| {
                        Ok(PlanStop {
                            order_id: OrderId::new(&o.order_id)?,
                            kind: StopKind::Dropoff,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>();
                async move {
                    let plan_of = trackline_rest::CourierPlan { stops: stops? };
                    api.set_plan(ops_token, &plan.courier_id, &plan_of).await
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(created)
}

/// Where drop `j` (from 0) of `drops` is along a trip: the end of its equal stretch of time.
fn drop_fraction(j: usize, drops: usize) -> f64 {
    (j + 1) as f64 / drops as f64
}

impl Summary {
    /// The summary for people, a few lines.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_human(&self, mut out: impl Write) -> io::Result<()> {
        let how = if self.interrupted {
            "stopped after"
        } else {
            "done in"
        };
        writeln!(
            out,
            "{} courier{} {how} {:.1}s: {} fix{}, {} sent in {} frames ({} resent, {} reconnect{})",
            self.couriers,
            plural(self.couriers as u64),
            self.elapsed_s,
            self.fixes_generated,
            if self.fixes_generated == 1 { "" } else { "es" },
            self.fixes_sent,
            self.frames,
            self.fixes_resent,
            self.reconnects,
            plural(self.reconnects),
        )?;
        let codes: Vec<String> = self
            .rejected_by_code
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let codes = if codes.is_empty() {
            String::new()
        } else {
            format!(" ({})", codes.join(", "))
        };
        writeln!(
            out,
            "acked {}, rejected {}{codes}, unacked {}",
            self.acked, self.rejected, self.unacked
        )?;
        if self.dropped > 0 {
            writeln!(out, "dropped {} fixes from a full outbox", self.dropped)?;
        }
        Ok(())
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        TokenKeys::new(b"s3cret")
    }

    #[test]
    fn a_secret_mints_everything() {
        let creds = resolve_credentials(Some("s3cret"), None, true, 5).unwrap();
        let ops = creds.ops_token.unwrap();
        assert_eq!(
            keys().verify(&ops).unwrap().0,
            trackline_core::auth::Role::Ops
        );
        assert!(matches!(creds.couriers, CourierCredentials::Keys(_)));
        assert!(resolve_credentials(Some("s3cret"), None, false, 1)
            .unwrap()
            .ops_token
            .is_none());
    }

    #[test]
    fn an_ops_token_creates_orders_and_asks_the_server_for_courier_tokens() {
        let ops = crate::token::mint(&keys(), "ops", None, 60).unwrap();
        let creds = resolve_credentials(None, Some(&ops), true, 3).unwrap();
        assert_eq!(creds.ops_token.as_deref(), Some(ops.as_str()));
        assert!(matches!(creds.couriers, CourierCredentials::FromServer));
    }

    #[test]
    fn a_courier_token_is_one_courier_without_orders() {
        let courier = crate::token::mint(&keys(), "courier", Some("bike-7"), 60).unwrap();
        let creds = resolve_credentials(None, Some(&courier), false, 1).unwrap();
        assert!(
            matches!(&creds.couriers, CourierCredentials::Single { courier_id, .. } if courier_id == "bike-7")
        );
        let many = resolve_credentials(None, Some(&courier), false, 2)
            .unwrap_err()
            .to_string();
        assert!(many.contains("one courier"), "{many}");
        let orders = resolve_credentials(None, Some(&courier), true, 1)
            .unwrap_err()
            .to_string();
        assert!(orders.contains("--no-create-orders"), "{orders}");
    }

    #[test]
    fn no_credentials_or_a_watch_token_say_what_to_pass() {
        let none = resolve_credentials(None, None, true, 1)
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("--secret") && none.contains("TRACKLINE_SECRET"),
            "{none}"
        );
        let empty = resolve_credentials(Some(""), Some(" "), true, 1)
            .unwrap_err()
            .to_string();
        assert!(empty.contains("--secret"), "{empty}");
        let watch = crate::token::mint(&keys(), "watch", Some("o1"), 60).unwrap();
        assert!(resolve_credentials(None, Some(&watch), false, 1).is_err());
    }

    #[test]
    fn speedups_that_outrun_the_server_are_found() {
        use crate::trip::TripPoint;
        use trackline_core::LatLon;
        // ~11 m every second: 11 m/s, a car in town
        let points = (0..10)
            .map(|i| TripPoint {
                t_s: f64::from(i),
                pos: LatLon::new(45.0 + f64::from(i) * 1e-4, 13.0),
            })
            .collect();
        let trips = vec![Arc::new(Trip {
            name: "car".into(),
            points,
        })];
        assert!(too_fast(&trips, 4.0).is_empty());
        let found = too_fast(&trips, 10.0);
        assert_eq!(found.len(), 1);
        assert!((found[0].apparent_mps - 111.0).abs() < 2.0, "{found:?}");
        assert!((found[0].max_speedup - 2.5).abs() < 0.1, "{found:?}");
    }

    #[test]
    fn batches_keep_frames_under_the_server_limit() {
        use crate::trip::TripPoint;
        use trackline_core::LatLon;
        // already fine: left alone
        assert_eq!(batch_for(10.0, 1), 1);
        assert_eq!(batch_for(100.0, 10), 10);
        // 1 fix/s x 50 couriers is not the question: it is per connection
        assert_eq!(batch_for(20.0, 1), 2);
        assert_eq!(batch_for(100.0, 1), 7);
        assert!(100.0 / batch_for(100.0, 1) as f64 <= SERVER_MAX_FRAMES_PER_S);
        assert_eq!(batch_for(1e9, 1), MAX_BATCH);
        // a 1 Hz trip at 30x is 30 fixes/s
        let points = (0..=10)
            .map(|i| TripPoint {
                t_s: f64::from(i),
                pos: LatLon::new(45.0, 13.0),
            })
            .collect();
        let trip = Arc::new(Trip {
            name: "t".into(),
            points,
        });
        let rate = peak_fixes_per_s(std::slice::from_ref(&trip), 30.0);
        assert!((rate - 30.0).abs() < 1e-9);
        assert!((peak_fixes_per_s(&[Arc::new(trip.resampled(0.5))], 30.0) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn summary_reads_like_a_sentence() {
        let summary = Summary {
            couriers: 2,
            orders: Vec::new(),
            elapsed_s: 12.34,
            interrupted: false,
            fixes_generated: 208,
            fixes_sent: 210,
            fixes_resent: 2,
            frames: 209,
            acked: 207,
            rejected: 1,
            rejected_by_code: BTreeMap::from([("impossible_speed".to_string(), 1)]),
            unacked: 0,
            dropped: 0,
            reconnects: 1,
        };
        let mut text = Vec::new();
        summary.write_human(&mut text).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "2 couriers done in 12.3s: 208 fixes, 210 sent in 209 frames (2 resent, 1 reconnect)\n\
             acked 207, rejected 1 (impossible_speed 1), unacked 0\n"
        );
    }
}
