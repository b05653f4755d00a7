//! JSON request bodies, through what the server's handlers do with them.
//!
//! The handlers' body structs are private to the server (api.rs); what they run is public:
//! serde_json parsing, the id checks (`OrderId`, `CourierId`), `OrderStatus` (the body of
//! `/status`) and its transitions, coordinates (`LatLon::is_valid`, for destinations and route
//! points), `Role::from_parts` (the body of `POST /v1/tokens`), and the stored `OrderRecord`
//! (what the store decodes at start-up). This target feeds arbitrary bytes to each, and the
//! fields of any JSON object to the checks, the way the handlers read them. The actix JSON
//! extractor in front (size limit, content type, unknown fields) is exercised by the hostile
//! suite against the real server, not here.
//!
//! Checked beyond "no panic": an id is accepted exactly when it is 1-64 characters of
//! `A-Za-z0-9_.-` and round-trips through JSON; a status round-trips and its transitions never
//! leave a final status; an accepted coordinate is finite and in range; a decoded `OrderRecord`
//! re-encodes to an equal record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trackline_core::auth::Role;
use trackline_core::order::{OrderRecord, OrderStatus};
use trackline_core::{CourierId, LatLon, OrderId};

const STATUSES: [OrderStatus; 6] = [
    OrderStatus::Created,
    OrderStatus::Assigned,
    OrderStatus::PickedUp,
    OrderStatus::Arriving,
    OrderStatus::Delivered,
    OrderStatus::Cancelled,
];

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_id(s: &str) {
    let order = OrderId::new(s);
    let courier = CourierId::new(s);
    assert_eq!(order.is_ok(), is_id(s), "order id {s:?}: {order:?}");
    assert_eq!(courier.is_ok(), is_id(s), "courier id {s:?}: {courier:?}");
    if let Ok(id) = order {
        assert_eq!(id.as_str(), s);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<OrderId>(&json).unwrap(), id);
    }
    for name in ["courier", "watch"] {
        assert_eq!(Role::from_parts(name, Some(s)).is_ok(), is_id(s));
    }
}

fn check_point(lat: &Value, lon: &Value) {
    if let (Some(lat), Some(lon)) = (lat.as_f64(), lon.as_f64()) {
        let p = LatLon::new(lat, lon);
        if p.is_valid() {
            assert!(lat.is_finite() && lon.is_finite());
            assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
            let d = p.distance_m(LatLon::new(0.0, 0.0));
            assert!(d.is_finite() && d >= 0.0);
        }
    }
}

fn check_status(value: &Value) {
    if let Ok(status) = serde_json::from_value::<OrderStatus>(value.clone()) {
        let back = serde_json::to_value(status).unwrap();
        assert_eq!(&back, value);
        for from in STATUSES {
            if let Ok(to) = from.request(status) {
                assert_eq!(to, status);
                assert!(!from.is_final() || from == to, "{from:?} -> {to:?}");
            }
        }
    }
}

/// Reads an object's fields the way the handlers do.
fn check_object(map: &serde_json::Map<String, Value>) {
    for key in ["order_id", "courier_id", "subject"] {
        if let Some(Value::String(s)) = map.get(key) {
            check_id(s);
        }
    }
    if let Some(Value::Object(p)) = map.get("destination") {
        check_point(
            p.get("lat").unwrap_or(&Value::Null),
            p.get("lon").unwrap_or(&Value::Null),
        );
    }
    if let Some(Value::Array(route)) = map.get("route") {
        for point in route.iter().take(64) {
            if let Value::Array(pair) = point {
                if let [lat, lon] = pair.as_slice() {
                    check_point(lat, lon);
                }
            }
        }
    }
    if let Some(status) = map.get("status") {
        check_status(status);
    }
    if let Some(Value::String(role)) = map.get("role") {
        let subject = map.get("subject").and_then(Value::as_str);
        if let Ok(parsed) = Role::from_parts(role, subject) {
            assert_eq!(parsed.name(), role);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_id(text);
    }
    let _ = serde_json::from_slice::<OrderStatus>(data);
    let _ = serde_json::from_slice::<LatLon>(data);
    if let Ok(record) = serde_json::from_slice::<OrderRecord>(data) {
        let again = serde_json::to_vec(&record).unwrap();
        let back: OrderRecord = serde_json::from_slice(&again).expect("a stored record re-reads");
        assert_eq!(serde_json::to_vec(&back).unwrap(), again, "{record:?}");
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match &value {
        Value::Object(map) => check_object(map),
        Value::Array(items) => items.iter().take(64).for_each(|item| {
            if let Value::Object(map) = item {
                check_object(map);
            }
        }),
        other => check_status(other),
    }
});
