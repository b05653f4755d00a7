//! The courier stream: acks that cover every fix of a real trip, rejected fixes that leave the
//! stream up, resent fixes stored once, fixes routed to every active order of the courier, and
//! order actors that move to their couriers' threads without losing a fix, update or watcher.

use futures_util::future::join_all;
use serde_json::json;
use trackline_core::LatLon;
use trackline_proto::v1;
use trackline_tests::scenarios::{
    jog_order, jog_points, stream_fixes, stream_one_by_one, Reference, JOG_BATCH, JOG_COURIER,
    JOG_FIXES, JOG_ORDER,
};
use trackline_tests::{trip_fixes, NewOrder, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn courier_gets_acks_covering_every_fix_of_a_real_trip() {
    let server = TestServer::start();
    let points = jog_points(JOG_FIXES);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    let fixes = trip_fixes(&points, 1);
    let mut client = server.courier(JOG_COURIER).await;
    for chunk in fixes.chunks(JOG_BATCH) {
        client.send(chunk).await;
        client.wait_ack(chunk.last().unwrap().seq).await;
        assert!(
            client.acked <= chunk.last().unwrap().seq,
            "ack {} for a seq never sent",
            client.acked
        );
    }
    assert_eq!(client.acked, JOG_FIXES as u64);
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
    let points = jog_points(JOG_FIXES);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    let mut fixes = trip_fixes(&points[..20], 1);
    fixes[4].lat_e7 = 950_000_000; // 95 degrees north
    let mut client = server.courier(JOG_COURIER).await;
    client.send(&fixes[..10]).await;
    client.wait_ack(10).await;
    assert_eq!(client.rejected.len(), 1, "{:?}", client.rejected);
    assert_eq!(client.rejected[0].seq, 5);
    assert_eq!(client.rejected[0].code, "lat_out_of_range");
    // The connection survived: the next frame is acked too.
    client.send(&fixes[10..]).await;
    client.wait_ack(20).await;
    client.close().await;
    let history = server.history(JOG_ORDER).await;
    let seqs: Vec<u64> = history.iter().map(|f| f.seq).collect();
    let expected: Vec<u64> = (1..=20).filter(|&s| s != 5).collect();
    assert_eq!(
        seqs, expected,
        "the rejected fix is not stored, the others are"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fixes_are_routed_to_every_active_order_of_the_courier() {
    let server = TestServer::start();
    let points = jog_points(JOG_FIXES);
    let near = jog_order(JOG_ORDER, JOG_COURIER, &points);
    let far_destination = LatLon::new(points[0].pos.lat - 0.03, points[0].pos.lon);
    server.create_order(&near).await;
    server
        .create_order(&NewOrder::new("order-2", far_destination).courier(JOG_COURIER))
        .await;
    server
        .create_order(&NewOrder::new("order-3", far_destination).courier(JOG_COURIER))
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

    let streamed = stream_fixes(&server, JOG_COURIER, trip_fixes(&points[..30], 1)).await;
    let expected: Vec<u64> = streamed.accepted.iter().map(|f| f.seq).collect();
    for order in [JOG_ORDER, "order-2"] {
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
    let near_eta = server.order_state(JOG_ORDER).await["eta"]["seconds"]
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
    let points = jog_points(JOG_FIXES);
    let fixes = trip_fixes(&points[..40], 1);
    server
        .create_order(&jog_order(JOG_ORDER, JOG_COURIER, &points))
        .await;
    let far_destination = LatLon::new(points[0].pos.lat - 0.03, points[0].pos.lon);
    server
        .create_order(&NewOrder::new("order-2", far_destination))
        .await;
    let mut courier = server.courier(JOG_COURIER).await;
    let seqs = |fixes: &[v1::Fix]| fixes.iter().map(|f| f.seq).collect::<Vec<u64>>();
    let history = |order: &'static str| {
        let server = &server;
        async move { seqs_of(&server.history(order).await) }
    };

    courier.stream(&fixes[..10], JOG_BATCH).await;
    let assign = |order: &str, to: &str| {
        let path = format!("/v1/orders/{order}/assign");
        let body = json!({ "courier_id": to });
        let server = &server;
        async move { server.ops_post(&path, &body, 200).await }
    };
    assign("order-2", JOG_COURIER).await;
    courier.stream(&fixes[10..20], JOG_BATCH).await;
    assert_eq!(
        history(JOG_ORDER).await,
        seqs(&fixes[..20]),
        "order-1 has all"
    );
    assert_eq!(
        history("order-2").await,
        seqs(&fixes[10..20]),
        "order-2 has the frames sent after its assignment, at once"
    );

    assign(JOG_ORDER, "courier-2").await;
    courier.stream(&fixes[20..30], JOG_BATCH).await;
    assert_eq!(
        history(JOG_ORDER).await,
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
    courier.stream(&fixes[30..], JOG_BATCH).await;
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

/// Orders whose actors start on their watchers' threads (watchers subscribe before the couriers
/// connect) are moved to their couriers' session threads; a move loses no fix, no update and no
/// watcher, also when a courier reconnects (maybe on the other thread) and streams on.
#[tokio::test(flavor = "multi_thread")]
async fn orders_moved_to_their_couriers_threads_lose_no_fix_update_or_watcher() {
    const ORDERS: usize = 16;
    // The binary: its metrics are its own (in-process servers of one test binary share theirs).
    let server = TestServer::start_binary(&["--workers", "2"]);
    let points = jog_points(24);
    let fixes = trip_fixes(&points, 1);
    let (first, second) = fixes.split_at(12);
    let ids = |i: usize| (format!("order-move-{i}"), format!("courier-move-{i}"));
    for i in 0..ORDERS {
        let (order, courier) = ids(i);
        server
            .create_order(&jog_order(&order, &courier, &points))
            .await;
    }
    let mut watchers = Vec::new();
    for i in 0..ORDERS {
        watchers.push(Reference::start(&server, &ids(i).0).await);
    }
    // The server hands connections to its two threads in turn: one more connection (a request)
    // puts each courier on the other thread than its watcher, whose lookup started the actor.
    server.get("/healthz", None).await;
    let couriers: Vec<String> = (0..ORDERS).map(|i| ids(i).1).collect();
    stream_each(&server, &couriers, first).await;
    let moved = server.metric("trackline_order_moves_total").await;
    assert!(
        moved >= 1.0,
        "no order actor moved to its courier's thread ({moved})"
    );
    stream_each(&server, &couriers, second).await;

    for (i, watcher) in watchers.iter_mut().enumerate() {
        let (order, _) = ids(i);
        let stored: Vec<u64> = server.history(&order).await.iter().map(|f| f.seq).collect();
        assert_eq!(
            stored,
            (1..=fixes.len() as u64).collect::<Vec<_>>(),
            "{order}: every acked fix is in its history"
        );
        let (offset, _) = server.offset_and_epoch(&order).await;
        let seen = watcher.catch_up(offset).await;
        assert_eq!(
            seen.last().map(|u| u.offset),
            Some(offset),
            "{order}: the watcher from before the moves saw every update"
        );
    }
}

/// Every courier of `couriers` connects, streams `fixes` one per frame and closes, all at once.
async fn stream_each(server: &TestServer, couriers: &[String], fixes: &[v1::Fix]) {
    join_all(couriers.iter().map(|id| async move {
        let mut courier = server.courier(id).await;
        stream_one_by_one(&mut courier, fixes).await;
        courier.close().await;
    }))
    .await;
}
