//! What the REST handlers share: the app state extractor, parsing ids and coordinates into JSON
//! errors, and whether a call about the whole fleet asks the other nodes.

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use trackline_core::{CourierId, LatLon, OrderId};

use crate::cluster::client::Cluster;
use crate::cluster::forward;
use crate::http::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The shared state, as handlers take it.
pub type App = web::Data<Arc<AppState>>;

pub fn order_id(raw: &str) -> ApiResult<OrderId> {
    OrderId::new(raw).map_err(|e| ApiError::BadRequest("bad_order_id", format!("order id: {e}")))
}

pub fn courier_id(raw: &str) -> ApiResult<CourierId> {
    CourierId::new(raw)
        .map_err(|e| ApiError::BadRequest("bad_courier_id", format!("courier id: {e}")))
}

pub fn lat_lon(lat: f64, lon: f64, what: &str) -> ApiResult<LatLon> {
    let p = LatLon::new(lat, lon);
    if p.is_valid() {
        Ok(p)
    } else {
        Err(ApiError::BadRequest(
            "bad_coordinates",
            format!("{what}: ({lat}, {lon}) is not a valid latitude/longitude"),
        ))
    }
}

/// Broker mode: the cluster, when `req` is a call about the whole fleet that this node was asked
/// first (and so asks the others); `None` on one node, and on a node that another one asks.
pub fn fleet_call<'a>(app: &'a AppState, req: &HttpRequest) -> Option<&'a Cluster> {
    app.cluster
        .as_deref()
        .filter(|_| !forward::is_forwarded(req))
}
