//! An order's lifecycle and the state that is persisted, served over REST and pushed to watchers.

use serde::{Deserialize, Serialize};

use crate::eta::EtaEstimate;
use crate::fix::{Fix, LatLon};
use crate::ids::{CourierId, OrderId};
use crate::stops::{EtaWindow, Pickup, StopKind, StopView};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Created,
    Assigned,
    /// The courier is at the pickup (set by the server from its position).
    AtPickup,
    PickedUp,
    Arriving,
    Delivered,
    Cancelled,
}

/// Why a status change was refused (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from} cannot become {to}")]
pub struct IllegalTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "created",
            OrderStatus::Assigned => "assigned",
            OrderStatus::AtPickup => "at_pickup",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::Arriving => "arriving",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Delivered and cancelled orders never change again.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled)
    }

    /// Whether fixes of the assigned courier are routed to the order.
    pub fn takes_fixes(self) -> bool {
        matches!(
            self,
            OrderStatus::Assigned
                | OrderStatus::AtPickup
                | OrderStatus::PickedUp
                | OrderStatus::Arriving
        )
    }

    /// The wire enum of `OrderUpdate.status`.
    pub fn to_proto(self) -> trackline_proto::v1::OrderStatus {
        use trackline_proto::v1::OrderStatus as P;
        match self {
            OrderStatus::Created => P::Created,
            OrderStatus::Assigned => P::Assigned,
            OrderStatus::AtPickup => P::AtPickup,
            OrderStatus::PickedUp => P::PickedUp,
            OrderStatus::Arriving => P::Arriving,
            OrderStatus::Delivered => P::Delivered,
            OrderStatus::Cancelled => P::Cancelled,
        }
    }

    /// Checks a status change asked for through the API (`at_pickup` and `arriving` are set by
    /// the server alone).
    ///
    /// # Errors
    /// [`IllegalTransition`] when `to` cannot follow `self`.
    pub fn request(self, to: OrderStatus) -> Result<OrderStatus, IllegalTransition> {
        use OrderStatus::*;
        let legal = match to {
            PickedUp => matches!(self, Assigned | AtPickup | PickedUp),
            Delivered => matches!(self, PickedUp | Arriving | Delivered),
            Cancelled => !self.is_final() || self == Cancelled,
            Created | Assigned | AtPickup | Arriving => false,
        };
        if legal {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live position shown for an order (JSON as in the protocol; unknowns are null).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    pub time_ms: i64,
    #[schema(required = true)]
    pub speed_mps: Option<f32>,
    #[schema(required = true)]
    pub heading_deg: Option<f32>,
    #[schema(required = true)]
    pub accuracy_m: Option<f32>,
}

impl Position {
    /// The position shown for `fix`, placed at `shown` (the filter may hold a stopped marker still).
    pub fn shown(fix: &Fix, shown: LatLon) -> Self {
        Self {
            lat: shown.lat,
            lon: shown.lon,
            time_ms: fix.time_ms,
            speed_mps: fix.speed_mps,
            heading_deg: fix.heading_deg,
            accuracy_m: fix.accuracy_m,
        }
    }

    pub fn lat_lon(&self) -> LatLon {
        LatLon::new(self.lat, self.lon)
    }

    pub fn to_proto(&self) -> trackline_proto::v1::Position {
        trackline_proto::v1::Position {
            time_ms: self.time_ms,
            lat_e7: trackline_proto::to_e7(self.lat),
            lon_e7: trackline_proto::to_e7(self.lon),
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
            accuracy_m: self.accuracy_m,
        }
    }
}

/// The published estimate of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Eta {
    pub seconds: i64,
    pub arrive_at_ms: i64,
    /// The arrival window at the order's door (absent on the ETA of a stop, and on a state
    /// stored before windows existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<EtaWindow>,
}

impl From<EtaEstimate> for Eta {
    fn from(e: EtaEstimate) -> Self {
        Self {
            seconds: e.seconds,
            arrive_at_ms: e.arrive_at_ms,
            window: None,
        }
    }
}

impl Eta {
    /// The ETA of an arrival at `arrive_at_ms` as seen at `now_ms` (device time).
    pub fn arriving(now_ms: i64, arrive_at_ms: i64) -> Self {
        Self {
            seconds: (arrive_at_ms - now_ms) / 1000,
            arrive_at_ms,
            window: None,
        }
    }

    pub fn to_proto(&self) -> trackline_proto::v1::Eta {
        trackline_proto::v1::Eta {
            seconds: self.seconds,
            arrive_at_ms: self.arrive_at_ms,
            window: self.window.map(|w| trackline_proto::v1::EtaWindow {
                earliest_ms: w.earliest_ms,
                latest_ms: w.latest_ms,
            }),
        }
    }
}

/// Everything the server keeps about one order; persisted in the `orders` tree on every change,
/// so that a restart resumes its position, ETA, offset and epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub courier_id: Option<CourierId>,
    pub destination: LatLon,
    /// The planned route, if the order has one. Stored once, apart from the record that is
    /// rewritten on every update (see the history store), so it is skipped here.
    #[serde(skip)]
    pub route: Option<Vec<LatLon>>,
    pub promised_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Changes when the order's update stream lost its history; resume is only possible within one.
    pub epoch: String,
    /// The offset of the latest update of the order's stream.
    pub offset: u64,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    /// The highest courier seq applied to this order: a resent fix at or below it is a duplicate.
    pub last_seq: u64,
    /// Where the courier collects the order first, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup: Option<Pickup>,
    /// The handover at the destination, seconds (what it costs the drops planned after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_dwell_s: Option<f64>,
    /// The estimated arrival at the pickup, while it is ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_eta: Option<Eta>,
    /// Every status the order has had and when it began (unix ms; server time, but the fix's
    /// device time for `arriving`, which a fix causes), oldest first.
    #[serde(default)]
    pub status_log: Vec<StatusChange>,
    /// How many of the courier's fixes were refused while it carried this order, by code.
    #[serde(default)]
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// The courier's fixes whose times were corrected for a device clock that was off.
    #[serde(default)]
    pub clock: ClockAdjustments,
}

/// How many of an order's fixes had their device time corrected, and by how much from which
/// seq on: the stored time of fix `seq` is its device time plus the offset of the last entry
/// whose `from_seq` is at most `seq`, so the device time is kept without changing how fixes
/// are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClockAdjustments {
    /// Fixes stored with a corrected time.
    pub fixes: u64,
    /// The offsets applied, oldest first; an entry with offset 0 marks the return to the
    /// device's own clock. The newest [`MAX_CLOCK_OFFSETS`] are kept.
    pub offsets: Vec<ClockOffset>,
}

/// From fix `from_seq` on, `offset_ms` was added to the device time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClockOffset {
    pub from_seq: u64,
    pub offset_ms: i64,
}

/// Entries of [`ClockAdjustments::offsets`] kept: an order whose courier's clock changes more
/// often than this has a phone to replace, and the record must stay small.
pub const MAX_CLOCK_OFFSETS: usize = 32;

impl ClockAdjustments {
    /// Notes `fixes` new fixes from `first_seq` on, stored with `offset_ms` added; true when
    /// anything changed (the record must then be written whole).
    pub fn note(&mut self, first_seq: u64, fixes: u64, offset_ms: i64) -> bool {
        let current = self.offsets.last().map_or(0, |o| o.offset_ms);
        let changed = current != offset_ms;
        if changed {
            if self.offsets.len() == MAX_CLOCK_OFFSETS {
                self.offsets.remove(0);
            }
            self.offsets.push(ClockOffset {
                from_seq: first_seq,
                offset_ms,
            });
        }
        if offset_ms != 0 {
            self.fixes += fixes;
        }
        changed || (offset_ms != 0 && fixes > 0)
    }
}

impl OrderRecord {
    /// A record that stands in for order `order_id`'s while the real one is elsewhere (on its
    /// way into an actor, or handed to another): no courier, no route, at 0/0.
    pub fn stand_in(order_id: OrderId) -> Self {
        Self::new(order_id, LatLon::new(0.0, 0.0), None, None, None, 0)
    }

    /// A new order as `POST /v1/orders` creates it.
    pub fn new(
        order_id: OrderId,
        destination: LatLon,
        courier_id: Option<CourierId>,
        route: Option<Vec<LatLon>>,
        promised_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Self {
        let status = if courier_id.is_some() {
            OrderStatus::Assigned
        } else {
            OrderStatus::Created
        };
        Self {
            order_id,
            status,
            courier_id,
            destination,
            route,
            promised_at_ms,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            epoch: new_epoch(),
            offset: 0,
            position: None,
            eta: None,
            last_seq: 0,
            pickup: None,
            destination_dwell_s: None,
            pickup_eta: None,
            status_log: vec![StatusChange {
                status,
                at_ms: now_ms,
            }],
            rejected: Default::default(),
            clock: Default::default(),
        }
    }

    /// Moves to `status` at `at_ms`, logging the change (a no-op when the status is unchanged).
    pub fn set_status(&mut self, status: OrderStatus, at_ms: i64) {
        if self.status != status {
            self.status = status;
            self.status_log.push(StatusChange { status, at_ms });
        }
    }

    /// Counts one refused fix of the order's courier.
    pub fn count_rejected(&mut self, code: crate::fix::RejectCode) {
        *self.rejected.entry(code.as_str().to_string()).or_default() += 1;
    }

    /// The order state of the protocol (`GET /v1/orders/{id}` and each watcher update).
    pub fn view(&self) -> OrderView {
        OrderView {
            order_id: self.order_id.clone(),
            status: self.status,
            courier_id: self.courier_id.clone(),
            destination: self.destination,
            position: self.position,
            eta: self.eta,
            offset: self.offset,
            epoch: self.epoch.clone(),
            updated_at_ms: self.updated_at_ms,
            promised_at_ms: self.promised_at_ms,
            stops: self.stops(),
        }
    }

    /// When the order's status first became one of `statuses` (unix ms).
    fn first_reached(&self, statuses: &[OrderStatus]) -> Option<i64> {
        self.status_log
            .iter()
            .find(|c| statuses.contains(&c.status))
            .map(|c| c.at_ms)
    }

    /// The order's stops as its state shows them: the pickup (if any), then the destination.
    /// A stop is reached when the server saw the courier there, or when the status moved past
    /// it (a courier who marked the order picked up from afar).
    pub fn stops(&self) -> Vec<StopView> {
        use OrderStatus::*;
        let mut stops = Vec::with_capacity(2);
        if let Some(pickup) = &self.pickup {
            let reached_at_ms = self.first_reached(&[AtPickup, PickedUp, Arriving, Delivered]);
            stops.push(StopView {
                kind: StopKind::Pickup,
                lat: pickup.at.lat,
                lon: pickup.at.lon,
                eta: self.pickup_eta.filter(|_| reached_at_ms.is_none()),
                reached_at_ms,
            });
        }
        let reached_at_ms = self.first_reached(&[Arriving, Delivered]);
        stops.push(StopView {
            kind: StopKind::Dropoff,
            lat: self.destination.lat,
            lon: self.destination.lon,
            eta: self
                .eta
                .filter(|_| reached_at_ms.is_none())
                .map(|e| Eta { window: None, ..e }),
            reached_at_ms,
        });
        stops
    }
}

/// One entry of an order's status log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusChange {
    pub status: OrderStatus,
    pub at_ms: i64,
}

/// A fresh epoch id: random, so that two lives of an order never share one.
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The protocol's order state, as JSON and as the protobuf `OrderUpdate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: OrderId,
    pub status: OrderStatus,
    #[schema(required = true)]
    pub courier_id: Option<CourierId>,
    pub destination: LatLon,
    #[schema(required = true)]
    pub position: Option<Position>,
    #[schema(required = true)]
    pub eta: Option<Eta>,
    pub offset: u64,
    pub epoch: String,
    pub updated_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised_at_ms: Option<i64>,
    /// The order's stops in visiting order: its pickup (if it has one), then its destination.
    #[serde(default)]
    pub stops: Vec<StopView>,
}

impl OrderView {
    /// The protobuf form, for `trackline.v1.proto` watchers.
    pub fn to_update(&self, recovered: bool) -> trackline_proto::v1::OrderUpdate {
        trackline_proto::v1::OrderUpdate {
            order_id: self.order_id.to_string(),
            offset: self.offset,
            epoch: self.epoch.clone(),
            status: self.status.to_proto() as i32,
            position: self.position.map(|p| p.to_proto()),
            eta: self.eta.map(|e| e.to_proto()),
            recovered,
            stops: self.stops.iter().map(StopView::to_proto).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn the_lifecycle_moves_forward_only() {
        assert_eq!(Assigned.request(PickedUp), Ok(PickedUp));
        assert_eq!(PickedUp.request(Delivered), Ok(Delivered));
        assert_eq!(Arriving.request(Delivered), Ok(Delivered));
        assert_eq!(Created.request(Cancelled), Ok(Cancelled));
        assert!(Created.request(PickedUp).is_err());
        assert!(Assigned.request(Delivered).is_err());
        assert!(Delivered.request(Cancelled).is_err());
        assert!(Cancelled.request(PickedUp).is_err());
        assert!(
            PickedUp.request(Arriving).is_err(),
            "arriving is the server's call"
        );
        assert_eq!(AtPickup.request(PickedUp), Ok(PickedUp));
        assert_eq!(AtPickup.request(Cancelled), Ok(Cancelled));
        assert!(Assigned.request(AtPickup).is_err(), "so is at_pickup");
        assert!(AtPickup.request(Delivered).is_err());
        assert!(AtPickup.takes_fixes());
    }

    #[test]
    fn state_serialises_as_the_protocol_says() {
        let rec = OrderRecord::new(
            OrderId::new("o1").unwrap(),
            LatLon::new(1.0, 2.0),
            None,
            None,
            None,
            5,
        );
        let json = serde_json::to_value(rec.view()).unwrap();
        assert_eq!(json["status"], "created");
        assert_eq!(json["destination"]["lat"], 1.0);
        assert!(
            json["position"].is_null() && json["eta"].is_null() && json["courier_id"].is_null()
        );
        assert_eq!(json["offset"], 0);
        assert_eq!(json["epoch"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn clock_adjustments_log_each_change_of_offset_and_count_corrected_fixes() {
        let mut clock = ClockAdjustments::default();
        assert!(
            !clock.note(1, 5, 0),
            "the device clock alone changes nothing"
        );
        assert!(clock.note(6, 3, 7_200_000));
        assert!(clock.note(9, 2, 7_200_000), "the count changed");
        assert!(clock.note(11, 4, 0));
        assert!(!clock.note(15, 4, 0));
        assert_eq!(clock.fixes, 5);
        let log: Vec<(u64, i64)> = clock
            .offsets
            .iter()
            .map(|o| (o.from_seq, o.offset_ms))
            .collect();
        assert_eq!(log, [(6, 7_200_000), (11, 0)]);
        for seq in 0..100 {
            clock.note(100 + seq, 1, seq as i64 + 1);
        }
        assert_eq!(clock.offsets.len(), MAX_CLOCK_OFFSETS);
        assert_eq!(clock.offsets.last().unwrap().offset_ms, 100);
    }

    #[test]
    fn a_record_stored_before_clock_adjustments_still_reads() {
        let rec = OrderRecord::new(
            OrderId::new("o").unwrap(),
            LatLon::new(1.0, 2.0),
            None,
            None,
            None,
            5,
        );
        let mut json = serde_json::to_value(&rec).unwrap();
        json.as_object_mut().unwrap().remove("clock");
        let read: OrderRecord = serde_json::from_value(json).unwrap();
        assert_eq!(read.clock, ClockAdjustments::default());
    }
}
