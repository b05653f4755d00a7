//! `GET /openapi.json`: the OpenAPI 3.1 document of every HTTP route, assembled by utoipa from
//! the REST types of trackline-rest and the `#[utoipa::path]` annotation of each handler.
//!
//! Each handler's annotation names what is particular to it (its answers, its own refusals); the
//! refusals every route of a kind shares (a bad token, a bad body, a bad query, an unreachable
//! owner in broker mode) are added here once, by [`SharedAnswers`], so they cannot be forgotten
//! on one route and documented on the next.

use std::sync::LazyLock;

use actix_web::HttpResponse;
use trackline_rest::ErrorAnswer;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::http::{admin, couriers, health, orders, pages, streams, tokens, webhooks};

/// The security scheme of `Authorization: Bearer <token>` (the handlers' `security(...)` name it
/// by this literal: utoipa takes no constant there).
pub const BEARER: &str = "bearer";
/// The security scheme of `?token=<token>`, which the WebSocket upgrades and the pages also take.
pub const TOKEN_QUERY: &str = "token_query";

/// The document: every route the server registers (`http::routes`), with the REST types'
/// schemas. A route added there is added here too; the end-to-end tests check each documented
/// operation is served and that every route of proto/README.md is documented.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "trackline",
        description = "Delivery tracking: orders, couriers' live positions, history, tokens. \
                       The WebSocket streams are documented by their upgrade request; their \
                       frames are in proto/README.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        orders::create_order,
        orders::list_orders,
        orders::get_order,
        orders::assign,
        orders::set_status,
        orders::history,
        streams::watch,
        couriers::nearby,
        couriers::set_plan,
        couriers::get_plan,
        pages::couriers_within,
        streams::courier_stream,
        tokens::mint_token,
        admin::purge,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::delete_webhook,
        webhooks::deliveries,
        webhooks::redeliver,
        pages::track_page,
        pages::ops_map_page,
        pages::config_js,
        pages::asset,
        health::healthz,
        health::readyz,
        crate::metrics::render,
        serve,
    ),
    components(schemas(ErrorAnswer)),
    modifiers(&SharedAnswers),
    tags(
        (name = "orders", description = "create, follow and close delivery orders"),
        (name = "couriers", description = "where the live couriers are"),
        (name = "streams", description = "the WebSocket upgrades"),
        (name = "tokens", description = "minting tokens"),
        (name = "admin", description = "retention"),
        (name = "webhooks", description = "signed, durable events to the systems around a delivery"),
        (name = "pages", description = "the live map pages and their assets"),
        (name = "operations", description = "health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// The document, built once: it depends on nothing but the code.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    // unwrap: a document built from types always serialises
    ApiDoc::openapi().to_json().unwrap()
});

/// The OpenAPI 3.1 document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "this document", content_type = "application/json")),
)]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

/// Adds the security schemes and, to every operation, the refusals of its kind.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "a token from `trackctl token` or `POST /v1/tokens` (HS256 JWT)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TOKEN_QUERY,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "the same token as `?token=`, for what a browser opens without headers \
                 (WebSocket upgrades, pages)",
            ))),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let order_call = path.starts_with("/v1/orders");
            // Registered on every node: any node may fail to answer.
            let fleet_call = path.starts_with("/v1/webhooks");
            // the only methods the server routes
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_shared_answers(operation, order_call, fleet_call);
            }
        }
    }
}

/// The refusals `operation` shares with every route like it.
fn add_shared_answers(operation: &mut Operation, order_call: bool, fleet_call: bool) {
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = operation.request_body.is_some();
    let mut add = |status: &str, text: &str| {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_answer(text));
    };
    if has_body {
        add(
            "400",
            "`bad_json` (malformed, a wrong type, an unknown field), `bad_content_type`",
        );
        add("413", "`payload_too_large`: a body over 1 MiB");
    }
    if has_query {
        add(
            "400",
            "`bad_query`: a parameter of the wrong type or unknown",
        );
    }
    if authenticated {
        add(
            "401",
            "`unauthorized`: the token is missing, malformed, forged or expired",
        );
        add("403", "`forbidden`: the token does not allow this");
    }
    if order_call {
        add(
            "503",
            "`owner_unavailable` (broker mode): the node owning the order cannot be reached",
        );
    }
    if fleet_call {
        add(
            "503",
            "`owner_unavailable` (broker mode): a node did not answer; a registration is taken \
             back, a removal is finished by asking again",
        );
    }
}

/// An error answer: `{"error": {"code", "message"}}` with `description` saying which codes.
fn error_answer(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                ErrorAnswer::name(),
            )))),
        )
        .into()
}
