//! Access control: every endpoint and both streams against no token, a garbage token,
//! an expired one, a forged one (wrong signature), each role, a token for another order or
//! courier, and the right one, with the exact status, the error shape, and nothing of another
//! order in any answer. Then what tokens may do once past the door: a courier writes only to the
//! orders assigned to it, a watch token sees no position after delivery, an expiring token ends
//! its stream with 1008.
//!
//! The matrix is the one place where the 401 and 403 answers of every endpoint are checked, each
//! with its exact error body.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{now_ms, CourierId, LatLon, OrderId};
use trackline_proto::v1;
use trackline_tests::raw::RawWs;
use trackline_tests::{
    walk, NewOrder, TestServer, TokenIn, WatchEvent, WatchProtocol, SECRET, TIMEOUT,
};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoToken,
    Garbage,
    /// An ops token (the strongest role) that expired an hour ago.
    Expired,
    /// An ops token signed with another secret.
    Forged,
    Ops,
    /// The courier of the order under test.
    Courier,
    /// A courier with an order of its own, not this one.
    OtherCourier,
    /// A watch token for the order under test.
    Watch,
    /// A watch token for another order.
    OtherWatch,
}

const EVERYONE: [Who; 9] = [
    Who::NoToken,
    Who::Garbage,
    Who::Expired,
    Who::Forged,
    Who::Ops,
    Who::Courier,
    Who::OtherCourier,
    Who::Watch,
    Who::OtherWatch,
];

const ORDER: &str = "order-own";

const COURIER: &str = "courier-own";

const OTHER_ORDER: &str = "order-other";

const OTHER_COURIER: &str = "courier-other";

/// Distinctive coordinates: their digits must never show up in an answer to someone else.
const DEST: LatLon = LatLon {
    lat: 48.8566123,
    lon: 2.3522456,
};

const OTHER_DEST: LatLon = LatLon {
    lat: 45.7640987,
    lon: 4.8356789,
};

fn keys() -> TokenKeys {
    TokenKeys::new(SECRET.as_bytes())
}

fn token(who: Who) -> Option<String> {
    let keys = keys();
    let courier = |c: &str| Role::Courier(CourierId::new(c).unwrap());
    let watch = |o: &str| Role::Watch(OrderId::new(o).unwrap());
    Some(match who {
        Who::NoToken => return None,
        Who::Garbage => "not-a-token".to_string(),
        Who::Expired => keys.mint_at(&Role::Ops, 60, now_ms() / 1000 - 3600),
        Who::Forged => TokenKeys::new(b"some-other-secret").mint(&Role::Ops, 3600),
        Who::Ops => keys.mint(&Role::Ops, 3600),
        Who::Courier => keys.mint(&courier(COURIER), 3600),
        Who::OtherCourier => keys.mint(&courier(OTHER_COURIER), 3600),
        Who::Watch => keys.mint(&watch(ORDER), 3600),
        Who::OtherWatch => keys.mint(&watch(OTHER_ORDER), 3600),
    })
}

/// Asserts that `body` is exactly `{"error": {"code": code, "message": "<non-empty>"}}`.
fn assert_error_shape(what: &str, body: &Value, code: &str) {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is not a JSON object: {body}"));
    assert_eq!(
        object.keys().collect::<Vec<_>>(),
        ["error"],
        "{what}: {body}"
    );
    let error = body["error"].as_object().unwrap();
    assert_eq!(
        error.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"code".to_string(), &"message".to_string()]),
        "{what}: {body}"
    );
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        !body["error"]["message"].as_str().unwrap_or("").is_empty(),
        "{what}: empty message in {body}"
    );
}

/// What must not appear in an answer to `who`: the other order's data to anyone but ops, and
/// the order under test's data to anyone who may not read it.
fn secrets_for(who: Who, epoch: &str, other_epoch: &str) -> Vec<String> {
    if who == Who::Ops {
        return Vec::new();
    }
    let mut secrets = vec![other_epoch.to_string(), OTHER_DEST.lat.to_string()];
    if who != Who::OtherCourier {
        secrets.push(OTHER_COURIER.to_string());
    }
    // The order's courier gets the order's state back when it moves it.
    if who != Who::Watch && who != Who::Courier {
        secrets.extend([epoch.to_string(), DEST.lat.to_string(), COURIER.to_string()]);
    }
    secrets
}

/// One endpoint of the matrix.
struct Endpoint {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// The status for each valid token; anything not listed gets 403.
    allowed: Vec<(Who, u16)>,
    /// A WebSocket upgrade (the token may also come as `?token=`).
    websocket: bool,
}

impl Endpoint {
    fn http(method: &'static str, path: &str, body: Option<Value>, allowed: &[(Who, u16)]) -> Self {
        Self {
            method,
            path: path.to_string(),
            body,
            allowed: allowed.to_vec(),
            websocket: false,
        }
    }

    fn ws(path: &str, allowed: &[Who]) -> Self {
        Self {
            method: "GET",
            path: path.to_string(),
            body: None,
            allowed: allowed.iter().map(|w| (*w, 101)).collect(),
            websocket: true,
        }
    }

    fn expected(&self, who: Who) -> u16 {
        match who {
            Who::NoToken | Who::Garbage | Who::Expired | Who::Forged => 401,
            _ => self
                .allowed
                .iter()
                .find(|(w, _)| *w == who)
                .map_or(403, |(_, s)| *s),
        }
    }
}

async fn http_call(
    client: &reqwest::Client,
    server: &TestServer,
    endpoint: &Endpoint,
    who: Who,
    body: Option<&Value>,
) -> (u16, String) {
    let url = server.http_url(&endpoint.path);
    let mut request = match endpoint.method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        other => unreachable!("method {other}"),
    };
    if let Some(token) = token(who) {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {} as {who:?}: {e}", endpoint.method, endpoint.path));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Two orders with couriers, each with a few stored fixes; the epochs of both.
async fn two_orders(server: &TestServer) -> (String, String) {
    server
        .create_order(&NewOrder::new(ORDER, DEST).courier(COURIER))
        .await;
    server
        .create_order(&NewOrder::new(OTHER_ORDER, OTHER_DEST).courier(OTHER_COURIER))
        .await;
    for (courier, start) in [
        (COURIER, LatLon::new(DEST.lat - 0.01, DEST.lon)),
        (
            OTHER_COURIER,
            LatLon::new(OTHER_DEST.lat - 0.01, OTHER_DEST.lon),
        ),
    ] {
        let mut client = server.courier(courier).await;
        client.stream(&walk(start, 1, 5), 5).await;
        assert!(client.rejected.is_empty(), "{:?}", client.rejected);
        client.close().await;
    }
    let epoch = server.order_state(ORDER).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    let other_epoch = server.order_state(OTHER_ORDER).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    (epoch, other_epoch)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_and_stream_answers_each_caller_with_the_exact_status() {
    let server = TestServer::start();
    let (epoch, other_epoch) = two_orders(&server).await;
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    use Who::*;
    let ops_only = |status: u16| vec![(Ops, status)];
    let endpoints = vec![
        Endpoint::http("POST", "/v1/orders", Some(json!({})), &ops_only(201)),
        Endpoint::http("GET", "/v1/orders", None, &ops_only(200)),
        Endpoint::http("GET", "/v1/orders?status=all", None, &ops_only(200)),
        Endpoint::http(
            "GET",
            &format!("/v1/orders/{ORDER}"),
            None,
            &[(Ops, 200), (Watch, 200)],
        ),
        Endpoint::http(
            "POST",
            &format!("/v1/orders/{ORDER}/assign"),
            Some(json!({"courier_id": COURIER})),
            &ops_only(200),
        ),
        Endpoint::http(
            "POST",
            &format!("/v1/orders/{ORDER}/status"),
            Some(json!({"status": "picked_up"})),
            &[(Ops, 200), (Courier, 200)],
        ),
        Endpoint::http(
            "GET",
            &format!("/v1/orders/{ORDER}/history"),
            None,
            &ops_only(200),
        ),
        Endpoint::http(
            "GET",
            &format!("/v1/orders/{ORDER}/history?format=gpx"),
            None,
            &ops_only(200),
        ),
        Endpoint::http(
            "GET",
            &format!(
                "/v1/couriers/nearby?lat={}&lon={}&radius_m=50000",
                DEST.lat, DEST.lon
            ),
            None,
            &ops_only(200),
        ),
        Endpoint::http(
            "GET",
            "/v1/couriers/within?south=40&west=0&north=50&east=10",
            None,
            &ops_only(200),
        ),
        Endpoint::http(
            "POST",
            "/v1/tokens",
            Some(json!({"role": "ops"})),
            &ops_only(200),
        ),
        Endpoint::http(
            "POST",
            "/v1/admin/purge",
            Some(json!({"before_ms": 1})),
            &ops_only(200),
        ),
        Endpoint::http(
            "GET",
            &format!("/track/{ORDER}"),
            None,
            &[(Ops, 200), (Watch, 200)],
        ),
        Endpoint::http("GET", "/ops/map", None, &ops_only(200)),
        Endpoint::ws("/v1/courier/ws", &[Courier, OtherCourier]),
        Endpoint::ws(&format!("/v1/orders/{ORDER}/watch"), &[Ops, Watch]),
    ];

    let mut created = 0;
    let mut checked = 0;
    for endpoint in &endpoints {
        for who in EVERYONE {
            let expected = endpoint.expected(who);
            let what = format!("{} {} as {who:?}", endpoint.method, endpoint.path);
            let (status, text) = if endpoint.websocket {
                match RawWs::connect(server.addr(), &endpoint.path, token(who).as_deref()).await {
                    Ok(mut ws) => {
                        ws.write(&trackline_tests::raw::frame(
                            true,
                            0,
                            trackline_tests::raw::op::CLOSE,
                            &1000u16.to_be_bytes(),
                            Some([1, 2, 3, 4]),
                        ))
                        .await;
                        (101, String::new())
                    }
                    Err(refused) => (
                        refused.status,
                        String::from_utf8_lossy(&refused.body).to_string(),
                    ),
                }
            } else {
                // A fresh order id for each create, so an allowed create is a 201, not a 409.
                let body = endpoint.body.as_ref().map(|b| {
                    if endpoint.path == "/v1/orders" {
                        created += 1;
                        json!({"order_id": format!("created-{created}"), "destination": {"lat": 1.0, "lon": 2.0}})
                    } else {
                        b.clone()
                    }
                });
                http_call(&client, &server, endpoint, who, body.as_ref()).await
            };
            assert_eq!(status, expected, "{what}: got {status} {text}");
            checked += 1;
            if status == 200 && endpoint.path == format!("/v1/orders/{ORDER}") {
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what}: the order is not JSON ({e}): {text}"));
                assert_eq!(
                    body["order_id"], ORDER,
                    "{what}: another order answered: {text}"
                );
            }
            if status >= 400 {
                let body: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {text}"));
                let code = if status == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_error_shape(&what, &body, code);
            }
            for secret in secrets_for(who, &epoch, &other_epoch) {
                assert!(
                    !text.contains(&secret),
                    "{what}: the answer holds {secret:?}: {text}"
                );
            }
        }
    }
    assert_eq!(checked, endpoints.len() * EVERYONE.len());

    // The WebSocket upgrades also take ?token= (browsers), with the same answers.
    for who in EVERYONE {
        for endpoint in endpoints.iter().filter(|e| e.websocket) {
            let status = match token(who) {
                Some(t) => {
                    server
                        .upgrade_status(&endpoint.path, TokenIn::Query(&t))
                        .await
                }
                None => server.upgrade_status(&endpoint.path, TokenIn::None).await,
            };
            assert_eq!(
                status,
                endpoint.expected(who),
                "{} with ?token= as {who:?}",
                endpoint.path
            );
        }
    }

    // Only ops created orders, only the allowed callers changed the order.
    let all = server.ops_get("/v1/orders?status=all&limit=1000").await;
    let ids: BTreeSet<String> = all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_string())
        .collect();
    let expected_ids = BTreeSet::from([ORDER.to_string(), OTHER_ORDER.to_string()]);
    let created_ids: BTreeSet<String> = (1..=created).map(|i| format!("created-{i}")).collect();
    assert!(
        ids.is_superset(&expected_ids),
        "{ids:?} lacks some of {expected_ids:?}"
    );
    let made: Vec<_> = ids.intersection(&created_ids).collect();
    assert_eq!(made.len(), 1, "only the ops create made an order: {made:?}");
    let state = server.order_state(ORDER).await;
    assert_eq!(state["status"], "picked_up");
    assert_eq!(state["courier_id"], COURIER);
    let other = server.order_state(OTHER_ORDER).await;
    assert_eq!(
        other["status"], "assigned",
        "nobody touched the other order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn public_endpoints_answer_everyone_and_ignore_tokens() {
    let server = TestServer::start();
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    for path in ["/healthz", "/readyz", "/metrics", "/assets/track.js"] {
        for who in [Who::NoToken, Who::Garbage, Who::Forged, Who::Watch] {
            let endpoint = Endpoint::http("GET", path, None, &[]);
            let (status, _) = http_call(&client, &server, &endpoint, who, None).await;
            assert_eq!(status, 200, "GET {path} as {who:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_are_taken_from_the_header_only_and_strictly() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new(ORDER, DEST).courier(COURIER))
        .await;
    let ops = token(Who::Ops).unwrap();
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let url = server.http_url(&format!("/v1/orders/{ORDER}"));

    // ?token= is for browsers' pages and sockets; the API wants the header (tokens stay out of logs).
    let response = client
        .get(format!("{url}?token={ops}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_error_shape(
        "token in the query",
        &response.json().await.unwrap(),
        "unauthorized",
    );

    // Hand-made tokens: each is refused with 401.
    let now = now_ms() / 1000;
    let sign = |claims: Value, secret: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let b64 = |v: Value| {
        use std::fmt::Write;
        // base64url without padding, by hand (no extra dependency)
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = write!(
                    out,
                    "{}",
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
                );
            }
        }
        out
    };
    let valid = sign(
        json!({"role": "ops", "iat": now, "exp": now + 600}),
        SECRET.as_bytes(),
    );
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"role": "ops", "iat": now, "exp": now + 600}))
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "no exp claim",
            sign(json!({"role": "ops", "iat": now}), SECRET.as_bytes()),
        ),
        ("alg none", unsigned),
        (
            "unknown role",
            sign(
                json!({"role": "admin", "iat": now, "exp": now + 600}),
                SECRET.as_bytes(),
            ),
        ),
        (
            "ops with a subject",
            sign(
                json!({"role": "ops", "sub": "x", "iat": now, "exp": now + 600}),
                SECRET.as_bytes(),
            ),
        ),
        (
            "watch of an invalid id",
            sign(
                json!({"role": "watch", "sub": "../x", "iat": now, "exp": now + 600}),
                SECRET.as_bytes(),
            ),
        ),
        (
            "expired a second ago",
            sign(
                json!({"role": "ops", "iat": now - 60, "exp": now - 1}),
                SECRET.as_bytes(),
            ),
        ),
        ("signature cut", valid[..valid.len() - 2].to_string()),
        ("two tokens", format!("{valid} {valid}")),
        ("empty", String::new()),
    ];
    for (what, token) in &cases {
        let response = client
            .get(&url)
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{what}: {token}");
        assert_error_shape(what, &response.json().await.unwrap(), "unauthorized");
    }
    for header in [
        format!("Basic {valid}"),
        valid.clone(),
        "Bearer".to_string(),
    ] {
        let response = client
            .get(&url)
            .header("Authorization", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "Authorization: {header}");
    }
    // The well-made one passes: the refusals above are about the tokens, not the request.
    let response = client.get(&url).bearer_auth(&valid).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_courier_writes_only_to_the_orders_assigned_to_it() {
    let server = TestServer::start();
    let start = LatLon::new(DEST.lat - 0.01, DEST.lon);
    server
        .create_order(&NewOrder::new("order-a", DEST).courier("courier-a"))
        .await;
    server
        .create_order(&NewOrder::new("order-b", DEST).courier("courier-b"))
        .await;
    server
        .create_order(&NewOrder::new("order-unassigned", DEST))
        .await;

    // courier-b streams: acked, stored on its own order only.
    let mut b = server.courier("courier-b").await;
    b.stream(&walk(start, 1, 10), 5).await;
    assert_eq!(b.acked, 10);
    let mut a = server.courier("courier-a").await;
    a.stream(&walk(start, 1, 4), 4).await;
    assert_eq!(server.history("order-b").await.len(), 10);
    assert_eq!(
        server
            .history("order-a")
            .await
            .iter()
            .map(|f| f.seq)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "order-a holds courier-a's fixes and nothing of courier-b's"
    );
    assert!(server.history("order-unassigned").await.is_empty());

    // order-a goes to courier-b: courier-a's later fixes are acked (its position stays live for
    // dispatch) but stored nowhere.
    server
        .ops_post(
            "/v1/orders/order-a/assign",
            &json!({"courier_id": "courier-b"}),
            200,
        )
        .await;
    a.stream(&walk(start, 5, 6), 6).await;
    assert_eq!(a.acked, 10);
    let a_history = server.history("order-a").await;
    assert_eq!(
        a_history.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "no fix of courier-a after it was unassigned"
    );
    assert_eq!(server.history("order-b").await.len(), 10);
    assert!(server.history("order-unassigned").await.is_empty());

    // A courier may not move an order that is not its own (and the order does not move).
    for (courier, order) in [
        ("courier-a", "order-a"),
        ("courier-a", "order-b"),
        ("courier-a", "order-unassigned"),
    ] {
        let token = server.courier_token(courier);
        let code = server
            .post(
                &format!("/v1/orders/{order}/status"),
                Some(&token),
                &json!({"status": "cancelled"}),
            )
            .await
            .expect_error(403);
        assert_eq!(code, "forbidden", "{courier} on {order}");
        assert_ne!(server.order_state(order).await["status"], "cancelled");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_token_sees_no_position_after_delivery() {
    let server = TestServer::start();
    let reply = server
        .create_order(&NewOrder::new(ORDER, DEST).courier(COURIER))
        .await;
    let watch = reply["watch_token"].as_str().unwrap().to_string();
    let mut courier = server.courier(COURIER).await;
    courier
        .stream(&walk(LatLon::new(DEST.lat - 0.01, DEST.lon), 1, 5), 5)
        .await;
    courier.close().await;
    let courier_token = server.courier_token(COURIER);
    for status in ["picked_up", "delivered"] {
        server
            .post(
                &format!("/v1/orders/{ORDER}/status"),
                Some(&courier_token),
                &json!({"status": status}),
            )
            .await
            .expect_status(200);
    }

    let as_watch = server
        .get(&format!("/v1/orders/{ORDER}"), Some(&watch))
        .await
        .expect_status(200);
    assert_eq!(as_watch["status"], "delivered");
    assert_eq!(as_watch["position"], Value::Null, "{as_watch}");
    assert_eq!(as_watch["eta"], Value::Null, "{as_watch}");
    let as_ops = server.order_state(ORDER).await;
    assert!(
        as_ops["position"].is_object(),
        "ops still sees the last position: {as_ops}"
    );

    for protocol in [WatchProtocol::Json, WatchProtocol::Proto] {
        let mut watcher = server.watch(ORDER, TokenIn::Query(&watch), protocol).await;
        let last = watcher.next_update(TIMEOUT).await;
        assert_eq!(last.status, "delivered");
        assert_eq!(last.position, None, "{protocol:?}: {last:?}");
        assert_eq!(last.eta, None, "{protocol:?}: {last:?}");
        match watcher.next_event(TIMEOUT).await {
            WatchEvent::Closed(Some(frame)) => assert_eq!(u16::from(frame.code), 1000),
            other => panic!("{protocol:?}: expected a normal close, got {other:?}"),
        }
    }
    // The history stays ops-only.
    server
        .get(&format!("/v1/orders/{ORDER}/history"), Some(&watch))
        .await
        .expect_error(403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_expires_ends_its_stream_with_1008() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new(ORDER, DEST).courier(COURIER))
        .await;
    let keys = keys();
    let short_courier = keys.mint(&Role::Courier(CourierId::new(COURIER).unwrap()), 2);
    let short_watch = keys.mint(&Role::Watch(OrderId::new(ORDER).unwrap()), 2);
    let started = std::time::Instant::now();
    let mut courier = RawWs::connect(server.addr(), "/v1/courier/ws", Some(&short_courier))
        .await
        .unwrap_or_else(|r| panic!("courier upgrade refused: {r:?}"));
    let mut watcher = RawWs::connect(
        server.addr(),
        &format!("/v1/orders/{ORDER}/watch"),
        Some(&short_watch),
    )
    .await
    .unwrap_or_else(|r| panic!("watch upgrade refused: {r:?}"));
    // The courier is served while its token is good.
    let frame = v1::CourierFrame {
        fixes: walk(LatLon::new(DEST.lat - 0.01, DEST.lon), 1, 1),
    };
    assert!(courier.binary(&prost::Message::encode_to_vec(&frame)).await);
    let ack = courier
        .next_binary(TIMEOUT)
        .await
        .expect("an ack before the token expires");
    assert!(!ack.is_empty());
    use trackline_tests::raw::Ending;
    let (c, w) = tokio::join!(
        courier.ending(Duration::from_secs(6)),
        watcher.ending(Duration::from_secs(6))
    );
    assert_eq!(c, Ending::Closed(Some(1008)), "courier stream");
    assert_eq!(w, Ending::Closed(Some(1008)), "watch stream");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?} for a 2 s token"
    );
    // A new token opens a new stream.
    assert_eq!(
        server
            .upgrade_status(
                "/v1/courier/ws",
                TokenIn::Header(&server.courier_token(COURIER))
            )
            .await,
        101
    );
}

/// `POST /v1/orders/{id}/status` with a courier token checks the courier before anything else:
/// another courier's ended order and an order that does not exist both answer 403, like an
/// active order of another courier, so a courier token cannot probe which order ids exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_courier_learns_nothing_of_orders_not_its_own() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new("active-other", DEST).courier(OTHER_COURIER))
        .await;
    server
        .create_order(&NewOrder::new("ended-other", DEST).courier(OTHER_COURIER))
        .await;
    server
        .ops_post(
            "/v1/orders/ended-other/status",
            &json!({"status": "cancelled"}),
            200,
        )
        .await;
    let token = server.courier_token(COURIER);
    // Whether the order exists, is active or has ended: the same 403, saying nothing of it.
    for order in ["active-other", "ended-other", "never-created"] {
        let reply = server
            .post(
                &format!("/v1/orders/{order}/status"),
                Some(&token),
                &json!({"status": "picked_up"}),
            )
            .await;
        let text = reply.text.clone();
        assert_eq!(reply.expect_error(403), "forbidden", "{order}: {text}");
        assert!(
            !text.contains("cancelled") && !text.contains(OTHER_COURIER),
            "{order}: {text}"
        );
    }
}
