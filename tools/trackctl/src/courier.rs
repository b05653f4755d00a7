//! One simulated courier app: rides its schedule, keeps an outbox of unacknowledged fixes, and
//! keeps a WebSocket to `/v1/courier/ws` open, reconnecting with backoff and resending what the
//! server has not acknowledged, with the same seqs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info};
use trackline_core::auth::{TokenKeys, DEFAULT_TTL_S};
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{to_e7, Message as _};

use crate::api::Api;
use crate::buffer::UnackedBuffer;
use crate::schedule::{PlannedFix, Schedule};
use crate::trip::Trip;

/// A phone keeps about a day of fixes while offline; at one fix a second that is this many.
const MAX_UNACKED: usize = 100_000;
/// Fixes per frame when flushing a backlog: about 20 KB of protobuf, well under any frame limit.
const MAX_FRAME_FIXES: usize = 500;
/// A TCP connect plus WebSocket handshake slower than this is a failed attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect delays double from the first to the last (with jitter so couriers spread out).
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A refused token is renewed at most this often, so a server that refuses every token is an error,
/// not a loop.
const TOKEN_RENEW_MIN_INTERVAL: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

/// The first seq of a run: microseconds-ish since the epoch, so a rerun for the same courier id
/// always starts above anything an earlier run sent (unless that run sent over 1000 fixes per
/// millisecond). Stays below 2^53, so JSON readers keep it exact.
pub fn first_seq() -> u64 {
    u64::try_from(trackline_core::now_ms())
        .unwrap_or(0)
        .saturating_mul(1000)
}

/// Rides `plan` until its trip ends and everything is acknowledged, the drain timeout passes, or
/// `stop` says so.
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
    // owned here, so that what is left is counted and closed however the ride ends
    let mut outbox = UnackedBuffer::new(MAX_UNACKED);
    let mut ws: Option<Ws> = None;
    let ridden = ride(
        &plan,
        &settings,
        &tokens,
        &stats,
        stop,
        &mut outbox,
        &mut ws,
    )
    .await;
    if let Some(mut conn) = ws.take() {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
        // a polite goodbye; the server treats a vanished socket the same way, so do not wait long
        let _ = timeout(Duration::from_secs(1), conn.close(None)).await;
    }
    Stats::add(&stats.unacked, outbox.len());
    let completed = ridden?;
    Ok(CourierReport {
        courier_id: plan.courier_id,
        unacked: outbox.len(),
        completed,
    })
}

/// The courier's loop; returns whether the whole trip was ridden.
async fn ride(
    plan: &CourierPlan,
    settings: &CourierSettings,
    tokens: &TokenSource,
    stats: &Stats,
    mut stop: watch::Receiver<Stop>,
    outbox: &mut UnackedBuffer,
    ws: &mut Option<Ws>,
) -> anyhow::Result<bool> {
    let id = plan.courier_id.clone();
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
    let mut next_seq = first_seq();
    let mut token = tokens
        .courier_token(&id)
        .await
        .with_context(|| format!("courier {id}: getting a token"))?;
    let mut token_renewed_at: Option<Instant> = None;

    let mut ever_connected = false;
    // a fresh connection flushes the whole outbox at once, whatever the batch size
    let mut flush_all = false;
    let mut backoff = Backoff::default();
    let mut reconnect_at = Instant::now();
    // since when nothing has worked, and why: set by a failure, cleared by an ack
    let mut failing: Option<(Instant, String)> = None;
    let mut drain_deadline: Option<Instant> = None;
    let mut frame_limit = MAX_FRAME_FIXES;

    loop {
        let wanted = *stop.borrow();
        if wanted == Stop::Abort {
            break;
        }
        let riding = wanted == Stop::Run && schedule.peek().is_some();
        if !riding {
            if outbox.is_empty() {
                break;
            }
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + settings.drain_timeout);
            if Instant::now() >= deadline {
                break;
            }
        }
        if let Some((since, why)) = &failing {
            if since.elapsed() >= settings.retry_for {
                bail!(
                    "courier {id}: no acknowledgement from the server for {}s (last problem: {why}); \
                     is the server running at {}?",
                    settings.retry_for.as_secs(),
                    settings.ws_url
                );
            }
        }

        if let Some(conn) = ws.as_mut() {
            let sent = send_ready(
                conn,
                outbox,
                settings,
                frame_limit,
                flush_all || !riding,
                stats,
            )
            .await;
            match sent {
                Ok(()) => flush_all = false,
                Err(err) => {
                    let why = format!("sending: {err}");
                    lose(
                        ws,
                        outbox,
                        stats,
                        &mut backoff,
                        &mut reconnect_at,
                        &mut failing,
                        &id,
                        why,
                    );
                    continue;
                }
            }
        }

        let next_due = riding
            .then(|| schedule.peek().map(|fix| start + fix.due))
            .flatten();
        tokio::select! {
            () = sleep_until(next_due.unwrap_or(start)), if next_due.is_some() => {
                // every fix that is due, several at once when we were held up (e.g. connecting)
                let now = Instant::now();
                while let Some(planned) = schedule.next_if(|fix| start + fix.due <= now) {
                    let dropped_before = outbox.dropped();
                    outbox.push(wire_fix(&planned, next_seq)).map_err(|e| anyhow!("courier {id}: seq {} after {}", e.seq, e.last))?;
                    next_seq += 1;
                    stats.generated.fetch_add(1, Ordering::Relaxed);
                    Stats::add(&stats.dropped, usize::try_from(outbox.dropped() - dropped_before).unwrap_or(0));
                }
            }
            message = next_message(ws) => match message {
                Some(Ok(Message::Binary(bytes))) => match v1::ServerFrame::decode(bytes.as_ref()) {
                    Ok(v1::ServerFrame { kind: Some(Kind::Ack(ack)) }) => {
                        Stats::add(&stats.acked, outbox.ack(ack.seq));
                        backoff.reset();
                        failing = None;
                    }
                    Ok(v1::ServerFrame { kind: Some(Kind::Rejected(rejected)) }) => {
                        debug!(courier = %id, seq = rejected.seq, code = %rejected.code, reason = %rejected.reason, "fix rejected");
                        if outbox.reject(rejected.seq) {
                            stats.reject(&rejected.code);
                        }
                    }
                    Ok(_) => debug!(courier = %id, "empty server frame"),
                    Err(err) => debug!(courier = %id, %err, "undecodable server frame"),
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((None, String::new()), |f| (Some(f.code), f.reason.to_string()));
                    match code {
                        // too big: send smaller frames from now on
                        Some(CloseCode::Size) => frame_limit = (frame_limit / 2).max(1),
                        // token expired (or rate limited): a fresh token does not hurt either way
                        Some(CloseCode::Policy) if tokens.renewable() => {
                            token = tokens.courier_token(&id).await.with_context(|| format!("courier {id}: renewing its token"))?;
                        }
                        _ => {}
                    }
                    let why = format!("server closed the connection ({}) {reason}", code.map_or(0, u16::from));
                    lose(ws, outbox, stats, &mut backoff, &mut reconnect_at, &mut failing, &id, why);
                }
                // pings are answered by tungstenite itself; text frames mean nothing to a courier
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    let why = format!("connection broke: {err}");
                    lose(ws, outbox, stats, &mut backoff, &mut reconnect_at, &mut failing, &id, why);
                }
                None => {
                    let why = "connection ended".to_string();
                    lose(ws, outbox, stats, &mut backoff, &mut reconnect_at, &mut failing, &id, why);
                }
            },
            () = sleep_until(reconnect_at), if ws.is_none() => match connect(&settings.ws_url, &token).await {
                Ok(conn) => {
                    info!(courier = %id, unacked = outbox.len(), "connected");
                    *ws = Some(conn);
                    flush_all = true;
                    stats.connected.fetch_add(1, Ordering::Relaxed);
                    if ever_connected {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    ever_connected = true;
                    if outbox.is_empty() {
                        // nothing to be acknowledged, so nothing is failing
                        failing = None;
                    }
                }
                Err(ConnectError::Refused { status, body }) => {
                    let can_renew = tokens.renewable() && token_renewed_at.is_none_or(|at| at.elapsed() >= TOKEN_RENEW_MIN_INTERVAL);
                    if status == 401 && can_renew {
                        token = tokens.courier_token(&id).await.with_context(|| format!("courier {id}: renewing its token"))?;
                        token_renewed_at = Some(Instant::now());
                        continue;
                    }
                    let hint = match status {
                        401 => "the token is expired or signed with another secret: pass the server's --secret, or a fresh token",
                        403 => "the token is not a courier token: pass --secret, or an ops token or a courier token with --token",
                        _ => "",
                    };
                    bail!("courier {id}: the server refused the courier stream with {status}: {body}; {hint}");
                }
                Err(ConnectError::Failed(why)) => {
                    debug!(courier = %id, %why, "connect failed");
                    failing.get_or_insert_with(|| (Instant::now(), String::new())).1 = why;
                    reconnect_at = Instant::now() + backoff.next_delay();
                }
            },
            changed = stop.changed() => {
                if changed.is_err() {
                    // the run is gone: nobody is left to wait for us
                    break;
                }
            }
            () = sleep_until(drain_deadline.unwrap_or(start)), if drain_deadline.is_some() => {}
        }
    }

    Ok(schedule.peek().is_none())
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

/// Writes the outbox's unsent fixes: whole batches while riding, everything when `flush` is set.
async fn send_ready(
    conn: &mut Ws,
    outbox: &mut UnackedBuffer,
    settings: &CourierSettings,
    frame_limit: usize,
    flush: bool,
    stats: &Stats,
) -> Result<(), tungstenite::Error> {
    loop {
        let unsent = outbox.unsent_len();
        let size = if flush && unsent > 0 {
            unsent.min(frame_limit)
        } else if unsent >= settings.batch {
            settings.batch.min(frame_limit)
        } else {
            return Ok(());
        };
        let (fixes, resent) = outbox.take_unsent(size);
        let count = fixes.len();
        let frame = v1::CourierFrame { fixes }.encode_to_vec();
        conn.send(Message::Binary(frame.into())).await?;
        Stats::add(&stats.sent, count);
        Stats::add(&stats.resent, resent);
        stats.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// The connection is gone: everything unacked goes out again on the next one, after a backoff.
#[allow(clippy::too_many_arguments)] // the courier loop's state, passed piecewise to keep borrows apart
fn lose(
    ws: &mut Option<Ws>,
    outbox: &mut UnackedBuffer,
    stats: &Stats,
    backoff: &mut Backoff,
    reconnect_at: &mut Instant,
    failing: &mut Option<(Instant, String)>,
    id: &str,
    why: String,
) {
    info!(courier = %id, unacked = outbox.len(), %why, "disconnected");
    if ws.take().is_some() {
        stats.connected.fetch_sub(1, Ordering::Relaxed);
    }
    outbox.connection_lost();
    *reconnect_at = Instant::now() + backoff.next_delay();
    failing
        .get_or_insert_with(|| (Instant::now(), String::new()))
        .1 = why;
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(conn) => conn.next().await,
        None => std::future::pending().await,
    }
}

enum ConnectError {
    /// The server answered the upgrade with 401 or 403: retrying the same token is pointless.
    Refused { status: u16, body: String },
    /// Anything else (refused connection, timeout, 5xx): worth retrying.
    Failed(String),
}

async fn connect(url: &str, token: &str) -> Result<Ws, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Failed(format!("bad URL {url}: {e}")))?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ConnectError::Refused {
            status: 401,
            body: "the token has characters a header cannot carry".into(),
        })?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    // Nagle would hold small frames back for tens of milliseconds: fixes are latency-sensitive
    match timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, None, true),
    )
    .await
    {
        Err(_) => Err(ConnectError::Failed(format!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
        Ok(Ok((conn, _response))) => Ok(conn),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .trim()
                .to_string();
            if matches!(status, 401 | 403) {
                Err(ConnectError::Refused { status, body })
            } else {
                Err(ConnectError::Failed(format!(
                    "upgrade answered {status} {body}"
                )))
            }
        }
        Ok(Err(err)) => Err(ConnectError::Failed(err.to_string())),
    }
}

/// Exponential reconnect delays with jitter.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = BACKOFF_FIRST
            .saturating_mul(1 << self.attempt.min(8))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        // +-25% so a fleet that lost the server together does not come back together
        base.mul_f64(rand::random_range(0.75..1.25))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_core::LatLon;

    #[test]
    fn backoff_grows_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= BACKOFF_FIRST.mul_f64(0.75) && first <= BACKOFF_FIRST.mul_f64(1.25));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_MAX.mul_f64(1.25));
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_FIRST.mul_f64(1.25));
    }

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
