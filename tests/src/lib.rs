//! The end-to-end harness: a real trackline server on 127.0.0.1:0 over a temporary data dir,
//! spoken to over real sockets (HTTP with reqwest, WebSockets with tokio-tungstenite).
//!
//! Every helper that waits does so with a timeout, so a broken server fails a test instead of
//! hanging it. Helpers panic with a message naming the request on anything unexpected: they are
//! for tests, where a panic is the failure report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{
    HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL,
};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{CourierId, LatLon, OrderId};
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{from_e7, to_e7, Message as _};
use trackline_server::{Config, ServerHandle};

/// The token secret every test server is started with.
pub const SECRET: &str = "test-secret";
/// How long any single wait (a reply, an ack, an update) may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long starting or stopping the server may take.
const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(30);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server over its own temporary data dir; stopped (gracefully) when dropped.
pub struct TestServer {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    keys: TokenKeys,
    http: reqwest::Client,
    // Last field: removed only after the server has been stopped in `drop`.
    dir: TempDir,
}

impl TestServer {
    /// Starts a server on 127.0.0.1:0 with `Config::for_tests` over a fresh temporary dir.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("trackline-e2e-")
            .tempdir()
            .expect("creating a temporary data dir");
        let handle = spawn_server(dir.path());
        let addr = handle.addr;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("building the HTTP client");
        Self {
            handle: Some(handle),
            addr,
            keys: TokenKeys::new(SECRET.as_bytes()),
            http,
            dir,
        }
    }

    /// Stops the server gracefully and starts a new one on the same data dir (on a new port).
    pub fn restart(&mut self) {
        if let Some(handle) = self.handle.take() {
            stop_server(handle);
        }
        let handle = spawn_server(self.dir.path());
        self.addr = handle.addr;
        self.handle = Some(handle);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `ws://127.0.0.1:PORT` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn ops_token(&self) -> String {
        self.keys.mint(&Role::Ops, 3600)
    }

    pub fn courier_token(&self, courier: &str) -> String {
        let id = CourierId::new(courier).expect("test courier ids are valid");
        self.keys.mint(&Role::Courier(id), 3600)
    }

    pub fn watch_token(&self, order: &str) -> String {
        let id = OrderId::new(order).expect("test order ids are valid");
        self.keys.mint(&Role::Watch(id), 3600)
    }

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
    pub async fn order_state(&self, order: &str) -> Value {
        self.ops_get(&format!("/v1/orders/{order}")).await
    }

    /// `GET /v1/orders/{id}/history` as ops: the stored fixes, oldest first.
    pub async fn history(&self, order: &str) -> Vec<HistoryFix> {
        let body = self.ops_get(&format!("/v1/orders/{order}/history")).await;
        assert_eq!(body["order_id"], order, "history names its order: {body}");
        serde_json::from_value(body["fixes"].clone())
            .unwrap_or_else(|e| panic!("history fixes do not parse ({e}): {body}"))
    }

    /// `GET /v1/couriers/nearby` as ops.
    pub async fn nearby(&self, center: LatLon, radius_m: f64, limit: usize) -> Vec<NearbyCourier> {
        let path = format!(
            "/v1/couriers/nearby?lat={}&lon={}&radius_m={radius_m}&limit={limit}",
            center.lat, center.lon
        );
        let body = self.ops_get(&path).await;
        serde_json::from_value(body["couriers"].clone())
            .unwrap_or_else(|e| panic!("nearby couriers do not parse ({e}): {body}"))
    }

    /// Opens the courier stream as `courier`, with its token in the `Authorization` header.
    pub async fn courier(&self, courier: &str) -> CourierClient {
        let token = self.courier_token(courier);
        let ws = ws_connect(
            &self.ws_url("/v1/courier/ws"),
            TokenIn::Header(&token),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("opening the courier stream as {courier}: {e:#}"));
        CourierClient {
            ws,
            acked: 0,
            acks: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// Opens the watch stream of `order` with `token` (header or query) and a subprotocol.
    pub async fn watch(&self, order: &str, token: TokenIn<'_>, protocol: WatchProtocol) -> Watcher {
        let url = self.ws_url(&format!("/v1/orders/{order}/watch"));
        let ws = ws_connect(&url, token, protocol.name())
            .await
            .unwrap_or_else(|e| {
                panic!("opening the watch stream of {order} ({protocol:?}): {e:#}")
            });
        Watcher { ws, protocol }
    }

    /// The HTTP status of a WebSocket upgrade of `path` (101 when it was accepted).
    pub async fn upgrade_status(&self, path: &str, token: TokenIn<'_>) -> u16 {
        match ws_connect(&self.ws_url(path), token, None).await {
            Ok(mut ws) => {
                let _ = ws.close(None).await;
                101
            }
            Err(e) => match e.downcast_ref::<tungstenite::Error>() {
                Some(tungstenite::Error::Http(response)) => response.status().as_u16(),
                _ => panic!("upgrade of {path} failed without an HTTP status: {e:#}"),
            },
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            stop_server(handle);
        }
    }
}

/// Starts the server on a thread of its own (outside any async runtime), with a timeout.
fn spawn_server(data_dir: &Path) -> ServerHandle {
    let config = Config::for_tests(data_dir, SECRET);
    run_with_timeout("starting the server", move || {
        trackline_server::spawn(config)
    })
    .unwrap_or_else(|e| panic!("server did not start: {e:#}"))
}

/// Stops the server gracefully, with a timeout.
fn stop_server(handle: ServerHandle) {
    run_with_timeout("stopping the server", move || handle.stop());
}

/// Runs blocking `work` on a fresh thread and waits at most [`LIFECYCLE_TIMEOUT`] for it.
fn run_with_timeout<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    match rx.recv_timeout(LIFECYCLE_TIMEOUT) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} took longer than {LIFECYCLE_TIMEOUT:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
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

    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "order_id": self.order_id,
            "destination": {"lat": self.destination.lat, "lon": self.destination.lon},
        });
        if let Some(courier) = &self.courier_id {
            body["courier_id"] = json!(courier);
        }
        if let Some(route) = &self.route {
            body["route"] = route.iter().map(|p| json!([p.lat, p.lon])).collect();
        }
        body
    }
}

/// One fix of `GET /v1/orders/{id}/history`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct HistoryFix {
    pub seq: u64,
    pub time_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f32>,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
}

/// One courier of `GET /v1/couriers/nearby`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct NearbyCourier {
    pub courier_id: String,
    pub lat: f64,
    pub lon: f64,
    pub distance_m: f64,
    pub time_ms: i64,
}

/// Where a WebSocket upgrade carries its token.
#[derive(Debug, Clone, Copy)]
pub enum TokenIn<'a> {
    None,
    /// `Authorization: Bearer <token>`.
    Header(&'a str),
    /// `?token=<token>` (what a browser does).
    Query(&'a str),
}

async fn ws_connect(
    url: &str,
    token: TokenIn<'_>,
    subprotocol: Option<&str>,
) -> anyhow::Result<Ws> {
    let url = match token {
        TokenIn::Query(token) if url.contains('?') => format!("{url}&token={token}"),
        TokenIn::Query(token) => format!("{url}?token={token}"),
        _ => url.to_string(),
    };
    let mut request = url.as_str().into_client_request()?;
    if let TokenIn::Header(token) = token {
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    if let Some(protocol) = subprotocol {
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(protocol)?);
    }
    let (ws, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow::anyhow!("no upgrade answer from {url} within {TIMEOUT:?}"))??;
    Ok(ws)
}

/// A courier app: sends `CourierFrame`s, reads `ServerFrame`s.
pub struct CourierClient {
    ws: Ws,
    /// The highest acked seq so far.
    pub acked: u64,
    /// Every ack received, in order.
    pub acks: Vec<u64>,
    /// Every rejection received, in order.
    pub rejected: Vec<v1::Rejected>,
}

impl CourierClient {
    /// Sends one frame holding `fixes`.
    pub async fn send(&mut self, fixes: &[v1::Fix]) {
        let frame = v1::CourierFrame {
            fixes: fixes.to_vec(),
        };
        tokio::time::timeout(
            TIMEOUT,
            self.ws.send(Message::binary(frame.encode_to_vec())),
        )
        .await
        .expect("sending a courier frame timed out")
        .expect("sending a courier frame");
    }

    /// Reads server frames until an ack covers `seq`, collecting rejections on the way.
    pub async fn wait_ack(&mut self, seq: u64) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.acked < seq {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no ack for seq {seq} within {TIMEOUT:?} (last ack {})",
                        self.acked
                    )
                })
                .unwrap_or_else(|| {
                    panic!("courier stream ended while waiting for the ack of seq {seq}")
                })
                .unwrap_or_else(|e| {
                    panic!("courier stream failed while waiting for the ack of seq {seq}: {e}")
                });
            match message {
                Message::Binary(bytes) => {
                    let frame = v1::ServerFrame::decode(bytes.as_ref())
                        .expect("server frames decode as ServerFrame");
                    match frame.kind {
                        Some(Kind::Ack(ack)) => {
                            assert!(
                                ack.seq >= self.acked,
                                "acks go backwards: {} after {}",
                                ack.seq,
                                self.acked
                            );
                            self.acked = ack.seq;
                            self.acks.push(ack.seq);
                        }
                        Some(Kind::Rejected(rejected)) => {
                            assert!(
                                rejected.seq > self.acked,
                                "rejection of seq {} came after the ack {} covering it",
                                rejected.seq,
                                self.acked
                            );
                            self.rejected.push(rejected);
                        }
                        None => panic!("server frame without a kind"),
                    }
                }
                Message::Close(frame) => {
                    panic!("courier stream closed while waiting for seq {seq}: {frame:?}")
                }
                Message::Text(text) => panic!("text frame on the courier stream: {text}"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Sends `fixes` in frames of `batch`, waiting for each frame's ack before the next (as an app
    /// flushing its buffer does), and returns the seqs that were rejected.
    pub async fn stream(&mut self, fixes: &[v1::Fix], batch: usize) -> Vec<u64> {
        let rejected_before = self.rejected.len();
        for chunk in fixes.chunks(batch) {
            self.send(chunk).await;
            // unwrap: chunks are never empty
            self.wait_ack(chunk.last().unwrap().seq).await;
        }
        self.rejected[rejected_before..]
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    /// Closes the stream politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
    }
}

/// The subprotocol a watcher asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchProtocol {
    /// `trackline.v1.json`.
    Json,
    /// `trackline.v1.proto`.
    Proto,
    /// None asked: the server defaults to JSON.
    Unspecified,
}

impl WatchProtocol {
    fn name(self) -> Option<&'static str> {
        match self {
            WatchProtocol::Json => Some("trackline.v1.json"),
            WatchProtocol::Proto => Some("trackline.v1.proto"),
            WatchProtocol::Unspecified => None,
        }
    }
}

/// One watch-stream message, decoded from JSON or protobuf into one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The JSON `type` ("snapshot" or "update"); `None` on the protobuf stream.
    pub kind: Option<String>,
    pub order_id: String,
    pub offset: u64,
    pub epoch: String,
    /// The lower-case status word.
    pub status: String,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    pub recovered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    pub time_ms: i64,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
    pub accuracy_m: Option<f32>,
}

impl Position {
    pub fn lat_lon(&self) -> LatLon {
        LatLon::new(self.lat, self.lon)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Eta {
    pub seconds: i64,
    pub arrive_at_ms: i64,
}

/// What the next read of a watch stream brought.
#[derive(Debug)]
pub enum WatchEvent {
    Update(Update),
    Closed(Option<CloseFrame>),
}

/// A customer's page or app on the watch stream.
pub struct Watcher {
    ws: Ws,
    protocol: WatchProtocol,
}

impl Watcher {
    /// The next update, or a close; panics on a timeout or a frame of the wrong kind.
    pub async fn next_event(&mut self, within: Duration) -> WatchEvent {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no watch update within {within:?}"),
                Ok(None) => return WatchEvent::Closed(None),
                Ok(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))) => return WatchEvent::Closed(None),
                Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
                Ok(Some(Ok(message))) => message,
            };
            match (message, self.protocol) {
                (Message::Text(text), WatchProtocol::Json | WatchProtocol::Unspecified) => {
                    return WatchEvent::Update(parse_json_update(&text));
                }
                (Message::Binary(bytes), WatchProtocol::Proto) => {
                    let update = v1::OrderUpdate::decode(bytes.as_ref())
                        .expect("binary watch frames decode as OrderUpdate");
                    return WatchEvent::Update(from_proto_update(update));
                }
                (Message::Close(frame), _) => return WatchEvent::Closed(frame),
                (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => {}
                (other, protocol) => {
                    panic!("unexpected frame on a {protocol:?} watch stream: {other:?}")
                }
            }
        }
    }

    /// The next update; panics on a close or a timeout.
    pub async fn next_update(&mut self, within: Duration) -> Update {
        match self.next_event(within).await {
            WatchEvent::Update(update) => update,
            WatchEvent::Closed(frame) => {
                panic!("watch stream closed while an update was expected: {frame:?}")
            }
        }
    }

    /// Reads updates until one satisfies `last` (included) and returns them all.
    pub async fn updates_until(
        &mut self,
        within: Duration,
        last: impl Fn(&Update) -> bool,
    ) -> Vec<Update> {
        let deadline = tokio::time::Instant::now() + within;
        let mut updates = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let update = match self.next_event(left).await {
                WatchEvent::Update(update) => update,
                WatchEvent::Closed(frame) => panic!(
                    "watch stream closed after {} updates: {frame:?}",
                    updates.len()
                ),
            };
            let done = last(&update);
            updates.push(update);
            if done {
                return updates;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(TIMEOUT, self.ws.close(None)).await;
    }
}

fn parse_json_update(text: &str) -> Update {
    let value: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("watch text frame is not JSON ({e}): {text}"));
    let field = |name: &str| {
        value
            .get(name)
            .unwrap_or_else(|| panic!("watch update has no {name:?}: {text}"))
    };
    Update {
        kind: Some(
            field("type")
                .as_str()
                .unwrap_or_else(|| panic!("type is not a string: {text}"))
                .to_string(),
        ),
        order_id: field("order_id")
            .as_str()
            .unwrap_or_else(|| panic!("order_id is not a string: {text}"))
            .to_string(),
        offset: field("offset")
            .as_u64()
            .unwrap_or_else(|| panic!("offset is not an unsigned integer: {text}")),
        epoch: field("epoch")
            .as_str()
            .unwrap_or_else(|| panic!("epoch is not a string: {text}"))
            .to_string(),
        status: field("status")
            .as_str()
            .unwrap_or_else(|| panic!("status is not a string: {text}"))
            .to_string(),
        position: serde_json::from_value(value.get("position").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|e| panic!("position does not parse ({e}): {text}")),
        eta: serde_json::from_value(value.get("eta").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|e| panic!("eta does not parse ({e}): {text}")),
        recovered: value
            .get("recovered")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

fn from_proto_update(update: v1::OrderUpdate) -> Update {
    let status = v1::OrderStatus::try_from(update.status)
        .unwrap_or_else(|_| panic!("unknown status {} in a proto update", update.status));
    let status = status
        .as_str_name()
        .strip_prefix("ORDER_STATUS_")
        .unwrap_or_else(|| panic!("status name {status:?} has no ORDER_STATUS_ prefix"))
        .to_lowercase();
    let known = |x: f32| (x >= 0.0).then_some(x);
    Update {
        kind: None,
        order_id: update.order_id,
        offset: update.offset,
        epoch: update.epoch,
        status,
        position: update.position.map(|p| Position {
            lat: from_e7(p.lat_e7),
            lon: from_e7(p.lon_e7),
            time_ms: p.time_ms,
            speed_mps: known(p.speed_mps),
            heading_deg: known(p.heading_deg),
            accuracy_m: (p.accuracy_m > 0.0).then_some(p.accuracy_m),
        }),
        eta: update.eta.map(|e| Eta {
            seconds: e.seconds,
            arrive_at_ms: e.arrive_at_ms,
        }),
        recovered: update.recovered,
    }
}

/// One point of a recorded trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripPoint {
    pub time_ms: i64,
    pub pos: LatLon,
}

/// The directory of the trips copied from shared/trajectories (CSV `t_unix,lat,lon`).
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Loads a recorded trip from `tests/data/`.
pub fn load_trip(file: &str) -> Vec<TripPoint> {
    let path = data_dir().join(file);
    let mut reader =
        csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    reader
        .records()
        .map(|record| {
            let record = record.unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let number = |i: usize| -> f64 {
                record
                    .get(i)
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: column {i} of {record:?} is not a number",
                            path.display()
                        )
                    })
            };
            TripPoint {
                time_ms: (number(0) * 1000.0).round() as i64,
                pos: LatLon::new(number(1), number(2)),
            }
        })
        .collect()
}

/// The horizontal accuracy every trip fix claims, in metres.
pub const TRIP_ACCURACY_M: f32 = 5.0;

/// Turns trip points into wire fixes with seqs from `first_seq`, shifted in time so that the last
/// one was recorded one second ago (as a phone streaming live would have sent them). Speed and
/// heading are derived from the previous point.
pub fn trip_fixes(points: &[TripPoint], first_seq: u64) -> Vec<v1::Fix> {
    let Some(last) = points.last() else {
        return Vec::new();
    };
    let shift = trackline_core::now_ms() - 1000 - last.time_ms;
    let mut fixes = Vec::with_capacity(points.len());
    for (i, point) in points.iter().enumerate() {
        let (speed, heading) = match i.checked_sub(1).map(|p| points[p]) {
            Some(prev) if point.time_ms > prev.time_ms => {
                let metres = prev.pos.distance_m(point.pos);
                let speed = metres / ((point.time_ms - prev.time_ms) as f64 / 1000.0);
                (speed as f32, bearing_deg(prev.pos, point.pos) as f32)
            }
            _ => (-1.0, -1.0),
        };
        fixes.push(v1::Fix {
            seq: first_seq + i as u64,
            time_ms: point.time_ms + shift,
            lat_e7: to_e7(point.pos.lat),
            lon_e7: to_e7(point.pos.lon),
            accuracy_m: TRIP_ACCURACY_M,
            speed_mps: speed,
            heading_deg: heading,
        });
    }
    fixes
}

/// The initial great-circle bearing from `a` to `b`, in degrees in [0, 360).
pub fn bearing_deg(a: LatLon, b: LatLon) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlon = (b.lon - a.lon).to_radians();
    let y = dlon.sin() * la2.cos();
    let x = la1.cos() * la2.sin() - la1.sin() * la2.cos() * dlon.cos();
    let deg = y.atan2(x).to_degrees().rem_euclid(360.0);
    // rem_euclid can round up to exactly 360.0 for tiny negative angles
    if deg >= 360.0 {
        0.0
    } else {
        deg
    }
}

/// The position of a wire fix, in degrees.
pub fn fix_pos(fix: &v1::Fix) -> LatLon {
    LatLon::new(from_e7(fix.lat_e7), from_e7(fix.lon_e7))
}

/// The fixes that were not rejected.
pub fn accepted(fixes: &[v1::Fix], rejected: &[u64]) -> Vec<v1::Fix> {
    fixes
        .iter()
        .filter(|f| !rejected.contains(&f.seq))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_load_with_every_point() {
        let run = load_trip("run_vincennes_DC2_garmin.csv");
        assert_eq!(run.len(), 2643);
        assert_eq!(run[0].time_ms, 1_627_151_005_000);
        assert!(
            (run[0].pos.lat - 48.8293093).abs() < 1e-9 && (run[0].pos.lon - 2.4605997).abs() < 1e-9
        );
        assert_eq!(load_trip("car_visnjan_hr.csv").len(), 104);
    }

    #[test]
    fn trip_fixes_end_now_and_keep_the_recorded_spacing() {
        let points = load_trip("car_visnjan_hr.csv");
        let fixes = trip_fixes(&points, 7);
        let now = trackline_core::now_ms();
        let last = fixes.last().unwrap();
        assert!(
            (now - 5_000..now).contains(&last.time_ms),
            "{} vs now {now}",
            last.time_ms
        );
        for (i, (fix, point)) in fixes.iter().zip(&points).enumerate() {
            assert_eq!(fix.seq, 7 + i as u64);
            assert_eq!(
                last.time_ms - fix.time_ms,
                points.last().unwrap().time_ms - point.time_ms
            );
            assert!(fix_pos(fix).distance_m(point.pos) < 0.05);
            assert!(
                (0.0..85.0).contains(&fix.speed_mps) || i == 0,
                "speed {}",
                fix.speed_mps
            );
            assert!(
                (0.0..360.0).contains(&fix.heading_deg) || i == 0,
                "heading {}",
                fix.heading_deg
            );
        }
    }

    #[test]
    fn bearings_point_the_right_way() {
        let origin = LatLon::new(45.0, 13.0);
        assert!(bearing_deg(origin, LatLon::new(45.1, 13.0)).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 13.1)) - 90.0).abs() < 0.1);
        assert!((bearing_deg(origin, LatLon::new(44.9, 13.0)) - 180.0).abs() < 1e-6);
        assert!((bearing_deg(origin, LatLon::new(45.0, 12.9)) - 270.0).abs() < 0.1);
    }
}
