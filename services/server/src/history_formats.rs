//! An order's history as the answer of `GET /v1/orders/{id}/history`: JSON, GeoJSON or GPX.

use actix_web::HttpResponse;
use serde_json::json;
use trackline_core::fix::Fix;
use trackline_core::OrderId;

use crate::error::{ApiError, ApiResult};

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

/// The fixes as one LineString feature (GeoJSON positions are `[lon, lat]`), with the times and
/// seqs as parallel arrays in its properties.
pub fn to_geojson(order: &OrderId, fixes: &[Fix]) -> geojson::FeatureCollection {
    let line: Vec<Vec<f64>> = fixes.iter().map(|f| vec![f.pos.lon, f.pos.lat]).collect();
    let mut properties = serde_json::Map::new();
    properties.insert("order_id".into(), json!(order));
    properties.insert(
        "times_ms".into(),
        json!(fixes.iter().map(|f| f.time_ms).collect::<Vec<_>>()),
    );
    properties.insert(
        "seqs".into(),
        json!(fixes.iter().map(|f| f.seq).collect::<Vec<_>>()),
    );
    let feature = geojson::Feature {
        bbox: None,
        geometry: Some(geojson::Geometry::new(geojson::Value::LineString(line))),
        id: None,
        properties: Some(properties),
        foreign_members: None,
    };
    geojson::FeatureCollection {
        bbox: None,
        features: vec![feature],
        foreign_members: None,
    }
}

/// The fixes as one GPX 1.1 track.
///
/// # Errors
/// When a fix's time is outside what GPX can express.
pub fn to_gpx(order: &OrderId, fixes: &[Fix]) -> Result<gpx::Gpx, String> {
    let mut segment = gpx::TrackSegment::new();
    for fix in fixes {
        let mut point = gpx::Waypoint::new(geo_types_point(fix));
        let time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(fix.time_ms) * 1_000_000)
                .map_err(|e| format!("fix {} time: {e}", fix.seq))?;
        point.time = Some(time.into());
        point.speed = fix.speed_mps.map(f64::from);
        point.hdop = None;
        segment.points.push(point);
    }
    let mut track = gpx::Track::new();
    track.name = Some(format!("order {order}"));
    track.segments.push(segment);
    Ok(gpx::Gpx {
        version: gpx::GpxVersion::Gpx11,
        creator: Some("trackline".into()),
        tracks: vec![track],
        ..Default::default()
    })
}

fn geo_types_point(fix: &Fix) -> geo::Point<f64> {
    geo::Point::new(fix.pos.lon, fix.pos.lat)
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
        HistoryFormat::GeoJson => Ok(HttpResponse::Ok()
            .content_type("application/geo+json")
            .json(to_geojson(order, fixes))),
        HistoryFormat::Gpx => {
            let doc = to_gpx(order, fixes).map_err(ApiError::Internal)?;
            let mut out = Vec::new();
            gpx::write(&doc, &mut out)
                .map_err(|e| ApiError::Internal(format!("writing gpx: {e}")))?;
            Ok(HttpResponse::Ok()
                .content_type("application/gpx+xml")
                .body(out))
        }
    }
}
