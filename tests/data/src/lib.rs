//! The recorded GPS trips the tests of every crate read (`tests/data/*.csv`, `*.gpx`), stored
//! once in this folder, and the one reader of their CSV form.
//!
//! The trips were recorded by real receivers (a car in Višnjan and one in Joensuu, a bike, a
//! run and a noisy walk) and are copied here so that the project's tests stand alone. Each CSV
//! has the header `t_unix,lat,lon`: seconds since the epoch (with a fraction) and WGS84 degrees.
//! The reader returns plain numbers, not the core's types, so that the core itself can use it in
//! its tests without a dependency cycle.

use std::path::{Path, PathBuf};

/// The trips that are recorded in full, each a different receiver and way of moving.
pub const FULL_TRIPS: [&str; 5] = [
    "bike_joensuu_1412412627743.csv",
    "car_joensuu_1326877679263.csv",
    "car_visnjan_hr.csv",
    "run_vincennes_DC2_garmin.csv",
    "walk_vincennes_MC_ublox_single_noisy.csv",
];

/// One recorded fix: device time and position, as the receiver wrote it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct TripPoint {
    /// Seconds since the epoch, with a fraction.
    pub t_unix: f64,
    pub lat: f64,
    pub lon: f64,
}

impl TripPoint {
    /// The device time in whole milliseconds since the epoch.
    pub fn time_ms(&self) -> i64 {
        (self.t_unix * 1000.0).round() as i64
    }
}

/// The path of a file in this folder, e.g. `path("car_visnjan_hr.csv")`.
pub fn path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// The folder itself, for tests that hand a directory to a command.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a trip CSV of this folder, in recording order.
///
/// # Panics
/// When the file is missing or a row is not `t_unix,lat,lon` numbers: test data is broken, and
/// the test reading it should stop there.
pub fn trip(name: &str) -> Vec<TripPoint> {
    let path = path(name);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    reader
        .deserialize()
        .collect::<Result<Vec<TripPoint>, _>>()
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_full_trip_reads_as_a_plausible_time_ordered_track() {
        for name in FULL_TRIPS {
            let points = trip(name);
            assert!(points.len() >= 100, "{name}: only {} points", points.len());
            for pair in points.windows(2) {
                assert!(pair[1].t_unix >= pair[0].t_unix, "{name}: time goes back");
            }
            for p in &points {
                assert!(p.lat.abs() <= 90.0 && p.lon.abs() <= 180.0, "{name}: {p:?}");
                assert!(p.t_unix > 1.0e9, "{name}: {p:?} is not a unix time");
            }
        }
    }
}
