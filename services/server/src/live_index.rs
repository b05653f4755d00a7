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
        if west <= east {
            return MessageResult(self.index.within_box(
                LatLon::new(south, west),
                LatLon::new(north, east),
                limit,
            ));
        }
        // Two boxes, one each side of the antimeridian; each is ordered by distance from its own
        // centre, so order the union by distance from the centre of the whole box.
        let mut found =
            self.index
                .within_box(LatLon::new(south, west), LatLon::new(north, 180.0), limit);
        found.extend(self.index.within_box(
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
        let live = LiveIndex::new(index, 600).start();
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
