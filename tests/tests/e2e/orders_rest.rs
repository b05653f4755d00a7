//! The orders API over REST: creating an order with its route and watch token, its history,
//! the couriers nearby, and the conflicts (an existing id, an illegal status change).

use std::time::Duration;

use serde_json::json;
use trackline_core::LatLon;
use trackline_proto::{to_e7, v1};
use trackline_tests::scenarios::{
    approx, jog_order, jog_points, stream_fixes, stream_jog, JOG_COURIER, JOG_FIXES, JOG_ORDER,
    SHOWN_WITHIN_M,
};
use trackline_tests::{fix_pos, NewOrder, TestServer, TIMEOUT, TRIP_ACCURACY_M};

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_order_with_a_route_returns_a_working_watch_token_and_its_state() {
    let server = TestServer::start();
    let order = jog_order(JOG_ORDER, JOG_COURIER, &jog_points(JOG_FIXES));
    let created = server.create_order(&order).await;
    assert_eq!(created["order_id"], JOG_ORDER, "{created}");
    let watch_url = created["watch_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no watch_url: {created}"));
    assert!(
        watch_url.contains(JOG_ORDER),
        "watch_url names the order: {watch_url}"
    );
    let watch_token = created["watch_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no watch_token: {created}"));

    // The returned watch token reads the order: assigned to its courier, no position yet.
    let state = server
        .get(&format!("/v1/orders/{JOG_ORDER}"), Some(watch_token))
        .await
        .expect_status(200);
    assert_eq!(state["order_id"], JOG_ORDER, "{state}");
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["courier_id"], JOG_COURIER, "{state}");
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
async fn history_returns_every_accepted_fix_oldest_first() {
    let server = TestServer::start();
    let streamed = stream_jog(&server).await;
    let history = server.history(JOG_ORDER).await;
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
        if let (Some(speed), Some(heading)) = (sent.speed_mps, sent.heading_deg) {
            assert!(
                stored
                    .speed_mps
                    .is_some_and(|s| approx(f64::from(s), f64::from(speed), 1e-3)),
                "{stored:?} vs {sent:?}"
            );
            assert!(
                stored
                    .heading_deg
                    .is_some_and(|h| approx(f64::from(h), f64::from(heading), 1e-3)),
                "{stored:?} vs {sent:?}"
            );
        }
    }

    // A time window returns exactly the fixes inside it.
    let window = &streamed.accepted[100..200];
    let (from, to) = (window[0].time_ms - 500, window[99].time_ms + 500);
    let body = server
        .ops_get(&format!(
            "/v1/orders/{JOG_ORDER}/history?format=json&from_ms={from}&to_ms={to}"
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
    let streamed = stream_jog(&server).await;
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
            accuracy_m: Some(5.0),
            speed_mps: Some(1.1),
            heading_deg: Some(0.0),
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
    assert_eq!(ids, [JOG_COURIER, "courier-2"], "nearest first: {found:?}");
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
        [JOG_COURIER],
        "{within_500:?}"
    );
    let first = server.nearby(center, 5000.0, 1).await;
    assert_eq!(
        first
            .iter()
            .map(|c| c.courier_id.as_str())
            .collect::<Vec<_>>(),
        [JOG_COURIER],
        "{first:?}"
    );
    assert!(server
        .nearby(LatLon::new(45.27, 13.71), 5000.0, 10)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_an_existing_order_is_a_conflict() {
    let server = TestServer::start();
    let first = NewOrder::new(JOG_ORDER, LatLon::new(48.8, 2.4)).courier(JOG_COURIER);
    server.create_order(&first).await;
    let ops = server.ops_token();
    // The same body again, and a different order under the same id: both refused alike.
    let code = server
        .post("/v1/orders", Some(&ops), &first.to_json())
        .await
        .expect_error(409);
    let again = NewOrder::new(JOG_ORDER, LatLon::new(45.0, 13.0)).courier("courier-2");
    assert_eq!(
        server
            .post("/v1/orders", Some(&ops), &again.to_json())
            .await
            .expect_error(409),
        code
    );
    let state = server.order_state(JOG_ORDER).await;
    assert_eq!(
        state["courier_id"], JOG_COURIER,
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
        .create_order(&NewOrder::new(JOG_ORDER, destination))
        .await;
    let set = |status: &'static str| {
        let server = &server;
        let ops = ops.clone();
        async move {
            server
                .post(
                    &format!("/v1/orders/{JOG_ORDER}/status"),
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
            &format!("/v1/orders/{JOG_ORDER}/assign"),
            &json!({"courier_id": JOG_COURIER}),
            200,
        )
        .await;
    // Delivered needs picked up first.
    assert_eq!(
        set("delivered").await.expect_error(409),
        "illegal_transition"
    );
    assert_eq!(server.order_state(JOG_ORDER).await["status"], "assigned");
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
    assert_eq!(server.order_state(JOG_ORDER).await["status"], "delivered");

    // Cancelled is final too.
    server
        .create_order(&NewOrder::new("order-2", destination).courier(JOG_COURIER))
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
