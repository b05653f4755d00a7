//! `/v1/couriers/nearby`: the live couriers nearest a point.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{lat_lon, App};
use crate::live::NearbyQuery;

/// The widest nearby search, metres.
const MAX_NEARBY_RADIUS_M: f64 = 100_000.0;
const MAX_NEARBY_LIMIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NearbyParams {
    lat: f64,
    lon: f64,
    radius_m: Option<f64>,
    limit: Option<usize>,
}

pub async fn nearby(
    caller: Caller,
    app: App,
    query: web::Query<NearbyParams>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let center = lat_lon(query.lat, query.lon, "center")?;
    let radius_m = query.radius_m.unwrap_or(1000.0);
    if !(radius_m.is_finite() && radius_m > 0.0 && radius_m <= MAX_NEARBY_RADIUS_M) {
        return Err(ApiError::BadRequest(
            "bad_radius",
            format!("radius_m must be in (0, {MAX_NEARBY_RADIUS_M}]"),
        ));
    }
    let limit = query.limit.unwrap_or(10);
    if limit == 0 || limit > MAX_NEARBY_LIMIT {
        return Err(ApiError::BadRequest(
            "bad_limit",
            format!("limit must be in [1, {MAX_NEARBY_LIMIT}]"),
        ));
    }
    let found = app
        .live_index
        .send(NearbyQuery {
            center,
            radius_m,
            limit,
        })
        .await?;
    let couriers: Vec<_> = found
        .iter()
        .map(|n| json!({"courier_id": n.courier_id, "lat": n.pos.lat, "lon": n.pos.lon, "distance_m": n.distance_m, "time_ms": n.time_ms}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"couriers": couriers})))
}
