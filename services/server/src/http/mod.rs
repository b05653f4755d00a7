//! The HTTP edge: the routes of the REST API under `/v1`, the WebSocket upgrades, the live pages
//! and health; one file per resource, plus auth, the HTTP error type and the history formats.

pub mod admin;
pub mod auth;
pub mod cors;
pub mod couriers;
pub mod error;
pub mod extract;
pub mod health;
pub mod history_formats;
pub mod openapi;
pub mod orders;
pub mod pages;
pub mod stops;
pub mod streams;
pub mod tokens;
pub mod webhooks;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::cluster::forward;
use crate::http::error::{ApiError, ApiResult};

/// Every route; `cors_origins` may call the reads of a watcher's page from their own pages. Each
/// one is also listed in the OpenAPI document ([`openapi::ApiDoc`]).
pub fn routes(cfg: &mut web::ServiceConfig, cors_origins: &[String]) {
    cfg.service(
        web::scope("/v1")
            .service(
                order_call("/orders")
                    .route(web::post().to(orders::create_order))
                    .route(web::get().to(orders::list_orders)),
            )
            .service(
                order_call("/orders/{id}")
                    .route(web::get().to(orders::get_order))
                    .wrap(cors::reads(cors_origins)),
            )
            .service(order_call("/orders/{id}/assign").route(web::post().to(orders::assign)))
            .service(order_call("/orders/{id}/status").route(web::post().to(orders::set_status)))
            .service(
                order_call("/orders/{id}/history")
                    .route(web::get().to(orders::history))
                    .wrap(cors::reads(cors_origins)),
            )
            .service(
                web::resource("/orders/{id}/watch")
                    .route(web::get().to(streams::watch))
                    .wrap(cors::reads(cors_origins)),
            )
            .route("/couriers/nearby", web::get().to(couriers::nearby))
            .route("/couriers/within", web::get().to(pages::couriers_within))
            .service(
                order_call("/couriers/{id}/plan")
                    .route(web::put().to(couriers::set_plan))
                    .route(web::get().to(couriers::get_plan)),
            )
            .route("/courier/ws", web::get().to(streams::courier_stream))
            .route("/tokens", web::post().to(tokens::mint_token))
            .route("/admin/purge", web::post().to(admin::purge))
            .configure(webhooks::routes),
    )
    // the live pages (/track/{id}, /ops/map) and their assets
    .configure(pages::routes)
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(crate::metrics::render))
    .route("/openapi.json", web::get().to(openapi::serve));
    #[cfg(feature = "conformance-echo")]
    cfg.route("/test/echo", web::get().to(crate::ws::echo::echo));
}

/// A REST resource about one order (or a courier's plan), which in broker mode the order's owner
/// (the courier's home node) answers ([`crate::cluster::forward`]). Only these go through the forwarding middleware: the streams never
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
