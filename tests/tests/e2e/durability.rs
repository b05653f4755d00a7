//! What survives a graceful restart: history and live state, and fixes resent across reconnects
//! and restarts, stored once.

use serde_json::Value;
use trackline_tests::scenarios::{
    assert_updates_follow_fixes, collect_until_time, jog_order, jog_points, join, stream_fixes,
    JOG_COURIER, JOG_FIXES, JOG_ORDER,
};
use trackline_tests::{
    load_trip, trip_fixes, CourierClient, TestServer, TokenIn, WatchProtocol, TIMEOUT,
};

#[tokio::test(flavor = "multi_thread")]
async fn history_and_live_state_survive_a_restart() {
    let mut server = TestServer::start();
    let points = load_trip("run_vincennes_DC2_garmin.csv")[..JOG_FIXES + 20].to_vec();
    let order = jog_order(JOG_ORDER, JOG_COURIER, &points);
    server.create_order(&order).await;
    let fixes = trip_fixes(&points, 1);
    let (first, rest) = fixes.split_at(JOG_FIXES);
    let streamed = stream_fixes(&server, JOG_COURIER, first.to_vec()).await;
    let before = server.order_state(JOG_ORDER).await;
    let history_before = server.history(JOG_ORDER).await;
    assert!(
        !before["position"].is_null() && !before["eta"].is_null(),
        "{before}"
    );
    assert_eq!(history_before.len(), streamed.accepted.len());

    server.restart();

    let after = server.order_state(JOG_ORDER).await;
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
        server.history(JOG_ORDER).await,
        history_before,
        "history after a restart"
    );

    // The recovered order is live: a watcher gets its state, and new fixes move it on.
    let token = server.watch_token(JOG_ORDER);
    let mut watcher = server
        .watch(JOG_ORDER, TokenIn::Header(&token), WatchProtocol::Json)
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
    let more = stream_fixes(&server, JOG_COURIER, rest.to_vec()).await;
    let (watcher, updates) = join(collector).await;
    assert_updates_follow_fixes(&snapshot, &updates, &more.accepted, true);
    watcher.close().await;
    assert_eq!(
        server.history(JOG_ORDER).await.len(),
        streamed.accepted.len() + more.accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resent_fixes_are_acked_but_stored_once_across_reconnects_and_restarts() {
    let mut server = TestServer::start();
    let points = jog_points(JOG_FIXES);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    let fixes = trip_fixes(&points[..80], 1);

    stream_fixes(&server, JOG_COURIER, fixes[..40].to_vec()).await;
    // The app lost the acks of 31..40 and resends them with new fixes on a new connection.
    let mut client = server.courier(JOG_COURIER).await;
    client.send(&fixes[30..60]).await;
    client.wait_ack(60).await;
    client.close().await;
    server.restart();
    // And once more after the restart.
    let mut client: CourierClient = server.courier(JOG_COURIER).await;
    client.send(&fixes[50..80]).await;
    client.wait_ack(80).await;
    client.close().await;

    let seqs: Vec<u64> = server
        .history(JOG_ORDER)
        .await
        .iter()
        .map(|f| f.seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=80).collect::<Vec<u64>>(),
        "every fix stored exactly once"
    );
}
