//! Liveness (`/healthz`) and readiness (`/readyz`, 503 once shutdown has begun).

use actix_web::HttpResponse;
use trackline_rest::{Health, HealthStatus};

use crate::http::extract::App;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: HealthStatus::Ok,
    })
}

pub async fn readyz(app: App) -> HttpResponse {
    if *app.shutdown.borrow() {
        HttpResponse::ServiceUnavailable().json(Health {
            status: HealthStatus::ShuttingDown,
        })
    } else {
        HttpResponse::Ok().json(Health {
            status: HealthStatus::Ready,
        })
    }
}
