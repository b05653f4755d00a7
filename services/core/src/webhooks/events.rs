//! Which events a write of an order causes: its record compared with the one its last events
//! were derived from, so that every change of status, courier or ETA is caught, whatever code
//! made it and whatever statuses exist.

use std::time::Duration;

use super::{EventType, OrderHookState, WebhookEvent};
use crate::ids::CourierId;
use crate::order::{OrderRecord, OrderStatus};

/// What decides when the ETA and the courier's silence are worth an event.
#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    /// An `order.eta` when the arrival time moved by at least this since the last one sent.
    pub eta_step: Duration,
    /// A `courier.offline` after this long without a fix while the order is active.
    pub courier_offline_after: Duration,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        Self {
            eta_step: Duration::from_secs(120),
            courier_offline_after: Duration::from_secs(60),
        }
    }
}

impl TrackerSettings {
    /// How often to look for a courier's silence: a quarter of the silence that counts, so
    /// `courier.offline` is at most that late.
    pub fn silence_check_every(&self) -> Duration {
        (self.courier_offline_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(15))
    }
}

/// One order's side of its events: what they were last derived from.
#[derive(Debug, Clone)]
pub struct EventTracker {
    next_seq: u64,
    status: OrderStatus,
    courier: Option<CourierId>,
    /// The arrival time of the last `order.eta` (unix ms).
    eta_sent_ms: Option<i64>,
    courier_offline: bool,
    settings: TrackerSettings,
}

impl EventTracker {
    /// Resumes from what the store holds of the order's events (`state`) and its record.
    pub fn resume(record: &OrderRecord, state: &OrderHookState, settings: TrackerSettings) -> Self {
        Self {
            next_seq: state.next_seq.max(1),
            status: record.status,
            courier: record.courier_id.clone(),
            eta_sent_ms: state.eta_sent_ms,
            courier_offline: state.courier_offline,
            settings,
        }
    }

    fn next(&mut self, record: &OrderRecord, kind: EventType, at_ms: i64) -> WebhookEvent {
        let event = WebhookEvent::of(record, kind, self.next_seq, at_ms);
        self.next_seq += 1;
        event
    }

    /// The events of `record`'s changes since the last call, oldest first.
    pub fn changes(&mut self, record: &OrderRecord, now_ms: i64) -> Vec<WebhookEvent> {
        let mut events = Vec::new();
        if record.courier_id != self.courier {
            self.courier = record.courier_id.clone();
            if record.courier_id.is_some() {
                events.push(self.next(record, EventType::OrderAssigned, now_ms));
            }
        }
        if record.status != self.status {
            let previous = std::mem::replace(&mut self.status, record.status);
            let mut event = self.next(record, EventType::OrderStatus, now_ms);
            event.data.previous_status = Some(previous);
            events.push(event);
        }
        if let Some(eta) = record.eta.filter(|_| !record.status.is_final()) {
            let step_ms = i64::try_from(self.settings.eta_step.as_millis()).unwrap_or(i64::MAX);
            let moved = self
                .eta_sent_ms
                .is_none_or(|sent| (eta.arrive_at_ms - sent).abs() >= step_ms);
            if moved {
                self.eta_sent_ms = Some(eta.arrive_at_ms);
                events.push(self.next(record, EventType::OrderEta, now_ms));
            }
        }
        events
    }

    /// A fix came from the courier: `courier.online` if it had gone silent.
    pub fn heard_from_courier(
        &mut self,
        record: &OrderRecord,
        now_ms: i64,
    ) -> Option<WebhookEvent> {
        if !std::mem::take(&mut self.courier_offline) {
            return None;
        }
        Some(self.next(record, EventType::CourierOnline, now_ms))
    }

    /// `courier.offline` when the order's courier has been silent for too long while the order
    /// is active (once, until it is heard from again).
    pub fn silence(
        &mut self,
        record: &OrderRecord,
        silent_for: Duration,
        now_ms: i64,
    ) -> Option<WebhookEvent> {
        let carrying = record.courier_id.is_some() && record.status.takes_fixes();
        if self.courier_offline || !carrying || silent_for < self.settings.courier_offline_after {
            return None;
        }
        self.courier_offline = true;
        Some(self.next(record, EventType::CourierOffline, now_ms))
    }

    /// Forgets the events derived since `before` was cloned (their write failed): the next
    /// write derives them again.
    pub fn roll_back(&mut self, before: EventTracker) {
        // Seqs only move forward: a receiver may not see one reused for another event.
        let next_seq = self.next_seq;
        *self = before;
        self.next_seq = next_seq;
    }

    pub fn settings(&self) -> TrackerSettings {
        self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::LatLon;
    use crate::order::Eta;
    use crate::OrderId;

    fn record() -> OrderRecord {
        OrderRecord::new(
            OrderId::new("o-1").unwrap(),
            LatLon::new(1.0, 2.0),
            None,
            None,
            None,
            1000,
        )
    }

    fn kinds(events: &[WebhookEvent]) -> Vec<EventType> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn every_status_change_is_an_event_with_the_previous_status() {
        let mut record = record();
        let mut tracker =
            EventTracker::resume(&record, &OrderHookState::default(), Default::default());
        assert!(tracker.changes(&record, 1).is_empty());
        record.courier_id = Some(CourierId::new("c-1").unwrap());
        record.set_status(OrderStatus::Assigned, 2000);
        let events = tracker.changes(&record, 2000);
        assert_eq!(
            kinds(&events),
            [EventType::OrderAssigned, EventType::OrderStatus]
        );
        assert_eq!(events[1].data.previous_status, Some(OrderStatus::Created));
        assert_eq!(events[1].data.status, OrderStatus::Assigned);
        assert_eq!(events[1].data.status_since_ms, 2000);
        assert_eq!(events[1].seq, events[0].seq + 1);
        record.set_status(OrderStatus::PickedUp, 3000);
        record.set_status(OrderStatus::Arriving, 3500);
        let events = tracker.changes(&record, 3500);
        assert_eq!(kinds(&events), [EventType::OrderStatus]);
        assert_eq!(events[0].data.previous_status, Some(OrderStatus::Assigned));
    }

    #[test]
    fn eta_events_only_when_the_arrival_moved_by_the_step() {
        let mut record = record();
        let mut tracker =
            EventTracker::resume(&record, &OrderHookState::default(), Default::default());
        let mut eta_at = |tracker: &mut EventTracker, arrive_at_ms| {
            record.eta = Some(Eta {
                seconds: 300,
                arrive_at_ms,
                window: None,
            });
            kinds(&tracker.changes(&record, 0))
        };
        assert_eq!(eta_at(&mut tracker, 600_000), [EventType::OrderEta]);
        assert!(eta_at(&mut tracker, 600_000 + 119_000).is_empty());
        assert_eq!(
            eta_at(&mut tracker, 600_000 + 120_000),
            [EventType::OrderEta]
        );
        assert!(eta_at(&mut tracker, 600_000 + 1_000).is_empty());
        assert_eq!(eta_at(&mut tracker, 600_000), [EventType::OrderEta]);
    }

    #[test]
    fn offline_once_while_carrying_then_online_when_heard_from() {
        let mut record = record();
        let mut tracker =
            EventTracker::resume(&record, &OrderHookState::default(), Default::default());
        let long = Duration::from_secs(61);
        assert!(tracker.silence(&record, long, 0).is_none(), "no courier");
        record.courier_id = Some(CourierId::new("c-1").unwrap());
        record.set_status(OrderStatus::Assigned, 0);
        tracker.changes(&record, 0);
        assert!(tracker
            .silence(&record, Duration::from_secs(59), 0)
            .is_none());
        assert_eq!(
            tracker.silence(&record, long, 0).map(|e| e.kind),
            Some(EventType::CourierOffline)
        );
        assert!(tracker.silence(&record, long, 0).is_none(), "only once");
        assert_eq!(
            tracker.heard_from_courier(&record, 0).map(|e| e.kind),
            Some(EventType::CourierOnline)
        );
        assert!(tracker.heard_from_courier(&record, 0).is_none());
    }
}
