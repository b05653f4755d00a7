//! The REST API under `/v1`, the WebSocket upgrades, and the health endpoints.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use trackline_core::auth::{Role, DEFAULT_TTL_S};
use trackline_core::fix::Fix;
use trackline_core::history::PurgeStats;
use trackline_core::order::{OrderRecord, OrderStatus, OrderView};
use trackline_core::{now_ms, CourierId, LatLon, OrderId};

use crate::auth::{authenticate, Caller, TokenSource};
use crate::courier_ws::CourierSession;
use crate::error::{ApiError, ApiResult};
use crate::fanout::Resume;
use crate::forward;
use crate::frames::{Frame, FrameKind, WatchFormat};
use crate::history_formats::{self, HistoryFormat};
use crate::live_index::NearbyQuery;
use crate::order_actor::{Assign, GetView, SetStatus};
use crate::registry::{Create, Find};
use crate::remote_watch::{Open, Opened};
use crate::session::ConnectionSlot;
use crate::watch_ws::{Source, WatchSession};
use crate::AppState;

type App = web::Data<Arc<AppState>>;

/// The most points a planned route may have.
const MAX_ROUTE_POINTS: usize = 20_000;
/// The widest nearby search, metres.
const MAX_NEARBY_RADIUS_M: f64 = 100_000.0;
const MAX_NEARBY_LIMIT: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .service(
                order_call("/orders")
                    .route(web::post().to(create_order))
                    .route(web::get().to(list_orders)),
            )
            .service(order_call("/orders/{id}").route(web::get().to(get_order)))
            .service(order_call("/orders/{id}/assign").route(web::post().to(assign)))
            .service(order_call("/orders/{id}/status").route(web::post().to(set_status)))
            .service(order_call("/orders/{id}/history").route(web::get().to(history)))
            .route("/orders/{id}/watch", web::get().to(watch))
            .route("/couriers/nearby", web::get().to(nearby))
            .route(
                "/couriers/within",
                web::get().to(crate::pages::couriers_within),
            )
            .route("/courier/ws", web::get().to(courier_stream))
            .route("/tokens", web::post().to(mint_token))
            .route("/admin/purge", web::post().to(purge)),
    )
    // the live pages (/track/{id}, /ops/map) and their assets
    .configure(crate::pages::routes)
    .route("/healthz", web::get().to(healthz))
    .route("/readyz", web::get().to(readyz))
    .route("/metrics", web::get().to(crate::metrics::render));
    #[cfg(feature = "conformance-echo")]
    cfg.route("/test/echo", web::get().to(crate::echo_ws::echo));
}

/// A REST resource about one order, which in broker mode the order's owner answers
/// ([`crate::forward`]). Only these go through the forwarding middleware: the streams never
/// need it, and with it on every request each idle WebSocket connection held ~3.8 KiB more
/// (measured with 10,000 connections, even on one node).
fn order_call(
    path: &str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path).wrap(actix_web::middleware::from_fn(forward::to_owner))
}

fn order_id(raw: &str) -> ApiResult<OrderId> {
    OrderId::new(raw).map_err(|e| ApiError::BadRequest("bad_order_id", format!("order id: {e}")))
}

fn courier_id(raw: &str) -> ApiResult<CourierId> {
    CourierId::new(raw)
        .map_err(|e| ApiError::BadRequest("bad_courier_id", format!("courier id: {e}")))
}

fn lat_lon(lat: f64, lon: f64, what: &str) -> ApiResult<LatLon> {
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

#[derive(Deserialize)]
struct Point {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrder {
    order_id: String,
    destination: Point,
    courier_id: Option<String>,
    route: Option<Vec<[f64; 2]>>,
    promised_at_ms: Option<i64>,
}

async fn create_order(
    caller: Caller,
    app: App,
    body: web::Json<CreateOrder>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let body = body.into_inner();
    let order = order_id(&body.order_id)?;
    let destination = lat_lon(body.destination.lat, body.destination.lon, "destination")?;
    let courier = body.courier_id.as_deref().map(courier_id).transpose()?;
    let route = match body.route {
        Some(points) if points.len() < 2 || points.len() > MAX_ROUTE_POINTS => {
            return Err(ApiError::BadRequest(
                "bad_route",
                format!(
                    "a route has 2 to {MAX_ROUTE_POINTS} points, not {}",
                    points.len()
                ),
            ));
        }
        Some(points) => Some(
            points
                .iter()
                .enumerate()
                .map(|(i, [lat, lon])| lat_lon(*lat, *lon, &format!("route point {i}")))
                .collect::<ApiResult<Vec<_>>>()?,
        ),
        None => None,
    };
    let record = OrderRecord::new(
        order.clone(),
        destination,
        courier,
        route,
        body.promised_at_ms,
        now_ms(),
    );
    if let Some(courier) = &record.courier_id {
        link_first(&app, courier, &order).await?;
    }
    let courier = record.courier_id.clone();
    if let Err(error) = app.registry.send(Create(record)).await? {
        if let Some(courier) = &courier {
            unlink_unless_assigned(&app, courier, &order).await;
        }
        return Err(error);
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
    Ok(HttpResponse::Created()
        .json(json!({"order_id": order, "watch_token": watch_token, "watch_url": watch_url})))
}

/// Broker mode: an assignment counts only once the courier's home node routes its fixes here.
async fn link_first(app: &AppState, courier: &CourierId, order: &OrderId) -> ApiResult<()> {
    match &app.cluster {
        Some(cluster) => cluster.link(courier, order, true).await,
        None => Ok(()),
    }
}

/// Broker mode: takes back the link made for a create that was refused (the order exists), unless
/// the existing order is assigned to that courier anyway. Left behind, the link would cost a
/// forward of every frame of the courier's until the order ends.
async fn unlink_unless_assigned(app: &AppState, courier: &CourierId, order: &OrderId) {
    let Some(cluster) = &app.cluster else {
        return;
    };
    let assigned = view_of(app, order)
        .await
        .ok()
        .and_then(|view| view.courier_id);
    if assigned.as_ref() == Some(courier) {
        return;
    }
    if let Err(error) = cluster.link(courier, order, false).await {
        tracing::warn!(%error, courier_id = %courier, order_id = %order,
            "undoing the courier link of a refused create failed; it goes when the order ends");
    }
}

/// The durable view of an order: from its actor when active, else from the store.
async fn view_of(app: &AppState, order: &OrderId) -> ApiResult<OrderView> {
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
fn for_caller(mut view: OrderView, caller: &Caller) -> OrderView {
    if matches!(caller.role, Role::Watch(_)) && view.status.is_final() {
        view.position = None;
        view.eta = None;
    }
    view
}

async fn get_order(caller: Caller, app: App, path: web::Path<String>) -> ApiResult<HttpResponse> {
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
    let mut body = serde_json::to_value(for_caller(view, &caller))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    body["route"] = json!(route);
    if let (Role::Ops, Some(record)) = (&caller.role, record) {
        body["rejected"] = json!(record.rejected);
        body["status_log"] = json!(record.status_log);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `active` (default), `ended` or `all`.
    status: Option<String>,
    limit: Option<usize>,
}

/// The most orders one listing returns.
const MAX_LIST_LIMIT: usize = 10_000;

/// `GET /v1/orders`: orders, most recently updated first. In broker mode each node keeps the
/// orders it owns, so the node asked gathers the lists of all (the same query on each) and
/// merges them; a node that does not answer makes the call fail (503) rather than the list
/// silently short.
async fn list_orders(
    caller: Caller,
    app: App,
    req: HttpRequest,
    query: web::Query<ListQuery>,
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
    if let Some(cluster) = fleet_call(&app, &req) {
        #[derive(Deserialize)]
        struct Listed {
            orders: Vec<OrderView>,
        }
        let others = forward::ask_others::<Listed>(cluster, &req, Bytes::new()).await;
        match others {
            Ok(others) => views.extend(others.into_iter().flat_map(|listed| listed.orders)),
            Err(response) => return Ok(response),
        }
    }
    views.sort_by_key(|v| std::cmp::Reverse(v.updated_at_ms));
    views.truncate(limit);
    Ok(HttpResponse::Ok().json(json!({"orders": views})))
}

async fn active_order(
    app: &AppState,
    order: &OrderId,
) -> ApiResult<actix::Addr<crate::order_actor::OrderActor>> {
    if let Some(actor) = app.registry.send(Find::here(order.clone())).await? {
        return Ok(actor);
    }
    // Not active: say whether it ended or never existed.
    let view = view_of(app, order).await?;
    Err(ApiError::Conflict(
        "order_closed",
        format!("order {order} is {}", view.status),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    courier_id: String,
}

async fn assign(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    body: web::Json<AssignBody>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let order = order_id(&path)?;
    let courier = courier_id(&body.courier_id)?;
    let actor = active_order(&app, &order).await?;
    link_first(&app, &courier, &order).await?;
    let view = actor.send(Assign { courier }).await??;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: OrderStatus,
}

async fn set_status(
    caller: Caller,
    app: App,
    path: web::Path<String>,
    body: web::Json<StatusBody>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    format: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
}

async fn history(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NearbyParams {
    lat: f64,
    lon: f64,
    radius_m: Option<f64>,
    limit: Option<usize>,
}

async fn nearby(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    role: String,
    subject: Option<String>,
    ttl_s: Option<i64>,
}

/// The longest lifetime `POST /v1/tokens` grants (30 days).
const MAX_TOKEN_TTL_S: i64 = 30 * 24 * 3600;

async fn mint_token(
    caller: Caller,
    app: App,
    body: web::Json<TokenRequest>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let role = Role::from_parts(&body.role, body.subject.as_deref())
        .map_err(|e| ApiError::BadRequest("bad_role", e.to_string()))?;
    let ttl_s = body.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl_s) {
        return Err(ApiError::BadRequest(
            "bad_ttl",
            format!("ttl_s must be in [1, {MAX_TOKEN_TTL_S}]"),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"token": app.keys.mint(&role, ttl_s)})))
}

async fn courier_stream(
    req: HttpRequest,
    app: App,
    stream: web::Payload,
) -> ApiResult<HttpResponse> {
    let caller = authenticate(&req, &app.keys, TokenSource::HeaderOrQuery)?;
    let courier = caller.require_courier()?;
    let slot = ConnectionSlot::take(&app.connections, app.config.max_connections)?;
    let session = CourierSession::new(courier, caller.expires_s, app.get_ref().clone(), slot);
    actix_web_actors::ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(app.config.max_frame_bytes)
        .start()
        .map_err(|e| ApiError::BadRequest("bad_upgrade", e.to_string()))
}

#[derive(Deserialize)]
struct WatchQuery {
    since: Option<u64>,
    epoch: Option<String>,
}

async fn watch(
    req: HttpRequest,
    app: App,
    path: web::Path<String>,
    stream: web::Payload,
) -> ApiResult<HttpResponse> {
    let caller = authenticate(&req, &app.keys, TokenSource::HeaderOrQuery)?;
    let order = order_id(&path)?;
    caller.require_reader_of(&order)?;
    let query = web::Query::<WatchQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest("bad_query", format!("since/epoch: {e}")))?;
    let resume = match (query.since, query.epoch.clone()) {
        (Some(since), Some(epoch)) => Some(Resume { since, epoch }),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "bad_resume",
                "resume needs both since and epoch".into(),
            ))
        }
    };
    let requested = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|h| h.to_str().ok());
    let format = WatchFormat::negotiate(requested).ok_or_else(|| {
        ApiError::BadRequest(
            "bad_subprotocol",
            format!(
                "supported subprotocols: {}, {}",
                WatchFormat::JSON_PROTOCOL,
                WatchFormat::PROTO_PROTOCOL
            ),
        )
    })?;
    let source = match (&app.cluster, &app.remote_watches) {
        (Some(cluster), Some(remote)) if !cluster.owns(&order) => {
            match remote.send(Open(order.clone())).await?? {
                Opened::Live(mirror) => Source::Live(mirror.into(), resume),
                Opened::Ended(view) => Source::Ended(Frame::encode(
                    for_caller(view, &caller),
                    FrameKind::Snapshot,
                    false,
                )),
            }
        }
        _ => match app.registry.send(Find::here(order.clone())).await? {
            Some(actor) => Source::Live(actor.into(), resume),
            None => {
                let view = for_caller(view_of(&app, &order).await?, &caller);
                Source::Ended(Frame::encode(view, FrameKind::Snapshot, false))
            }
        },
    };
    let slot = ConnectionSlot::take(&app.connections, app.config.max_connections)?;
    let session = WatchSession::new(
        format,
        caller.expires_s,
        app.get_ref().clone(),
        source,
        slot,
    );
    let mut builder = actix_web_actors::ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(app.config.max_frame_bytes);
    let protocols = [format.protocol()];
    if requested.is_some() {
        builder = builder.protocols(&protocols);
    }
    builder
        .start()
        .map_err(|e| ApiError::BadRequest("bad_upgrade", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    /// Purge fixes older than this (unix ms); default: now minus the retention period.
    before_ms: Option<i64>,
}

/// Broker mode: the cluster, when `req` is a call about the whole fleet that this node was asked
/// first (and so asks the others); `None` on one node, and on a node that another one asks.
fn fleet_call<'a>(app: &'a AppState, req: &HttpRequest) -> Option<&'a crate::cluster::Cluster> {
    app.cluster
        .as_deref()
        .filter(|_| !forward::is_forwarded(req))
}

/// `POST /v1/admin/purge`: history before `before_ms` (default: the retention period) goes. In
/// broker mode on every node, with one cutoff: the node asked purges its store and has every
/// other node purge with the same `before_ms`, and answers the totals. When a node does not
/// answer the call fails (503) although the others purged: purging again is harmless.
async fn purge(
    caller: Caller,
    app: App,
    req: HttpRequest,
    body: web::Json<PurgeBody>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let before_ms = match (body.before_ms, app.config.retention()) {
        (Some(before), _) => before,
        (None, Some(retention)) => now_ms() - retention.as_millis() as i64,
        (None, None) => {
            return Err(ApiError::BadRequest(
                "bad_purge",
                "no retention period is configured: give before_ms".into(),
            ));
        }
    };
    let store = app.store.clone();
    let stats = web::block(move || store.purge_before(before_ms))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    tracing::info!(
        before_ms,
        fixes = stats.fixes,
        orders = stats.orders,
        "purged on request"
    );
    let (mut fixes, mut orders) = (stats.fixes, stats.orders);
    if let Some(cluster) = fleet_call(&app, &req) {
        // Each node answers with its own figures (the same fields as PurgeStats).
        let same_cutoff = Bytes::from(json!({ "before_ms": before_ms }).to_string());
        match forward::ask_others::<PurgeStats>(cluster, &req, same_cutoff).await {
            Ok(others) => {
                fixes += others.iter().map(|p| p.fixes).sum::<usize>();
                orders += others.iter().map(|p| p.orders).sum::<usize>();
            }
            Err(response) => return Ok(response),
        }
    }
    Ok(HttpResponse::Ok().json(json!({"before_ms": before_ms, "fixes": fixes, "orders": orders})))
}

/// Request bodies are small JSON documents; a planned route is the largest (20,000 points).
const MAX_JSON_BYTES: usize = 1 << 20;

/// JSON bodies: size limit and a JSON error for every way a body can be wrong.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_JSON_BYTES)
        .error_handler(|err, _| {
            use actix_web::error::JsonPayloadError;
            match err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::PayloadTooLarge(format!("body larger than {MAX_JSON_BYTES} bytes"))
                        .into()
                }
                JsonPayloadError::ContentType => ApiError::BadRequest(
                    "bad_content_type",
                    "send the body as Content-Type: application/json".into(),
                )
                .into(),
                other => ApiError::BadRequest("bad_json", other.to_string()).into(),
            }
        })
}

/// Query strings: a JSON error naming what is wrong.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _| ApiError::BadRequest("bad_query", err.to_string()).into())
}

pub async fn not_found(req: HttpRequest) -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound(format!(
        "no endpoint {} {}",
        req.method(),
        req.path()
    )))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(app: App) -> HttpResponse {
    if *app.shutdown.borrow() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    }
}
