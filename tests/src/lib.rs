//! The end-to-end harness: a real trackline server on 127.0.0.1:0 over a temporary data dir,
//! spoken to over real sockets (HTTP with reqwest, WebSockets with tokio-tungstenite).
//!
//! Every helper that waits does so with a timeout, so a broken server fails a test instead of
//! hanging it. Helpers panic with a message naming the request on anything unexpected: they are
//! for tests, where a panic is the failure report.
//!
//! One module per concept: the server's lifecycle, REST, each stream, the recorded trips, the
//! scenarios several test modules share, raw byte-level clients, a proxy that cuts connections,
//! broker mode, and a receiver of webhooks.

use std::time::Duration;

pub mod cluster;
pub mod courier;
pub mod http;
pub mod proxy;
pub mod raw;
pub mod scenarios;
pub mod server;
pub mod trips;
pub mod watch;
pub mod webhook_receiver;
pub mod ws;

pub use courier::{encode_frame, fix, walk, CourierClient};
pub use http::{NewOrder, Reply};
pub use proxy::Proxy;
pub use server::{free_port, proc_status_kib, server_binary, TestServer};
pub use trackline_rest::{HistoryFix, NearbyCourier};
pub use trips::{
    accepted, bearing_deg, data_dir, fix_pos, load_trip, trip_fixes, TripPoint, TRIP_ACCURACY_M,
};
pub use watch::{
    same_state, update_at, Eta, Position, Update, WatchError, WatchEvent, WatchProtocol, Watcher,
};
pub use webhook_receiver::{Faults, Received, Receiver};
pub use ws::{tcp_of, ws_connect, TokenIn, Ws};

/// The token secret every test server is started with.
pub const SECRET: &str = "test-secret";
/// How long any single wait (a reply, an ack, an update) may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long starting or stopping the server may take.
pub(crate) const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);
