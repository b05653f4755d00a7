//! The messages between nodes in broker mode: what one node asks another (the subject's last
//! token and each request's JSON body), the answers, the notes sent without waiting, and the
//! headers of a forwarded REST call. Both sides of every exchange read their types here.

use serde::{Deserialize, Serialize};
use trackline_core::fix::{Fix, RejectCode};
use trackline_core::order::OrderView;
use trackline_core::stops::StopsThrough;
use trackline_core::{CourierId, LatLon, OrderId};

use crate::orders::fanout::Resume;
use crate::orders::frames::WireFrame;
use crate::orders::messages::CourierSilent;

/// Headers of a forwarded REST call and of its answer.
pub mod headers {
    pub const METHOD: &str = "trackline-method";
    pub const PATH: &str = "trackline-path";
    pub const STATUS: &str = "trackline-status";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const AUTHORIZATION: &str = "authorization";
    pub const NODE: &str = "x-trackline-node";
    /// Marks a request a node sends itself for another: serve it here, never forward it again.
    pub const FORWARDED: &str = "x-trackline-forwarded";
}

/// What one node asks of another (the last token of the subject).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A REST call on an order the receiver owns; headers carry method and path.
    Http,
    /// A courier's fixes, to the courier's home node.
    Route,
    /// A courier's fixes for one order, to the order's owner.
    Ingest,
    /// An order was (un)assigned to a courier, to the courier's home node.
    Link,
    /// Start, resume or keep up a watch of an order, to its owner.
    Watch,
    /// The asking node has no watchers of the order any more (no reply).
    Unwatch,
    /// The next frame of an order that the receiver watches (no reply).
    Update,
    /// A courier went silent while carrying an order the receiver owns, from its home node.
    Silent,
    /// What a courier's plan needs of an order the receiver owns, from the courier's home node.
    PlanEntry,
    /// The stops before an order's door in its courier's plan, to the order's owner; the reply
    /// (empty) once the order has them queued.
    FollowPlan,
    /// A courier's plan may have changed, to the courier's home node (no reply).
    Replan,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Http,
        Kind::Route,
        Kind::Ingest,
        Kind::Link,
        Kind::Watch,
        Kind::Unwatch,
        Kind::Update,
        Kind::Silent,
        Kind::PlanEntry,
        Kind::FollowPlan,
        Kind::Replan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Route => "route",
            Kind::Ingest => "ingest",
            Kind::Link => "link",
            Kind::Watch => "watch",
            Kind::Unwatch => "unwatch",
            Kind::Update => "update",
            Kind::Silent => "silent",
            Kind::PlanEntry => "plan_entry",
            Kind::FollowPlan => "follow_plan",
            Kind::Replan => "replan",
        }
    }

    pub fn parse(token: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == token)
    }
}

/// A courier's validated fixes, forwarded to its home node.
#[derive(Debug, Serialize, Deserialize)]
pub struct RouteCall {
    pub courier: CourierId,
    pub fixes: Vec<Fix>,
    pub invalid: Vec<RejectCode>,
    /// Added to the fixes' device times (absent from a node that never corrects: 0).
    #[serde(default)]
    pub clock_offset_ms: i64,
}

/// A courier's fixes for one order, forwarded to the order's owner.
#[derive(Debug, Serialize, Deserialize)]
pub struct IngestCall {
    pub order: OrderId,
    pub courier: CourierId,
    pub fixes: Vec<Fix>,
    pub invalid: Vec<RejectCode>,
    /// Added to the fixes' device times (absent from a node that never corrects: 0).
    #[serde(default)]
    pub clock_offset_ms: i64,
}

/// An assignment change, to the courier's home node.
#[derive(Debug, Serialize, Deserialize)]
pub struct LinkCall {
    pub courier: CourierId,
    pub order: OrderId,
    pub linked: bool,
}

/// A courier's silence, from its home node to the owner of one of its orders.
#[derive(Debug, Serialize, Deserialize)]
pub struct SilentCall {
    pub order: OrderId,
    pub silent: CourierSilent,
}

/// From a courier's home node: what its plan needs of `order`, which the receiver owns.
#[derive(Debug, Serialize, Deserialize)]
pub struct PlanEntryCall {
    pub order: OrderId,
    pub courier: CourierId,
}

/// From a courier's home node: the stops before `order`'s door in the courier's plan.
#[derive(Debug, Serialize, Deserialize)]
pub struct FollowPlanCall {
    pub order: OrderId,
    pub through: StopsThrough,
}

/// To a courier's home node: its plan may have changed (an order reached or left its pickup,
/// or started its actor).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplanNote {
    pub courier: CourierId,
}

/// A node's request to watch (or keep watching) an order from its owner.
#[derive(Debug, Serialize, Deserialize)]
pub struct WatchCall {
    pub order: OrderId,
    /// The node that will receive the order's updates.
    pub node: String,
    pub resume: Option<Resume>,
}

/// The owner's answer to a [`WatchCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum WatchAnswer {
    /// The order is active: what to send first; updates follow to the asking node.
    Live(Vec<WireFrame>),
    /// The order has ended: its final state.
    Ended(OrderView),
    NotFound,
}

/// An order's next frame, or the end of a node's interest in it.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateNote {
    pub order: OrderId,
    pub frame: WireFrame,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UnwatchNote {
    pub order: OrderId,
    pub node: String,
}

/// A failure on the node that was asked, as it travels back to the node that asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoteError {
    /// Its store failed (or the task writing to it did).
    #[error("{0}")]
    Store(String),
}

/// Why a call to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {0} did not answer: {1}")]
    Unavailable(String, String),
    #[error("node {0} answered something unreadable: {1}")]
    BadAnswer(String, String),
}

/// Live positions shared between nodes.
#[derive(actix::Message, Debug, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Positions {
    /// The node that sent them (which ignores its own broadcast).
    pub from: String,
    pub positions: Vec<Upsert>,
}

/// A courier's latest live position, as shared between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Upsert {
    pub courier: CourierId,
    pub pos: LatLon,
    pub time_ms: i64,
}
