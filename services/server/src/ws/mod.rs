//! The WebSocket sessions: the courier stream, the watch stream, the conformance echo, and the
//! machinery they share (heartbeat, token expiry, shutdown, close codes, connection slots).

pub mod courier;
#[cfg(feature = "conformance-echo")]
pub mod echo;
pub mod session;
pub mod watch;
