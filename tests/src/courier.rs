//! The courier stream as the app speaks it: frames of fixes out, acks and rejections back.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::LatLon;
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{to_e7, Message as _};

use crate::ws::{tcp_of, ws_connect, TokenIn, Ws};
use crate::{TestServer, TIMEOUT};

impl TestServer {
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
}

/// A courier app at the frame level: sends `CourierFrame`s, reads `ServerFrame`s. Tests of the
/// protocol itself need each frame and each ack in their hands (and frames no app would send);
/// tests of an app's behaviour (outbox, resends, reconnects) use `trackline_client::Courier`.
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

    /// Sends one frame holding `fixes`; the error instead of a panic (the server may be going away).
    pub async fn try_send(&mut self, fixes: &[v1::Fix]) -> Result<(), String> {
        let frame = v1::CourierFrame {
            fixes: fixes.to_vec(),
        };
        match tokio::time::timeout(
            TIMEOUT,
            self.ws.send(Message::binary(frame.encode_to_vec())),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("sending a frame took longer than {TIMEOUT:?}")),
        }
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

    /// The TCP socket under the stream (see [`tcp_of`]).
    pub fn tcp(&mut self) -> &mut TcpStream {
        tcp_of(&mut self.ws)
    }

    /// The next server frame or close, without panicking on a failed connection: for checking
    /// that a stream is still up (acks and pings answered) or has ended.
    pub async fn next_message(&mut self, within: Duration) -> Option<Result<Message, String>> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Err(_) => Some(Err(format!("nothing within {within:?}"))),
            Ok(None) => None,
            Ok(Some(result)) => Some(result.map_err(|e| e.to_string())),
        }
    }
}

/// A hand-made fix with an accuracy of 5 m and no speed or heading (left unset: unknown).
pub fn fix(seq: u64, time_ms: i64, pos: LatLon) -> v1::Fix {
    v1::Fix {
        seq,
        time_ms,
        lat_e7: to_e7(pos.lat),
        lon_e7: to_e7(pos.lon),
        accuracy_m: Some(5.0),
        speed_mps: None,
        heading_deg: None,
    }
}

/// `n` fixes walking north from `start` at about a metre a second, one a second, the last one a
/// second ago.
pub fn walk(start: LatLon, first_seq: u64, n: usize) -> Vec<v1::Fix> {
    let now = trackline_core::now_ms();
    (0..n)
        .map(|i| {
            let pos = LatLon::new(start.lat + 0.00001 * i as f64, start.lon);
            fix(first_seq + i as u64, now - 1000 * (n - i) as i64, pos)
        })
        .collect()
}

/// The bytes of one courier frame holding `fixes` (for clients that write frames by hand).
pub fn encode_frame(fixes: &[v1::Fix]) -> Vec<u8> {
    v1::CourierFrame {
        fixes: fixes.to_vec(),
    }
    .encode_to_vec()
}
