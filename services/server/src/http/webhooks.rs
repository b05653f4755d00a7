//! `/v1/webhooks`: ops register receivers of events, and see and retry their deliveries.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use trackline_core::now_ms;
use trackline_core::webhooks::signature::{decode_secret, generate_secret};
use trackline_core::webhooks::{
    DeliveryStatus, Endpoint, EventType, Put, WebhookResult, WebhookStore, MAX_ENDPOINTS,
};
use trackline_rest::{
    CreateWebhook, DeliveriesQuery, Delivery, DeliveryList, ErrorAnswer, Redeliver, Redelivered,
    Webhook, WebhookCreated, WebhookList, EVENT_TYPES,
};

use crate::cluster::replay::{is_forwarded, Call};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::App;

/// The routes under `/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks")
            .route(web::post().to(create_webhook))
            .route(web::get().to(list_webhooks)),
    )
    .service(
        web::resource("/webhooks/{id}")
            .route(web::get().to(get_webhook))
            .route(web::delete().to(delete_webhook)),
    )
    .route("/webhooks/{id}/deliveries", web::get().to(deliveries))
    .route("/webhooks/{id}/redeliver", web::post().to(redeliver));
}

/// The same call, for every other node of a cluster (none alone): endpoints are registered on
/// every node, since each node delivers the events of the orders it owns.
async fn on_other_nodes<T: serde::de::DeserializeOwned>(
    app: &App,
    req: &HttpRequest,
    body: impl FnOnce() -> Bytes,
) -> Result<Vec<T>, HttpResponse> {
    app.topology.ask_others(req, body).await
}

/// What a node answers with: 200 to another node that replays the call (which gathers the
/// answers), `status` to the caller.
fn status_for(
    req: &HttpRequest,
    status: actix_web::http::StatusCode,
) -> actix_web::HttpResponseBuilder {
    if is_forwarded(req) {
        HttpResponse::Ok()
    } else {
        HttpResponse::build(status)
    }
}

/// The longest URL taken: receivers' URLs are short, and each is stored with every endpoint.
const MAX_URL_BYTES: usize = 2048;

/// The most deliveries one listing shows unless asked for fewer.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

fn names(events: &[EventType]) -> Vec<String> {
    events.iter().map(|e| e.as_str().to_string()).collect()
}

fn shown(endpoint: &Endpoint) -> Webhook {
    Webhook {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        events: names(&endpoint.events),
        created_at_ms: endpoint.created_at_ms,
        disabled: endpoint.disabled,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("webhook {id} does not exist"))
}

fn found(app: &App, id: &str) -> ApiResult<Endpoint> {
    app.store
        .webhooks()
        .endpoint(id)
        .ok_or_else(|| not_found(id))
}

/// Only an absolute http(s) URL with a host: events go nowhere else.
fn checked_url(raw: &str) -> ApiResult<String> {
    let bad = |why: String| ApiError::BadRequest("bad_url", format!("url {raw:?}: {why}"));
    if raw.len() > MAX_URL_BYTES {
        return Err(bad(format!("longer than {MAX_URL_BYTES} bytes")));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs receive webhooks".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(url.to_string())
}

/// The types asked for, each once, in the order given (every type when none is named).
fn checked_events(asked: Option<Vec<String>>) -> ApiResult<Vec<EventType>> {
    let Some(asked) = asked else {
        return Ok(EventType::ALL.to_vec());
    };
    if asked.is_empty() {
        return Err(ApiError::BadRequest(
            "bad_events",
            format!("events: name at least one of {EVENT_TYPES}, or leave it out for all"),
        ));
    }
    let mut events = Vec::new();
    for name in &asked {
        let kind = EventType::parse(name).ok_or_else(|| {
            ApiError::BadRequest(
                "unknown_event_type",
                format!("unknown event type {name:?}: the types are {EVENT_TYPES}"),
            )
        })?;
        if !events.contains(&kind) {
            events.push(kind);
        }
    }
    Ok(events)
}

/// Runs a blocking store call (sled flushes) off the async threads.
async fn blocking<T: Send + 'static>(
    app: &App,
    call: impl FnOnce(&WebhookStore) -> WebhookResult<T> + Send + 'static,
) -> ApiResult<T> {
    let store = app.store.webhooks().clone();
    web::block(move || call(&store))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(format!("webhook store: {e}")))
}

/// Registers a receiver of events; the answer is the only one that shows its secret.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    tag = "webhooks",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "registered", body = WebhookCreated),
        (status = 400, description = "`bad_url`, `unknown_event_type`, `bad_events`, `bad_secret`, \
                                      `bad_json`, `bad_content_type`", body = ErrorAnswer),
        (status = 409, description = "`webhook_limit`: 100 webhooks are registered already",
         body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn create_webhook(
    caller: Caller,
    app: App,
    req: HttpRequest,
    body: web::Json<CreateWebhook>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let body = body.into_inner();
    let url = checked_url(&body.url)?;
    let events = checked_events(body.events)?;
    let secret = match body.secret {
        Some(secret) => {
            decode_secret(&secret)
                .map_err(|e| ApiError::BadRequest("bad_secret", e.to_string()))?;
            secret
        }
        None => generate_secret(),
    };
    let endpoint = Endpoint {
        id: Endpoint::id_for(&url, &secret),
        url,
        events,
        secret,
        created_at_ms: now_ms(),
        disabled: false,
    };
    let answer = WebhookCreated {
        id: endpoint.id.clone(),
        url: endpoint.url.clone(),
        events: names(&endpoint.events),
        secret: endpoint.secret.clone(),
    };
    let put = blocking(&app, move |store| store.put_endpoint(endpoint)).await?;
    if put == Put::Full {
        return Err(ApiError::Conflict(
            "webhook_limit",
            format!("{MAX_ENDPOINTS} webhooks are registered already: remove one first"),
        ));
    }
    // The same endpoint (URL, types and this secret, so the same id) on every other node.
    let same = || {
        let request = CreateWebhook {
            url: answer.url.clone(),
            events: Some(answer.events.clone()),
            secret: Some(answer.secret.clone()),
        };
        // unwrap: strings always serialise
        Bytes::from(serde_json::to_vec(&request).unwrap())
    };
    if let Err(response) = on_other_nodes::<WebhookCreated>(&app, &req, same).await {
        if put == Put::Added {
            undo_create(&app, &req, &answer.id).await;
        }
        return Ok(response);
    }
    Ok(status_for(&req, actix_web::http::StatusCode::CREATED).json(answer))
}

/// Takes back a new endpoint that some node could not register: a caller told it failed must
/// not have its events sent anywhere (with a generated secret nobody has seen). Best effort on
/// the other nodes; a node that could not be reached may keep it, and `DELETE` on any node
/// removes it there too.
async fn undo_create(app: &App, req: &HttpRequest, id: &str) {
    let asked = id.to_string();
    if let Err(error) = blocking(app, move |store| store.remove_endpoint(&asked)).await {
        tracing::warn!(
            webhook = id,
            ?error,
            "taking back a webhook that failed to register"
        );
    }
    let call = Call {
        method: actix_web::http::Method::DELETE,
        path: format!("/v1/webhooks/{id}"),
    };
    let undone = app
        .topology
        .ask_others_to::<Removed>(req, &call, Bytes::new)
        .await;
    if undone.is_err() {
        tracing::warn!(
            webhook = id,
            "a webhook that failed to register stays on a node that cannot be reached"
        );
    }
}

/// A node's answer to a forwarded `DELETE`: whether it had the endpoint.
#[derive(serde::Serialize, serde::Deserialize)]
struct Removed {
    removed: bool,
}

/// Every registered receiver (without secrets).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    tag = "webhooks",
    responses((status = 200, description = "the webhooks", body = WebhookList)),
    security(("bearer" = [])),
)]
pub async fn list_webhooks(caller: Caller, app: App) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let webhooks = app.store.webhooks().endpoints().iter().map(shown).collect();
    Ok(HttpResponse::Ok().json(WebhookList { webhooks }))
}

/// One receiver (without its secret).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id")),
    responses(
        (status = 200, description = "the webhook", body = Webhook),
        (status = 404, description = "`not_found`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn get_webhook(
    caller: Caller,
    app: App,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    Ok(HttpResponse::Ok().json(shown(&found(&app, &id)?)))
}

/// Removes a receiver with its pending and failed deliveries.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id")),
    responses(
        (status = 204, description = "removed"),
        (status = 401, description = "`unauthorized`: the token is missing, malformed, forged or expired",
         body = ErrorAnswer),
        (status = 403, description = "`forbidden`: the token does not allow this", body = ErrorAnswer),
        (status = 404, description = "`not_found`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn delete_webhook(
    caller: Caller,
    app: App,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let id = id.into_inner();
    let asked = id.clone();
    let removed = blocking(&app, move |store| store.remove_endpoint(&asked)).await?;
    if is_forwarded(&req) {
        return Ok(HttpResponse::Ok().json(Removed { removed }));
    }
    // Asked of every node even when this one has none: a delete (or create) that some node
    // missed is finished by asking again.
    let elsewhere = match on_other_nodes::<Removed>(&app, &req, Bytes::new).await {
        Ok(answers) => answers.iter().any(|a| a.removed),
        Err(response) => return Ok(response),
    };
    if !removed && !elsewhere {
        return Err(not_found(&id));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// A receiver's deliveries still to make (`pending`) or given up (`failed`).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id"), DeliveriesQuery),
    responses(
        (status = 200, description = "the deliveries", body = DeliveryList),
        (status = 400, description = "`bad_status`, `bad_limit`", body = ErrorAnswer),
        (status = 404, description = "`not_found`", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn deliveries(
    caller: Caller,
    app: App,
    req: HttpRequest,
    id: web::Path<String>,
    query: web::Query<DeliveriesQuery>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let endpoint = found(&app, &id)?;
    let status = match query.status.as_deref() {
        None | Some("pending") => DeliveryStatus::Pending,
        Some("failed") => DeliveryStatus::Failed,
        Some(other) => {
            return Err(ApiError::BadRequest(
                "bad_status",
                format!("status {other:?}: pending or failed"),
            ))
        }
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(
            "bad_limit",
            format!("limit {limit}: 1 to {MAX_LIMIT}"),
        ));
    }
    let listed = blocking(&app, move |store| {
        store.deliveries(&endpoint.id, status, limit)
    })
    .await?;
    let status_name = match status {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Failed => "failed",
    };
    let mut deliveries: Vec<Delivery> = listed
        .into_iter()
        .map(|(order, state)| Delivery {
            event_id: state.event_id,
            kind: state.kind.as_str().to_string(),
            order_id: order.as_str().to_string(),
            status: status_name.to_string(),
            attempts: state.attempts,
            next_attempt_ms: state.next_attempt_ms,
            since_ms: state.since_ms,
            last_error: state.last_error,
        })
        .collect();
    // Each node holds the deliveries of the orders it owns.
    match on_other_nodes::<DeliveryList>(&app, &req, Bytes::new).await {
        Ok(others) => deliveries.extend(others.into_iter().flat_map(|d| d.deliveries)),
        Err(response) => return Ok(response),
    }
    deliveries.truncate(limit);
    Ok(HttpResponse::Ok().json(DeliveryList { deliveries }))
}

/// Tries failed deliveries again (every one, or the one of `event_id`), for the maximum age
/// from now.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/redeliver",
    tag = "webhooks",
    params(("id" = String, Path, description = "the webhook's id")),
    request_body = Redeliver,
    responses(
        (status = 200, description = "how many went back to pending", body = Redelivered),
        (status = 404, description = "`not_found`: no such webhook, or no failed delivery of that \
                                      event", body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn redeliver(
    caller: Caller,
    app: App,
    req: HttpRequest,
    body: web::Json<Redeliver>,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let endpoint = found(&app, &id)?;
    let event = body.into_inner().event_id;
    let asked = event.clone();
    let mut redelivered = blocking(&app, move |store| {
        store.redeliver(&endpoint.id, asked.as_deref(), now_ms())
    })
    .await?;
    let same = || {
        let request = Redeliver {
            event_id: event.clone(),
        };
        // unwrap: an optional string always serialises
        Bytes::from(serde_json::to_vec(&request).unwrap())
    };
    match on_other_nodes::<Redelivered>(&app, &req, same).await {
        Ok(others) => redelivered += others.iter().map(|r| r.redelivered).sum::<usize>(),
        Err(response) => return Ok(response),
    }
    // A node asked by another answers its count, 0 included: the event is on one node only.
    if is_forwarded(&req) {
        return Ok(HttpResponse::Ok().json(Redelivered { redelivered }));
    }
    if let (Some(event), 0) = (event, redelivered) {
        return Err(ApiError::NotFound(format!(
            "webhook {id} has no failed delivery of event {event}"
        )));
    }
    Ok(HttpResponse::Ok().json(Redelivered { redelivered }))
}
