//! One actor per active order: filters each fix, appends it to history, re-estimates the ETA and
//! pushes the new state to the order's watchers once it is durable.
//!
//! An actor can move to another thread ([`MoveTo`]: the registry keeps it with the session of
//! its courier). Between commits it hands its whole state to a new actor on that thread; the old
//! one stays a few seconds as a forwarder, so that whoever still holds its address reaches the
//! new one, and refuses fixes (unstored, so the app resends them on the new route).
//!
//! State changes happen in memory at once, but a watcher (and the courier's ack) only hears of
//! them after the history store has flushed them: every frame a watcher ever saw survives a
//! crash, so offsets are never reused and an epoch only changes when the data itself is lost.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use trackline_core::eta::{EtaConfig, EtaEstimator};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::{Fix, RejectCode, Rejection};
use trackline_core::history::{HistoryStore, Progress, WriteBatch};
use trackline_core::order::{OrderRecord, OrderStatus, OrderView, Position};
use trackline_core::{now_ms, CourierId};

use crate::error::ApiError;
use crate::fanout::{Fanout, Streams, Subscribe, Unsubscribe};
use crate::frames::{Frame, FrameKind};
use crate::registry::{Registry, Relink};

/// How long a delivered or cancelled order's actor stays up to serve late watchers.
pub const LINGER_AFTER_FINAL: Duration = Duration::from_secs(30);

/// How long a moved actor forwards to its successor. The session that asked for the move routes
/// to the successor from then on (and any other session of the courier is told to ask again), so
/// a message still sent to the old address was on its way already: this only needs to outlast
/// milliseconds.
const FORWARD_AFTER_MOVE: Duration = Duration::from_secs(5);

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
    /// What bounds each order's resume buffer.
    pub resume: crate::fanout::ResumeLimits,
    /// A watcher slow for this long is closed with 4008.
    pub slow_watcher_timeout: Duration,
    pub filter: FilterConfig,
    pub eta: EtaConfig,
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
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IngestReport {
    pub rejected: Vec<(u64, Rejection)>,
    pub stored: usize,
    /// Set when the history store failed: nothing of the batch may be acked.
    pub failed: Option<String>,
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

/// Move to the thread of `0`, between commits; the answer is the new actor (`None`: it stays,
/// as an order that has ended does for its last watchers).
#[derive(Message)]
#[rtype(result = "Option<Addr<OrderActor>>")]
pub struct MoveTo(pub ArbiterHandle);

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
    /// The watchers and the durable (published) frames.
    stream: Fanout,
    /// Frames whose changes are not yet known to be durable, oldest first.
    unpublished: std::collections::VecDeque<Arc<Frame>>,
    /// The record changed in more than its progress (status, courier, counts of refused fixes)
    /// since it was last handed to the store whole: the next write carries it whole.
    record_changed: bool,
    /// The offset and last seq of the last state handed to the store.
    persisted: (u64, u64),
    /// Commits handed to the store and not yet answered.
    in_flight: usize,
    /// A move asked for while commits were in flight, made when the last is answered.
    move_when_idle: Option<(
        ArbiterHandle,
        tokio::sync::oneshot::Sender<Option<Addr<Self>>>,
    )>,
    /// Set once this actor has handed its state over: it only forwards from then on.
    moved_to: Option<Addr<Self>>,
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
        let persisted = (record.offset, record.last_seq);
        let stream = Fanout::new(
            published,
            deps.settings.resume,
            deps.settings.slow_watcher_timeout,
        );
        Self {
            record,
            filter,
            eta,
            deps,
            stream,
            unpublished: Default::default(),
            record_changed: false,
            persisted,
            in_flight: 0,
            move_when_idle: None,
            moved_to: None,
        }
    }

    /// Hands the whole state to a new actor on `arbiter` and stays behind as its forwarder;
    /// `None` (no move) once the order has ended.
    fn move_to(&mut self, arbiter: &ArbiterHandle, ctx: &mut Context<Self>) -> Option<Addr<Self>> {
        if self.stream.published().is_final || self.moved_to.is_some() {
            return self.moved_to.clone();
        }
        debug_assert!(self.in_flight == 0 && self.unpublished.is_empty());
        let forwarder = self.forwarder();
        let mut state = std::mem::replace(self, forwarder);
        let successor = OrderActor::start_in_arbiter(arbiter, move |ctx| {
            state.stream.adopt(ctx);
            state
        });
        self.moved_to = Some(successor.clone());
        metrics::counter!("trackline_order_moves_total").increment(1);
        ctx.run_later(FORWARD_AFTER_MOVE, |_, ctx| ctx.stop());
        Some(successor)
    }

    /// What stays behind at a move: an actor with no state of its own, whose stream shows the
    /// state at the move (what a caller gets if the successor is gone).
    fn forwarder(&self) -> Self {
        let mut forwarder = OrderActor::new(
            OrderRecord::stand_in(self.record.order_id.clone()),
            self.deps.clone(),
        );
        forwarder.stream = Fanout::new(
            self.stream.published().clone(),
            self.deps.settings.resume,
            self.deps.settings.slow_watcher_timeout,
        );
        forwarder
    }

    /// Makes the move asked for while commits were in flight, once none is.
    fn move_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight == 0 {
            if let Some((arbiter, answer)) = self.move_when_idle.take() {
                let _ = answer.send(self.move_to(&arbiter, ctx));
            }
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
            self.stream.publish(frame, ctx);
            metrics::counter!("trackline_updates_published_total").increment(1);
        }
        if self.stream.published().is_final {
            ctx.run_later(LINGER_AFTER_FINAL, |_, ctx| ctx.stop());
        }
    }

    /// Persists `fixes` with what changed of the record and, once durable, publishes the frames
    /// up to now.
    ///
    /// The record goes whole only when more than its progress changed; otherwise only the
    /// progress (offset, last seq, position, ETA), and nothing of it when the state did not move
    /// (a resend): the store lays progress over the last whole record when it reads.
    fn persist(
        &mut self,
        fixes: Vec<(trackline_core::OrderId, Fix)>,
    ) -> impl ActorFuture<Self, Output = Result<(), String>> {
        let offset = self.record.offset;
        let now = (offset, self.record.last_seq);
        let whole = std::mem::take(&mut self.record_changed);
        let mut batch = WriteBatch {
            fixes,
            ..Default::default()
        };
        if whole {
            batch.orders.push(self.record.clone());
        } else if now != self.persisted {
            // A stored fix always moved last_seq, so this covers every batch with fixes.
            let id = self.record.order_id.clone();
            batch.progress.push((id, Progress::of(&self.record)));
        }
        self.persisted = now;
        self.in_flight += 1;
        let commit = self.deps.store.commit(batch);
        commit.into_actor(self).map(move |outcome, act, ctx| {
            act.in_flight -= 1;
            let outcome = match outcome {
                Ok(()) => {
                    act.publish_through(offset, ctx);
                    Ok(())
                }
                Err(error) => {
                    tracing::error!(order_id = %act.record.order_id, %error, "history write failed");
                    // The next write carries the whole record, and what this one failed to.
                    act.record_changed = true;
                    Err(error.to_string())
                }
            };
            act.move_if_idle(ctx);
            outcome
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
            self.record_changed = true;
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
        // The caller hears back only once the registry routes by the new assignment: a frame
        // the courier sends after that must reach the orders it names (courier sessions keep a
        // copy of their routes, and check it against the registry's version at every frame).
        let relinked = relink.map(|relink| self.deps.registry.send(relink));
        self.record_changed = true;
        self.next_frame();
        Box::pin(
            self.persist(Vec::new())
                .then(move |outcome, _, _| {
                    fut::wrap_future(async move {
                        if let Some(relinked) = relinked {
                            // An error means the registry is gone: the server is shutting down.
                            let _ = relinked.await;
                        }
                        outcome
                    })
                })
                .map(|outcome, act, _| match outcome {
                    Ok(()) => Ok(act.stream.published().view.clone()),
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

impl Handler<MoveTo> for OrderActor {
    type Result = ResponseFuture<Option<Addr<Self>>>;

    fn handle(&mut self, msg: MoveTo, ctx: &mut Context<Self>) -> Self::Result {
        if self.in_flight == 0 {
            let moved = self.move_to(&msg.0, ctx);
            return Box::pin(async move { moved });
        }
        let (answer, moved) = tokio::sync::oneshot::channel();
        // A later request wins; the earlier one hears that nothing moved.
        if let Some((_, earlier)) = self.move_when_idle.replace((msg.0, answer)) {
            let _ = earlier.send(None);
        }
        Box::pin(async move { moved.await.ok().flatten() })
    }
}

impl Handler<Ingest> for OrderActor {
    type Result = ResponseActFuture<Self, IngestReport>;

    fn handle(&mut self, msg: Ingest, _: &mut Context<Self>) -> Self::Result {
        let mut report = IngestReport::default();
        if self.moved_to.is_some() {
            // Not forwarded: a later frame of the same session, sent to the new address, could
            // overtake this one, whose fixes the order would then skip as resends.
            report.failed = Some("the order moved while these fixes were on their way".into());
            return Box::pin(fut::ready(report));
        }
        if !self.record.status.takes_fixes()
            || self.record.courier_id.as_ref() != Some(&msg.courier)
        {
            // The courier was unassigned or the order ended while the fixes were on their way.
            return Box::pin(fut::ready(report));
        }
        for code in msg.invalid.iter() {
            self.record.count_rejected(*code);
            self.record_changed = true;
        }
        // Restored if the commit fails: the app resends after the 1011 close, and those fixes
        // must then be stored, not skipped as already seen.
        let seen_before = self.record.last_seq;
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
                    self.record_changed = true;
                    report.rejected.push((fix.seq, rejection));
                }
            }
        }
        report.stored = stored.len();
        // Committed even when nothing is new: a resend of fixes still in flight must not be
        // acked before the flush that covers them, and this job queues behind that flush.
        Box::pin(self.persist(stored).map(move |outcome, act, _| {
            if outcome.is_err() {
                act.record.last_seq = act.record.last_seq.min(seen_before);
            }
            report.failed = outcome.err();
            report
        }))
    }
}

impl Streams for OrderActor {
    fn fanout(&mut self) -> &mut Fanout {
        &mut self.stream
    }
}

impl Handler<Subscribe> for OrderActor {
    type Result = ResponseFuture<Vec<Arc<Frame>>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            let (successor, watcher) = (successor.clone(), msg.watcher.clone());
            return Box::pin(async move {
                successor.send(msg).await.unwrap_or_else(|_| {
                    // The successor is gone (its order ended): as if this actor were.
                    watcher.do_send(crate::fanout::Push::Evict {
                        code: 1001,
                        reason: "order is no longer served here; reconnect".into(),
                    });
                    Vec::new()
                })
            });
        }
        let first = self.stream.first_frames(msg.resume.as_ref());
        self.stream.add(msg.watcher_id, msg.watcher);
        Box::pin(async move { first })
    }
}

impl Handler<Unsubscribe> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        match &self.moved_to {
            Some(successor) => successor.do_send(msg),
            None => self.stream.remove(msg.watcher_id),
        }
    }
}

impl Handler<GetView> for OrderActor {
    type Result = ResponseFuture<OrderView>;

    fn handle(&mut self, msg: GetView, _: &mut Context<Self>) -> Self::Result {
        let view = self.stream.published().view.clone();
        match &self.moved_to {
            // The forwarder's view is the state at the move: what a gone successor last had.
            Some(successor) => {
                let asked = successor.send(msg);
                Box::pin(async move { asked.await.unwrap_or(view) })
            }
            None => Box::pin(async move { view }),
        }
    }
}

/// A forwarder's answer to a change: its successor's.
fn forward_change<M>(
    successor: &Addr<OrderActor>,
    msg: M,
) -> ResponseActFuture<OrderActor, Result<OrderView, ApiError>>
where
    M: Message<Result = Result<OrderView, ApiError>> + Send + 'static,
    OrderActor: Handler<M>,
{
    let asked = successor.send(msg);
    Box::pin(fut::wrap_future(async move {
        asked
            .await
            .map_err(|e| ApiError::Internal(format!("order actor: {e}")))?
    }))
}

impl Handler<Assign> for OrderActor {
    type Result = ResponseActFuture<Self, Result<OrderView, ApiError>>;

    fn handle(&mut self, msg: Assign, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            return forward_change(successor, msg);
        }
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
        if let Some(successor) = &self.moved_to {
            return forward_change(successor, msg);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::counting;
    use futures_util::future::join_all;
    use trackline_core::{LatLon, OrderId};

    const START: LatLon = LatLon {
        lat: 48.85,
        lon: 2.35,
    };

    /// Fix `seq` of a courier riding north-east at ~8 m/s, one fix a second.
    fn fix(seq: u64) -> Fix {
        let step = seq as f64 * 6e-5;
        Fix {
            seq,
            time_ms: 1_780_000_000_000 + seq as i64 * 1000,
            pos: LatLon::new(START.lat + step, START.lon + step),
            accuracy_m: Some(5.0),
            speed_mps: Some(8.0),
            heading_deg: Some(34.0),
        }
    }

    /// What an active order's actor holds (record, filter, ETA, stream with its resume buffer,
    /// mailbox), measured with the counting allocator over 1,000 orders that take almost seven
    /// minutes of fixes each, compacted every 15 fixes as the server does at one fix a second:
    /// the bytes live with the actors running, less those still live once they are gone (what
    /// the history store holds for what was written, which outlives the orders; printed too).
    #[test]
    fn an_active_order_actor_holds_at_most_16_kib() {
        const ORDERS: usize = 1000;
        const FIXES: u64 = 400;
        let _alone = counting::measuring();
        let dir = tempfile::tempdir().unwrap();
        let (per_order, store) = actix::System::new().block_on(async {
            let options = trackline_core::history::StoreOptions {
                cache_bytes: 1024 * 1024,
                ..Default::default()
            };
            let (store, _writer) = HistoryStore::open_with(dir.path(), options).unwrap();
            let settings = Arc::new(OrderSettings {
                arrival_radius_m: 50.0,
                slow_watcher_timeout: Duration::from_secs(10),
                ..Default::default()
            });
            let registry = Registry::new(
                Vec::new(),
                vec![Arbiter::current()],
                store.clone(),
                settings.clone(),
                1,
                None,
            )
            .start();
            let deps = OrderDeps {
                store: store.clone(),
                registry,
                settings,
            };
            let courier = CourierId::new("courier-m").unwrap();
            let destination = LatLon::new(START.lat + 0.05, START.lon + 0.05);
            let before = counting::live_bytes();
            let mut actors = Vec::new();
            for i in 0..ORDERS {
                let record = OrderRecord::new(
                    OrderId::new(&format!("order-m-{i}")).unwrap(),
                    destination,
                    Some(courier.clone()),
                    Some(vec![START, destination]),
                    None,
                    now_ms(),
                );
                assert!(store.create_order(record.clone()).await.unwrap());
                actors.push(OrderActor::new(record, deps.clone()).start());
            }
            let mut per_order = vec![(counting::live_bytes() - before) / ORDERS as isize];
            for seq in 1..=FIXES {
                let fixes: Arc<[Fix]> = vec![fix(seq)].into();
                let reports = join_all(actors.iter().map(|actor| {
                    actor.send(Ingest {
                        courier: courier.clone(),
                        fixes: fixes.clone(),
                        invalid: Vec::new().into(),
                    })
                }))
                .await;
                for report in reports {
                    let report = report.unwrap();
                    assert_eq!((report.stored, report.failed), (1, None), "fix {seq}");
                }
                if seq % 15 == 0 {
                    store.compact_now().unwrap();
                }
                if seq % 100 == 0 {
                    let bytes = counting::live_bytes() - before;
                    per_order.push(bytes / ORDERS as isize);
                }
            }
            drop(actors);
            // The actors stop once their addresses are gone, on this thread: let them.
            actix_rt::time::sleep(Duration::from_millis(200)).await;
            let left = (counting::live_bytes() - before) / ORDERS as isize;
            (per_order, left)
        });
        let actor = per_order.last().unwrap() - store;
        eprintln!(
            "bytes per active order after 0, 100, 200, 300, 400 fixes: {per_order:?}; \
             the store's of them: {store}; the actor's: {actor}"
        );
        assert!(actor <= 16 * 1024, "{actor} bytes per order actor");
        assert!(
            actor > 0,
            "the actors were measured: {per_order:?}, {store}"
        );
    }
}
