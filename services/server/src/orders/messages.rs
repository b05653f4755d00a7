//! The messages an order actor takes from sessions, handlers and the registry, and its answers.

use std::sync::Arc;

use actix::prelude::*;
use trackline_core::fix::{Fix, RejectCode, Rejection};
use trackline_core::order::{OrderStatus, OrderView};
use trackline_core::stops::StopsThrough;
use trackline_core::{CourierId, OrderId};

use crate::orders::errors::OrderError;

/// Fixes of the order's courier, in seq order.
#[derive(Message)]
#[rtype(result = "IngestReport")]
pub struct Ingest {
    pub courier: CourierId,
    pub fixes: Arc<[Fix]>,
    /// Why the courier's other fixes of the frame were refused by validation (counted only).
    pub invalid: Arc<[RejectCode]>,
    /// Added to the device time of each of `fixes` because the courier's clock is off (0: none).
    pub clock_offset_ms: i64,
}

/// What became of an [`Ingest`], known once it is durable.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IngestReport {
    pub rejected: Vec<(u64, Rejection)>,
    pub stored: usize,
    /// Set when the fixes could not be stored: nothing of the batch may be acked.
    pub failed: Option<IngestFailure>,
}

/// Why an ingest's fixes were not stored (sent between nodes with its report).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum IngestFailure {
    /// The history store failed to write them.
    #[error("{0}")]
    Store(String),
    /// The order's actor had moved to another thread while they were on their way.
    #[error("the order moved while these fixes were on their way")]
    Moved,
    /// The order's actor could not be reached.
    #[error("order actor: {0}")]
    Actor(String),
    /// Broker mode: the node they went to did not answer, or answered nonsense.
    #[error("{0}")]
    Node(String),
}

/// The order's durable state.
#[derive(Message)]
#[rtype(result = "OrderView")]
pub struct GetView;

/// Assign (or reassign) the courier.
#[derive(Message)]
#[rtype(result = "Result<OrderView, OrderError>")]
pub struct Assign {
    pub courier: CourierId,
}

/// Change the status, as ops or as the order's courier (`by_courier`).
#[derive(Message)]
#[rtype(result = "Result<OrderView, OrderError>")]
pub struct SetStatus {
    pub status: OrderStatus,
    pub by_courier: Option<CourierId>,
}

/// An order's courier changed (assigned, reassigned) or the order ended (`to: None`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relink {
    pub order: OrderId,
    pub from: Option<CourierId>,
    pub to: Option<CourierId>,
}

/// What a courier's plan needs of one order ([`crate::orders::order_actor::PlanEntry`]);
/// `None` when `courier` no longer carries it.
#[derive(Message)]
#[rtype(result = "Option<crate::orders::order_actor::PlanEntry>")]
pub struct GetPlanEntry {
    pub courier: CourierId,
}

/// The stops the order's courier visits up to the order's door, in its plan's order: the
/// order's ETA counts every one of them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FollowPlan(pub StopsThrough);

/// An order reached or left its pickup: the plan of `courier` changed for its other orders.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replan {
    pub courier: CourierId,
}

/// Broker mode, from the courier's home node: `courier` has sent no fix for the silence that
/// makes `courier.offline`. Answered once the event is durable (or there is none to write); the
/// error when it could not be stored.
#[derive(Message, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[rtype(result = "Result<(), String>")]
pub struct CourierSilent {
    pub courier: CourierId,
}
