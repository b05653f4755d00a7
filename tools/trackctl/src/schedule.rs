//! When each simulated fix is sent and what it says: a trip's relative times, divided by the
//! speedup, laid from "now" (so the first fix is stamped now), with a heading derived from the
//! previous fix.
//!
//! No speed is reported: the recordings carry none, and a speed derived from position differences
//! is GPS noise (a standing walker "moves" at several m/s) that a phone's Doppler speed is not. The
//! server derives its own from the positions.

use std::sync::Arc;
use std::time::Duration;

use geo::{Bearing, Haversine};
use trackline_core::LatLon;

use crate::trip::Trip;

/// One fix to send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedFix {
    /// How long after the courier's start it is due (and so sent).
    pub due: Duration,
    /// Device time stamped on it: the start's unix ms plus `due`.
    pub time_ms: i64,
    pub pos: LatLon,
    /// Degrees clockwise from north since the previous fix; negative when unknown or standing still.
    pub heading_deg: f32,
}

/// Moves shorter than this between two fixes say nothing about heading (GPS jitter).
const MIN_HEADING_MOVE_M: f64 = 3.0;

/// The fixes of one courier riding one trip, in order; with `looping` it rides the trip back in
/// reverse, then forward again, forever.
///
/// A back-and-forth keeps the track continuous: jumping from the end to the start would look like
/// an impossible teleport to the server's GPS filter, which would then refuse the next fixes.
#[derive(Debug, Clone)]
pub struct Schedule {
    trip: Arc<Trip>,
    start_ms: i64,
    speedup: f64,
    looping: bool,
    /// Trip seconds elapsed before the current lap began.
    lap_base_s: f64,
    forward: bool,
    /// Index of the next point of the current lap (counting along the lap's direction).
    step: usize,
    prev: Option<LatLon>,
}

impl Schedule {
    /// A schedule starting at `start_ms` (unix ms) for the first fix.
    ///
    /// `speedup` must be positive and finite (the CLI checks it); `looping` needs a trip with at
    /// least two points and a positive duration, or it would emit fixes at one instant forever, so
    /// such a trip is ridden once.
    pub fn new(trip: Arc<Trip>, start_ms: i64, speedup: f64, looping: bool) -> Self {
        let looping = looping && trip.points.len() >= 2 && trip.duration_s() > 0.0;
        Self {
            trip,
            start_ms,
            speedup,
            looping,
            lap_base_s: 0.0,
            forward: true,
            step: 0,
            prev: None,
        }
    }

    /// How many fixes this schedule yields, or `None` when it loops forever.
    pub fn len_hint(&self) -> Option<u64> {
        (!self.looping).then_some(self.trip.points.len() as u64)
    }

    /// The trip seconds since the trip's start of point `index` on the current lap.
    fn lap_offset_s(&self, index: usize) -> f64 {
        let points = &self.trip.points;
        let (first, last) = (points[0].t_s, points[points.len() - 1].t_s);
        if self.forward {
            points[index].t_s - first
        } else {
            last - points[index].t_s
        }
    }
}

impl Iterator for Schedule {
    type Item = PlannedFix;

    fn next(&mut self) -> Option<PlannedFix> {
        let n = self.trip.points.len();
        if self.step >= n {
            if !self.looping {
                return None;
            }
            // turn around; the turning point was just sent, so the new lap starts one step in
            self.lap_base_s += self.trip.duration_s();
            self.forward = !self.forward;
            self.step = 1;
        }
        let index = if self.forward {
            self.step
        } else {
            n - 1 - self.step
        };
        self.step += 1;
        let pos = self.trip.points[index].pos;
        let elapsed_s = (self.lap_base_s + self.lap_offset_s(index)) / self.speedup;
        let due = Duration::from_secs_f64(elapsed_s.max(0.0));
        let heading_deg = match self.prev {
            Some(prev) if prev.distance_m(pos) >= MIN_HEADING_MOVE_M => {
                Haversine.bearing(prev.point(), pos.point()) as f32
            }
            _ => -1.0,
        };
        self.prev = Some(pos);
        let due_ms = i64::try_from(due.as_millis()).unwrap_or(i64::MAX);
        Some(PlannedFix {
            due,
            time_ms: self.start_ms.saturating_add(due_ms),
            pos,
            heading_deg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trip::TripPoint;

    fn trip(points: &[(f64, f64)]) -> Arc<Trip> {
        // (t_s, lat) along a meridian: 0.001 degrees of latitude is about 111 m
        let points = points
            .iter()
            .map(|&(t_s, lat)| TripPoint {
                t_s,
                pos: LatLon::new(lat, 13.0),
            })
            .collect();
        Arc::new(Trip {
            name: "test".into(),
            points,
        })
    }

    #[test]
    fn first_fix_is_now_and_the_rest_keep_relative_times() {
        let trip = trip(&[
            (1_600_000_000.0, 45.0),
            (1_600_000_002.5, 45.001),
            (1_600_000_010.0, 45.002),
        ]);
        let fixes: Vec<_> = Schedule::new(trip, 1_700_000_000_000, 1.0, false).collect();
        let times: Vec<i64> = fixes.iter().map(|f| f.time_ms).collect();
        assert_eq!(
            times,
            [1_700_000_000_000, 1_700_000_002_500, 1_700_000_010_000]
        );
        assert_eq!(fixes[1].due, Duration::from_millis(2500));
        // no heading before there is a previous fix; then north
        assert!(fixes[0].heading_deg < 0.0);
        assert!(fixes[1].heading_deg.abs() < 0.01);
    }

    #[test]
    fn speedup_compresses_time() {
        let trip = trip(&[(100.0, 45.0), (110.0, 45.001)]);
        let fixes: Vec<_> = Schedule::new(trip, 1_000, 10.0, false).collect();
        assert_eq!(fixes[1].time_ms, 2_000);
        assert_eq!(fixes[1].due, Duration::from_secs(1));
    }

    #[test]
    fn looping_rides_back_and_forth_with_increasing_times() {
        let trip = trip(&[(0.0, 45.0), (1.0, 45.001), (3.0, 45.002)]);
        let fixes: Vec<_> = Schedule::new(trip, 0, 1.0, true).take(7).collect();
        let lats: Vec<f64> = fixes.iter().map(|f| f.pos.lat).collect();
        assert_eq!(lats, [45.0, 45.001, 45.002, 45.001, 45.0, 45.001, 45.002]);
        let times: Vec<i64> = fixes.iter().map(|f| f.time_ms).collect();
        // the way back replays the intervals in reverse: 2 s then 1 s
        assert_eq!(times, [0, 1000, 3000, 5000, 6000, 7000, 9000]);
        // southbound on the way back
        assert!((fixes[3].heading_deg - 180.0).abs() < 0.01);
    }

    #[test]
    fn a_trip_that_cannot_loop_is_ridden_once() {
        let single = trip(&[(0.0, 45.0)]);
        let schedule = Schedule::new(single, 0, 1.0, true);
        assert_eq!(schedule.len_hint(), Some(1));
        assert_eq!(schedule.count(), 1);
        let instant = trip(&[(5.0, 45.0), (5.0, 45.001)]);
        assert_eq!(Schedule::new(instant, 0, 1.0, true).count(), 2);
    }
}
