//! Orders with a pickup (issue 16): `at_pickup`, the door ETA across the pickup's wait and
//! handover, the stops and the arrival window in the order state, and the 400s of bad pickups.

use serde_json::{json, Value};
use trackline_core::{now_ms, LatLon};
use trackline_proto::v1;
use trackline_tests::{fix, TestServer};

/// Where every courier of these tests starts (Joensuu, as the recorded trips).
pub(crate) const START: LatLon = LatLon {
    lat: 62.6,
    lon: 29.76,
};

/// `metres_north` of [`START`].
pub(crate) fn north(metres_north: f64) -> LatLon {
    LatLon::new(START.lat + metres_north / 111_195.0, START.lon)
}

/// Creates `order` for `courier` with a pickup 160 m north of the start and the destination
/// 1.2 km north; `pickup` holds the pickup's extra fields.
async fn create_with_pickup(server: &TestServer, order: &str, courier: &str, pickup: Value) {
    let (p, d) = (north(160.0), north(1200.0));
    let mut pickup_body = json!({"lat": p.lat, "lon": p.lon});
    for (k, v) in pickup.as_object().unwrap() {
        pickup_body[k] = v.clone();
    }
    server
        .ops_post(
            "/v1/orders",
            &json!({"order_id": order, "courier_id": courier,
                    "destination": {"lat": d.lat, "lon": d.lon, "dwell_s": 60},
                    "pickup": pickup_body}),
            201,
        )
        .await;
}

/// A courier riding north at 5 m/s from `from_m` to `to_m` north of [`START`], one fix a
/// second: fix `seq` is at `t0_ms + seq` seconds, so consecutive rides continue one another.
pub(crate) fn ride_north(t0_ms: i64, first_seq: u64, from_m: f64, to_m: f64) -> Vec<v1::Fix> {
    let n = ((to_m - from_m) / 5.0).round() as u64;
    (0..=n)
        .map(|i| {
            let seq = first_seq + i;
            fix(
                seq,
                t0_ms + seq as i64 * 1000,
                north(from_m + 5.0 * i as f64),
            )
        })
        .collect()
}

/// Sends `fixes` as `courier` and waits until all are acked (so durable and shown).
pub(crate) async fn ride(server: &TestServer, courier: &str, fixes: &[trackline_proto::v1::Fix]) {
    let mut app = server.courier(courier).await;
    app.send(fixes).await;
    app.wait_ack(fixes.last().unwrap().seq).await;
    app.close().await;
}

/// The courier says it has `order`; the order state answered.
pub(crate) async fn pick_up(server: &TestServer, order: &str) -> Value {
    let path = format!("/v1/orders/{order}/status");
    server
        .ops_post(&path, &json!({"status": "picked_up"}), 200)
        .await
}

pub(crate) fn arrive_at(eta: &Value) -> i64 {
    eta["arrive_at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no arrive_at_ms in {eta}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn reaching_the_pickup_sets_at_pickup_with_device_time_and_picked_up_follows() {
    let server = TestServer::start();
    create_with_pickup(&server, "o-at", "c-at", json!({})).await;
    let state = server.order_state("o-at").await;
    assert_eq!(state["status"], "assigned", "{state}");
    let kinds: Vec<&str> = state["stops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["pickup", "dropoff"], "{state}");

    // Fixes far from the pickup: still assigned, the pickup ahead with an ETA.
    let t0 = now_ms() - 600_000;
    let far = ride_north(t0, 1, 0.0, 40.0);
    ride(&server, "c-at", &far).await;
    let state = server.order_state("o-at").await;
    assert_eq!(state["status"], "assigned", "{state}");
    let pickup_eta = arrive_at(&state["stops"][0]["eta"]);
    assert!(state["stops"][0]["reached_at_ms"].is_null(), "{state}");
    assert!(
        arrive_at(&state["eta"]) > pickup_eta,
        "the door comes after the pickup: {state}"
    );

    // Then on to the pickup, 160 m north, with an arrival radius of 100 m.
    let near = ride_north(t0, 10, 45.0, 140.0);
    ride(&server, "c-at", &near).await;
    let state = server.order_state("o-at").await;
    assert_eq!(state["status"], "at_pickup", "{state}");
    let reached = state["stops"][0]["reached_at_ms"].as_i64().unwrap();
    let device_times: Vec<i64> = near.iter().map(|f| f.time_ms).collect();
    assert!(
        device_times.contains(&reached),
        "stamped with a fix's device time: {reached} not in {device_times:?}"
    );
    assert!(state["stops"][0]["eta"].is_null(), "reached: {state}");
    let at_pickup = state["status_log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "at_pickup")
        .unwrap_or_else(|| panic!("no at_pickup in the log: {state}"));
    assert_eq!(at_pickup["at_ms"], reached);

    // The courier says it has the order: from at_pickup, as from assigned.
    let picked = pick_up(&server, "o-at").await;
    assert_eq!(picked["status"], "picked_up", "{picked}");
    assert_eq!(picked["stops"][0]["reached_at_ms"], reached, "{picked}");
    assert!(picked["stops"][1]["reached_at_ms"].is_null(), "{picked}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_door_eta_before_pickup_includes_the_wait_and_the_handover() {
    let server = TestServer::start();
    let ready_at = now_ms() + 20 * 60 * 1000;
    // Same place, same ride: one pickup is ready in 20 minutes and takes 5 to hand over, the
    // other is ready and takes no time.
    create_with_pickup(
        &server,
        "o-wait",
        "c-wait",
        json!({"ready_at_ms": ready_at, "dwell_s": 300}),
    )
    .await;
    create_with_pickup(&server, "o-now", "c-now", json!({"dwell_s": 0})).await;
    let fixes = ride_north(now_ms() - 600_000, 1, 0.0, 20.0);
    ride(&server, "c-wait", &fixes).await;
    ride(&server, "c-now", &fixes).await;
    let waiting = server.order_state("o-wait").await;
    let ready = server.order_state("o-now").await;

    // The leg from the pickup to the door, as the estimator prices it for the ready order.
    let leg_ms = arrive_at(&ready["eta"]) - arrive_at(&ready["stops"][0]["eta"]);
    assert!(leg_ms > 60_000, "a kilometre takes minutes: {ready}");
    let door = arrive_at(&waiting["eta"]);
    assert!(
        door >= ready_at + 300_000 + leg_ms - 2_000,
        "door {door} is before ready {ready_at} + 300 s + leg {leg_ms} ms: {waiting}"
    );
    assert!(
        arrive_at(&waiting["stops"][0]["eta"]) < ready_at,
        "the courier gets to the pickup before the food is ready: {waiting}"
    );
    assert_eq!(
        waiting["stops"][1]["eta"]["arrive_at_ms"], waiting["eta"]["arrive_at_ms"],
        "the dropoff's ETA is the order's: {waiting}"
    );

    // The window is there and holds the point estimate, for both.
    for state in [&waiting, &ready] {
        let window = &state["eta"]["window"];
        let (earliest, latest) = (
            window["earliest_ms"].as_i64().unwrap(),
            window["latest_ms"].as_i64().unwrap(),
        );
        let point = arrive_at(&state["eta"]);
        assert!(
            earliest <= point && point <= latest && earliest < latest,
            "{state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_without_a_pickup_behaves_as_before() {
    let server = TestServer::start();
    let d = north(50.0);
    server
        .ops_post(
            "/v1/orders",
            &json!({"order_id": "o-old", "courier_id": "c-old",
                    "destination": {"lat": d.lat, "lon": d.lon}}),
            201,
        )
        .await;
    // Right by the destination, but assigned: no pickup to be at, and not arriving either.
    let t0 = now_ms() - 600_000;
    ride(&server, "c-old", &ride_north(t0, 1, 0.0, 10.0)).await;
    let state = server.order_state("o-old").await;
    assert_eq!(state["status"], "assigned", "{state}");
    let stops = state["stops"].as_array().unwrap();
    assert_eq!(stops.len(), 1, "{state}");
    assert_eq!(stops[0]["kind"], "dropoff");
    assert_eq!(
        stops[0]["eta"]["arrive_at_ms"], state["eta"]["arrive_at_ms"],
        "{state}"
    );
    let picked = pick_up(&server, "o-old").await;
    assert_eq!(picked["status"], "picked_up");
    ride(&server, "c-old", &ride_north(t0, 3, 15.0, 30.0)).await;
    let state = server.order_state("o-old").await;
    assert_eq!(state["status"], "arriving", "{state}");
    assert!(stops[0]["reached_at_ms"].is_null());
    assert!(state["stops"][0]["reached_at_ms"].is_i64(), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pickups_and_dwells_are_refused_with_a_code_and_create_nothing() {
    let server = TestServer::start();
    let now = now_ms();
    let cases = [
        (json!({"lat": 95.0, "lon": 0.0}), "bad_coordinates"),
        (json!({"lat": 1.0, "lon": 2.0, "dwell_s": -1}), "bad_dwell"),
        (
            json!({"lat": 1.0, "lon": 2.0, "dwell_s": 3601}),
            "bad_dwell",
        ),
        (
            json!({"lat": 1.0, "lon": 2.0, "ready_at_ms": 5}),
            "bad_ready_at",
        ),
        (
            json!({"lat": 1.0, "lon": 2.0, "ready_at_ms": now + 2 * 86_400_000}),
            "bad_ready_at",
        ),
        (
            json!({"lat": 1.0, "lon": 2.0, "route": [[1.0, 2.0]]}),
            "bad_pickup",
        ),
        (json!({"lat": 1.0, "lon": 2.0, "dwel_s": 5}), "bad_json"),
    ];
    let ops = server.ops_token();
    for (i, (pickup, code)) in cases.iter().enumerate() {
        let order = format!("o-bad-{i}");
        let body = json!({"order_id": order, "destination": {"lat": 1.1, "lon": 2.1},
                          "pickup": pickup});
        let got = server
            .post("/v1/orders", Some(&ops), &body)
            .await
            .expect_error(400);
        assert_eq!(got, *code, "{body}");
        server
            .get(&format!("/v1/orders/{order}"), Some(&ops))
            .await
            .expect_error(404);
    }
    let body =
        json!({"order_id": "o-bad-dest", "destination": {"lat": 1.1, "lon": 2.1, "dwell_s": -5}});
    let got = server
        .post("/v1/orders", Some(&ops), &body)
        .await
        .expect_error(400);
    assert_eq!(got, "bad_dwell");
    server
        .get("/v1/orders/o-bad-dest", Some(&ops))
        .await
        .expect_error(404);
}
