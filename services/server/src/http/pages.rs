//! The live pages, embedded in the binary: the customer's map of one order (`/track/{id}`), the
//! ops map of every live courier (`/ops/map`), their scripts, the watcher module of `clients/js`
//! and the vendored Leaflet under `/assets/`, and the bbox query the ops map polls
//! (`GET /v1/couriers/within`).
//!
//! Pages take the token as `?token=` (a browser cannot set a header on a page load) and pass it
//! on as a bearer header to the API and as `?token=` to the watch stream. They are served with a
//! strict content security policy (scripts only from this server, no inline script) and
//! `Referrer-Policy: no-referrer`, so the token in the page's address never reaches a tile server.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use trackline_core::OrderId;
use trackline_rest::{CourierPosition, CouriersWithin, WithinQuery};

use crate::http::auth::{authenticate, Caller, TokenSource};
use crate::http::error::{ApiError, ApiResult};
use crate::live::WithinBox;
use crate::state::AppState;

type App = web::Data<Arc<AppState>>;

/// The pages, their assets and the tile configuration (registered by `api::routes`).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/track/{id}", web::get().to(track_page))
        .route("/ops/map", web::get().to(ops_map_page))
        .service(
            web::scope("/assets")
                .wrap(actix_web::middleware::Compress::default())
                .route("/config.js", web::get().to(config_js))
                .route("/{name:.+}", web::get().to(asset)),
        );
}

/// An embedded file: path under `/assets/`, content type, bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr, $file:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Everything under `/assets/` but `config.js`. Leaflet is vendored from its npm package
/// (tests/browser: `npm run vendor-leaflet`), with its licence.
const ASSETS: &[Asset] = &[
    asset!("track.js", JS, "track.js"),
    // The track page imports the project's JavaScript watcher as it is published, so the page
    // and every other JavaScript client follow the stream with the same code.
    Asset {
        name: "watch.js",
        content_type: JS,
        body: include_bytes!("../../../../clients/js/watch.js"),
    },
    asset!("ops.js", JS, "ops.js"),
    asset!("pages.css", CSS, "pages.css"),
    asset!("leaflet/leaflet.js", JS, "vendor/leaflet/leaflet.js"),
    asset!("leaflet/leaflet.css", CSS, "vendor/leaflet/leaflet.css"),
    asset!(
        "leaflet/LICENSE",
        "text/plain; charset=utf-8",
        "vendor/leaflet/LICENSE"
    ),
];

/// Scripts and styles from this server only; tiles from anywhere (the template is configurable);
/// fetch and WebSocket to this server only.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src * data: blob:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

fn page(html: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(html)
}

/// `GET /track/{id}?token=`: the live page for one order (watch token for it, or ops).
pub async fn track_page(
    req: HttpRequest,
    app: App,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let caller = authenticate(&req, &app.keys, TokenSource::HeaderOrQuery)?;
    let order = OrderId::new(&path)
        .map_err(|e| ApiError::BadRequest("bad_order_id", format!("order id: {e}")))?;
    caller.require_reader_of(&order)?;
    Ok(page(include_str!("../../assets/track.html")))
}

/// `GET /ops/map?token=`: every live courier in the viewport (ops token).
pub async fn ops_map_page(req: HttpRequest, app: App) -> ApiResult<HttpResponse> {
    authenticate(&req, &app.keys, TokenSource::HeaderOrQuery)?.require_ops()?;
    Ok(page(include_str!("../../assets/ops.html")))
}

/// `GET /assets/config.js`: what the pages need from the server's flags.
async fn config_js(app: App) -> HttpResponse {
    let tile_url = app
        .config
        .tile_url
        .as_deref()
        .filter(|u| !u.trim().is_empty());
    let config = json!({ "tile_url": tile_url });
    HttpResponse::Ok()
        .content_type(JS)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(format!("window.TRACKLINE_CONFIG = {config};\n"))
}

/// `GET /assets/{name}`: an embedded file.
async fn asset(path: web::Path<String>) -> ApiResult<HttpResponse> {
    let name = path.into_inner();
    let found = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("no asset {name}")))?;
    Ok(HttpResponse::Ok()
        .content_type(found.content_type)
        // Not immutable: the names carry no version, and a new binary may serve new content.
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(found.body))
}

/// The most couriers one box query returns.
const MAX_WITHIN_LIMIT: usize = 5000;
const DEFAULT_WITHIN_LIMIT: usize = 500;

/// A checked box query: `west > east` crosses the antimeridian.
fn within_box(p: &WithinQuery) -> ApiResult<WithinBox> {
    let bad = |message: String| Err(ApiError::BadRequest("bad_bbox", message));
    for (name, value) in [("south", p.south), ("north", p.north)] {
        if !(value.is_finite() && (-90.0..=90.0).contains(&value)) {
            return bad(format!(
                "{name} must be a latitude in [-90, 90], not {value}"
            ));
        }
    }
    for (name, value) in [("west", p.west), ("east", p.east)] {
        if !(value.is_finite() && (-180.0..=180.0).contains(&value)) {
            return bad(format!(
                "{name} must be a longitude in [-180, 180], not {value}"
            ));
        }
    }
    if p.south > p.north {
        return bad(format!(
            "south ({}) must not be north of north ({})",
            p.south, p.north
        ));
    }
    let limit = p.limit.unwrap_or(DEFAULT_WITHIN_LIMIT);
    if limit == 0 || limit > MAX_WITHIN_LIMIT {
        return Err(ApiError::BadRequest(
            "bad_limit",
            format!("limit must be in [1, {MAX_WITHIN_LIMIT}]"),
        ));
    }
    Ok(WithinBox {
        south: p.south,
        west: p.west,
        north: p.north,
        east: p.east,
        limit,
    })
}

/// `GET /v1/couriers/within?south=&west=&north=&east=&limit=` (ops): the live couriers in a box,
/// nearest to its centre first, at most `limit` (default 500, max 5000); `truncated` says more
/// were there. `west > east` is a box across the antimeridian.
pub async fn couriers_within(
    caller: Caller,
    app: App,
    query: web::Query<WithinQuery>,
) -> ApiResult<HttpResponse> {
    caller.require_ops()?;
    let mut ask = within_box(&query)?;
    let limit = ask.limit;
    ask.limit += 1;
    let mut found = app.live_index.send(ask).await?;
    let truncated = found.len() > limit;
    found.truncate(limit);
    let couriers = found
        .into_iter()
        .map(|n| CourierPosition {
            courier_id: n.courier_id,
            lat: n.pos.lat,
            lon: n.pos.lon,
            time_ms: n.time_ms,
        })
        .collect();
    Ok(HttpResponse::Ok().json(CouriersWithin {
        couriers,
        truncated,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(south: f64, west: f64, north: f64, east: f64, limit: Option<usize>) -> WithinQuery {
        WithinQuery {
            south,
            west,
            north,
            east,
            limit,
        }
    }

    #[test]
    fn box_parameters_are_checked() {
        assert!(within_box(&params(60.0, 24.0, 61.0, 25.0, None)).is_ok());
        assert_eq!(
            within_box(&params(60.0, 24.0, 61.0, 25.0, None))
                .unwrap()
                .limit,
            DEFAULT_WITHIN_LIMIT
        );
        // across the antimeridian
        assert!(within_box(&params(-18.0, 179.0, -17.0, -179.0, Some(1))).is_ok());
        for (p, code) in [
            (params(61.0, 24.0, 60.0, 25.0, None), "bad_bbox"),
            (params(-91.0, 24.0, 60.0, 25.0, None), "bad_bbox"),
            (params(60.0, 24.0, 90.5, 25.0, None), "bad_bbox"),
            (params(60.0, -181.0, 61.0, 25.0, None), "bad_bbox"),
            (params(60.0, 24.0, 61.0, f64::NAN, None), "bad_bbox"),
            (params(60.0, 24.0, f64::INFINITY, 25.0, None), "bad_bbox"),
            (params(60.0, 24.0, 61.0, 25.0, Some(0)), "bad_limit"),
            (
                params(60.0, 24.0, 61.0, 25.0, Some(MAX_WITHIN_LIMIT + 1)),
                "bad_limit",
            ),
        ] {
            match within_box(&p) {
                Err(e) => assert_eq!(e.code(), code),
                Ok(_) => panic!("{} {} {} {} accepted", p.south, p.west, p.north, p.east),
            }
        }
    }

    #[test]
    fn every_asset_is_named_once() {
        for (i, a) in ASSETS.iter().enumerate() {
            assert!(!a.body.is_empty(), "{}", a.name);
            assert!(
                ASSETS[i + 1..].iter().all(|b| b.name != a.name),
                "{}",
                a.name
            );
        }
    }
}
