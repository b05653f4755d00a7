//! The core slice end to end: an order with a route, a courier streaming a real trip,
//! acks, watchers (JSON and protobuf), history, nearby couriers, recovery after a restart, and the
//! answers to bad requests (401, 403, 400, 409). Each test runs its own server on 127.0.0.1:0.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::LatLon;
use trackline_proto::to_e7;
use trackline_proto::v1;
use trackline_tests::{
    accepted, fix_pos, load_trip, trip_fixes, CourierClient, NewOrder, TestServer, TokenIn,
    TripPoint, Update, WatchEvent, WatchProtocol, Watcher, SECRET, TIMEOUT, TRIP_ACCURACY_M,
};

const ORDER: &str = "order-1";
const COURIER: &str = "courier-1";
/// Fixes of the run streamed per test: five minutes of a jog at one fix a second.
const RUN_FIXES: usize = 300;
/// Fixes per courier frame.
const BATCH: usize = 10;
/// How far a shown position may be from the fix it was computed from: the GPS filter smooths the
/// track and holds a stopped marker still, within its hold radius (30 m by default).
const SHOWN_WITHIN_M: f64 = 30.0;

/// The first five minutes of a clean jog in Vincennes (1 fix/s, no jumps, no duplicates).
fn run_points() -> Vec<TripPoint> {
    load_trip("run_vincennes_DC2_garmin.csv")[..RUN_FIXES].to_vec()
}

/// An order whose destination is 1.7 km north of where the jog starts, with a planned route.
fn run_order(order: &str, courier: &str, points: &[TripPoint]) -> NewOrder {
    let start = points[0].pos;
    let destination = LatLon::new(start.lat + 0.015, start.lon + 0.002);
    let waypoint = LatLon::new(start.lat + 0.007, start.lon + 0.003);
    NewOrder::new(order, destination)
        .courier(courier)
        .route(vec![start, waypoint, destination])
}

/// The fixes of a stream that the server accepted.
struct Streamed {
    accepted: Vec<v1::Fix>,
}

/// Streams `fixes` as `courier` in frames of [`BATCH`], each acked before the next is sent.
async fn stream_fixes(server: &TestServer, courier: &str, fixes: Vec<v1::Fix>) -> Streamed {
    let mut client = server.courier(courier).await;
    let rejected = client.stream(&fixes, BATCH).await;
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
async fn run_scenario(server: &TestServer) -> Streamed {
    let points = run_points();
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    stream_fixes(server, COURIER, trip_fixes(&points, 1)).await
}

/// Runs `watcher` on its own task until it has seen an update at `last_time_ms`.
fn collect_until_time(
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

async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

fn approx(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

/// Checks that an ETA is consistent with the position it was computed for.
fn assert_eta_consistent(update: &Update) {
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
fn assert_updates_follow_fixes(
    snapshot: &Update,
    updates: &[Update],
    accepted: &[v1::Fix],
    json: bool,
) {
    assert!(!updates.is_empty(), "no updates after the snapshot");
    // Updates are published per durable write; with acks awaited per frame there is at least one per frame.
    assert!(
        updates.len() >= accepted.len() / BATCH,
        "{} updates for {} fixes sent in frames of {BATCH}",
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
        if fix.speed_mps >= 0.0 {
            let speed = position
                .speed_mps
                .unwrap_or_else(|| panic!("speed lost: {context}"));
            assert!(
                approx(f64::from(speed), f64::from(fix.speed_mps), 1e-3),
                "speed {speed} vs sent {}: {context}",
                fix.speed_mps
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
fn assert_eta_plausible(update: &Update, destination: LatLon) {
    let position = update.position.expect("a position");
    let eta = update.eta.expect("an ETA");
    let left_m = position.lat_lon().distance_m(destination);
    let seconds = eta.seconds as f64;
    assert!(
        (left_m / 15.0..=left_m / 0.5).contains(&seconds),
        "ETA of {seconds} s for {left_m:.0} m left on a 3 m/s jog: {update:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_order_with_a_route_returns_a_working_watch_token_and_its_state() {
    let server = TestServer::start();
    let order = run_order(ORDER, COURIER, &run_points());
    let created = server.create_order(&order).await;
    assert_eq!(created["order_id"], ORDER, "{created}");
    let watch_url = created["watch_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no watch_url: {created}"));
    assert!(
        watch_url.contains(ORDER),
        "watch_url names the order: {watch_url}"
    );
    let watch_token = created["watch_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no watch_token: {created}"));

    // The returned watch token reads the order: assigned to its courier, no position yet.
    let state = server
        .get(&format!("/v1/orders/{ORDER}"), Some(watch_token))
        .await
        .expect_status(200);
    assert_eq!(state["order_id"], ORDER, "{state}");
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["courier_id"], COURIER, "{state}");
    assert!(
        approx(
            state["destination"]["lat"].as_f64().unwrap(),
            order.destination.lat,
            1e-7
        ),
        "{state}"
    );
    assert!(
        approx(
            state["destination"]["lon"].as_f64().unwrap(),
            order.destination.lon,
            1e-7
        ),
        "{state}"
    );
    assert!(
        state["position"].is_null() && state["eta"].is_null(),
        "no position before any fix: {state}"
    );
    assert!(state["offset"].is_u64(), "{state}");
    assert!(
        state["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{state}"
    );

    // An order created without a courier is `created` until one is assigned.
    server
        .create_order(&NewOrder::new("order-2", order.destination))
        .await;
    let state = server.order_state("order-2").await;
    assert_eq!(state["status"], "created", "{state}");
    assert!(state["courier_id"].is_null(), "{state}");
    let assigned = server
        .ops_post(
            "/v1/orders/order-2/assign",
            &json!({"courier_id": "courier-2"}),
            200,
        )
        .await;
    assert_eq!(assigned["status"], "assigned", "{assigned}");
    assert_eq!(assigned["courier_id"], "courier-2", "{assigned}");
    assert_eq!(
        server.order_state("order-2").await["courier_id"],
        "courier-2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn courier_gets_acks_covering_every_fix_of_a_real_trip() {
    let server = TestServer::start();
    let points = run_points();
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let fixes = trip_fixes(&points, 1);
    let mut client = server.courier(COURIER).await;
    for chunk in fixes.chunks(BATCH) {
        client.send(chunk).await;
        client.wait_ack(chunk.last().unwrap().seq).await;
        assert!(
            client.acked <= chunk.last().unwrap().seq,
            "ack {} for a seq never sent",
            client.acked
        );
    }
    assert_eq!(client.acked, RUN_FIXES as u64);
    assert!(
        client.acks.windows(2).all(|w| w[0] <= w[1]),
        "acks never go backwards: {:?}",
        client.acks
    );
    assert!(
        client.rejected.is_empty(),
        "a clean jog had rejections: {:?}",
        client.rejected
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_fix_in_a_good_frame_is_rejected_and_the_stream_stays_up() {
    let server = TestServer::start();
    let points = run_points();
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let mut fixes = trip_fixes(&points[..20], 1);
    fixes[4].lat_e7 = 950_000_000; // 95 degrees north
    let mut client = server.courier(COURIER).await;
    client.send(&fixes[..10]).await;
    client.wait_ack(10).await;
    assert_eq!(client.rejected.len(), 1, "{:?}", client.rejected);
    assert_eq!(client.rejected[0].seq, 5);
    assert_eq!(client.rejected[0].code, "lat_out_of_range");
    // The connection survived: the next frame is acked too.
    client.send(&fixes[10..]).await;
    client.wait_ack(20).await;
    client.close().await;
    let history = server.history(ORDER).await;
    let seqs: Vec<u64> = history.iter().map(|f| f.seq).collect();
    let expected: Vec<u64> = (1..=20).filter(|&s| s != 5).collect();
    assert_eq!(
        seqs, expected,
        "the rejected fix is not stored, the others are"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_watcher_gets_the_snapshot_then_every_update_in_offset_order() {
    let server = TestServer::start();
    let points = run_points();
    let order = run_order(ORDER, COURIER, &points);
    let created = server.create_order(&order).await;
    let watch_token = created["watch_token"]
        .as_str()
        .expect("a watch token")
        .to_string();

    // A browser: token in the query, JSON asked for by name.
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&watch_token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.kind.as_deref(), Some("snapshot"), "{snapshot:?}");
    assert_eq!(snapshot.order_id, ORDER);
    assert_eq!(snapshot.status, "assigned");
    assert!(
        snapshot.position.is_none() && snapshot.eta.is_none(),
        "no position before any fix: {snapshot:?}"
    );
    assert!(!snapshot.epoch.is_empty());
    let state = server.order_state(ORDER).await;
    assert_eq!(
        state["offset"], snapshot.offset,
        "the snapshot carries the order's current offset"
    );
    assert_eq!(state["epoch"], snapshot.epoch.as_str());

    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, COURIER, fixes).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &streamed.accepted, true);
    assert_eta_plausible(updates.last().unwrap(), order.destination);
    watcher.close().await;

    // The order's state agrees with the last update; JSON is what a watcher gets without asking.
    let state = server.order_state(ORDER).await;
    let last = updates.last().unwrap();
    assert_eq!(state["offset"], last.offset, "{state}");
    let mut default_watcher = server
        .watch(
            ORDER,
            TokenIn::Header(&watch_token),
            WatchProtocol::Unspecified,
        )
        .await;
    let snapshot = default_watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.kind.as_deref(), Some("snapshot"));
    assert_eq!(
        (snapshot.offset, &snapshot.epoch),
        (last.offset, &last.epoch)
    );
    assert_eq!(snapshot.position, last.position);
    assert_eq!(snapshot.eta, last.eta);
    default_watcher.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proto_watcher_gets_the_snapshot_then_every_update_in_offset_order() {
    let server = TestServer::start();
    let points = run_points();
    let order = run_order(ORDER, COURIER, &points);
    server.create_order(&order).await;
    let token = server.watch_token(ORDER);

    let mut watcher = server
        .watch(ORDER, TokenIn::Header(&token), WatchProtocol::Proto)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.order_id, ORDER);
    assert_eq!(snapshot.status, "assigned");
    assert!(
        snapshot.position.is_none(),
        "no position before any fix: {snapshot:?}"
    );
    assert!(!snapshot.epoch.is_empty());

    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, COURIER, fixes).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &streamed.accepted, false);
    assert_eta_plausible(updates.last().unwrap(), order.destination);
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_returns_every_accepted_fix_oldest_first() {
    let server = TestServer::start();
    let streamed = run_scenario(&server).await;
    let history = server.history(ORDER).await;
    assert_eq!(
        history.iter().map(|f| f.seq).collect::<Vec<_>>(),
        streamed.accepted.iter().map(|f| f.seq).collect::<Vec<_>>(),
        "history holds every accepted fix once, oldest first"
    );
    for (stored, sent) in history.iter().zip(&streamed.accepted) {
        assert_eq!(stored.time_ms, sent.time_ms, "{stored:?}");
        assert_eq!(
            (to_e7(stored.lat), to_e7(stored.lon)),
            (sent.lat_e7, sent.lon_e7),
            "{stored:?} vs {sent:?}"
        );
        assert_eq!(stored.accuracy_m, Some(TRIP_ACCURACY_M), "{stored:?}");
        if sent.speed_mps >= 0.0 {
            assert!(
                stored.speed_mps.is_some_and(|s| approx(
                    f64::from(s),
                    f64::from(sent.speed_mps),
                    1e-3
                )),
                "{stored:?} vs {sent:?}"
            );
            assert!(
                stored.heading_deg.is_some_and(|h| approx(
                    f64::from(h),
                    f64::from(sent.heading_deg),
                    1e-3
                )),
                "{stored:?} vs {sent:?}"
            );
        }
    }

    // A time window returns exactly the fixes inside it.
    let window = &streamed.accepted[100..200];
    let (from, to) = (window[0].time_ms - 500, window[99].time_ms + 500);
    let body = server
        .ops_get(&format!(
            "/v1/orders/{ORDER}/history?format=json&from_ms={from}&to_ms={to}"
        ))
        .await;
    let seqs: Vec<u64> = body["fixes"]
        .as_array()
        .expect("fixes")
        .iter()
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, window.iter().map(|f| f.seq).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn nearby_returns_live_couriers_nearest_first_with_their_distance() {
    let server = TestServer::start();
    let streamed = run_scenario(&server).await;
    let c1_fix = *streamed.accepted.last().unwrap();
    let c1_pos = fix_pos(&c1_fix);

    // A second courier on its own order, 1.1 km north of the first.
    let c2_pos = LatLon::new(c1_pos.lat + 0.01, c1_pos.lon);
    server
        .create_order(
            &NewOrder::new("order-2", LatLon::new(c2_pos.lat + 0.01, c2_pos.lon))
                .courier("courier-2"),
        )
        .await;
    let now = trackline_core::now_ms();
    let c2_fixes: Vec<v1::Fix> = (0..3)
        .map(|i| v1::Fix {
            seq: i + 1,
            time_ms: now - 3000 + i as i64 * 1000,
            lat_e7: to_e7(c2_pos.lat + i as f64 * 1e-5),
            lon_e7: to_e7(c2_pos.lon),
            accuracy_m: 5.0,
            speed_mps: 1.1,
            heading_deg: 0.0,
        })
        .collect();
    let c2_fix = *c2_fixes.last().unwrap();
    stream_fixes(&server, "courier-2", c2_fixes).await;

    // 220 m north of courier 1: it is the nearer one.
    let center = LatLon::new(c1_pos.lat + 0.002, c1_pos.lon);
    // The index may be refreshed on a short cadence: wait until both couriers show.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let found = loop {
        let found = server.nearby(center, 5000.0, 10).await;
        if found.len() >= 2 || tokio::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<&str> = found.iter().map(|c| c.courier_id.as_str()).collect();
    assert_eq!(ids, [COURIER, "courier-2"], "nearest first: {found:?}");
    for (courier, fix) in found.iter().zip([&c1_fix, &c2_fix]) {
        // The index holds the filtered (shown) position: near the last fix; distances are to it.
        let shown = LatLon::new(courier.lat, courier.lon);
        assert!(
            fix_pos(fix).distance_m(shown) <= SHOWN_WITHIN_M,
            "{courier:?} vs last fix {fix:?}"
        );
        let expected = center.distance_m(shown);
        assert!(
            approx(courier.distance_m, expected, 1.0 + expected * 0.005),
            "{} is {expected:.1} m away, nearby says {:.1}",
            courier.courier_id,
            courier.distance_m
        );
        assert_eq!(courier.time_ms, fix.time_ms, "{courier:?}");
    }

    // Radius and limit cut the list; nobody is near Istria.
    let within_500 = server.nearby(center, 500.0, 10).await;
    assert_eq!(
        within_500
            .iter()
            .map(|c| c.courier_id.as_str())
            .collect::<Vec<_>>(),
        [COURIER],
        "{within_500:?}"
    );
    let first = server.nearby(center, 5000.0, 1).await;
    assert_eq!(
        first
            .iter()
            .map(|c| c.courier_id.as_str())
            .collect::<Vec<_>>(),
        [COURIER],
        "{first:?}"
    );
    assert!(server
        .nearby(LatLon::new(45.27, 13.71), 5000.0, 10)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_live_state_survive_a_restart() {
    let mut server = TestServer::start();
    let points = load_trip("run_vincennes_DC2_garmin.csv")[..RUN_FIXES + 20].to_vec();
    let order = run_order(ORDER, COURIER, &points);
    server.create_order(&order).await;
    let fixes = trip_fixes(&points, 1);
    let (first, rest) = fixes.split_at(RUN_FIXES);
    let streamed = stream_fixes(&server, COURIER, first.to_vec()).await;
    let before = server.order_state(ORDER).await;
    let history_before = server.history(ORDER).await;
    assert!(
        !before["position"].is_null() && !before["eta"].is_null(),
        "{before}"
    );
    assert_eq!(history_before.len(), streamed.accepted.len());

    server.restart();

    let after = server.order_state(ORDER).await;
    for field in [
        "status",
        "courier_id",
        "destination",
        "position",
        "offset",
        "epoch",
    ] {
        assert_eq!(
            after[field], before[field],
            "{field} after a restart: {after} vs before: {before}"
        );
    }
    let (eta_before, eta_after) = (&before["eta"], &after["eta"]);
    assert!(
        eta_after["arrive_at_ms"]
            .as_i64()
            .zip(eta_before["arrive_at_ms"].as_i64())
            .is_some_and(|(a, b)| (a - b).abs() <= 1000),
        "ETA after a restart: {eta_after} vs before: {eta_before}"
    );
    assert_eq!(
        server.history(ORDER).await,
        history_before,
        "history after a restart"
    );

    // The recovered order is live: a watcher gets its state, and new fixes move it on.
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Header(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(Value::from(snapshot.offset), before["offset"]);
    assert_eq!(Value::from(snapshot.epoch.as_str()), before["epoch"]);
    let last_before = streamed.accepted.last().unwrap();
    assert_eq!(
        snapshot.position.map(|p| p.time_ms),
        Some(last_before.time_ms)
    );
    let collector = collect_until_time(watcher, rest.last().unwrap().time_ms);
    let more = stream_fixes(&server, COURIER, rest.to_vec()).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &more.accepted, true);
    watcher.close().await;
    assert_eq!(
        server.history(ORDER).await.len(),
        streamed.accepted.len() + more.accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resent_fixes_are_acked_but_stored_once_across_reconnects_and_restarts() {
    let mut server = TestServer::start();
    let points = run_points();
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let fixes = trip_fixes(&points[..80], 1);

    stream_fixes(&server, COURIER, fixes[..40].to_vec()).await;
    // The app lost the acks of 31..40 and resends them with new fixes on a new connection.
    let mut client = server.courier(COURIER).await;
    client.send(&fixes[30..60]).await;
    client.wait_ack(60).await;
    client.close().await;
    server.restart();
    // And once more after the restart.
    let mut client: CourierClient = server.courier(COURIER).await;
    client.send(&fixes[50..80]).await;
    client.wait_ack(80).await;
    client.close().await;

    let seqs: Vec<u64> = server.history(ORDER).await.iter().map(|f| f.seq).collect();
    assert_eq!(
        seqs,
        (1..=80).collect::<Vec<u64>>(),
        "every fix stored exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fixes_are_routed_to_every_active_order_of_the_courier() {
    let server = TestServer::start();
    let points = run_points();
    let near = run_order(ORDER, COURIER, &points);
    let far_destination = LatLon::new(points[0].pos.lat - 0.03, points[0].pos.lon);
    server.create_order(&near).await;
    server
        .create_order(&NewOrder::new("order-2", far_destination).courier(COURIER))
        .await;
    server
        .create_order(&NewOrder::new("order-3", far_destination).courier(COURIER))
        .await;
    server
        .ops_post(
            "/v1/orders/order-3/status",
            &json!({"status": "cancelled"}),
            200,
        )
        .await;
    server
        .create_order(&NewOrder::new("order-4", far_destination).courier("courier-2"))
        .await;

    let streamed = stream_fixes(&server, COURIER, trip_fixes(&points[..30], 1)).await;
    let expected: Vec<u64> = streamed.accepted.iter().map(|f| f.seq).collect();
    for order in [ORDER, "order-2"] {
        let seqs: Vec<u64> = server.history(order).await.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, expected, "history of {order}");
        let state = server.order_state(order).await;
        assert_eq!(
            state["position"]["time_ms"],
            streamed.accepted.last().unwrap().time_ms,
            "{state}"
        );
    }
    for order in ["order-3", "order-4"] {
        assert!(
            server.history(order).await.is_empty(),
            "{order} is cancelled or someone else's"
        );
        assert!(server.order_state(order).await["position"].is_null());
    }
    // Each order computes its own ETA: order-2 is 3.3 km away, order-1 1.7 km.
    let near_eta = server.order_state(ORDER).await["eta"]["seconds"]
        .as_i64()
        .expect("an ETA");
    let far_eta = server.order_state("order-2").await["eta"]["seconds"]
        .as_i64()
        .expect("an ETA");
    assert!(
        far_eta > near_eta,
        "ETA to 3.3 km ({far_eta} s) is not longer than to 1.7 km ({near_eta} s)"
    );
}

/// A connected courier's frames follow its assignments as they change: a frame sent after the
/// answer to an assignment (or a reassignment, or a delivery) reaches exactly the orders the
/// courier has then, on the same connection (whose session keeps a copy of its routes).
#[tokio::test(flavor = "multi_thread")]
async fn frames_follow_assignments_made_while_the_courier_streams() {
    let server = TestServer::start();
    let points = run_points();
    let fixes = trip_fixes(&points[..40], 1);
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let far_destination = LatLon::new(points[0].pos.lat - 0.03, points[0].pos.lon);
    server
        .create_order(&NewOrder::new("order-2", far_destination))
        .await;
    let mut courier = server.courier(COURIER).await;
    let seqs = |fixes: &[v1::Fix]| fixes.iter().map(|f| f.seq).collect::<Vec<u64>>();
    let history = |order: &'static str| {
        let server = &server;
        async move { seqs_of(&server.history(order).await) }
    };

    courier.stream(&fixes[..10], BATCH).await;
    let assign = |order: &str, to: &str| {
        let path = format!("/v1/orders/{order}/assign");
        let body = json!({ "courier_id": to });
        let server = &server;
        async move { server.ops_post(&path, &body, 200).await }
    };
    assign("order-2", COURIER).await;
    courier.stream(&fixes[10..20], BATCH).await;
    assert_eq!(history(ORDER).await, seqs(&fixes[..20]), "order-1 has all");
    assert_eq!(
        history("order-2").await,
        seqs(&fixes[10..20]),
        "order-2 has the frames sent after its assignment, at once"
    );

    assign(ORDER, "courier-2").await;
    courier.stream(&fixes[20..30], BATCH).await;
    assert_eq!(
        history(ORDER).await,
        seqs(&fixes[..20]),
        "order-1 has nothing sent after it went to another courier"
    );
    assert_eq!(history("order-2").await, seqs(&fixes[10..30]));

    for status in ["picked_up", "delivered"] {
        server
            .ops_post(
                "/v1/orders/order-2/status",
                &json!({ "status": status }),
                200,
            )
            .await;
    }
    courier.stream(&fixes[30..], BATCH).await;
    assert_eq!(
        courier.acked,
        fixes.last().unwrap().seq,
        "every frame acked"
    );
    assert_eq!(
        history("order-2").await,
        seqs(&fixes[10..30]),
        "a delivered order takes no more fixes"
    );
}

fn seqs_of(history: &[trackline_tests::HistoryFix]) -> Vec<u64> {
    history.iter().map(|f| f.seq).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn eta_counts_down_along_the_route_and_the_order_becomes_arriving() {
    let server = TestServer::start();
    // A car in Istria: slow start, then 1.4 km along the road to where it stops at point 40.
    let points = load_trip("car_visnjan_hr.csv")[..=40].to_vec();
    let destination = points[40].pos;
    let route: Vec<LatLon> = points.iter().map(|p| p.pos).collect();
    let order = NewOrder::new(ORDER, destination)
        .courier(COURIER)
        .route(route);
    server.create_order(&order).await;
    // The food is on board: from now on, nearing the destination means arriving.
    let courier_token = server.courier_token(COURIER);
    let picked_up = json!({"status": "picked_up"});
    let path = format!("/v1/orders/{ORDER}/status");
    server
        .post(&path, Some(&courier_token), &picked_up)
        .await
        .expect_status(200);
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Header(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.status, "picked_up", "{snapshot:?}");
    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, COURIER, fixes.clone()).await;
    let (watcher, updates) = join(collector).await;
    watcher.close().await;
    assert_eq!(
        streamed.accepted.len(),
        fixes.len(),
        "the car trip is clean"
    );

    let eta_at = |index: usize| -> i64 {
        let time = fixes[index].time_ms;
        let update = updates
            .iter()
            .rev()
            .find(|u| u.position.is_some_and(|p| p.time_ms <= time))
            .unwrap_or_else(|| panic!("no update up to fix {index}"));
        let eta = update
            .eta
            .unwrap_or_else(|| panic!("no ETA at fix {index}: {update:?}"));
        eta.seconds
    };
    let (early, late, last) = (eta_at(20), eta_at(31), eta_at(40));
    assert!(
        early > late && late > last,
        "ETA does not count down: {early} s, {late} s, {last} s at fixes 20, 31, 40"
    );
    assert!(last <= 30, "ETA {last} s at the destination itself");
    // At fix 31 there are 470 m of road left, driven in 26 s: an honest estimate is minutes at most.
    assert!(
        (5..=300).contains(&late),
        "ETA {late} s with 470 m of road left at 25 m/s"
    );

    let mut arrived_at = None;
    for (i, update) in updates.iter().enumerate() {
        assert_eq!(update.offset, snapshot.offset + 1 + i as u64, "{update:?}");
        assert_eta_consistent(update);
        let left_m = update
            .position
            .expect("a position")
            .lat_lon()
            .distance_m(destination);
        match update.status.as_str() {
            "picked_up" => assert!(
                arrived_at.is_none(),
                "back to picked_up after arriving: {update:?}"
            ),
            "arriving" => {
                arrived_at.get_or_insert(left_m);
            }
            other => panic!("status {other} on the way: {update:?}"),
        }
    }
    let arrived_at = arrived_at.unwrap_or_else(|| panic!("never arriving: {:?}", updates.last()));
    assert!(
        arrived_at <= 100.5,
        "arriving {arrived_at:.0} m out, the arrival radius is 100 m"
    );
    assert_eq!(updates.last().unwrap().status, "arriving");
    assert_eq!(server.order_state(ORDER).await["status"], "arriving");
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_gets_the_final_state_and_a_normal_close_after_delivery() {
    let server = TestServer::start();
    let points = run_points();
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;

    // The courier itself marks its order picked up, then delivered.
    let courier_token = server.courier_token(COURIER);
    let path = format!("/v1/orders/{ORDER}/status");
    let state = server
        .post(&path, Some(&courier_token), &json!({"status": "picked_up"}))
        .await
        .expect_status(200);
    assert_eq!(state["status"], "picked_up", "{state}");
    let picked = watcher.next_update(TIMEOUT).await;
    assert_eq!(
        (picked.status.as_str(), picked.offset),
        ("picked_up", snapshot.offset + 1),
        "{picked:?}"
    );
    server
        .post(&path, Some(&courier_token), &json!({"status": "delivered"}))
        .await
        .expect_status(200);
    let delivered = watcher.next_update(TIMEOUT).await;
    assert_eq!(
        (delivered.status.as_str(), delivered.offset),
        ("delivered", snapshot.offset + 2),
        "{delivered:?}"
    );
    match watcher.next_event(TIMEOUT).await {
        WatchEvent::Closed(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal, "{frame:?}"),
        other => panic!("expected a normal close after delivery, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_token_for_one_order_is_forbidden_on_another() {
    let server = TestServer::start();
    let destination = run_points()[0].pos;
    let created = server
        .create_order(&NewOrder::new("order-a", destination).courier(COURIER))
        .await;
    server
        .create_order(&NewOrder::new("order-b", destination).courier(COURIER))
        .await;
    let token_a = created["watch_token"]
        .as_str()
        .expect("a watch token")
        .to_string();

    assert_eq!(
        server
            .get("/v1/orders/order-a", Some(&token_a))
            .await
            .expect_status(200)["order_id"],
        "order-a"
    );
    assert_eq!(
        server
            .get("/v1/orders/order-b", Some(&token_a))
            .await
            .expect_error(403),
        "forbidden"
    );
    assert_eq!(
        server
            .upgrade_status("/v1/orders/order-a/watch", TokenIn::Header(&token_a))
            .await,
        101
    );
    assert_eq!(
        server
            .upgrade_status("/v1/orders/order-a/watch", TokenIn::Query(&token_a))
            .await,
        101
    );
    assert_eq!(
        server
            .upgrade_status("/v1/orders/order-b/watch", TokenIn::Header(&token_a))
            .await,
        403
    );
    assert_eq!(
        server
            .upgrade_status("/v1/orders/order-b/watch", TokenIn::Query(&token_a))
            .await,
        403
    );

    // A watch token reads; it does nothing else.
    server
        .get("/v1/orders/order-a/history", Some(&token_a))
        .await
        .expect_error(403);
    server
        .get(
            "/v1/couriers/nearby?lat=48.8&lon=2.4&radius_m=1000&limit=5",
            Some(&token_a),
        )
        .await
        .expect_error(403);
    server
        .post(
            "/v1/orders/order-a/status",
            Some(&token_a),
            &json!({"status": "cancelled"}),
        )
        .await
        .expect_error(403);
    let new_order = NewOrder::new("order-c", destination).to_json();
    server
        .post("/v1/orders", Some(&token_a), &new_order)
        .await
        .expect_error(403);
    assert_eq!(
        server
            .upgrade_status("/v1/courier/ws", TokenIn::Header(&token_a))
            .await,
        403
    );

    // A courier token is for its own stream and orders, not for watching or other couriers' orders.
    let other_courier = server.courier_token("courier-2");
    assert_eq!(
        server
            .upgrade_status("/v1/orders/order-a/watch", TokenIn::Header(&other_courier))
            .await,
        403
    );
    server
        .post(
            "/v1/orders/order-a/status",
            Some(&other_courier),
            &json!({"status": "picked_up"}),
        )
        .await
        .expect_error(403);
    assert_eq!(server.order_state("order-a").await["status"], "assigned");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_bad_tokens_are_unauthorized() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new(ORDER, LatLon::new(48.8, 2.4)).courier(COURIER))
        .await;
    let expired = TokenKeys::new(SECRET.as_bytes()).mint_at(
        &Role::Ops,
        60,
        trackline_core::now_ms() / 1000 - 3600,
    );
    let forged = TokenKeys::new(b"not-the-secret").mint(&Role::Ops, 3600);
    for token in [
        None,
        Some("garbage"),
        Some(expired.as_str()),
        Some(forged.as_str()),
    ] {
        let what = format!("token {token:?}");
        assert_eq!(
            server
                .get(&format!("/v1/orders/{ORDER}"), token)
                .await
                .expect_error(401),
            "unauthorized",
            "{what}"
        );
        server
            .get(&format!("/v1/orders/{ORDER}/history"), token)
            .await
            .expect_error(401);
        server
            .post(
                "/v1/orders",
                token,
                &NewOrder::new("order-2", LatLon::new(48.8, 2.4)).to_json(),
            )
            .await
            .expect_error(401);
        let as_header = token.map_or(TokenIn::None, TokenIn::Header);
        assert_eq!(
            server
                .upgrade_status(&format!("/v1/orders/{ORDER}/watch"), as_header)
                .await,
            401,
            "{what}"
        );
        assert_eq!(
            server.upgrade_status("/v1/courier/ws", as_header).await,
            401,
            "{what}"
        );
    }
    assert_eq!(
        server
            .upgrade_status(
                &format!("/v1/orders/{ORDER}/watch"),
                TokenIn::Query("garbage")
            )
            .await,
        401
    );
    // Nothing was created by the refused requests.
    server
        .get("/v1/orders/order-2", Some(&server.ops_token()))
        .await
        .expect_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_ids_and_bodies_are_bad_requests() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let destination = LatLon::new(48.8, 2.4);
    server
        .create_order(&NewOrder::new(ORDER, destination).courier(COURIER))
        .await;
    let too_long = "x".repeat(65);
    for bad in ["", "bad id", "a/b", "ünïcode", too_long.as_str()] {
        let body = NewOrder::new(bad, destination).to_json();
        server
            .post("/v1/orders", Some(&ops), &body)
            .await
            .expect_error(400);
        let body = NewOrder::new("order-2", destination).courier(bad).to_json();
        server
            .post("/v1/orders", Some(&ops), &body)
            .await
            .expect_error(400);
        server
            .post(
                &format!("/v1/orders/{ORDER}/assign"),
                Some(&ops),
                &json!({"courier_id": bad}),
            )
            .await
            .expect_error(400);
    }
    for bad_path in ["bad%20id", "bad$id", "bad%2Fid", too_long.as_str()] {
        server
            .get(&format!("/v1/orders/{bad_path}"), Some(&ops))
            .await
            .expect_error(400);
        server
            .get(&format!("/v1/orders/{bad_path}/history"), Some(&ops))
            .await
            .expect_error(400);
    }
    // 64 characters is still an id (and unknown: 404, not 400).
    server
        .get(&format!("/v1/orders/{}", "x".repeat(64)), Some(&ops))
        .await
        .expect_error(404);

    // Bodies that are not orders.
    let invalid = [
        json!({"order_id": "order-2", "destination": {"lat": 91.0, "lon": 2.4}}),
        json!({"order_id": "order-2", "destination": {"lat": 48.8, "lon": 181.0}}),
        json!({"order_id": "order-2"}),
        json!({"order_id": "order-2", "destination": {"lat": 48.8, "lon": 2.4}, "route": [[48.8]]}),
        json!({"order_id": "order-2", "destination": {"lat": 48.8, "lon": 2.4}, "route": [[95.0, 2.4], [48.8, 2.4]]}),
    ];
    for body in invalid {
        server
            .post("/v1/orders", Some(&ops), &body)
            .await
            .expect_error(400);
    }
    server
        .post(
            &format!("/v1/orders/{ORDER}/status"),
            Some(&ops),
            &json!({"status": "teleported"}),
        )
        .await
        .expect_error(400);
    server
        .get(
            "/v1/couriers/nearby?lat=100&lon=2.4&radius_m=1000&limit=5",
            Some(&ops),
        )
        .await
        .expect_error(400);
    server
        .get(
            "/v1/couriers/nearby?lat=abc&lon=2.4&radius_m=1000&limit=5",
            Some(&ops),
        )
        .await
        .expect_error(400);
    server
        .get("/v1/orders/order-2", Some(&ops))
        .await
        .expect_error(404);
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_existing_order_is_a_conflict() {
    let server = TestServer::start();
    let first = NewOrder::new(ORDER, LatLon::new(48.8, 2.4)).courier(COURIER);
    server.create_order(&first).await;
    let ops = server.ops_token();
    // The same body again, and a different order under the same id: both refused alike.
    let code = server
        .post("/v1/orders", Some(&ops), &first.to_json())
        .await
        .expect_error(409);
    let again = NewOrder::new(ORDER, LatLon::new(45.0, 13.0)).courier("courier-2");
    assert_eq!(
        server
            .post("/v1/orders", Some(&ops), &again.to_json())
            .await
            .expect_error(409),
        code
    );
    let state = server.order_state(ORDER).await;
    assert_eq!(
        state["courier_id"], COURIER,
        "the first order is untouched: {state}"
    );
    assert!(
        approx(state["destination"]["lat"].as_f64().unwrap(), 48.8, 1e-9),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn illegal_status_transitions_are_conflicts() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let destination = LatLon::new(48.8, 2.4);
    server
        .create_order(&NewOrder::new(ORDER, destination))
        .await;
    let set = |status: &'static str| {
        let server = &server;
        let ops = ops.clone();
        async move {
            server
                .post(
                    &format!("/v1/orders/{ORDER}/status"),
                    Some(&ops),
                    &json!({"status": status}),
                )
                .await
        }
    };

    // Nobody can pick up an order without a courier.
    assert_eq!(
        set("picked_up").await.expect_error(409),
        "illegal_transition"
    );
    server
        .ops_post(
            &format!("/v1/orders/{ORDER}/assign"),
            &json!({"courier_id": COURIER}),
            200,
        )
        .await;
    // Delivered needs picked up first.
    assert_eq!(
        set("delivered").await.expect_error(409),
        "illegal_transition"
    );
    assert_eq!(server.order_state(ORDER).await["status"], "assigned");
    assert_eq!(
        set("picked_up").await.expect_status(200)["status"],
        "picked_up"
    );
    assert_eq!(
        set("delivered").await.expect_status(200)["status"],
        "delivered"
    );
    // Delivered is final (the error code may say why: the order is closed).
    for status in ["cancelled", "picked_up"] {
        set(status).await.expect_error(409);
    }
    assert_eq!(server.order_state(ORDER).await["status"], "delivered");

    // Cancelled is final too.
    server
        .create_order(&NewOrder::new("order-2", destination).courier(COURIER))
        .await;
    let path = "/v1/orders/order-2/status";
    server
        .ops_post(path, &json!({"status": "cancelled"}), 200)
        .await;
    for status in ["picked_up", "delivered"] {
        server
            .post(path, Some(&ops), &json!({"status": status}))
            .await
            .expect_error(409);
    }
    assert_eq!(server.order_state("order-2").await["status"], "cancelled");
}
