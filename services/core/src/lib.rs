//! trackline's domain, free of actors and HTTP: ids, fixes and their validation, the GPS filter,
//! the ETA estimator, the spatial index of live couriers, tokens, the history store on sled and the webhook events stored with it.

pub mod auth;
pub mod cluster;
pub mod eta;
pub mod export;
pub mod filter;
pub mod fix;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixtures;
pub mod history;
pub mod ids;
pub mod links;
pub mod order;
pub mod plane;
pub mod plans;
pub mod spatial;
pub mod stops;
pub mod webhooks;

pub use fix::{Fix, LatLon};
pub use ids::{CourierId, IdError, OrderId};

/// Milliseconds since the unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
