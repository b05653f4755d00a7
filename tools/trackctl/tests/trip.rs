//! Trips from the test data: parsing a real recorded file, rewriting its times, its route.

use std::path::PathBuf;
use std::sync::Arc;

use trackctl::schedule::Schedule;
use trackctl::trip::Trip;
use trackline_core::LatLon;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

#[test]
fn reads_a_real_recorded_trip() {
    let trip = Trip::from_path(&testdata("car_visnjan_hr.csv")).unwrap();
    assert_eq!(trip.name, "car_visnjan_hr.csv");
    assert_eq!(trip.points.len(), 104);
    assert_eq!(trip.points[0].t_s, 1_608_272_150.0);
    assert_eq!(trip.points[0].pos, LatLon::new(45.273518851, 13.7142099626));
    assert_eq!(
        trip.destination(),
        LatLon::new(45.2733349521, 13.7139970623)
    );
    assert_eq!(trip.duration_s(), 514.0);
}

#[test]
fn timestamps_are_rewritten_to_now_and_compressed_by_the_speedup() {
    let trip = Arc::new(Trip::from_path(&testdata("car_visnjan_hr.csv")).unwrap());
    let now_ms = 1_700_000_000_000;
    let fixes: Vec<_> = Schedule::new(trip.clone(), now_ms, 4.0, false).collect();
    assert_eq!(fixes.len(), trip.points.len());
    assert_eq!(fixes[0].time_ms, now_ms);
    // 514 s recorded, four times faster
    assert_eq!(fixes.last().unwrap().time_ms, now_ms + 128_500);
    for (fix, point) in fixes.iter().zip(&trip.points) {
        let recorded_ms = (point.t_s - trip.points[0].t_s) * 1000.0 / 4.0;
        assert!((fix.time_ms - now_ms) as f64 - recorded_ms <= 1.0);
        assert_eq!(fix.pos, point.pos);
    }
    assert!(fixes.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
}

#[test]
fn the_route_of_a_trip_is_thinned_and_ends_at_the_destination() {
    let trip = Trip::from_path(&testdata("car_joensuu_head.csv")).unwrap();
    let route = trip.simplified_route(50.0);
    assert_eq!(route.first(), Some(&trip.points[0].pos));
    assert_eq!(route.last(), Some(&trip.destination()));
    assert!(
        route.len() >= 2 && route.len() < trip.points.len(),
        "{} points",
        route.len()
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let err = Trip::from_path(&testdata("nope.csv")).unwrap_err();
    assert!(format!("{err:#}").contains("nope.csv"));
}
