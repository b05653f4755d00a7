//! A trackline client: a courier that never loses a fix it was given ([`Courier`]: a bounded
//! outbox, acks, resends after every reconnect, backoff with jitter, batching under the server's
//! limits, optionally kept in a file across app restarts), and a watcher that resumes where it
//! stopped ([`Watcher`]). The protocol both speak is `proto/README.md`.
//!
//! A courier:
//!
//! ```no_run
//! # async fn courier() -> Result<(), trackline_client::Error> {
//! use trackline_client::{fix_at, Courier, CourierOptions};
//!
//! let courier = Courier::connect("ws://127.0.0.1:8080/v1/courier/ws", "<courier token>",
//!     CourierOptions { outbox_file: Some("outbox.bin".into()), ..Default::default() })?;
//! courier.push(fix_at(courier.next_seq(), 1_767_000_000_000, 62.6, 29.76)).await?;
//! courier.flush(std::time::Duration::from_secs(10)).await?; // acknowledged: durable
//! # Ok(()) }
//! ```
//!
//! A watcher:
//!
//! ```no_run
//! # async fn watcher() -> Result<(), trackline_client::WatchError> {
//! use trackline_client::{WatchOptions, Watcher};
//!
//! let url = "ws://127.0.0.1:8080/v1/orders/o-1/watch";
//! let mut watcher = Watcher::connect(url, "<watch token>", WatchOptions::default()).await?;
//! while let Some(update) = watcher.next().await? {
//!     println!("{} {} {:?}", update.offset, update.status.as_str(), update.position);
//! }
//! # Ok(()) }
//! ```

/// The snippets of the protocol docs, compiled with the crate's doc tests so they stay right.
#[cfg(doctest)]
#[doc = include_str!("../../../proto/README.md")]
struct ProtocolDocs;

pub mod connect;
mod courier;
mod journal;
mod outbox;
mod update;
mod watcher;

pub use connect::{ConnectError, TokenIn};
pub use courier::{
    first_seq, fix_at, Courier, CourierEvent, CourierOptions, CourierStats, Error, OnEvent,
    RenewToken, WhenFull,
};
pub use trackline_proto::v1;
pub use update::{
    DecodeError, Encoding, Eta, EtaWindow, Position, Status, Stop, StopKind, Update, UpdateKind,
};
pub use watcher::{Resume, WatchError, WatchOptions, Watcher};
