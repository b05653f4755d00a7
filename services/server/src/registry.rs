//! The registry of active orders: finds an order's actor (starting it on demand, spread over the
//! order arbiters) and routes each courier's fixes to every active order assigned to it.
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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use actix::prelude::*;
use futures_util::future::join_all;
use trackline_core::fix::{Fix, RejectCode};
use trackline_core::order::OrderRecord;
use trackline_core::{CourierId, OrderId};

use crate::cluster::{Cluster, IngestCall, Kind, RouteCall};
use crate::error::ApiError;
use crate::order_actor::{Ingest, IngestReport, MoveTo, OrderActor, OrderDeps};
use trackline_core::links::LinkStore;

/// Broker mode: the cluster, the courier links read at start, and the store that keeps them.
pub type ClusterPart = (Arc<Cluster>, Vec<(CourierId, OrderId)>, LinkStore);

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
    settings: Arc<crate::order_actor::OrderSettings>,
    /// Broker mode: the cluster, and the links of the couriers homed here.
    cluster: Option<(Arc<Cluster>, LinkStore)>,
    /// The count of changes of each courier's routes, as held by its sessions.
    stamps: HashMap<CourierId, Weak<RouteStamp>>,
}

impl Registry {
    /// A registry over the active (not delivered, not cancelled) orders of `records`.
    pub fn new(
        records: Vec<OrderRecord>,
        arbiters: Vec<ArbiterHandle>,
        store: trackline_core::history::HistoryStore,
        settings: Arc<crate::order_actor::OrderSettings>,
        max_sessions_per_courier: usize,
        cluster: Option<ClusterPart>,
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
            cluster: None,
            stamps: HashMap::new(),
        };
        for record in records.into_iter().filter(|r| !r.status.is_final()) {
            registry.insert(record);
        }
        if let Some((cluster, links, store)) = cluster {
            for (courier, order) in links {
                registry.link(courier, order);
            }
            registry.cluster = Some((cluster, store));
        }
        registry
    }

    /// Routes `courier`'s fixes to `order` from now on (no duplicate links).
    fn link(&mut self, courier: CourierId, order: OrderId) {
        let orders = self.couriers.entry(courier.clone()).or_default();
        if !orders.contains(&order) {
            orders.push(order);
            self.changed_routes(&courier);
        }
    }

    fn unlink(&mut self, courier: &CourierId, order: &OrderId) {
        if let Some(list) = self.couriers.get_mut(courier) {
            list.retain(|o| o != order);
            if list.is_empty() {
                self.couriers.remove(courier);
            }
            self.changed_routes(courier);
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
                let addr =
                    OrderActor::start_in_arbiter(arbiter, move |_| OrderActor::new(*record, deps));
                *slot = Slot::Live(addr.clone(), thread);
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
            fut::wrap_future(join_all(moving)).map(move |moved, act: &mut Self, _| {
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
                Routes {
                    version,
                    stamp,
                    actors: actors.into(),
                }
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
}

impl Handler<Route> for Registry {
    type Result = ResponseFuture<Vec<IngestReport>>;

    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) -> Self::Result {
        if let Some((cluster, _)) = &self.cluster {
            if !cluster.is_home_of(&msg.courier) {
                return Box::pin(route_via_home(cluster.clone(), msg));
            }
        }
        let orders = self.couriers.get(&msg.courier).cloned().unwrap_or_default();
        let registry = ctx.address();
        let deliveries: Vec<_> = orders
            .iter()
            .filter_map(|order| match &self.cluster {
                Some((cluster, _)) if !cluster.owns(order) => {
                    let call = IngestCall {
                        order: order.clone(),
                        courier: msg.courier.clone(),
                        fixes: msg.fixes.to_vec(),
                        invalid: msg.invalid.to_vec(),
                    };
                    let forwarded = ingest_remote(cluster.clone(), call, registry.clone());
                    Some(Box::pin(forwarded) as futures_util::future::BoxFuture<_>)
                }
                _ => {
                    let actor = self.live(order, None)?;
                    let sent = actor.send(Ingest {
                        courier: msg.courier.clone(),
                        fixes: msg.fixes.clone(),
                        invalid: msg.invalid.clone(),
                    });
                    Some(Box::pin(async move {
                        sent.await.unwrap_or_else(|e| IngestReport {
                            failed: Some(format!("order actor: {e}")),
                            ..Default::default()
                        })
                    }) as futures_util::future::BoxFuture<_>)
                }
            })
            .collect();
        Box::pin(join_all(deliveries))
    }
}

/// Broker mode: a courier's fixes go to its home node, which knows all of its orders.
async fn route_via_home(cluster: Arc<Cluster>, msg: Route) -> Vec<IngestReport> {
    let home = cluster.home_of(&msg.courier).to_string();
    let call = RouteCall {
        courier: msg.courier,
        fixes: msg.fixes.to_vec(),
        invalid: msg.invalid.to_vec(),
    };
    cluster
        .call(&home, Kind::Route, &call)
        .await
        .unwrap_or_else(|e| vec![unstored(e)])
}

/// Broker mode: one order's share of a courier's fixes, to the order's owner.
async fn ingest_remote(
    cluster: Arc<Cluster>,
    call: IngestCall,
    registry: Addr<Registry>,
) -> IngestReport {
    let owner = cluster.owner_of(&call.order).to_string();
    match cluster
        .call::<_, Option<IngestReport>>(&owner, Kind::Ingest, &call)
        .await
    {
        Ok(Some(report)) => report,
        Ok(None) => {
            // The order ended (or moved to another courier) without the link being removed.
            registry.do_send(LinkChanged {
                courier: call.courier,
                order: call.order,
                linked: false,
            });
            IngestReport::default()
        }
        Err(e) => unstored(e),
    }
}

/// The report of fixes that could not reach their order: nothing may be acked.
fn unstored(error: crate::cluster::CallError) -> IngestReport {
    IngestReport {
        failed: Some(error.to_string()),
        ..Default::default()
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
        });
        Box::pin(async move {
            Some(sent.await.unwrap_or_else(|e| IngestReport {
                failed: Some(format!("order actor: {e}")),
                ..Default::default()
            }))
        })
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
        if let Some((_, links)) = &self.cluster {
            let links = links.clone();
            // Removing a stale link need not hold anything up: a stale link only costs a forward.
            actix_web::rt::task::spawn_blocking(move || {
                if let Err(error) = links.set(&msg.courier, &msg.order, false) {
                    tracing::warn!(%error, "removing a courier link failed");
                }
            });
        }
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
            if msg.to.as_ref() == Some(from) {
                return;
            }
            self.unlink(from, &msg.order);
            if let Some((cluster, _)) = &self.cluster {
                // The old courier's home stops routing to this order. Best effort: a link left
                // behind is removed the first time the order refuses a forward.
                let (cluster, from, order) = (cluster.clone(), from.clone(), msg.order.clone());
                actix_rt::spawn(async move {
                    if let Err(error) = cluster.link(&from, &order, false).await {
                        tracing::debug!(%error, "unlinking at the courier's home failed");
                    }
                });
            }
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
