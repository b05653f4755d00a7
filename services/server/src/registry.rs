//! The registry of active orders: finds an order's actor (starting it on demand, spread over the
//! order arbiters) and routes each courier's fixes to every active order assigned to it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use trackline_core::fix::{Fix, RejectCode};
use trackline_core::order::OrderRecord;
use trackline_core::{CourierId, OrderId};

use crate::error::ApiError;
use crate::order_actor::{Ingest, IngestReport, OrderActor, OrderDeps};

/// An active order: its record until someone needs it, then its running actor.
enum Slot {
    Dormant(Box<OrderRecord>),
    Live(Addr<OrderActor>),
}

pub struct Registry {
    orders: HashMap<OrderId, Slot>,
    couriers: HashMap<CourierId, Vec<OrderId>>,
    /// Each courier's open stream sessions, oldest first.
    sessions: HashMap<CourierId, VecDeque<(u64, Recipient<Supersede>)>>,
    max_sessions_per_courier: usize,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    /// Set once the registry has started (the deps name the registry's own address).
    deps: Option<OrderDeps>,
    store: trackline_core::history::HistoryStore,
    settings: Arc<crate::order_actor::OrderSettings>,
}

impl Registry {
    /// A registry over the active (not delivered, not cancelled) orders of `records`.
    pub fn new(
        records: Vec<OrderRecord>,
        arbiters: Vec<ArbiterHandle>,
        store: trackline_core::history::HistoryStore,
        settings: Arc<crate::order_actor::OrderSettings>,
        max_sessions_per_courier: usize,
    ) -> Self {
        let mut registry = Self {
            orders: HashMap::new(),
            couriers: HashMap::new(),
            sessions: HashMap::new(),
            max_sessions_per_courier: max_sessions_per_courier.max(1),
            arbiters,
            next_arbiter: 0,
            deps: None,
            store,
            settings,
        };
        for record in records.into_iter().filter(|r| !r.status.is_final()) {
            registry.insert(record);
        }
        registry
    }

    fn insert(&mut self, record: OrderRecord) {
        if let Some(courier) = &record.courier_id {
            self.couriers
                .entry(courier.clone())
                .or_default()
                .push(record.order_id.clone());
        }
        self.orders
            .insert(record.order_id.clone(), Slot::Dormant(Box::new(record)));
    }

    /// The running actor of an active order, started now if it was dormant.
    fn live(&mut self, order: &OrderId) -> Option<Addr<OrderActor>> {
        let slot = self.orders.get_mut(order)?;
        match slot {
            Slot::Live(addr) if addr.connected() => Some(addr.clone()),
            Slot::Live(_) => None,
            Slot::Dormant(_) => {
                let Slot::Dormant(record) =
                    std::mem::replace(slot, Slot::Dormant(Box::new(placeholder(order))))
                else {
                    unreachable!("matched Dormant above")
                };
                // unwrap: deps is set in started(), before any message is handled
                let deps = self.deps.clone().unwrap();
                let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
                self.next_arbiter += 1;
                let addr =
                    OrderActor::start_in_arbiter(arbiter, move |_| OrderActor::new(*record, deps));
                *slot = Slot::Live(addr.clone());
                Some(addr)
            }
        }
    }
}

/// A stand-in record for the instant between taking a dormant record and storing its actor.
fn placeholder(order: &OrderId) -> OrderRecord {
    OrderRecord::new(
        order.clone(),
        trackline_core::LatLon::new(0.0, 0.0),
        None,
        None,
        None,
        0,
    )
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.deps = Some(OrderDeps {
            store: self.store.clone(),
            registry: ctx.address(),
            settings: self.settings.clone(),
        });
        metrics::gauge!("trackline_active_orders").set(self.orders.len() as f64);
    }
}

/// Create an order (durably) and make it active.
#[derive(Message)]
#[rtype(result = "Result<(), ApiError>")]
pub struct Create(pub OrderRecord);

impl Handler<Create> for Registry {
    type Result = ResponseActFuture<Self, Result<(), ApiError>>;

    fn handle(&mut self, msg: Create, _: &mut Context<Self>) -> Self::Result {
        let record = msg.0;
        let exists = || {
            ApiError::Conflict(
                "order_exists",
                format!("order {} already exists", record.order_id),
            )
        };
        if self.orders.contains_key(&record.order_id) {
            return Box::pin(fut::ready(Err(exists())));
        }
        let conflict = exists();
        let created = self.store.create_order(record.clone());
        Box::pin(
            created
                .into_actor(self)
                .map(move |outcome, act, _| match outcome {
                    Ok(true) => {
                        act.insert(record);
                        metrics::gauge!("trackline_active_orders").set(act.orders.len() as f64);
                        Ok(())
                    }
                    Ok(false) => Err(conflict),
                    Err(e) => Err(e.into()),
                }),
        )
    }
}

/// The actor of an active order; `None` when the order is not active (ended, or never existed).
#[derive(Message)]
#[rtype(result = "Option<Addr<OrderActor>>")]
pub struct Find(pub OrderId);

impl Handler<Find> for Registry {
    type Result = Option<Addr<OrderActor>>;

    fn handle(&mut self, msg: Find, _: &mut Context<Self>) -> Self::Result {
        self.live(&msg.0)
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
}

impl Handler<Route> for Registry {
    type Result = ResponseFuture<Vec<IngestReport>>;

    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let orders = self.couriers.get(&msg.courier).cloned().unwrap_or_default();
        let actors: Vec<_> = orders.iter().filter_map(|order| self.live(order)).collect();
        Box::pin(async move {
            let sent = actors.iter().map(|actor| {
                actor.send(Ingest {
                    courier: msg.courier.clone(),
                    fixes: msg.fixes.clone(),
                    invalid: msg.invalid.clone(),
                })
            });
            join_all(sent)
                .await
                .into_iter()
                .map(|reply| {
                    reply.unwrap_or_else(|e| IngestReport {
                        failed: Some(format!("order actor: {e}")),
                        ..Default::default()
                    })
                })
                .collect()
        })
    }
}

/// An order's courier changed (assigned, reassigned) or the order ended (`to: None`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relink {
    pub order: OrderId,
    pub from: Option<CourierId>,
    pub to: Option<CourierId>,
}

impl Handler<Relink> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Relink, _: &mut Context<Self>) {
        if let Some(from) = &msg.from {
            if let Some(list) = self.couriers.get_mut(from) {
                list.retain(|o| o != &msg.order);
                if list.is_empty() {
                    self.couriers.remove(from);
                }
            }
        }
        match msg.to {
            Some(to) => self.couriers.entry(to).or_default().push(msg.order),
            None => {
                // Ended: later lookups read the final record from the store.
                self.orders.remove(&msg.order);
                metrics::gauge!("trackline_active_orders").set(self.orders.len() as f64);
            }
        }
    }
}

/// Tells a courier session that a newer one of the same courier replaced it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Supersede;

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
            }
        }
    }
}
