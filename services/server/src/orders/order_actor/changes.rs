//! What an order actor answers besides fixes: watchers joining and leaving, its view, and the
//! changes ops or the courier make (assignment, status), each forwarded to the successor by an
//! actor that has moved.

use std::sync::Arc;

use actix::prelude::*;
use trackline_core::now_ms;
use trackline_core::order::{OrderStatus, OrderView};

use super::{own_stops, plan_entry, OrderActor, PlanEntry};
use crate::orders::errors::OrderError;
use crate::orders::fanout::{Subscribe, Unsubscribe};
use crate::orders::frames::Frame;
use crate::orders::messages::{
    Assign, FollowPlan, GetPlanEntry, GetView, Relink, Replan, SetStatus,
};
use trackline_core::filter::GpsFilter;

impl OrderActor {
    fn change<F>(&mut self, change: F) -> ResponseActFuture<Self, Result<OrderView, OrderError>>
    where
        F: FnOnce(&mut Self) -> Result<Option<Relink>, OrderError>,
    {
        let relink = match change(self) {
            Ok(relink) => relink,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        // The caller hears back only once the registry routes by the new assignment: a frame
        // the courier sends after that must reach the orders it names (courier sessions keep a
        // copy of their routes, and check it against the registry's version at every frame).
        let relinked = relink.map(|relink| self.deps.relinks.send(relink));
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
                    Err(e) => Err(OrderError::Internal(e)),
                }),
        )
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
                    watcher.evict(1001, "order is no longer served here; reconnect".into());
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
) -> ResponseActFuture<OrderActor, Result<OrderView, OrderError>>
where
    M: Message<Result = Result<OrderView, OrderError>> + Send + 'static,
    OrderActor: Handler<M>,
{
    let asked = successor.send(msg);
    Box::pin(fut::wrap_future(async move {
        asked
            .await
            .map_err(|e| OrderError::Internal(format!("order actor: {e}")))?
    }))
}

impl Handler<Assign> for OrderActor {
    type Result = ResponseActFuture<Self, Result<OrderView, OrderError>>;

    fn handle(&mut self, msg: Assign, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            return forward_change(successor, msg);
        }
        self.change(|act| {
            let record = &mut act.record;
            if record.status.is_final() {
                return Err(OrderError::Closed {
                    order: record.order_id.clone(),
                    status: record.status,
                });
            }
            if record.status == OrderStatus::Created {
                record.set_status(OrderStatus::Assigned, now_ms());
            }
            let from = record.courier_id.replace(msg.courier.clone());
            if from.as_ref() != Some(&msg.courier) {
                // A new courier's seqs are its own: start de-duplication afresh.
                record.last_seq = 0;
                act.filter = GpsFilter::new(act.deps.settings.filter.clone());
                act.eta.share(act.deps.approaches.of(&msg.courier));
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
    type Result = ResponseActFuture<Self, Result<OrderView, OrderError>>;

    fn handle(&mut self, msg: SetStatus, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            return forward_change(successor, msg);
        }
        self.change(|act| {
            let record = &mut act.record;
            if let Some(courier) = &msg.by_courier {
                if record.courier_id.as_ref() != Some(courier) {
                    return Err(OrderError::NotAssigned {
                        order: record.order_id.clone(),
                        courier: courier.clone(),
                    });
                }
            }
            let next = record.status.request(msg.status)?;
            let collected = next == OrderStatus::PickedUp && record.status != OrderStatus::PickedUp;
            if collected {
                // Collected: the estimate heads on from here. A plan that put another stop
                // first is brought up to date by the registry, told below.
                if act.own_pickup.take() == Some(0) {
                    act.eta.advance();
                }
                record.pickup_eta = None;
            }
            record.set_status(next, now_ms());
            if let Some(courier) = record.courier_id.clone().filter(|_| collected) {
                act.deps.replans.do_send(Replan { courier });
            }
            Ok(record.status.is_final().then(|| Relink {
                order: record.order_id.clone(),
                from: record.courier_id.clone(),
                to: None,
            }))
        })
    }
}

impl Handler<GetPlanEntry> for OrderActor {
    type Result = ResponseFuture<Option<PlanEntry>>;

    fn handle(&mut self, msg: GetPlanEntry, _: &mut Context<Self>) -> Self::Result {
        if let Some(successor) = &self.moved_to {
            let asked = successor.send(msg);
            return Box::pin(async move { asked.await.ok().flatten() });
        }
        let entry = plan_entry(&self.record, &msg.courier);
        Box::pin(async move { entry })
    }
}

impl Handler<FollowPlan> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: FollowPlan, _: &mut Context<Self>) {
        if let Some(successor) = &self.moved_to {
            successor.do_send(msg);
            return;
        }
        let through = msg.0;
        // A courier with this order alone: the estimator already plans for these stops, and
        // keeps them untouched (the order's ETA is what it was without plans).
        let only_own = through.stops == own_stops(&self.record);
        if only_own && !self.following_plan {
            return;
        }
        self.following_plan = !only_own;
        self.own_pickup = through.own_pickup;
        self.eta.replan(through.stops);
    }
}
