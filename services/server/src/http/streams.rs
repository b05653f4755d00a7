//! The WebSocket upgrades: the courier stream (`/v1/courier/ws`) and the watch stream of one
//! order (`/v1/orders/{id}/watch`).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use trackline_core::OrderId;
use trackline_rest::ErrorAnswer;

use crate::cluster::remote_watch::{Open, Opened};
use crate::http::auth::{authenticate, TokenSource};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{order_id, App};
use crate::http::orders::{for_caller, view_of};
use crate::orders::fanout::Resume;
use crate::orders::frames::{Frame, FrameKind, WatchFormat};
use crate::orders::registry::Find;
use crate::ws::courier::CourierSession;
use crate::ws::session::ConnectionSlot;
use crate::ws::watch::{Source, WatchSession};

/// Opens a courier's stream: binary protobuf frames both ways (proto/README.md).
#[utoipa::path(
    get,
    path = "/v1/courier/ws",
    tag = "streams",
    responses(
        (status = 101, description = "upgraded to the WebSocket"),
        (status = 400, description = "`bad_upgrade`: not a WebSocket upgrade request",
         body = ErrorAnswer),
        (status = 503, description = "`unavailable`: the server holds its most connections",
         body = ErrorAnswer),
    ),
    security(("bearer" = []), ("token_query" = [])),
)]
pub async fn courier_stream(
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

/// Opens the watch stream of one order (subprotocol `trackline.v1.json` or `trackline.v1.proto`).
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/watch",
    tag = "streams",
    params(("id" = OrderId, Path, description = "the order id"), trackline_rest::WatchQuery),
    responses(
        (status = 101, description = "upgraded to the WebSocket"),
        (status = 400, description = "`bad_order_id`, `bad_query`, `bad_resume`, \
                                      `bad_subprotocol`, `bad_upgrade`",
         body = ErrorAnswer),
        (status = 404, description = "`not_found`: no such order", body = ErrorAnswer),
        (status = 503, description = "`unavailable`: the server holds its most connections",
         body = ErrorAnswer),
    ),
    security(("bearer" = []), ("token_query" = [])),
)]
pub async fn watch(
    req: HttpRequest,
    app: App,
    path: web::Path<String>,
    stream: web::Payload,
) -> ApiResult<HttpResponse> {
    crate::http::cors::check_origin(&req, &app.config.cors_origins)?;
    let caller = authenticate(&req, &app.keys, TokenSource::HeaderOrQuery)?;
    let order = order_id(&path)?;
    caller.require_reader_of(&order)?;
    let query = web::Query::<trackline_rest::WatchQuery>::from_query(req.query_string())
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
    let source = match app.topology.mirrors_of(&order) {
        Some(mirrors) => match mirrors.send(Open(order.clone())).await?? {
            Opened::Live(mirror) => Source::Live(mirror.into(), resume),
            Opened::Ended(view) => Source::Ended(Frame::encode(
                for_caller(view, &caller),
                FrameKind::Snapshot,
                false,
            )),
        },
        None => match app.registry.send(Find::here(order.clone())).await? {
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
