//! How a fleet courier moves and when it sends: its period and phase, the device time of each of
//! its fixes (which follows wall time), and a plausible course with what a phone reports on it.
//!
//! The device time doubles as the latency key: fix `counter` is stamped
//! `base_ms + counter * period_ms`, so whoever receives a position recovers the counter from its
//! time alone and finds the fix's send instant in the courier's ring.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use trackline_core::plane::LocalPlane;
use trackline_core::LatLon;
use trackline_proto::v1::Fix;

/// A courier's true ground speed stays in this band, m/s: a bike in traffic to a car on an avenue.
pub const SPEED_MPS: (f64, f64) = (5.0, 15.0);
/// How fast the speed may change, m/s per second: gentle acceleration and braking.
const SPEED_CHANGE_MPS2: f64 = 0.5;
/// Heading drift per second of travel, degrees at most: a street is not quite straight.
const DRIFT_DEG_PER_S: f64 = 3.0;
/// Seconds between turns at a crossing, on average, and the turn's size in degrees.
const SECONDS_PER_TURN: f64 = 45.0;
const TURN_DEG: f64 = 90.0;
/// The accuracy a phone reports, metres (open sky to an urban canyon).
pub const ACCURACY_M: (f32, f32) = (3.0, 15.0);
/// GPS noise on the reported position, metres per axis at most: real fixes scatter around the
/// true track, and a delta encoding of perfectly smooth steps would look better than it is.
pub const NOISE_M: f64 = 2.0;
/// Noise on the reported speed (m/s) and heading (degrees), at most.
const SPEED_NOISE_MPS: f64 = 0.3;
const HEADING_NOISE_DEG: f64 = 2.0;

/// The device times of one courier's fixes: fix `counter` is stamped `base_ms + counter *
/// period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceClock {
    pub base_ms: i64,
    pub period_ms: i64,
}

impl DeviceClock {
    /// The device time of fix `counter`.
    pub fn time_of(&self, counter: u64) -> i64 {
        self.base_ms + counter as i64 * self.period_ms
    }

    /// The counter of the fix stamped `time_ms`; `None` for a time this clock never stamps.
    pub fn counter_of(&self, time_ms: i64) -> Option<u64> {
        let d = time_ms - self.base_ms;
        (d > 0 && d % self.period_ms == 0).then(|| (d / self.period_ms) as u64)
    }
}

/// The period of each courier of a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Periods {
    /// Every courier sends one fix per this many milliseconds.
    Fixed(u32),
    /// Each courier has its own period, drawn uniformly from this range (ms, inclusive).
    Between(u32, u32),
}

/// When each courier of a fleet sends and how it moves, reproducible from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Schedule {
    pub periods: Periods,
    pub seed: u64,
}

impl Schedule {
    /// Courier `i`'s own random stream: the same courier gets the same period, phase and course
    /// in every run and for every peer.
    fn rng(&self, i: usize, stream: u64) -> StdRng {
        // Distinct seeds per courier and per use (the golden-ratio constant spreads the bits).
        let mix = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream;
        StdRng::seed_from_u64(self.seed ^ mix)
    }

    /// The order in which `n` couriers connect: a shuffle, the same in every run. A real fleet's
    /// couriers connect at moments of their own, not in the order their watchers did; a server
    /// that hands connections to its threads in turn would otherwise find every courier on its
    /// watcher's thread, a layout no real fleet has.
    pub fn connect_order(&self, n: usize) -> Vec<usize> {
        use rand::seq::SliceRandom;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng(n, 3));
        order
    }

    /// Courier `i`'s period and phase, in ms: it sends at `phase, phase + period, ...` after the
    /// start, so a fleet's fixes spread evenly over time instead of arriving in waves.
    pub fn of(&self, i: usize) -> (u32, u32) {
        let mut rng = self.rng(i, 1);
        let period = match self.periods {
            Periods::Fixed(ms) => ms.max(1),
            Periods::Between(lo, hi) => rng.random_range(lo.max(1)..=hi.max(lo.max(1))),
        };
        (period, rng.random_range(0..period))
    }

    /// The fixes per second that `couriers` couriers offer together.
    pub fn offered_per_s(&self, couriers: usize) -> f64 {
        (0..couriers)
            .map(|i| 1000.0 / f64::from(self.of(i).0))
            .sum()
    }

    /// Courier `i`'s course from `start` (degrees).
    pub fn course(&self, i: usize, start: (f64, f64)) -> Course {
        let mut rng = self.rng(i, 2);
        let heading_deg = rng.random_range(0.0..360.0);
        let speed_mps = rng.random_range(SPEED_MPS.0..=SPEED_MPS.1);
        Course {
            rng,
            lat: start.0,
            lon: start.1,
            heading_deg,
            speed_mps,
            period_s: f64::from(self.of(i).0) / 1000.0,
        }
    }
}

/// One courier on its way: a straight line with a slow drift, a turn at a crossing now and then,
/// a speed that changes gently.
pub struct Course {
    rng: StdRng,
    lat: f64,
    lon: f64,
    heading_deg: f64,
    speed_mps: f64,
    period_s: f64,
}

impl Course {
    /// The true position now (degrees), before noise.
    #[cfg(test)]
    fn position(&self) -> (f64, f64) {
        (self.lat, self.lon)
    }

    /// The fix the phone reports now, with `seq` and device time `time_ms`; then moves on by one
    /// period.
    pub fn next_fix(&mut self, seq: u64, time_ms: i64) -> Fix {
        let (dn, de) = (
            self.rng.random_range(-NOISE_M..=NOISE_M),
            self.rng.random_range(-NOISE_M..=NOISE_M),
        );
        let reported = self.plane().to_lat_lon(de, dn);
        let speed = self.speed_mps + self.rng.random_range(-SPEED_NOISE_MPS..=SPEED_NOISE_MPS);
        let heading = (self.heading_deg
            + self
                .rng
                .random_range(-HEADING_NOISE_DEG..=HEADING_NOISE_DEG))
        .rem_euclid(360.0);
        let fix = Fix {
            seq,
            time_ms,
            lat_e7: trackline_proto::to_e7(reported.lat),
            lon_e7: trackline_proto::to_e7(reported.lon),
            accuracy_m: Some(self.rng.random_range(ACCURACY_M.0..=ACCURACY_M.1)),
            speed_mps: Some(speed.max(0.0) as f32),
            // f32 rounding may turn 359.99997 into 360.0, which is out of range.
            heading_deg: Some((heading as f32).min(359.99)),
        };
        self.advance();
        fix
    }

    /// The local plane about the true position.
    fn plane(&self) -> LocalPlane {
        LocalPlane::at(LatLon::new(self.lat, self.lon))
    }

    /// One period along the current heading, then a new heading and speed for the next one.
    fn advance(&mut self) {
        let dt = self.period_s;
        let d = self.speed_mps * dt;
        let h = self.heading_deg.to_radians();
        let there = self.plane().to_lat_lon(d * h.sin(), d * h.cos());
        (self.lat, self.lon) = (there.lat, there.lon);
        let drift = DRIFT_DEG_PER_S * dt;
        let mut turn = self.rng.random_range(-drift..=drift);
        if self.rng.random_bool((dt / SECONDS_PER_TURN).min(1.0)) {
            turn += if self.rng.random_bool(0.5) {
                TURN_DEG
            } else {
                -TURN_DEG
            };
        }
        self.heading_deg = (self.heading_deg + turn).rem_euclid(360.0);
        let change = SPEED_CHANGE_MPS2 * dt;
        self.speed_mps = (self.speed_mps + self.rng.random_range(-change..=change))
            .clamp(SPEED_MPS.0, SPEED_MPS.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (de, dn) = LocalPlane::at(LatLon::new(a.0, a.1)).to_local(LatLon::new(b.0, b.1));
        dn.hypot(de)
    }

    fn e7(f: &Fix) -> (f64, f64) {
        (
            trackline_proto::from_e7(f.lat_e7),
            trackline_proto::from_e7(f.lon_e7),
        )
    }

    const ONE_S: Schedule = Schedule {
        periods: Periods::Fixed(1000),
        seed: 7,
    };
    const MIXED: Schedule = Schedule {
        periods: Periods::Between(1000, 5000),
        seed: 7,
    };

    #[test]
    fn device_clock_round_trips_and_ignores_foreign_times() {
        let c = DeviceClock {
            base_ms: 1_700_000_000_000,
            period_ms: 1000,
        };
        for k in [1, 2, 600, 100_000] {
            assert_eq!(c.counter_of(c.time_of(k)), Some(k));
        }
        assert_eq!(c.counter_of(c.base_ms), None);
        assert_eq!(c.counter_of(c.base_ms - 1000), None);
        assert_eq!(c.counter_of(c.time_of(3) + 1), None);
    }

    #[test]
    fn fixed_periods_are_the_same_and_phases_spread() {
        let mut phases = Vec::new();
        for i in 0..1000 {
            let (period, phase) = ONE_S.of(i);
            assert_eq!(period, 1000);
            assert!(phase < period);
            phases.push(phase);
        }
        // Spread over the second: every tenth of it holds some couriers.
        for tenth in 0..10 {
            assert!(phases.iter().any(|p| p / 100 == tenth), "{tenth}");
        }
        assert!((ONE_S.offered_per_s(2000) - 2000.0).abs() < 1e-6);
    }

    #[test]
    fn mixed_periods_are_one_to_five_seconds_and_reproducible() {
        let periods: Vec<u32> = (0..2000).map(|i| MIXED.of(i).0).collect();
        assert!(periods.iter().all(|p| (1000..=5000).contains(p)));
        assert!(periods.iter().any(|&p| p < 1500) && periods.iter().any(|&p| p > 4500));
        assert_eq!(
            periods,
            (0..2000).map(|i| MIXED.of(i).0).collect::<Vec<_>>()
        );
        let other = Schedule { seed: 8, ..MIXED };
        assert_ne!(
            periods,
            (0..2000).map(|i| other.of(i).0).collect::<Vec<_>>()
        );
        // The mean of 1000/period over a uniform 1-5 s is ln(5)/4 = 0.40 fixes/s.
        let per_courier = MIXED.offered_per_s(2000) / 2000.0;
        assert!((per_courier - 0.402).abs() < 0.02, "{per_courier}");
    }

    #[test]
    fn a_course_moves_at_courier_speed_and_reports_like_a_phone() {
        for (i, schedule) in [(0, ONE_S), (1, ONE_S), (5, MIXED), (9, MIXED)] {
            let (period, _) = schedule.of(i);
            let dt = f64::from(period) / 1000.0;
            let mut course = schedule.course(i, (45.0, 13.0));
            let start = course.position();
            let mut prev = course.position();
            for k in 1..=600u64 {
                let f = course.next_fix(k, 1_000 + k as i64 * i64::from(period));
                assert_eq!(f.seq, k);
                // The reported position is the true one within the noise.
                assert!(metres(prev, e7(&f)) <= NOISE_M * 1.5, "{k}");
                let (accuracy, speed, heading) = (
                    f.accuracy_m.unwrap(),
                    f.speed_mps.unwrap(),
                    f.heading_deg.unwrap(),
                );
                assert!((ACCURACY_M.0..=ACCURACY_M.1).contains(&accuracy));
                assert!((4.5..=15.5).contains(&speed), "{speed}");
                assert!((0.0..360.0).contains(&heading));
                let now = course.position();
                let v = metres(prev, now) / dt;
                assert!(
                    (SPEED_MPS.0 - 0.01..=SPEED_MPS.1 + 0.01).contains(&v),
                    "{v} m/s"
                );
                prev = now;
            }
            // Turns and drift keep it in town rather than on a ray to the horizon, but it gets
            // somewhere.
            let far = metres(start, prev);
            assert!(far > 100.0 && far < 600.0 * dt * SPEED_MPS.1, "{far} m");
        }
    }

    #[test]
    fn reported_speeds_have_decimals_and_differ_between_couriers() {
        let mut a = ONE_S.course(0, (45.0, 13.0));
        let mut b = ONE_S.course(1, (45.0, 13.0));
        let fa = a.next_fix(1, 0);
        let fb = b.next_fix(1, 0);
        assert_ne!(fa.speed_mps, fb.speed_mps);
        assert_ne!(fa.speed_mps.unwrap().fract(), 0.0);
        // Reproducible: the same courier in another run sends the same fixes.
        let mut again = ONE_S.course(0, (45.0, 13.0));
        assert_eq!(again.next_fix(1, 0), fa);
    }
}
