//! Who is calling: the bearer token of a request, verified, and the checks each endpoint makes.

use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{CourierId, OrderId};

use crate::http::error::{ApiError, ApiResult};

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// Token expiry, unix seconds.
    pub expires_s: i64,
}

/// Where a token may come from: browsers cannot set headers on a WebSocket or a page load, so
/// those also take `?token=`; plain API calls take the header only, keeping tokens out of URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    HeaderOnly,
    HeaderOrQuery,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn query_token(req: &HttpRequest) -> Option<String> {
    actix_web::web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()?
        .into_inner()
        .token
}

/// Verifies the token of `req`.
///
/// # Errors
/// 401 when the token is missing, malformed, forged or expired.
pub fn authenticate(req: &HttpRequest, keys: &TokenKeys, source: TokenSource) -> ApiResult<Caller> {
    let header = req.headers().get(AUTHORIZATION).map(|h| {
        h.to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").map(str::trim).map(str::to_string))
            .ok_or_else(|| {
                ApiError::Unauthorized("Authorization header must be 'Bearer <token>'".into())
            })
    });
    let token = match (header, source) {
        (Some(found), _) => found?,
        (None, TokenSource::HeaderOrQuery) => query_token(req).ok_or_else(|| {
            ApiError::Unauthorized(
                "missing token: send 'Authorization: Bearer <token>' or ?token=".into(),
            )
        })?,
        (None, TokenSource::HeaderOnly) => {
            return Err(ApiError::Unauthorized(
                "missing token: send 'Authorization: Bearer <token>'".into(),
            ))
        }
    };
    let (role, expires_s) = keys.verify(&token)?;
    Ok(Caller { role, expires_s })
}

impl Caller {
    /// Ops only.
    ///
    /// # Errors
    /// 403 for any other role.
    pub fn require_ops(&self) -> ApiResult<()> {
        match self.role {
            Role::Ops => Ok(()),
            _ => Err(ApiError::Forbidden(format!(
                "this needs an ops token, not a {} token",
                self.role.name()
            ))),
        }
    }

    /// Ops, or a watch token for exactly this order.
    ///
    /// # Errors
    /// 403 otherwise.
    pub fn require_reader_of(&self, order: &OrderId) -> ApiResult<()> {
        match &self.role {
            Role::Ops => Ok(()),
            Role::Watch(watched) if watched == order => Ok(()),
            other => Err(ApiError::Forbidden(format!(
                "a {} token cannot read order {order}",
                other.name()
            ))),
        }
    }

    /// The courier of a courier token.
    ///
    /// # Errors
    /// 403 for any other role.
    pub fn require_courier(&self) -> ApiResult<CourierId> {
        match &self.role {
            Role::Courier(id) => Ok(id.clone()),
            other => Err(ApiError::Forbidden(format!(
                "this needs a courier token, not a {} token",
                other.name()
            ))),
        }
    }
}

/// Extracting a `Caller` authenticates the request from its header before any body is read, so
/// a request without a valid token gets 401 whatever its body.
impl actix_web::FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let outcome =
            match req.app_data::<actix_web::web::Data<std::sync::Arc<crate::state::AppState>>>() {
                Some(app) => authenticate(req, &app.keys, TokenSource::HeaderOnly),
                None => Err(ApiError::Internal("application state missing".into())),
            };
        std::future::ready(outcome)
    }
}
