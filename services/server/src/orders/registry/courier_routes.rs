//! Where a courier's fixes go: the registry's answers to courier sessions ([`Lookup`] on one node,
//! [`Route`] in broker mode, [`IngestHere`] from another node), and the courier's open sessions.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture};
use trackline_core::fix::{Fix, RejectCode};
use trackline_core::{CourierId, OrderId};

use super::{LinkChanged, Near, Registry, RouteStamp, Slot, Supersede};
use crate::cluster::protocol::{IngestCall, RouteCall};
use crate::orders::messages::{Ingest, IngestFailure, IngestReport};
use crate::orders::order_actor::{MoveTo, OrderActor};
use crate::topology::Forwarded;

/// The actors of a courier's active orders, as of a count of changes of its routes: right while
/// `stamp` still shows `version`.
#[derive(Clone)]
pub struct Routes {
    pub version: u64,
    pub stamp: Arc<RouteStamp>,
    pub actors: Arc<[Addr<OrderActor>]>,
}

impl Routes {
    /// Whether no change of the courier's routes came since these were made.
    pub fn current(&self) -> bool {
        self.stamp.current() == self.version
    }
}

/// Where a courier's fixes go now (starting the actors of dormant orders). One node only: in
/// broker mode frames go through [`Route`].
///
/// Asked by the courier's newest session, the answer comes once the courier's orders run on the
/// session's thread (see the module's notes).
#[derive(Message)]
#[rtype(result = "Routes")]
pub struct Lookup {
    pub courier: CourierId,
    /// The asking session ([`CourierJoined::session_id`]).
    pub session_id: u64,
    pub near: Option<Near>,
}

/// An order whose actor was asked to move, and the answer.
type Moving = Pin<Box<dyn Future<Output = (OrderId, Addr<OrderActor>, Option<Addr<OrderActor>>)>>>;

impl Handler<Lookup> for Registry {
    type Result = ResponseActFuture<Self, Routes>;

    fn handle(&mut self, msg: Lookup, _: &mut Context<Self>) -> Self::Result {
        let stamp = self.stamp(&msg.courier);
        let version = stamp.current();
        // Only the newest session draws the orders to its thread: two open sessions of one
        // courier on two threads must not pull its orders back and forth.
        let near = msg
            .near
            .filter(|_| self.is_newest_session(&msg.courier, msg.session_id));
        let orders = self.couriers.get(&msg.courier).cloned().unwrap_or_default();
        let mut actors = Vec::with_capacity(orders.len());
        let mut moving: Vec<Moving> = Vec::new();
        for order in orders {
            let Some((actor, thread)) = self.live_on(&order, near.as_ref()) else {
                continue;
            };
            match &near {
                Some(near) if thread != Some(near.thread) => {
                    // A fresh clone of the address, as for every frame (see courier_ws).
                    let asked = actor.clone().send(MoveTo(near.arbiter.clone()));
                    moving.push(Box::pin(async move {
                        // An actor that stopped meanwhile ended its order: it is routed no more.
                        let moved = asked.await.unwrap_or(None);
                        (order, actor, moved)
                    }));
                }
                _ => actors.push(actor),
            }
        }
        let thread = near.map(|near| near.thread);
        let courier = msg.courier;
        Box::pin(
            fut::wrap_future(join_all(moving))
                .map(move |moved, act: &mut Self, _| {
                    let mut any_moved = false;
                    for (order, old, new) in moved {
                        let Some(new) = new else {
                            actors.push(old);
                            continue;
                        };
                        if let Some(slot @ Slot::Live(..)) = act.orders.get_mut(&order) {
                            if matches!(slot, Slot::Live(addr, _) if *addr == old) {
                                *slot = Slot::Live(new.clone(), thread);
                                any_moved = true;
                            }
                        }
                        actors.push(new);
                    }
                    // Another open session of the courier (`--max-connections-per-courier` above 1)
                    // still routes to the old addresses: it asks again. Not for every move: the one
                    // that asked has the new addresses, and a lookup per move would be wasted.
                    let sessions = act.sessions.get(&courier).map_or(0, VecDeque::len);
                    if any_moved && sessions > 1 {
                        act.changed_routes(&courier);
                    }
                    let routes = Routes {
                        version,
                        stamp,
                        actors: actors.into(),
                    };
                    (courier, routes)
                })
                .then(|(courier, routes), act, _| {
                    // The orders hear the courier's plan before the session has routes to send
                    // fixes by: an actor just started plans for its own stops only, and the
                    // courier's first fixes must be estimated along the plan, as its other orders'.
                    fut::wrap_future(act.plan_entries(&courier)).then(
                        move |entries, act: &mut Self, _| {
                            let told = act.follow(&courier, &entries);
                            fut::wrap_future(async move {
                                told.await;
                                routes
                            })
                        },
                    )
                }),
        )
    }
}

/// A courier's validated fixes, to go to every active order assigned to it.
#[derive(Message)]
#[rtype(result = "Vec<IngestReport>")]
pub struct Route {
    pub courier: CourierId,
    pub fixes: Arc<[Fix]>,
    /// Why the courier's other fixes of the frame were refused before routing.
    pub invalid: Arc<[RejectCode]>,
    /// Added to the device times of `fixes` (see [`Ingest`]).
    pub clock_offset_ms: i64,
}

impl Handler<Route> for Registry {
    type Result = ResponseFuture<Vec<IngestReport>>;

    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) -> Self::Result {
        let via_home = self.topology.route_via_home(&msg.courier, || RouteCall {
            courier: msg.courier.clone(),
            fixes: msg.fixes.to_vec(),
            invalid: msg.invalid.to_vec(),
            clock_offset_ms: msg.clock_offset_ms,
        });
        if let Some(routed) = via_home {
            return Box::pin(routed);
        }
        self.heard_from(&msg.courier, &msg.fixes);
        let orders = self.couriers.get(&msg.courier).cloned().unwrap_or_default();
        let registry = ctx.address();
        let deliveries: Vec<_> = orders
            .iter()
            .filter_map(|order| {
                let at_owner = self.topology.ingest_at_owner(order, || IngestCall {
                    order: order.clone(),
                    courier: msg.courier.clone(),
                    fixes: msg.fixes.to_vec(),
                    invalid: msg.invalid.to_vec(),
                    clock_offset_ms: msg.clock_offset_ms,
                });
                if let Some(forwarded) = at_owner {
                    let (registry, courier, order) =
                        (registry.clone(), msg.courier.clone(), order.clone());
                    return Some(Box::pin(async move {
                        match forwarded.await {
                            Forwarded::Report(report) => report,
                            Forwarded::OrderEnded => {
                                // Its link was left behind: remove it.
                                registry.do_send(LinkChanged {
                                    courier,
                                    order,
                                    linked: false,
                                });
                                IngestReport::default()
                            }
                        }
                    }) as BoxFuture<_>);
                }
                let actor = self.live(order, None)?;
                let sent = actor.send(Ingest {
                    courier: msg.courier.clone(),
                    fixes: msg.fixes.clone(),
                    invalid: msg.invalid.clone(),
                    clock_offset_ms: msg.clock_offset_ms,
                });
                Some(Box::pin(async move {
                    sent.await.unwrap_or_else(|e| IngestReport {
                        failed: Some(IngestFailure::Actor(e.to_string())),
                        ..Default::default()
                    })
                }) as BoxFuture<_>)
            })
            .collect();
        Box::pin(join_all(deliveries))
    }
}

/// Broker mode: fixes for one order owned here, forwarded by a courier's home node. `None` when
/// the order is not active here.
#[derive(Message)]
#[rtype(result = "Option<IngestReport>")]
pub struct IngestHere {
    pub order: OrderId,
    pub courier: CourierId,
    pub fixes: Arc<[Fix]>,
    pub invalid: Arc<[RejectCode]>,
    /// Added to the device times of `fixes` (see [`Ingest`]).
    pub clock_offset_ms: i64,
}

impl Handler<IngestHere> for Registry {
    type Result = ResponseFuture<Option<IngestReport>>;

    fn handle(&mut self, msg: IngestHere, _: &mut Context<Self>) -> Self::Result {
        let Some(actor) = self.live(&msg.order, None) else {
            return Box::pin(async { None });
        };
        let sent = actor.send(Ingest {
            courier: msg.courier,
            fixes: msg.fixes,
            invalid: msg.invalid,
            clock_offset_ms: msg.clock_offset_ms,
        });
        Box::pin(async move {
            Some(sent.await.unwrap_or_else(|e| IngestReport {
                failed: Some(IngestFailure::Actor(e.to_string())),
                ..Default::default()
            }))
        })
    }
}

/// A courier stream session opened; the oldest of the courier's sessions beyond the limit is
/// superseded (an app that reconnects before its old connection timed out wins).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CourierJoined {
    pub courier: CourierId,
    pub session_id: u64,
    pub session: Recipient<Supersede>,
}

impl Handler<CourierJoined> for Registry {
    type Result = ();

    fn handle(&mut self, msg: CourierJoined, _: &mut Context<Self>) {
        let open = self.sessions.entry(msg.courier).or_default();
        open.push_back((msg.session_id, msg.session));
        while open.len() > self.max_sessions_per_courier {
            if let Some((_, oldest)) = open.pop_front() {
                oldest.do_send(Supersede);
            }
        }
    }
}

/// A courier stream session closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CourierLeft {
    pub courier: CourierId,
    pub session_id: u64,
}

impl Handler<CourierLeft> for Registry {
    type Result = ();

    fn handle(&mut self, msg: CourierLeft, _: &mut Context<Self>) {
        if let Some(open) = self.sessions.get_mut(&msg.courier) {
            open.retain(|(id, _)| *id != msg.session_id);
            if open.is_empty() {
                self.sessions.remove(&msg.courier);
                if self
                    .stamps
                    .get(&msg.courier)
                    .is_some_and(|stamp| stamp.strong_count() == 0)
                {
                    self.stamps.remove(&msg.courier);
                }
            }
        }
    }
}
