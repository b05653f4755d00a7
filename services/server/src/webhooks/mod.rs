//! Webhook delivery: a thread of its own that sends each endpoint its pending events, per order
//! in order, and records each outcome in the store (see [`trackline_core::webhooks`]).

mod dispatcher;

pub use dispatcher::{start, DispatchSettings, Dispatcher};
