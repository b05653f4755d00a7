//! The trackline server: courier and watch streams over WebSocket, one actor per active order,
//! the REST API, metrics and health, on the embedded history store.
//!
//! Where things are:
//! - `startup`: building the server (store, recovery, cluster, actors, HTTP) and running it
//!   until shutdown ([`Running`]); `handle`: [`spawn`] and [`ServerHandle`] for tests and tools.
//! - `http`: the REST resources, auth, the HTTP error type, the live pages.
//! - `ws`: the WebSocket sessions (courier, watch) and what they share.
//! - `orders`: the registry of active orders, the order actor, its fan-out to watchers.
//! - `live`: the spatial index of live couriers.
//! - `topology`: alone or one node of several, chosen at start-up; what the common code asks
//!   of broker mode.
//! - `cluster`: broker mode (NATS): the client, the protocol between nodes, serving other
//!   nodes, mirrors of foreign orders, forwarding REST calls to an order's owner.

mod cluster;
pub mod config;
mod handle;
mod http;
mod live;
mod metrics;
mod orders;
mod startup;
mod state;
mod topology;
mod webhooks;
mod ws;

pub use config::Config;
pub use handle::{spawn, ServerHandle};
pub use startup::{run_to_end, Running};
