//! `/v1/admin/purge`: history past a cutoff goes, on every node.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use trackline_core::history::PurgeStats;
use trackline_core::now_ms;

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::App;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// Purge fixes older than this (unix ms); default: now minus the retention period.
    before_ms: Option<i64>,
}

/// `POST /v1/admin/purge`: history before `before_ms` (default: the retention period) goes. In
/// broker mode on every node, with one cutoff: the node asked purges its store and has every
/// other node purge with the same `before_ms`, and answers the totals. When a node does not
/// answer the call fails (503) although the others purged: purging again is harmless.
pub async fn purge(
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
    // Each other node answers with its own figures (the same fields as PurgeStats).
    let same_cutoff = || Bytes::from(json!({ "before_ms": before_ms }).to_string());
    match app
        .topology
        .ask_others::<PurgeStats>(&req, same_cutoff)
        .await
    {
        Ok(others) => {
            fixes += others.iter().map(|p| p.fixes).sum::<usize>();
            orders += others.iter().map(|p| p.orders).sum::<usize>();
        }
        Err(response) => return Ok(response),
    }
    Ok(HttpResponse::Ok().json(json!({"before_ms": before_ms, "fixes": fixes, "orders": orders})))
}
