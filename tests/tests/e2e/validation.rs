//! Input validation: every rejected-fix code on the courier stream, ids outside the alphabet or
//! over 64 characters, and order bodies and query strings that are not valid (400 with the
//! protocol's error shape).

use serde_json::json;
use trackline_core::{now_ms, LatLon};
use trackline_proto::{to_e7, v1};
use trackline_tests::raw::RawWs;
use trackline_tests::scenarios::{DAY_MS, JOG_COURIER, JOG_ORDER};
use trackline_tests::{fix, NewOrder, TestServer};

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_fix_gets_its_rejected_code_and_the_stream_stays_up() {
    let server = TestServer::start();
    let home = LatLon::new(60.0, 25.0);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.01, 25.0)).courier("c"))
        .await;
    let now = now_ms();
    let good = |seq: u64, i: i64| {
        let pos = LatLon::new(home.lat + 0.00001 * i as f64, home.lon);
        fix(seq, now - 60_000 + i * 1000, pos)
    };
    type Mutation = Box<dyn Fn(&mut v1::Fix)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|f| f.lat_e7 = 900_000_001), "lat_out_of_range"),
        (Box::new(|f| f.lat_e7 = -900_000_001), "lat_out_of_range"),
        (Box::new(|f| f.lat_e7 = i32::MAX), "lat_out_of_range"),
        (Box::new(|f| f.lon_e7 = 1_800_000_001), "lon_out_of_range"),
        (Box::new(|f| f.lon_e7 = i32::MIN), "lon_out_of_range"),
        (Box::new(|f| f.accuracy_m = Some(-1.0)), "bad_accuracy"),
        (Box::new(|f| f.accuracy_m = Some(f32::NAN)), "bad_accuracy"),
        (
            Box::new(|f| f.accuracy_m = Some(f32::INFINITY)),
            "bad_accuracy",
        ),
        (Box::new(|f| f.accuracy_m = Some(10_001.0)), "bad_accuracy"),
        (Box::new(|f| f.speed_mps = Some(f32::NAN)), "bad_speed"),
        (Box::new(|f| f.speed_mps = Some(86.0)), "bad_speed"),
        (Box::new(|f| f.speed_mps = Some(f32::INFINITY)), "bad_speed"),
        (
            Box::new(|f| f.speed_mps = Some(f32::NEG_INFINITY)),
            "bad_speed",
        ),
        (Box::new(|f| f.heading_deg = Some(360.0)), "bad_heading"),
        (Box::new(|f| f.heading_deg = Some(f32::NAN)), "bad_heading"),
        (
            Box::new(|f| f.heading_deg = Some(f32::INFINITY)),
            "bad_heading",
        ),
        (
            Box::new(|f| f.heading_deg = Some(f32::NEG_INFINITY)),
            "bad_heading",
        ),
        (Box::new(move |f| f.time_ms = now + 66_000), "in_future"),
        (Box::new(|f| f.time_ms = i64::MAX), "in_future"),
        (
            Box::new(move |f| f.time_ms = now - DAY_MS - 60_000),
            "too_old",
        ),
        (Box::new(|f| f.time_ms = i64::MIN), "too_old"),
        (Box::new(|f| f.time_ms = 0), "too_old"),
        // 50 km away half a second later: no courier moves that fast (the order's filter)
        (Box::new(|f| f.lat_e7 += to_e7(0.45)), "impossible_speed"),
    ];
    // Each bad fix follows a good one, all in one frame.
    let mut frame_fixes = Vec::new();
    let mut expected: Vec<(u64, String)> = Vec::new();
    let mut good_seqs = Vec::new();
    let mut seq = 0;
    let mut i = 0;
    for (mutate, code) in &cases {
        i += 1;
        seq += 1;
        frame_fixes.push(good(seq, i));
        good_seqs.push(seq);
        seq += 1;
        let mut bad = good(seq, i);
        bad.time_ms += 500;
        mutate(&mut bad);
        frame_fixes.push(bad);
        expected.push((seq, code.to_string()));
    }
    // Seqs that do not increase within the connection.
    seq += 1;
    i += 1;
    let last = seq;
    frame_fixes.push(good(last, i));
    good_seqs.push(last);
    for (again, offset) in [(last, 300), (last - 5, 600)] {
        let mut repeat = good(again, i);
        repeat.time_ms += offset;
        frame_fixes.push(repeat);
        expected.push((again, "seq_not_increasing".to_string()));
    }

    let mut client = server.courier("c").await;
    client.send(&frame_fixes).await;
    client.wait_ack(last).await;
    let mut got: Vec<(u64, String)> = client
        .rejected
        .iter()
        .map(|r| (r.seq, r.code.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "rejections (seq, code)");
    assert!(client.rejected.iter().all(|r| !r.reason.is_empty()));

    // Still up: the next good fix is acked and stored.
    let after = last + 1;
    client.send(&[good(after, i + 2)]).await;
    client.wait_ack(after).await;
    good_seqs.push(after);
    let stored: Vec<u64> = server.history("o").await.iter().map(|f| f.seq).collect();
    assert_eq!(stored, good_seqs, "history holds the good fixes only");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_outside_the_alphabet_or_over_64_characters_are_400() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let dest = json!({"lat": 60.0, "lon": 25.0});
    let long = "x".repeat(65);
    let bad_ids = [
        "",
        "a b",
        "é",
        "../etc/passwd",
        "a/b",
        "a\u{0}b",
        "😀",
        "%2e%2e",
        "a\\b",
        "<script>",
        "bad id",
        "ünïcode",
        &long,
    ];
    server
        .create_order(&NewOrder::new("assignable", LatLon::new(60.0, 25.0)).courier("c"))
        .await;
    for id in bad_ids {
        let reply = server
            .post(
                "/v1/orders",
                Some(&ops),
                &json!({"order_id": id, "destination": dest}),
            )
            .await;
        assert_eq!(reply.expect_error(400), "bad_order_id", "order id {id:?}");
        let reply = server
            .post(
                "/v1/orders",
                Some(&ops),
                &json!({"order_id": "fine", "destination": dest, "courier_id": id}),
            )
            .await;
        assert_eq!(
            reply.expect_error(400),
            "bad_courier_id",
            "courier id {id:?}"
        );
        let reply = server
            .post(
                "/v1/tokens",
                Some(&ops),
                &json!({"role": "watch", "subject": id}),
            )
            .await;
        assert_eq!(reply.expect_error(400), "bad_role", "watch subject {id:?}");
        let reply = server
            .post(
                "/v1/orders/assignable/assign",
                Some(&ops),
                &json!({"courier_id": id}),
            )
            .await;
        assert_eq!(
            reply.expect_error(400),
            "bad_courier_id",
            "assign courier id {id:?}"
        );
    }
    // An id of 64 characters is still an id: unknown, so 404 rather than 400.
    server
        .get(&format!("/v1/orders/{}", "x".repeat(64)), Some(&ops))
        .await
        .expect_error(404);
    // Exactly 64 characters of the alphabet is fine.
    let longest = "Az09_.-".repeat(9) + "z";
    assert_eq!(longest.len(), 64);
    server
        .create_order(&NewOrder::new(&longest, LatLon::new(60.0, 25.0)).courier(&longest))
        .await;
    server
        .ops_post(
            &format!("/v1/orders/{longest}/assign"),
            &json!({"courier_id": longest}),
            200,
        )
        .await;
    let reply = server
        .post(
            &format!("/v1/orders/{longest}/assign"),
            Some(&ops),
            &json!({"courier_id": long}),
        )
        .await;
    assert_eq!(reply.expect_error(400), "bad_courier_id");

    // Ids in paths, percent-encoded as a client would send them (an encoded ".." is resolved
    // by the client's URL parser before it is sent; the hostile suite sends it raw).
    let long_path = "y".repeat(65);
    for id in [
        "a%20b",
        "%C3%A9",
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
        "%F0%9F%98%80",
        "a%5Cb",
        "bad$id",
        "bad%2Fid",
        long_path.as_str(),
    ] {
        for path in [
            format!("/v1/orders/{id}"),
            format!("/v1/orders/{id}/history"),
            format!("/track/{id}"),
        ] {
            let reply = server.get(&path, Some(&ops)).await;
            assert_eq!(reply.expect_error(400), "bad_order_id", "GET {path}");
        }
        for path in [
            format!("/v1/orders/{id}/assign"),
            format!("/v1/orders/{id}/status"),
        ] {
            let body = json!({"courier_id": "c", "status": "cancelled"});
            let body = if path.ends_with("assign") {
                json!({"courier_id": body["courier_id"]})
            } else {
                json!({"status": body["status"]})
            };
            let reply = server.post(&path, Some(&ops), &body).await;
            assert_eq!(reply.expect_error(400), "bad_order_id", "POST {path}");
        }
        let refused = RawWs::connect(server.addr(), &format!("/v1/orders/{id}/watch"), Some(&ops))
            .await
            .err()
            .unwrap_or_else(|| panic!("watch of {id} was accepted"));
        assert_eq!(refused.status, 400, "watch of {id}");
        assert_eq!(refused.json()["error"]["code"], "bad_order_id");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_order_bodies_statuses_and_nearby_queries_are_bad_requests() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let destination = LatLon::new(48.8, 2.4);
    server
        .create_order(&NewOrder::new(JOG_ORDER, destination).courier(JOG_COURIER))
        .await;
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
            &format!("/v1/orders/{JOG_ORDER}/status"),
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
