//! A GPS fix as the domain sees it, and the stateless checks every fix passes before it is used.

use geo::{Distance, Haversine, Point};
use serde::{Deserialize, Serialize};
use trackline_proto::v1;
use trackline_proto::{from_e7, to_e7, Measurements};

/// A point on the WGS84 ellipsoid, in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatLon {
    pub lat: f64,
    pub lon: f64,
}

impl LatLon {
    pub fn new(lat: f64, lon: f64) -> Self {
        Self { lat, lon }
    }

    /// Great-circle distance in metres (haversine on the mean Earth radius).
    pub fn distance_m(self, other: LatLon) -> f64 {
        Haversine.distance(self.point(), other.point())
    }

    /// As a geo point (x = lon, y = lat).
    pub fn point(self) -> Point<f64> {
        Point::new(self.lon, self.lat)
    }

    /// True when both coordinates are finite and inside their ranges.
    pub fn is_valid(self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }
}

/// One fix of one courier, validated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Per courier, strictly increasing.
    pub seq: u64,
    /// Device time, unix milliseconds.
    pub time_ms: i64,
    pub pos: LatLon,
    /// Horizontal accuracy in metres, when the device reported one.
    pub accuracy_m: Option<f32>,
    /// Ground speed in metres per second, when the device reported one.
    pub speed_mps: Option<f32>,
    /// Heading in degrees clockwise from north, when the device reported one.
    pub heading_deg: Option<f32>,
}

impl Fix {
    /// The wire form of this fix.
    pub fn to_proto(&self) -> v1::Fix {
        v1::Fix {
            seq: self.seq,
            time_ms: self.time_ms,
            lat_e7: to_e7(self.pos.lat),
            lon_e7: to_e7(self.pos.lon),
            accuracy_m: self.accuracy_m,
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
        }
    }
}

/// Bounds on a fix's device time relative to the server's clock.
#[derive(Debug, Clone, Copy)]
pub struct TimeBounds {
    /// A fix older than this is refused (phones buffer while offline; default 24 h).
    pub max_age_ms: i64,
    /// A fix further ahead of the server's clock than this is refused (default 60 s).
    pub max_future_ms: i64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        Self {
            max_age_ms: 24 * 3600 * 1000,
            max_future_ms: 60 * 1000,
        }
    }
}

/// The reason one fix was refused; becomes a `Rejected` frame on the courier stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: RejectCode,
    pub reason: String,
}

/// The stable, machine-readable codes of `Rejected.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectCode {
    LatOutOfRange,
    LonOutOfRange,
    BadAccuracy,
    BadSpeed,
    BadHeading,
    TooOld,
    InFuture,
    SeqNotIncreasing,
    ImpossibleSpeed,
    NoActiveOrder,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::LatOutOfRange => "lat_out_of_range",
            RejectCode::LonOutOfRange => "lon_out_of_range",
            RejectCode::BadAccuracy => "bad_accuracy",
            RejectCode::BadSpeed => "bad_speed",
            RejectCode::BadHeading => "bad_heading",
            RejectCode::TooOld => "too_old",
            RejectCode::InFuture => "in_future",
            RejectCode::SeqNotIncreasing => "seq_not_increasing",
            RejectCode::ImpossibleSpeed => "impossible_speed",
            RejectCode::NoActiveOrder => "no_active_order",
        }
    }
}

impl Rejection {
    pub fn new(code: RejectCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// The fastest ground speed a courier's device may honestly report (about 300 km/h).
const MAX_REPORTED_SPEED_MPS: f32 = 85.0;
/// The worst accuracy worth storing at all; beyond it a fix says nothing about where the courier is.
const MAX_ACCURACY_M: f32 = 10_000.0;

/// Checks one wire fix on its own (no history needed) and converts it.
///
/// Unknown accuracy, speed and heading (unset, or the values older apps send for unknown, see
/// [`v1::Fix::measurements`]) become `None`.
///
/// # Errors
/// A [`Rejection`] naming the first field that is out of range.
pub fn validate(raw: &v1::Fix, now_ms: i64, bounds: TimeBounds) -> Result<Fix, Rejection> {
    let pos = LatLon::new(from_e7(raw.lat_e7), from_e7(raw.lon_e7));
    if !(-90.0..=90.0).contains(&pos.lat) {
        return Err(Rejection::new(
            RejectCode::LatOutOfRange,
            format!("latitude {} is outside [-90, 90]", pos.lat),
        ));
    }
    if !(-180.0..=180.0).contains(&pos.lon) {
        return Err(Rejection::new(
            RejectCode::LonOutOfRange,
            format!("longitude {} is outside [-180, 180]", pos.lon),
        ));
    }
    let Measurements {
        accuracy_m,
        speed_mps,
        heading_deg,
    } = raw.measurements();
    if let Some(a) = accuracy_m.filter(|a| !(0.0..=MAX_ACCURACY_M).contains(a)) {
        return Err(Rejection::new(
            RejectCode::BadAccuracy,
            format!("accuracy {a} m is not in (0, {MAX_ACCURACY_M}] (unset means unknown)"),
        ));
    }
    if let Some(s) = speed_mps.filter(|s| !(0.0..=MAX_REPORTED_SPEED_MPS).contains(s)) {
        return Err(Rejection::new(
            RejectCode::BadSpeed,
            format!("speed {s} m/s is not a ground speed (unset means unknown)"),
        ));
    }
    if let Some(h) = heading_deg.filter(|h| !(0.0..360.0).contains(h)) {
        return Err(Rejection::new(
            RejectCode::BadHeading,
            format!("heading {h} is not in [0, 360) (unset means unknown)"),
        ));
    }
    if raw.time_ms > now_ms.saturating_add(bounds.max_future_ms) {
        return Err(Rejection::new(
            RejectCode::InFuture,
            format!(
                "time {} ms is {} ms ahead of the server clock",
                raw.time_ms,
                raw.time_ms - now_ms
            ),
        ));
    }
    if raw.time_ms < now_ms.saturating_sub(bounds.max_age_ms) {
        return Err(Rejection::new(
            RejectCode::TooOld,
            format!(
                "time {} ms is older than the {} s accepted",
                raw.time_ms,
                bounds.max_age_ms / 1000
            ),
        ));
    }
    Ok(Fix {
        seq: raw.seq,
        time_ms: raw.time_ms,
        pos,
        accuracy_m,
        speed_mps,
        heading_deg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn wire() -> v1::Fix {
        v1::Fix {
            seq: 1,
            time_ms: NOW,
            lat_e7: to_e7(62.59),
            lon_e7: to_e7(29.74),
            accuracy_m: Some(8.0),
            speed_mps: Some(4.0),
            heading_deg: Some(90.0),
        }
    }

    fn code(raw: v1::Fix) -> RejectCode {
        validate(&raw, NOW, TimeBounds::default()).unwrap_err().code
    }

    #[test]
    fn a_good_fix_converts_with_unknowns_as_none() {
        let unset = v1::Fix {
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
            ..wire()
        };
        let old_sentinels = v1::Fix {
            accuracy_m: Some(0.0),
            speed_mps: Some(-1.0),
            heading_deg: Some(-1.0),
            ..wire()
        };
        for raw in [&unset, &old_sentinels] {
            let fix = validate(raw, NOW, TimeBounds::default()).unwrap();
            assert!((fix.pos.lat - 62.59).abs() < 1e-7);
            assert_eq!(
                (fix.accuracy_m, fix.speed_mps, fix.heading_deg),
                (None, None, None)
            );
            // Unknowns go back on the wire unset, never as a sentinel.
            assert_eq!(fix.to_proto(), unset);
        }
        let fix = validate(&wire(), NOW, TimeBounds::default()).unwrap();
        assert_eq!(
            (fix.accuracy_m, fix.speed_mps, fix.heading_deg),
            (Some(8.0), Some(4.0), Some(90.0))
        );
        assert_eq!(fix.to_proto(), wire());
    }

    #[test]
    fn every_out_of_range_field_has_its_code() {
        assert_eq!(
            code(v1::Fix {
                lat_e7: 900_000_001,
                ..wire()
            }),
            RejectCode::LatOutOfRange
        );
        assert_eq!(
            code(v1::Fix {
                lon_e7: -1_800_000_001,
                ..wire()
            }),
            RejectCode::LonOutOfRange
        );
        assert_eq!(
            code(v1::Fix {
                accuracy_m: Some(-1.0),
                ..wire()
            }),
            RejectCode::BadAccuracy
        );
        assert_eq!(
            code(v1::Fix {
                accuracy_m: Some(f32::NAN),
                ..wire()
            }),
            RejectCode::BadAccuracy
        );
        assert_eq!(
            code(v1::Fix {
                accuracy_m: Some(f32::INFINITY),
                ..wire()
            }),
            RejectCode::BadAccuracy
        );
        assert_eq!(
            code(v1::Fix {
                speed_mps: Some(f32::NAN),
                ..wire()
            }),
            RejectCode::BadSpeed
        );
        assert_eq!(
            code(v1::Fix {
                speed_mps: Some(1000.0),
                ..wire()
            }),
            RejectCode::BadSpeed
        );
        assert_eq!(
            code(v1::Fix {
                heading_deg: Some(360.0),
                ..wire()
            }),
            RejectCode::BadHeading
        );
        assert_eq!(
            code(v1::Fix {
                heading_deg: Some(f32::INFINITY),
                ..wire()
            }),
            RejectCode::BadHeading
        );
        assert_eq!(
            code(v1::Fix {
                time_ms: NOW + 61_000,
                ..wire()
            }),
            RejectCode::InFuture
        );
        assert_eq!(
            code(v1::Fix {
                time_ms: NOW - 25 * 3600 * 1000,
                ..wire()
            }),
            RejectCode::TooOld
        );
    }

    #[test]
    fn time_bounds_are_inclusive_and_configurable() {
        assert!(validate(
            &v1::Fix {
                time_ms: NOW + 60_000,
                ..wire()
            },
            NOW,
            TimeBounds::default()
        )
        .is_ok());
        assert!(validate(
            &v1::Fix {
                time_ms: NOW - 24 * 3600 * 1000,
                ..wire()
            },
            NOW,
            TimeBounds::default()
        )
        .is_ok());
        let tight = TimeBounds {
            max_age_ms: 1000,
            max_future_ms: 0,
        };
        assert_eq!(
            validate(
                &v1::Fix {
                    time_ms: NOW - 1001,
                    ..wire()
                },
                NOW,
                tight
            )
            .unwrap_err()
            .code,
            RejectCode::TooOld
        );
    }

    #[test]
    fn distance_matches_a_known_pair() {
        // Paris (Notre-Dame) to London (St Paul's) is about 340 km.
        let d = LatLon::new(48.853, 2.3499).distance_m(LatLon::new(51.5138, -0.0984));
        assert!((d - 341_000.0).abs() < 3_000.0, "{d}");
    }
}
