//! The checks of an order's pickup in `POST /v1/orders`: each bad part is a 400 with its code.

use trackline_core::stops::Pickup;
use trackline_rest::PickupRequest;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::lat_lon;
use crate::http::orders::{dwell, planned_route};

/// 2000-01-01T00:00:00Z: a `ready_at_ms` before it is a clock or a unit gone wrong.
const EARLIEST_READY_AT_MS: i64 = 946_684_800_000;

/// How far ahead an order may be ready: a day (further is a mistake, not a plan).
const MAX_READY_AHEAD_MS: i64 = 24 * 3600 * 1000;

/// The pickup of a new order, checked against `now_ms`.
///
/// # Errors
/// `bad_coordinates` (its position), `bad_pickup` (its route), `bad_dwell`, `bad_ready_at`.
pub fn pickup(request: &PickupRequest, now_ms: i64) -> ApiResult<Pickup> {
    let at = lat_lon(request.lat, request.lon, "pickup")?;
    let route = planned_route(request.route.as_deref(), "bad_pickup", "pickup route")?;
    let dwell_s = request.dwell_s.map(|d| dwell(d, "pickup")).transpose()?;
    if let Some(ready) = request.ready_at_ms {
        if !(EARLIEST_READY_AT_MS..=now_ms + MAX_READY_AHEAD_MS).contains(&ready) {
            return Err(ApiError::BadRequest(
                "bad_ready_at",
                format!(
                    "pickup: ready_at_ms {ready} is not between 2000-01-01 and a day from now \
                     ({}); it is unix milliseconds",
                    now_ms + MAX_READY_AHEAD_MS
                ),
            ));
        }
    }
    Ok(Pickup {
        at,
        ready_at_ms: request.ready_at_ms,
        dwell_s,
        route,
    })
}
