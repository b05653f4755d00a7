//! The set-ups several test modules share: the recorded jog and an order along it, streaming it
//! and checking what watchers saw of it, and joining a spawned task so that its panic fails the
//! test.

use trackline_core::LatLon;
use trackline_proto::v1;

use crate::{
    accepted, fix_pos, load_trip, trip_fixes, CourierClient, NewOrder, TestServer, TokenIn,
    TripPoint, Update, WatchProtocol, Watcher, TIMEOUT, TRIP_ACCURACY_M,
};

/// The clean jog every order scenario streams: one fix a second, no jumps, no duplicates, so
/// every fix moves the live state.
pub const JOG_FILE: &str = "run_vincennes_DC2_garmin.csv";

/// The first `n` points of the jog.
pub fn jog_points(n: usize) -> Vec<TripPoint> {
    load_trip(JOG_FILE)[..n].to_vec()
}

/// A destination 1.7 km north of where the jog starts: the order never becomes `arriving`.
pub fn jog_destination(points: &[TripPoint]) -> LatLon {
    let start = points[0].pos;
    LatLon::new(start.lat + 0.015, start.lon + 0.002)
}

/// An order to [`jog_destination`] with a planned route through a waypoint, assigned to
/// `courier`.
pub fn jog_order(order: &str, courier: &str, points: &[TripPoint]) -> NewOrder {
    let start = points[0].pos;
    let destination = jog_destination(points);
    let waypoint = LatLon::new(start.lat + 0.007, start.lon + 0.003);
    NewOrder::new(order, destination)
        .courier(courier)
        .route(vec![start, waypoint, destination])
}

/// Streams `fixes` one per frame (one update each), every frame acked before the next, and
/// expects none of them rejected.
pub async fn stream_one_by_one(courier: &mut CourierClient, fixes: &[v1::Fix]) {
    let rejected = courier.stream(fixes, 1).await;
    assert!(
        rejected.is_empty(),
        "clean fixes rejected: {:?}",
        courier.rejected
    );
}

/// Waits for a spawned task; a panic inside it is re-raised here, with its own message.
pub async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// A day, in the milliseconds of fix times.
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// The order of the jog scenario, and its courier.
pub const JOG_ORDER: &str = "order-1";
pub const JOG_COURIER: &str = "courier-1";
/// Fixes of the jog streamed by [`stream_jog`]: five minutes at one fix a second.
pub const JOG_FIXES: usize = 300;
/// Fixes per courier frame in [`stream_fixes`].
pub const JOG_BATCH: usize = 10;

/// How far a shown position may be from the fix it was computed from: the GPS filter smooths the
/// track and holds a stopped marker still, within its hold radius (30 m by default).
pub const SHOWN_WITHIN_M: f64 = 30.0;

/// The fixes of a stream that the server accepted.
pub struct Streamed {
    pub accepted: Vec<v1::Fix>,
}

/// Streams `fixes` as `courier` in frames of [`JOG_BATCH`], each acked before the next is sent.
pub async fn stream_fixes(server: &TestServer, courier: &str, fixes: Vec<v1::Fix>) -> Streamed {
    let mut client = server.courier(courier).await;
    let rejected = client.stream(&fixes, JOG_BATCH).await;
    let last = fixes.last().expect("something to stream").seq;
    assert_eq!(client.acked, last, "the last ack covers the last fix sent");
    for rejection in &client.rejected {
        assert!(
            fixes.iter().any(|f| f.seq == rejection.seq),
            "rejection of a seq never sent: {rejection:?}"
        );
        assert!(
            !rejection.code.is_empty() && !rejection.reason.is_empty(),
            "rejection without code or reason: {rejection:?}"
        );
    }
    // The trips are clean: a filter refusing more than an odd fix of them is broken.
    assert!(
        rejected.len() * 50 <= fixes.len(),
        "{} of {} clean fixes rejected: {:?}",
        rejected.len(),
        fixes.len(),
        client.rejected
    );
    client.close().await;
    let accepted = accepted(&fixes, &rejected);
    Streamed { accepted }
}

/// Creates the run order and streams the jog on it.
pub async fn stream_jog(server: &TestServer) -> Streamed {
    let points = jog_points(JOG_FIXES);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    stream_fixes(server, JOG_COURIER, trip_fixes(&points, 1)).await
}

/// Runs `watcher` on its own task until it has seen an update at `last_time_ms`.
pub fn collect_until_time(
    mut watcher: Watcher,
    last_time_ms: i64,
) -> tokio::task::JoinHandle<(Watcher, Vec<Update>)> {
    tokio::spawn(async move {
        let updates = watcher
            .updates_until(TIMEOUT, |u| {
                u.position.map(|p| p.time_ms) == Some(last_time_ms)
            })
            .await;
        (watcher, updates)
    })
}

pub fn approx(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

/// Checks that an ETA is consistent with the position it was computed for.
pub fn assert_eta_consistent(update: &Update) {
    let eta = update
        .eta
        .unwrap_or_else(|| panic!("update at offset {} has no ETA: {update:?}", update.offset));
    let position = update.position.expect("an ETA comes with a position");
    assert!(eta.seconds >= 0, "negative ETA: {update:?}");
    // Eta.seconds counts from the position's time; arrive_at_ms is that instant plus the seconds.
    assert!(
        approx(
            eta.arrive_at_ms as f64,
            (position.time_ms + eta.seconds * 1000) as f64,
            1000.0
        ),
        "arrive_at_ms {} is not position time {} + {} s",
        eta.arrive_at_ms,
        position.time_ms,
        eta.seconds
    );
}

/// The watcher contract for a streamed trip: after the snapshot, updates come with offsets
/// increasing by one, in one epoch, in time order, each at the time of a fix that was sent and
/// near its place (the filter smooths), each with a consistent ETA; the last shows the last fix.
pub fn assert_updates_follow_fixes(
    snapshot: &Update,
    updates: &[Update],
    accepted: &[v1::Fix],
    json: bool,
) {
    assert!(!updates.is_empty(), "no updates after the snapshot");
    // Updates are published per durable write; with acks awaited per frame there is at least one per frame.
    assert!(
        updates.len() >= accepted.len() / JOG_BATCH,
        "{} updates for {} fixes sent in frames of {JOG_BATCH}",
        updates.len(),
        accepted.len()
    );
    let mut last_time = i64::MIN;
    for (i, update) in updates.iter().enumerate() {
        let context = format!("update {i} of {}: {update:?}", updates.len());
        assert_eq!(
            update.offset,
            snapshot.offset + 1 + i as u64,
            "offsets increase by one: {context}"
        );
        assert_eq!(update.epoch, snapshot.epoch, "one epoch: {context}");
        assert_eq!(update.order_id, snapshot.order_id, "{context}");
        assert_eq!(update.status, "assigned", "{context}");
        if json {
            assert_eq!(update.kind.as_deref(), Some("update"), "{context}");
        }
        let position = update
            .position
            .unwrap_or_else(|| panic!("no position: {context}"));
        let fix = accepted
            .iter()
            .find(|f| f.time_ms == position.time_ms)
            .unwrap_or_else(|| panic!("position time matches no fix sent: {context}"));
        let off_m = fix_pos(fix).distance_m(position.lat_lon());
        assert!(
            off_m <= SHOWN_WITHIN_M,
            "position is {off_m:.2} m from the fix sent at that time: {context}"
        );
        assert_eq!(position.accuracy_m, Some(TRIP_ACCURACY_M), "{context}");
        if let Some(sent) = fix.speed_mps {
            let speed = position
                .speed_mps
                .unwrap_or_else(|| panic!("speed lost: {context}"));
            assert!(
                approx(f64::from(speed), f64::from(sent), 1e-3),
                "speed {speed} vs sent {sent}: {context}"
            );
        }
        assert!(
            position.time_ms >= last_time,
            "positions go back in time: {context}"
        );
        last_time = position.time_ms;
        assert_eta_consistent(update);
    }
    let last_fix = accepted.last().expect("fixes were accepted");
    let last = updates.last().expect("checked above");
    assert_eq!(
        last.position.map(|p| p.time_ms),
        Some(last_fix.time_ms),
        "the last update shows the last fix"
    );
}

/// The last update's ETA is plausible for a jogger: the straight distance left at 0.5-15 m/s.
pub fn assert_eta_plausible(update: &Update, destination: LatLon) {
    let position = update.position.expect("a position");
    let eta = update.eta.expect("an ETA");
    let left_m = position.lat_lon().distance_m(destination);
    let seconds = eta.seconds as f64;
    assert!(
        (left_m / 15.0..=left_m / 0.5).contains(&seconds),
        "ETA of {seconds} s for {left_m:.0} m left on a 3 m/s jog: {update:?}"
    );
}

/// Reads updates until the one at `offset` (included).
pub async fn read_through(watcher: &mut Watcher, offset: u64) -> Vec<Update> {
    watcher.updates_until(TIMEOUT, |u| u.offset >= offset).await
}

/// Everything a watcher of the order sees, collected from the start: the ground truth against
/// which replays are compared.
pub struct Reference {
    pub watcher: Watcher,
    pub seen: Vec<Update>,
}

impl Reference {
    pub async fn start(server: &TestServer, order: &str) -> Self {
        let token = server.watch_token(order);
        let mut watcher = server
            .watch(order, TokenIn::Header(&token), WatchProtocol::Json)
            .await;
        let snapshot = watcher.next_update(TIMEOUT).await;
        Self {
            watcher,
            seen: vec![snapshot],
        }
    }

    /// Reads through `offset`, checking that offsets increase by one.
    pub async fn catch_up(&mut self, offset: u64) -> &[Update] {
        if self.seen.last().is_some_and(|u| u.offset >= offset) {
            return &self.seen;
        }
        for update in read_through(&mut self.watcher, offset).await {
            let last = self.seen.last().expect("starts with the snapshot");
            assert_eq!(
                update.offset,
                last.offset + 1,
                "a watcher that keeps up sees every offset: {update:?} after {last:?}"
            );
            self.seen.push(update);
        }
        &self.seen
    }
}
