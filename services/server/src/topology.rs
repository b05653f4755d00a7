//! Whether this node runs alone or as one of several joined by a broker, chosen once at start-up.
//!
//! The code that every node runs (the registry, the REST handlers, start-up) asks this what to
//! do about other nodes; alone, every answer is "nothing": every order is owned here, every
//! courier homed here, and there is nobody else to ask.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use trackline_core::links::LinkStore;
use trackline_core::stops::StopsThrough;
use trackline_core::{CourierId, OrderId};

use crate::cluster::client::Cluster;
use crate::cluster::protocol::{
    CallError, FollowPlanCall, IngestCall, Kind, PlanEntryCall, RemoteError, ReplanNote, RouteCall,
    SilentCall,
};
use crate::cluster::remote_watch::RemoteWatches;
use crate::cluster::replay;
use crate::orders::errors::OrderError;
use crate::orders::messages::{CourierSilent, IngestFailure, IngestReport};
use crate::orders::order_actor::PlanEntry;

/// How this node stands among others.
#[derive(Clone)]
pub enum Topology {
    /// One node: the embedded default.
    Alone,
    /// Broker mode.
    Broker(Arc<BrokerNode>),
}

/// A node of a cluster: its place in it, its mirrors of orders owned elsewhere, and the links of
/// the couriers homed here (which orders on any node each one's fixes go to).
pub struct BrokerNode {
    pub cluster: Arc<Cluster>,
    pub remote_watches: Addr<RemoteWatches>,
    pub links: LinkStore,
}

/// What became of fixes forwarded to the owner of one order.
pub enum Forwarded {
    Report(IngestReport),
    /// The owner does not have the order any more: its link here is stale.
    OrderEnded,
}

impl Topology {
    /// This node's name in the cluster.
    pub fn node(&self) -> Option<&str> {
        match self {
            Topology::Alone => None,
            Topology::Broker(broker) => Some(broker.cluster.node()),
        }
    }

    /// In broker mode, whether the connection to the broker is lost (until it reconnects).
    pub fn broker_lost(&self) -> bool {
        self.broker_connected() == Some(false)
    }

    /// In broker mode, whether the node is connected to the broker; `None` alone.
    pub fn broker_connected(&self) -> Option<bool> {
        match self {
            Topology::Alone => None,
            Topology::Broker(broker) => Some(broker.cluster.broker_connected()),
        }
    }

    /// Whether `courier` is homed here (alone, every courier is).
    pub fn is_home_of(&self, courier: &CourierId) -> bool {
        match self {
            Topology::Alone => true,
            Topology::Broker(broker) => broker.cluster.is_home_of(courier),
        }
    }

    /// The mirrors to watch `order` through, when another node owns it.
    pub fn mirrors_of(&self, order: &OrderId) -> Option<&Addr<RemoteWatches>> {
        match self {
            Topology::Broker(broker) if !broker.cluster.owns(order) => Some(&broker.remote_watches),
            _ => None,
        }
    }

    /// Links (or unlinks) `courier` and `order` at the courier's home node: an assignment counts
    /// only once the home node routes the courier's fixes to the order. Alone: nothing to do.
    ///
    /// # Errors
    /// [`OrderError::Node`] when the home node cannot be reached.
    pub async fn link(
        &self,
        courier: &CourierId,
        order: &OrderId,
        linked: bool,
    ) -> Result<(), OrderError> {
        match self {
            Topology::Alone => Ok(()),
            Topology::Broker(broker) => broker.cluster.link(courier, order, linked).await,
        }
    }

    /// Takes back the link made for a create that was refused (the order exists), unless the
    /// existing order is assigned to that courier anyway (`assigned`, asked only in broker
    /// mode). Left behind, the link would cost a forward of every frame of the courier's until
    /// the order ends.
    pub async fn unlink_unless_assigned(
        &self,
        courier: &CourierId,
        order: &OrderId,
        assigned: impl Future<Output = Option<CourierId>>,
    ) {
        let Topology::Broker(broker) = self else {
            return;
        };
        if assigned.await.as_ref() == Some(courier) {
            return;
        }
        if let Err(error) = broker.cluster.link(courier, order, false).await {
            tracing::warn!(%error, courier_id = %courier, order_id = %order,
                "undoing the courier link of a refused create failed; it goes when the order ends");
        }
    }

    /// The old courier's home stops routing to `order`. Best effort, in the background: a link
    /// left behind is removed the first time the order refuses a forward.
    pub fn unlink_in_background(&self, from: &CourierId, order: &OrderId) {
        let Topology::Broker(broker) = self else {
            return;
        };
        let (cluster, from, order) = (broker.cluster.clone(), from.clone(), order.clone());
        actix_rt::spawn(async move {
            if let Err(error) = cluster.link(&from, &order, false).await {
                tracing::debug!(%error, "unlinking at the courier's home failed");
            }
        });
    }

    /// Removes a stale durable link of a courier homed here, off the async threads. Removing it
    /// need not hold anything up: a stale link only costs a forward.
    pub fn forget_link(&self, courier: CourierId, order: OrderId) {
        let Topology::Broker(broker) = self else {
            return;
        };
        let links = broker.links.clone();
        actix_web::rt::task::spawn_blocking(move || {
            if let Err(error) = links.set(&courier, &order, false) {
                tracing::warn!(%error, "removing a courier link failed");
            }
        });
    }

    /// The cluster and the owner of `order`, when that is another node.
    fn other_owner(&self, order: &OrderId) -> Option<(Arc<Cluster>, String)> {
        let Topology::Broker(broker) = self else {
            return None;
        };
        let owner = broker.cluster.owner_of(order);
        (owner != broker.cluster.node()).then(|| (broker.cluster.clone(), owner.to_string()))
    }

    /// The cluster and `courier`'s home node, when that is another node.
    fn other_home(&self, courier: &CourierId) -> Option<(Arc<Cluster>, String)> {
        let Topology::Broker(broker) = self else {
            return None;
        };
        let home = broker.cluster.home_of(courier);
        (home != broker.cluster.node()).then(|| (broker.cluster.clone(), home.to_string()))
    }

    /// A courier's fixes go to its home node, which knows all of its orders: the forward of the
    /// call that `call` makes, when that is another node.
    pub fn route_via_home(
        &self,
        courier: &CourierId,
        call: impl FnOnce() -> RouteCall,
    ) -> Option<impl Future<Output = Vec<IngestReport>> + 'static> {
        let (cluster, home) = self.other_home(courier)?;
        let call = call();
        Some(async move {
            cluster
                .call(&home, Kind::Route, &call)
                .await
                .unwrap_or_else(|e| vec![unstored(e)])
        })
    }

    /// One order's share of a courier's fixes goes to the order's owner: the forward, when that
    /// is another node.
    pub fn ingest_at_owner(
        &self,
        order: &OrderId,
        call: impl FnOnce() -> IngestCall,
    ) -> Option<impl Future<Output = Forwarded> + 'static> {
        let (cluster, owner) = self.other_owner(order)?;
        let call = call();
        Some(async move {
            match cluster
                .call::<_, Option<IngestReport>>(&owner, Kind::Ingest, &call)
                .await
            {
                Ok(Some(report)) => Forwarded::Report(report),
                // The order ended (or moved to another courier) without the link being removed.
                Ok(None) => Forwarded::OrderEnded,
                Err(e) => Forwarded::Report(unstored(e)),
            }
        })
    }

    /// Tells the owner of `order` that the order's courier, homed here, went silent: the
    /// owner's answer, when that is another node (`None`: the order is owned here).
    pub fn silent_at_owner(
        &self,
        order: &OrderId,
        silent: &CourierSilent,
    ) -> Option<impl Future<Output = Result<(), String>> + 'static> {
        let (cluster, owner) = self.other_owner(order)?;
        let call = SilentCall {
            order: order.clone(),
            silent: silent.clone(),
        };
        Some(async move {
            cluster
                .call::<_, Result<(), RemoteError>>(&owner, Kind::Silent, &call)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }

    /// What `courier`'s plan needs of `order`, from the order's owner when that is another
    /// node (`None`: owned here). An owner that cannot be asked counts as not carrying it.
    pub fn plan_entry_at_owner(
        &self,
        order: &OrderId,
        courier: &CourierId,
    ) -> Option<impl Future<Output = Option<PlanEntry>> + 'static> {
        let (cluster, owner) = self.other_owner(order)?;
        let call = PlanEntryCall {
            order: order.clone(),
            courier: courier.clone(),
        };
        Some(async move {
            cluster
                .call(&owner, Kind::PlanEntry, &call)
                .await
                .map_err(|error| tracing::warn!(%error, "asking for an order's plan entry failed"))
                .ok()
                .flatten()
        })
    }

    /// Tells the owner of `order` the stops before its door, when that is another node (None:
    /// the order is owned here); done once the owner has them queued at the order, or could not
    /// be told (an owner that was down hears the plan when the order's actor starts again).
    pub fn follow_at_owner(
        &self,
        order: &OrderId,
        through: &StopsThrough,
    ) -> Option<impl Future<Output = ()> + 'static> {
        let (cluster, owner) = self.other_owner(order)?;
        let call = FollowPlanCall {
            order: order.clone(),
            through: through.clone(),
        };
        Some(async move {
            if let Err(error) = cluster.call::<_, ()>(&owner, Kind::FollowPlan, &call).await {
                tracing::warn!(%error, "telling an order's owner its plan failed");
            }
        })
    }

    /// Has `courier`'s home node derive its plan again, when that is another node; whether it
    /// was (false: homed here).
    pub fn replan_at_home(&self, courier: &CourierId) -> bool {
        let Some((cluster, home)) = self.other_home(courier) else {
            return false;
        };
        let note = ReplanNote {
            courier: courier.clone(),
        };
        actix_rt::spawn(async move { cluster.notify(&home, Kind::Replan, &note).await });
        true
    }

    /// For a call about the whole fleet (`GET /v1/orders`, the purge): the same call, with the
    /// body `body` makes, answered by every other node, each 200 answer parsed. None alone, and
    /// none on a node that another one asks (the node asked first gathers).
    ///
    /// # Errors
    /// This call's response: 503 naming a node that does not answer, or another node's own
    /// error as it gave it.
    pub async fn ask_others<T: serde::de::DeserializeOwned>(
        &self,
        req: &HttpRequest,
        body: impl FnOnce() -> Bytes,
    ) -> Result<Vec<T>, HttpResponse> {
        self.ask_others_to(req, &replay::Call::of(req), body).await
    }

    /// [`Self::ask_others`] for another call than `req`'s (made with its token).
    ///
    /// # Errors
    /// As [`Self::ask_others`].
    pub async fn ask_others_to<T: serde::de::DeserializeOwned>(
        &self,
        req: &HttpRequest,
        call: &replay::Call,
        body: impl FnOnce() -> Bytes,
    ) -> Result<Vec<T>, HttpResponse> {
        match self {
            Topology::Broker(broker) if !replay::is_forwarded(req) => {
                replay::ask_others(&broker.cluster, req, call, body()).await
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The report of fixes that could not reach their order: nothing may be acked.
fn unstored(error: CallError) -> IngestReport {
    IngestReport {
        failed: Some(IngestFailure::Node(error.to_string())),
        ..Default::default()
    }
}
