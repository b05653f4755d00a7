//! Where a courier session sends a frame's fixes: on one node straight to its courier's order
//! actors, from a copy of the registry's routes; in broker mode to the registry, which knows the
//! courier's orders on other nodes too.

use std::sync::Arc;

use actix::prelude::*;
use trackline_core::fix::{Fix, RejectCode};
use trackline_core::CourierId;

use crate::orders::messages::Ingest;
use crate::orders::registry::courier_routes::{Route, Routes};
use crate::orders::registry::Registry;
use crate::topology::Topology;
use crate::ws::courier::answers::Routed;

/// How a session routes its frames, chosen when it starts.
pub enum Routing {
    /// One node: the courier's order actors as the registry last named them (`None` until the
    /// first frame, and after a lookup that failed).
    Direct(Option<Routes>),
    /// Broker mode: every frame goes through the registry.
    ViaRegistry,
}

impl Routing {
    /// Direct on one node, through the registry in broker mode.
    pub fn for_topology(topology: &Topology) -> Self {
        match topology {
            Topology::Alone => Routing::Direct(None),
            Topology::Broker(_) => Routing::ViaRegistry,
        }
    }

    /// Whether the copy of the routes must be renewed before the next frame goes anywhere (it
    /// is older than the registry's routes of the courier).
    pub fn is_stale(&self) -> bool {
        match self {
            Routing::Direct(routes) => !routes.as_ref().is_some_and(Routes::current),
            Routing::ViaRegistry => false,
        }
    }

    /// Takes the registry's answer to a lookup (`None`: the registry is gone).
    pub fn renew(&mut self, routes: Option<Routes>) {
        if let Routing::Direct(held) = self {
            *held = routes;
        }
    }

    /// Lets go of the routes (and so of their count of changes, which the registry then forgets).
    pub fn release(&mut self) {
        self.renew(None);
    }

    /// Sends a frame's fixes (some, or refusals to count) on their way.
    pub fn send(
        &self,
        registry: &Addr<Registry>,
        courier: &CourierId,
        fixes: Arc<[Fix]>,
        invalid: Arc<[RejectCode]>,
        clock_offset_ms: i64,
    ) -> Routed {
        match self {
            Routing::Direct(routes) => {
                // Routed even when every fix was refused: the orders count what their courier
                // sent wrong. Each send goes on a fresh clone of the actor's address: actix
                // queues a message at once only on a sender that is not parked, and a parked
                // shared one would hold this frame back while a later frame overtakes it (the
                // order would then skip this frame's fixes as resends, and they would be acked
                // unstored). A lookup that failed (the registry is gone: shutting down) routes
                // nowhere, and the frame is not acked.
                let Some(routes) = routes.as_ref() else {
                    return Box::pin(futures_util::future::ready(Err(MailboxError::Closed)));
                };
                let sent: Vec<_> = routes
                    .actors
                    .iter()
                    .map(|actor| {
                        actor.clone().send(Ingest {
                            courier: courier.clone(),
                            fixes: fixes.clone(),
                            invalid: invalid.clone(),
                            clock_offset_ms,
                        })
                    })
                    .collect();
                Box::pin(async move {
                    let mut reports = Vec::with_capacity(sent.len());
                    for report in sent {
                        match report.await {
                            Ok(report) => reports.push(report),
                            // The actor stopped: its order ended (and routes are renewed at the
                            // next frame), so none of these fixes belong to it any more.
                            Err(MailboxError::Closed) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(reports)
                })
            }
            // The registry knows the courier's orders on other nodes. Same fresh address clone,
            // for the same reason.
            Routing::ViaRegistry => Box::pin(registry.clone().send(Route {
                courier: courier.clone(),
                fixes,
                invalid,
                clock_offset_ms,
            })),
        }
    }
}
