//! Each courier's plan: the order in which it visits the stops of all the orders it carries
//! (`PUT`/`GET /v1/couriers/{id}/plan`), kept by the registry, which knows those orders.
//!
//! Only the explicit plan ops gave is kept (in memory, and durably in the store before the
//! answer, so that it outlives a restart); the effective plan is derived from it and from the
//! orders' states.
//! It is derived again, and each order told the stops before its door ([`FollowPlan`]), only
//! when it can change: a plan is set, an order is linked or unlinked (assigned, ended), reaches
//! or leaves its pickup ([`Replan`]), or starts its actor, and before a courier session gets its
//! routes. A fix costs no plan work: the way to the courier's next stop is estimated once for all
//! the orders it carries on this node (`orders::approaches`), and each order's estimator prices
//! the stops after it that it was given, with the speed learnt on that way.
//!
//! Broker mode: a courier's plan is kept and derived at its home node, which knows all of its
//! orders (from their links): it asks their owners what the plan needs of each
//! ([`PlanEntryHere`]) and tells them the stops before each door; an owner whose order reaches
//! or leaves its pickup, or starts its actor, has the home node derive the plan again.

use std::future::Future;

use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture};
use trackline_core::stops::{
    check_plan, effective_plan, stops_through, CarriedOrder, PlanError, PlanStop, StopKind,
};
use trackline_core::{CourierId, OrderId};

use super::{Registry, Slot};
use crate::orders::messages::{FollowPlan, GetPlanEntry, Replan};
use crate::orders::order_actor::{plan_entry, PlanEntry};

/// Why a plan was not set.
#[derive(Debug)]
pub enum SetPlanError {
    /// The plan does not fit the orders the courier carries.
    Invalid(PlanError),
    /// The plan could not be stored; the one in place stays.
    Store(trackline_core::history::StoreError),
}

/// Replace `courier`'s plan; the answer is the effective plan, or why nothing changed.
#[derive(Message)]
#[rtype(result = "Result<Vec<PlanStop>, SetPlanError>")]
pub struct SetPlan {
    pub courier: CourierId,
    /// Empty: back to the order of assignment.
    pub stops: Vec<PlanStop>,
}

/// `courier`'s effective plan.
#[derive(Message)]
#[rtype(result = "Vec<PlanStop>")]
pub struct GetPlan {
    pub courier: CourierId,
}

/// The orders of `entries` as a plan is checked against them.
fn carried(entries: &[PlanEntry]) -> Vec<CarriedOrder> {
    entries.iter().map(|e| e.carried.clone()).collect()
}

impl Registry {
    /// What the plan needs of each order `courier` carries, in the order of assignment, as
    /// their states stand now (asked of their owners, in broker mode).
    pub(super) fn plan_entries(
        &self,
        courier: &CourierId,
    ) -> impl Future<Output = Vec<PlanEntry>> + 'static {
        let entries: Vec<BoxFuture<'static, Option<PlanEntry>>> = self
            .couriers
            .get(courier)
            .into_iter()
            .flatten()
            .filter_map(
                |order| match self.topology.plan_entry_at_owner(order, courier) {
                    Some(at_owner) => Some(Box::pin(at_owner) as BoxFuture<_>),
                    None => self.local_plan_entry(order, courier),
                },
            )
            .collect();
        async move { join_all(entries).await.into_iter().flatten().collect() }
    }

    /// What `courier`'s plan needs of `order`, active here; `None` when it is not.
    fn local_plan_entry(
        &self,
        order: &OrderId,
        courier: &CourierId,
    ) -> Option<BoxFuture<'static, Option<PlanEntry>>> {
        match self.orders.get(order)? {
            // Read where it lies: a plan is no reason to start a dormant order's actor.
            Slot::Dormant(record) => {
                let entry = plan_entry(record, courier);
                Some(Box::pin(async move { entry }))
            }
            Slot::Live(actor, _) => {
                let asked = actor.send(GetPlanEntry {
                    courier: courier.clone(),
                });
                Some(Box::pin(async move { asked.await.ok().flatten() }))
            }
        }
    }

    /// The explicit plan of `courier` (empty: none).
    fn explicit_plan(&self, courier: &CourierId) -> &[PlanStop] {
        self.plans.get(courier).map_or(&[], Vec::as_slice)
    }

    /// Derives `courier`'s plan again, soon (after the change being handled is applied).
    pub(super) fn replan_later(&self, courier: &CourierId) {
        if let Some(deps) = &self.deps {
            deps.replans.do_send(Replan {
                courier: courier.clone(),
            });
        }
    }

    /// Tells each running order of `courier` the stops before its door in the effective plan;
    /// done once every order has them queued (those owned here at once, in broker mode those
    /// owned by other nodes when they answer).
    pub(super) fn follow(
        &self,
        courier: &CourierId,
        entries: &[PlanEntry],
    ) -> impl Future<Output = ()> + 'static {
        let mut told_elsewhere = Vec::new();
        let plan = effective_plan(self.explicit_plan(courier), &carried(entries));
        // Where the courier is now: every order's way goes on from these pickups.
        let current: Vec<_> = entries
            .iter()
            .filter(|e| e.at_pickup)
            .filter_map(|e| Some((&e.carried.order_id, e.pickup.as_ref()?)))
            .collect();
        let stop_of = |stop: &PlanStop| {
            let entry = entries
                .iter()
                .find(|e| e.carried.order_id == stop.order_id)?;
            match stop.kind {
                StopKind::Pickup => entry.pickup.as_ref().filter(|_| !entry.at_pickup),
                StopKind::Dropoff => Some(&entry.door),
            }
        };
        for entry in entries {
            let order = &entry.carried.order_id;
            let Some(through) = stops_through(order, &current, &plan, stop_of) else {
                continue;
            };
            if let Some(told) = self.topology.follow_at_owner(order, &through) {
                told_elsewhere.push(told);
                continue;
            }
            let Some(Slot::Live(actor, _)) = self.orders.get(order) else {
                continue; // started later, it asks for the plan then
            };
            actor.do_send(FollowPlan(through));
        }
        async move {
            join_all(told_elsewhere).await;
        }
    }
}

impl Registry {
    /// Reads what the plan needs of `courier`'s orders, then runs `then` with them on the
    /// registry: the shape of every plan message.
    fn with_plan_entries<R: 'static>(
        &self,
        courier: &CourierId,
        then: impl FnOnce(&mut Self, Vec<PlanEntry>) -> R + 'static,
    ) -> ResponseActFuture<Self, R> {
        let entries = self.plan_entries(courier);
        Box::pin(
            fut::wrap_future(entries).map(move |entries, act: &mut Self, _| then(act, entries)),
        )
    }
}

impl Handler<SetPlan> for Registry {
    type Result = ResponseActFuture<Self, Result<Vec<PlanStop>, SetPlanError>>;

    fn handle(&mut self, msg: SetPlan, _: &mut Context<Self>) -> Self::Result {
        let set = self.with_plan_entries(&msg.courier.clone(), move |act, entries| {
            let carried = carried(&entries);
            check_plan(&msg.stops, &carried).map_err(SetPlanError::Invalid)?;
            // Blocking, on the registry's thread: a plan is an ops call, seldom made, and the
            // answer must mean it is kept.
            act.plan_store
                .set(&msg.courier, &msg.stops)
                .map_err(SetPlanError::Store)?;
            let plan = effective_plan(&msg.stops, &carried);
            if msg.stops.is_empty() {
                act.plans.remove(&msg.courier);
            } else {
                act.plans.insert(msg.courier.clone(), msg.stops);
            }
            Ok((plan, act.follow(&msg.courier, &entries)))
        });
        // Answered once every order has the plan queued: a fix the courier sends after the
        // answer is estimated by the plan, whichever node owns the order.
        Box::pin(set.then(|set, _, _| {
            fut::wrap_future(async move {
                let (plan, told) = set?;
                told.await;
                Ok(plan)
            })
        }))
    }
}

impl Handler<GetPlan> for Registry {
    type Result = ResponseActFuture<Self, Vec<PlanStop>>;

    fn handle(&mut self, msg: GetPlan, _: &mut Context<Self>) -> Self::Result {
        self.with_plan_entries(&msg.courier.clone(), move |act, entries| {
            effective_plan(act.explicit_plan(&msg.courier), &carried(&entries))
        })
    }
}

impl Handler<Replan> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Replan, _: &mut Context<Self>) -> Self::Result {
        // Broker mode: the courier's plan, and all of its orders, are known at its home node.
        if self.topology.replan_at_home(&msg.courier) {
            return Box::pin(fut::ready(()));
        }
        self.with_plan_entries(&msg.courier.clone(), move |act, entries| {
            // Nobody waits for a replan: the owners are told in the background.
            actix_rt::spawn(act.follow(&msg.courier, &entries));
        })
    }
}

/// At the owner of `order` (broker mode): what `courier`'s plan needs of it, for the courier's
/// home node; `None` when it is not active here or `courier` does not carry it.
#[derive(Message)]
#[rtype(result = "Option<PlanEntry>")]
pub struct PlanEntryHere {
    pub order: OrderId,
    pub courier: CourierId,
}

impl Handler<PlanEntryHere> for Registry {
    type Result = ResponseFuture<Option<PlanEntry>>;

    fn handle(&mut self, msg: PlanEntryHere, _: &mut Context<Self>) -> Self::Result {
        match self.local_plan_entry(&msg.order, &msg.courier) {
            Some(entry) => entry,
            None => Box::pin(async { None }),
        }
    }
}

/// At the owner of `order` (broker mode): the stops before its door in its courier's plan, from
/// the courier's home node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FollowHere {
    pub order: OrderId,
    pub through: trackline_core::stops::StopsThrough,
}

impl Handler<FollowHere> for Registry {
    type Result = ();

    fn handle(&mut self, msg: FollowHere, _: &mut Context<Self>) {
        // A dormant order is told when its actor starts (which has the home node replan).
        if let Some(Slot::Live(actor, _)) = self.orders.get(&msg.order) {
            actor.do_send(FollowPlan(msg.through));
        }
    }
}
