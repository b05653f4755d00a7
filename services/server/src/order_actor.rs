//! One actor per active order: filters each fix, appends it to history, re-estimates the ETA and
//! pushes the new state to the order's watchers once it is durable.
//!
//! State changes happen in memory at once, but a watcher (and the courier's ack) only hears of
//! them after the history store has flushed them: every frame a watcher ever saw survives a
//! crash, so offsets are never reused and an epoch only changes when the data itself is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use trackline_core::eta::{EtaConfig, EtaEstimator};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::{Fix, RejectCode, Rejection};
use trackline_core::history::{HistoryStore, WriteBatch};
use trackline_core::order::{OrderRecord, OrderStatus, OrderView, Position};
use trackline_core::{now_ms, CourierId};

use crate::error::ApiError;
use crate::frames::{Frame, FrameKind};
use crate::registry::{Registry, Relink};

/// How long a delivered or cancelled order's actor stays up to serve late watchers.
const LINGER_AFTER_FINAL: Duration = Duration::from_secs(30);
/// How often the latest state is offered again to watchers that were too slow to take it.
const RETRY_SLOW_EVERY: Duration = Duration::from_millis(200);
/// The close code of a watcher that stopped reading.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// What every order actor shares.
#[derive(Clone)]
pub struct OrderDeps {
    pub store: HistoryStore,
    pub registry: Addr<Registry>,
    pub settings: Arc<OrderSettings>,
}

/// Tuning shared by every order.
#[derive(Debug, Clone, Default)]
pub struct OrderSettings {
    pub arrival_radius_m: f64,
    pub resume_buffer: usize,
    /// A watcher slow for this long is closed with 4008.
    pub slow_watcher_timeout: Duration,
    pub filter: FilterConfig,
    pub eta: EtaConfig,
}

/// What an order sends its watchers.
#[derive(Message)]
#[rtype(result = "()")]
pub enum Push {
    /// The next frame to write.
    Frame(Arc<Frame>),
    /// Close with `code`: the watcher stopped reading.
    Evict { code: u16, reason: String },
}

/// One watcher of the order.
///
/// A watcher's session is driven by its socket: while the peer does not read, the session does
/// not run and its mailbox (bounded, `--watcher-queue`) fills. A full mailbox is the signal that
/// the watcher is slow; from then on it is offered only the latest state (conflation) until it
/// takes one, and after `slow_watcher_timeout` it is dropped and told to close with 4008. So the
/// memory a slow watcher costs is its mailbox, never a queue that grows with the stream.
struct Watcher {
    recipient: Recipient<Push>,
    lagging: Option<Lag>,
}

/// The newest frame a slow watcher has not been able to take, and since when it is slow.
struct Lag {
    since: std::time::Instant,
    latest: Arc<Frame>,
}

enum Offer {
    Taken,
    Lagging,
    Gone,
}

impl Watcher {
    fn offer(&mut self, frame: Arc<Frame>) -> Offer {
        use actix::dev::SendError;
        match self.recipient.try_send(Push::Frame(frame)) {
            Ok(()) => {
                self.lagging = None;
                Offer::Taken
            }
            Err(SendError::Full(Push::Frame(frame))) => {
                let since = self
                    .lagging
                    .as_ref()
                    .map_or_else(std::time::Instant::now, |lag| lag.since);
                if self.lagging.is_none() {
                    metrics::counter!("trackline_watchers_conflated_total").increment(1);
                }
                self.lagging = Some(Lag {
                    since,
                    latest: frame,
                });
                Offer::Lagging
            }
            Err(SendError::Full(Push::Evict { .. }) | SendError::Closed(_)) => Offer::Gone,
        }
    }
}

/// Fixes of the order's courier, in seq order.
#[derive(Message)]
#[rtype(result = "IngestReport")]
pub struct Ingest {
    pub courier: CourierId,
    pub fixes: Arc<[Fix]>,
    /// Why the courier's other fixes of the frame were refused by validation (counted only).
    pub invalid: Arc<[RejectCode]>,
}

/// What became of an [`Ingest`], known once it is durable.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub rejected: Vec<(u64, Rejection)>,
    pub stored: usize,
    /// Set when the history store failed: nothing of the batch may be acked.
    pub failed: Option<String>,
}

/// Start watching; the reply is what to send first (a snapshot, or the replay of a resume).
#[derive(Message)]
#[rtype(result = "Vec<Arc<Frame>>")]
pub struct Subscribe {
    pub watcher_id: u64,
    pub watcher: Recipient<Push>,
    pub resume: Option<Resume>,
}

/// A watcher's last seen position in the stream.
#[derive(Debug, Clone)]
pub struct Resume {
    pub since: u64,
    pub epoch: String,
}

/// Stop watching.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub watcher_id: u64,
}

/// The order's durable state.
#[derive(Message)]
#[rtype(result = "OrderView")]
pub struct GetView;

/// Assign (or reassign) the courier.
#[derive(Message)]
#[rtype(result = "Result<OrderView, ApiError>")]
pub struct Assign {
    pub courier: CourierId,
}

/// Change the status, as ops or as the order's courier (`by_courier`).
#[derive(Message)]
#[rtype(result = "Result<OrderView, ApiError>")]
pub struct SetStatus {
    pub status: OrderStatus,
    pub by_courier: Option<CourierId>,
}

pub struct OrderActor {
    record: OrderRecord,
    filter: GpsFilter,
    eta: EtaEstimator,
    deps: OrderDeps,
    watchers: HashMap<u64, Watcher>,
    /// A retry of slow watchers is scheduled.
    retry_scheduled: bool,
    /// Durable frames, newest last, for watchers that resume.
    replay: VecDeque<Arc<Frame>>,
    /// Frames whose changes are not yet known to be durable, oldest first.
    unpublished: VecDeque<Arc<Frame>>,
    /// The last durable (published) state.
    published: Arc<Frame>,
}

impl OrderActor {
    pub fn new(record: OrderRecord, deps: OrderDeps) -> Self {
        let eta = EtaEstimator::new(
            record.destination,
            record.route.clone(),
            deps.settings.eta.clone(),
        );
        let filter = GpsFilter::new(deps.settings.filter.clone());
        let published = Frame::encode(record.view(), FrameKind::Update, false);
        Self {
            record,
            filter,
            eta,
            deps,
            watchers: HashMap::new(),
            retry_scheduled: false,
            replay: VecDeque::new(),
            unpublished: VecDeque::new(),
            published,
        }
    }

    /// Records a change of state as the next frame of the stream (published once durable).
    fn next_frame(&mut self) {
        self.record.offset += 1;
        self.record.updated_at_ms = now_ms();
        self.unpublished
            .push_back(Frame::encode(self.record.view(), FrameKind::Update, false));
    }

    /// Publishes every frame up to `offset` (now durable), in order.
    fn publish_through(&mut self, offset: u64, ctx: &mut Context<Self>) {
        while self
            .unpublished
            .front()
            .is_some_and(|f| f.view.offset <= offset)
        {
            // unwrap: the loop condition saw a front element
            let frame = self.unpublished.pop_front().unwrap();
            self.fan_out(&frame, ctx);
            metrics::counter!("trackline_updates_published_total").increment(1);
            if self.replay.len() >= self.deps.settings.resume_buffer.max(1) {
                self.replay.pop_front();
            }
            self.replay.push_back(frame.clone());
            self.published = frame;
        }
        if self.published.is_final {
            self.watchers.clear();
            ctx.run_later(LINGER_AFTER_FINAL, |_, ctx| ctx.stop());
        }
    }

    /// Offers `frame` to every watcher; a slow one keeps it as its latest instead.
    fn fan_out(&mut self, frame: &Arc<Frame>, ctx: &mut Context<Self>) {
        let mut lagging = false;
        self.watchers.retain(|_, watcher| {
            // A slow watcher is offered every new frame too: the moment its queue has room it is
            // back in step, and while it has none the new frame replaces the one it did not take.
            let offer = watcher.offer(frame.clone());
            lagging |= matches!(offer, Offer::Lagging);
            !matches!(offer, Offer::Gone)
        });
        if lagging {
            self.schedule_retry(ctx);
        }
    }

    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        if !self.retry_scheduled {
            self.retry_scheduled = true;
            ctx.run_later(RETRY_SLOW_EVERY, |act, ctx| {
                act.retry_scheduled = false;
                act.retry_slow(ctx);
            });
        }
    }

    /// Offers slow watchers their latest frame again; drops those slow for too long.
    fn retry_slow(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.deps.settings.slow_watcher_timeout;
        let mut still_lagging = false;
        self.watchers.retain(|id, watcher| {
            let Some(lag) = &watcher.lagging else {
                return true;
            };
            if lag.since.elapsed() > timeout {
                tracing::warn!(
                    watcher_id = id,
                    lag_ms = lag.since.elapsed().as_millis() as u64,
                    "watcher too slow, closing"
                );
                metrics::counter!("trackline_watchers_evicted_total").increment(1);
                // do_send ignores the full mailbox: the close is the next thing the watcher sees
                // once it reads again; until then it costs only what is already queued.
                let reason = format!("too slow: not reading for {} s", timeout.as_secs());
                watcher.recipient.do_send(Push::Evict {
                    code: CLOSE_TOO_SLOW,
                    reason,
                });
                return false;
            }
            let latest = lag.latest.clone();
            match watcher.offer(latest) {
                Offer::Taken => true,
                Offer::Lagging => {
                    still_lagging = true;
                    true
                }
                Offer::Gone => false,
            }
        });
        if still_lagging {
            self.schedule_retry(ctx);
        }
    }

    /// Persists the record (with `fixes`) and, once durable, publishes the frames up to now.
    fn persist(
        &mut self,
        fixes: Vec<(trackline_core::OrderId, Fix)>,
    ) -> impl ActorFuture<Self, Output = Result<(), String>> {
        let offset = self.record.offset;
        let commit = self.deps.store.commit(WriteBatch {
            fixes,
            orders: vec![self.record.clone()],
        });
        commit.into_actor(self).map(move |outcome, act, ctx| match outcome {
            Ok(()) => {
                act.publish_through(offset, ctx);
                Ok(())
            }
            Err(error) => {
                tracing::error!(order_id = %act.record.order_id, %error, "history write failed");
                Err(error.to_string())
            }
        })
    }

    /// Applies one validated fix that the filter let through to the live state.
    fn apply_live(&mut self, fix: &Fix, shown: trackline_core::LatLon) {
        let estimate = self.eta.update(fix, shown);
        self.record.position = Some(Position::shown(fix, shown));
        self.record.eta = Some(estimate.into());
        if self.record.status == OrderStatus::PickedUp
            && estimate.to_destination_m <= self.deps.settings.arrival_radius_m
        {
            self.record.set_status(OrderStatus::Arriving, fix.time_ms);
        }
        self.next_frame();
    }

    fn change<F>(&mut self, change: F) -> ResponseActFuture<Self, Result<OrderView, ApiError>>
    where
        F: FnOnce(&mut Self) -> Result<Option<Relink>, ApiError>,
    {
        let relink = match change(self) {
            Ok(relink) => relink,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        if let Some(relink) = relink {
            self.deps.registry.do_send(relink);
        }
        self.next_frame();
        Box::pin(
            self.persist(Vec::new())
                .map(|outcome, act, _| match outcome {
                    Ok(()) => Ok(act.published.view.clone()),
                    Err(e) => Err(ApiError::Internal(e)),
                }),
        )
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        metrics::gauge!("trackline_order_actors").increment(1.0);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!("trackline_order_actors").decrement(1.0);
    }
}

impl Handler<Ingest> for OrderActor {
    type Result = ResponseActFuture<Self, IngestReport>;

    fn handle(&mut self, msg: Ingest, _: &mut Context<Self>) -> Self::Result {
        let mut report = IngestReport::default();
        if !self.record.status.takes_fixes()
            || self.record.courier_id.as_ref() != Some(&msg.courier)
        {
            // The courier was unassigned or the order ended while the fixes were on their way.
            return Box::pin(fut::ready(report));
        }
        for code in msg.invalid.iter() {
            self.record.count_rejected(*code);
        }
        let mut stored = Vec::new();
        for fix in msg.fixes.iter() {
            if fix.seq <= self.record.last_seq {
                continue; // a resend of a fix this order already has
            }
            self.record.last_seq = fix.seq;
            match self.filter.assess(fix) {
                Verdict::Live(shown) => {
                    self.apply_live(fix, shown);
                    stored.push((self.record.order_id.clone(), *fix));
                }
                Verdict::HistoryOnly => stored.push((self.record.order_id.clone(), *fix)),
                Verdict::Duplicate => {}
                Verdict::Rejected(rejection) => {
                    self.record.count_rejected(rejection.code);
                    report.rejected.push((fix.seq, rejection));
                }
            }
        }
        report.stored = stored.len();
        // Committed even when nothing is new: a resend of fixes still in flight must not be
        // acked before the flush that covers them, and this job queues behind that flush.
        Box::pin(self.persist(stored).map(move |outcome, _, _| {
            report.failed = outcome.err();
            report
        }))
    }
}

impl Handler<Subscribe> for OrderActor {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let current = &self.published;
        let replay = msg.resume.as_ref().and_then(|resume| {
            if resume.epoch != current.view.epoch || resume.since > current.view.offset {
                return None;
            }
            if resume.since == current.view.offset {
                return Some(Vec::new());
            }
            let oldest = self.replay.front()?.view.offset;
            (resume.since + 1 >= oldest).then(|| {
                self.replay
                    .iter()
                    .filter(|f| f.view.offset > resume.since)
                    .map(|f| f.replayed())
                    .collect()
            })
        });
        let first = replay.unwrap_or_else(|| {
            vec![Frame::encode(
                current.view.clone(),
                FrameKind::Snapshot,
                false,
            )]
        });
        if !current.is_final {
            self.watchers.insert(
                msg.watcher_id,
                Watcher {
                    recipient: msg.watcher,
                    lagging: None,
                },
            );
        }
        MessageResult(first)
    }
}

impl Handler<Unsubscribe> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.watchers.remove(&msg.watcher_id);
    }
}

impl Handler<GetView> for OrderActor {
    type Result = MessageResult<GetView>;

    fn handle(&mut self, _: GetView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.published.view.clone())
    }
}

impl Handler<Assign> for OrderActor {
    type Result = ResponseActFuture<Self, Result<OrderView, ApiError>>;

    fn handle(&mut self, msg: Assign, _: &mut Context<Self>) -> Self::Result {
        self.change(|act| {
            let record = &mut act.record;
            if record.status.is_final() {
                return Err(ApiError::Conflict(
                    "order_closed",
                    format!("order {} is {}", record.order_id, record.status),
                ));
            }
            if record.status == OrderStatus::Created {
                record.set_status(OrderStatus::Assigned, now_ms());
            }
            let from = record.courier_id.replace(msg.courier.clone());
            if from.as_ref() != Some(&msg.courier) {
                // A new courier's seqs are its own: start de-duplication afresh.
                record.last_seq = 0;
                act.filter = GpsFilter::new(act.deps.settings.filter.clone());
            }
            Ok(Some(Relink {
                order: record.order_id.clone(),
                from,
                to: Some(msg.courier),
            }))
        })
    }
}

impl Handler<SetStatus> for OrderActor {
    type Result = ResponseActFuture<Self, Result<OrderView, ApiError>>;

    fn handle(&mut self, msg: SetStatus, _: &mut Context<Self>) -> Self::Result {
        self.change(|act| {
            let record = &mut act.record;
            if let Some(courier) = &msg.by_courier {
                if record.courier_id.as_ref() != Some(courier) {
                    return Err(ApiError::Forbidden(format!(
                        "order {} is not assigned to courier {courier}",
                        record.order_id
                    )));
                }
            }
            let next = record.status.request(msg.status)?;
            record.set_status(next, now_ms());
            Ok(record.status.is_final().then(|| Relink {
                order: record.order_id.clone(),
                from: record.courier_id.clone(),
                to: None,
            }))
        })
    }
}
