//! `/v1/couriers/nearby`: the live couriers nearest a point.

use actix_web::{web, HttpResponse};
use trackline_rest::{ErrorAnswer, NearbyCourier, NearbyCouriers};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{lat_lon, App};
use crate::live::NearbyQuery;

/// The widest nearby search, metres.
const MAX_NEARBY_RADIUS_M: f64 = 100_000.0;
const MAX_NEARBY_LIMIT: usize = 1000;

/// The live couriers within `radius_m` of a point, nearest first.
#[utoipa::path(
    get,
    path = "/v1/couriers/nearby",
    tag = "couriers",
    params(trackline_rest::NearbyQuery),
    responses(
        (status = 200, description = "nearest first", body = NearbyCouriers),
        (status = 400, description = "`bad_coordinates`, `bad_radius`, `bad_limit`, `bad_query`",
         body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn nearby(
    caller: Caller,
    app: App,
    query: web::Query<trackline_rest::NearbyQuery>,
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
    let couriers = found
        .into_iter()
        .map(|n| NearbyCourier {
            courier_id: n.courier_id,
            lat: n.pos.lat,
            lon: n.pos.lon,
            distance_m: n.distance_m,
            time_ms: n.time_ms,
        })
        .collect();
    Ok(HttpResponse::Ok().json(NearbyCouriers { couriers }))
}
