//! Broker mode: whether each courier homed here is still heard from, decided here because the
//! home node routes every fix of the courier, whichever node it is connected to and whichever
//! nodes own its orders. When a courier that carries orders has sent nothing for
//! `--courier-offline-s`, the owner of each of its orders is told ([`CourierSilent`]) and writes
//! the order's `courier.offline`; the courier's next fix reaches every one of them anyway, and
//! each writes `courier.online` with it.
//!
//! One decision per courier, one clock: the orders of one courier never disagree about its
//! silence, and a node that cannot reach the courier's home (so stores none of its fixes)
//! does not call the courier offline for what is the cluster's fault.

use std::time::Instant;

use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture};
use trackline_core::fix::Fix;
use trackline_core::{CourierId, OrderId};

use super::Registry;
use crate::orders::messages::CourierSilent;

/// What the home node knows of one courier's fixes.
#[derive(Debug)]
pub(super) struct Presence {
    last_heard: Instant,
    /// How many frames with fixes were routed (changes whenever the courier is heard from).
    heard: u64,
    /// `heard` as it was when every order of the courier was told of its silence.
    told_at: Option<u64>,
    /// Owners are being told now.
    telling: bool,
}

impl Presence {
    fn new() -> Self {
        Self {
            last_heard: Instant::now(),
            heard: 0,
            told_at: None,
            telling: false,
        }
    }
}

impl Registry {
    /// A frame of `courier`'s with `fixes` is being routed (broker mode, at its home node).
    pub(super) fn heard_from(&mut self, courier: &CourierId, fixes: &[Fix]) {
        if !self.settings.silence_told_by_home || fixes.is_empty() {
            return;
        }
        // Every frame of a courier homed here: no id copied but for its first.
        let presence = match self.presence.get_mut(courier) {
            Some(presence) => presence,
            None => self
                .presence
                .entry(courier.clone())
                .or_insert_with(Presence::new),
        };
        presence.last_heard = Instant::now();
        presence.heard += 1;
    }

    /// `courier` carries one more order: if it is silent already, that order is told too.
    pub(super) fn presence_linked(&mut self, courier: &CourierId) {
        if let Some(presence) = self.presence.get_mut(courier) {
            presence.told_at = None;
        }
    }

    /// `courier` carries nothing any more: its silence is nobody's concern.
    pub(super) fn presence_unlinked(&mut self, courier: &CourierId) {
        self.presence.remove(courier);
    }

    /// Tells the owners of the orders of every courier homed here that went silent.
    pub(super) fn check_presence(&mut self, ctx: &mut Context<Self>) {
        let offline_after = self.settings.webhooks.courier_offline_after;
        let homed: Vec<CourierId> = (self.couriers.keys())
            .filter(|courier| self.topology.is_home_of(courier))
            .cloned()
            .collect();
        let silent: Vec<(CourierId, u64)> = homed
            .into_iter()
            .filter_map(|courier| {
                // Heard from at start, for a courier not heard from since: a restart is no
                // silence of the courier's.
                let presence = self
                    .presence
                    .entry(courier.clone())
                    .or_insert_with(Presence::new);
                let due = !presence.telling
                    && presence.told_at != Some(presence.heard)
                    && presence.last_heard.elapsed() >= offline_after;
                if !due {
                    return None;
                }
                presence.telling = true;
                Some((courier, presence.heard))
            })
            .collect();
        for (courier, heard) in silent {
            let told = self.tell_silent(&courier);
            ctx.spawn(
                fut::wrap_future(told).map(move |all_told, act: &mut Self, _| {
                    let Some(presence) = act.presence.get_mut(&courier) else {
                        return;
                    };
                    presence.telling = false;
                    // An owner that could not be told is told at the next check, the others again
                    // (they write an order's `courier.offline` once).
                    if all_told && presence.heard == heard {
                        presence.told_at = Some(heard);
                    }
                }),
            );
        }
    }

    /// Tells the owner of every order of `courier` that it went silent; whether all heard it.
    fn tell_silent(&mut self, courier: &CourierId) -> BoxFuture<'static, bool> {
        let silent = CourierSilent {
            courier: courier.clone(),
        };
        let orders = self.couriers.get(courier).cloned().unwrap_or_default();
        let told: Vec<BoxFuture<'static, Result<(), String>>> = orders
            .iter()
            .filter_map(|order| self.silent_order(order, &silent))
            .collect();
        Box::pin(async move {
            join_all(told).await.into_iter().all(|outcome| {
                outcome
                    .map_err(|error| tracing::warn!(%error, "telling a courier's silence failed"))
                    .is_ok()
            })
        })
    }

    /// Tells `order` (here or at its owner) of its courier's silence; `None`: not active here.
    fn silent_order(
        &mut self,
        order: &OrderId,
        silent: &CourierSilent,
    ) -> Option<BoxFuture<'static, Result<(), String>>> {
        if let Some(at_owner) = self.topology.silent_at_owner(order, silent) {
            return Some(Box::pin(at_owner));
        }
        let sent = self.live(order, None)?.send(silent.clone());
        Some(Box::pin(async move {
            sent.await.map_err(|e| format!("order actor: {e}"))?
        }))
    }
}

/// At the owner of `order`: its courier went silent, as the courier's home node tells.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct SilentHere {
    pub order: OrderId,
    pub silent: CourierSilent,
}

impl Handler<SilentHere> for Registry {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: SilentHere, _: &mut Context<Self>) -> Self::Result {
        match self.silent_order(&msg.order, &msg.silent) {
            Some(told) => told,
            // Not active here (ended): nothing to tell.
            None => Box::pin(async { Ok(()) }),
        }
    }
}
