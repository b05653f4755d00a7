//! The REST contract of `/v1` (PROTOCOL.md): the request and answer types of every endpoint,
//! written once and used by the server to answer, by trackctl and the tests to ask.
//!
//! Requests refuse unknown fields (a misspelt field is a 400, not silently ignored); answers
//! accept unknown fields, so that an older client keeps working with a newer server. Optional
//! request fields are left out when unset, as a hand-written request would.
//!
//! Each type also describes itself to the server's OpenAPI document (`GET /openapi.json`):
//! bodies and answers as schemas, queries as parameters, with the ranges the server enforces, so
//! the document is derived from the very types the server answers with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trackline_core::fix::{Fix, LatLon};
use trackline_core::order::{ClockAdjustments, OrderStatus, OrderView, StatusChange};
pub use trackline_core::stops::PlanStop;
use trackline_core::{CourierId, OrderId};
use utoipa::{IntoParams, ToSchema};

pub mod webhooks;
pub use webhooks::*;

/// One point of a planned route in the OpenAPI document: `[lat, lon]` in degrees (the bodies
/// carry it as `[f64; 2]`, which has no schema of its own).
pub enum RoutePoint {}

impl utoipa::PartialSchema for RoutePoint {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ArrayItems, ObjectBuilder, Type};
        let degrees = |max: f64| {
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(-max))
                .maximum(Some(max))
                .build()
        };
        ArrayBuilder::new()
            .prefix_items([degrees(90.0), degrees(180.0)])
            .items(ArrayItems::False)
            .min_items(Some(2))
            .max_items(Some(2))
            .into()
    }
}

impl ToSchema for RoutePoint {}

/// A position in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Point {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
}

impl From<LatLon> for Point {
    fn from(p: LatLon) -> Self {
        Point {
            lat: p.lat,
            lon: p.lon,
        }
    }
}

/// The destination of `POST /v1/orders`: a position and, optionally, the handover there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
    /// How long the handover at the door takes, seconds (0 to 3600): what it costs the drops
    /// the courier makes after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3600)]
    pub dwell_s: Option<f64>,
}

impl From<Point> for Destination {
    fn from(p: Point) -> Self {
        Destination {
            lat: p.lat,
            lon: p.lon,
            dwell_s: None,
        }
    }
}

impl From<LatLon> for Destination {
    fn from(p: LatLon) -> Self {
        Point::from(p).into()
    }
}

/// Where the courier collects the order before riding to its destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PickupRequest {
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
    /// When the order is expected to be ready (unix ms; from 2000 to a day ahead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 946_684_800_000_i64)]
    pub ready_at_ms: Option<i64>,
    /// How long the handover takes, seconds (0 to 3600; the server's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3600)]
    pub dwell_s: Option<f64>,
    /// The planned route to the pickup, `[[lat, lon], ...]` (2 to 20,000 points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RoutePoint>>, min_items = 2, max_items = 20_000)]
    pub route: Option<Vec<[f64; 2]>>,
}

impl PickupRequest {
    /// The pickup as an order stores it (no checks: for what the server has accepted already).
    pub fn to_pickup(&self) -> trackline_core::stops::Pickup {
        trackline_core::stops::Pickup {
            at: LatLon::new(self.lat, self.lon),
            ready_at_ms: self.ready_at_ms,
            dwell_s: self.dwell_s,
            route: self.route.as_ref().map(|route| {
                route
                    .iter()
                    .map(|[lat, lon]| LatLon::new(*lat, *lon))
                    .collect()
            }),
        }
    }
}

impl From<&trackline_core::stops::Pickup> for PickupRequest {
    fn from(pickup: &trackline_core::stops::Pickup) -> Self {
        PickupRequest {
            lat: pickup.at.lat,
            lon: pickup.at.lon,
            ready_at_ms: pickup.ready_at_ms,
            dwell_s: pickup.dwell_s,
            route: pickup
                .route
                .as_ref()
                .map(|route| route.iter().map(|p| [p.lat, p.lon]).collect()),
        }
    }
}

/// `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    #[schema(value_type = OrderId)]
    pub order_id: String,
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<CourierId>)]
    pub courier_id: Option<String>,
    /// The planned route, `[[lat, lon], ...]` (2 to 20,000 points); from the pickup when there
    /// is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<RoutePoint>>, min_items = 2, max_items = 20_000)]
    pub route: Option<Vec<[f64; 2]>>,
    /// When the customer was promised the delivery (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_at_ms: Option<i64>,
    /// Where the courier collects the order first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup: Option<PickupRequest>,
}

/// The answer of `POST /v1/orders` (201): the order and how its customer watches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub watch_token: String,
    /// The live map page, `{public_url}/track/{id}?token=...`.
    pub watch_url: String,
}

/// `PUT /v1/couriers/{id}/plan`, and the answer of it and of `GET`: the order in which the
/// courier visits the stops of its orders. A plan may leave stops out (an empty one names none):
/// they follow in the order of assignment, each pickup before its dropoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CourierPlan {
    pub stops: Vec<PlanStop>,
}

/// `POST /v1/orders/{id}/assign`; the answer is the order's [`OrderView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignCourier {
    #[schema(value_type = CourierId)]
    pub courier_id: String,
}

/// `POST /v1/orders/{id}/status`; the answer is the order's [`OrderView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeStatus {
    pub status: OrderStatus,
}

/// The answer of `GET /v1/orders/{id}`: the order's state and planned route; for an ops token
/// also its status log and the counts of its courier's refused fixes (absent for other callers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderDetail {
    #[serde(flatten)]
    pub state: OrderView,
    /// `[[lat, lon], ...]`; null when the order has no planned route.
    #[serde(default)]
    #[schema(value_type = Option<Vec<RoutePoint>>, required = true)]
    pub route: Option<Vec<[f64; 2]>>,
    /// Refused fixes by reject code (they are not stored, so only counted). Ops only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<BTreeMap<String, u64>>,
    /// Every status the order has had and since when, oldest first. Ops only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_log: Option<Vec<StatusChange>>,
    /// The courier's fixes whose times were corrected for a device clock that was off, and the
    /// offsets applied (device time = stored time - offset). Ops only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockAdjustments>,
    /// The pickup as the order was created with it (absent without one). Ops only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup: Option<PickupRequest>,
}

impl OrderDetail {
    /// The planned route as positions.
    pub fn route_points(&self) -> Option<Vec<LatLon>> {
        self.route.as_ref().map(|route| {
            route
                .iter()
                .map(|[lat, lon]| LatLon::new(*lat, *lon))
                .collect()
        })
    }
}

/// The query of `GET /v1/orders`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListOrders {
    /// `active` (default), `ended` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^(active|ended|all)$")]
    pub status: Option<String>,
    /// At most this many (default 100, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<usize>,
}

/// The answer of `GET /v1/orders`: most recently updated first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderList {
    pub orders: Vec<OrderView>,
}

/// The query of `GET /v1/orders/{id}/history`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// `json` (default), `geojson` or `gpx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^(json|geojson|gpx)$")]
    pub format: Option<String>,
    /// Only fixes at or after this device time (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<i64>,
    /// Only fixes at or before this device time (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<i64>,
}

/// The answer of `GET /v1/orders/{id}/history?format=json`: the stored fixes in time order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub order_id: OrderId,
    pub fixes: Vec<HistoryFix>,
}

impl History {
    pub fn new(order_id: OrderId, fixes: &[Fix]) -> Self {
        History {
            order_id,
            fixes: fixes.iter().map(HistoryFix::from).collect(),
        }
    }

    pub fn into_fixes(self) -> Vec<Fix> {
        self.fixes.into_iter().map(Fix::from).collect()
    }
}

/// The answer of `GET /v1/orders/{id}/history?format=geojson` in the OpenAPI document: a
/// FeatureCollection (RFC 7946) whose one Feature is the LineString of the fixes (`[lon, lat]`),
/// with `times_ms` and `seqs` in its properties. The server writes it with the geojson crate.
pub enum GeoJsonHistory {}

impl utoipa::PartialSchema for GeoJsonHistory {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let named = |name: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([name]))
        };
        let feature = ObjectBuilder::new()
            .property("type", named("Feature"))
            .required("type")
            .property("geometry", ObjectBuilder::new())
            .required("geometry")
            .property("properties", ObjectBuilder::new());
        ObjectBuilder::new()
            .property("type", named("FeatureCollection"))
            .required("type")
            .property("features", ArrayBuilder::new().items(feature))
            .required("features")
            .into()
    }
}

impl ToSchema for GeoJsonHistory {}

/// One stored fix; unknown accuracy, speed and heading are null.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryFix {
    pub seq: u64,
    pub time_ms: i64,
    pub lat: f64,
    pub lon: f64,
    #[schema(required = true)]
    pub accuracy_m: Option<f32>,
    #[schema(required = true)]
    pub speed_mps: Option<f32>,
    #[schema(required = true)]
    pub heading_deg: Option<f32>,
}

impl From<&Fix> for HistoryFix {
    fn from(fix: &Fix) -> Self {
        HistoryFix {
            seq: fix.seq,
            time_ms: fix.time_ms,
            lat: fix.pos.lat,
            lon: fix.pos.lon,
            accuracy_m: fix.accuracy_m,
            speed_mps: fix.speed_mps,
            heading_deg: fix.heading_deg,
        }
    }
}

impl From<HistoryFix> for Fix {
    fn from(f: HistoryFix) -> Self {
        Fix {
            seq: f.seq,
            time_ms: f.time_ms,
            pos: LatLon::new(f.lat, f.lon),
            accuracy_m: f.accuracy_m,
            speed_mps: f.speed_mps,
            heading_deg: f.heading_deg,
        }
    }
}

/// The query of `GET /v1/couriers/nearby`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NearbyQuery {
    #[param(minimum = -90, maximum = 90)]
    pub lat: f64,
    #[param(minimum = -180, maximum = 180)]
    pub lon: f64,
    /// Metres (default 1,000, at most 100,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(exclusive_minimum = 0, maximum = 100_000)]
    pub radius_m: Option<f64>,
    /// At most this many (default 10, at most 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The answer of `GET /v1/couriers/nearby`: nearest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NearbyCouriers {
    pub couriers: Vec<NearbyCourier>,
}

/// A live courier and how far it is from the asked centre.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NearbyCourier {
    pub courier_id: CourierId,
    pub lat: f64,
    pub lon: f64,
    pub distance_m: f64,
    /// Device time of the courier's last live fix (unix ms).
    pub time_ms: i64,
}

/// The query of `GET /v1/couriers/within`: a box; `west > east` crosses the antimeridian.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WithinQuery {
    /// Not north of `north`.
    #[param(minimum = -90, maximum = 90)]
    pub south: f64,
    #[param(minimum = -180, maximum = 180)]
    pub west: f64,
    #[param(minimum = -90, maximum = 90)]
    pub north: f64,
    #[param(minimum = -180, maximum = 180)]
    pub east: f64,
    /// At most this many (default 500, at most 5,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 5000)]
    pub limit: Option<usize>,
}

/// The answer of `GET /v1/couriers/within`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CouriersWithin {
    pub couriers: Vec<CourierPosition>,
    /// True when there were more couriers in the box than the limit.
    pub truncated: bool,
}

/// A live courier's last position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CourierPosition {
    pub courier_id: CourierId,
    pub lat: f64,
    pub lon: f64,
    pub time_ms: i64,
}

/// `POST /v1/tokens`: `role` is `ops`, `courier` or `watch`; `subject` the courier or order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    #[schema(pattern = "^(ops|courier|watch)$")]
    pub role: String,
    /// The courier id of a courier token, the order id of a watch token; none for ops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<OrderId>)]
    pub subject: Option<String>,
    /// Lifetime in seconds (default 24 h, at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2_592_000)]
    pub ttl_s: Option<i64>,
}

/// The answer of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub token: String,
}

/// `POST /v1/admin/purge`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Purge fixes older than this (unix ms); default: now minus the retention period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<i64>,
}

/// The answer of `POST /v1/admin/purge`: what went (in broker mode, on every node together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Purged {
    pub before_ms: i64,
    pub fixes: usize,
    pub orders: usize,
}

/// The resume part of the query of `GET /v1/orders/{id}/watch`: both or neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// The offset of the last update received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The epoch of the last update received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The answer of `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// Why the node is not ready, when it is for another reason than shutting down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    pub fn of(status: HealthStatus) -> Self {
        Health {
            status,
            reason: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// `/healthz`: the process answers.
    Ok,
    /// `/readyz`: takes traffic.
    Ready,
    /// `/readyz` (503): draining after SIGTERM.
    ShuttingDown,
    /// `/readyz` (503): the history store cannot write (a full disk, an I/O error); reads and
    /// watchers are still served, new fixes refused. Clears by itself once writes succeed.
    StoreFailing,
    /// `/readyz` (503), broker mode: the node lost its broker connection, so it can neither
    /// reach the orders other nodes own nor serve theirs. Clears once it reconnects.
    BrokerLost,
}

/// Every failed call's body: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorAnswer {
    pub error: ErrorBody,
}

/// A stable machine-readable `code` (PROTOCOL.md lists them) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorAnswer {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorAnswer {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_refuse_unknown_fields_and_leave_unset_ones_out() {
        let misspelt =
            json!({"order_id": "o-1", "destination": {"lat": 1.0, "lon": 2.0}, "courier": "c-1"});
        let error = serde_json::from_value::<CreateOrder>(misspelt).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `courier`"),
            "{error}"
        );
        let minimal = CreateOrder {
            order_id: "o-1".into(),
            destination: Point { lat: 1.0, lon: 2.0 }.into(),
            courier_id: None,
            route: None,
            promised_at_ms: None,
            pickup: None,
        };
        assert_eq!(
            serde_json::to_value(&minimal).unwrap(),
            json!({"order_id": "o-1", "destination": {"lat": 1.0, "lon": 2.0}})
        );
        let full = CreateOrder {
            order_id: "o1".into(),
            destination: LatLon::new(45.0, 13.0).into(),
            courier_id: Some("c1".into()),
            route: Some(vec![[45.1, 13.1], [45.0, 13.0]]),
            promised_at_ms: None,
            pickup: None,
        };
        assert_eq!(
            serde_json::to_value(&full).unwrap(),
            json!({"order_id": "o1", "destination": {"lat": 45.0, "lon": 13.0}, "courier_id": "c1",
                   "route": [[45.1, 13.1], [45.0, 13.0]]})
        );
        assert!(serde_json::from_value::<PurgeRequest>(json!({"before": 1})).is_err());
        assert_eq!(
            serde_json::to_value(PurgeRequest::default()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn the_ops_only_fields_of_an_order_are_absent_for_others_and_present_for_ops() {
        let view: OrderView = serde_json::from_value(json!({
            "order_id": "o-1", "status": "assigned", "courier_id": "c-1",
            "destination": {"lat": 1.0, "lon": 2.0}, "position": null, "eta": null,
            "offset": 3, "epoch": "e", "updated_at_ms": 5
        }))
        .unwrap();
        let mut detail = OrderDetail {
            state: view,
            route: None,
            rejected: None,
            status_log: None,
            clock: None,
            pickup: None,
        };
        let for_watcher = serde_json::to_value(&detail).unwrap();
        assert_eq!(for_watcher["route"], json!(null));
        assert!(for_watcher.get("rejected").is_none());
        assert!(for_watcher.get("status_log").is_none());
        assert!(for_watcher.get("pickup").is_none());
        assert_eq!(for_watcher["order_id"], "o-1");
        detail.rejected = Some(BTreeMap::new());
        detail.status_log = Some(Vec::new());
        let for_ops = serde_json::to_value(&detail).unwrap();
        assert_eq!(for_ops["rejected"], json!({}));
        assert_eq!(for_ops["status_log"], json!([]));
        let back: OrderDetail = serde_json::from_value(for_ops).unwrap();
        assert_eq!(back, detail);
    }

    #[test]
    fn health_and_errors_have_the_documented_shape() {
        let ready = Health::of(HealthStatus::ShuttingDown);
        assert_eq!(
            serde_json::to_value(ready).unwrap(),
            json!({"status": "shutting_down"})
        );
        assert_eq!(
            serde_json::to_value(ErrorAnswer::new("bad_json", "no")).unwrap(),
            json!({"error": {"code": "bad_json", "message": "no"}})
        );
    }

    #[test]
    fn a_history_fix_carries_every_field_of_a_fix_both_ways() {
        let fix = Fix {
            seq: 7,
            time_ms: 1_608_272_150_125,
            pos: LatLon::new(45.2735189, 13.71421),
            accuracy_m: Some(4.5),
            speed_mps: None,
            heading_deg: Some(90.0),
        };
        let history = History::new(OrderId::new("o-1").unwrap(), std::slice::from_ref(&fix));
        let text = serde_json::to_value(&history).unwrap();
        assert_eq!(text["fixes"][0]["speed_mps"], json!(null));
        assert_eq!(text["fixes"][0]["lat"], json!(45.2735189));
        let back: History = serde_json::from_value(text).unwrap();
        assert_eq!(back.into_fixes(), vec![fix]);
    }
}
