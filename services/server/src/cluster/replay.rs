//! Broker mode: REST calls that one node has another answer as if it had been asked, over the
//! broker, and their answers as this node's responses.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::cluster::client::Cluster;
use crate::cluster::protocol::{headers, CallError, Kind};
use crate::http::error::ApiError;

/// Whether `req` is a call that another node replays here (which this node answers itself).
pub fn is_forwarded(req: &HttpRequest) -> bool {
    req.headers().contains_key(headers::FORWARDED)
}

/// A call for another node to answer: method, path and query.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: actix_web::http::Method,
    pub path: String,
}

impl Call {
    /// The call `req` is.
    pub fn of(req: &HttpRequest) -> Self {
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.path().to_string(), |p| p.as_str().to_string());
        Self {
            method: req.method().clone(),
            path,
        }
    }
}

/// Has `node` answer `req` (method, path and query, token, `body`) as if it had been asked.
pub async fn replay_at(
    cluster: &Cluster,
    node: &str,
    req: &HttpRequest,
    body: Bytes,
) -> Result<async_nats::Message, CallError> {
    replay_as(cluster, node, req, &Call::of(req), body).await
}

/// Has `node` answer `call`, made with `req`'s token and content type, as if it had been asked.
pub async fn replay_as(
    cluster: &Cluster,
    node: &str,
    req: &HttpRequest,
    call: &Call,
    body: Bytes,
) -> Result<async_nats::Message, CallError> {
    let mut forwarded = HeaderMap::new();
    forwarded.insert(headers::METHOD, call.method.as_str());
    forwarded.insert(headers::PATH, call.path.as_str());
    for (name, header_name) in [
        (headers::AUTHORIZATION, header::AUTHORIZATION),
        (headers::CONTENT_TYPE, header::CONTENT_TYPE),
    ] {
        if let Some(value) = req.headers().get(header_name).and_then(|v| v.to_str().ok()) {
            forwarded.insert(name, value);
        }
    }
    cluster.request(node, Kind::Http, forwarded, body).await
}

/// For the calls about the whole fleet: the same call (with `body`) answered by
/// every other node, each 200 answer parsed. The error is this call's response: 503 naming a
/// node that does not answer, or another node's own error as it gave it.
pub async fn ask_others<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    req: &HttpRequest,
    call: &Call,
    body: Bytes,
) -> Result<Vec<T>, HttpResponse> {
    let asked = cluster
        .others()
        .map(|node| replay_as(cluster, node, req, call, body.clone()));
    let mut parsed = Vec::new();
    for answer in futures_util::future::join_all(asked).await {
        let answer = answer.map_err(|e| ApiError::from(e).error_response())?;
        if answer_status(&answer) != StatusCode::OK {
            return Err(owners_answer(&answer));
        }
        let answer = serde_json::from_slice(&answer.payload).map_err(|e| {
            ApiError::Internal(format!("another node's answer to {}: {e}", req.path()))
                .error_response()
        })?;
        parsed.push(answer);
    }
    Ok(parsed)
}

/// The status of another node's answer (502 when it carries none).
fn answer_status(answer: &async_nats::Message) -> StatusCode {
    answer
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::STATUS))
        .and_then(|s| s.as_str().parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The owner's (or another node's) answer as this node's response.
pub fn owners_answer(answer: &async_nats::Message) -> HttpResponse {
    let header = |name: &str| answer.headers.as_ref().and_then(|h| h.get(name));
    let mut response = HttpResponse::build(answer_status(answer));
    if let Some(content_type) = header(headers::CONTENT_TYPE) {
        response.insert_header((header::CONTENT_TYPE, content_type.as_str()));
    }
    if let Some(node) = header(headers::NODE) {
        response.insert_header((headers::NODE, node.as_str()));
    }
    response.body(answer.payload.clone())
}
