//! Random trips around a point, for `simulate --random`: a plausible courier without a recording.
//!
//! The walk moves at about the requested speed with a heading that changes smoothly (a turn rate
//! that itself drifts, so there are straight legs and gentle curves, never a zig-zag), one point
//! per interval, and never leaves the circle: near the edge it steers back towards the centre.
//! The same seed gives the same trip.

use anyhow::ensure;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trackline_core::plane::LocalPlane;
use trackline_core::LatLon;

use crate::trip::{Trip, TripPoint};

/// The speed wanders within this fraction of the requested one.
const SPEED_JITTER: f64 = 0.1;
/// Fastest turn, degrees per second: a car at a crossing.
const MAX_TURN_DEG_S: f64 = 20.0;
/// Beyond this fraction of the radius the walk turns back towards the centre.
const STEER_BACK_AT: f64 = 0.8;
/// The walk stays inside this fraction of the radius (a margin for the flat-earth approximation).
const HARD_LIMIT: f64 = 0.98;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomTrips {
    pub center: LatLon,
    pub radius_m: f64,
    pub duration_s: f64,
    /// Typical speed, metres per second; the walk stays within 10 % of it.
    pub speed_mps: f64,
    /// Seconds between two points.
    pub interval_s: f64,
    pub seed: u64,
}

impl RandomTrips {
    /// The highest speed a generated trip can have, metres per second.
    pub fn max_speed_mps(&self) -> f64 {
        self.speed_mps * (1.0 + SPEED_JITTER)
    }

    /// Checks the numbers make a trip possible.
    ///
    /// # Errors
    /// When a number is not positive, the centre is not a position, or the radius is too small to
    /// turn around in at that speed.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.center.is_valid(),
            "--random {},{} is outside lat -90..90, lon -180..180",
            self.center.lat,
            self.center.lon
        );
        ensure!(
            self.center.lat.abs() < 89.0,
            "--random: a point this close to a pole cannot be walked around"
        );
        for (value, what) in [
            (self.radius_m, "--radius-m"),
            (self.duration_s, "--duration"),
            (self.speed_mps, "--speed-mps"),
            (self.interval_s, "the interval between points"),
        ] {
            ensure!(
                value.is_finite() && value > 0.0,
                "{what} must be a positive number"
            );
        }
        let step_m = self.max_speed_mps() * self.interval_s;
        ensure!(
            self.radius_m >= 20.0 * step_m,
            "--radius-m {} is too small to wander in at {} m/s: use at least {:.0}",
            self.radius_m,
            self.speed_mps,
            20.0 * step_m
        );
        Ok(())
    }

    /// Courier `index`'s trip (from 0): each courier gets its own walk, all from the one seed.
    ///
    /// # Errors
    /// See [`RandomTrips::check`].
    pub fn trip(&self, index: usize) -> anyhow::Result<Trip> {
        self.check()?;
        // spread the couriers' seeds so that neighbouring indices do not give related walks
        let seed = self
            .seed
            .wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = self.radius_m * HARD_LIMIT;
        let steps = (self.duration_s / self.interval_s).round().max(1.0) as u64;

        // local plane in metres: x east, y north; start somewhere in the inner half
        let start_r = self.radius_m * 0.5 * rng.random::<f64>().sqrt();
        let start_angle = rng.random_range(0.0..std::f64::consts::TAU);
        let (mut x, mut y) = (start_r * start_angle.cos(), start_r * start_angle.sin());
        let mut heading = rng.random_range(0.0..std::f64::consts::TAU);
        let mut turn = 0.0f64; // radians per second
        let mut speed_factor = 1.0f64;
        let max_turn = MAX_TURN_DEG_S.to_radians();

        let plane = LocalPlane::at(self.center);
        let to_latlon = |x: f64, y: f64| plane.to_lat_lon(x, y);
        let mut points = Vec::with_capacity(steps as usize + 1);
        points.push(TripPoint {
            t_s: 0.0,
            pos: to_latlon(x, y),
        });
        let dt = self.interval_s;
        for k in 1..=steps {
            // the turn rate drifts and decays: mostly straight legs, sometimes a long curve
            turn = turn * 0.9 + rng.random_range(-1.0..1.0) * max_turn * 0.15;
            if rng.random::<f64>() < 0.02 * dt {
                // now and then a real corner, spread over a few seconds
                turn = rng.random_range(-1.0..1.0) * max_turn;
            }
            let r = x.hypot(y);
            if r > self.radius_m * STEER_BACK_AT {
                // near the edge: turn towards the centre as fast as allowed
                let inward = (-y).atan2(-x);
                let off = wrap_angle(inward - heading);
                turn = off.clamp(-max_turn * dt, max_turn * dt) / dt;
            }
            turn = turn.clamp(-max_turn, max_turn);
            heading = wrap_angle(heading + turn * dt);
            speed_factor = (speed_factor + rng.random_range(-0.02..0.02))
                .clamp(1.0 - SPEED_JITTER, 1.0 + SPEED_JITTER);
            let step = self.speed_mps * speed_factor * dt;
            // heading is the mathematical angle here (from east, counter-clockwise)
            let (mut nx, mut ny) = (x + step * heading.cos(), y + step * heading.sin());
            if nx.hypot(ny) > limit {
                // would leave: head straight for the centre instead, which stays inside
                heading = (-y).atan2(-x);
                turn = 0.0;
                nx = x + step * heading.cos();
                ny = y + step * heading.sin();
            }
            (x, y) = (nx, ny);
            points.push(TripPoint {
                t_s: k as f64 * dt,
                pos: to_latlon(x, y),
            });
        }
        Ok(Trip {
            name: format!(
                "random {:.5},{:.5} r{:.0}m seed {} #{}",
                self.center.lat,
                self.center.lon,
                self.radius_m,
                self.seed,
                index + 1
            ),
            points,
        })
    }
}

fn wrap_angle(a: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let a = a.rem_euclid(tau);
    if a > std::f64::consts::PI {
        a - tau
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> RandomTrips {
        RandomTrips {
            center: LatLon::new(60.17, 24.94),
            radius_m: 500.0,
            duration_s: 1800.0,
            speed_mps: 8.0,
            interval_s: 1.0,
            seed,
        }
    }

    #[test]
    fn trips_stay_inside_with_the_requested_spacing_and_speed() {
        let p = params(7);
        for index in 0..5 {
            let trip = p.trip(index).unwrap();
            assert_eq!(trip.points.len(), 1801);
            assert_eq!(trip.duration_s(), 1800.0);
            for point in &trip.points {
                let r = p.center.distance_m(point.pos);
                assert!(r <= p.radius_m, "{} m from the centre", r);
            }
            for w in trip.points.windows(2) {
                assert!((w[1].t_s - w[0].t_s - 1.0).abs() < 1e-9);
                let speed = w[0].pos.distance_m(w[1].pos) / (w[1].t_s - w[0].t_s);
                assert!(
                    (speed - 8.0).abs() <= 8.0 * 0.11,
                    "speed {speed} m/s at {}",
                    w[0].t_s
                );
                assert!(speed < crate::simulate::SERVER_MAX_SPEED_MPS);
            }
            let typical = trip.typical_speed_mps().unwrap();
            assert!((typical - 8.0).abs() < 0.8, "{typical}");
            // it wanders: it reaches well away from where it started
            let start = trip.points[0].pos;
            assert!(trip
                .points
                .iter()
                .any(|q| start.distance_m(q.pos) > p.radius_m * 0.5));
        }
    }

    #[test]
    fn the_heading_changes_smoothly() {
        use geo::{Bearing, Haversine};
        let trip = params(3).trip(0).unwrap();
        let bearings: Vec<f64> = trip
            .points
            .windows(2)
            .map(|w| Haversine.bearing(w[0].pos.point(), w[1].pos.point()))
            .collect();
        // most seconds turn by less than the fastest corner; only steering back at the edge
        // can be sharper
        let sharp = bearings
            .windows(2)
            .filter(|b| wrap_angle((b[1] - b[0]).to_radians()).abs().to_degrees() > 21.0)
            .count();
        assert!(sharp * 50 < bearings.len(), "{sharp} sharp turns");
    }

    #[test]
    fn the_same_seed_gives_the_same_trip() {
        assert_eq!(params(42).trip(3).unwrap(), params(42).trip(3).unwrap());
        assert_ne!(params(42).trip(0).unwrap(), params(43).trip(0).unwrap());
        assert_ne!(params(42).trip(0).unwrap(), params(42).trip(1).unwrap());
    }

    #[test]
    fn other_intervals_and_bad_numbers() {
        let trip = RandomTrips {
            interval_s: 0.5,
            duration_s: 60.0,
            ..params(1)
        }
        .trip(0)
        .unwrap();
        assert_eq!(trip.points.len(), 121);
        assert!((trip.points[1].t_s - 0.5).abs() < 1e-9);
        for bad in [
            RandomTrips {
                radius_m: 50.0,
                ..params(1)
            },
            RandomTrips {
                speed_mps: 0.0,
                ..params(1)
            },
            RandomTrips {
                center: LatLon::new(95.0, 0.0),
                ..params(1)
            },
        ] {
            assert!(bad.trip(0).is_err(), "{bad:?}");
        }
    }
}
