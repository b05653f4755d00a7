//! The trackline v1 wire contract (`proto/trackline/v1/*.proto`), shared by the server and the tools.

/// Messages of package `trackline.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/trackline.v1.rs"));
}

pub use prost::Message;

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
                accuracy_m: 5.0,
                speed_mps: 3.5,
                heading_deg: 90.0,
            }],
        };
        let bytes = frame.encode_to_vec();
        assert_eq!(v1::CourierFrame::decode(bytes.as_slice()).unwrap(), frame);
    }
}
