//! `/v1/admin/purge`: history past a cutoff goes, on every node.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use trackline_core::now_ms;
use trackline_rest::{ErrorAnswer, PurgeRequest, Purged};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::App;

/// `POST /v1/admin/purge`: history before `before_ms` (default: the retention period) goes. In
/// broker mode on every node, with one cutoff: the node asked purges its store and has every
/// other node purge with the same `before_ms`, and answers the totals. When a node does not
/// answer the call fails (503) although the others purged: purging again is harmless.
#[utoipa::path(
    post,
    path = "/v1/admin/purge",
    tag = "admin",
    request_body = PurgeRequest,
    responses(
        (status = 200, description = "what was removed", body = Purged),
        (status = 400, description = "`bad_purge` (no before_ms and no retention period), \
                                      `bad_json`, `bad_content_type`",
         body = ErrorAnswer),
        (status = 503, description = "`owner_unavailable` (broker mode): a node did not answer",
         body = ErrorAnswer),
    ),
    security(("bearer" = [])),
)]
pub async fn purge(
    caller: Caller,
    app: App,
    req: HttpRequest,
    body: web::Json<PurgeRequest>,
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
    // Each other node answers with its own figures.
    let same_cutoff = || {
        let request = PurgeRequest {
            before_ms: Some(before_ms),
        };
        // unwrap: a struct of one number always serialises
        Bytes::from(serde_json::to_vec(&request).unwrap())
    };
    match app.topology.ask_others::<Purged>(&req, same_cutoff).await {
        Ok(others) => {
            fixes += others.iter().map(|p| p.fixes).sum::<usize>();
            orders += others.iter().map(|p| p.orders).sum::<usize>();
        }
        Err(response) => return Ok(response),
    }
    Ok(HttpResponse::Ok().json(Purged {
        before_ms,
        fixes,
        orders,
    }))
}
