//! Each courier's plan: the order in which it visits the stops of all the orders it carries
//! (`PUT`/`GET /v1/couriers/{id}/plan`), kept by the registry, which knows those orders.
//!
//! Only the explicit plan ops gave is kept (in memory: after a restart every courier is back to
//! the order of assignment); the effective plan is derived from it and from the orders' states
//! whenever it is asked for, so an order that ends or a pickup that is reached drops out of it
//! without the registry hearing of every status change.

use std::future::Future;

use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture};
use trackline_core::order::{OrderStatus, OrderView};
use trackline_core::stops::{
    check_plan, effective_plan, CarriedOrder, PlanError, PlanStop, StopKind,
};
use trackline_core::CourierId;

use super::{Registry, Slot};
use crate::orders::messages::GetView;

/// Replace `courier`'s plan; the answer is the effective plan, or why nothing changed.
#[derive(Message)]
#[rtype(result = "Result<Vec<PlanStop>, PlanError>")]
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

/// What a plan needs of an order's state, `None` when `courier` no longer carries it.
fn carried_by(view: &OrderView, courier: &CourierId) -> Option<CarriedOrder> {
    if view.status.is_final() || view.courier_id.as_ref() != Some(courier) {
        return None;
    }
    let has_pickup = view.stops.iter().any(|s| s.kind == StopKind::Pickup);
    // At the pickup counts as reached: the courier is there, it is no stop to plan any more.
    let before_pickup = matches!(view.status, OrderStatus::Created | OrderStatus::Assigned);
    Some(CarriedOrder {
        order_id: view.order_id.clone(),
        pickup_pending: has_pickup && before_pickup,
    })
}

impl Registry {
    /// The orders `courier` carries, in the order of assignment, as their states stand now.
    fn carried(&self, courier: &CourierId) -> impl Future<Output = Vec<CarriedOrder>> + 'static {
        let views: Vec<_> = self
            .couriers
            .get(courier)
            .into_iter()
            .flatten()
            .filter_map(|order| match self.orders.get(order)? {
                // Read where it lies: a plan is no reason to start a dormant order's actor.
                Slot::Dormant(record) => {
                    let view = record.view();
                    Some(Box::pin(async move { Some(view) }) as BoxFuture<_>)
                }
                Slot::Live(actor, _) => {
                    let asked = actor.send(GetView);
                    Some(Box::pin(async move { asked.await.ok() }) as _)
                }
            })
            .collect();
        let courier = courier.clone();
        async move {
            join_all(views)
                .await
                .into_iter()
                .flatten()
                .filter_map(|view| carried_by(&view, &courier))
                .collect()
        }
    }

    /// The explicit plan of `courier` (empty: none).
    fn explicit_plan(&self, courier: &CourierId) -> &[PlanStop] {
        self.plans.get(courier).map_or(&[], Vec::as_slice)
    }
}

impl Handler<SetPlan> for Registry {
    type Result = ResponseActFuture<Self, Result<Vec<PlanStop>, PlanError>>;

    fn handle(&mut self, msg: SetPlan, _: &mut Context<Self>) -> Self::Result {
        let carried = self.carried(&msg.courier);
        Box::pin(
            fut::wrap_future(carried).map(move |carried, act: &mut Self, _| {
                check_plan(&msg.stops, &carried)?;
                let plan = effective_plan(&msg.stops, &carried);
                if msg.stops.is_empty() {
                    act.plans.remove(&msg.courier);
                } else {
                    act.plans.insert(msg.courier, msg.stops);
                }
                Ok(plan)
            }),
        )
    }
}

impl Handler<GetPlan> for Registry {
    type Result = ResponseActFuture<Self, Vec<PlanStop>>;

    fn handle(&mut self, msg: GetPlan, _: &mut Context<Self>) -> Self::Result {
        let carried = self.carried(&msg.courier);
        Box::pin(
            fut::wrap_future(carried).map(move |carried, act: &mut Self, _| {
                effective_plan(act.explicit_plan(&msg.courier), &carried)
            }),
        )
    }
}
