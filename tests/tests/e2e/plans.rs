//! A courier's plan of the stops of all its orders (issue 16): `PUT`/`GET
//! /v1/couriers/{id}/plan`, its 400s, and the ETAs that count the stops before an order's own.

use serde_json::{json, Value};
use trackline_tests::TestServer;

use trackline_core::now_ms;

use crate::stops::{arrive_at, north, pick_up, ride, ride_north};

/// Creates `order` for `courier` going `door_m` north of the start, with a dwell of `dwell_s`
/// at the door and, when `pickup_m` is set, a ready pickup that far north.
async fn create(
    server: &TestServer,
    order: &str,
    courier: &str,
    door_m: f64,
    dwell_s: f64,
    pickup_m: Option<f64>,
) {
    let door = north(door_m);
    let mut body = json!({"order_id": order, "courier_id": courier,
                          "destination": {"lat": door.lat, "lon": door.lon, "dwell_s": dwell_s}});
    if let Some(pickup_m) = pickup_m {
        let p = north(pickup_m);
        body["pickup"] = json!({"lat": p.lat, "lon": p.lon, "dwell_s": 0});
    }
    server.ops_post("/v1/orders", &body, 201).await;
}

/// An order of `courier` whose food is ready only at `ready_at_ms`: its pickup `pickup_m` north
/// of the start with a 300 s handover, its door 1,000 m north.
async fn create_waiting(
    server: &TestServer,
    order: &str,
    courier: &str,
    pickup_m: f64,
    ready_at_ms: i64,
) {
    let (p, d) = (north(pickup_m), north(1000.0));
    server
        .ops_post(
            "/v1/orders",
            &json!({"order_id": order, "courier_id": courier,
                    "destination": {"lat": d.lat, "lon": d.lon},
                    "pickup": {"lat": p.lat, "lon": p.lon, "ready_at_ms": ready_at_ms,
                               "dwell_s": 300}}),
            201,
        )
        .await;
}

fn plan_path(courier: &str) -> String {
    format!("/v1/couriers/{courier}/plan")
}

/// `[(order, kind), ...]` as a plan's body.
fn plan_body(stops: &[(&str, &str)]) -> Value {
    let stops: Vec<Value> = stops
        .iter()
        .map(|(order, kind)| json!({"order_id": order, "kind": kind}))
        .collect();
    json!({ "stops": stops })
}

async fn put_plan(server: &TestServer, courier: &str, stops: &[(&str, &str)]) -> Value {
    server
        .put(
            &plan_path(courier),
            Some(&server.ops_token()),
            &plan_body(stops),
        )
        .await
        .expect_status(200)
}

async fn get_plan(server: &TestServer, courier: &str) -> Value {
    server.ops_get(&plan_path(courier)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_plan_the_stops_follow_assignment_and_reached_ones_drop_out() {
    let server = TestServer::start();
    create(&server, "o-a", "c-plan", 1000.0, 60.0, Some(200.0)).await;
    create(&server, "o-b", "c-plan", 2000.0, 60.0, None).await;
    let expected = plan_body(&[("o-a", "pickup"), ("o-a", "dropoff"), ("o-b", "dropoff")]);
    assert_eq!(get_plan(&server, "c-plan").await, expected);

    pick_up(&server, "o-a").await;
    let expected = plan_body(&[("o-a", "dropoff"), ("o-b", "dropoff")]);
    assert_eq!(get_plan(&server, "c-plan").await, expected);
    let path = "/v1/orders/o-a/status";
    server
        .ops_post(path, &json!({"status": "delivered"}), 200)
        .await;
    assert_eq!(
        get_plan(&server, "c-plan").await,
        plan_body(&[("o-b", "dropoff")])
    );
    assert_eq!(get_plan(&server, "c-none").await, plan_body(&[]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_plan_is_refused_with_its_code_and_the_plan_in_place_stays() {
    let server = TestServer::start();
    create(&server, "o-p1", "c-bad", 1000.0, 60.0, Some(200.0)).await;
    create(&server, "o-p2", "c-bad", 2000.0, 60.0, None).await;
    create(&server, "o-other", "c-else", 2000.0, 60.0, None).await;
    let good = [("o-p2", "dropoff"), ("o-p1", "pickup"), ("o-p1", "dropoff")];
    assert_eq!(put_plan(&server, "c-bad", &good).await, plan_body(&good));

    let cases = [
        (
            plan_body(&[("o-other", "dropoff")]),
            "plan_order_not_carried",
        ),
        (
            plan_body(&[("o-nope", "dropoff")]),
            "plan_order_not_carried",
        ),
        (plan_body(&[("o-p2", "pickup")]), "plan_no_such_stop"),
        (
            plan_body(&[("o-p2", "dropoff"), ("o-p2", "dropoff")]),
            "plan_duplicate_stop",
        ),
        (
            plan_body(&[("o-p1", "dropoff"), ("o-p1", "pickup")]),
            "plan_dropoff_before_pickup",
        ),
        (plan_body(&[("o-p1", "detour")]), "bad_json"),
        (json!({"stops": "o-p1"}), "bad_json"),
        (json!({"stop": []}), "bad_json"),
    ];
    let ops = server.ops_token();
    for (body, code) in cases {
        let got = server
            .put(&plan_path("c-bad"), Some(&ops), &body)
            .await
            .expect_error(400);
        assert_eq!(got, code, "{body}");
        assert_eq!(get_plan(&server, "c-bad").await, plan_body(&good), "{body}");
    }
    // A courier's token plans nothing, not even its own stops.
    let courier = server.courier_token("c-bad");
    server
        .put(&plan_path("c-bad"), Some(&courier), &plan_body(&[]))
        .await
        .expect_error(403);
}

/// The door ETA of `order`, unix ms.
async fn door_eta(server: &TestServer, order: &str) -> i64 {
    arrive_at(&server.order_state(order).await["eta"])
}

fn window_width(state: &Value) -> i64 {
    let window = &state["eta"]["window"];
    window["latest_ms"].as_i64().unwrap() - window["earliest_ms"].as_i64().unwrap()
}

/// Rides `courier` 40 m north from the start, acked: its orders hear the courier's plan before
/// its session may send the first fix.
async fn ride_start(server: &TestServer, courier: &str, t0_ms: i64) {
    ride(server, courier, &ride_north(t0_ms, 1, 0.0, 40.0)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_drop_is_later_than_the_first_by_the_leg_between_and_the_first_dwell() {
    let server = TestServer::start();
    create(&server, "o-first", "c-two", 1000.0, 300.0, None).await;
    create(&server, "o-second", "c-two", 2000.0, 60.0, None).await;
    // The same ride, for the leg from the first door to the second as the estimator prices it:
    // a pickup (no wait, no handover) at the first door on the way to the second.
    create(&server, "o-leg", "c-leg", 2000.0, 60.0, Some(1000.0)).await;
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-two", t0).await;
    ride_start(&server, "c-leg", t0).await;

    let leg = server.order_state("o-leg").await;
    let leg_ms = arrive_at(&leg["eta"]) - arrive_at(&leg["stops"][0]["eta"]);
    assert!(leg_ms > 60_000, "a kilometre takes minutes: {leg}");
    let first = server.order_state("o-first").await;
    let second = server.order_state("o-second").await;
    let (first_ms, second_ms) = (arrive_at(&first["eta"]), arrive_at(&second["eta"]));
    assert!(
        second_ms >= first_ms + 300_000 + leg_ms - 2_000,
        "second {second_ms} is before first {first_ms} + 300 s + leg {leg_ms} ms"
    );
    assert_eq!(
        second["stops"][0]["eta"]["arrive_at_ms"], second["eta"]["arrive_at_ms"],
        "the dropoff's ETA is the order's: {second}"
    );
    assert!(
        window_width(&second) > window_width(&first),
        "a stop ahead widens the window: {first} {second}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_that_reverses_the_drops_makes_the_first_order_the_later_one() {
    let server = TestServer::start();
    create(&server, "o-near", "c-rev", 1000.0, 60.0, None).await;
    create(&server, "o-far", "c-rev", 2000.0, 60.0, None).await;
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-rev", t0).await;
    assert!(door_eta(&server, "o-near").await < door_eta(&server, "o-far").await);

    let reversed = [("o-far", "dropoff"), ("o-near", "dropoff")];
    assert_eq!(
        put_plan(&server, "c-rev", &reversed).await,
        plan_body(&reversed)
    );
    assert_eq!(get_plan(&server, "c-rev").await, plan_body(&reversed));
    ride(&server, "c-rev", &ride_north(t0, 10, 45.0, 60.0)).await;
    let (near, far) = (
        door_eta(&server, "o-near").await,
        door_eta(&server, "o-far").await,
    );
    assert!(near > far, "near {near} is not after far {far}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_courier_with_one_order_estimates_it_as_before_plans() {
    let server = TestServer::start();
    // The same door and ride: one courier carries it alone, the other with a second order
    // whose door comes after it, so nothing is planned before the first door of either.
    create(&server, "o-solo", "c-solo", 1000.0, 60.0, Some(200.0)).await;
    create(&server, "o-pair", "c-pair", 1000.0, 60.0, Some(200.0)).await;
    create(&server, "o-pair-2", "c-pair", 2000.0, 60.0, None).await;
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-solo", t0).await;
    ride_start(&server, "c-pair", t0).await;
    let solo = server.order_state("o-solo").await;
    let pair = server.order_state("o-pair").await;
    assert_eq!(solo["stops"], pair["stops"], "{solo} {pair}");
    assert_eq!(solo["eta"], pair["eta"], "{solo} {pair}");
    assert_eq!(
        get_plan(&server, "c-solo").await,
        plan_body(&[("o-solo", "pickup"), ("o-solo", "dropoff")])
    );
    assert!(
        door_eta(&server, "o-pair-2").await > arrive_at(&pair["eta"]),
        "{pair}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pickup_wait_planned_first_delays_the_other_orders_door_and_not_once_planned_after() {
    let server = TestServer::start();
    let ready_at = now_ms() + 20 * 60 * 1000;
    create_waiting(&server, "o-food", "c-wait", 200.0, ready_at).await;
    create(&server, "o-parcel", "c-wait", 500.0, 60.0, None).await;
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-wait", t0).await;
    let parcel = door_eta(&server, "o-parcel").await;
    assert!(
        parcel >= ready_at + 300_000,
        "the parcel waits behind the food's pickup: {parcel} < {ready_at} + 300 s"
    );

    let parcel_first = [("o-parcel", "dropoff"), ("o-food", "pickup")];
    let stored = put_plan(&server, "c-wait", &parcel_first).await;
    assert_eq!(
        stored,
        plan_body(&[
            ("o-parcel", "dropoff"),
            ("o-food", "pickup"),
            ("o-food", "dropoff")
        ]),
        "the food's dropoff, left out, follows"
    );
    ride(&server, "c-wait", &ride_north(t0, 10, 45.0, 60.0)).await;
    let parcel = door_eta(&server, "o-parcel").await;
    assert!(parcel < ready_at, "nothing before the parcel now: {parcel}");
    let food = server.order_state("o-food").await;
    assert!(
        arrive_at(&food["stops"][0]["eta"]) > parcel + 60_000,
        "the food's pickup comes after the parcel's door and its handover: {food}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_a_pickup_its_stop_leaves_the_plan_and_its_wait_still_delays_the_other_door() {
    let server = TestServer::start();
    let ready_at = now_ms() + 20 * 60 * 1000;
    create_waiting(&server, "o-meal", "c-at", 160.0, ready_at).await;
    create(&server, "o-box", "c-at", 500.0, 60.0, None).await;
    let t0 = now_ms() - 600_000;
    // To the pickup, 160 m north (the arrival radius is 100 m).
    ride(&server, "c-at", &ride_north(t0, 1, 0.0, 140.0)).await;
    let meal = server.order_state("o-meal").await;
    assert_eq!(meal["status"], "at_pickup", "{meal}");
    assert_eq!(
        get_plan(&server, "c-at").await,
        plan_body(&[("o-meal", "dropoff"), ("o-box", "dropoff")])
    );
    // The registry hears of the pickup after the fix that reached it: the next fix is
    // estimated from there.
    ride(&server, "c-at", &ride_north(t0, 30, 145.0, 150.0)).await;
    let meal_door = door_eta(&server, "o-meal").await;
    let box_door = door_eta(&server, "o-box").await;
    assert!(
        box_door >= ready_at + 300_000,
        "the box waits for the meal being collected: {box_door} < {ready_at} + 300 s"
    );
    assert!(
        box_door > meal_door,
        "the meal's door comes first: {meal_door} {box_door}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_outlives_a_restart_and_ends_with_the_couriers_last_order() {
    let mut server = TestServer::start();
    create(&server, "o-near", "c-kept", 1000.0, 60.0, None).await;
    create(&server, "o-far", "c-kept", 2000.0, 60.0, None).await;
    let reversed = [("o-far", "dropoff"), ("o-near", "dropoff")];
    put_plan(&server, "c-kept", &reversed).await;

    server.restart();
    assert_eq!(get_plan(&server, "c-kept").await, plan_body(&reversed));
    // And the ETAs follow it, as before the restart.
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-kept", t0).await;
    ride(&server, "c-kept", &ride_north(t0, 10, 45.0, 60.0)).await;
    let (near, far) = (
        door_eta(&server, "o-near").await,
        door_eta(&server, "o-far").await,
    );
    assert!(near > far, "near {near} is not after far {far}");

    // With its last order ended the plan is forgotten: the next orders follow assignment,
    // after another restart too.
    for order in ["o-far", "o-near"] {
        let path = format!("/v1/orders/{order}/status");
        server
            .ops_post(&path, &json!({"status": "cancelled"}), 200)
            .await;
    }
    create(&server, "o-next1", "c-kept", 1000.0, 60.0, None).await;
    create(&server, "o-next2", "c-kept", 2000.0, 60.0, None).await;
    let assigned = plan_body(&[("o-next1", "dropoff"), ("o-next2", "dropoff")]);
    assert_eq!(get_plan(&server, "c-kept").await, assigned);
    server.restart();
    assert_eq!(get_plan(&server, "c-kept").await, assigned);
}

/// Broker mode: a courier's orders owned by two other nodes; its plan is set and read through
/// any node, kept by the courier's home node (which answers), and moves the ETAs the owners
/// publish; it outlives a restart of the home node.
#[tokio::test(flavor = "multi_thread")]
async fn in_broker_mode_the_plan_is_kept_at_the_couriers_home_and_moves_etas_on_other_nodes() {
    use trackline_tests::cluster::{Broker, Cluster, CourierApp, NODES};
    let (_broker, mut cluster) = tokio::task::block_in_place(|| {
        let broker = Broker::start();
        let cluster = Cluster::start(&broker);
        (broker, cluster)
    });
    let home = 0;
    let courier = Cluster::id_on(home, "plan-courier");
    let (near, far) = (
        Cluster::id_on(1, "plan-near"),
        Cluster::id_on(2, "plan-far"),
    );
    let ops = cluster.node(1).ops_token();
    for (order, door_m) in [(&near, 1000.0), (&far, 2000.0)] {
        let door = north(door_m);
        let body = json!({"order_id": order, "courier_id": courier,
                          "destination": {"lat": door.lat, "lon": door.lon, "dwell_s": 60}});
        let (reply, _) = cluster.post(1, "/v1/orders", Some(&ops), &body).await;
        reply.expect_status(201);
    }
    let plan = |node: usize, method: reqwest::Method, body: Option<Value>| {
        let (cluster, ops, path) = (&cluster, ops.clone(), plan_path(&courier));
        async move {
            cluster
                .request(node, method, &path, Some(&ops), body.as_ref())
                .await
        }
    };
    let (reply, answered_by) = plan(2, reqwest::Method::GET, None).await;
    let in_assignment = [(near.as_str(), "dropoff"), (far.as_str(), "dropoff")];
    assert_eq!(reply.expect_status(200), plan_body(&in_assignment));
    assert_eq!(answered_by, NODES[home], "the courier's home node answers");

    let door_eta = |order: &str| {
        let (cluster, ops, path) = (&cluster, ops.clone(), format!("/v1/orders/{order}"));
        async move { arrive_at(&cluster.get(0, &path, Some(&ops)).await.0.expect_status(200)["eta"]) }
    };
    let t0 = now_ms() - 600_000;
    let mut app = CourierApp::new(&courier);
    let within = std::time::Duration::from_secs(20);
    app.deliver(cluster.node(1), &ride_north(t0, 1, 0.0, 40.0), within)
        .await;
    assert!(door_eta(&near).await < door_eta(&far).await);

    let reversed = [(far.as_str(), "dropoff"), (near.as_str(), "dropoff")];
    let (reply, answered_by) = plan(1, reqwest::Method::PUT, Some(plan_body(&reversed))).await;
    assert_eq!(reply.expect_status(200), plan_body(&reversed));
    assert_eq!(answered_by, NODES[home]);
    // At once: the answer came after both owners had the plan queued at their orders, so the
    // next fix is estimated by it.
    app.deliver(cluster.node(1), &ride_north(t0, 10, 45.0, 45.0), within)
        .await;
    let (near_eta, far_eta) = (door_eta(&near).await, door_eta(&far).await);
    assert!(
        near_eta > far_eta,
        "near {near_eta} is not after far {far_eta}"
    );
    let (reply, _) = plan(2, reqwest::Method::GET, None).await;
    assert_eq!(reply.expect_status(200), plan_body(&reversed));

    let unknown = plan_body(&[("plan-nobody", "dropoff")]);
    let (reply, _) = plan(2, reqwest::Method::PUT, Some(unknown)).await;
    assert_eq!(reply.expect_error(400), "plan_order_not_carried");

    app.disconnect().await;
    tokio::task::block_in_place(|| cluster.node_mut(home).kill());
    tokio::task::block_in_place(|| cluster.node_mut(home).start_again());
    let (reply, _) = cluster.get(1, &plan_path(&courier), Some(&ops)).await;
    assert_eq!(
        reply.expect_status(200),
        plan_body(&reversed),
        "after the home's restart"
    );
}

/// `trackline_eta_updates_total` of `server` by estimate: (made, shared).
async fn eta_updates(server: &TestServer) -> (f64, f64) {
    let of = |made: &str| format!("trackline_eta_updates_total{{estimate=\"{made}\"}}");
    (
        server.metric(&of("made")).await,
        server.metric(&of("shared")).await,
    )
}

/// The ETA updates `courier` riding `fixes` made and shared: (made, shared).
async fn eta_updates_of_ride(
    server: &TestServer,
    courier: &str,
    fixes: &[trackline_proto::v1::Fix],
) -> (f64, f64) {
    let before = eta_updates(server).await;
    ride(server, courier, fixes).await;
    let after = eta_updates(server).await;
    (after.0 - before.0, after.1 - before.1)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_courier_carrying_three_orders_has_each_fix_estimated_once_for_all_of_them() {
    // Its own process: the metrics are the server's alone.
    let server = TestServer::start_binary(&[]);
    create(&server, "o-x1", "c-three", 1000.0, 60.0, Some(200.0)).await;
    create(&server, "o-x2", "c-three", 1500.0, 60.0, None).await;
    create(&server, "o-x3", "c-three", 2000.0, 60.0, None).await;
    let t0 = now_ms() - 600_000;
    ride_start(&server, "c-three", t0).await;
    let (made, shared) =
        eta_updates_of_ride(&server, "c-three", &ride_north(t0, 10, 45.0, 195.0)).await;
    // 31 fixes: each estimated by one order, and taken by the two others.
    assert!(made >= 25.0, "{made} made, {shared} shared");
    assert_eq!(shared, 2.0 * made, "{made} made, {shared} shared");
    let states = [
        server.order_state("o-x1").await,
        server.order_state("o-x2").await,
        server.order_state("o-x3").await,
    ];
    assert_eq!(states[0]["status"], "at_pickup", "{}", states[0]);
    // Each door comes later than the one before it.
    let doors: Vec<i64> = states.iter().map(|s| arrive_at(&s["eta"])).collect();
    assert!(doors[0] < doors[1] && doors[1] < doors[2], "{doors:?}");

    // Collected: the courier heads for the first door, and the three orders share that way.
    pick_up(&server, "o-x1").await;
    ride(&server, "c-three", &ride_north(t0, 41, 200.0, 200.0)).await;
    let (made, shared) =
        eta_updates_of_ride(&server, "c-three", &ride_north(t0, 42, 205.0, 400.0)).await;
    assert!(made >= 30.0, "{made} made, {shared} shared");
    assert_eq!(shared, 2.0 * made, "{made} made, {shared} shared");
    let first = server.order_state("o-x1").await;
    let second = server.order_state("o-x2").await;
    assert!(
        arrive_at(&second["eta"]) > arrive_at(&first["eta"]),
        "{first} {second}"
    );
}
