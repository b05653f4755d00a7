//! Broker mode: REST calls on an order that another node owns go to the owner, and calls on a
//! courier's plan to the courier's home node, which keeps it.
//!
//! The ingress hashes requests by order id, but its hash is not ours (and pods come and go), so
//! any node may receive any call. A call on a foreign order is sent to its owner over the broker
//! with its method, path, token and body, replayed there against the owner's own HTTP listener,
//! and the owner's answer (status, body) is returned as is: same checks, same errors, one place
//! that decides.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use bytes::Bytes;
use trackline_core::{CourierId, OrderId};

use crate::cluster::client::Cluster;
use crate::cluster::replay::{is_forwarded, owners_answer, replay_at};
use crate::http::error::ApiError;
use crate::state::AppState;
use crate::topology::Topology;

/// The order a REST call is about, when it is one of the order endpoints (the watch stream is
/// not forwarded: a watcher is served by the node it is connected to).
fn order_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/orders/")?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    matches!(tail, "" | "assign" | "status" | "history").then_some(id)
}

/// The courier a plan call is about (`/v1/couriers/{id}/plan`): plans are kept at the courier's
/// home node.
fn plan_courier_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/couriers/")?.strip_suffix("/plan")
}

/// The order id of a create call's body, if it names a valid one.
fn order_in_body(body: &[u8]) -> Option<OrderId> {
    #[derive(serde::Deserialize)]
    struct Named {
        order_id: String,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    OrderId::new(&named.order_id).ok()
}

/// The middleware: serves calls on local orders here and forwards the others.
pub async fn to_owner(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let app = req
        .app_data::<web::Data<Arc<AppState>>>()
        .map(|data| data.get_ref().clone());
    let broker = app.as_ref().and_then(|app| match &app.topology {
        Topology::Broker(broker) => Some(broker.clone()),
        Topology::Alone => None,
    });
    let Some(broker) = broker.filter(|_| !is_forwarded(req.request())) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let cluster = &broker.cluster;
    let plan_home = plan_courier_in_path(req.path())
        .and_then(|id| CourierId::new(id).ok())
        .filter(|courier| !cluster.is_home_of(courier))
        .map(|courier| cluster.home_of(&courier).to_string());
    if let Some(home) = plan_home {
        let body = match read_body(&mut req, cluster.max_body()).await {
            Ok(body) => body,
            Err(error) => return Ok(req.into_response(error).map_into_right_body()),
        };
        return Ok(replay_to(req, cluster, &home, body).await);
    }
    let creating = req.method() == Method::POST && req.path() == "/v1/orders";
    let in_path = order_in_path(req.path()).and_then(|id| OrderId::new(id).ok());
    if !creating && in_path.as_ref().is_none_or(|order| cluster.owns(order)) {
        // Local, or not about a (valid) order: this node answers, errors included.
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    // The body is needed to forward a POST, and to find the order of a create.
    let body = match read_body(&mut req, cluster.max_body()).await {
        Ok(body) => body,
        Err(error) => return Ok(req.into_response(error).map_into_right_body()),
    };
    let order = if creating {
        order_in_body(&body)
    } else {
        in_path
    };
    let owner = match &order {
        Some(order) if !cluster.owns(order) => cluster.owner_of(order).to_string(),
        _ => {
            req.set_payload(bytes_payload(body));
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body);
        }
    };
    Ok(replay_to(req, cluster, &owner, body).await)
}

/// The body of a call that has one (POST, PUT), to forward; the error answer when it cannot
/// be read or is more than the broker carries.
async fn read_body(req: &mut ServiceRequest, max: usize) -> Result<Bytes, HttpResponse> {
    if !matches!(*req.method(), Method::POST | Method::PUT) {
        return Ok(Bytes::new());
    }
    let body = req.extract::<Bytes>().await.map_err(|e| {
        let error = if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!("request body: {e}"))
        } else {
            ApiError::BadRequest("bad_body", format!("request body: {e}"))
        };
        error.error_response()
    })?;
    if body.len() > max {
        let error = ApiError::PayloadTooLarge(format!(
            "a body of {} bytes is more than the broker carries to the node that answers ({max})",
            body.len(),
        ));
        return Err(error.error_response());
    }
    Ok(body)
}

/// `req` answered by `node`, whose answer is returned as is.
async fn replay_to<B>(
    req: ServiceRequest,
    cluster: &Cluster,
    node: &str,
    body: Bytes,
) -> ServiceResponse<EitherBody<B>> {
    let response = match replay_at(cluster, node, req.request(), body).await {
        Ok(answer) => owners_answer(&answer),
        Err(e) => ApiError::from(e).error_response(),
    };
    req.into_response(response).map_into_right_body()
}

/// A request body that has been read already, as a payload again.
fn bytes_payload(body: Bytes) -> actix_web::dev::Payload {
    let (_, mut payload) = actix_http::h1::Payload::create(true);
    payload.unread_data(body);
    actix_web::dev::Payload::from(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_order_endpoints_are_forwarded() {
        assert_eq!(order_in_path("/v1/orders/o-1"), Some("o-1"));
        assert_eq!(order_in_path("/v1/orders/o-1/assign"), Some("o-1"));
        assert_eq!(order_in_path("/v1/orders/o-1/history"), Some("o-1"));
        assert_eq!(order_in_path("/v1/orders/o-1/watch"), None);
        assert_eq!(order_in_path("/v1/orders"), None);
        assert_eq!(order_in_path("/v1/couriers/nearby"), None);
        assert_eq!(plan_courier_in_path("/v1/couriers/c-1/plan"), Some("c-1"));
        assert_eq!(plan_courier_in_path("/v1/couriers/nearby"), None);
        assert_eq!(
            order_in_body(br#"{"order_id":"o.2","destination":{}}"#),
            Some(OrderId::new("o.2").unwrap())
        );
        assert_eq!(order_in_body(br#"{"order_id":"bad id"}"#), None);
        assert_eq!(order_in_body(b"not json"), None);
    }
}
