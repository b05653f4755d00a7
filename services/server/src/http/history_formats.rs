//! An order's history as the answer of `GET /v1/orders/{id}/history`: JSON, GeoJSON or GPX.

use actix_web::HttpResponse;
use serde_json::json;
use trackline_core::export::{Shape, Track};
use trackline_core::fix::Fix;
use trackline_core::OrderId;

use crate::http::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFormat {
    Json,
    GeoJson,
    Gpx,
}

impl HistoryFormat {
    /// # Errors
    /// 400 for a format other than json, geojson or gpx.
    pub fn parse(raw: Option<&str>) -> ApiResult<Self> {
        match raw.unwrap_or("json") {
            "json" => Ok(HistoryFormat::Json),
            "geojson" => Ok(HistoryFormat::GeoJson),
            "gpx" => Ok(HistoryFormat::Gpx),
            other => Err(ApiError::BadRequest(
                "bad_format",
                format!("format {other:?}: expected json, geojson or gpx"),
            )),
        }
    }
}

fn fix_json(fix: &Fix) -> serde_json::Value {
    json!({
        "seq": fix.seq,
        "time_ms": fix.time_ms,
        "lat": fix.pos.lat,
        "lon": fix.pos.lon,
        "accuracy_m": fix.accuracy_m,
        "speed_mps": fix.speed_mps,
        "heading_deg": fix.heading_deg,
    })
}

/// The HTTP answer for `fixes` in `format`.
///
/// # Errors
/// 500 when an export cannot be written.
pub fn respond(format: HistoryFormat, order: &OrderId, fixes: &[Fix]) -> ApiResult<HttpResponse> {
    match format {
        HistoryFormat::Json => {
            let fixes: Vec<_> = fixes.iter().map(fix_json).collect();
            Ok(HttpResponse::Ok().json(json!({"order_id": order, "fixes": fixes})))
        }
        // the shape documented in proto/README.md, which API clients parse
        HistoryFormat::GeoJson => Ok(HttpResponse::Ok()
            .content_type("application/geo+json")
            .json(Track::new(order, fixes).to_geojson(Shape::Api))),
        HistoryFormat::Gpx => {
            let out = Track::new(order, fixes)
                .to_gpx_bytes(Shape::Api)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(HttpResponse::Ok()
                .content_type("application/gpx+xml")
                .body(out))
        }
    }
}
