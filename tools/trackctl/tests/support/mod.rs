//! A stand-in for the trackline server, scripted per test: answers the few HTTP calls simulate
//! makes and speaks the courier stream, recording everything it saw. No real server needed.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::Message as _;

/// How the fake courier stream misbehaves on the first connection.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// On the first connection, acknowledge only up to this many fixes (by count received).
    pub first_connection_acks_through: Option<usize>,
    /// On the first connection, reject the fix received at this position (1-based).
    pub first_connection_rejects: Option<usize>,
    /// Drop the first connection, without a close frame, after receiving this many fixes.
    pub first_connection_drops_after: Option<usize>,
}

/// What the fake server saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// (method and path, Authorization header, JSON body) of each HTTP call.
    pub http: Vec<(String, Option<String>, serde_json::Value)>,
    /// The Authorization header of each courier stream.
    pub ws_auth: Vec<Option<String>>,
    /// The fixes received on each courier stream connection, in order.
    pub connections: Vec<Vec<v1::Fix>>,
}

pub struct FakeServer {
    pub url: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl FakeServer {
    pub async fn start(script: Script) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (script, state) = (script.clone(), state.clone());
                tokio::spawn(async move {
                    let mut head = [0u8; 32];
                    let n = stream.peek(&mut head).await.unwrap_or(0);
                    if head[..n].starts_with(b"GET /v1/courier/ws") {
                        courier_stream(stream, script, state).await;
                    } else {
                        http(stream, state).await;
                    }
                });
            }
        });
        FakeServer { url, seen }
    }
}

async fn courier_stream(stream: TcpStream, script: Script, state: Arc<Mutex<Seen>>) {
    let mut auth = None;
    // the handshake callback's signature is tungstenite's, large error type included
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        auth = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .unwrap();
    let index = {
        let mut seen = state.lock().unwrap();
        seen.ws_auth.push(auth);
        seen.connections.push(Vec::new());
        seen.connections.len() - 1
    };
    let first = index == 0;
    let mut received = 0usize;
    while let Some(Ok(message)) = ws.next().await {
        let Message::Binary(bytes) = message else {
            continue;
        };
        let frame = v1::CourierFrame::decode(bytes.as_ref()).unwrap();
        let mut replies = Vec::new();
        for fix in &frame.fixes {
            received += 1;
            state.lock().unwrap().connections[index].push(*fix);
            if first && script.first_connection_rejects == Some(received) {
                let rejected = v1::Rejected {
                    seq: fix.seq,
                    code: "impossible_speed".into(),
                    reason: "scripted".into(),
                };
                replies.push(Kind::Rejected(rejected));
            }
            let acking = !first
                || script
                    .first_connection_acks_through
                    .is_none_or(|n| received <= n);
            if acking {
                replies.push(Kind::Ack(v1::Ack { seq: fix.seq }));
            }
        }
        for kind in replies {
            let frame = v1::ServerFrame { kind: Some(kind) }.encode_to_vec();
            ws.send(Message::Binary(frame.into())).await.unwrap();
        }
        if first
            && script
                .first_connection_drops_after
                .is_some_and(|n| received >= n)
        {
            // vanish like a crashed server: no close frame
            return;
        }
    }
}

async fn http(mut stream: TcpStream, state: Arc<Mutex<Seen>>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-request");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).await.unwrap();
        raw.extend_from_slice(&buf[..n]);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&raw[head_end..head_end + length]).unwrap();
    let request_line: String = head
        .lines()
        .next()
        .unwrap()
        .rsplit_once(' ')
        .unwrap()
        .0
        .to_string();
    let (status, answer) = if request_line == "POST /v1/orders" {
        let id = body["order_id"].as_str().unwrap().to_string();
        let token = format!("watch.{id}.sig");
        let answer = serde_json::json!({"order_id": id, "watch_token": token, "watch_url": format!("/track/{id}?token={token}")});
        ("201 Created", answer)
    } else {
        ("200 OK", serde_json::json!({}))
    };
    state
        .lock()
        .unwrap()
        .http
        .push((request_line, header("authorization"), body));
    let answer = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    stream.shutdown().await.ok();
}
