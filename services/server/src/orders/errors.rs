//! What can go wrong with an order, as the actors and the registry say it. The HTTP edge turns
//! each into its status and JSON body (`crate::http::error`); nothing in here knows HTTP.

use trackline_core::order::{IllegalTransition, OrderStatus};
use trackline_core::{CourierId, OrderId};

use crate::cluster::protocol::{CallError, RemoteError};

/// Why a request about an order was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// A create named an order that exists.
    #[error("order {0} already exists")]
    Exists(OrderId),
    #[error("order {0} does not exist")]
    NotFound(OrderId),
    /// Delivered or cancelled: nothing about it changes any more.
    #[error("order {order} is {status}")]
    Closed { order: OrderId, status: OrderStatus },
    /// A courier asked to change an order that is not theirs.
    #[error("order {order} is not assigned to courier {courier}")]
    NotAssigned { order: OrderId, courier: CourierId },
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// Broker mode: the node that owns the order (or homes its courier) did not answer, or
    /// answered something unreadable.
    #[error(transparent)]
    Node(#[from] CallError),
    /// Broker mode: the other node answered that it failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The history store, an actor or another node failed in a way the caller cannot fix.
    #[error("{0}")]
    Internal(String),
}
