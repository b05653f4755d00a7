//! The actor that owns the spatial index of live couriers: updates arrive as messages, queries
//! are answered in microseconds, and couriers that went quiet are swept out.

use std::time::Duration;

use actix::prelude::*;
use trackline_core::spatial::{Nearby, SpatialIndex};
use trackline_core::{now_ms, CourierId, LatLon};

/// How often couriers without a recent fix are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct LiveIndex {
    index: SpatialIndex,
    ttl_ms: i64,
}

impl LiveIndex {
    pub fn new(index: SpatialIndex, ttl_s: i64) -> Self {
        Self {
            index,
            ttl_ms: ttl_s.saturating_mul(1000),
        }
    }
}

impl Actor for LiveIndex {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let dropped = act.index.expire_before(now_ms() - act.ttl_ms);
            if dropped > 0 {
                tracing::debug!(dropped, "couriers left the live index");
            }
            metrics::gauge!("trackline_live_couriers").set(act.index.len() as f64);
        });
    }
}

/// A courier's latest live position.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Upsert {
    pub courier: CourierId,
    pub pos: LatLon,
    pub time_ms: i64,
}

impl Handler<Upsert> for LiveIndex {
    type Result = ();

    fn handle(&mut self, msg: Upsert, _: &mut Context<Self>) {
        self.index.upsert(&msg.courier, msg.pos, msg.time_ms);
    }
}

/// Couriers near a point, nearest first.
#[derive(Message)]
#[rtype(result = "Vec<Nearby>")]
pub struct NearbyQuery {
    pub center: LatLon,
    pub radius_m: f64,
    pub limit: usize,
}

impl Handler<NearbyQuery> for LiveIndex {
    type Result = MessageResult<NearbyQuery>;

    fn handle(&mut self, msg: NearbyQuery, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.index.nearest(msg.center, msg.radius_m, msg.limit))
    }
}
