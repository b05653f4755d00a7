//! An order's history as the answer of `GET /v1/orders/{id}/history`: JSON, GeoJSON or GPX.

use actix_web::HttpResponse;
use trackline_core::export::{Shape, Track};
use trackline_core::fix::Fix;
use trackline_core::OrderId;
use trackline_rest::History;

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

/// The HTTP answer for `fixes` in `format`.
///
/// # Errors
/// 500 when an export cannot be written.
pub fn respond(format: HistoryFormat, order: &OrderId, fixes: &[Fix]) -> ApiResult<HttpResponse> {
    match format {
        HistoryFormat::Json => Ok(HttpResponse::Ok().json(History::new(order.clone(), fixes))),
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
