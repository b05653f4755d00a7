//! Liveness (`/healthz`) and readiness (`/readyz`, 503 once shutdown has begun).

use actix_web::HttpResponse;
use serde_json::json;

use crate::http::extract::App;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

pub async fn readyz(app: App) -> HttpResponse {
    if *app.shutdown.borrow() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    }
}
