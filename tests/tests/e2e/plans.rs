//! A courier's plan of the stops of all its orders (issue 16): `PUT`/`GET
//! /v1/couriers/{id}/plan`, its 400s, and the ETAs that count the stops before an order's own.

use serde_json::{json, Value};
use trackline_tests::TestServer;

use crate::stops::{north, pick_up};

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
