//! What the REST handlers share: the app state extractor, parsing ids and coordinates into JSON
//! errors.

use std::sync::Arc;

use actix_web::web;
use trackline_core::{CourierId, LatLon, OrderId};

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
