//! Liveness (`/healthz`) and readiness (`/readyz`, 503 once shutdown has begun or while the
//! history store cannot write, or in broker mode while the broker connection is lost).

use actix_web::HttpResponse;
use trackline_rest::{Health, HealthStatus};

use crate::http::extract::App;

/// Liveness: 200 while the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "alive", body = Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health::of(HealthStatus::Ok))
}

/// Readiness: whether a balancer should send traffic here.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "`shutting_down`, `store_failing` or `broker_lost`",
         body = Health),
    ),
)]
pub async fn readyz(app: App) -> HttpResponse {
    if *app.shutdown.borrow() {
        HttpResponse::ServiceUnavailable().json(Health::of(HealthStatus::ShuttingDown))
    } else if let Some(reason) = app.store.write_failure() {
        // A balancer should send couriers elsewhere: their fixes could not be stored here.
        HttpResponse::ServiceUnavailable().json(Health {
            status: HealthStatus::StoreFailing,
            reason: Some(reason),
        })
    } else if app.topology.broker_lost() {
        HttpResponse::ServiceUnavailable().json(Health {
            status: HealthStatus::BrokerLost,
            reason: Some("the broker connection is lost; reconnecting".into()),
        })
    } else {
        HttpResponse::Ok().json(Health::of(HealthStatus::Ready))
    }
}
