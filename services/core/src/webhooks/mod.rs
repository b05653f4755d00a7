//! Webhook events: what happened to an order, derived from its record at each write and stored
//! in the same commit as the change, and the endpoints that receive them (see [`store`]).

mod events;
pub mod signature;
mod store;

pub use events::{EventTracker, TrackerSettings};
pub use store::{
    DeliveryState, DeliveryStatus, Endpoint, OrderHookState, PendingHead, Put, WebhookResult,
    WebhookStore, MAX_ENDPOINTS,
};

use serde::{Deserialize, Serialize};

use crate::ids::{CourierId, OrderId};
use crate::order::{Eta, OrderRecord, OrderStatus, Position};

/// The kinds of event a receiver can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.assigned")]
    OrderAssigned,
    #[serde(rename = "order.status")]
    OrderStatus,
    #[serde(rename = "order.eta")]
    OrderEta,
    #[serde(rename = "courier.offline")]
    CourierOffline,
    #[serde(rename = "courier.online")]
    CourierOnline,
}

impl EventType {
    /// Every type, as an endpoint without a filter receives them.
    pub const ALL: [EventType; 6] = [
        EventType::OrderCreated,
        EventType::OrderAssigned,
        EventType::OrderStatus,
        EventType::OrderEta,
        EventType::CourierOffline,
        EventType::CourierOnline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order.created",
            EventType::OrderAssigned => "order.assigned",
            EventType::OrderStatus => "order.status",
            EventType::OrderEta => "order.eta",
            EventType::CourierOffline => "courier.offline",
            EventType::CourierOnline => "courier.online",
        }
    }

    /// The type named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// What a receiver needs to act on an event without calling back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub order_id: OrderId,
    pub status: OrderStatus,
    /// `order.status`: the status before this one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub previous_status: Option<OrderStatus>,
    /// When the current status took effect (unix ms).
    pub status_since_ms: i64,
    pub courier_id: Option<CourierId>,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
}

/// One event of one order; `seq` orders an order's events and never repeats within it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The `webhook-id`: the same on every attempt to deliver this event.
    pub id: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened (unix ms).
    pub at_ms: i64,
    pub data: EventData,
}

impl WebhookEvent {
    /// The event of `kind` about `record` as it is now.
    pub fn of(record: &OrderRecord, kind: EventType, seq: u64, at_ms: i64) -> Self {
        let status_since_ms = record
            .status_log
            .last()
            .map_or(record.created_at_ms, |change| change.at_ms);
        Self {
            // The creation time tells two orders apart that reused an id after a purge.
            id: format!(
                "msg_{}_{}_{}",
                record.created_at_ms,
                seq,
                record.order_id.as_str()
            ),
            seq,
            kind,
            at_ms,
            data: EventData {
                order_id: record.order_id.clone(),
                status: record.status,
                previous_status: None,
                status_since_ms,
                courier_id: record.courier_id.clone(),
                position: record.position,
                eta: record.eta,
            },
        }
    }

    pub fn order_id(&self) -> &OrderId {
        &self.data.order_id
    }

    /// The body sent to receivers: `{"type", "timestamp", "data"}`, with the timestamp in
    /// RFC 3339 as the Standard Webhooks specification shows it.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            timestamp: String,
            data: &'a EventData,
        }
        let timestamp =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.at_ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
        // unwrap: plain data (strings, numbers, options) always serialises
        serde_json::to_vec(&Body {
            kind: self.kind.as_str(),
            timestamp,
            data: &self.data,
        })
        .unwrap()
    }
}
