//! Trips from the test data: parsing a real recorded file, rewriting its times, its route.

mod common;

use std::sync::Arc;

use common::testdata;

use trackctl::schedule::Schedule;
use trackctl::trip::Trip;
use trackline_core::LatLon;

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

#[test]
fn a_gpx_trip_reads_like_the_csv_it_was_made_from() {
    // the same 60 fixes, split over two tracks (the first with two segments)
    let gpx = Trip::from_path(&testdata("run_vincennes_head.gpx")).unwrap();
    let csv = Trip::from_path(&testdata("run_vincennes_head.csv")).unwrap();
    assert_eq!(gpx.name, "run_vincennes_head.gpx");
    assert_eq!(gpx.points.len(), 60);
    assert_eq!(gpx.points, csv.points);
    // and it rides the same
    let ride = |trip: Trip| -> Vec<_> { Schedule::new(Arc::new(trip), 0, 2.0, false).collect() };
    assert_eq!(ride(gpx), ride(csv));
}

fn waypoint(lat: f64, lon: f64, t_unix: Option<i64>) -> gpx::Waypoint {
    let mut point = gpx::Waypoint::new(geo::Point::new(lon, lat));
    point.time = t_unix.map(|t| time::OffsetDateTime::from_unix_timestamp(t).unwrap().into());
    point
}

fn write_gpx(path: &std::path::Path, tracks: Vec<Vec<Vec<gpx::Waypoint>>>) {
    let doc = gpx::Gpx {
        version: gpx::GpxVersion::Gpx11,
        creator: Some("trackctl tests".into()),
        tracks: tracks
            .into_iter()
            .map(|segments| {
                let mut track = gpx::Track::new();
                track.segments = segments
                    .into_iter()
                    .map(|points| {
                        let mut segment = gpx::TrackSegment::new();
                        segment.points = points;
                        segment
                    })
                    .collect();
                track
            })
            .collect(),
        // a waypoint is not part of the recording
        waypoints: vec![waypoint(1.0, 1.0, None)],
        ..Default::default()
    };
    gpx::write(&doc, std::fs::File::create(path).unwrap()).unwrap();
}

#[test]
fn gpx_tracks_and_segments_are_read_in_order() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("ride.GPX");
    write_gpx(
        &path,
        vec![
            vec![
                vec![
                    waypoint(45.0, 13.0, Some(1_600_000_000)),
                    waypoint(45.001, 13.0, Some(1_600_000_010)),
                ],
                vec![waypoint(45.002, 13.0, Some(1_600_000_020))],
            ],
            vec![vec![waypoint(45.003, 13.001, Some(1_600_000_035))]],
        ],
    );
    let trip = Trip::from_path(&path).unwrap();
    assert_eq!(trip.name, "ride.GPX");
    let times: Vec<f64> = trip.points.iter().map(|p| p.t_s).collect();
    assert_eq!(
        times,
        [
            1_600_000_000.0,
            1_600_000_010.0,
            1_600_000_020.0,
            1_600_000_035.0
        ]
    );
    assert_eq!(trip.points[3].pos, LatLon::new(45.003, 13.001));
    assert_eq!(trip.destination(), LatLon::new(45.003, 13.001));
    assert_eq!(trip.duration_s(), 35.0);
}

#[test]
fn a_gpx_point_without_time_is_an_error_naming_the_file() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("planned.gpx");
    write_gpx(
        &path,
        vec![vec![vec![
            waypoint(45.0, 13.0, Some(1_600_000_000)),
            waypoint(45.001, 13.0, None),
        ]]],
    );
    let err = format!("{:#}", Trip::from_path(&path).unwrap_err());
    assert!(err.contains("planned.gpx"), "{err}");
    assert!(err.contains("point 2") && err.contains("<time>"), "{err}");

    // no track at all, and time going backwards
    let empty = dir.path().join("empty.gpx");
    write_gpx(&empty, vec![]);
    let err = format!("{:#}", Trip::from_path(&empty).unwrap_err());
    assert!(
        err.contains("empty.gpx") && err.contains("no track points"),
        "{err}"
    );
    let back = dir.path().join("back.gpx");
    write_gpx(
        &back,
        vec![vec![vec![
            waypoint(45.0, 13.0, Some(1_600_000_010)),
            waypoint(45.001, 13.0, Some(1_600_000_000)),
        ]]],
    );
    let err = format!("{:#}", Trip::from_path(&back).unwrap_err());
    assert!(
        err.contains("back.gpx") && err.contains("time order"),
        "{err}"
    );

    // not GPX at all
    let junk = dir.path().join("junk.gpx");
    std::fs::write(&junk, "t_unix,lat,lon\n1,2,3\n").unwrap();
    let err = format!("{:#}", Trip::from_path(&junk).unwrap_err());
    assert!(err.contains("junk.gpx") && err.contains("GPX"), "{err}");
}

#[test]
fn a_trip_is_resampled_to_a_rate() {
    let trip = Trip::from_path(&testdata("car_visnjan_hr.csv")).unwrap();
    // recorded about every 5 s over 514 s
    let every_2s = trip.resampled(0.5);
    assert_eq!(every_2s.points.first(), trip.points.first());
    assert_eq!(every_2s.points.last(), trip.points.last());
    assert_eq!(every_2s.points.len(), 258);
    for w in every_2s.points.windows(2) {
        assert!((w[1].t_s - w[0].t_s - 2.0).abs() < 1e-6);
    }
    assert!((every_2s.rate_hz().unwrap() - 0.5).abs() < 0.01);
    // thinning: one fix a minute, positions still on the recording
    let per_minute = trip.resampled(1.0 / 60.0);
    assert_eq!(per_minute.points.len(), 10);
    assert_eq!(per_minute.points[1].t_s, trip.points[0].t_s + 60.0);
    // where a recorded fix falls on the grid, it is kept as is
    let on_grid = trip
        .points
        .iter()
        .find(|p| p.t_s == trip.points[0].t_s + 60.0)
        .copied();
    if let Some(recorded) = on_grid {
        assert!(per_minute.points[1].pos.distance_m(recorded.pos) < 0.01);
    }
    // the same rate as recorded changes nothing of substance
    let one_hz = Trip::from_path(&testdata("run_vincennes_head.csv")).unwrap();
    let again = one_hz.resampled(1.0);
    assert_eq!(again.points.len(), one_hz.points.len());
    for (a, b) in again.points.iter().zip(&one_hz.points) {
        assert!((a.t_s - b.t_s).abs() < 1e-6 && a.pos.distance_m(b.pos) < 0.01);
    }
}
