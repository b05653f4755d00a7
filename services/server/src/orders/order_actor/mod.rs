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

mod changes;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use trackline_core::eta::{EtaConfig, EtaEstimator, PlannedStop};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::Fix;
use trackline_core::history::{HistoryStore, Progress, WriteBatch};
use trackline_core::now_ms;
use trackline_core::order::{Eta, OrderRecord, OrderStatus, Position};
use trackline_core::stops::{self, CarriedOrder};
use trackline_core::webhooks::{EventTracker, TrackerSettings, WebhookEvent};
use trackline_core::CourierId;

use crate::orders::approaches::CourierApproaches;
use crate::orders::fanout::{Fanout, Streams};
use crate::orders::frames::{Frame, FrameKind};
use crate::orders::messages::{CourierSilent, Ingest, IngestFailure, IngestReport, Relink, Replan};
use crate::orders::resume_buffer::ResumeLimits;

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
    /// Where the order's changes of courier go (the registry, which routes fixes by them).
    pub relinks: Recipient<Relink>,
    /// Where an order says that it reached or left its pickup (the registry, which keeps each
    /// courier's plan).
    pub replans: Recipient<Replan>,
    pub settings: Arc<OrderSettings>,
    /// Where the orders of one courier share the estimate of the way to its next stop.
    pub approaches: CourierApproaches,
}

/// Tuning shared by every order.
#[derive(Debug, Clone, Default)]
pub struct OrderSettings {
    pub arrival_radius_m: f64,
    /// What bounds each order's resume buffer.
    pub resume: ResumeLimits,
    /// A watcher slow for this long is closed with 4008.
    pub slow_watcher_timeout: Duration,
    pub filter: FilterConfig,
    pub eta: EtaConfig,
    /// When the ETA and a courier's silence make webhook events.
    pub webhooks: TrackerSettings,
    /// Broker mode: the courier's home node, which sees all of its fixes, says when it went
    /// silent ([`CourierSilent`]); the order does not decide it by itself.
    pub silence_told_by_home: bool,
}

/// Move to the thread of `0`, between commits; the answer is the new actor (`None`: it stays,
/// as an order that has ended does for its last watchers).
#[derive(Message)]
#[rtype(result = "Option<Addr<OrderActor>>")]
pub struct MoveTo(pub ArbiterHandle);

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
    /// After a failed write of fixes: the first seq the store lacks. Until a frame that starts
    /// there (the app's resend after the 1011 close) is stored, frames that start later are
    /// refused, or their fixes would be stored past the gap and the resend then skipped as
    /// already seen.
    resend_from: Option<u64>,
    /// What the order's webhook events were last derived from.
    events: EventTracker,
    /// Events caused by no change of the record (the courier went silent, or came back): they
    /// go with the next write.
    queued_events: Vec<WebhookEvent>,
    /// When the last fix of the courier arrived (or the actor started).
    last_heard: std::time::Instant,
    /// Whether a fix arrived since the actor started.
    heard_since_start: bool,
    /// Where the order's own pickup is among the stops the estimator plans for (0: heading
    /// there); `None` once it is left, or for an order without one.
    own_pickup: Option<usize>,
    /// The estimator plans for other orders' stops too ([`FollowPlan`]): set while the courier's
    /// plan puts any before the order's door.
    following_plan: bool,
}

impl OrderActor {
    pub fn new(record: OrderRecord, deps: OrderDeps) -> Self {
        let own_stops = own_stops(&record);
        let own_pickup = (own_stops.len() > 1).then_some(0);
        let mut eta = EtaEstimator::with_stops(own_stops, deps.settings.eta.clone());
        if let Some(courier) = &record.courier_id {
            eta.share(deps.approaches.of(courier));
        }
        let filter = GpsFilter::new(deps.settings.filter.clone());
        let hook_state = deps
            .store
            .webhooks()
            .order_state(&record.order_id)
            .unwrap_or_else(|error| {
                tracing::error!(order_id = %record.order_id, %error, "reading webhook state failed");
                Default::default()
            });
        let events = EventTracker::resume(&record, &hook_state, deps.settings.webhooks);
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
            resend_from: None,
            events,
            queued_events: Vec::new(),
            last_heard: std::time::Instant::now(),
            heard_since_start: false,
            own_pickup,
            following_plan: false,
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
            // Issued after this order rolled back from a failed write: the store refuses the
            // writes issued before that (queued behind the failed one) and takes this one.
            follows_failure: self.resend_from.is_some(),
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
        // Derived from the record as this write leaves it: whatever changed it, the events
        // are durable exactly when the change is.
        let events_before = self.events.clone();
        let queued = self.queued_events.clone();
        batch.events = std::mem::take(&mut self.queued_events);
        batch
            .events
            .extend(self.events.changes(&self.record, now_ms()));
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
                    // Derived again by the next write, which carries the record whole.
                    act.events.roll_back(events_before);
                    act.queued_events.splice(0..0, queued);
                    if act.in_flight == 0 {
                        // What is left unpublished are the frames of failed writes: never
                        // durable, so never shown (a later write's frames follow them).
                        act.unpublished.clear();
                    }
                    Err(error.to_string())
                }
            };
            act.move_if_idle(ctx);
            outcome
        })
    }

    /// Writes `courier.offline` when the courier has been silent too long with the order.
    fn check_courier_silence(&mut self, ctx: &mut Context<Self>) {
        if !ctx.connected() && self.in_flight == 0 {
            // No address of the order is held any more: no fix, status or watcher can reach it,
            // and this interval is all that would keep it running.
            ctx.stop();
            return;
        }
        if self.moved_to.is_some() || self.deps.settings.silence_told_by_home {
            return;
        }
        let silent_for = self.last_heard.elapsed();
        if let Some(event) = self.events.silence(&self.record, silent_for, now_ms()) {
            self.queued_events.push(event);
            ctx.spawn(self.persist(Vec::new()).map(|_, _, _| ()));
        }
    }

    /// `courier.offline`, as the courier's home node decided it (broker mode).
    fn told_courier_silent(
        &mut self,
        msg: &CourierSilent,
    ) -> Option<impl ActorFuture<Self, Output = Result<(), String>>> {
        if self.record.courier_id.as_ref() != Some(&msg.courier) {
            return None; // reassigned meanwhile: the new courier's silence is not this one's
        }
        let silence = self.events.settings().courier_offline_after;
        if self.heard_since_start && self.last_heard.elapsed() < silence / 2 {
            // A fix reached the order after the home node's last one (they crossed): the home
            // node has it too by now.
            return None;
        }
        let event = self.events.silence(&self.record, silence, now_ms())?;
        self.queued_events.push(event);
        Some(self.persist(Vec::new()))
    }

    /// Applies one validated fix that the filter let through to the live state.
    fn apply_live(&mut self, fix: &Fix, shown: trackline_core::LatLon) {
        let (estimate, made_here) = self.eta.update_shared(fix, shown);
        let made = if made_here { "made" } else { "shared" };
        metrics::counter!("trackline_eta_updates_total", "estimate" => made).increment(1);
        let heading_to_pickup = self.own_pickup == Some(0);
        self.record.position = Some(Position::shown(fix, shown));
        // The order's ETA is its door's, past the stops ahead (its pickup's, and those of the
        // courier's other orders that its plan puts first); its pickup has its own.
        let arrivals = self.eta.arrivals_ms();
        let door_ms = arrivals.last().copied();
        self.record.eta = Some(Eta {
            window: self.eta.window(),
            ..Eta::arriving(fix.time_ms, door_ms.unwrap_or(estimate.arrive_at_ms))
        });
        self.record.pickup_eta = self
            .own_pickup
            .and_then(|i| arrivals.get(i))
            .map(|&ms| Eta::arriving(fix.time_ms, ms));
        let arrived = estimate.to_destination_m <= self.deps.settings.arrival_radius_m;
        let heading_to_door = self.eta.stops_ahead() == 0;
        let reached = match self.record.status {
            OrderStatus::Assigned if heading_to_pickup => Some(OrderStatus::AtPickup),
            OrderStatus::PickedUp if heading_to_door => Some(OrderStatus::Arriving),
            _ => None,
        };
        if let (Some(status), true) = (reached, arrived) {
            self.record.set_status(status, fix.time_ms);
            self.record_changed = true;
            if status == OrderStatus::AtPickup {
                self.tell_plan_changed();
            }
        }
        self.next_frame();
    }

    /// Tells the registry that the courier's plan changed with this order's status.
    fn tell_plan_changed(&self) {
        if let Some(courier) = &self.record.courier_id {
            self.deps.replans.do_send(Replan {
                courier: courier.clone(),
            });
        }
    }
}

/// The stops of `record` still to visit, for its estimator: the pickup while the order has not
/// been picked up, then the door (as `trackctl replay` builds them too).
pub(super) fn own_stops(record: &OrderRecord) -> Vec<PlannedStop> {
    stops::order_stops(
        record
            .pickup
            .as_ref()
            .filter(|_| before_pickup(record.status)),
        record.destination,
        record.destination_dwell_s,
        record.route.clone(),
    )
}

/// Not picked up yet (the courier may be at the pickup, waiting).
fn before_pickup(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Created | OrderStatus::Assigned | OrderStatus::AtPickup
    )
}

/// What a courier's plan needs of one of its orders.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlanEntry {
    pub carried: CarriedOrder,
    /// The pickup while the order has not been picked up.
    pub pickup: Option<PlannedStop>,
    /// The courier is at the pickup (reached, not left): no stop to plan, but its wait and
    /// handover come before every other stop.
    pub at_pickup: bool,
    pub door: PlannedStop,
}

/// `record` as `courier`'s plan sees it; `None` when `courier` does not carry it.
pub fn plan_entry(record: &OrderRecord, courier: &CourierId) -> Option<PlanEntry> {
    if record.status.is_final() || record.courier_id.as_ref() != Some(courier) {
        return None;
    }
    let mut stops = own_stops(record);
    // unwrap: an order's stops always end at its door
    let door = stops.pop().unwrap();
    let pickup = stops.pop();
    let at_pickup = record.status == OrderStatus::AtPickup;
    Some(PlanEntry {
        carried: CarriedOrder {
            order_id: record.order_id.clone(),
            pickup_pending: pickup.is_some() && !at_pickup,
        },
        pickup,
        at_pickup,
        door,
    })
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!("trackline_order_actors").increment(1.0);
        let every = self.events.settings().silence_check_every();
        ctx.run_interval(every, Self::check_courier_silence);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!("trackline_order_actors").decrement(1.0);
    }
}

impl Handler<CourierSilent> for OrderActor {
    type Result = ResponseActFuture<Self, Result<(), String>>;

    fn handle(&mut self, msg: CourierSilent, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            let asked = successor.send(msg);
            return Box::pin(fut::wrap_future(async move {
                asked.await.map_err(|e| format!("order actor: {e}"))?
            }));
        }
        match self.told_courier_silent(&msg) {
            Some(persisted) => Box::pin(persisted),
            None => Box::pin(fut::ready(Ok(()))),
        }
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
            report.failed = Some(IngestFailure::Moved);
            return Box::pin(fut::ready(report));
        }
        if !self.record.status.takes_fixes()
            || self.record.courier_id.as_ref() != Some(&msg.courier)
        {
            // The courier was unassigned or the order ended while the fixes were on their way.
            return Box::pin(fut::ready(report));
        }
        let first_new = msg
            .fixes
            .iter()
            .map(|f| f.seq)
            .filter(|&seq| seq > self.record.last_seq)
            .min();
        if let (Some(missing), Some(first)) = (self.resend_from, first_new) {
            if first > missing {
                report.failed = Some(IngestFailure::Store(format!(
                    "an earlier write of order {} failed: resend from seq {missing}",
                    self.record.order_id
                )));
                return Box::pin(fut::ready(report));
            }
        }
        let fills_gap = self.resend_from.is_some() && first_new.is_some();
        if !msg.fixes.is_empty() {
            self.last_heard = std::time::Instant::now();
            self.heard_since_start = true;
            if let Some(event) = self.events.heard_from_courier(&self.record, now_ms()) {
                self.queued_events.push(event);
            }
        }
        for code in msg.invalid.iter() {
            self.record.count_rejected(*code);
            self.record_changed = true;
        }
        // Restored if the commit fails: the app resends after the 1011 close, and those fixes
        // must then be stored, not skipped as already seen.
        let seen_before = self.record.last_seq;
        let mut stored = Vec::new();
        let mut new_fixes = 0;
        for fix in msg.fixes.iter() {
            if fix.seq <= self.record.last_seq {
                continue; // a resend of a fix this order already has
            }
            self.record.last_seq = fix.seq;
            new_fixes += 1;
            match self.filter.assess(fix) {
                Verdict::Live(shown) => {
                    self.apply_live(fix, shown);
                    stored.push((self.record.order_id.clone(), *fix));
                }
                Verdict::HistoryOnly => stored.push((self.record.order_id.clone(), *fix)),
                // The filter saw the fixes of a failed write already: in the resend that fills
                // the gap they are history all the same.
                Verdict::Duplicate if fills_gap => {
                    stored.push((self.record.order_id.clone(), *fix));
                }
                Verdict::Duplicate => {}
                Verdict::Rejected(rejection) => {
                    self.record.count_rejected(rejection.code);
                    self.record_changed = true;
                    report.rejected.push((fix.seq, rejection));
                }
            }
        }
        if let Some(first) = first_new {
            // Kept whatever the filter made of them: the offset is what turns a stored time back
            // into the device's. The count lives in the whole record, so a frame of corrected
            // fixes writes the record whole (as a frame with refused fixes does): the count read
            // back from the store is then never behind, at the cost of one record per frame for
            // a courier whose clock is off.
            if self
                .record
                .clock
                .note(first, new_fixes, msg.clock_offset_ms)
            {
                self.record_changed = true;
            }
        }
        report.stored = stored.len();
        // Committed even when nothing is new: a resend of fixes still in flight must not be
        // acked before the flush that covers them, and this job queues behind that flush.
        Box::pin(self.persist(stored).map(move |outcome, act, _| {
            if outcome.is_err() {
                act.record.last_seq = act.record.last_seq.min(seen_before);
                act.resend_from = Some(act.record.last_seq + 1);
            } else if fills_gap {
                act.resend_from = None;
            }
            report.failed = outcome.err().map(IngestFailure::Store);
            report
        }))
    }
}

impl Streams for OrderActor {
    fn fanout(&mut self) -> &mut Fanout {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests;
