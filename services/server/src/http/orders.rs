//! `/v1/orders`: create, list, read, assign, change status, history.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use trackline_core::auth::Role;
use trackline_core::fix::Fix;
use trackline_core::order::{OrderRecord, OrderStatus, OrderView};
use trackline_core::stops::MAX_DWELL_S;
use trackline_core::{now_ms, OrderId};
use trackline_rest::{
    AssignCourier, ChangeStatus, CreateOrder, ErrorAnswer, GeoJsonHistory, History, HistoryQuery,
    ListOrders, OrderCreated, OrderDetail, OrderList, PickupRequest,
};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{courier_id, lat_lon, order_id, App};
use crate::http::history_formats::{self, HistoryFormat};
use crate::orders::errors::OrderError;
use crate::orders::messages::{Assign, GetView, SetStatus};
use crate::orders::registry::{Create, Find};
use crate::state::AppState;

/// The most points a planned route may have.
const MAX_ROUTE_POINTS: usize = 20_000;

/// Creates an order; the answer carries the watch token of its customer.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body = CreateOrder,
    responses(
        (status = 201, description = "created", body = OrderCreated),
        (status = 400, description = "`bad_order_id`, `bad_courier_id`, `bad_coordinates`, \
                                      `bad_route`, `bad_pickup`, `bad_dwell`, `bad_ready_at`, \
                                      `bad_json`, `bad_content_type`",
         body = ErrorAnswer),
        (status = 409, description = "`order_exists`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn create_order(
    caller: Caller,
    app: App,
    body: web::Json<CreateOrder>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let body = body.into_inner();
    let order = order_id(&body.order_id)?;
    let destination = lat_lon(body.destination.lat, body.destination.lon, "destination")?;
    let courier = body.courier_id.as_deref().map(courier_id).transpose()?;
    let route = planned_route(body.route.as_deref(), "bad_route", "route")?;
    let destination_dwell_s = body
        .destination
        .dwell_s
        .map(|d| dwell(d, "destination"))
        .transpose()?;
    let now = now_ms();
    let pickup = body
        .pickup
        .as_ref()
        .map(|p| crate::http::stops::pickup(p, now))
        .transpose()?;
    let mut record = OrderRecord::new(
        order.clone(),
        destination,
        courier,
        route,
        body.promised_at_ms,
        now,
    );
    record.pickup = pickup;
    record.destination_dwell_s = destination_dwell_s;
    if let Some(courier) = &record.courier_id {
        app.topology.link(courier, &order, true).await?;
    }
    let courier = record.courier_id.clone();
    if let Err(error) = app.registry.send(Create(record)).await? {
        if let Some(courier) = &courier {
            let assigned = async { view_of(&app, &order).await.ok()?.courier_id };
            app.topology
                .unlink_unless_assigned(courier, &order, assigned)
                .await;
        }
        return Err(error.into());
    }
    let watch_token = app
        .keys
        .mint(&Role::Watch(order.clone()), app.config.watch_token_ttl_s);
    let base = app
        .config
        .public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    let watch_url = format!("{base}/track/{order}?token={watch_token}");
    Ok(HttpResponse::Created().json(OrderCreated {
        order_id: order,
        watch_token,
        watch_url,
    }))
}

/// A planned route of a request, checked: 2 to [`MAX_ROUTE_POINTS`] valid points (a 400 with
/// `code` otherwise).
pub(crate) fn planned_route(
    points: Option<&[[f64; 2]]>,
    code: &'static str,
    what: &str,
) -> ApiResult<Option<Vec<trackline_core::LatLon>>> {
    let Some(points) = points else {
        return Ok(None);
    };
    if points.len() < 2 || points.len() > MAX_ROUTE_POINTS {
        return Err(ApiError::BadRequest(
            code,
            format!(
                "a {what} has 2 to {MAX_ROUTE_POINTS} points, not {}",
                points.len()
            ),
        ));
    }
    points
        .iter()
        .enumerate()
        .map(|(i, [lat, lon])| lat_lon(*lat, *lon, &format!("{what} point {i}")))
        .collect::<ApiResult<Vec<_>>>()
        .map(Some)
}

/// A handover time of a request, checked: 0 to [`MAX_DWELL_S`] seconds.
pub(crate) fn dwell(seconds: f64, what: &str) -> ApiResult<f64> {
    if seconds.is_finite() && (0.0..=MAX_DWELL_S).contains(&seconds) {
        Ok(seconds)
    } else {
        Err(ApiError::BadRequest(
            "bad_dwell",
            format!("{what}: dwell_s is 0 to {MAX_DWELL_S} seconds, not {seconds}"),
        ))
    }
}

/// The durable view of an order: from its actor when active, else from the store.
pub async fn view_of(app: &AppState, order: &OrderId) -> ApiResult<OrderView> {
    if let Some(actor) = app.registry.send(Find::here(order.clone())).await? {
        return Ok(actor.send(GetView).await?);
    }
    let store = app.store.clone();
    let id = order.clone();
    let record = web::block(move || store.order(&id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    record
        .map(|r| r.view())
        .ok_or_else(|| ApiError::order_not_found(order.as_str()))
}

/// What a watch token may see: no live position once the order has ended.
pub fn for_caller(mut view: OrderView, caller: &Caller) -> OrderView {
    if matches!(caller.role, Role::Watch(_)) && view.status.is_final() {
        view.position = None;
        view.eta = None;
    }
    view
}

/// The order's state and planned route; for ops also its status log, refused fixes and clock.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    params(("id" = OrderId, Path, description = "the order id")),
    responses(
        (status = 200, description = "the order", body = OrderDetail),
        (status = 400, description = "`bad_order_id`", body = ErrorAnswer),
        (status = 404, description = "`not_found`: no such order", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn get_order(
    caller: Caller,
    app: App,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let order = order_id(&path)?;
    caller.require_reader_of(&order)?;
    let view = view_of(&app, &order).await?;
    let store = app.store.clone();
    let record = web::block(move || store.order(&order))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let route = record
        .as_ref()
        .and_then(|r| r.route.as_ref())
        .map(|route| route.iter().map(|p| [p.lat, p.lon]).collect::<Vec<_>>());
    let mut detail = OrderDetail {
        state: for_caller(view, &caller),
        route,
        rejected: None,
        status_log: None,
        clock: None,
        pickup: None,
    };
    if let (Role::Ops, Some(record)) = (&caller.role, record) {
        detail.pickup = record.pickup.as_ref().map(PickupRequest::from);
        detail.rejected = Some(record.rejected);
        detail.status_log = Some(record.status_log);
        detail.clock = Some(record.clock);
    }
    Ok(HttpResponse::Ok().json(detail))
}

/// The most orders one listing returns.
const MAX_LIST_LIMIT: usize = 10_000;

/// `GET /v1/orders`: orders, most recently updated first. In broker mode each node keeps the
/// orders it owns, so the node asked gathers the lists of all (the same query on each) and
/// merges them; a node that does not answer makes the call fail (503) rather than the list
/// silently short.
#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    params(ListOrders),
    responses(
        (status = 200, description = "the orders", body = OrderList),
        (status = 400, description = "`bad_query`, `bad_limit`", body = ErrorAnswer),
        (status = 503, description = "`owner_unavailable` (broker mode): a node did not answer",
         body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn list_orders(
    caller: Caller,
    app: App,
    req: HttpRequest,
    query: web::Query<ListOrders>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let wanted: fn(OrderStatus) -> bool = match query.status.as_deref().unwrap_or("active") {
        "active" => |s| !s.is_final(),
        "ended" => OrderStatus::is_final,
        "all" => |_| true,
        other => {
            return Err(ApiError::BadRequest(
                "bad_query",
                format!("status {other:?}: expected active, ended or all"),
            ))
        }
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(ApiError::BadRequest(
            "bad_limit",
            format!("limit must be in [1, {MAX_LIST_LIMIT}]"),
        ));
    }
    let store = app.store.clone();
    let mut views = web::block(
        move || -> Result<Vec<OrderView>, trackline_core::history::StoreError> {
            let mut views = Vec::new();
            for record in store.all_orders() {
                let record = record?;
                if wanted(record.status) {
                    views.push(record.view());
                }
            }
            Ok(views)
        },
    )
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    match app.topology.ask_others::<OrderList>(&req, Bytes::new).await {
        Ok(others) => views.extend(others.into_iter().flat_map(|listed| listed.orders)),
        Err(response) => return Ok(response),
    }
    views.sort_by_key(|v| std::cmp::Reverse(v.updated_at_ms));
    views.truncate(limit);
    Ok(HttpResponse::Ok().json(OrderList { orders: views }))
}

async fn active_order(
    app: &AppState,
    order: &OrderId,
) -> ApiResult<actix::Addr<crate::orders::order_actor::OrderActor>> {
    if let Some(actor) = app.registry.send(Find::here(order.clone())).await? {
        return Ok(actor);
    }
    // Not active: say whether it ended or never existed.
    let view = view_of(app, order).await?;
    Err(OrderError::Closed {
        order: order.clone(),
        status: view.status,
    }
    .into())
}

/// Assigns (or reassigns) the order's courier.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/assign",
    tag = "orders",
    params(("id" = OrderId, Path, description = "the order id")),
    request_body = AssignCourier,
    responses(
        (status = 200, description = "the order's new state", body = OrderView),
        (status = 400, description = "`bad_order_id`, `bad_courier_id`, `bad_json`, \
                                      `bad_content_type`",
         body = ErrorAnswer),
        (status = 404, description = "`not_found`: no such order", body = ErrorAnswer),
        (status = 409, description = "`order_closed`: delivered or cancelled", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn assign(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    body: web::Json<AssignCourier>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let order = order_id(&path)?;
    let courier = courier_id(&body.courier_id)?;
    let actor = active_order(&app, &order).await?;
    app.topology.link(&courier, &order, true).await?;
    let view = actor.send(Assign { courier }).await??;
    Ok(HttpResponse::Ok().json(view))
}

/// Moves the order on (ops, or the courier it is assigned to).
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/status",
    tag = "orders",
    params(("id" = OrderId, Path, description = "the order id")),
    request_body = ChangeStatus,
    responses(
        (status = 200, description = "the order's new state", body = OrderView),
        (status = 400, description = "`bad_order_id`, `bad_json`, `bad_content_type`",
         body = ErrorAnswer),
        (status = 404, description = "`not_found`: no such order", body = ErrorAnswer),
        (status = 409, description = "`illegal_transition`, `order_closed`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn set_status(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    body: web::Json<ChangeStatus>,
) -> ApiResult<HttpResponse> {
    let order = order_id(&path)?;
    let by_courier = match &caller.role {
        Role::Ops => None,
        Role::Courier(id) => Some(id.clone()),
        Role::Watch(_) => {
            return Err(ApiError::Forbidden(
                "a watch token cannot change an order".into(),
            ))
        }
    };
    if let Some(courier) = &by_courier {
        // A courier learns nothing of orders not its own, not even whether they exist.
        let not_yours = || {
            ApiError::Forbidden(format!(
                "order {order} is not assigned to courier {courier}"
            ))
        };
        if app
            .registry
            .send(Find::here(order.clone()))
            .await?
            .is_none()
        {
            let view = view_of(&app, &order).await.map_err(|_| not_yours())?;
            if view.courier_id.as_ref() != Some(courier) {
                return Err(not_yours());
            }
        }
    }
    let view = active_order(&app, &order)
        .await?
        .send(SetStatus {
            status: body.status,
            by_courier,
        })
        .await??;
    Ok(HttpResponse::Ok().json(view))
}

/// Every stored fix of the order in `[from_ms, to_ms]`, oldest first.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/history",
    tag = "orders",
    params(("id" = OrderId, Path, description = "the order id"), HistoryQuery),
    responses(
        (status = 200, description = "the fixes: JSON, GeoJSON (a FeatureCollection of one \
                                      LineString) or GPX 1.1, as `format` asks",
         content(
             (History = "application/json"),
             (GeoJsonHistory = "application/geo+json"),
             (String = "application/gpx+xml"),
         )),
        (status = 400, description = "`bad_order_id`, `bad_format`, `bad_query`", body = ErrorAnswer),
        (status = 404, description = "`not_found`: no such order", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn history(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let order = order_id(&path)?;
    let format = HistoryFormat::parse(query.format.as_deref())?;
    let (from_ms, to_ms) = (
        query.from_ms.unwrap_or(i64::MIN),
        query.to_ms.unwrap_or(i64::MAX),
    );
    let store = app.store.clone();
    let id = order.clone();
    let (exists, fixes) = web::block(
        move || -> Result<(bool, Vec<Fix>), trackline_core::history::StoreError> {
            Ok((
                store.order(&id)?.is_some(),
                store.fixes(&id, from_ms, to_ms)?,
            ))
        },
    )
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    if !exists {
        return Err(ApiError::order_not_found(order.as_str()));
    }
    history_formats::respond(format, &order, &fixes)
}
