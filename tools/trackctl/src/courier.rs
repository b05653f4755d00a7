//! One simulated courier app: rides its schedule and pushes its fixes into the client crate's
//! courier, which keeps the outbox of unacknowledged fixes and the WebSocket to
//! `/v1/courier/ws` open, reconnecting with backoff and resending with the same seqs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};
use trackline_client::{
    ConnectError, Courier, CourierEvent, CourierOptions, Error, OnEvent, RenewToken,
};
use trackline_core::auth::{TokenKeys, DEFAULT_TTL_S};
use trackline_proto::{to_e7, v1};

pub use trackline_client::first_seq;

use crate::api::Api;
use crate::schedule::{PlannedFix, Schedule};
use crate::trip::Trip;

/// A phone keeps about a day of fixes while offline; at one fix a second that is this many.
const MAX_UNACKED: usize = 100_000;
/// Fixes per frame when flushing a backlog: about 20 KB of protobuf, well under any frame limit.
const MAX_FRAME_FIXES: usize = 500;

/// What one courier rides.
#[derive(Debug, Clone)]
pub struct CourierPlan {
    pub courier_id: String,
    pub trip: Arc<Trip>,
    /// Start this long after the others, so many couriers do not send in lockstep.
    pub start_delay: Duration,
}

/// Settings shared by every courier of a run.
#[derive(Debug, Clone)]
pub struct CourierSettings {
    /// `ws://.../v1/courier/ws`
    pub ws_url: String,
    pub speedup: f64,
    pub looping: bool,
    /// Fixes per frame while riding (a backlog after a reconnect goes out in bigger frames).
    pub batch: usize,
    /// Give up when the server cannot be reached (or acknowledges nothing) for this long.
    pub retry_for: Duration,
    /// After the last fix (or a stop), wait this long at most for the remaining acks.
    pub drain_timeout: Duration,
}

/// Where courier tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// One token we were given; it cannot be renewed.
    Fixed(String),
    /// Minted locally from the server's secret.
    Keys(Box<TokenKeys>),
    /// Minted by the server (`POST /v1/tokens`) with an ops token.
    Server { api: Api, ops_token: String },
}

impl TokenSource {
    /// A courier token for `courier_id`.
    ///
    /// # Errors
    /// When the id is invalid or the server refuses to mint.
    pub async fn courier_token(&self, courier_id: &str) -> anyhow::Result<String> {
        match self {
            TokenSource::Fixed(token) => Ok(token.clone()),
            TokenSource::Keys(keys) => {
                crate::token::mint(keys, "courier", Some(courier_id), DEFAULT_TTL_S)
            }
            TokenSource::Server { api, ops_token } => {
                api.mint_token(ops_token, "courier", Some(courier_id)).await
            }
        }
    }

    fn renewable(&self) -> bool {
        !matches!(self, TokenSource::Fixed(_))
    }
}

/// How the run wants couriers to behave now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep riding.
    Run,
    /// Stop producing fixes; wait (up to the drain timeout) for the outstanding acks.
    Drain,
    /// Stop at once.
    Abort,
}

/// Counters shared by every courier of a run, read by the progress display and the summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// Fixes produced by the schedules (each counted once).
    pub generated: AtomicU64,
    /// Fixes written to a socket, resends included.
    pub sent: AtomicU64,
    /// Of those, fixes sent again after a reconnect.
    pub resent: AtomicU64,
    pub frames: AtomicU64,
    /// Fixes acknowledged as durable.
    pub acked: AtomicU64,
    /// Fixes refused by the server (see `rejected_by_code`).
    pub rejected: AtomicU64,
    /// Fixes dropped from a full outbox.
    pub dropped: AtomicU64,
    /// Couriers connected right now.
    pub connected: AtomicU64,
    /// Successful connections after a courier's first.
    pub reconnects: AtomicU64,
    /// Fixes never acknowledged, counted as each courier ends.
    pub unacked: AtomicU64,
    pub rejected_by_code: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn reject(&self, code: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        // a poisoned lock only means another courier panicked mid-increment: the counts are still usable
        let mut codes = self
            .rejected_by_code
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let code = if code.is_empty() { "unspecified" } else { code };
        *codes.entry(code.to_string()).or_default() += 1;
    }

    /// The rejected counts by code.
    pub fn rejected_codes(&self) -> BTreeMap<String, u64> {
        self.rejected_by_code
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// How one courier ended.
#[derive(Debug, Clone)]
pub struct CourierReport {
    pub courier_id: String,
    /// Fixes never acknowledged (still in the outbox at the end).
    pub unacked: usize,
    /// True when the whole trip was ridden (not stopped early).
    pub completed: bool,
}

/// Rides `plan` until its trip ends and everything is acknowledged, the drain timeout passes, or
/// `stop` says so. The stream itself (outbox, acks, resends, reconnects) is the client crate's
/// [`Courier`]; this drives it with the schedule and counts what it reports.
///
/// # Errors
/// When the server refuses the courier token (401/403), or cannot be reached for `retry_for`.
pub async fn run_courier(
    plan: CourierPlan,
    settings: CourierSettings,
    tokens: Arc<TokenSource>,
    stats: Arc<Stats>,
    stop: watch::Receiver<Stop>,
) -> anyhow::Result<CourierReport> {
    let id = plan.courier_id.clone();
    let token = tokens
        .courier_token(&id)
        .await
        .with_context(|| format!("courier {id}: getting a token"))?;
    let options = CourierOptions {
        outbox_capacity: MAX_UNACKED,
        max_frame_fixes: MAX_FRAME_FIXES,
        batch: settings.batch.max(1),
        // while riding only whole batches go out; a reconnect or the drain sends the rest
        linger: Duration::MAX,
        // the batch is chosen to stay under the server's limit (simulate's batch_for); pacing at
        // the limit itself only guards against a burst, as when a reconnect flushes a backlog
        max_frames_per_s: crate::simulate::SERVER_MAX_FRAMES_PER_S,
        give_up_after: Some(settings.retry_for),
        renew_token: tokens
            .renewable()
            .then(|| renewer(tokens.clone(), id.clone())),
        on_event: Some(counter(stats.clone(), id.clone())),
        ..CourierOptions::default()
    };
    let courier = Courier::connect(&settings.ws_url, &token, options)
        .with_context(|| format!("courier {id}: starting its stream"))?;
    let ridden = ride(&plan, &settings, &courier, &stats, stop).await;
    let unacked = courier.unacked();
    let closed = courier.close().await;
    Stats::add(&stats.unacked, unacked);
    let completed = ridden?;
    if let Err(err) = closed {
        return Err(explain(&id, &settings.ws_url, err));
    }
    Ok(CourierReport {
        courier_id: plan.courier_id,
        unacked,
        completed,
    })
}

/// Fresh courier tokens for the stream when the one in use is refused or expires.
fn renewer(tokens: Arc<TokenSource>, id: String) -> RenewToken {
    Arc::new(move || {
        let (tokens, id) = (tokens.clone(), id.clone());
        Box::pin(async move {
            tokens
                .courier_token(&id)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    })
}

/// The run's counters, kept from what the stream reports.
fn counter(stats: Arc<Stats>, id: String) -> OnEvent {
    Arc::new(move |event: &CourierEvent| match event {
        CourierEvent::Connected { reconnect, unacked } => {
            info!(courier = %id, unacked, "connected");
            stats.connected.fetch_add(1, Ordering::Relaxed);
            if *reconnect {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        CourierEvent::Disconnected { reason, unacked } => {
            info!(courier = %id, unacked, why = %reason, "disconnected");
            stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        CourierEvent::Sent { fixes, resent } => {
            Stats::add(&stats.sent, *fixes);
            Stats::add(&stats.resent, *resent);
            stats.frames.fetch_add(1, Ordering::Relaxed);
        }
        CourierEvent::Acked { fixes, .. } => Stats::add(&stats.acked, *fixes),
        CourierEvent::Rejected(rejected) => {
            debug!(courier = %id, seq = rejected.seq, code = %rejected.code, reason = %rejected.reason, "fix rejected");
            stats.reject(&rejected.code);
        }
        CourierEvent::Dropped { .. } => Stats::add(&stats.dropped, 1),
    })
}

/// The courier's end as the CLI tells it: what went wrong and what to do about it.
fn explain(id: &str, url: &str, err: Error) -> anyhow::Error {
    match err {
        Error::Unreachable(limit, why) => anyhow!(
            "courier {id}: no acknowledgement from the server for {}s (last problem: {why}); \
             is the server running at {url}?",
            limit.as_secs()
        ),
        Error::Refused(ConnectError::Refused { status, body }) => {
            let hint = match status {
                401 => "the token is expired or signed with another secret: pass the server's --secret, or a fresh token",
                403 => "the token is not a courier token: pass --secret, or an ops token or a courier token with --token",
                _ => "",
            };
            anyhow!(
                "courier {id}: the server refused the courier stream with {status}: {body}; {hint}"
            )
        }
        other => anyhow!("courier {id}: {other}"),
    }
}

/// The schedule's loop; returns whether the whole trip was ridden.
async fn ride(
    plan: &CourierPlan,
    settings: &CourierSettings,
    courier: &Courier,
    stats: &Stats,
    mut stop: watch::Receiver<Stop>,
) -> anyhow::Result<bool> {
    let id = &plan.courier_id;
    let start = Instant::now() + plan.start_delay;
    let start_ms =
        trackline_core::now_ms() + i64::try_from(plan.start_delay.as_millis()).unwrap_or(0);
    let mut schedule = Schedule::new(
        plan.trip.clone(),
        start_ms,
        settings.speedup,
        settings.looping,
    )
    .peekable();
    let mut next_seq = courier.next_seq();
    loop {
        match *stop.borrow() {
            Stop::Abort => return Ok(false),
            Stop::Drain => break,
            Stop::Run => {}
        }
        let Some(due) = schedule.peek().map(|fix| start + fix.due) else {
            break;
        };
        tokio::select! {
            () = sleep_until(due) => {
                // every fix that is due, several at once when we were held up
                let now = Instant::now();
                while let Some(planned) = schedule.next_if(|fix| start + fix.due <= now) {
                    courier.push(wire_fix(&planned, next_seq)).await.map_err(|err| explain(id, &settings.ws_url, err))?;
                    next_seq += 1;
                    stats.generated.fetch_add(1, Ordering::Relaxed);
                }
            }
            err = courier.ended() => return Err(explain(id, &settings.ws_url, err)),
            changed = stop.changed() => {
                if changed.is_err() {
                    // the run is gone: nobody is left to wait for us
                    return Ok(false);
                }
            }
        }
    }
    let completed = schedule.peek().is_none();
    // drain: what is left goes out now, and the acks are awaited up to the drain timeout (an
    // abort cuts the wait short)
    tokio::select! {
        drained = courier.flush(settings.drain_timeout) => match drained {
            Ok(()) | Err(Error::Timeout(..)) => {}
            Err(err) => return Err(explain(id, &settings.ws_url, err)),
        },
        () = aborted(stop) => {}
    }
    Ok(completed)
}

/// Resolves once the run asks to stop at once (or is gone).
async fn aborted(mut stop: watch::Receiver<Stop>) {
    while *stop.borrow_and_update() != Stop::Abort {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The wire form of a planned fix.
pub fn wire_fix(planned: &PlannedFix, seq: u64) -> v1::Fix {
    v1::Fix {
        seq,
        time_ms: planned.time_ms,
        lat_e7: to_e7(planned.pos.lat),
        lon_e7: to_e7(planned.pos.lon),
        // the recorded trips carry no accuracy and no speed: left unset, which means unknown
        accuracy_m: None,
        speed_mps: None,
        heading_deg: (planned.heading_deg >= 0.0).then_some(planned.heading_deg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_core::LatLon;

    #[test]
    fn planned_fixes_go_on_the_wire_in_e7() {
        let planned = PlannedFix {
            due: Duration::ZERO,
            time_ms: 1_700_000_000_123,
            pos: LatLon::new(45.273518851, 13.7142099626),
            heading_deg: 90.0,
        };
        let fix = wire_fix(&planned, 42);
        assert_eq!(
            (fix.seq, fix.time_ms, fix.lat_e7, fix.lon_e7),
            (42, 1_700_000_000_123, 452_735_189, 137_142_100)
        );
        assert_eq!(
            (fix.speed_mps, fix.heading_deg, fix.accuracy_m),
            (None, Some(90.0), None)
        );
        let standing = wire_fix(
            &PlannedFix {
                heading_deg: -1.0,
                ..planned
            },
            43,
        );
        assert_eq!(standing.heading_deg, None);
    }

    #[test]
    fn first_seq_grows_with_time() {
        let a = first_seq();
        std::thread::sleep(Duration::from_millis(2));
        assert!(first_seq() > a);
        assert!(a < (1 << 53));
    }
}
