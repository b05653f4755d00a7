//! The REST API as a client sees it: requests with or without a token, the answer with its
//! status and JSON body, read into the REST contract's types (`trackline-rest`).

use std::time::{Duration, Instant};

use serde_json::Value;
use trackline_core::LatLon;
use trackline_rest::{CreateOrder, History, HistoryFix, NearbyCourier, NearbyCouriers};

use crate::TestServer;

impl TestServer {
    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let request = self.http.get(self.http_url(path));
        send(request, token, format!("GET {path}")).await
    }

    /// `POST path` with a JSON body and an optional bearer token.
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let request = self.http.post(self.http_url(path)).json(body);
        send(request, token, format!("POST {path} {body}")).await
    }

    /// `PUT path` with a JSON body and an optional bearer token.
    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        let request = self.http.put(self.http_url(path)).json(body);
        send(request, token, format!("PUT {path} {body}")).await
    }

    /// `GET path` as ops, expecting 200; the JSON body.
    pub async fn ops_get(&self, path: &str) -> Value {
        self.get(path, Some(&self.ops_token()))
            .await
            .expect_status(200)
    }

    /// `POST path` as ops, expecting `status`; the JSON body.
    pub async fn ops_post(&self, path: &str, body: &Value, status: u16) -> Value {
        self.post(path, Some(&self.ops_token()), body)
            .await
            .expect_status(status)
    }

    /// Creates an order as ops and expects 201; the reply (`order_id`, `watch_token`, `watch_url`).
    pub async fn create_order(&self, order: &NewOrder) -> Value {
        self.ops_post("/v1/orders", &order.to_json(), 201).await
    }

    /// `GET /v1/orders/{id}` as ops.
    /// The order's current (durable) offset and epoch, as `GET /v1/orders/{id}` reports them.
    pub async fn offset_and_epoch(&self, order: &str) -> (u64, String) {
        let state = self.order_state(order).await;
        let offset = state["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("no offset in {state}"));
        let epoch = state["epoch"]
            .as_str()
            .unwrap_or_else(|| panic!("no epoch in {state}"))
            .to_string();
        (offset, epoch)
    }

    pub async fn order_state(&self, order: &str) -> Value {
        self.ops_get(&format!("/v1/orders/{order}")).await
    }

    /// `GET /v1/orders/{id}/history` as ops: the stored fixes, oldest first.
    pub async fn history(&self, order: &str) -> Vec<HistoryFix> {
        let body = self.ops_get(&format!("/v1/orders/{order}/history")).await;
        let history: History = serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("history does not parse ({e}): {body}"));
        assert_eq!(
            history.order_id.as_str(),
            order,
            "history names its order: {body}"
        );
        history.fixes
    }

    /// `GET /v1/couriers/nearby` as ops.
    pub async fn nearby(&self, center: LatLon, radius_m: f64, limit: usize) -> Vec<NearbyCourier> {
        let path = format!(
            "/v1/couriers/nearby?lat={}&lon={}&radius_m={radius_m}&limit={limit}",
            center.lat, center.lon
        );
        let body = self.ops_get(&path).await;
        let found: NearbyCouriers = serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("nearby couriers do not parse ({e}): {body}"));
        found.couriers
    }

    /// The value of a counter or gauge in the Prometheus text of `/metrics` (0 when absent). A
    /// binary server's metrics are its own; in-process servers share one recorder per process.
    pub async fn metric(&self, name: &str) -> f64 {
        let reply = self.get("/metrics", None).await;
        assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
        reply
            .text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                (key == name || key.starts_with(&format!("{name}{{")))
                    .then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Polls a metric until it reaches `at_least` or `within` passes; its last value.
    pub async fn metric_reaching(&self, name: &str, at_least: f64, within: Duration) -> f64 {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(name).await;
            if value >= at_least || Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn send(request: reqwest::RequestBuilder, token: Option<&str>, what: String) -> Reply {
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        what,
        status,
        body,
        text,
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The request, for failure messages.
    pub what: String,
    pub status: u16,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// Asserts the status and returns the JSON body.
    pub fn expect_status(self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "{}: expected {status}, got {} with body {}",
            self.what, self.status, self.text
        );
        self.body
    }

    /// Asserts the status and that the body is the protocol's error shape; returns the error code.
    pub fn expect_error(self, status: u16) -> String {
        let what = self.what.clone();
        let body = self.expect_status(status);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.code in {body}"));
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error.message in {body}"));
        assert!(
            !code.is_empty() && !message.is_empty(),
            "{what}: empty error code or message in {body}"
        );
        code.to_string()
    }
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_id: String,
    pub destination: LatLon,
    pub courier_id: Option<String>,
    pub route: Option<Vec<LatLon>>,
}

impl NewOrder {
    pub fn new(order_id: &str, destination: LatLon) -> Self {
        Self {
            order_id: order_id.to_string(),
            destination,
            courier_id: None,
            route: None,
        }
    }

    pub fn courier(mut self, courier: &str) -> Self {
        self.courier_id = Some(courier.to_string());
        self
    }

    pub fn route(mut self, route: Vec<LatLon>) -> Self {
        self.route = Some(route);
        self
    }

    /// The request in the REST contract's terms.
    pub fn to_request(&self) -> CreateOrder {
        CreateOrder {
            order_id: self.order_id.clone(),
            destination: self.destination.into(),
            courier_id: self.courier_id.clone(),
            route: self
                .route
                .as_ref()
                .map(|route| route.iter().map(|p| [p.lat, p.lon]).collect()),
            promised_at_ms: None,
            pickup: None,
        }
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_request()).expect("a request serialises")
    }
}
