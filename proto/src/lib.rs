//! The trackline v1 wire contract (`proto/trackline/v1/*.proto`), shared by the server and the tools.

/// Messages of package `trackline.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/trackline.v1.rs"));
}

pub use prost::Message;

/// What a [`v1::Fix`] says about the device's own measurements, each `None` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurements {
    pub accuracy_m: Option<f32>,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
}

impl v1::Fix {
    /// The fix's accuracy, speed and heading as its sender meant them: unset is unknown, and so
    /// are the values apps built before these fields were `optional` send for unknown (accuracy
    /// 0, a negative speed or heading). Values that are neither pass through unchanged, out of
    /// range or not, for validation to judge: an infinite or NaN speed is not "unknown" but wrong.
    pub fn measurements(&self) -> Measurements {
        let finite_negative = |x: f32| x.is_finite() && x < 0.0;
        Measurements {
            accuracy_m: self.accuracy_m.filter(|&a| a != 0.0),
            speed_mps: self.speed_mps.filter(|&s| !finite_negative(s)),
            heading_deg: self.heading_deg.filter(|&h| !finite_negative(h)),
        }
    }
}

/// Degrees to the protocol's E7 fixed point, rounded to the nearest unit (about 1 cm).
pub fn to_e7(degrees: f64) -> i32 {
    (degrees * 1e7).round() as i32
}

/// The protocol's E7 fixed point back to degrees.
pub fn from_e7(e7: i32) -> f64 {
    f64::from(e7) / 1e7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e7_round_trips_within_a_centimetre() {
        for deg in [0.0, 62.686135, -33.8688, 179.9999999, -180.0, 13.7142099626] {
            assert!((from_e7(to_e7(deg)) - deg).abs() < 1e-7);
        }
    }

    #[test]
    fn courier_frame_round_trips_through_protobuf() {
        let frame = v1::CourierFrame {
            fixes: vec![v1::Fix {
                seq: 7,
                time_ms: 1_700_000_000_000,
                lat_e7: to_e7(48.8),
                lon_e7: to_e7(2.4),
                accuracy_m: Some(5.0),
                speed_mps: Some(3.5),
                heading_deg: Some(90.0),
            }],
        };
        let bytes = frame.encode_to_vec();
        assert_eq!(v1::CourierFrame::decode(bytes.as_slice()).unwrap(), frame);
    }

    fn fix(accuracy_m: Option<f32>, speed_mps: Option<f32>, heading_deg: Option<f32>) -> v1::Fix {
        v1::Fix {
            seq: 1,
            time_ms: 1_700_000_000_000,
            accuracy_m,
            speed_mps,
            heading_deg,
            ..v1::Fix::default()
        }
    }

    #[test]
    fn unset_and_old_unknown_values_both_read_as_unknown() {
        let unknown = Measurements::default();
        assert_eq!(fix(None, None, None).measurements(), unknown);
        assert_eq!(
            fix(Some(0.0), Some(-1.0), Some(-1.0)).measurements(),
            unknown
        );
        assert_eq!(
            fix(Some(-0.0), Some(-0.5), Some(-360.0)).measurements(),
            unknown
        );
    }

    #[test]
    fn zero_speed_and_north_are_measurements_not_unknowns() {
        let m = fix(Some(3.0), Some(0.0), Some(0.0)).measurements();
        assert_eq!(
            (m.accuracy_m, m.speed_mps, m.heading_deg),
            (Some(3.0), Some(0.0), Some(0.0))
        );
    }

    #[test]
    fn values_that_are_not_sentinels_are_left_for_validation() {
        let m = fix(Some(-1.0), Some(f32::NEG_INFINITY), Some(400.0)).measurements();
        assert_eq!(m.accuracy_m, Some(-1.0));
        assert_eq!(m.speed_mps, Some(f32::NEG_INFINITY));
        assert_eq!(m.heading_deg, Some(400.0));
        assert!(fix(None, Some(f32::NAN), None)
            .measurements()
            .speed_mps
            .is_some_and(f32::is_nan));
    }

    #[test]
    fn a_zero_speed_set_explicitly_reaches_the_wire() {
        // With implicit presence a 0 would be left off the wire and read back as unknown.
        let bytes = v1::CourierFrame {
            fixes: vec![fix(None, Some(0.0), None)],
        }
        .encode_to_vec();
        let decoded = v1::CourierFrame::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.fixes[0].measurements().speed_mps, Some(0.0));
        assert_eq!(decoded.fixes[0].measurements().heading_deg, None);
    }
}
