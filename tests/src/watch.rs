//! The watch stream as a customer's page speaks it: JSON or protobuf updates decoded into one
//! shape, resumes, and sockets that behave like a phone on a slow link.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

use crate::ws::{set_max_segment, tcp_of, ws_connect, ws_connect_request, ws_request, TokenIn, Ws};
use crate::{TestServer, TIMEOUT};

impl TestServer {
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
        self.upgrade_status_from(path, token, None).await
    }

    /// The HTTP status of a WebSocket upgrade of `path` started by a page of `origin` (a
    /// browser sends its page's origin with every upgrade), or by an app (`None`).
    pub async fn upgrade_status_from(
        &self,
        path: &str,
        token: TokenIn<'_>,
        origin: Option<&str>,
    ) -> u16 {
        let connected = async {
            let mut request = ws_request(&self.ws_url(path), token, None)?;
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert(tungstenite::http::header::ORIGIN, origin.parse()?);
            }
            ws_connect_request(request).await
        };
        match connected.await {
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

    /// Opens the watch stream of `order` resuming after `since` in `epoch`
    /// (`?since=<since>&epoch=<epoch>`).
    pub async fn watch_resume(
        &self,
        order: &str,
        since: u64,
        epoch: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
    ) -> Watcher {
        let path = format!("/v1/orders/{order}/watch?since={since}&epoch={epoch}");
        let ws = ws_connect(&self.ws_url(&path), token, protocol.name())
            .await
            .unwrap_or_else(|e| panic!("resuming the watch stream of {order} at {since}: {e:#}"));
        Watcher { ws, protocol }
    }

    /// Opens the watch stream of `order` from a socket like a phone's on a slow mobile link: a
    /// receive buffer of `recv_buffer` bytes and a maximum segment of `mss` bytes announced to
    /// the server. (Over loopback the segment is 64 KiB, and the server's send buffer, sized
    /// from it, grows to megabytes: a client that stops reading would never fill it, so the
    /// server would never see it stall. With a real segment size its send buffer stays tens of
    /// KiB, as on the internet.)
    pub async fn watch_on_slow_link(
        &self,
        order: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
        recv_buffer: u32,
        mss: u32,
    ) -> Watcher {
        let url = self.ws_url(&format!("/v1/orders/{order}/watch"));
        let connect = async {
            let request = ws_request(&url, token, protocol.name())?;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(recv_buffer)?;
            set_max_segment(&socket, mss)?;
            let tcp = socket.connect(self.addr).await?;
            let (ws, _response) =
                tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await?;
            anyhow::Ok(ws)
        };
        let ws = tokio::time::timeout(TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| panic!("no upgrade answer from {url} within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("opening the watch stream of {order}: {e:#}"));
        Watcher { ws, protocol }
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

/// Whether two frames show the same state of the stream (everything but type and recovered).
pub fn same_state(a: &Update, b: &Update) -> bool {
    (a.order_id == b.order_id)
        & (a.offset == b.offset)
        & (a.epoch == b.epoch)
        & (a.status == b.status)
        & (a.position == b.position)
        & (a.eta == b.eta)
}

/// The frame of `reference` (a watcher that saw every update) at `offset`.
pub fn update_at(reference: &[Update], offset: u64) -> &Update {
    reference
        .iter()
        .find(|u| u.offset == offset)
        .unwrap_or_else(|| panic!("the reference watcher never saw offset {offset}"))
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
    /// The order's stops in visiting order.
    pub stops: Vec<StopView>,
}

/// The watch stream's position and ETA are the core's own types (they derive the JSON shape).
pub use trackline_core::order::{Eta, Position};
pub use trackline_core::stops::{EtaWindow, StopKind, StopView};

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
    /// Opens the watch stream at `url` (e.g. `TestServer::ws_url` of a watch path, with or without
    /// `?since=&epoch=`); the error instead of a panic, for watchers that outlive a server.
    pub async fn connect(
        url: &str,
        token: TokenIn<'_>,
        protocol: WatchProtocol,
    ) -> anyhow::Result<Watcher> {
        let ws = ws_connect(url, token, protocol.name()).await?;
        Ok(Watcher { ws, protocol })
    }
}

/// Why [`Watcher::try_next_event`] got nothing.
#[derive(Debug)]
pub enum WatchError {
    /// Nothing arrived in time.
    Timeout,
    /// The connection failed (reset, protocol error).
    Failed(tungstenite::Error),
}

impl Watcher {
    /// The next update, or a close; panics on a timeout or a frame of the wrong kind.
    pub async fn next_event(&mut self, within: Duration) -> WatchEvent {
        match self.try_next_event(within).await {
            Ok(event) => event,
            Err(WatchError::Timeout) => panic!("no watch update within {within:?}"),
            Err(WatchError::Failed(e)) => panic!("watch stream failed: {e}"),
        }
    }

    /// The next update, or a close; a timeout or a failed connection is an error (for watchers
    /// that outlive a server); panics on a frame of the wrong kind.
    pub async fn try_next_event(&mut self, within: Duration) -> Result<WatchEvent, WatchError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(WatchError::Timeout),
                Ok(None) => return Ok(WatchEvent::Closed(None)),
                Ok(Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                ))) => return Ok(WatchEvent::Closed(None)),
                Ok(Some(Err(e))) => return Err(WatchError::Failed(e)),
                Ok(Some(Ok(message))) => message,
            };
            match (message, self.protocol) {
                (Message::Text(text), WatchProtocol::Json | WatchProtocol::Unspecified) => {
                    return Ok(WatchEvent::Update(parse_json_update(&text)));
                }
                (Message::Binary(bytes), WatchProtocol::Proto) => {
                    return Ok(WatchEvent::Update(from_proto_update(&bytes)));
                }
                (Message::Close(frame), _) => return Ok(WatchEvent::Closed(frame)),
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

    /// The TCP socket under the stream (see [`tcp_of`]).
    pub fn tcp(&mut self) -> &mut TcpStream {
        tcp_of(&mut self.ws)
    }
}

/// The client crate decodes the frame; the harness keeps its own plain shape (status and type as
/// the wire's words, the core's position type), which its tests compare with the REST answers.
fn parse_json_update(text: &str) -> Update {
    let update = trackline_client::Update::from_json(text)
        .unwrap_or_else(|e| panic!("bad watch text frame: {e}"));
    assert!(
        update.kind.is_some(),
        "watch update has no \"type\": {text}"
    );
    Update::from(update)
}

fn from_proto_update(bytes: &[u8]) -> Update {
    let update = trackline_client::Update::from_proto(bytes)
        .unwrap_or_else(|e| panic!("bad watch binary frame: {e}"));
    Update::from(update)
}

impl From<trackline_client::Update> for Update {
    fn from(update: trackline_client::Update) -> Self {
        use trackline_client::UpdateKind;
        Update {
            kind: update.kind.map(|kind| {
                match kind {
                    UpdateKind::Snapshot => "snapshot",
                    UpdateKind::Update => "update",
                }
                .to_string()
            }),
            order_id: update.order_id,
            offset: update.offset,
            epoch: update.epoch,
            status: update.status.as_str().to_string(),
            position: update.position.map(|p| Position {
                lat: p.lat,
                lon: p.lon,
                time_ms: p.time_ms,
                speed_mps: p.speed_mps,
                heading_deg: p.heading_deg,
                accuracy_m: p.accuracy_m,
            }),
            eta: update.eta.map(eta_of),
            recovered: update.recovered,
            stops: update
                .stops
                .into_iter()
                .map(|stop| StopView {
                    kind: match stop.kind {
                        trackline_client::StopKind::Pickup => StopKind::Pickup,
                        trackline_client::StopKind::Dropoff => StopKind::Dropoff,
                    },
                    lat: stop.lat,
                    lon: stop.lon,
                    eta: stop.eta.map(eta_of),
                    reached_at_ms: stop.reached_at_ms,
                })
                .collect(),
        }
    }
}

/// The client's ETA as the core's (the type the tests compare with REST answers).
fn eta_of(e: trackline_client::Eta) -> Eta {
    let window = e.window.map(|w| (w.earliest_ms, w.latest_ms));
    Eta {
        seconds: e.seconds,
        arrive_at_ms: e.arrive_at_ms,
        window: window.map(|(earliest_ms, latest_ms)| EtaWindow {
            earliest_ms,
            latest_ms,
        }),
    }
}
