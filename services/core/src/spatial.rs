//! The spatial index of live courier positions: an R-tree (rstar) over points on the unit sphere.
//!
//! Positions are stored as 3-D unit vectors rather than lat/lon pairs: the straight-line (chord)
//! distance between two unit vectors grows monotonically with the great-circle distance, so the
//! R-tree's Euclidean nearest-neighbour search is exact everywhere on Earth, across the
//! antimeridian and near the poles, with no projection to choose.

use std::collections::HashMap;

use rstar::primitives::GeomWithData;
use rstar::RTree;

use crate::fix::LatLon;
use crate::ids::CourierId;
use crate::plane::EARTH_RADIUS_M;

type Entry = GeomWithData<[f64; 3], CourierId>;

/// One courier found by a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Nearby {
    pub courier_id: CourierId,
    pub pos: LatLon,
    pub time_ms: i64,
    pub distance_m: f64,
}

/// The latest known position of every live courier.
#[derive(Debug, Default)]
pub struct SpatialIndex {
    tree: RTree<Entry>,
    latest: HashMap<CourierId, (LatLon, i64)>,
}

fn unit_vector(p: LatLon) -> [f64; 3] {
    let (lat, lon) = (p.lat.to_radians(), p.lon.to_radians());
    [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
}

/// The range of `f` over `[lo, hi]` for cos or sin, given where it peaks and troughs.
fn trig_range(
    lo: f64,
    hi: f64,
    f: fn(f64) -> f64,
    peaks: [f64; 2],
    troughs: [f64; 2],
) -> (f64, f64) {
    let has = |candidates: [f64; 2]| {
        candidates.iter().any(|c| {
            // Any c + 2πk inside [lo, hi]?
            let k = ((lo - c) / std::f64::consts::TAU).ceil();
            c + k * std::f64::consts::TAU <= hi
        })
    };
    let (a, b) = (f(lo), f(hi));
    let min = if has(troughs) { -1.0 } else { a.min(b) };
    let max = if has(peaks) { 1.0 } else { a.max(b) };
    (min, max)
}

/// The smallest axis-aligned 3-D box holding the unit-sphere patch of a lat/lon box.
fn patch_envelope(south_west: LatLon, north_east: LatLon) -> rstar::AABB<[f64; 3]> {
    use std::f64::consts::{FRAC_PI_2, PI};
    let (s, n) = (south_west.lat.to_radians(), north_east.lat.to_radians());
    let (w, e) = (south_west.lon.to_radians(), north_east.lon.to_radians());
    let cos_lat = trig_range(s, n, f64::cos, [0.0, 0.0], [PI, PI]);
    let cos_lon = trig_range(w, e, f64::cos, [0.0, 0.0], [PI, -PI]);
    let sin_lon = trig_range(
        w,
        e,
        f64::sin,
        [FRAC_PI_2, FRAC_PI_2],
        [-FRAC_PI_2, -FRAC_PI_2],
    );
    let product = |(a0, a1): (f64, f64), (b0, b1): (f64, f64)| {
        let all = [a0 * b0, a0 * b1, a1 * b0, a1 * b1];
        (
            all.iter().copied().fold(f64::INFINITY, f64::min),
            all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let (x0, x1) = product(cos_lat, cos_lon);
    let (y0, y1) = product(cos_lat, sin_lon);
    // A small margin absorbs rounding, so a point on the box's edge is never missed.
    const EPS: f64 = 1e-12;
    rstar::AABB::from_corners(
        [x0 - EPS, y0 - EPS, s.sin() - EPS],
        [x1 + EPS, y1 + EPS, n.sin() + EPS],
    )
}

/// The squared chord between two points whose great-circle distance is `metres`.
fn chord_sq_for(metres: f64) -> f64 {
    let angle = (metres / EARTH_RADIUS_M).min(std::f64::consts::PI);
    let chord = 2.0 * (angle / 2.0).sin();
    chord * chord
}

fn metres_for_chord_sq(chord_sq: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord_sq.sqrt() / 2.0).min(1.0).asin()
}

impl SpatialIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index in one go (bulk loading packs the tree better than inserting one by one).
    pub fn bulk_load(positions: impl IntoIterator<Item = (CourierId, LatLon, i64)>) -> Self {
        let latest: HashMap<_, _> = positions
            .into_iter()
            .map(|(id, pos, t)| (id, (pos, t)))
            .collect();
        let entries = latest
            .iter()
            .map(|(id, (pos, _))| Entry::new(unit_vector(*pos), id.clone()))
            .collect();
        Self {
            tree: RTree::bulk_load(entries),
            latest,
        }
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Records `courier`'s position at `time_ms`; an older time than the one held is ignored, so a
    /// late buffered fix never moves a courier back.
    pub fn upsert(&mut self, courier: &CourierId, pos: LatLon, time_ms: i64) {
        match self.latest.get_mut(courier) {
            Some((_, held_time)) if *held_time > time_ms => {}
            Some((held_pos, held_time)) if *held_pos == pos => *held_time = time_ms,
            Some((held_pos, held_time)) => {
                self.tree
                    .remove(&Entry::new(unit_vector(*held_pos), courier.clone()));
                self.tree
                    .insert(Entry::new(unit_vector(pos), courier.clone()));
                *held_pos = pos;
                *held_time = time_ms;
            }
            None => {
                self.tree
                    .insert(Entry::new(unit_vector(pos), courier.clone()));
                self.latest.insert(courier.clone(), (pos, time_ms));
            }
        }
    }

    /// Forgets `courier`; true when it was there.
    pub fn remove(&mut self, courier: &CourierId) -> bool {
        match self.latest.remove(courier) {
            Some((pos, _)) => {
                self.tree
                    .remove(&Entry::new(unit_vector(pos), courier.clone()));
                true
            }
            None => false,
        }
    }

    /// Forgets every courier whose latest fix is older than `cutoff_ms`; returns how many.
    pub fn expire_before(&mut self, cutoff_ms: i64) -> usize {
        let stale: Vec<CourierId> = self
            .latest
            .iter()
            .filter(|(_, (_, t))| *t < cutoff_ms)
            .map(|(id, _)| id.clone())
            .collect();
        stale.iter().filter(|id| self.remove(id)).count()
    }

    /// The latest position of `courier`.
    pub fn get(&self, courier: &CourierId) -> Option<(LatLon, i64)> {
        self.latest.get(courier).copied()
    }

    /// Up to `limit` couriers within `radius_m` of `center`, nearest first.
    pub fn nearest(&self, center: LatLon, radius_m: f64, limit: usize) -> Vec<Nearby> {
        let max_chord_sq = chord_sq_for(radius_m);
        self.tree
            .nearest_neighbor_iter_with_distance_2(&unit_vector(center))
            .take_while(|(_, d2)| *d2 <= max_chord_sq)
            .take(limit)
            .map(|(entry, d2)| self.found(&entry.data, metres_for_chord_sq(d2)))
            .collect()
    }

    /// Every courier inside the box from `south_west` to `north_east` (not across the
    /// antimeridian), nearest to the box's centre first.
    ///
    /// The R-tree is searched with the 3-D bounding box of the spherical patch, which holds every
    /// point of the lat/lon box; the few extra candidates near its edges are then checked exactly.
    pub fn within_box(&self, south_west: LatLon, north_east: LatLon, limit: usize) -> Vec<Nearby> {
        let center = LatLon::new(
            (south_west.lat + north_east.lat) / 2.0,
            (south_west.lon + north_east.lon) / 2.0,
        );
        let inside = |p: &LatLon| {
            (south_west.lat..=north_east.lat).contains(&p.lat)
                && (south_west.lon..=north_east.lon).contains(&p.lon)
        };
        let envelope = patch_envelope(south_west, north_east);
        let mut found: Vec<Nearby> = self
            .tree
            .locate_in_envelope(&envelope)
            .filter_map(|entry| {
                let (pos, _) = self.latest.get(&entry.data)?;
                inside(pos).then(|| self.found(&entry.data, pos.distance_m(center)))
            })
            .collect();
        found.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m));
        found.truncate(limit);
        found
    }

    fn found(&self, courier: &CourierId, distance_m: f64) -> Nearby {
        // unwrap: the tree and the map are changed together, so every tree entry is in the map
        let (pos, time_ms) = self.latest[courier];
        Nearby {
            courier_id: courier.clone(),
            pos,
            time_ms,
            distance_m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CourierId {
        CourierId::new(s).unwrap()
    }

    #[test]
    fn nearest_is_ordered_and_bounded_by_radius_and_limit() {
        let mut index = SpatialIndex::new();
        let center = LatLon::new(48.8566, 2.3522);
        // 0.001 deg of latitude is about 111 m
        for k in 1..=5 {
            index.upsert(
                &id(&format!("c{k}")),
                LatLon::new(center.lat + 0.001 * f64::from(k), center.lon),
                1,
            );
        }
        let found = index.nearest(center, 350.0, 10);
        let ids: Vec<_> = found.iter().map(|n| n.courier_id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
        assert!(
            (found[0].distance_m - 111.2).abs() < 1.0,
            "{}",
            found[0].distance_m
        );
        assert!((found[0].distance_m - center.distance_m(found[0].pos)).abs() < 0.01);
        assert_eq!(index.nearest(center, 10_000.0, 2).len(), 2);
    }

    #[test]
    fn moving_a_courier_replaces_its_old_point() {
        let mut index = SpatialIndex::new();
        let c = id("c");
        index.upsert(&c, LatLon::new(10.0, 10.0), 1);
        index.upsert(&c, LatLon::new(20.0, 20.0), 2);
        assert_eq!(index.len(), 1);
        assert!(index
            .nearest(LatLon::new(10.0, 10.0), 1000.0, 10)
            .is_empty());
        assert_eq!(index.nearest(LatLon::new(20.0, 20.0), 1000.0, 10).len(), 1);
        // a late fix does not move it back
        index.upsert(&c, LatLon::new(10.0, 10.0), 1);
        assert_eq!(index.get(&c), Some((LatLon::new(20.0, 20.0), 2)));
    }

    #[test]
    fn search_works_across_the_antimeridian() {
        let mut index = SpatialIndex::new();
        index.upsert(&id("east"), LatLon::new(0.0, 179.9995), 1);
        let found = index.nearest(LatLon::new(0.0, -179.9995), 1000.0, 10);
        assert_eq!(found.len(), 1);
        assert!((found[0].distance_m - 111.2).abs() < 1.0);
    }

    #[test]
    fn expiry_and_removal_forget_couriers() {
        let mut index = SpatialIndex::bulk_load([
            (id("a"), LatLon::new(1.0, 1.0), 10),
            (id("b"), LatLon::new(1.0, 1.001), 20),
        ]);
        assert_eq!(index.expire_before(15), 1);
        assert!(index.get(&id("a")).is_none());
        assert!(index.remove(&id("b")));
        assert!(index.is_empty() && index.nearest(LatLon::new(1.0, 1.0), 1e6, 10).is_empty());
    }

    #[test]
    fn box_query_agrees_with_a_plain_scan_everywhere() {
        // A deterministic spread of points over the whole globe, and boxes of many sizes.
        let mut points = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..5000 {
            points.push((
                id(&format!("p{i}")),
                LatLon::new(next() * 180.0 - 90.0, next() * 360.0 - 180.0),
                1,
            ));
        }
        let index = SpatialIndex::bulk_load(points.clone());
        for _ in 0..200 {
            let (a, b) = (next() * 180.0 - 90.0, next() * 180.0 - 90.0);
            let (c, d) = (next() * 360.0 - 180.0, next() * 360.0 - 180.0);
            let (sw, ne) = (
                LatLon::new(a.min(b), c.min(d)),
                LatLon::new(a.max(b), c.max(d)),
            );
            let mut expected: Vec<&str> = points
                .iter()
                .filter(|(_, p, _)| {
                    (sw.lat..=ne.lat).contains(&p.lat) && (sw.lon..=ne.lon).contains(&p.lon)
                })
                .map(|(id, _, _)| id.as_str())
                .collect();
            let found = index.within_box(sw, ne, usize::MAX);
            let mut got: Vec<&str> = found.iter().map(|n| n.courier_id.as_str()).collect();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "box {sw:?} {ne:?}");
        }
    }

    #[test]
    fn box_query_finds_only_inside() {
        let index = SpatialIndex::bulk_load([
            (id("in"), LatLon::new(1.0, 1.0), 1),
            (id("out"), LatLon::new(3.0, 1.0), 1),
        ]);
        let found = index.within_box(LatLon::new(0.0, 0.0), LatLon::new(2.0, 2.0), 10);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].courier_id.as_str(), "in");
    }
}
