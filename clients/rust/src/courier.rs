//! The courier stream as an app speaks it: fixes pushed into a bounded outbox, sent in batches
//! under the server's frame and rate limits by a background task, kept until acknowledged, and
//! sent again after every reconnect until they are.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{to_e7, Message as _};

use crate::connect::{open, upgrade_request, Backoff, ConnectError, TokenIn, Ws};
use crate::outbox::{Outbox, PushFailed};

/// A token refused with 401 or expired mid-stream is renewed at most this often, so a server that
/// refuses every token ends in an error instead of a loop.
const TOKEN_RENEW_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// How long closing waits for the server's goodbye.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Fetches a fresh courier token (from the app's backend, say) when the server refuses the one
/// in use.
pub type RenewToken =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;
/// Called by the courier's task for everything that happens on the stream (keep it quick).
pub type OnEvent = Arc<dyn Fn(&CourierEvent) + Send + Sync>;

/// What [`Courier::push`] does when the outbox holds `outbox_capacity` fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the oldest fix (a phone offline for too long keeps its newest positions).
    DropOldest,
    /// Refuse the new fix with [`Error::OutboxFull`].
    Refuse,
    /// Wait until acknowledgements make room (`try_push` refuses instead).
    Wait,
}

/// How a [`Courier`] behaves; `CourierOptions::default()` suits a phone sending a fix a second.
#[derive(Clone)]
pub struct CourierOptions {
    /// Most fixes kept unacknowledged (a day at one a second by default).
    pub outbox_capacity: usize,
    pub when_full: WhenFull,
    /// Keep the outbox in this file as well, so what an app restart interrupts is sent after it
    /// (with the same seqs, and later seqs above them).
    pub outbox_file: Option<PathBuf>,
    /// Send a frame once this many fixes wait (1: each fix as it comes)...
    pub batch: usize,
    /// ...or once the oldest waiting fix has waited this long (`Duration::MAX`: only full
    /// batches, until a reconnect or [`Courier::flush`] sends the rest).
    pub linger: Duration,
    /// Most fixes in one frame (the server allows 2000 and 256 KiB; a fix is about 30 bytes).
    /// Halved whenever the server closes with 1009.
    pub max_frame_fixes: usize,
    /// Frames per second at most (the server allows 20 on average): a backlog goes out in fewer,
    /// fuller frames instead of being cut off.
    pub max_frames_per_s: f64,
    /// Frames sent but not answered yet at most (the server reads 16 ahead).
    pub max_unanswered_frames: usize,
    pub token_in: TokenIn,
    pub connect_timeout: Duration,
    /// First reconnect delay; doubled per failed attempt up to `backoff_max`, with jitter.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// End with [`Error::Unreachable`] when nothing has been acknowledged for this long while
    /// the stream was failing; `None` retries for ever.
    pub give_up_after: Option<Duration>,
    pub renew_token: Option<RenewToken>,
    pub on_event: Option<OnEvent>,
}

impl Default for CourierOptions {
    fn default() -> Self {
        Self {
            outbox_capacity: 100_000,
            when_full: WhenFull::DropOldest,
            outbox_file: None,
            batch: 1,
            linger: Duration::ZERO,
            max_frame_fixes: 500,
            // three quarters of the server's 20, for timer jitter
            max_frames_per_s: 15.0,
            max_unanswered_frames: 8,
            token_in: TokenIn::Header,
            connect_timeout: Duration::from_secs(10),
            backoff_first: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            give_up_after: None,
            renew_token: None,
            on_event: None,
        }
    }
}

impl std::fmt::Debug for CourierOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CourierOptions")
            .field("outbox_capacity", &self.outbox_capacity)
            .field("when_full", &self.when_full)
            .field("outbox_file", &self.outbox_file)
            .field("batch", &self.batch)
            .field("linger", &self.linger)
            .field("max_frame_fixes", &self.max_frame_fixes)
            .field("max_frames_per_s", &self.max_frames_per_s)
            .field("give_up_after", &self.give_up_after)
            .finish_non_exhaustive()
    }
}

/// What happened on the stream, as [`CourierOptions::on_event`] hears it.
#[derive(Debug, Clone)]
pub enum CourierEvent {
    /// A connection is up; everything unacknowledged goes out on it first.
    Connected { reconnect: bool, unacked: usize },
    /// The connection is gone; the courier reconnects after a backoff.
    Disconnected { reason: String, unacked: usize },
    /// One frame went out: `fixes` in it, `resent` of them sent before on an earlier connection.
    Sent { fixes: usize, resent: usize },
    /// The server holds every fix up to `seq`; `fixes` of them left the outbox.
    Acked { seq: u64, fixes: usize },
    /// The server refused one fix for good; it left the outbox.
    Rejected(v1::Rejected),
    /// A full outbox dropped its oldest fix ([`WhenFull::DropOldest`]).
    Dropped { seq: u64 },
}

/// Counters of a courier's life so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CourierStats {
    pub pushed: u64,
    /// Fixes written to a socket, resends included.
    pub sent: u64,
    pub resent: u64,
    pub frames: u64,
    pub acked: u64,
    pub rejected: u64,
    pub dropped: u64,
    /// Successful connections, the first included.
    pub connections: u64,
}

/// Why a courier call failed, or why the courier ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("the outbox is full ({0} fixes unacknowledged)")]
    OutboxFull(usize),
    #[error("seq {seq} is not above the last one pushed ({last}): seqs must increase")]
    SeqNotIncreasing { seq: u64, last: u64 },
    #[error("the outbox file: {0}")]
    OutboxFile(Arc<std::io::Error>),
    /// The upgrade was refused (401/403 with no way to renew the token, 400, 404).
    #[error(transparent)]
    Refused(ConnectError),
    /// The server closed the stream with a code that retrying cannot cure (a malformed or text
    /// frame, or a newer connection of the same courier took over).
    #[error("the server closed the courier stream with {code}: {reason}")]
    Closed { code: u16, reason: String },
    #[error("nothing acknowledged for {0:?}; last problem: {1}")]
    Unreachable(Duration, String),
    #[error("{0} fixes still unacknowledged after waiting {1:?}")]
    Timeout(usize, Duration),
    #[error("the courier is closed")]
    Stopped,
}

/// A courier app's connection to `/v1/courier/ws`: push fixes, the rest is taken care of.
///
/// Dropping it stops the background task at once (what is unacknowledged stays in the outbox
/// file, if there is one); [`Courier::close`] does the same politely and reports what is left.
pub struct Courier {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    when_full: WhenFull,
    on_event: Option<OnEvent>,
}

struct Shared {
    state: Mutex<State>,
    /// A push or a flush: the task may have something to send.
    wake: Notify,
    /// Acks, rejections, the end: callers waiting for room or for a flush look again.
    progress: Notify,
}

struct State {
    outbox: Outbox,
    /// Since when fixes have waited unsent (for `linger`).
    unsent_since: Option<Instant>,
    /// A caller waits for everything to be sent now, batch or not.
    flush: bool,
    /// Set once the task has ended, with why (`Stopped` after a close).
    ended: Option<Error>,
    stats: CourierStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding the lock leaves counters and a buffer that are still consistent
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done` holds (checked under the lock after every change), or the courier ends.
    async fn wait_until(&self, mut done: impl FnMut(&State) -> bool) -> Result<(), Error> {
        loop {
            let progressed = self.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            {
                let state = self.lock();
                if done(&state) {
                    return Ok(());
                }
                if let Some(err) = &state.ended {
                    return Err(err.clone());
                }
            }
            progressed.await;
        }
    }
}

impl Courier {
    /// Starts a courier on `url` (`ws://host/v1/courier/ws`) with a courier `token`. Returns at
    /// once: fixes can be pushed while the first connection is still being made, or the server is
    /// down. A refusal that retrying cannot cure ends the courier; `push` and `flush` report it.
    ///
    /// # Errors
    /// When the outbox file cannot be opened.
    pub fn connect(url: &str, token: &str, options: CourierOptions) -> Result<Courier, Error> {
        let outbox = match &options.outbox_file {
            Some(path) => Outbox::open(path, options.outbox_capacity)
                .map_err(|e| Error::OutboxFile(Arc::new(e)))?,
            None => Outbox::new(options.outbox_capacity),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                unsent_since: (!outbox.is_empty()).then(Instant::now),
                outbox,
                flush: false,
                ended: None,
                stats: CourierStats::default(),
            }),
            wake: Notify::new(),
            progress: Notify::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let when_full = options.when_full;
        let on_event = options.on_event.clone();
        let link = Link {
            shared: shared.clone(),
            url: url.to_string(),
            token: token.to_string(),
            options,
            stop: stopped,
        };
        let task = tokio::spawn(link.run());
        Ok(Courier {
            shared,
            stop,
            task: Some(task),
            when_full,
            on_event,
        })
    }

    /// A seq above every one pushed so far, in this run or (with an outbox file) an earlier one;
    /// the first is clock-based (milliseconds × 1000), so a reinstalled app starts above what it
    /// sent before.
    pub fn next_seq(&self) -> u64 {
        match self.shared.lock().outbox.last_seq() {
            Some(last) => last + 1,
            None => first_seq(),
        }
    }

    /// Adds `fix` to the outbox; when it is full, does what [`CourierOptions::when_full`] says.
    ///
    /// # Errors
    /// [`Error::SeqNotIncreasing`], [`Error::OutboxFull`] (`Refuse`), an outbox file that cannot
    /// be written, or the error that ended the courier.
    pub async fn push(&self, fix: v1::Fix) -> Result<(), Error> {
        if self.when_full == WhenFull::Wait {
            self.shared
                .wait_until(|state| !state.outbox.is_full())
                .await?;
        }
        self.try_push(fix)
    }

    /// As [`Courier::push`], but refuses with [`Error::OutboxFull`] instead of waiting.
    ///
    /// # Errors
    /// As [`Courier::push`].
    pub fn try_push(&self, fix: v1::Fix) -> Result<(), Error> {
        let mut state = self.shared.lock();
        if let Some(err) = &state.ended {
            return Err(err.clone());
        }
        if state.outbox.is_full() && self.when_full != WhenFull::DropOldest {
            return Err(Error::OutboxFull(state.outbox.len()));
        }
        let dropped = state.outbox.push(fix).map_err(|failed| match failed {
            PushFailed::Seq(e) => Error::SeqNotIncreasing {
                seq: e.seq,
                last: e.last,
            },
            PushFailed::Io(e) => Error::OutboxFile(Arc::new(e)),
        })?;
        state.stats.pushed += 1;
        state.stats.dropped += u64::from(dropped.is_some());
        state.unsent_since.get_or_insert_with(Instant::now);
        drop(state);
        self.shared.wake.notify_one();
        if let (Some(seq), Some(on_event)) = (dropped, &self.on_event) {
            on_event(&CourierEvent::Dropped { seq });
        }
        Ok(())
    }

    /// Fixes not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.shared.lock().outbox.len()
    }

    pub fn stats(&self) -> CourierStats {
        self.shared.lock().stats
    }

    /// Sends everything now (whatever the batch size) and waits until the server has
    /// acknowledged (or rejected) every fix pushed so far.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `within`, or the error that ended the courier.
    pub async fn flush(&self, within: Duration) -> Result<(), Error> {
        self.shared.lock().flush = true;
        self.shared.wake.notify_one();
        let drained = self.shared.wait_until(|state| state.outbox.is_empty());
        match tokio::time::timeout(within, drained).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(self.unacked(), within)),
        }
    }

    /// Stops the courier and closes the stream politely; the fixes still unacknowledged (kept in
    /// the outbox file, if there is one).
    ///
    /// # Errors
    /// The error that ended the courier before, if one did.
    pub async fn close(mut self) -> Result<usize, Error> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            // the task never panics on its own; a panic of the on_event callback ends it, too
            let _ = task.await;
        }
        let state = self.shared.lock();
        match &state.ended {
            None | Some(Error::Stopped) => Ok(state.outbox.len()),
            Some(err) => Err(err.clone()),
        }
    }

    /// Waits until the courier ends on its own (a final refusal, or giving up), and says why.
    pub async fn ended(&self) -> Error {
        match self.shared.wait_until(|_| false).await {
            Err(err) => err,
            Ok(()) => unreachable!("waiting for a condition that never holds"),
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The first seq of a courier without history: about microseconds since the epoch, so a rerun
/// always starts above anything an earlier one sent; stays below 2^53, so JSON readers keep it
/// exact.
pub fn first_seq() -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(now_ms).unwrap_or(0).saturating_mul(1000)
}

/// A fix at `lat`/`lon` (degrees) at device time `time_ms`, with accuracy, speed and heading
/// unknown (set them on the result when the device knows them).
pub fn fix_at(seq: u64, time_ms: i64, lat: f64, lon: f64) -> v1::Fix {
    v1::Fix {
        seq,
        time_ms,
        lat_e7: to_e7(lat),
        lon_e7: to_e7(lon),
        accuracy_m: None,
        speed_mps: None,
        heading_deg: None,
    }
}

/// The background task: one connection at a time, and what it has in flight.
struct Link {
    shared: Arc<Shared>,
    url: String,
    token: String,
    options: CourierOptions,
    stop: watch::Receiver<bool>,
}

/// What the task does next after a message from the server.
enum Next {
    Continue,
    /// An ack: the server takes our fixes.
    Acked,
    /// The connection is gone (and why); reconnect.
    Lost(String),
}

impl Link {
    async fn run(mut self) {
        let ended = self.ride().await;
        let mut state = self.shared.lock();
        state.ended = Some(ended.err().unwrap_or(Error::Stopped));
        drop(state);
        self.shared.progress.notify_waiters();
    }

    fn emit(&self, event: CourierEvent) {
        if let Some(on_event) = &self.options.on_event {
            on_event(&event);
        }
    }

    async fn ride(&mut self) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.options.backoff_first, self.options.backoff_max);
        let mut reconnect_at = Instant::now();
        // since when nothing has worked, and why: set by a failure, cleared by an ack
        let mut failing: Option<(Instant, String)> = None;
        let mut renewed_at: Option<Instant> = None;
        let mut frame_fixes = self.options.max_frame_fixes.max(1);
        let mut connections = 0u64;
        loop {
            if *self.stop.borrow() {
                return Ok(());
            }
            if let (Some((since, why)), Some(limit)) = (&failing, self.options.give_up_after) {
                if since.elapsed() >= limit {
                    return Err(Error::Unreachable(limit, why.clone()));
                }
            }
            tokio::select! {
                () = sleep_until(reconnect_at) => {}
                _ = self.stop.changed() => continue,
            }
            let request = upgrade_request(&self.url, &self.token, self.options.token_in, None)
                .map_err(Error::Refused)?;
            let opened = tokio::select! {
                opened = open(request, self.options.connect_timeout) => opened,
                // a close does not wait for a slow connect
                _ = self.stop.changed() => continue,
            };
            let mut ws = match opened {
                Ok(ws) => ws,
                Err(ConnectError::Refused { status: 401, .. })
                    if self.may_renew(&mut renewed_at) =>
                {
                    self.renew_token().await?;
                    continue;
                }
                Err(err) if err.is_final() => return Err(Error::Refused(err)),
                Err(err) => {
                    tracing::debug!(%err, "courier connect failed");
                    failing
                        .get_or_insert_with(|| (Instant::now(), String::new()))
                        .1 = err.to_string();
                    reconnect_at = Instant::now() + backoff.next_delay();
                    continue;
                }
            };
            connections += 1;
            let unacked = {
                let mut state = self.shared.lock();
                state.outbox.connection_lost();
                state.stats.connections += 1;
                state.outbox.len()
            };
            if unacked == 0 {
                // nothing waits for an ack, so nothing is failing
                failing = None;
            }
            self.emit(CourierEvent::Connected {
                reconnect: connections > 1,
                unacked,
            });
            let lost = self
                .stream(&mut ws, &mut frame_fixes, &mut backoff, &mut failing)
                .await;
            let reason = match lost {
                Ok(reason) => reason,
                Err(Error::Closed { code, reason })
                    if code == u16::from(CloseCode::Policy) && reason.contains("token expired") =>
                {
                    if !self.may_renew(&mut renewed_at) {
                        // the next upgrade is refused with 401, which ends the courier
                        continue;
                    }
                    self.renew_token().await?;
                    format!("{code} {reason}")
                }
                Err(err) => {
                    close_politely(&mut ws).await;
                    return Err(err);
                }
            };
            let unacked = self.shared.lock().outbox.len();
            tracing::debug!(%reason, unacked, "courier disconnected");
            self.emit(CourierEvent::Disconnected {
                reason: reason.clone(),
                unacked,
            });
            failing
                .get_or_insert_with(|| (Instant::now(), String::new()))
                .1 = reason;
            reconnect_at = Instant::now() + backoff.next_delay();
        }
    }

    fn may_renew(&self, renewed_at: &mut Option<Instant>) -> bool {
        let allowed = self.options.renew_token.is_some()
            && renewed_at.is_none_or(|at| at.elapsed() >= TOKEN_RENEW_MIN_INTERVAL);
        if allowed {
            *renewed_at = Some(Instant::now());
        }
        allowed
    }

    async fn renew_token(&mut self) -> Result<(), Error> {
        // only called after may_renew saw a renewer
        let Some(renew) = self.options.renew_token.clone() else {
            return Ok(());
        };
        self.token = renew().await.map_err(|why| {
            Error::Refused(ConnectError::Refused {
                status: 401,
                body: format!("the token was refused and renewing it failed: {why}"),
            })
        })?;
        Ok(())
    }

    /// Speaks on one connection until it is lost (`Ok` with why) or must end (`Err`); a stop
    /// closes it politely and answers `Ok`.
    async fn stream(
        &mut self,
        ws: &mut Ws,
        frame_fixes: &mut usize,
        backoff: &mut Backoff,
        failing: &mut Option<(Instant, String)>,
    ) -> Result<String, Error> {
        let gap = Duration::from_secs_f64(1.0 / self.options.max_frames_per_s.max(0.1));
        // the last seq of each frame sent and not answered yet, oldest first
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut next_frame_at = Instant::now();
        // a fresh connection sends the whole backlog at once, whatever the batch size
        let mut backlog = true;
        loop {
            if *self.stop.borrow() {
                close_politely(ws).await;
                return Ok("closed by the app".into());
            }
            let due = self.send_due(in_flight.len(), backlog);
            let now = Instant::now();
            if due.is_some_and(|due| due <= now) && next_frame_at <= now {
                let Some((fixes, resent, emptied)) = self.take_frame(*frame_fixes) else {
                    continue;
                };
                let count = fixes.len();
                // take_frame never answers an empty frame, so the default is never used
                let last = fixes.last().map_or(0, |f| f.seq);
                let frame = v1::CourierFrame { fixes }.encode_to_vec();
                if let Err(err) = ws.send(Message::binary(frame)).await {
                    return Ok(format!("sending: {err}"));
                }
                in_flight.push_back(last);
                next_frame_at = Instant::now() + gap;
                backlog &= !emptied;
                {
                    let mut state = self.shared.lock();
                    state.stats.sent += count as u64;
                    state.stats.resent += resent as u64;
                    state.stats.frames += 1;
                }
                self.emit(CourierEvent::Sent {
                    fixes: count,
                    resent,
                });
                continue;
            }
            let wake_at = due.map(|due| due.max(next_frame_at));
            let message = tokio::select! {
                () = sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => continue,
                () = self.shared.wake.notified() => continue,
                _ = self.stop.changed() => continue,
                message = ws.next() => message,
            };
            let next = match message {
                None => Next::Lost("the connection ended".into()),
                Some(Err(err)) => Next::Lost(format!("the connection broke: {err}")),
                Some(Ok(message)) => self.on_message(message, &mut in_flight, frame_fixes)?,
            };
            match next {
                Next::Continue => {}
                Next::Acked => {
                    // the next failure starts afresh
                    *failing = None;
                    backoff.reset();
                }
                Next::Lost(reason) => return Ok(reason),
            }
        }
    }

    /// When the next frame is due on a connection with `unanswered` frames in flight: `None`
    /// when nothing waits or too much is unanswered.
    fn send_due(&self, unanswered: usize, backlog: bool) -> Option<Instant> {
        let state = self.shared.lock();
        let unsent = state.outbox.unsent_len();
        if unsent == 0 || unanswered >= self.options.max_unanswered_frames.max(1) {
            return None;
        }
        let now = Instant::now();
        if backlog || state.flush || unsent >= self.options.batch.max(1) {
            return Some(now);
        }
        // a linger too long to add (Duration::MAX) waits for a full batch or a flush
        state
            .unsent_since
            .map_or(Some(now), |since| since.checked_add(self.options.linger))
    }

    /// The next frame's fixes, how many are resends, and whether nothing is left unsent after it.
    fn take_frame(&self, max: usize) -> Option<(Vec<v1::Fix>, usize, bool)> {
        let mut state = self.shared.lock();
        let (fixes, resent) = state.outbox.take_unsent(max);
        if fixes.is_empty() {
            return None;
        }
        let emptied = state.outbox.unsent_len() == 0;
        state.unsent_since = (!emptied).then(Instant::now);
        Some((fixes, resent, emptied))
    }

    fn on_message(
        &self,
        message: Message,
        in_flight: &mut VecDeque<u64>,
        frame_fixes: &mut usize,
    ) -> Result<Next, Error> {
        match message {
            Message::Binary(bytes) => match v1::ServerFrame::decode(bytes.as_ref()) {
                Ok(v1::ServerFrame {
                    kind: Some(Kind::Ack(ack)),
                }) => {
                    while in_flight.front().is_some_and(|last| *last <= ack.seq) {
                        in_flight.pop_front();
                    }
                    let fixes = {
                        let mut state = self.shared.lock();
                        let fixes = state.outbox.ack(ack.seq);
                        state.stats.acked += fixes as u64;
                        if state.outbox.is_empty() {
                            state.flush = false;
                        }
                        fixes
                    };
                    self.shared.progress.notify_waiters();
                    self.emit(CourierEvent::Acked {
                        seq: ack.seq,
                        fixes,
                    });
                    return Ok(Next::Acked);
                }
                Ok(v1::ServerFrame {
                    kind: Some(Kind::Rejected(rejected)),
                }) => {
                    let known = {
                        let mut state = self.shared.lock();
                        let known = state.outbox.reject(rejected.seq);
                        state.stats.rejected += u64::from(known);
                        known
                    };
                    if known {
                        self.shared.progress.notify_waiters();
                        self.emit(CourierEvent::Rejected(rejected));
                    }
                }
                Ok(v1::ServerFrame { kind: None }) => {}
                Err(err) => tracing::debug!(%err, "undecodable frame on the courier stream"),
            },
            Message::Close(frame) => {
                let (code, reason) = frame.map_or((CloseCode::Status, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                return match code {
                    CloseCode::Size => {
                        *frame_fixes = (*frame_fixes / 2).max(1);
                        Ok(Next::Lost(format!(
                            "frame too large; now at most {frame_fixes} fixes per frame"
                        )))
                    }
                    // a malformed or text frame would be sent again as it was; a newer connection
                    // of this courier is the app that now speaks for it
                    CloseCode::Protocol | CloseCode::Unsupported => Err(Error::Closed {
                        code: code.into(),
                        reason,
                    }),
                    CloseCode::Policy
                        if reason.contains("superseded") || reason.contains("token expired") =>
                    {
                        Err(Error::Closed {
                            code: code.into(),
                            reason,
                        })
                    }
                    _ => Ok(Next::Lost(format!(
                        "the server closed the stream with {}: {reason}",
                        u16::from(code)
                    ))),
                };
            }
            // pings are answered by tungstenite itself; text frames mean nothing to a courier
            Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Ok(Next::Continue)
    }
}

async fn close_politely(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A courier whose server cannot be reached, so nothing ever leaves its outbox.
    fn offline(capacity: usize, when_full: WhenFull) -> Courier {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/v1/courier/ws", listener.local_addr().unwrap());
        drop(listener);
        let options = CourierOptions {
            outbox_capacity: capacity,
            when_full,
            ..CourierOptions::default()
        };
        Courier::connect(&url, "token", options).unwrap()
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_waits_or_drops_the_oldest_as_asked() {
        let refusing = offline(2, WhenFull::Refuse);
        for seq in 1..=2 {
            refusing.push(fix_at(seq, 0, 1.0, 1.0)).await.unwrap();
        }
        let refused = refusing.try_push(fix_at(3, 0, 1.0, 1.0));
        assert!(matches!(refused, Err(Error::OutboxFull(2))), "{refused:?}");

        let waiting = offline(2, WhenFull::Wait);
        for seq in 1..=2 {
            waiting.push(fix_at(seq, 0, 1.0, 1.0)).await.unwrap();
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(100),
            waiting.push(fix_at(3, 0, 1.0, 1.0)),
        );
        assert!(blocked.await.is_err(), "a push into a full outbox waits");
        assert!(matches!(
            waiting.try_push(fix_at(3, 0, 1.0, 1.0)),
            Err(Error::OutboxFull(2))
        ));

        let dropping = offline(2, WhenFull::DropOldest);
        for seq in 1..=3 {
            dropping.push(fix_at(seq, 0, 1.0, 1.0)).await.unwrap();
        }
        assert_eq!(dropping.unacked(), 2);
        assert_eq!(dropping.stats().dropped, 1);
    }

    #[tokio::test]
    async fn seqs_must_increase_and_next_seq_follows_the_last() {
        let courier = offline(10, WhenFull::Refuse);
        let first = courier.next_seq();
        assert!(first > 1_000_000_000_000_000, "clock-based: {first}");
        courier.push(fix_at(first, 0, 1.0, 1.0)).await.unwrap();
        assert_eq!(courier.next_seq(), first + 1);
        let again = courier.push(fix_at(first, 0, 1.0, 1.0)).await;
        assert!(
            matches!(again, Err(Error::SeqNotIncreasing { .. })),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn giving_up_on_an_unreachable_server_ends_the_courier() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/v1/courier/ws", listener.local_addr().unwrap());
        drop(listener);
        let options = CourierOptions {
            give_up_after: Some(Duration::from_millis(300)),
            backoff_first: Duration::from_millis(20),
            ..CourierOptions::default()
        };
        let courier = Courier::connect(&url, "token", options).unwrap();
        courier.push(fix_at(1, 0, 1.0, 1.0)).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), courier.ended())
            .await
            .expect("gives up");
        assert!(matches!(ended, Error::Unreachable(..)), "{ended:?}");
        assert_eq!(
            courier
                .close()
                .await
                .map_err(|e| e.to_string())
                .unwrap_err(),
            ended.to_string()
        );
    }
}
