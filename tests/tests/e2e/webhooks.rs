//! Webhooks: a real receiver that fails, hangs and goes away still gets every event of every
//! acknowledged change, per order in order, signed; a SIGKILL of the server loses none; bad
//! requests get the API's error shapes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use trackline_core::LatLon;
use trackline_tests::{Faults, NewOrder, Received, Receiver, TestServer};

/// A secret both sides know (the receiver verifies with it).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Retries come quickly in tests (the default starts at 5 s).
const FAST_RETRIES: [&str; 4] = [
    "--webhook-retry-min-ms",
    "50",
    "--webhook-retry-max-ms",
    "400",
];

const DESTINATION: LatLon = LatLon {
    lat: 52.52,
    lon: 13.405,
};

async fn register(server: &TestServer, url: &str) -> Value {
    server
        .ops_post(
            "/v1/webhooks",
            &json!({"url": url, "secret": SECRET, "events": ["order.created", "order.assigned", "order.status"]}),
            201,
        )
        .await
}

/// The seq in a webhook-id (`msg_{created}_{seq}_{order}`).
fn seq_of(id: &str) -> u64 {
    id.split('_')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("webhook-id {id}"))
}

/// Every accepted delivery verifies; duplicates carry the same id and body; per order, the
/// first arrival of each event comes in seq order. Returns each order's events (type, status)
/// in order.
fn check_deliveries(received: &[Received]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut by_id: HashMap<&str, &Received> = HashMap::new();
    let mut per_order: BTreeMap<String, Vec<(u64, String, String)>> = BTreeMap::new();
    for delivery in received {
        assert!(delivery.verified, "signature does not verify: {delivery:?}");
        assert!(delivery.signature.starts_with("v1,"));
        let now_s = trackline_core::now_ms() / 1000;
        let ts: i64 = delivery
            .timestamp
            .parse()
            .expect("webhook-timestamp in seconds");
        assert!((now_s - ts).abs() < 300, "timestamp {ts} is not now");
        if let Some(earlier) = by_id.insert(&delivery.id, delivery) {
            assert_eq!(earlier.raw_body, delivery.raw_body, "same id, other event");
            continue;
        }
        let body = &delivery.body;
        let order = body["data"]["order_id"]
            .as_str()
            .expect("data.order_id")
            .to_string();
        let kind = body["type"].as_str().expect("type").to_string();
        assert!(
            body["timestamp"].as_str().is_some_and(|t| t.contains('T')),
            "{body}"
        );
        let status = body["data"]["status"]
            .as_str()
            .expect("data.status")
            .to_string();
        let events = per_order.entry(order).or_default();
        let seq = seq_of(&delivery.id);
        if let Some((last, ..)) = events.last() {
            assert!(
                seq > *last,
                "out of order: {seq} after {last} in {events:?}"
            );
        }
        events.push((seq, kind, status));
    }
    per_order
        .into_iter()
        .map(|(order, events)| (order, events.into_iter().map(|(_, k, s)| (k, s)).collect()))
        .collect()
}

/// What one order's life sends, with the previous status of each `order.status`.
fn life_of_an_order() -> Vec<(String, String)> {
    [
        ("order.created", "created"),
        ("order.assigned", "assigned"),
        ("order.status", "assigned"),
        ("order.status", "picked_up"),
        ("order.status", "delivered"),
    ]
    .iter()
    .map(|(k, s)| (k.to_string(), s.to_string()))
    .collect()
}

/// Creates, assigns, picks up and delivers `order`; how many of those calls were acknowledged
/// (answered 2xx) before the first that was not.
async fn live_an_order(server: &TestServer, order: &str) -> usize {
    let token = server.ops_token();
    let calls = [
        (
            "/v1/orders".to_string(),
            NewOrder::new(order, DESTINATION).to_json(),
        ),
        (
            format!("/v1/orders/{order}/assign"),
            json!({"courier_id": format!("c-{order}")}),
        ),
        (
            format!("/v1/orders/{order}/status"),
            json!({"status": "picked_up"}),
        ),
        (
            format!("/v1/orders/{order}/status"),
            json!({"status": "delivered"}),
        ),
    ];
    let mut acked = 0;
    for (path, body) in calls {
        let request = server
            .http_client()
            .post(server.http_url(&path))
            .bearer_auth(&token)
            .json(&body);
        match request.send().await {
            Ok(answer) if answer.status().is_success() => acked += 1,
            _ => break,
        }
    }
    acked
}

/// The events an order whose first `acked` calls of [`live_an_order`] were acknowledged must
/// have sent, at least.
fn events_of_acked(acked: usize) -> Vec<(String, String)> {
    let all = life_of_an_order();
    // create: 1 event; assign: 2 (courier, status); each status change: 1
    let count = [0, 1, 3, 4, 5][acked];
    all[..count].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_arrives_signed_and_in_order_through_failures_hangs_and_an_outage() {
    let server = TestServer::start_binary(&FAST_RETRIES);
    let faults = Faults {
        fail_share: 0.3,
        hang_share: 0.03,
        gone: false,
    };
    let mut receiver = Receiver::start(SECRET, faults).await;
    let created = register(&server, &receiver.url()).await;
    assert_eq!(created["secret"], SECRET);
    let orders: Vec<String> = (0..6).map(|i| format!("hook-{i}")).collect();
    for (i, order) in orders.iter().enumerate() {
        assert_eq!(live_an_order(&server, order).await, 4);
        if i == 2 {
            // Away for a while in the middle of it all: its port closed.
            receiver.go_down();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    receiver.come_back().await;
    let expected = life_of_an_order();
    let received = receiver
        .wait_for(Duration::from_secs(90), |got| {
            let per_order = check_deliveries(got);
            orders
                .iter()
                .all(|o| per_order.get(o).is_some_and(|e| e.len() == expected.len()))
        })
        .await;
    let per_order = check_deliveries(&received);
    for order in &orders {
        assert_eq!(per_order[order], expected, "events of {order}");
    }
    assert!(
        receiver.requests() > received.len(),
        "no failure was retried"
    );
    let status_event = received
        .iter()
        .find(|r| r.body["type"] == "order.status" && r.body["data"]["status"] == "delivered")
        .expect("a delivered event");
    assert_eq!(status_event.body["data"]["previous_status"], "picked_up");
    assert!(status_event.body["data"]["status_since_ms"]
        .as_i64()
        .is_some());
    assert_eq!(
        status_event.body["data"]["courier_id"]
            .as_str()
            .map(|c| c.starts_with("c-hook")),
        Some(true)
    );
    assert!(server.metric("trackline_webhook_delivered_total").await >= received.len() as f64);
    assert!(server.metric("trackline_webhook_retried_total").await >= 1.0);
    let id = created["id"].as_str().unwrap();
    let pending = server
        .ops_get(&format!("/v1/webhooks/{id}/deliveries"))
        .await;
    assert_eq!(pending["deliveries"], json!([]), "all delivered");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_loses_no_event_of_an_acknowledged_change() {
    let mut server = TestServer::start_binary(&FAST_RETRIES);
    let mut receiver = Receiver::start(SECRET, Faults::default()).await;
    register(&server, &receiver.url()).await;
    // Down: the first orders' events wait, pending, on the server's disk.
    receiver.go_down();
    let waiting: Vec<String> = (0..3).map(|i| format!("kill-wait-{i}")).collect();
    let mut acked = HashMap::new();
    for order in &waiting {
        acked.insert(order.clone(), live_an_order(&server, order).await);
    }
    // A burst of changes, and SIGKILL in the middle of it: what was acknowledged must arrive.
    let burst: Vec<String> = (0..12).map(|i| format!("kill-burst-{i}")).collect();
    let server_ref = &server;
    let lives = futures_util::future::join_all(
        burst
            .iter()
            .map(|order| async move { (order.clone(), live_an_order(server_ref, order).await) }),
    );
    let pid = libc::pid_t::try_from(server.pid()).expect("a pid fits pid_t");
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // SAFETY: kill(2) with SIGKILL on the server child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    for (order, n) in lives.await {
        acked.insert(order, n);
    }
    killer.await.unwrap();
    server.kill();
    server.start_again();
    receiver.come_back().await;
    let wanted: BTreeMap<String, Vec<(String, String)>> = acked
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(order, n)| (order.clone(), events_of_acked(*n)))
        .collect();
    assert!(
        wanted.len() > waiting.len(),
        "the kill came before any burst change"
    );
    let received = receiver
        .wait_for(Duration::from_secs(60), |got| {
            let per_order = check_deliveries(got);
            wanted.iter().all(|(order, events)| {
                per_order.get(order).is_some_and(|got| {
                    got.len() >= events.len() && got[..events.len()] == events[..]
                })
            })
        })
        .await;
    let per_order = check_deliveries(&received);
    for (order, events) in &wanted {
        assert_eq!(
            &per_order[order][..events.len()],
            &events[..],
            "events of {order}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_answers_410_is_disabled_and_failures_can_be_redelivered() {
    let server = TestServer::start_binary(&[
        "--webhook-retry-min-ms",
        "50",
        "--webhook-retry-max-ms",
        "100",
        "--webhook-max-age",
        "1s",
    ]);
    let gone = Receiver::start(
        SECRET,
        Faults {
            gone: true,
            ..Default::default()
        },
    )
    .await;
    let failing = Receiver::start(
        SECRET,
        Faults {
            fail_share: 1.0,
            ..Default::default()
        },
    )
    .await;
    let gone_hook = register(&server, &gone.url()).await;
    let failing_hook = register(&server, &failing.url()).await;
    assert_eq!(live_an_order(&server, "hook-gone").await, 4);
    let gone_id = gone_hook["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.ops_get(&format!("/v1/webhooks/{gone_id}")).await["disabled"] != true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not disabled after a 410"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = gone.requests();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gone.requests(),
        requests,
        "a disabled endpoint is sent nothing"
    );

    // Failing for longer than the maximum age: each event is given up, kept as failed, and the
    // order's next event goes (so all five end failed).
    let failing_id = failing_hook["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{failing_id}/deliveries?status=failed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let failed = server.ops_get(&path).await;
        if failed["deliveries"]
            .as_array()
            .is_some_and(|d| d.len() == 5)
        {
            break failed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not given up: {failed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = &failed["deliveries"][0];
    assert_eq!(first["type"], "order.created");
    assert_eq!(first["status"], "failed");
    assert!(first["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(first["last_error"], "HTTP 500");
    assert!(server.metric("trackline_webhook_failed_total").await >= 5.0);
    // Redelivered once the receiver works again: one by id, then the rest.
    failing.set_faults(Faults::default());
    let one = first["event_id"].as_str().unwrap();
    let redeliver = format!("/v1/webhooks/{failing_id}/redeliver");
    let answer = server
        .ops_post(&redeliver, &json!({"event_id": one}), 200)
        .await;
    assert_eq!(answer["redelivered"], 1);
    let got = failing
        .wait_for(Duration::from_secs(10), |got| !got.is_empty())
        .await;
    assert_eq!(got[0].id, one);
    let answer = server.ops_post(&redeliver, &json!({}), 200).await;
    assert_eq!(answer["redelivered"], 4);
    let got = failing
        .wait_for(Duration::from_secs(10), |got| got.len() == 5)
        .await;
    assert_eq!(check_deliveries(&got)["hook-gone"], life_of_an_order());
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_requests_are_checked_with_the_api_error_shapes() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let courier = server.courier_token("c-1");
    let bad = |body: Value| {
        let server = &server;
        let ops = ops.clone();
        async move {
            server
                .post("/v1/webhooks", Some(&ops), &body)
                .await
                .expect_error(400)
        }
    };
    assert_eq!(bad(json!({"url": "ftp://example.com/x"})).await, "bad_url");
    assert_eq!(bad(json!({"url": "not a url"})).await, "bad_url");
    assert_eq!(
        bad(json!({"url": "http://x/", "events": ["order.lost"]})).await,
        "unknown_event_type"
    );
    assert_eq!(
        bad(json!({"url": "http://x/", "events": []})).await,
        "bad_events"
    );
    assert_eq!(
        bad(json!({"url": "http://x/", "secret": "hunter2"})).await,
        "bad_secret"
    );
    assert_eq!(
        bad(json!({"url": "http://x/", "secret": "whsec_AAAA"})).await,
        "bad_secret"
    );
    assert_eq!(
        bad(json!({"url": "http://x/", "colour": "red"})).await,
        "bad_json"
    );
    let created = server
        .ops_post(
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/hook"}),
            201,
        )
        .await;
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["events"].as_array().unwrap().len(), 6);
    let id = created["id"].as_str().unwrap();
    let shown = server.ops_get(&format!("/v1/webhooks/{id}")).await;
    assert!(shown.get("secret").is_none(), "secret shown again: {shown}");
    let listed = server.ops_get("/v1/webhooks").await;
    assert_eq!(listed["webhooks"][0]["id"], id);
    assert!(!listed.to_string().contains(secret));

    assert_eq!(
        server
            .post("/v1/webhooks", None, &json!({"url": "http://x/"}))
            .await
            .expect_error(401),
        "unauthorized"
    );
    assert_eq!(
        server
            .post("/v1/webhooks", Some(&courier), &json!({"url": "http://x/"}))
            .await
            .expect_error(403),
        "forbidden"
    );
    assert_eq!(
        server
            .get("/v1/webhooks", Some(&courier))
            .await
            .expect_error(403),
        "forbidden"
    );
    assert_eq!(
        server
            .get("/v1/webhooks/wh_nope", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get("/v1/webhooks/wh_nope/deliveries", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get(
                &format!("/v1/webhooks/{id}/deliveries?status=lost"),
                Some(&ops)
            )
            .await
            .expect_error(400),
        "bad_status"
    );
    assert_eq!(
        server
            .get(&format!("/v1/webhooks/{id}/deliveries?limit=0"), Some(&ops))
            .await
            .expect_error(400),
        "bad_limit"
    );
    assert_eq!(
        server
            .post(
                &format!("/v1/webhooks/{id}/redeliver"),
                Some(&ops),
                &json!({"event_id": "msg_x"})
            )
            .await
            .expect_error(404),
        "not_found"
    );
    let delete = |path: String, token: Option<String>| {
        let server = &server;
        async move {
            let mut request = server.http_client().delete(server.http_url(&path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.expect("DELETE")
        }
    };
    assert_eq!(
        delete(format!("/v1/webhooks/{id}"), None).await.status(),
        401
    );
    assert_eq!(
        delete(format!("/v1/webhooks/{id}"), Some(courier.clone()))
            .await
            .status(),
        403
    );
    assert_eq!(
        delete(format!("/v1/webhooks/{id}"), Some(ops.clone()))
            .await
            .status(),
        204
    );
    let again = delete(format!("/v1/webhooks/{id}"), Some(ops.clone())).await;
    assert_eq!(again.status(), 404);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eta_once_known_and_a_silent_courier_going_offline_and_back_are_events() {
    let server = TestServer::start_with(|config| {
        config.courier_offline_s = 1.0;
        config.webhook_retry_min_ms = 50;
    });
    let receiver = Receiver::start(SECRET, Faults::default()).await;
    let events = ["order.eta", "courier.offline", "courier.online"];
    server
        .ops_post(
            "/v1/webhooks",
            &json!({"url": receiver.url(), "secret": SECRET, "events": events}),
            201,
        )
        .await;
    let start = LatLon::new(52.5, 13.4);
    server
        .create_order(&NewOrder::new("hook-eta", LatLon::new(52.51, 13.4)).courier("c-eta"))
        .await;
    let mut courier = server.courier("c-eta").await;
    courier.stream(&trackline_tests::walk(start, 1, 5), 5).await;
    let kinds = |got: &[Received]| -> Vec<String> {
        got.iter()
            .map(|r| r.body["type"].as_str().unwrap().to_string())
            .collect()
    };
    // The first ETA is an event; the courier then stays silent past --courier-offline-s.
    let got = receiver
        .wait_for(Duration::from_secs(20), |got| {
            kinds(got).contains(&"courier.offline".to_string())
        })
        .await;
    assert_eq!(kinds(&got), ["order.eta", "courier.offline"]);
    let eta = &got[0].body["data"]["eta"];
    assert!(eta["arrive_at_ms"].as_i64().is_some(), "{}", got[0].body);
    assert!(got[1].body["data"]["position"]["lat"].as_f64().is_some());
    // Heard from again: online (and, the arrival barely moving, no new ETA event).
    courier.stream(&trackline_tests::walk(start, 6, 1), 1).await;
    let got = receiver
        .wait_for(Duration::from_secs(20), |got| got.len() >= 3)
        .await;
    assert_eq!(kinds(&got)[2], "courier.online");
    check_deliveries(&got);
}

/// Broker mode: a webhook registered on one node is on every node, and each event is sent once,
/// by the node that owns its order.
#[tokio::test(flavor = "multi_thread")]
async fn in_broker_mode_each_event_is_sent_once_by_the_owner_of_its_order() {
    use trackline_tests::cluster::{Broker, Cluster};
    let (_broker, cluster) = tokio::task::block_in_place(|| {
        let broker = Broker::start();
        let cluster = Cluster::start(&broker);
        (broker, cluster)
    });
    let receiver = Receiver::start(SECRET, Faults::default()).await;
    let ops = cluster.node(0).ops_token();
    let body = json!({"url": receiver.url(), "secret": SECRET, "events": ["order.created", "order.status"]});
    let (reply, _) = cluster.post(0, "/v1/webhooks", Some(&ops), &body).await;
    let id = reply.expect_status(201)["id"].as_str().unwrap().to_string();
    for node in 0..3 {
        let (reply, _) = cluster
            .get(node, &format!("/v1/webhooks/{id}"), Some(&ops))
            .await;
        assert_eq!(
            reply.expect_status(200)["url"],
            receiver.url(),
            "on node {node}"
        );
    }
    // Orders owned by each node, all created and cancelled through node 0.
    let orders: Vec<String> = (0..3)
        .map(|node| Cluster::id_on(node, "hook-broker"))
        .collect();
    for order in &orders {
        let (reply, _) = cluster
            .post(
                0,
                "/v1/orders",
                Some(&ops),
                &NewOrder::new(order, DESTINATION).to_json(),
            )
            .await;
        reply.expect_status(201);
        let status = json!({"status": "cancelled"});
        let (reply, _) = cluster
            .post(
                0,
                &format!("/v1/orders/{order}/status"),
                Some(&ops),
                &status,
            )
            .await;
        reply.expect_status(200);
    }
    receiver
        .wait_for(Duration::from_secs(20), |got| got.len() >= 6)
        .await;
    // Nothing more comes: no second node sends the same events.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.received();
    assert_eq!(
        got.len(),
        6,
        "{:?}",
        got.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    let per_order = check_deliveries(&got);
    for order in &orders {
        let kinds: Vec<&str> = per_order[order].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["order.created", "order.status"], "{order}");
    }
    let (reply, _) = cluster
        .get(1, &format!("/v1/webhooks/{id}/deliveries"), Some(&ops))
        .await;
    assert_eq!(reply.expect_status(200)["deliveries"], json!([]));
    let delete = cluster
        .request(
            2,
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            Some(&ops),
            None,
        )
        .await
        .0;
    assert_eq!(delete.status, 204, "{}", delete.text);
    for node in 0..3 {
        let (reply, _) = cluster
            .get(node, &format!("/v1/webhooks/{id}"), Some(&ops))
            .await;
        assert_eq!(reply.expect_error(404), "not_found", "on node {node}");
    }
}

/// Broker mode: a courier's silence is decided by its home node, which routes every fix of the
/// courier, and written by the owner of each order it carries. While the home node is down the
/// owners hear nothing from the courier, yet do not call it offline on their own; once the home
/// node is back and the courier still silent, every order gets one `courier.offline`, then one
/// `courier.online` with the next fix.
#[tokio::test(flavor = "multi_thread")]
async fn in_broker_mode_a_couriers_home_node_decides_its_silence_for_every_order() {
    use trackline_tests::cluster::{Broker, Cluster, CourierApp};
    let mut flags = vec!["--courier-offline-s", "1"];
    flags.extend(FAST_RETRIES);
    let (_broker, mut cluster) = tokio::task::block_in_place(|| {
        let broker = Broker::start();
        let cluster = Cluster::start_with(&broker, &flags);
        (broker, cluster)
    });
    let (home, connected_to) = (0, 1);
    let courier = Cluster::id_on(home, "silent-courier");
    let orders: Vec<String> = [1, 2]
        .into_iter()
        .map(|owner| Cluster::id_on(owner, "silent-order"))
        .collect();
    let receiver = Receiver::start(SECRET, Faults::default()).await;
    let ops = cluster.node(connected_to).ops_token();
    let events = json!(["courier.offline", "courier.online"]);
    let body = json!({"url": receiver.url(), "secret": SECRET, "events": events});
    let (reply, _) = cluster
        .post(connected_to, "/v1/webhooks", Some(&ops), &body)
        .await;
    reply.expect_status(201);
    for order in &orders {
        let new = NewOrder::new(order, DESTINATION).courier(&courier);
        let (reply, _) = cluster
            .post(connected_to, "/v1/orders", Some(&ops), &new.to_json())
            .await;
        reply.expect_status(201);
    }
    let start = LatLon::new(52.5, 13.4);
    let mut app = CourierApp::new(&courier);
    app.deliver(
        cluster.node(connected_to),
        &trackline_tests::walk(start, 1, 3),
        Duration::from_secs(20),
    )
    .await;
    app.disconnect().await;

    tokio::task::block_in_place(|| cluster.node_mut(home).kill());
    // Four times the silence that counts, with the owners up and hearing nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        receiver.received().is_empty(),
        "an owner called the courier offline without its home node: {:?}",
        receiver
            .received()
            .iter()
            .map(|r| &r.body)
            .collect::<Vec<_>>()
    );

    tokio::task::block_in_place(|| cluster.node_mut(home).start_again());
    let kinds_of = |got: &[Received], order: &str| -> Vec<String> {
        got.iter()
            .filter(|r| r.body["data"]["order_id"] == order)
            .map(|r| r.body["type"].as_str().unwrap().to_string())
            .collect()
    };
    let got = receiver
        .wait_for(Duration::from_secs(20), |got| got.len() >= 2)
        .await;
    for order in &orders {
        assert_eq!(kinds_of(&got, order), ["courier.offline"], "{order}");
    }
    app.deliver(
        cluster.node(connected_to),
        &trackline_tests::walk(start, 4, 1),
        Duration::from_secs(20),
    )
    .await;
    receiver
        .wait_for(Duration::from_secs(20), |got| got.len() >= 4)
        .await;
    // Nothing more comes: one decision per courier, each order told once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.received();
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for order in &orders {
        assert_eq!(
            kinds_of(&got, order),
            ["courier.offline", "courier.online"],
            "{order}"
        );
    }
    check_deliveries(&got);
}

/// How many webhooks node `node` of `cluster` has.
async fn listed_on(cluster: &trackline_tests::cluster::Cluster, node: usize, ops: &str) -> usize {
    let (reply, _) = cluster.get(node, "/v1/webhooks", Some(ops)).await;
    reply.expect_status(200)["webhooks"]
        .as_array()
        .unwrap()
        .len()
}

async fn delete_on_0(
    cluster: &trackline_tests::cluster::Cluster,
    path: &str,
    ops: &str,
) -> trackline_tests::Reply {
    let method = reqwest::Method::DELETE;
    cluster.request(0, method, path, Some(ops), None).await.0
}

/// Broker mode: a registration that some node cannot take is taken back on the others (its
/// caller is told it failed, and a generated secret was never shown), and a removal that some
/// node missed is finished by asking again, on any node.
#[tokio::test(flavor = "multi_thread")]
async fn in_broker_mode_a_registration_or_removal_some_node_missed_is_undone_or_finished() {
    use trackline_tests::cluster::{Broker, Cluster};
    let (_broker, mut cluster) = tokio::task::block_in_place(|| {
        let broker = Broker::start();
        let cluster = Cluster::start(&broker);
        (broker, cluster)
    });
    let ops = cluster.node(0).ops_token();
    let url = "http://127.0.0.1:9/hook";

    tokio::task::block_in_place(|| cluster.node_mut(2).kill());
    let (reply, _) = cluster
        .post(0, "/v1/webhooks", Some(&ops), &json!({"url": url}))
        .await;
    assert_eq!(reply.expect_error(503), "owner_unavailable");
    for node in [0, 1] {
        assert_eq!(
            listed_on(&cluster, node, &ops).await,
            0,
            "taken back on node {node}"
        );
    }
    tokio::task::block_in_place(|| cluster.node_mut(2).start_again());

    let body = json!({"url": url, "secret": SECRET});
    let (reply, _) = cluster.post(0, "/v1/webhooks", Some(&ops), &body).await;
    let id = reply.expect_status(201)["id"].as_str().unwrap().to_string();
    tokio::task::block_in_place(|| cluster.node_mut(1).kill());
    let path = format!("/v1/webhooks/{id}");
    assert_eq!(delete_on_0(&cluster, &path, &ops).await.status, 503);
    tokio::task::block_in_place(|| cluster.node_mut(1).start_again());
    assert_eq!(
        listed_on(&cluster, 1, &ops).await,
        1,
        "missed by the down node"
    );
    let again = delete_on_0(&cluster, &path, &ops).await;
    assert_eq!(again.status, 204, "{}", again.text);
    for node in 0..3 {
        assert_eq!(
            listed_on(&cluster, node, &ops).await,
            0,
            "removed on node {node}"
        );
    }
    let (reply, _) = cluster
        .request(0, reqwest::Method::DELETE, &path, Some(&ops), None)
        .await;
    assert_eq!(reply.expect_error(404), "not_found");
}
