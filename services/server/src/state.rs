//! What every request handler and session shares: the config, the token keys, the store, and the
//! addresses of the long-lived actors.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::watch;
use trackline_core::auth::TokenKeys;
use trackline_core::history::HistoryStore;

use crate::config::Config;
use crate::live::{LiveIndex, LivePositions};
use crate::orders::order_actor::OrderSettings;
use crate::orders::registry::Registry;
use crate::topology::Topology;

/// What every request handler and session shares.
pub struct AppState {
    pub config: Config,
    pub keys: TokenKeys,
    pub store: HistoryStore,
    pub(crate) registry: Addr<Registry>,
    pub(crate) live_index: Addr<LiveIndex>,
    /// The same index, for courier sessions to move their couriers in place.
    pub(crate) live_positions: LivePositions,
    pub(crate) order_settings: Arc<OrderSettings>,
    /// Turns true when the server begins to shut down; sessions then close with 1001.
    pub shutdown: watch::Receiver<bool>,
    /// Open WebSocket connections, against `--max-connections`.
    pub(crate) connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Alone, or a node of a cluster (with its mirrors of foreign orders).
    pub(crate) topology: Topology,
}
