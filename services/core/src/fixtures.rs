//! Sample data for tests (feature `test-fixtures`): the same few fixes wherever an export or a
//! trip is checked, so that their expected outputs agree.

use crate::fix::Fix;
use crate::{LatLon, OrderId};

/// Two fixes 10 s apart: the first with accuracy and heading, the second with speed only.
pub fn two_fixes() -> Vec<Fix> {
    vec![
        Fix {
            seq: 7,
            time_ms: 1_608_272_150_125,
            pos: LatLon::new(45.273_518_9, 13.714_21),
            accuracy_m: Some(4.5),
            speed_mps: None,
            heading_deg: Some(90.0),
        },
        Fix {
            seq: 8,
            time_ms: 1_608_272_160_000,
            pos: LatLon::new(45.273_413_3, 13.714_188_5),
            accuracy_m: None,
            speed_mps: Some(1.25),
            heading_deg: None,
        },
    ]
}

/// The order the sample fixes belong to.
pub fn order() -> OrderId {
    OrderId::new("o-1").expect("a valid order id")
}
