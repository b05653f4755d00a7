//! Recorded trips (`tests/data/*.csv`) turned into the fixes a phone would stream live.

use std::path::PathBuf;

use trackline_core::LatLon;
use trackline_proto::v1;
use trackline_proto::{from_e7, to_e7};

/// One point of a recorded trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripPoint {
    pub time_ms: i64,
    pub pos: LatLon,
}

/// The directory of the recorded trips every crate's tests read (CSV `t_unix,lat,lon`).
pub fn data_dir() -> PathBuf {
    trackline_testdata::dir()
}

/// Loads a recorded trip from `tests/data/`.
pub fn load_trip(file: &str) -> Vec<TripPoint> {
    trackline_testdata::trip(file)
        .iter()
        .map(|point| TripPoint {
            time_ms: point.time_ms(),
            pos: LatLon::new(point.lat, point.lon),
        })
        .collect()
}

/// The horizontal accuracy every trip fix claims, in metres.
pub const TRIP_ACCURACY_M: f32 = 5.0;

/// Turns trip points into wire fixes with seqs from `first_seq`, shifted in time so that the last
/// one was recorded one second ago (as a phone streaming live would have sent them). Speed and
/// heading are derived from the previous point.
pub fn trip_fixes(points: &[TripPoint], first_seq: u64) -> Vec<v1::Fix> {
    let Some(last) = points.last() else {
        return Vec::new();
    };
    let shift = trackline_core::now_ms() - 1000 - last.time_ms;
    let mut fixes = Vec::with_capacity(points.len());
    for (i, point) in points.iter().enumerate() {
        let (speed, heading) = match i.checked_sub(1).map(|p| points[p]) {
            Some(prev) if point.time_ms > prev.time_ms => {
                let metres = prev.pos.distance_m(point.pos);
                let speed = metres / ((point.time_ms - prev.time_ms) as f64 / 1000.0);
                (
                    Some(speed as f32),
                    Some(bearing_deg(prev.pos, point.pos) as f32),
                )
            }
            _ => (None, None),
        };
        fixes.push(v1::Fix {
            seq: first_seq + i as u64,
            time_ms: point.time_ms + shift,
            lat_e7: to_e7(point.pos.lat),
            lon_e7: to_e7(point.pos.lon),
            accuracy_m: Some(TRIP_ACCURACY_M),
            speed_mps: speed,
            heading_deg: heading,
        });
    }
    fixes
}

/// The initial great-circle bearing from `a` to `b`, in degrees in [0, 360).
pub fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlon = (b.lon - a.lon).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    let deg = y.atan2(x).to_degrees().rem_euclid(360.0);
    // rem_euclid can round up to exactly 360.0 for tiny negative angles
    if deg >= 360.0 {
        0.0
    } else {
        deg
    }
}

/// The position of a wire fix, in degrees.
pub fn fix_pos(fix: &v1::Fix) -> LatLon {
    LatLon::new(from_e7(fix.lat_e7), from_e7(fix.lon_e7))
}

/// The fixes that were not rejected.
pub fn accepted(fixes: &[v1::Fix], rejected: &[u64]) -> Vec<v1::Fix> {
    fixes
        .iter()
        .filter(|f| !rejected.contains(&f.seq))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_load_with_every_point() {
        let run = load_trip("run_vincennes_DC2_garmin.csv");
        assert_eq!(run.len(), 2643);
        assert_eq!(run[0].time_ms, 1_627_151_005_000);
        assert!(
            (run[0].pos.lat - 48.8293093).abs() < 1e-9 && (run[0].pos.lon - 2.4605997).abs() < 1e-9
        );
        assert_eq!(load_trip("car_visnjan_hr.csv").len(), 104);
    }

    #[test]
    fn trip_fixes_end_now_and_keep_the_recorded_spacing() {
        let points = load_trip("car_visnjan_hr.csv");
        let fixes = trip_fixes(&points, 7);
        let now = trackline_core::now_ms();
        let last = fixes.last().unwrap();
        assert!(
            (now - 5_000..now).contains(&last.time_ms),
            "{} vs now {now}",
            last.time_ms
        );
        for (i, (fix, point)) in fixes.iter().zip(&points).enumerate() {
            assert_eq!(fix.seq, 7 + i as u64);
            assert_eq!(
                last.time_ms - fix.time_ms,
                points.last().unwrap().time_ms - point.time_ms
            );
            assert!(fix_pos(fix).distance_m(point.pos) < 0.05);
            if i == 0 {
                // Nothing before the first point to derive them from: unknown.
                assert_eq!((fix.speed_mps, fix.heading_deg), (None, None));
                continue;
            }
            let (speed, heading) = (fix.speed_mps.unwrap(), fix.heading_deg.unwrap());
            assert!((0.0..85.0).contains(&speed), "speed {speed}");
            assert!((0.0..360.0).contains(&heading), "heading {heading}");
        }
    }

    #[test]
    fn bearings_point_the_right_way() {
        let origin = LatLon::new(45.0, 13.0);
        assert!(bearing_deg(origin, LatLon::new(45.1, 13.0)).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 13.1)) - 90.0).abs() < 0.1);
        assert!((bearing_deg(origin, LatLon::new(44.9, 13.0)) - 180.0).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 12.9)) - 270.0).abs() < 0.1);
    }
}
