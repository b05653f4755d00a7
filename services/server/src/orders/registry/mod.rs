//! The registry of active orders: finds an order's actor (starting it on demand, spread over the
//! order arbiters), routes each courier's fixes to every active order assigned to it, and keeps
//! each courier's plan of the stops of those orders ([`plans`]).
//!
//! An order's actor runs on the thread of the courier session that feeds it: it is started
//! there, or moved there when the courier's newest session asks for its routes from another
//! thread, so that a fix, its commit's answer and the courier's ack cross no thread between
//! session and order. Orders that no session has asked for yet start on the thread of whoever
//! needs them first (a watcher, a REST call), or on the order arbiters.
//!
//! On one node a courier session asks the registry once for its courier's order actors
//! ([`Lookup`]) and sends each frame to them itself; the registry counts every change of that
//! courier's routes ([`Routes::stamp`]), so a session notices that its copy is stale before its
//! next frame, and a change for one courier sends no other courier's session back to ask. In broker mode the registry of a courier's home node also knows the courier's orders on
//! other nodes (from the durable links) and forwards its fixes to their owners; there every frame
//! goes through the registry.

pub mod courier_routes;
pub mod plans;
pub mod presence;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use actix::prelude::*;
use trackline_core::order::OrderRecord;
use trackline_core::plans::PlanStore;
use trackline_core::{CourierId, OrderId};

use crate::orders::errors::OrderError;
use crate::orders::messages::Relink;
use crate::orders::order_actor::{OrderActor, OrderDeps, OrderSettings};
use crate::topology::Topology;

/// How many times one courier's routes (the order actors its fixes go to) changed.
///
/// Only the registry raises it, while it applies a change, so a [`Routes`] it hands out together
/// with the count it had then stays right for as long as the count has not moved. A change that
/// some caller waits for (an assignment, a status change) is applied before the caller hears
/// back, so a frame its courier sends afterwards sees the new count. The sessions hold the
/// count; the registry only a weak reference: a courier that nobody routes for costs nothing, and
/// a change of its routes has nobody to tell.
#[derive(Debug, Default)]
pub struct RouteStamp(AtomicU64);

impl RouteStamp {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// An active order: its record until someone needs it, then its running actor (and the thread
/// it runs on, when it was started or moved near a caller).
enum Slot {
    Dormant(Box<OrderRecord>),
    Live(Addr<OrderActor>, Option<ThreadId>),
}

/// The thread a caller runs on, to start (or move) order actors on.
#[derive(Clone)]
pub struct Near {
    thread: ThreadId,
    arbiter: ArbiterHandle,
}

impl Near {
    /// The calling thread, when it runs an actix arbiter (HTTP workers and sessions do).
    pub fn here() -> Option<Self> {
        Some(Self {
            arbiter: Arbiter::try_current()?,
            thread: std::thread::current().id(),
        })
    }
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
    settings: Arc<OrderSettings>,
    /// Alone, or a node of a cluster (which owns some orders, homes some couriers).
    topology: Topology,
    /// The count of changes of each courier's routes, as held by its sessions.
    stamps: HashMap<CourierId, Weak<RouteStamp>>,
    /// The plans ops gave couriers that carry orders ([`plans`]).
    plans: HashMap<CourierId, Vec<trackline_core::stops::PlanStop>>,
    /// Where those plans are kept across restarts.
    plan_store: PlanStore,
    /// Broker mode: whether the couriers homed here are heard from ([`presence`]).
    presence: HashMap<CourierId, presence::Presence>,
}

/// What the registry reads back at start besides the orders.
pub struct Kept {
    /// The links of the couriers homed here to orders of other nodes (broker mode).
    pub links: Vec<(CourierId, OrderId)>,
    /// The plans ops gave couriers, as kept.
    pub plans: Vec<(CourierId, Vec<trackline_core::stops::PlanStop>)>,
    pub plan_store: PlanStore,
}

impl Registry {
    /// A registry over the active (not delivered, not cancelled) orders of `records`, with what
    /// was `kept` of their couriers.
    pub fn new(
        records: Vec<OrderRecord>,
        arbiters: Vec<ArbiterHandle>,
        store: trackline_core::history::HistoryStore,
        settings: Arc<OrderSettings>,
        max_sessions_per_courier: usize,
        topology: Topology,
        kept: Kept,
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
            topology,
            stamps: HashMap::new(),
            plans: HashMap::new(),
            plan_store: kept.plan_store,
            presence: HashMap::new(),
        };
        for record in records.into_iter().filter(|r| !r.status.is_final()) {
            registry.insert(record);
        }
        for (courier, order) in kept.links {
            registry.link(courier, order);
        }
        // Plans of couriers that carry nothing any more are not taken back (and were forgotten
        // when their last order ended, unless the server stopped first).
        for (courier, stops) in kept.plans {
            if registry.couriers.contains_key(&courier) {
                registry.plans.insert(courier, stops);
            }
        }
        registry
    }

    /// Routes `courier`'s fixes to `order` from now on (no duplicate links).
    fn link(&mut self, courier: CourierId, order: OrderId) {
        let orders = self.couriers.entry(courier.clone()).or_default();
        if !orders.contains(&order) {
            orders.push(order);
            self.presence_linked(&courier);
            self.changed_routes(&courier);
            // Its stops join the courier's plan (and a reassigned order leaves its old
            // courier's stops behind, even as this courier's only order).
            self.replan_later(&courier);
        }
    }

    fn unlink(&mut self, courier: &CourierId, order: &OrderId) {
        if let Some(list) = self.couriers.get_mut(courier) {
            list.retain(|o| o != order);
            if list.is_empty() {
                self.couriers.remove(courier);
                self.presence_unlinked(courier);
                // Nothing left to plan: the next orders start from the order of assignment.
                if self.plans.remove(courier).is_some() {
                    if let Err(error) = self.plan_store.forget(courier) {
                        tracing::warn!(%courier, %error, "cannot forget the plan of a courier");
                    }
                }
            }
            self.changed_routes(courier);
            // The orders left behind no longer plan for this one's stops.
            self.replan_later(courier);
        }
    }

    /// Tells the sessions of `courier` that their routes are stale.
    fn changed_routes(&mut self, courier: &CourierId) {
        match self.stamps.get(courier).map(Weak::upgrade) {
            Some(Some(stamp)) => stamp.bump(),
            // Nobody routes for the courier: the next lookup makes a new count.
            Some(None) => {
                self.stamps.remove(courier);
            }
            None => {}
        }
    }

    /// The count of changes of `courier`'s routes, made now if no session holds one.
    fn stamp(&mut self, courier: &CourierId) -> Arc<RouteStamp> {
        if let Some(stamp) = self.stamps.get(courier).and_then(Weak::upgrade) {
            return stamp;
        }
        let stamp = Arc::new(RouteStamp::default());
        self.stamps.insert(courier.clone(), Arc::downgrade(&stamp));
        stamp
    }

    fn insert(&mut self, record: OrderRecord) {
        if let Some(courier) = &record.courier_id {
            self.link(courier.clone(), record.order_id.clone());
        }
        self.orders
            .insert(record.order_id.clone(), Slot::Dormant(Box::new(record)));
    }

    /// The running actor of an active order, started now (`near` the caller, when it says
    /// where it runs) if it was dormant.
    fn live(&mut self, order: &OrderId, near: Option<&Near>) -> Option<Addr<OrderActor>> {
        self.live_on(order, near).map(|(actor, _)| actor)
    }

    /// [`Self::live`], with the thread the actor runs on when known.
    fn live_on(
        &mut self,
        order: &OrderId,
        near: Option<&Near>,
    ) -> Option<(Addr<OrderActor>, Option<ThreadId>)> {
        let slot = self.orders.get_mut(order)?;
        match slot {
            Slot::Live(addr, thread) if addr.connected() => Some((addr.clone(), *thread)),
            Slot::Live(..) => None,
            Slot::Dormant(_) => {
                let Slot::Dormant(record) = std::mem::replace(
                    slot,
                    Slot::Dormant(Box::new(OrderRecord::stand_in(order.clone()))),
                ) else {
                    unreachable!("matched Dormant above")
                };
                // unwrap: deps is set in started(), before any message is handled
                let deps = self.deps.clone().unwrap();
                let (arbiter, thread) = match near {
                    Some(near) => (&near.arbiter, Some(near.thread)),
                    None => {
                        self.next_arbiter += 1;
                        let arbiter = &self.arbiters[self.next_arbiter % self.arbiters.len()];
                        (arbiter, None)
                    }
                };
                // Broker mode: only the courier's home node knows whether it carries others.
                let shared_courier = (record.courier_id.clone()).filter(|c| {
                    !self.topology.is_home_of(c)
                        || self.couriers.get(c).is_some_and(|orders| orders.len() > 1)
                });
                let addr =
                    OrderActor::start_in_arbiter(arbiter, move |_| OrderActor::new(*record, deps));
                *slot = Slot::Live(addr.clone(), thread);
                if let Some(courier) = shared_courier {
                    // It starts planning for its own stops only: give it the courier's plan.
                    self.replan_later(&courier);
                }
                Some((addr, thread))
            }
        }
    }

    /// Whether `session` is the newest open stream session of `courier`.
    fn is_newest_session(&self, courier: &CourierId, session: u64) -> bool {
        self.sessions
            .get(courier)
            .and_then(VecDeque::back)
            .is_some_and(|(id, _)| *id == session)
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.deps = Some(OrderDeps {
            store: self.store.clone(),
            relinks: ctx.address().recipient(),
            replans: ctx.address().recipient(),
            settings: self.settings.clone(),
            approaches: Default::default(),
        });
        metrics::gauge!("trackline_active_orders").set(self.orders.len() as f64);
        if self.settings.silence_told_by_home {
            let every = self.settings.webhooks.silence_check_every();
            ctx.run_interval(every, Self::check_presence);
        }
    }
}

/// Create an order (durably) and make it active.
#[derive(Message)]
#[rtype(result = "Result<(), OrderError>")]
pub struct Create(pub OrderRecord);

impl Handler<Create> for Registry {
    type Result = ResponseActFuture<Self, Result<(), OrderError>>;

    fn handle(&mut self, msg: Create, _: &mut Context<Self>) -> Self::Result {
        let record = msg.0;
        let exists = || OrderError::Exists(record.order_id.clone());
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
                    Err(e) => Err(OrderError::Internal(e.to_string())),
                }),
        )
    }
}

/// The actor of an active order; `None` when the order is not active (ended, or never existed).
/// A dormant order's actor starts on the caller's thread ([`Near::here`]).
#[derive(Message)]
#[rtype(result = "Option<Addr<OrderActor>>")]
pub struct Find(pub OrderId, pub Option<Near>);

impl Find {
    /// Finds `order` for a caller on this thread.
    pub fn here(order: OrderId) -> Self {
        Self(order, Near::here())
    }
}

impl Handler<Find> for Registry {
    type Result = Option<Addr<OrderActor>>;

    fn handle(&mut self, msg: Find, _: &mut Context<Self>) -> Self::Result {
        self.live(&msg.0, msg.1.as_ref())
    }
}

/// Broker mode: a courier homed here was linked to (or unlinked from) an order. Durable links
/// are written by the caller; this updates the routing table (and removes stale links).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkChanged {
    pub courier: CourierId,
    pub order: OrderId,
    pub linked: bool,
}

impl Handler<LinkChanged> for Registry {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, _: &mut Context<Self>) {
        if msg.linked {
            self.link(msg.courier, msg.order);
            return;
        }
        self.unlink(&msg.courier, &msg.order);
        self.topology.forget_link(msg.courier, msg.order);
    }
}

impl Handler<Relink> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Relink, _: &mut Context<Self>) {
        if let Some(from) = &msg.from {
            if msg.to.as_ref() == Some(from) {
                return;
            }
            self.unlink(from, &msg.order);
            self.topology.unlink_in_background(from, &msg.order);
        }
        match msg.to {
            Some(to) => self.link(to, msg.order),
            None => {
                // Ended: later lookups read the final record from the store (its courier, if it
                // had one, was unlinked above: its sessions ask again).
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
