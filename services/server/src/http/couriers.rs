//! `/v1/couriers`: the live couriers nearest a point, and each courier's plan of stops.

use actix_web::{web, HttpResponse};
use trackline_rest::{CourierPlan, ErrorAnswer, NearbyCourier, NearbyCouriers};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{courier_id, lat_lon, App};
use trackline_core::CourierId;

use crate::live::NearbyQuery;
use crate::orders::registry::plans::{GetPlan, SetPlan, SetPlanError};

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

/// Sets the order in which the courier visits the stops of the orders it carries.
#[utoipa::path(
    put,
    path = "/v1/couriers/{id}/plan",
    tag = "couriers",
    params(("id" = CourierId, Path, description = "the courier id")),
    request_body = CourierPlan,
    responses(
        (status = 200, description = "the effective plan, as `GET` answers it", body = CourierPlan),
        (status = 400, description = "`plan_order_not_carried`, `plan_no_such_stop`, \
                                      `plan_duplicate_stop`, `plan_dropoff_before_pickup`, \
                                      `bad_courier_id`, `bad_json`, `bad_content_type`; the \
                                      plan in place stays",
         body = ErrorAnswer),
        (status = 500, description = "`internal`: the plan could not be stored; the plan in \
                                      place stays", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn set_plan(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    body: web::Json<CourierPlan>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let courier = courier_id(&path)?;
    let stops = body.into_inner().stops;
    let plan = app
        .registry
        .send(SetPlan { courier, stops })
        .await?
        .map_err(|e| match e {
            SetPlanError::Invalid(e) => ApiError::BadRequest(e.code(), e.to_string()),
            SetPlanError::Store(e) => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(CourierPlan { stops: plan }))
}

/// The order in which the courier visits the stops of the orders it carries: the plan set, then
/// the stops it leaves out in the order of assignment.
#[utoipa::path(
    get,
    path = "/v1/couriers/{id}/plan",
    tag = "couriers",
    params(("id" = CourierId, Path, description = "the courier id")),
    responses(
        (status = 200, description = "the effective plan (empty for a courier with no order)",
         body = CourierPlan),
        (status = 400, description = "`bad_courier_id`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn get_plan(
    caller: Caller,
    app: App,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let courier = courier_id(&path)?;
    let stops = app.registry.send(GetPlan { courier }).await?;
    Ok(HttpResponse::Ok().json(CourierPlan { stops }))
}
