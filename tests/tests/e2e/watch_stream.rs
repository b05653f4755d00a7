//! The watch stream: the snapshot then every update in offset order (JSON and protobuf), the
//! ETA counting down along the route, and the final state then a normal close on delivery.

use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trackline_core::LatLon;
use trackline_tests::scenarios::{
    assert_eta_consistent, assert_eta_plausible, assert_updates_follow_fixes, collect_until_time,
    jog_order, jog_points, join, stream_fixes, JOG_COURIER, JOG_FIXES, JOG_ORDER,
};
use trackline_tests::{
    load_trip, trip_fixes, NewOrder, TestServer, TokenIn, WatchEvent, WatchProtocol, TIMEOUT,
};

#[tokio::test(flavor = "multi_thread")]
async fn json_watcher_gets_the_snapshot_then_every_update_in_offset_order() {
    let server = TestServer::start();
    let points = jog_points(JOG_FIXES);
    let order = jog_order(JOG_ORDER, JOG_COURIER, &points);
    let created = server.create_order(&order).await;
    let watch_token = created["watch_token"]
        .as_str()
        .expect("a watch token")
        .to_string();

    // A browser: token in the query, JSON asked for by name.
    let mut watcher = server
        .watch(JOG_ORDER, TokenIn::Query(&watch_token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.kind.as_deref(), Some("snapshot"), "{snapshot:?}");
    assert_eq!(snapshot.order_id, JOG_ORDER);
    assert_eq!(snapshot.status, "assigned");
    assert!(
        snapshot.position.is_none() && snapshot.eta.is_none(),
        "no position before any fix: {snapshot:?}"
    );
    assert!(!snapshot.epoch.is_empty());
    let state = server.order_state(JOG_ORDER).await;
    assert_eq!(
        state["offset"], snapshot.offset,
        "the snapshot carries the order's current offset"
    );
    assert_eq!(state["epoch"], snapshot.epoch.as_str());

    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, JOG_COURIER, fixes).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &streamed.accepted, true);
    assert_eta_plausible(updates.last().unwrap(), order.destination);
    watcher.close().await;

    // The order's state agrees with the last update; JSON is what a watcher gets without asking.
    let state = server.order_state(JOG_ORDER).await;
    let last = updates.last().unwrap();
    assert_eq!(state["offset"], last.offset, "{state}");
    let mut default_watcher = server
        .watch(
            JOG_ORDER,
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
    let points = jog_points(JOG_FIXES);
    let order = jog_order(JOG_ORDER, JOG_COURIER, &points);
    server.create_order(&order).await;
    let token = server.watch_token(JOG_ORDER);

    let mut watcher = server
        .watch(JOG_ORDER, TokenIn::Header(&token), WatchProtocol::Proto)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.order_id, JOG_ORDER);
    assert_eq!(snapshot.status, "assigned");
    assert!(
        snapshot.position.is_none(),
        "no position before any fix: {snapshot:?}"
    );
    assert!(!snapshot.epoch.is_empty());

    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, JOG_COURIER, fixes).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &streamed.accepted, false);
    assert_eta_plausible(updates.last().unwrap(), order.destination);
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eta_counts_down_along_the_route_and_the_order_becomes_arriving() {
    let server = TestServer::start();
    // A car in Istria: slow start, then 1.4 km along the road to where it stops at point 40.
    let points = load_trip("car_visnjan_hr.csv")[..=40].to_vec();
    let destination = points[40].pos;
    let route: Vec<LatLon> = points.iter().map(|p| p.pos).collect();
    let order = NewOrder::new(JOG_ORDER, destination)
        .courier(JOG_COURIER)
        .route(route);
    server.create_order(&order).await;
    // The food is on board: from now on, nearing the destination means arriving.
    let courier_token = server.courier_token(JOG_COURIER);
    let picked_up = json!({"status": "picked_up"});
    let path = format!("/v1/orders/{JOG_ORDER}/status");
    server
        .post(&path, Some(&courier_token), &picked_up)
        .await
        .expect_status(200);
    let token = server.watch_token(JOG_ORDER);
    let mut watcher = server
        .watch(JOG_ORDER, TokenIn::Header(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    assert_eq!(snapshot.status, "picked_up", "{snapshot:?}");
    let fixes = trip_fixes(&points, 1);
    let collector = collect_until_time(watcher, fixes.last().unwrap().time_ms);
    let streamed = stream_fixes(&server, JOG_COURIER, fixes.clone()).await;
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
    assert_eq!(server.order_state(JOG_ORDER).await["status"], "arriving");
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_gets_the_final_state_and_a_normal_close_after_delivery() {
    let server = TestServer::start();
    let points = jog_points(JOG_FIXES);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    let token = server.watch_token(JOG_ORDER);
    let mut watcher = server
        .watch(JOG_ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;

    // The courier itself marks its order picked up, then delivered.
    let courier_token = server.courier_token(JOG_COURIER);
    let path = format!("/v1/orders/{JOG_ORDER}/status");
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
