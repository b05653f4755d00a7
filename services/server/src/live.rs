//! The spatial index of live couriers: courier sessions move their courier in it in place (a
//! short lock on the session's own thread, not a message that wakes another thread for every
//! fix), queries are answered in microseconds, and an actor sweeps out couriers that went quiet.
//!
//! In broker mode every node keeps every courier: each node sends the positions of the couriers
//! connected to it to all others a few times a second, in one message, so `nearby` and `within`
//! see the whole fleet on any node at the cost of one broadcast per node and interval.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use trackline_core::spatial::{Nearby, SpatialIndex};
use trackline_core::{now_ms, CourierId, LatLon};

use crate::cluster::client::Cluster;
use crate::cluster::protocol::{Positions, Upsert};

/// How often couriers without a recent fix are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Broker mode: how often a node shares its couriers' new positions with the others.
const SHARE_EVERY: Duration = Duration::from_millis(500);

/// The index itself, shared by the sessions that move couriers in it and the [`LiveIndex`] actor
/// that answers queries and sweeps it.
#[derive(Clone)]
pub struct LivePositions(Arc<Mutex<Shared>>);

struct Shared {
    index: SpatialIndex,
    /// Broker mode: the positions not yet shared with the other nodes.
    unshared: Option<Vec<Upsert>>,
}

impl LivePositions {
    /// Moves `courier` to `pos`, as of its fix of `time_ms`.
    pub fn upsert(&self, courier: &CourierId, pos: LatLon, time_ms: i64) {
        let mut shared = self.lock();
        shared.index.upsert(courier, pos, time_ms);
        if let Some(unshared) = shared.unshared.as_mut() {
            unshared.push(Upsert {
                courier: courier.clone(),
                pos,
                time_ms,
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves a consistent index (each update is one call).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct LiveIndex {
    positions: LivePositions,
    ttl_ms: i64,
    /// Broker mode: the cluster the positions are shared with.
    cluster: Option<Arc<Cluster>>,
}

impl LiveIndex {
    pub fn new(index: SpatialIndex, ttl_s: i64, cluster: Option<Arc<Cluster>>) -> Self {
        let shared = Shared {
            index,
            unshared: cluster.as_ref().map(|_| Vec::new()),
        };
        Self {
            positions: LivePositions(Arc::new(Mutex::new(shared))),
            ttl_ms: ttl_s.saturating_mul(1000),
            cluster,
        }
    }

    /// The handle that courier sessions move their couriers with.
    pub fn positions(&self) -> LivePositions {
        self.positions.clone()
    }

    /// Sends the positions gathered since the last time to every other node.
    fn share(&mut self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let positions = match self.positions.lock().unshared.as_mut() {
            Some(unshared) if !unshared.is_empty() => std::mem::take(unshared),
            _ => return,
        };
        let positions = Positions {
            from: cluster.node().to_string(),
            positions,
        };
        let cluster = cluster.clone();
        actix_rt::spawn(async move { cluster.broadcast_positions(&positions).await });
    }
}

impl Actor for LiveIndex {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(SWEEP_EVERY, |act, _| {
            let mut shared = act.positions.lock();
            let dropped = shared.index.expire_before(now_ms() - act.ttl_ms);
            if dropped > 0 {
                tracing::debug!(dropped, "couriers left the live index");
            }
            metrics::gauge!("trackline_live_couriers").set(shared.index.len() as f64);
        });
        if self.cluster.is_some() {
            ctx.run_interval(SHARE_EVERY, |act, _| act.share());
        }
    }
}

impl Handler<Positions> for LiveIndex {
    type Result = ();

    /// Positions from another node: newer ones win, and they are not shared on again.
    fn handle(&mut self, msg: Positions, _: &mut Context<Self>) {
        let mut shared = self.positions.lock();
        for upsert in msg.positions {
            shared
                .index
                .upsert(&upsert.courier, upsert.pos, upsert.time_ms);
        }
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
        let shared = self.positions.lock();
        MessageResult(shared.index.nearest(msg.center, msg.radius_m, msg.limit))
    }
}

/// Couriers inside a box, nearest to its centre first. `west > east` means the box crosses the
/// antimeridian (from `west` east to 180 and on from -180 to `east`).
#[derive(Message)]
#[rtype(result = "Vec<Nearby>")]
pub struct WithinBox {
    pub south: f64,
    pub west: f64,
    pub north: f64,
    pub east: f64,
    pub limit: usize,
}

impl Handler<WithinBox> for LiveIndex {
    type Result = MessageResult<WithinBox>;

    fn handle(&mut self, msg: WithinBox, _: &mut Context<Self>) -> Self::Result {
        let WithinBox {
            south,
            west,
            north,
            east,
            limit,
        } = msg;
        let shared = self.positions.lock();
        if west <= east {
            return MessageResult(shared.index.within_box(
                LatLon::new(south, west),
                LatLon::new(north, east),
                limit,
            ));
        }
        // Two boxes, one each side of the antimeridian; each is ordered by distance from its own
        // centre, so order the union by distance from the centre of the whole box.
        let mut found =
            shared
                .index
                .within_box(LatLon::new(south, west), LatLon::new(north, 180.0), limit);
        found.extend(shared.index.within_box(
            LatLon::new(south, -180.0),
            LatLon::new(north, east),
            limit,
        ));
        let mid_lon = (west + east + 360.0) / 2.0;
        let center = LatLon::new(
            (south + north) / 2.0,
            if mid_lon > 180.0 {
                mid_lon - 360.0
            } else {
                mid_lon
            },
        );
        for n in &mut found {
            n.distance_m = n.pos.distance_m(center);
        }
        found.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
        found.truncate(limit);
        MessageResult(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn courier(id: &str) -> CourierId {
        CourierId::new(id).unwrap()
    }

    #[actix_rt::test]
    async fn box_query_finds_couriers_inside_also_across_the_antimeridian() {
        let index = SpatialIndex::bulk_load([
            (courier("helsinki"), LatLon::new(60.17, 24.94), 1),
            (courier("fiji-east"), LatLon::new(-17.8, 179.9), 1),
            (courier("fiji-west"), LatLon::new(-17.8, -179.9), 1),
            (courier("far"), LatLon::new(-17.8, 170.0), 1),
        ]);
        let live = LiveIndex::new(index, 600, None).start();
        let ask = |south, west, north, east, limit| {
            live.send(WithinBox {
                south,
                west,
                north,
                east,
                limit,
            })
        };
        let ids = |found: Vec<Nearby>| -> Vec<String> {
            found
                .into_iter()
                .map(|n| n.courier_id.to_string())
                .collect()
        };

        let found = ids(ask(60.0, 24.0, 61.0, 25.0, 10).await.unwrap());
        assert_eq!(found, ["helsinki"]);

        let mut found = ids(ask(-18.0, 179.5, -17.0, -179.5, 10).await.unwrap());
        found.sort();
        assert_eq!(found, ["fiji-east", "fiji-west"]);

        assert_eq!(ask(-18.0, 179.5, -17.0, -179.5, 1).await.unwrap().len(), 1);
        assert_eq!(ask(-90.0, -180.0, 90.0, 180.0, 10).await.unwrap().len(), 4);
    }
}
