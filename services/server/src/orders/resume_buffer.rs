//! The resume buffer of one order's stream: the last updates, kept as what changes from one to
//! the next (72 bytes an update), so a watcher that reconnects gets what it missed.
//!
//! Bounded by count, age and bytes, so what an active order holds does not grow with time
//! (DESIGN.md, "What a fix may cost"). Longer than most files because over half of it is its
//! tests, which pin the replay to exactly what was published.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use trackline_core::order::{Eta, OrderStatus, OrderView, Position};
use trackline_core::stops::{EtaWindow, StopKind, StopView};
use trackline_core::{CourierId, LatLon, OrderId};

use crate::config::Config;

/// What bounds an order's resume buffer. A resume from further back than it holds gets a
/// snapshot with `recovered: false`, as the protocol says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeLimits {
    /// At most this many updates (`--resume-buffer`); 0 keeps none.
    pub updates: usize,
    /// None published longer ago than this (`--resume-max-age-s`).
    pub max_age: Duration,
    /// At most this many bytes per order (`--resume-max-bytes`).
    pub max_bytes: usize,
}

impl ResumeLimits {
    /// The limits the server was started with.
    pub fn from_config(config: &Config) -> Self {
        Self {
            updates: config.resume_buffer,
            max_age: Duration::from_secs(config.resume_max_age_s),
            max_bytes: config.resume_max_bytes,
        }
    }

    /// How many updates fit both the count and the byte budget.
    fn capacity(&self) -> usize {
        self.updates.min(self.max_bytes / ResumeBuffer::ENTRY_BYTES)
    }
}

impl Default for ResumeLimits {
    /// The flags' defaults: 64 updates, 60 s, 8 KiB.
    fn default() -> Self {
        Self {
            updates: 64,
            max_age: Duration::from_secs(60),
            max_bytes: 8 * 1024,
        }
    }
}

// What the help text and the byte budget's default promise: an update takes 72 bytes.
const _: () = assert!(ResumeBuffer::ENTRY_BYTES == 72);

/// Which optional parts of an update an [`Entry`] has.
const HAS_POSITION: u8 = 1;
const HAS_SPEED: u8 = 1 << 1;
const HAS_HEADING: u8 = 1 << 2;
const HAS_ACCURACY: u8 = 1 << 3;
const HAS_ETA: u8 = 1 << 4;
const HAS_WINDOW: u8 = 1 << 5;
const HAS_PICKUP_ETA: u8 = 1 << 6;

/// One update as the resume buffer keeps it: what changes from one update to the next. The
/// offset is its place in the buffer; ids, destination and epoch are in a [`Head`] or the buffer.
///
/// The position stays `f64`: the filter shows smoothed positions with every digit, and the JSON
/// of a replay must carry the same values as the live frame did (E7 would round them).
#[derive(Debug, Clone, Copy)]
struct Entry {
    lat: f64,
    lon: f64,
    time_ms: i64,
    updated_at_ms: i64,
    eta_seconds: i64,
    eta_arrive_at_ms: i64,
    speed_mps: f32,
    heading_deg: f32,
    accuracy_m: f32,
    /// Milliseconds from the buffer's base to when it was published (for the age bound).
    published_ms: u32,
    /// The window's sides, seconds before and after the ETA (whole seconds, at most half a
    /// day: see `trackline_core::stops::MAX_WINDOW_SIDE_S`).
    window_early_s: u16,
    window_late_s: u16,
    /// Seconds from the position's time to the pickup, while it is ahead (a pickup ETA is
    /// anchored to the fix, as the order's is).
    pickup_eta_s: u16,
    status: OrderStatus,
    has: u8,
}

impl Entry {
    fn of(view: &OrderView, published_ms: u32) -> Self {
        let flag = |present: bool, bit: u8| if present { bit } else { 0 };
        let position = view.position;
        let eta = view.eta;
        let window = eta.and_then(|e| {
            let w = e.window?;
            let side = |ms: i64| u16::try_from(ms / 1000).ok();
            Some((
                side(e.arrive_at_ms - w.earliest_ms)?,
                side(w.latest_ms - e.arrive_at_ms)?,
            ))
        });
        let pickup_eta = view
            .stops
            .iter()
            .find(|s| s.kind == StopKind::Pickup)
            .and_then(|s| s.eta)
            .and_then(|e| u16::try_from(e.seconds).ok());
        Self {
            lat: position.map_or(0.0, |p| p.lat),
            lon: position.map_or(0.0, |p| p.lon),
            time_ms: position.map_or(0, |p| p.time_ms),
            updated_at_ms: view.updated_at_ms,
            eta_seconds: eta.map_or(0, |e| e.seconds),
            eta_arrive_at_ms: eta.map_or(0, |e| e.arrive_at_ms),
            speed_mps: position.and_then(|p| p.speed_mps).unwrap_or_default(),
            heading_deg: position.and_then(|p| p.heading_deg).unwrap_or_default(),
            accuracy_m: position.and_then(|p| p.accuracy_m).unwrap_or_default(),
            published_ms,
            status: view.status,
            has: flag(position.is_some(), HAS_POSITION)
                | flag(position.is_some_and(|p| p.speed_mps.is_some()), HAS_SPEED)
                | flag(
                    position.is_some_and(|p| p.heading_deg.is_some()),
                    HAS_HEADING,
                )
                | flag(
                    position.is_some_and(|p| p.accuracy_m.is_some()),
                    HAS_ACCURACY,
                )
                | flag(eta.is_some(), HAS_ETA)
                | flag(window.is_some(), HAS_WINDOW)
                | flag(pickup_eta.is_some(), HAS_PICKUP_ETA),
            window_early_s: window.map_or(0, |w| w.0),
            window_late_s: window.map_or(0, |w| w.1),
            pickup_eta_s: pickup_eta.unwrap_or_default(),
        }
    }

    fn has(&self, bit: u8) -> bool {
        self.has & bit != 0
    }

    fn position(&self) -> Option<Position> {
        self.has(HAS_POSITION).then(|| Position {
            lat: self.lat,
            lon: self.lon,
            time_ms: self.time_ms,
            speed_mps: self.has(HAS_SPEED).then_some(self.speed_mps),
            heading_deg: self.has(HAS_HEADING).then_some(self.heading_deg),
            accuracy_m: self.has(HAS_ACCURACY).then_some(self.accuracy_m),
        })
    }

    fn eta(&self) -> Option<Eta> {
        self.has(HAS_ETA).then_some(Eta {
            seconds: self.eta_seconds,
            arrive_at_ms: self.eta_arrive_at_ms,
            window: self.has(HAS_WINDOW).then(|| EtaWindow {
                earliest_ms: self.eta_arrive_at_ms - i64::from(self.window_early_s) * 1000,
                latest_ms: self.eta_arrive_at_ms + i64::from(self.window_late_s) * 1000,
            }),
        })
    }

    /// The ETA of the pickup ahead, as published.
    fn pickup_eta(&self) -> Option<Eta> {
        self.has(HAS_PICKUP_ETA).then(|| {
            let seconds = i64::from(self.pickup_eta_s);
            Eta {
                seconds,
                arrive_at_ms: self.time_ms + seconds * 1000,
                window: None,
            }
        })
    }
}

/// What rarely changes in an order's updates, from offset `from` on (a new one on a reassignment).
/// The ids are shared with the order's state (`Arc<str>`), so a head costs its own bytes only.
#[derive(Debug, Clone)]
struct Head {
    from: u64,
    order_id: OrderId,
    courier_id: Option<CourierId>,
    destination: LatLon,
    promised_at_ms: Option<i64>,
    /// The order's stops without their ETAs (they change at a status change, not per fix).
    stops: Vec<StopView>,
}

impl Head {
    fn of(view: &OrderView) -> Self {
        Self {
            from: view.offset,
            order_id: view.order_id.clone(),
            courier_id: view.courier_id.clone(),
            destination: view.destination,
            promised_at_ms: view.promised_at_ms,
            stops: view
                .stops
                .iter()
                .map(|stop| StopView { eta: None, ..*stop })
                .collect(),
        }
    }

    fn describes(&self, view: &OrderView) -> bool {
        self.order_id == view.order_id
            && self.courier_id == view.courier_id
            && self.destination == view.destination
            && self.promised_at_ms == view.promised_at_ms
            && self.stops.len() == view.stops.len()
            && self
                .stops
                .iter()
                .zip(&view.stops)
                .all(|(kept, shown)| kept.reached_at_ms == shown.reached_at_ms)
    }
}

/// The last updates of one stream, consecutive offsets of one epoch, newest last.
///
/// Bounded by [`ResumeLimits`]: at most `updates` of them, none older than `max_age`, and
/// `max_bytes` in all; the entries are allocated once at the size the limits allow.
#[derive(Debug)]
pub struct ResumeBuffer {
    limits: ResumeLimits,
    /// The epoch of every entry.
    epoch: String,
    /// The offset of the oldest entry.
    first: u64,
    entries: VecDeque<Entry>,
    /// The heads the entries need, oldest first; the first one applies from `first` on.
    heads: VecDeque<Head>,
    /// What `Entry::published_ms` counts from.
    base: Instant,
}

impl ResumeBuffer {
    /// The bytes one update takes.
    pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();
    /// `published_ms` is a u32: past this span from the base the buffer starts over.
    const MAX_SPAN: Duration = Duration::from_millis(u32::MAX as u64);

    /// An empty buffer.
    pub fn new(limits: ResumeLimits) -> Self {
        Self {
            limits,
            epoch: String::new(),
            first: 0,
            entries: VecDeque::new(),
            heads: VecDeque::new(),
            base: Instant::now(),
        }
    }

    /// Keeps the update `view`, published at `now`, and lets go of what the limits no longer
    /// allow. An update that does not follow the last one (another epoch, a gap) starts over:
    /// a replay across it would not be the stream the watcher saw.
    pub fn push(&mut self, view: &OrderView, now: Instant) {
        let capacity = self.limits.capacity();
        if capacity == 0 {
            return;
        }
        let next = self.first + self.entries.len() as u64;
        if self.entries.is_empty()
            || view.epoch != self.epoch
            || view.offset != next
            || now.saturating_duration_since(self.base) >= Self::MAX_SPAN
        {
            self.entries.clear();
            self.heads.clear();
            self.first = view.offset;
            self.base = now;
            if self.epoch != view.epoch {
                self.epoch.clone_from(&view.epoch);
            }
        }
        if self.entries.capacity() < capacity {
            // Once, at the size the limits allow: growing by doubling would overshoot them.
            self.entries.reserve_exact(capacity - self.entries.len());
        }
        while self.entries.len() >= capacity {
            self.pop_oldest();
        }
        if self.heads.back().is_none_or(|head| !head.describes(view)) {
            self.heads.push_back(Head::of(view));
        }
        let published_ms =
            u32::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u32::MAX);
        self.entries.push_back(Entry::of(view, published_ms));
        while !self.entries.is_empty()
            && (self.bytes() > self.limits.max_bytes || self.too_old(0, now))
        {
            self.pop_oldest();
        }
    }

    /// The updates after `offset` of `epoch`, oldest first; `None` when the buffer does not
    /// hold all of them (another epoch, evicted, or older than the age bound at `now`). An
    /// offset at the newest update is `None` too: the caller knows that nothing was missed.
    pub fn views_after(&self, epoch: &str, offset: u64, now: Instant) -> Option<Vec<OrderView>> {
        if epoch != self.epoch {
            return None;
        }
        let start = usize::try_from(offset.checked_add(1)?.checked_sub(self.first)?).ok()?;
        if start >= self.entries.len() || self.too_old(start, now) {
            return None;
        }
        (start..self.entries.len())
            .map(|i| self.view_at(i))
            .collect()
    }

    /// The bytes the buffer holds for its updates (not counting its own struct).
    pub fn bytes(&self) -> usize {
        self.entries.len() * Self::ENTRY_BYTES
            + self.heads.len() * std::mem::size_of::<Head>()
            + self.epoch.len()
    }

    /// How many updates it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// It holds no update.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn too_old(&self, index: usize, now: Instant) -> bool {
        self.entries.get(index).is_some_and(|entry| {
            let published = self.base + Duration::from_millis(entry.published_ms.into());
            now.saturating_duration_since(published) > self.limits.max_age
        })
    }

    fn pop_oldest(&mut self) {
        if self.entries.pop_front().is_none() {
            return;
        }
        self.first += 1;
        // A head goes once the next one covers the oldest entry left.
        while self.heads.len() > 1 && self.heads[1].from <= self.first {
            self.heads.pop_front();
        }
        if self.entries.is_empty() {
            self.heads.clear();
        }
    }

    /// The update at `index`, as it was published.
    fn view_at(&self, index: usize) -> Option<OrderView> {
        let entry = self.entries.get(index)?;
        let offset = self.first + index as u64;
        let head = self.heads.iter().rev().find(|head| head.from <= offset)?;
        Some(OrderView {
            order_id: head.order_id.clone(),
            status: entry.status,
            courier_id: head.courier_id.clone(),
            destination: head.destination,
            position: entry.position(),
            eta: entry.eta(),
            offset,
            epoch: self.epoch.clone(),
            updated_at_ms: entry.updated_at_ms,
            promised_at_ms: head.promised_at_ms,
            // A stop ahead shows its ETA: the door's is the update's, without the window.
            stops: head
                .stops
                .iter()
                .map(|stop| StopView {
                    eta: match (stop.kind, stop.reached_at_ms) {
                        (StopKind::Dropoff, None) => entry.eta().map(|e| Eta { window: None, ..e }),
                        (StopKind::Pickup, None) => entry.pickup_eta(),
                        _ => None,
                    },
                    ..*stop
                })
                .collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::orders::frames::{Frame, FrameKind};
    use trackline_core::order::OrderRecord;

    pub(crate) const EPOCH: &str = "00000000000000e1";

    /// The update at `offset` of a courier moving north, with every optional part varied.
    pub(crate) fn view(offset: u64) -> OrderView {
        let mut record = OrderRecord::new(
            OrderId::new("order-1").unwrap(),
            LatLon::new(45.2733349521, 13.7139970623),
            Some(CourierId::new("bike-1").unwrap()),
            None,
            Some(1_795_498_999_000),
            1_795_498_377_731,
        );
        record.epoch = EPOCH.into();
        record.offset = offset;
        record.updated_at_ms = 1_795_498_377_731 + offset as i64 * 1000;
        record.status = if offset > 40 {
            OrderStatus::Arriving
        } else {
            OrderStatus::PickedUp
        };
        record.position = (offset % 7 != 3).then(|| Position {
            lat: 45.2735189123 + offset as f64 * 1e-5,
            lon: 13.7142109876,
            time_ms: 1_795_498_377_000 + offset as i64 * 1000,
            speed_mps: (!offset.is_multiple_of(3)).then_some(8.25),
            heading_deg: (!offset.is_multiple_of(5)).then_some(188.1433),
            accuracy_m: (!offset.is_multiple_of(4)).then_some(4.5),
        });
        let arrive_at_ms = 1_795_498_999_000 + offset as i64;
        record.eta = (offset % 6 != 1).then_some(Eta {
            seconds: 600 - offset as i64,
            arrive_at_ms,
            window: (offset % 5 != 2).then_some(EtaWindow {
                earliest_ms: arrive_at_ms - 60_000 - offset as i64 * 1000,
                latest_ms: arrive_at_ms + 240_000,
            }),
        });
        record.pickup = Some(trackline_core::stops::Pickup {
            at: LatLon::new(45.27, 13.71),
            ready_at_ms: None,
            dwell_s: None,
            route: None,
        });
        // Heading to the pickup until offset 20, then picked up there (the stops change).
        if offset <= 20 {
            record.status = OrderStatus::Assigned;
            record.pickup_eta = record
                .position
                .filter(|_| offset % 4 != 1)
                .map(|p| Eta::arriving(p.time_ms, p.time_ms + 90_000 - offset as i64 * 1000));
        } else {
            record.status_log.push(trackline_core::order::StatusChange {
                status: OrderStatus::PickedUp,
                at_ms: 1_795_498_397_000,
            });
        }
        record.view()
    }

    pub(crate) fn limits(updates: usize, max_age_s: u64) -> ResumeLimits {
        ResumeLimits {
            updates,
            max_age: Duration::from_secs(max_age_s),
            max_bytes: 1 << 20,
        }
    }

    /// A buffer fed offsets `from..=to`, one a second from `start`.
    fn fed(limits: ResumeLimits, from: u64, to: u64, start: Instant) -> ResumeBuffer {
        let mut buffer = ResumeBuffer::new(limits);
        for offset in from..=to {
            buffer.push(&view(offset), start + Duration::from_secs(offset - from));
        }
        buffer
    }

    fn offsets(views: &[OrderView]) -> Vec<u64> {
        views.iter().map(|v| v.offset).collect()
    }

    #[test]
    fn replay_rebuilds_exactly_what_was_published_json_and_protobuf() {
        let start = Instant::now();
        let mut buffer = ResumeBuffer::new(limits(64, 60));
        let mut published = Vec::new();
        for offset in 1..=50 {
            let mut view = view(offset);
            if offset >= 20 {
                // A reassignment in the middle: the replay names each update's own courier.
                view.courier_id = Some(CourierId::new("car-7").unwrap());
            }
            if offset >= 30 {
                view.courier_id = None;
            }
            buffer.push(&view, start + Duration::from_millis(offset * 100));
            published.push(view);
        }
        let replayed = buffer.views_after(EPOCH, 0, start).expect("all buffered");
        assert_eq!(replayed, published);
        for (replayed, live) in replayed.into_iter().zip(&published) {
            // What a resuming watcher gets is what today's replay of the live frame was.
            // (The buffer used to keep the live frames and re-mark them: an update, recovered.)
            let old = Frame::encode(live.clone(), FrameKind::Update, true);
            let new = Frame::encode(replayed, FrameKind::Update, true);
            assert_eq!(new.json(), old.json());
            assert_eq!(new.proto(), old.proto());
            assert!(new.json().contains(r#""recovered":true"#), "{}", new.json());
        }
    }

    #[test]
    fn the_count_bound_keeps_the_newest_updates() {
        let start = Instant::now();
        let buffer = fed(limits(64, 3600), 1, 100, start);
        assert_eq!(buffer.len(), 64);
        let now = start + Duration::from_secs(100);
        let all = buffer
            .views_after(EPOCH, 36, now)
            .expect("64 missed: buffered");
        assert_eq!(offsets(&all), (37..=100).collect::<Vec<_>>());
        assert_eq!(all[0], view(37));
        assert!(
            buffer.views_after(EPOCH, 35, now).is_none(),
            "65 missed: one of them is gone"
        );
        assert!(buffer.views_after(EPOCH, 1, now).is_none(), "too old");
        assert_eq!(
            offsets(&buffer.views_after(EPOCH, 98, now).unwrap()),
            [99, 100]
        );
        assert!(
            buffer.views_after(EPOCH, 100, now).is_none(),
            "nothing after the newest: the caller answers that"
        );
    }

    #[test]
    fn the_age_bound_drops_updates_older_than_it() {
        let start = Instant::now();
        // One update a second for 100 s, at most 60 s old, room for 1000.
        let buffer = fed(limits(1000, 60), 1, 100, start);
        let last = start + Duration::from_secs(99);
        assert!(buffer.len() <= 61, "{} kept", buffer.len());
        // Offset 40 was published at +39 s: 60 s old at the last update, still replayable.
        let replay = buffer.views_after(EPOCH, 39, last).expect("60 s old");
        assert_eq!(offsets(&replay), (40..=100).collect::<Vec<_>>());
        assert!(buffer.views_after(EPOCH, 38, last).is_none(), "61 s old");
        // Later, without new updates, the same resume has become too old.
        let later = last + Duration::from_secs(2);
        assert!(buffer.views_after(EPOCH, 39, later).is_none());
        assert!(buffer.views_after(EPOCH, 90, later).is_some());
        // An update after a long silence ages out what was there.
        let mut buffer = buffer;
        buffer.push(&view(101), last + Duration::from_secs(120));
        assert_eq!(buffer.len(), 1);
        assert_eq!(
            offsets(
                &buffer
                    .views_after(EPOCH, 100, last + Duration::from_secs(120))
                    .unwrap()
            ),
            [101]
        );
    }

    #[test]
    fn a_resume_from_another_epoch_or_across_a_gap_is_not_replayed() {
        let start = Instant::now();
        let mut buffer = fed(limits(64, 60), 1, 10, start);
        assert!(buffer.views_after("00000000000000e2", 5, start).is_none());
        // The stream jumps (a mirror's snapshot after a gap): what came before is dropped.
        buffer.push(&view(20), start);
        assert!(buffer.views_after(EPOCH, 5, start).is_none());
        assert_eq!(
            offsets(&buffer.views_after(EPOCH, 19, start).unwrap()),
            [20]
        );
        // A new epoch starts over.
        let mut other = view(21);
        other.epoch = "00000000000000e2".into();
        buffer.push(&other, start);
        assert!(buffer.views_after(EPOCH, 19, start).is_none());
        assert_eq!(
            buffer.views_after("00000000000000e2", 20, start).unwrap(),
            [other]
        );
    }

    #[test]
    fn the_byte_budget_bounds_what_one_order_holds() {
        let start = Instant::now();
        let budget = ResumeLimits {
            updates: 1000,
            max_age: Duration::from_secs(3600),
            max_bytes: 2048,
        };
        let mut buffer = ResumeBuffer::new(budget);
        for offset in 1..=500 {
            let mut view = view(offset);
            // A new courier every update: a head each.
            view.courier_id = Some(CourierId::new(&format!("courier-{offset}")).unwrap());
            buffer.push(&view, start);
            assert!(buffer.bytes() <= 2048, "{} bytes", buffer.bytes());
        }
        assert!(buffer.len() >= 10, "{} kept", buffer.len());
        assert!(buffer.entries.capacity() <= 2048 / ResumeBuffer::ENTRY_BYTES);
        let replay = buffer.views_after(EPOCH, 495, start).unwrap();
        assert_eq!(
            replay
                .iter()
                .map(|v| v.courier_id.clone().unwrap().to_string())
                .collect::<Vec<_>>(),
            [
                "courier-496",
                "courier-497",
                "courier-498",
                "courier-499",
                "courier-500"
            ]
        );
        // With the defaults an order holds at most 8 KiB, whatever the stream does.
        let mut buffer = ResumeBuffer::new(ResumeLimits::default());
        for offset in 1..=10_000 {
            buffer.push(&view(offset), start);
        }
        assert_eq!(buffer.len(), 64);
        assert!(buffer.bytes() <= 8 * 1024, "{}", buffer.bytes());
    }

    #[test]
    fn no_updates_are_kept_with_a_zero_limit() {
        let buffer = fed(limits(0, 60), 1, 10, Instant::now());
        assert!(buffer.is_empty());
        assert_eq!(buffer.entries.capacity(), 0);
    }
}
