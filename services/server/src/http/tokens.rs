//! `/v1/tokens`: ops mint courier, watch and ops tokens.

use actix_web::{web, HttpResponse};
use trackline_core::auth::{Role, DEFAULT_TTL_S};
use trackline_rest::{ErrorAnswer, Token, TokenRequest};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::App;

/// The longest lifetime `POST /v1/tokens` grants (30 days).
const MAX_TOKEN_TTL_S: i64 = 30 * 24 * 3600;

/// A new token of any role.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "tokens",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "the token", body = Token),
        (status = 400, description = "`bad_role` (an unknown role, a subject missing or \
                                      malformed), `bad_ttl`, `bad_json`, `bad_content_type`",
         body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn mint_token(
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
    Ok(HttpResponse::Ok().json(Token {
        token: app.keys.mint(&role, ttl_s),
    }))
}
