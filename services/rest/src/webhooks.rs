//! The REST types of `/v1/webhooks`: registering receivers of events, and seeing and retrying
//! their deliveries.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The event types, as requests name them.
pub const EVENT_TYPES: &str =
    "order.created, order.assigned, order.status, order.eta, courier.offline, courier.online";

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed: an `http` or `https` URL.
    #[schema(example = "https://example.com/hooks/trackline")]
    pub url: String,
    /// The event types to receive (default: every type): `order.created`, `order.assigned`,
    /// `order.status`, `order.eta`, `courier.offline`, `courier.online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// The signing secret, `whsec_` + base64 of 24 to 64 bytes (default: a generated one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The answer of `POST /v1/webhooks` (201): the only answer that shows the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
}

/// A registered receiver, as `GET /v1/webhooks` shows it (the secret is not shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub created_at_ms: i64,
    /// The receiver answered 410 Gone: nothing is sent to it any more.
    pub disabled: bool,
}

/// The answer of `GET /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// The query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// `pending` (default) or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = "^(pending|failed)$")]
    pub status: Option<String>,
    /// At most this many (default 100, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<usize>,
}

/// One delivery of one event to one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Delivery {
    /// The `webhook-id` of the event.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub order_id: String,
    /// `pending` or `failed`.
    pub status: String,
    pub attempts: u32,
    /// The next attempt, not before this (unix ms; pending ones).
    pub next_attempt_ms: i64,
    /// Since when it is tried (unix ms).
    pub since_ms: i64,
    pub last_error: Option<String>,
}

/// The answer of `GET /v1/webhooks/{id}/deliveries`: by order, oldest first within each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
}

/// `POST /v1/webhooks/{id}/redeliver`: every failed delivery, or the one of `event_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// The answer of `POST /v1/webhooks/{id}/redeliver`: how many went back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Redelivered {
    pub redelivered: usize,
}
