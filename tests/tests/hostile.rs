//! Hostile input: every limit with a test, every validation code, a suite of hostile
//! clients against one real server while a well-behaved courier and watcher run alongside, and
//! history retention (the purge endpoint and the background purge).
//!
//! Each limit is configured small on the in-process server so that it is reached quickly; the
//! hostile clients speak raw bytes (tests/src/raw.rs) so that any frame, valid or not, can be
//! sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::{now_ms, LatLon};
use trackline_proto::v1::{self, server_frame::Kind};
use trackline_proto::{to_e7, Message as _};
use trackline_tests::raw::{self, close_payload, frame, header_claiming, op, Ending, RawWs};
use trackline_tests::{
    CourierClient, NewOrder, TestServer, TokenIn, WatchEvent, WatchProtocol, Watcher, TIMEOUT,
};

const DAY_MS: i64 = 24 * 3600 * 1000;
const MASK: Option<[u8; 4]> = Some([9, 8, 7, 6]);

fn fix(seq: u64, time_ms: i64, pos: LatLon) -> v1::Fix {
    v1::Fix {
        seq,
        time_ms,
        lat_e7: to_e7(pos.lat),
        lon_e7: to_e7(pos.lon),
        accuracy_m: 5.0,
        speed_mps: -1.0,
        heading_deg: -1.0,
    }
}

/// `n` fixes walking north from `start`, one a second, the last one a second ago.
fn walk(start: LatLon, first_seq: u64, n: usize) -> Vec<v1::Fix> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let pos = LatLon::new(start.lat + 0.00001 * i as f64, start.lon);
            fix(first_seq + i as u64, now - 1000 * (n - i) as i64, pos)
        })
        .collect()
}

fn encode(fixes: &[v1::Fix]) -> Vec<u8> {
    v1::CourierFrame {
        fixes: fixes.to_vec(),
    }
    .encode_to_vec()
}

async fn raw_courier(server: &TestServer, courier: &str) -> RawWs {
    RawWs::connect(
        server.addr(),
        "/v1/courier/ws",
        Some(&server.courier_token(courier)),
    )
    .await
    .unwrap_or_else(|r| panic!("courier upgrade of {courier} refused: {r:?}"))
}

async fn raw_watcher(server: &TestServer, order: &str) -> RawWs {
    RawWs::connect(
        server.addr(),
        &format!("/v1/orders/{order}/watch"),
        Some(&server.watch_token(order)),
    )
    .await
    .unwrap_or_else(|r| panic!("watch upgrade of {order} refused: {r:?}"))
}

/// Reads server frames until an ack covering `seq`; the rejections on the way. Panics if the
/// stream ends first.
async fn raw_wait_ack(ws: &mut RawWs, seq: u64, what: &str) -> Vec<v1::Rejected> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut rejected = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws
            .next_frame(left)
            .await
            .unwrap_or_else(|e| panic!("{what}: no ack of {seq}: {e:?}"));
        match frame.opcode {
            op::BINARY => match v1::ServerFrame::decode(frame.payload.as_slice())
                .unwrap_or_else(|e| panic!("{what}: server frame does not decode: {e}"))
                .kind
            {
                Some(Kind::Ack(ack)) if ack.seq >= seq => return rejected,
                Some(Kind::Ack(_)) => {}
                Some(Kind::Rejected(r)) => rejected.push(r),
                None => panic!("{what}: server frame without a kind"),
            },
            op::CLOSE => panic!("{what}: closed while waiting for the ack of {seq}: {frame:?}"),
            _ => {}
        }
    }
}

/// Asserts that the server closes `ws` with `code` within [`TIMEOUT`].
async fn expect_close(ws: &mut RawWs, code: u16, what: &str) {
    let ending = ws.ending(TIMEOUT).await;
    assert_eq!(ending, Ending::Closed(Some(code)), "{what}");
}

async fn healthz(server: &TestServer) {
    server.get("/healthz", None).await.expect_status(200);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn frames_larger_than_the_limit_close_with_1009() {
    const LIMIT: usize = 4096;
    let server = TestServer::start_with(|c| c.max_frame_bytes = LIMIT);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)).courier("c"))
        .await;

    // Exactly the limit passes: a frame of one fix padded with an unknown field (which protobuf
    // skips) to LIMIT bytes.
    let mut exact = encode(&walk(LatLon::new(59.9, 25.0), 1, 1));
    let pad = LIMIT - exact.len() - 3; // tag (1) + two-byte length (2)
    exact.push((15 << 3) | 2);
    exact.extend_from_slice(&[(pad as u8 & 0x7f) | 0x80, (pad >> 7) as u8]);
    exact.resize(LIMIT, b'x');
    let mut ws = raw_courier(&server, "c").await;
    assert!(ws.binary(&exact).await);
    raw_wait_ack(&mut ws, 1, "a frame of exactly the limit").await;

    // One byte more, in one frame.
    let mut over = exact.clone();
    over.push(0);
    ws.binary(&over).await;
    expect_close(&mut ws, 1009, "a frame one byte over the limit").await;

    // Over the limit in fragments that are each small.
    let mut ws = raw_courier(&server, "c").await;
    ws.send(false, op::BINARY, &[0; 2000]).await;
    ws.send(false, op::CONTINUATION, &[0; 2000]).await;
    ws.send(true, op::CONTINUATION, &[0; 2000]).await;
    expect_close(&mut ws, 1009, "a fragmented message over the limit").await;

    // The watch stream has the same limit.
    let mut watcher = raw_watcher(&server, "o").await;
    watcher.binary(&[0; LIMIT + 1]).await;
    expect_close(&mut watcher, 1009, "a watcher's frame over the limit").await;

    let history = server.history("o").await;
    assert_eq!(history.iter().map(|f| f.seq).collect::<Vec<_>>(), [1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_fixes_in_a_frame_than_allowed_close_with_1009() {
    let server = TestServer::start_with(|c| c.max_fixes_per_frame = 10);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)).courier("c"))
        .await;
    let fixes = walk(LatLon::new(59.9, 25.0), 1, 21);
    let mut ws = raw_courier(&server, "c").await;
    ws.binary(&encode(&fixes[..10])).await;
    assert!(raw_wait_ack(&mut ws, 10, "ten fixes").await.is_empty());
    ws.binary(&encode(&fixes[10..21])).await;
    expect_close(&mut ws, 1009, "eleven fixes in one frame").await;
    let seqs: Vec<u64> = server.history("o").await.iter().map(|f| f.seq).collect();
    assert_eq!(
        seqs,
        (1..=10).collect::<Vec<_>>(),
        "nothing of the refused frame is stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_above_the_rate_close_with_1008() {
    let server = TestServer::start_with(|c| c.max_frames_per_s = 10.0);
    let mut ws = raw_courier(&server, "fast").await;
    // Within the rate (5 a second) nothing happens.
    let fixes = walk(LatLon::new(59.9, 25.0), 1, 400);
    for f in &fixes[..5] {
        ws.binary(&encode(std::slice::from_ref(f))).await;
        raw_wait_ack(&mut ws, f.seq, "paced frames").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A burst far above it: the connection is closed with 1008 before the burst is through.
    for f in &fixes[5..] {
        if !ws.binary(&encode(std::slice::from_ref(f))).await {
            break;
        }
    }
    let mut acked = 5;
    let ending = loop {
        match ws.next_frame(TIMEOUT).await {
            Ok(f) if f.opcode == op::BINARY => {
                if let Some(Kind::Ack(a)) =
                    v1::ServerFrame::decode(f.payload.as_slice()).unwrap().kind
                {
                    acked = a.seq;
                }
            }
            Ok(f) if f.opcode == op::CLOSE => {
                break Ending::Closed(
                    (f.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([f.payload[0], f.payload[1]])),
                )
            }
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(ending, Ending::Closed(Some(1008)));
    // The bucket holds a burst of twice the rate (20) plus what refilled meanwhile.
    assert!(acked < 60, "{acked} frames acked before the close");
    healthz(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_above_the_total_limit_get_503_until_one_closes() {
    let server = TestServer::start_with(|c| c.max_connections = 3);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)))
        .await;
    let a = raw_courier(&server, "a").await;
    let _b = raw_courier(&server, "b").await;
    let _w = raw_watcher(&server, "o").await;
    for (path, token) in [
        ("/v1/courier/ws".to_string(), server.courier_token("d")),
        ("/v1/orders/o/watch".to_string(), server.watch_token("o")),
    ] {
        let refused = RawWs::connect(server.addr(), &path, Some(&token))
            .await
            .err()
            .unwrap_or_else(|| panic!("{path}: a fourth connection was accepted"));
        assert_eq!(refused.status, 503, "{path}: {refused:?}");
        assert_eq!(refused.json()["error"]["code"], "unavailable", "{path}");
    }
    // Plain HTTP is not counted.
    healthz(&server).await;
    drop(a);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match RawWs::connect(
            server.addr(),
            "/v1/courier/ws",
            Some(&server.courier_token("d")),
        )
        .await
        {
            Ok(_) => break,
            Err(r) if r.status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(r) => panic!("the slot of a closed connection was not given back: {r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_connection_of_a_courier_closes_the_oldest_with_1008() {
    let server = TestServer::start();
    let mut first = raw_courier(&server, "c").await;
    let mut second = raw_courier(&server, "c").await;
    expect_close(&mut first, 1008, "the superseded connection").await;
    second
        .binary(&encode(&walk(LatLon::new(60.0, 25.0), 1, 1)))
        .await;
    raw_wait_ack(&mut second, 1, "the newer connection").await;

    // With two allowed, the third closes the first and the second stays.
    let server = TestServer::start_with(|c| c.max_connections_per_courier = 2);
    let mut one = raw_courier(&server, "c").await;
    let mut two = raw_courier(&server, "c").await;
    assert_eq!(one.ending(Duration::from_millis(300)).await, Ending::Open);
    let mut three = raw_courier(&server, "c").await;
    expect_close(&mut one, 1008, "the oldest of three").await;
    let fixes = walk(LatLon::new(60.0, 25.0), 1, 2);
    two.binary(&encode(&fixes[..1])).await;
    raw_wait_ack(&mut two, 1, "the second of three").await;
    three.binary(&encode(&fixes[1..])).await;
    raw_wait_ack(&mut three, 2, "the third of three").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_bodies_over_1_mib_get_413() {
    let server = TestServer::start();
    let ops = server.ops_token();
    // A route of 20,000 points (the most allowed) is well under the limit: 201.
    let route: Vec<[f64; 2]> = (0..20_000)
        .map(|i| [48.123_456_7 + f64::from(i) * 1e-5, 2.123_456_7])
        .collect();
    let body = json!({"order_id": "big", "destination": {"lat": 48.1, "lon": 2.1}, "route": route});
    assert!(body.to_string().len() < 1 << 20);
    server
        .post("/v1/orders", Some(&ops), &body)
        .await
        .expect_status(201);

    // One byte over 1 MiB, with a Content-Length.
    let mut text =
        json!({"order_id": "huge", "destination": {"lat": 48.1, "lon": 2.1}}).to_string();
    text.pop();
    text.push_str(",\"pad\":\"");
    let fill = (1 << 20) + 1 - text.len() - 2;
    text.push_str(&"x".repeat(fill));
    text.push_str("\"}");
    assert_eq!(text.len(), (1 << 20) + 1);
    let client = reqwest::Client::new();
    let response = client
        .post(server.http_url("/v1/orders"))
        .bearer_auth(&ops)
        .header("Content-Type", "application/json")
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");

    // Chunked, with no length announced: cut at the limit as well.
    let mut request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ops}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in text.as_bytes().chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw::http(server.addr(), &request, TIMEOUT).await.unwrap();
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(response.json()["error"]["code"], "payload_too_large");

    // Without a token the body is not read at all: 401, whatever its size.
    let response = client
        .post(server.http_url("/v1/orders"))
        .header("Content-Type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    healthz(&server).await;
    assert_eq!(server.get("/v1/orders/huge", Some(&ops)).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upgrade_is_cut_at_the_handshake_timeout() {
    let server = TestServer::start_with(|c| c.handshake_timeout_s = 1);
    let token = server.courier_token("slow");
    // Slowloris: the upgrade request a few bytes at a time, never finished in time.
    let request = raw::upgrade_request("/v1/courier/ws", Some(&token), "");
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    let mut cut_after = None;
    for chunk in request.as_bytes()[..request.len() - 2].chunks(4) {
        if tcp.write_all(chunk).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(150), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => {
                // a 408 before the close is fine
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let cut_after = cut_after.expect("the slow upgrade was never cut");
    // actix reads its deadlines off a clock it refreshes every 500 ms: up to that much early.
    assert!(
        cut_after >= Duration::from_millis(400) && cut_after < Duration::from_secs(4),
        "cut after {cut_after:?} with a 1 s handshake timeout"
    );

    // A connection that sends nothing at all is closed as well.
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent connection stayed open for 5 s");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "a silent connection closed after {:?}",
        started.elapsed()
    );
    healthz(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_peer_is_dropped_at_the_idle_timeout_and_a_live_one_is_not() {
    let server = TestServer::start_with(|c| {
        c.heartbeat_s = 1;
        c.client_timeout_s = 2;
    });
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)).courier("live"))
        .await;
    // The raw clients never answer pings.
    let mut silent_courier = raw_courier(&server, "silent").await;
    let mut silent_watcher = raw_watcher(&server, "o").await;
    // The harness client answers pings whenever it reads.
    let mut live = server.courier("live").await;
    let started = Instant::now();
    let (c, w, _) = tokio::join!(
        silent_courier.ending(Duration::from_secs(8)),
        silent_watcher.ending(Duration::from_secs(8)),
        async {
            while started.elapsed() < Duration::from_secs(4) {
                match live.next_message(Duration::from_millis(200)).await {
                    Some(Ok(Message::Ping(_))) => {}
                    Some(Err(e)) if e.starts_with("nothing within") => {}
                    other => panic!("the live courier got {other:?}"),
                }
            }
        }
    );
    for (what, ending) in [("courier", c), ("watcher", w)] {
        assert_ne!(ending, Ending::Open, "a silent {what} stayed connected");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "dropped after {took:?}");
    // The live one, silent in data but answering pings for 4 s, is still served.
    live.send(&walk(LatLon::new(59.9, 25.0), 1, 1)).await;
    live.wait_ack(1).await;
}

/// The handshake timeout (actix's client request timeout) covers only the first request head of
/// a connection, so the server keeps no connection alive past its first request: a slow second
/// request cannot hold a connection (and a worker's slot) open.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_second_request_on_a_kept_alive_connection_is_cut() {
    let server = TestServer::start_with(|c| c.handshake_timeout_s = 1);
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = raw::read_http_response(&mut tcp, TIMEOUT).await.unwrap();
    assert_eq!(first.status, 200);
    let request = raw::upgrade_request("/v1/courier/ws", Some(&server.courier_token("s")), "");
    let started = Instant::now();
    for b in request.as_bytes() {
        if tcp.write_all(&[*b]).await.is_err() {
            return;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a slow second request still open after {:?}",
            started.elapsed()
        );
    }
    panic!("a whole request sent a byte every 100 ms was never cut");
}

/// A text frame that is not UTF-8 closes with 1007 (RFC 6455 §7.4.1, §8.1) on both streams, as
/// on the Autobahn echo; actix-web-actors reports it as an I/O error of kind Other.
#[tokio::test(flavor = "multi_thread")]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start();
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)))
        .await;
    let not_utf8 = [
        0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xf4, 0x90, 0x80, 0x80,
    ];
    let mut watcher = raw_watcher(&server, "o").await;
    watcher.send(true, op::TEXT, &not_utf8).await;
    assert_eq!(watcher.ending(TIMEOUT).await, Ending::Closed(Some(1007)));
    let mut courier = raw_courier(&server, "c").await;
    courier.send(true, op::TEXT, &not_utf8).await;
    let ending = courier.ending(TIMEOUT).await;
    assert!(
        matches!(ending, Ending::Closed(Some(1003 | 1007))),
        "courier stream: {ending:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_fix_gets_its_rejected_code_and_the_stream_stays_up() {
    let server = TestServer::start();
    let home = LatLon::new(60.0, 25.0);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.01, 25.0)).courier("c"))
        .await;
    let now = now_ms();
    let good = |seq: u64, i: i64| {
        let pos = LatLon::new(home.lat + 0.00001 * i as f64, home.lon);
        fix(seq, now - 60_000 + i * 1000, pos)
    };
    type Mutation = Box<dyn Fn(&mut v1::Fix)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|f| f.lat_e7 = 900_000_001), "lat_out_of_range"),
        (Box::new(|f| f.lat_e7 = -900_000_001), "lat_out_of_range"),
        (Box::new(|f| f.lat_e7 = i32::MAX), "lat_out_of_range"),
        (Box::new(|f| f.lon_e7 = 1_800_000_001), "lon_out_of_range"),
        (Box::new(|f| f.lon_e7 = i32::MIN), "lon_out_of_range"),
        (Box::new(|f| f.accuracy_m = -1.0), "bad_accuracy"),
        (Box::new(|f| f.accuracy_m = f32::NAN), "bad_accuracy"),
        (Box::new(|f| f.accuracy_m = f32::INFINITY), "bad_accuracy"),
        (Box::new(|f| f.accuracy_m = 10_001.0), "bad_accuracy"),
        (Box::new(|f| f.speed_mps = f32::NAN), "bad_speed"),
        (Box::new(|f| f.speed_mps = 86.0), "bad_speed"),
        (Box::new(|f| f.speed_mps = f32::INFINITY), "bad_speed"),
        (Box::new(|f| f.speed_mps = f32::NEG_INFINITY), "bad_speed"),
        (Box::new(|f| f.heading_deg = 360.0), "bad_heading"),
        (Box::new(|f| f.heading_deg = f32::NAN), "bad_heading"),
        (Box::new(|f| f.heading_deg = f32::INFINITY), "bad_heading"),
        (
            Box::new(|f| f.heading_deg = f32::NEG_INFINITY),
            "bad_heading",
        ),
        (Box::new(move |f| f.time_ms = now + 66_000), "in_future"),
        (Box::new(|f| f.time_ms = i64::MAX), "in_future"),
        (
            Box::new(move |f| f.time_ms = now - DAY_MS - 60_000),
            "too_old",
        ),
        (Box::new(|f| f.time_ms = i64::MIN), "too_old"),
        (Box::new(|f| f.time_ms = 0), "too_old"),
        // 50 km away half a second later: no courier moves that fast (the order's filter)
        (Box::new(|f| f.lat_e7 += to_e7(0.45)), "impossible_speed"),
    ];
    // Each bad fix follows a good one, all in one frame.
    let mut frame_fixes = Vec::new();
    let mut expected: Vec<(u64, String)> = Vec::new();
    let mut good_seqs = Vec::new();
    let mut seq = 0;
    let mut i = 0;
    for (mutate, code) in &cases {
        i += 1;
        seq += 1;
        frame_fixes.push(good(seq, i));
        good_seqs.push(seq);
        seq += 1;
        let mut bad = good(seq, i);
        bad.time_ms += 500;
        mutate(&mut bad);
        frame_fixes.push(bad);
        expected.push((seq, code.to_string()));
    }
    // Seqs that do not increase within the connection.
    seq += 1;
    i += 1;
    let last = seq;
    frame_fixes.push(good(last, i));
    good_seqs.push(last);
    for (again, offset) in [(last, 300), (last - 5, 600)] {
        let mut repeat = good(again, i);
        repeat.time_ms += offset;
        frame_fixes.push(repeat);
        expected.push((again, "seq_not_increasing".to_string()));
    }

    let mut client = server.courier("c").await;
    client.send(&frame_fixes).await;
    client.wait_ack(last).await;
    let mut got: Vec<(u64, String)> = client
        .rejected
        .iter()
        .map(|r| (r.seq, r.code.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "rejections (seq, code)");
    assert!(client.rejected.iter().all(|r| !r.reason.is_empty()));

    // Still up: the next good fix is acked and stored.
    let after = last + 1;
    client.send(&[good(after, i + 2)]).await;
    client.wait_ack(after).await;
    good_seqs.push(after);
    let stored: Vec<u64> = server.history("o").await.iter().map(|f| f.seq).collect();
    assert_eq!(stored, good_seqs, "history holds the good fixes only");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_outside_the_alphabet_or_over_64_characters_are_400() {
    let server = TestServer::start();
    let ops = server.ops_token();
    let dest = json!({"lat": 60.0, "lon": 25.0});
    let long = "x".repeat(65);
    let bad_ids = [
        "",
        "a b",
        "é",
        "../etc/passwd",
        "a/b",
        "a\u{0}b",
        "😀",
        "%2e%2e",
        "a\\b",
        "<script>",
        &long,
    ];
    for id in bad_ids {
        let reply = server
            .post(
                "/v1/orders",
                Some(&ops),
                &json!({"order_id": id, "destination": dest}),
            )
            .await;
        assert_eq!(reply.expect_error(400), "bad_order_id", "order id {id:?}");
        let reply = server
            .post(
                "/v1/orders",
                Some(&ops),
                &json!({"order_id": "fine", "destination": dest, "courier_id": id}),
            )
            .await;
        assert_eq!(
            reply.expect_error(400),
            "bad_courier_id",
            "courier id {id:?}"
        );
        let reply = server
            .post(
                "/v1/tokens",
                Some(&ops),
                &json!({"role": "watch", "subject": id}),
            )
            .await;
        assert_eq!(reply.expect_error(400), "bad_role", "watch subject {id:?}");
    }
    // Exactly 64 characters of the alphabet is fine.
    let longest = "Az09_.-".repeat(9) + "z";
    assert_eq!(longest.len(), 64);
    server
        .create_order(&NewOrder::new(&longest, LatLon::new(60.0, 25.0)).courier(&longest))
        .await;
    server
        .ops_post(
            &format!("/v1/orders/{longest}/assign"),
            &json!({"courier_id": longest}),
            200,
        )
        .await;
    let reply = server
        .post(
            &format!("/v1/orders/{longest}/assign"),
            Some(&ops),
            &json!({"courier_id": long}),
        )
        .await;
    assert_eq!(reply.expect_error(400), "bad_courier_id");

    // Ids in paths, percent-encoded as a client would send them (an encoded ".." is resolved
    // by the client's URL parser before it is sent; the hostile suite sends it raw).
    let long_path = "y".repeat(65);
    for id in [
        "a%20b",
        "%C3%A9",
        "..%2F..%2Fetc%2Fpasswd",
        "a%00b",
        "%F0%9F%98%80",
        "a%5Cb",
        long_path.as_str(),
    ] {
        for path in [
            format!("/v1/orders/{id}"),
            format!("/v1/orders/{id}/history"),
            format!("/track/{id}"),
        ] {
            let reply = server.get(&path, Some(&ops)).await;
            assert_eq!(reply.expect_error(400), "bad_order_id", "GET {path}");
        }
        for path in [
            format!("/v1/orders/{id}/assign"),
            format!("/v1/orders/{id}/status"),
        ] {
            let body = json!({"courier_id": "c", "status": "cancelled"});
            let body = if path.ends_with("assign") {
                json!({"courier_id": body["courier_id"]})
            } else {
                json!({"status": body["status"]})
            };
            let reply = server.post(&path, Some(&ops), &body).await;
            assert_eq!(reply.expect_error(400), "bad_order_id", "POST {path}");
        }
        let refused = RawWs::connect(server.addr(), &format!("/v1/orders/{id}/watch"), Some(&ops))
            .await
            .err()
            .unwrap_or_else(|| panic!("watch of {id} was accepted"));
        assert_eq!(refused.status, 400, "watch of {id}");
        assert_eq!(refused.json()["error"]["code"], "bad_order_id");
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile-client suite
// ---------------------------------------------------------------------------------------------

/// What the well-behaved courier and watcher saw.
#[derive(Default, Debug)]
struct Seen {
    /// Every fix the good courier sent, in order.
    sent: Vec<v1::Fix>,
    acked: u64,
    updates: u64,
    last_offset: Option<u64>,
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

const GOOD_ORDER: &str = "good-order";
const GOOD_COURIER: &str = "good-courier";
const GOOD_START: LatLon = LatLon {
    lat: 60.17,
    lon: 24.94,
};

/// Streams one fix at a time, each acked before the next, until told to stop.
async fn good_courier(mut client: CourierClient, seen: Shared, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // about 0.3 m a step, a few metres a second
        let pos = LatLon::new(GOOD_START.lat + 0.000_003 * seq as f64, GOOD_START.lon);
        let f = fix(seq, now_ms(), pos);
        if let Err(e) = client.try_send(&[f]).await {
            seen.lock()
                .unwrap()
                .errors
                .push(format!("good courier: send {seq}: {e}"));
            return;
        }
        seen.lock().unwrap().sent.push(f);
        loop {
            let error = match client.next_message(TIMEOUT).await {
                Some(Ok(Message::Binary(bytes))) => match v1::ServerFrame::decode(bytes.as_ref()) {
                    Ok(v1::ServerFrame {
                        kind: Some(Kind::Ack(a)),
                    }) if a.seq >= seq => {
                        seen.lock().unwrap().acked = a.seq;
                        break;
                    }
                    Ok(v1::ServerFrame {
                        kind: Some(Kind::Ack(_)),
                    }) => continue,
                    other => format!("good courier: unexpected {other:?}"),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(other)) => format!("good courier: got {other:?}"),
                Some(Err(e)) => format!("good courier: {e}"),
                None => "good courier: the stream ended".to_string(),
            };
            seen.lock().unwrap().errors.push(error);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    client.close().await;
}

/// Reads every update and checks that offsets follow each other without a gap.
async fn good_watcher(mut watcher: Watcher, seen: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match watcher.try_next_event(Duration::from_millis(300)).await {
            Ok(WatchEvent::Update(u)) => {
                let mut seen = seen.lock().unwrap();
                if let Some(last) = seen.last_offset {
                    if u.offset != last + 1 {
                        seen.errors
                            .push(format!("good watcher: offset {} after {last}", u.offset));
                    }
                }
                seen.last_offset = Some(u.offset);
                seen.updates += 1;
            }
            Ok(WatchEvent::Closed(frame)) => {
                seen.lock()
                    .unwrap()
                    .errors
                    .push(format!("good watcher: closed {frame:?}"));
                return;
            }
            Err(trackline_tests::WatchError::Timeout) => {}
            Err(e) => {
                seen.lock()
                    .unwrap()
                    .errors
                    .push(format!("good watcher: {e:?}"));
                return;
            }
        }
    }
    watcher.close().await;
}

struct Suite<'a> {
    server: &'a TestServer,
    seen: Shared,
    cases: Vec<(&'static str, Duration)>,
    started: Instant,
    next_courier: u32,
}

impl Suite<'_> {
    fn begin(&mut self) {
        self.started = Instant::now();
    }

    /// A fresh hostile courier id.
    fn evil(&mut self) -> String {
        self.next_courier += 1;
        format!("evil-{}", self.next_courier)
    }

    /// After a case: the server is healthy and the bystanders kept flowing without an error.
    async fn done(&mut self, case: &'static str) {
        let took = self.started.elapsed();
        let reply = self.server.get("/healthz", None).await;
        assert_eq!(reply.status, 200, "after {case}: /healthz {}", reply.status);
        let (acked, updates) = {
            let seen = self.seen.lock().unwrap();
            (seen.acked, seen.updates)
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                assert!(seen.errors.is_empty(), "after {case}: {:?}", seen.errors);
                if seen.acked >= acked + 3 && seen.updates >= updates + 2 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "after {case}: the bystanders stalled: {:?}",
                self.seen.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.cases.push((case, took));
    }

    async fn courier(&mut self) -> RawWs {
        let id = self.evil();
        raw_courier(self.server, &id).await
    }

    /// A case on the courier stream: `send` then expect the close `code`.
    async fn closes_with(&mut self, case: &'static str, code: u16, bytes: &[u8]) {
        self.begin();
        let mut ws = self.courier().await;
        ws.write(bytes).await;
        expect_close(&mut ws, code, case).await;
        self.done(case).await;
    }

    /// After a case that must leave the connection up: a good frame is acked on it.
    async fn still_serves(ws: &mut RawWs, seq: u64, case: &str) {
        let f = fix(seq, now_ms(), LatLon::new(10.0, 10.0));
        assert!(
            ws.binary(&encode(&[f])).await,
            "{case}: the connection was closed"
        );
        raw_wait_ack(ws, seq, case).await;
    }
}

/// Raw HTTP/1.1 request text.
fn http_request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n")
            .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn expect_http(server: &TestServer, request: &[u8], status: &[u16], case: &str) -> Value {
    let response = raw::http(server.addr(), request, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert!(
        status.contains(&response.status),
        "{case}: status {} not in {status:?}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    if response.status >= 400 && !response.body.is_empty() {
        assert!(
            body["error"]["code"].is_string(),
            "{case}: error body is not the JSON error shape: {}",
            String::from_utf8_lossy(&response.body)
        );
    }
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_harm_no_one_else() {
    let server = TestServer::start_with(|c| {
        c.max_frame_bytes = 64 * 1024;
        c.handshake_timeout_s = 1;
        c.heartbeat_s = 1;
        c.client_timeout_s = 3;
        c.max_connections = 600;
        c.max_frames_per_s = 200.0;
    });
    let suite_started = Instant::now();
    let ops = server.ops_token();
    let created = server
        .create_order(
            &NewOrder::new(
                GOOD_ORDER,
                LatLon::new(GOOD_START.lat + 0.02, GOOD_START.lon),
            )
            .courier(GOOD_COURIER),
        )
        .await;
    let watch_token = created["watch_token"].as_str().unwrap().to_string();
    server
        .create_order(&NewOrder::new("evil-order", LatLon::new(0.0, 0.0)).courier("evil-own"))
        .await;

    let seen: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut watcher = server
        .watch(
            GOOD_ORDER,
            TokenIn::Query(&watch_token),
            WatchProtocol::Json,
        )
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    seen.lock().unwrap().last_offset = Some(snapshot.offset);
    let watching = tokio::spawn(good_watcher(watcher, seen.clone(), stop.clone()));
    let courier = server.courier(GOOD_COURIER).await;
    let streaming = tokio::spawn(good_courier(courier, seen.clone(), stop.clone()));

    let mut s = Suite {
        server: &server,
        seen: seen.clone(),
        cases: Vec::new(),
        started: Instant::now(),
        next_courier: 0,
    };
    s.done("bystanders start").await;
    s.cases.clear();

    // --- the courier stream: malformed protobuf -------------------------------------------
    let mut random = vec![0x0fu8]; // field 1 with wire type 7, which does not exist
    random.extend((0..255).map(|_| rand::random::<u8>()));
    s.closes_with(
        "random bytes",
        1002,
        &frame(true, 0, op::BINARY, &random, MASK),
    )
    .await;

    let good5 = encode(&walk(LatLon::new(10.0, 10.0), 1, 5));
    s.closes_with(
        "truncated protobuf",
        1002,
        &frame(true, 0, op::BINARY, &good5[..good5.len() / 2], MASK),
    )
    .await;
    s.closes_with(
        "over-long length prefix",
        1002,
        &frame(
            true,
            0,
            op::BINARY,
            &[0x0a, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3],
            MASK,
        ),
    )
    .await;
    s.closes_with(
        "wrong wire type",
        1002,
        &frame(true, 0, op::BINARY, &[0x08, 0x01], MASK),
    )
    .await;
    let mut varint = vec![0x0a, 12, 0x08];
    varint.extend([0xff; 10]);
    varint.push(0x01);
    s.closes_with(
        "an 11-byte varint",
        1002,
        &frame(true, 0, op::BINARY, &varint, MASK),
    )
    .await;
    s.closes_with(
        "a group that never ends",
        1002,
        &frame(true, 0, op::BINARY, &[0x0a, 2, 0x0b, 0x08], MASK),
    )
    .await;

    s.begin();
    let mut ws = s.courier().await;
    let mut unknown = Vec::new();
    for field in [5u8, 6, 7, 9] {
        unknown.push((field << 3) | 2);
        unknown.push(100);
        unknown.extend([b'u'; 100]);
    }
    ws.binary(&unknown).await;
    Suite::still_serves(&mut ws, 1, "unknown fields only").await;
    s.done("unknown fields only (valid, ignored)").await;

    // --- the courier stream: frames the protocol refuses ------------------------------------
    s.closes_with(
        "a text frame",
        1003,
        &frame(true, 0, op::TEXT, b"{\"fixes\":[]}", MASK),
    )
    .await;
    s.closes_with(
        "a frame over the size limit",
        1009,
        &frame(true, 0, op::BINARY, &vec![0; 64 * 1024 + 1], MASK),
    )
    .await;
    s.closes_with(
        "a header claiming 2^63 bytes",
        1009,
        &header_claiming(op::BINARY, 1 << 63),
    )
    .await;
    let mut flood = frame(false, 0, op::BINARY, &[0; 1024], MASK);
    for _ in 0..99 {
        flood.extend(frame(false, 0, op::CONTINUATION, &[0; 1024], MASK));
    }
    s.closes_with("a fragment flood over the limit", 1009, &flood)
        .await;

    s.begin();
    let mut ws = s.courier().await;
    let message = encode(&walk(LatLon::new(10.0, 10.0), 1, 8));
    let mut bytes = Vec::new();
    for (i, b) in message.iter().enumerate() {
        let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
        bytes.extend(frame(i == message.len() - 1, 0, opcode, &[*b], MASK));
    }
    ws.write(&bytes).await;
    raw_wait_ack(&mut ws, 8, "one-byte fragments").await;
    s.done("a frame in one-byte fragments").await;

    s.closes_with(
        "a continuation without a start",
        1002,
        &frame(true, 0, op::CONTINUATION, b"abc", MASK),
    )
    .await;
    let mut interleaved = frame(false, 0, op::BINARY, b"ab", MASK);
    interleaved.extend(frame(true, 0, op::BINARY, b"cd", MASK));
    s.closes_with("a new message inside a fragmented one", 1002, &interleaved)
        .await;
    let mut fragmented_text = frame(false, 0, op::TEXT, b"ab", MASK);
    fragmented_text.extend(frame(true, 0, op::CONTINUATION, b"cd", MASK));
    s.closes_with("a fragmented text message", 1003, &fragmented_text)
        .await;
    s.closes_with(
        "a fragmented ping",
        1002,
        &frame(false, 0, op::PING, b"ping", MASK),
    )
    .await;
    s.closes_with(
        "a ping of 126 bytes",
        1002,
        &frame(true, 0, op::PING, &[b'p'; 126], MASK),
    )
    .await;
    s.closes_with(
        "reserved bits set",
        1002,
        &frame(true, 4, op::BINARY, b"", MASK),
    )
    .await;
    s.closes_with("an unknown opcode", 1002, &frame(true, 0, 0x3, b"x", MASK))
        .await;
    s.closes_with(
        "an unmasked frame",
        1002,
        &frame(true, 0, op::BINARY, b"", None),
    )
    .await;
    s.closes_with(
        "a close with an invalid code",
        1002,
        &frame(true, 0, op::CLOSE, &close_payload(999, ""), MASK),
    )
    .await;
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend([0xff, 0xfe]);
    s.begin();
    let mut ws = s.courier().await;
    ws.write(&frame(true, 0, op::CLOSE, &bad_reason, MASK))
        .await;
    let ending = ws.ending(TIMEOUT).await;
    assert!(
        matches!(ending, Ending::Closed(Some(1002 | 1007))),
        "a close reason that is not UTF-8: {ending:?}"
    );
    s.done("a close reason that is not UTF-8").await;

    // --- floods -----------------------------------------------------------------------------
    s.begin();
    let mut ws = s.courier().await;
    let mut pings = Vec::new();
    for _ in 0..5000 {
        pings.extend(frame(true, 0, op::PING, &[b'p'; 125], MASK));
    }
    ws.write(&pings).await;
    Suite::still_serves(&mut ws, 1, "after a ping flood").await;
    s.done("a ping flood (5000 pings of 125 bytes)").await;

    s.begin();
    let mut ws = s.courier().await;
    let mut pongs = Vec::new();
    for _ in 0..5000 {
        pongs.extend(frame(true, 0, op::PONG, &[b'q'; 125], MASK));
    }
    ws.write(&pongs).await;
    Suite::still_serves(&mut ws, 1, "after a pong flood").await;
    s.done("an unsolicited pong flood").await;

    let mut frames = Vec::new();
    for _ in 0..2000 {
        frames.extend(frame(true, 0, op::BINARY, b"", MASK));
    }
    s.closes_with("a flood of 2000 frames (rate limit)", 1008, &frames)
        .await;

    s.begin();
    let mut ws = s.courier().await;
    let now = now_ms();
    let invalid: Vec<v1::Fix> = (1..=1500)
        .map(|i| v1::Fix {
            lat_e7: 950_000_000,
            ..fix(i, now, LatLon::new(0.0, 0.0))
        })
        .collect();
    ws.binary(&encode(&invalid)).await;
    let rejected = raw_wait_ack(&mut ws, 1500, "1500 invalid fixes").await;
    assert_eq!(rejected.len(), 1500);
    assert!(rejected.iter().all(|r| r.code == "lat_out_of_range"));
    Suite::still_serves(&mut ws, 1501, "after 1500 rejections").await;
    s.done("a frame of 1500 invalid fixes").await;

    // --- extreme but valid fixes on the hostile courier's own order -------------------------
    s.begin();
    let mut ws = raw_courier(&server, "evil-own").await;
    let now = now_ms();
    let corners = [
        (90.0, 180.0),
        (-90.0, -180.0),
        (0.0, 180.0),
        (0.0, -180.0),
        (89.999_999_9, 179.999_999_9),
        (-89.999_999_9, -179.999_999_9),
        (0.0, 0.0),
    ];
    let extreme: Vec<v1::Fix> = corners
        .iter()
        .enumerate()
        .map(|(i, (lat, lon))| v1::Fix {
            // the worst accuracy accepted (history only) and a good one, in turn
            accuracy_m: if i % 2 == 0 { 10_000.0 } else { 3.0 },
            speed_mps: 85.0,
            heading_deg: 359.99,
            ..fix(
                i as u64 + 1,
                now - 60_000 + i as i64,
                LatLon::new(*lat, *lon),
            )
        })
        .collect();
    ws.binary(&encode(&extreme)).await;
    let rejected = raw_wait_ack(&mut ws, extreme.len() as u64, "extreme fixes").await;
    assert!(
        rejected.iter().all(|r| r.code == "impossible_speed"),
        "{rejected:?}"
    );
    let state = server.order_state("evil-order").await;
    assert_eq!(state["order_id"], "evil-order", "{state}");
    s.done("fixes at the poles and the antimeridian").await;

    s.begin();
    let mut ws = s.courier().await;
    let now = now_ms();
    ws.binary(&encode(&[
        fix(u64::MAX, now, LatLon::new(1.0, 1.0)),
        fix(1, now, LatLon::new(1.0, 1.0)),
        fix(2, i64::MAX, LatLon::new(1.0, 1.0)),
    ]))
    .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = ws.next_frame(TIMEOUT).await.expect("rejections");
        if let Ok(v1::ServerFrame { kind: Some(k) }) = v1::ServerFrame::decode(f.payload.as_slice())
        {
            got.push(k);
        }
    }
    assert!(
        matches!(&got[0], Kind::Rejected(r) if r.seq == 1 && r.code == "seq_not_increasing"),
        "{got:?}"
    );
    s.done("seq u64::MAX then lower seqs").await;

    s.begin();
    let mut ws = s.courier().await;
    ws.binary(&encode(&[
        fix(1, i64::MIN, LatLon::new(1.0, 1.0)),
        fix(2, i64::MAX, LatLon::new(1.0, 1.0)),
    ]))
    .await;
    let rejected = raw_wait_ack(&mut ws, 2, "extreme times").await;
    let codes: Vec<&str> = rejected.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["too_old", "in_future"]);
    s.done("times of i64::MIN and i64::MAX").await;

    // --- a hostile courier against the good order -------------------------------------------
    s.begin();
    let evil = s.evil();
    let mut ws = raw_courier(&server, &evil).await;
    let fixes: Vec<v1::Fix> = (0..20)
        .map(|i| {
            fix(
                1_000_000 + i,
                now_ms(),
                LatLon::new(GOOD_START.lat + 0.01, GOOD_START.lon),
            )
        })
        .collect();
    ws.binary(&encode(&fixes)).await;
    raw_wait_ack(&mut ws, 1_000_019, "fixes of an unassigned courier").await;
    let reply = server
        .post(
            &format!("/v1/orders/{GOOD_ORDER}/status"),
            Some(&server.courier_token(&evil)),
            &json!({"status": "delivered"}),
        )
        .await;
    assert_eq!(reply.expect_error(403), "forbidden");
    let reply = server
        .post(
            &format!("/v1/orders/{GOOD_ORDER}/assign"),
            Some(&server.courier_token(&evil)),
            &json!({"courier_id": evil}),
        )
        .await;
    assert_eq!(reply.expect_error(403), "forbidden");
    s.done("another courier writing to the good order").await;

    // --- stalled and silent connections ------------------------------------------------------
    s.begin();
    let mut ws = s.courier().await;
    ws.write(&[0x82]).await; // half a frame header, then nothing
    let ending = ws.ending(Duration::from_secs(8)).await;
    assert_ne!(
        ending,
        Ending::Open,
        "a half-sent frame held the connection open"
    );
    s.done("half a frame header, then silence").await;

    s.begin();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(
            server
                .watch_on_slow_link(
                    GOOD_ORDER,
                    TokenIn::Query(&watch_token),
                    WatchProtocol::Json,
                    4096,
                    536,
                )
                .await,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.done("20 watchers of the good order that never read")
        .await;
    drop(slow);

    s.begin();
    let mut ws = raw_watcher(&server, GOOD_ORDER).await;
    ws.write(&frame(true, 0, op::TEXT, b"hello", MASK)).await;
    ws.write(&frame(true, 0, op::BINARY, &[0xff; 100], MASK))
        .await;
    assert_eq!(ws.ending(Duration::from_millis(300)).await, Ending::Open);
    ws.write(&frame(true, 0, op::BINARY, &vec![0; 64 * 1024 + 1], MASK))
        .await;
    assert_eq!(ws.ending(TIMEOUT).await, Ending::Closed(Some(1009)));
    s.done("a watcher that talks back").await;

    // --- the upgrade ---------------------------------------------------------------------------
    s.begin();
    let request = raw::upgrade_request("/v1/courier/ws", Some(&server.courier_token("sloth")), "");
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in request.as_bytes() {
        if tcp.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            _ => {}
        }
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(cut, "a slowloris upgrade was never cut");
    s.done("slowloris on the upgrade").await;

    s.begin();
    let refused = RawWs::connect_with(
        server.addr(),
        &raw::upgrade_request(
            &format!("/v1/orders/{GOOD_ORDER}/watch"),
            Some(&watch_token),
            "Sec-WebSocket-Protocol: mqtt\r\n",
        ),
    )
    .await
    .err()
    .expect("an unknown subprotocol was accepted");
    assert_eq!(refused.status, 400);
    for query in ["since=abc&epoch=x", "since=1", "since=-1&epoch=x"] {
        let refused = RawWs::connect(
            server.addr(),
            &format!("/v1/orders/{GOOD_ORDER}/watch?{query}"),
            Some(&watch_token),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("watch ?{query} was accepted"));
        assert_eq!(refused.status, 400, "?{query}");
        assert!(refused.json()["error"]["code"].is_string());
    }
    s.done("bad subprotocols and resume queries").await;

    s.begin();
    let mut churn = tokio::task::JoinSet::new();
    let addr = server.addr();
    for batch in 0..20 {
        let token = server.courier_token(&format!("churn-{batch}"));
        churn.spawn(async move {
            for _ in 0..50 {
                let ws = RawWs::connect(addr, "/v1/courier/ws", Some(&token)).await;
                assert!(ws.is_ok(), "churn upgrade refused: {:?}", ws.err());
            }
        });
    }
    while let Some(done) = churn.join_next().await {
        done.unwrap();
    }
    for _ in 0..1000 {
        drop(TcpStream::connect(addr).await.unwrap());
    }
    // Every slot came back: as many connections as allowed open again (600 minus the bystanders).
    let deadline = Instant::now() + TIMEOUT;
    let mut held = Vec::new();
    while held.len() < 590 {
        match RawWs::connect(addr, "/v1/orders/good-order/watch", Some(&watch_token)).await {
            Ok(ws) => held.push(ws),
            Err(r) if r.status == 503 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(r) => panic!(
                "after the churn, connection {} was refused: {r:?}",
                held.len()
            ),
        }
    }
    drop(held);
    s.done("1000 upgrades and 1000 bare connections, opened and dropped")
        .await;

    // --- HTTP ---------------------------------------------------------------------------------
    s.begin();
    let auth = format!("Authorization: Bearer {ops}\r\nContent-Type: application/json\r\n");
    for body in [
        &b"{"[..],
        b"{\"order_id\": \"x\", \"destination\": {\"lat\": NaN, \"lon\": 1}}",
        b"\xff\xfe\x00{}",
        b"[]",
        b"null",
        b"{\"order_id\": 5, \"destination\": {\"lat\": 1, \"lon\": 1}}",
        b"{\"order_id\": \"x\", \"destination\": {\"lat\": 1, \"lon\": 1}, \"admin\": true}",
        b"{\"order_id\": \"x\", \"order_id\": \"y\", \"destination\": {\"lat\": 1, \"lon\": 1}}",
        b"{\"order_id\": \"x\", \"destination\": {\"lat\": 1e999, \"lon\": 1}}",
    ] {
        let headers = format!("{auth}Content-Length: {}\r\n", body.len());
        let reply = expect_http(
            &server,
            &http_request("POST", "/v1/orders", &headers, body),
            &[400],
            "invalid JSON",
        )
        .await;
        assert!(reply["error"]["code"].is_string());
    }
    s.done("invalid JSON bodies").await;

    s.begin();
    let nested = "[".repeat(100_000);
    let headers = format!("{auth}Content-Length: {}\r\n", nested.len());
    expect_http(
        &server,
        &http_request("POST", "/v1/orders", &headers, nested.as_bytes()),
        &[400],
        "deep nesting",
    )
    .await;
    s.done("JSON nested 100,000 deep").await;

    s.begin();
    let huge = format!(
        "{{\"order_id\": \"x\", \"pad\": \"{}\"}}",
        "z".repeat(2 << 20)
    );
    let headers = format!("{auth}Content-Length: {}\r\n", huge.len());
    expect_http(
        &server,
        &http_request("POST", "/v1/orders", &headers, huge.as_bytes()),
        &[413],
        "huge JSON",
    )
    .await;
    s.done("a 2 MiB JSON body").await;

    s.begin();
    let body = br#"{"status": "cancelled"}"#;
    let headers = format!(
        "Authorization: Bearer {ops}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    let reply = expect_http(
        &server,
        &http_request(
            "POST",
            &format!("/v1/orders/{GOOD_ORDER}/status"),
            &headers,
            body,
        ),
        &[400],
        "wrong content type",
    )
    .await;
    assert_eq!(reply["error"]["code"], "bad_content_type");
    s.done("a body with the wrong content type").await;

    s.begin();
    for path in [
        "/v1/orders/%C3%A9t%C3%A9",
        "/v1/orders/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/orders/%2e%2e%2f%2e%2e%2fhistory",
        "/v1/orders/%00",
        "/v1/orders/%FF%FE",
    ] {
        let headers = format!("Authorization: Bearer {ops}\r\n");
        expect_http(
            &server,
            &http_request("GET", path, &headers, b""),
            &[400],
            path,
        )
        .await;
    }
    for path in [
        "/v1/orders/../../etc/passwd",
        "/../../../etc/passwd",
        "/assets/../../Cargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
    ] {
        let headers = format!("Authorization: Bearer {ops}\r\n");
        let response = raw::http(
            server.addr(),
            &http_request("GET", path, &headers, b""),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(
            matches!(response.status, 400 | 404),
            "{path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
        assert!(
            !String::from_utf8_lossy(&response.body).contains("[workspace]"),
            "{path} served a file"
        );
    }
    let long = format!("/v1/orders/{}", "a".repeat(16 * 1024));
    let headers = format!("Authorization: Bearer {ops}\r\n");
    let response = raw::http(
        server.addr(),
        &http_request("GET", &long, &headers, b""),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(
            response.as_ref().map(|r| r.status),
            Ok(400 | 404 | 414 | 431) | Err(_)
        ),
        "a 16 KiB path: {response:?}"
    );
    s.done("unicode, NUL, path-traversal and 16 KiB ids").await;

    s.begin();
    let big = format!("X-Junk: {}\r\n", "j".repeat(128 * 1024));
    let response = raw::http(
        server.addr(),
        &http_request("GET", "/healthz", &big, b""),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(response.as_ref().map(|r| r.status), Ok(400 | 431) | Err(_)),
        "a 128 KiB header: {response:?}"
    );
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = raw::http(
        server.addr(),
        &http_request("GET", "/healthz", &many, b""),
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(
            response.as_ref().map(|r| r.status),
            Ok(200 | 400 | 431) | Err(_)
        ),
        "500 headers: {response:?}"
    );
    s.done("huge and many headers").await;

    s.begin();
    for garbage in [
        &b"HELLO\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ] {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        let _ = tcp.write_all(garbage).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.starts_with("HTTP/1.1 500"), "{text}");
    }
    // A body shorter than its Content-Length, then the client leaves.
    let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(&http_request(
        "POST",
        "/v1/orders",
        &format!("{auth}Content-Length: 1000\r\n"),
        b"{\"order_id\"",
    ))
    .await
    .unwrap();
    drop(tcp);
    s.done("garbage requests, smuggling headers, TLS on a plain port")
        .await;

    s.begin();
    for path in [
        "/v1/orders/good-order/history?from_ms=abc",
        "/v1/orders/good-order/history?format=exe",
        "/v1/orders/good-order/history?to_ms=99999999999999999999999",
        "/v1/couriers/nearby?lat=NaN&lon=1",
        "/v1/couriers/nearby?lat=1&lon=inf",
        "/v1/couriers/nearby?lat=1&lon=1&radius_m=1e308",
        "/v1/couriers/nearby?lat=1&lon=1&limit=0",
        "/v1/couriers/nearby?lat=1&lon=1&limit=99999999999999999999",
        "/v1/couriers/within?south=1&west=1&north=0&east=2",
        "/v1/orders?limit=-1",
        "/v1/orders?status=%00",
    ] {
        let reply = server.get(path, Some(&ops)).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        reply.expect_error(400);
    }
    s.done("bad query strings").await;

    s.begin();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = server.http_url(&format!("/v1/orders/none-{i}"));
        let token = ops.clone();
        clients.spawn(async move {
            let client = reqwest::Client::new();
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            r.status().as_u16()
        });
    }
    while let Some(status) = clients.join_next().await {
        assert_eq!(status.unwrap(), 404);
    }
    s.done("200 concurrent requests for orders that do not exist")
        .await;

    // --- the end: the bystanders saw everything, and history holds exactly the good fixes ---
    stop.store(true, Ordering::Relaxed);
    streaming.await.expect("the good courier task");
    watching.await.expect("the good watcher task");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert_eq!(
        seen.acked,
        seen.sent.last().unwrap().seq,
        "every good fix was acked"
    );
    let history = server.history(GOOD_ORDER).await;
    let sent: Vec<(u64, i64, i32, i32)> = seen
        .sent
        .iter()
        .map(|f| (f.seq, f.time_ms, f.lat_e7, f.lon_e7))
        .collect();
    let stored: Vec<(u64, i64, i32, i32)> = history
        .iter()
        .map(|f| (f.seq, f.time_ms, to_e7(f.lat), to_e7(f.lon)))
        .collect();
    assert_eq!(
        stored.len(),
        sent.len(),
        "stored {} of {} acked good fixes",
        stored.len(),
        sent.len()
    );
    assert_eq!(stored, sent, "history holds exactly the good fixes");
    let evil_state = server.order_state("evil-order").await;
    assert_eq!(evil_state["status"], "assigned");

    assert!(s.cases.len() >= 30, "only {} cases", s.cases.len());
    let took = suite_started.elapsed();
    eprintln!(
        "{} hostile cases in {took:?}; the good courier sent {} fixes, the watcher saw {} updates",
        s.cases.len(),
        sent.len(),
        seen.updates
    );
    for (case, took) in &s.cases {
        eprintln!("  {took:>10.1?}  {case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

/// Streams `fixes` as `courier` and expects every one to be acked and none rejected.
async fn stream_all(server: &TestServer, courier: &str, fixes: &[v1::Fix]) {
    let mut client = server.courier(courier).await;
    client.stream(fixes, 50).await;
    assert!(client.rejected.is_empty(), "{:?}", client.rejected);
    client.close().await;
}

fn fixes_at(start: LatLon, first_seq: u64, times: &[i64]) -> Vec<v1::Fix> {
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            fix(
                first_seq + i as u64,
                *t,
                LatLon::new(start.lat + 0.00001 * i as f64, start.lon),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_purge_endpoint_removes_old_fixes_and_long_ended_orders() {
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 40 * 24 * 3600;
        c.retention_days = 30;
        c.purge_every_s = 24 * 3600; // not in this test
    });
    let here = LatLon::new(60.0, 25.0);
    let now = now_ms();
    server
        .create_order(&NewOrder::new("active", here).courier("a"))
        .await;
    let reply = server
        .create_order(&NewOrder::new("ended", here).courier("b"))
        .await;
    let watch_ended = reply["watch_token"].as_str().unwrap().to_string();
    // Three fixes of 35 and 31 days ago, three of the last minute.
    let old = [now - 35 * DAY_MS, now - 34 * DAY_MS, now - 31 * DAY_MS];
    let recent = [now - 50_000, now - 40_000, now - 30_000];
    let times: Vec<i64> = old.iter().chain(&recent).copied().collect();
    stream_all(&server, "a", &fixes_at(here, 1, &times)).await;
    stream_all(&server, "b", &fixes_at(here, 1, &recent)).await;
    for status in ["picked_up", "delivered"] {
        server
            .ops_post("/v1/orders/ended/status", &json!({"status": status}), 200)
            .await;
    }
    assert_eq!(server.history("active").await.len(), 6);

    // The default cutoff: now minus the retention period.
    let purged = server.ops_post("/v1/admin/purge", &json!({}), 200).await;
    assert_eq!(purged["fixes"], 3, "{purged}");
    assert_eq!(purged["orders"], 0, "{purged}");
    let before = purged["before_ms"].as_i64().unwrap();
    assert!((before - (now - 30 * DAY_MS)).abs() < 60_000, "{purged}");
    let left: Vec<i64> = server
        .history("active")
        .await
        .iter()
        .map(|f| f.time_ms)
        .collect();
    assert_eq!(
        left, recent,
        "only the fixes within the retention period are left"
    );
    assert_eq!(
        server.history("ended").await.len(),
        3,
        "recently ended: kept"
    );

    // A cutoff after the end of `ended`: the order goes with its history; the active order
    // keeps its record and loses the fixes before the cutoff.
    let purged = server
        .ops_post(
            "/v1/admin/purge",
            &json!({"before_ms": now_ms() + 1000}),
            200,
        )
        .await;
    assert_eq!(purged["fixes"], 6, "{purged}");
    assert_eq!(purged["orders"], 1, "{purged}");
    let ops = server.ops_token();
    assert_eq!(
        server
            .get("/v1/orders/ended", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get("/v1/orders/ended/history", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get("/v1/orders/ended", Some(&watch_ended))
            .await
            .expect_error(404),
        "not_found"
    );
    assert!(server.history("active").await.is_empty());
    assert_eq!(server.order_state("active").await["status"], "assigned");
    // Purging again finds nothing.
    let purged = server
        .ops_post(
            "/v1/admin/purge",
            &json!({"before_ms": now_ms() + 1000}),
            200,
        )
        .await;
    assert_eq!(
        (purged["fixes"].as_u64(), purged["orders"].as_u64()),
        (Some(0), Some(0))
    );
    // A purge without a retention period needs a cutoff.
    let server = TestServer::start_with(|c| c.retention_days = 0);
    let code = server
        .post("/v1/admin/purge", Some(&server.ops_token()), &json!({}))
        .await
        .expect_error(400);
    assert_eq!(code, "bad_purge");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_purge_removes_history_past_the_retention_period() {
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 3 * 24 * 3600;
        c.retention_days = 1;
        c.purge_every_s = 1;
    });
    let here = LatLon::new(60.0, 25.0);
    server
        .create_order(&NewOrder::new("o", here).courier("c"))
        .await;
    let now = now_ms();
    let doomed = [now - 2 * DAY_MS, now - DAY_MS - 3_600_000];
    let kept = [now - 23 * 3_600_000, now - 60_000];
    let times: Vec<i64> = doomed.iter().chain(&kept).copied().collect();
    // Acked without a rejection: all four were accepted and stored (a 2-day-old fix is within
    // the 3 days allowed).
    stream_all(&server, "c", &fixes_at(here, 1, &times)).await;
    let deadline = Instant::now() + TIMEOUT;
    let left = loop {
        let left: Vec<i64> = server
            .history("o")
            .await
            .iter()
            .map(|f| f.time_ms)
            .collect();
        if left.len() <= kept.len() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        left, kept,
        "the background purge removed the fixes older than a day, only them"
    );
    // The counter moves once the purge's flush is done, a moment after the fixes are gone.
    // (One recorder per process: other tests' purges may add to it, never take away.)
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = server.get("/metrics", None).await.text;
        let purged: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("trackline_purged_fixes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if purged >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trackline_purged_fixes_total {purged}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without a retention period nothing is purged.
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 3 * 24 * 3600;
        c.retention_days = 0;
        c.purge_every_s = 1;
    });
    server
        .create_order(&NewOrder::new("o", here).courier("c"))
        .await;
    stream_all(&server, "c", &fixes_at(here, 1, &times)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.history("o").await.len(), 4);
}
