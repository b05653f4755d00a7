//! Every limit with a test: frame size and fixes per frame (1009), frame rate (1008), total
//! connections (503), one connection per courier, request bodies (413), the handshake and idle
//! timeouts, and text that is not UTF-8 (1007). Each limit is configured small on the in-process
//! server so that it is reached quickly.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::LatLon;
use trackline_proto::v1::server_frame::Kind;
use trackline_proto::{v1, Message as _};
use trackline_tests::raw::{self, op, Ending, RawWs};
use trackline_tests::{encode_frame, walk, NewOrder, TestServer, TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn frames_larger_than_the_limit_close_with_1009() {
    const LIMIT: usize = 4096;
    let server = TestServer::start_with(|c| c.max_frame_bytes = LIMIT);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)).courier("c"))
        .await;

    // Exactly the limit passes: a frame of one fix padded with an unknown field (which protobuf
    // skips) to LIMIT bytes.
    let mut exact = encode_frame(&walk(LatLon::new(59.9, 25.0), 1, 1));
    let pad = LIMIT - exact.len() - 3; // tag (1) + two-byte length (2)
    exact.push((15 << 3) | 2);
    exact.extend_from_slice(&[(pad as u8 & 0x7f) | 0x80, (pad >> 7) as u8]);
    exact.resize(LIMIT, b'x');
    let mut ws = RawWs::courier(&server, "c").await;
    assert!(ws.binary(&exact).await);
    ws.wait_ack(1, "a frame of exactly the limit").await;

    // One byte more, in one frame.
    let mut over = exact.clone();
    over.push(0);
    ws.binary(&over).await;
    ws.expect_close(1009, "a frame one byte over the limit")
        .await;

    // Over the limit in fragments that are each small.
    let mut ws = RawWs::courier(&server, "c").await;
    ws.send(false, op::BINARY, &[0; 2000]).await;
    ws.send(false, op::CONTINUATION, &[0; 2000]).await;
    ws.send(true, op::CONTINUATION, &[0; 2000]).await;
    ws.expect_close(1009, "a fragmented message over the limit")
        .await;

    // The watch stream has the same limit.
    let mut watcher = RawWs::watcher(&server, "o").await;
    watcher.binary(&[0; LIMIT + 1]).await;
    watcher
        .expect_close(1009, "a watcher's frame over the limit")
        .await;

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
    let mut ws = RawWs::courier(&server, "c").await;
    ws.binary(&encode_frame(&fixes[..10])).await;
    assert!(ws.wait_ack(10, "ten fixes").await.is_empty());
    ws.binary(&encode_frame(&fixes[10..21])).await;
    ws.expect_close(1009, "eleven fixes in one frame").await;
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
    let mut ws = RawWs::courier(&server, "fast").await;
    // Within the rate (5 a second) nothing happens.
    let fixes = walk(LatLon::new(59.9, 25.0), 1, 400);
    for f in &fixes[..5] {
        ws.binary(&encode_frame(std::slice::from_ref(f))).await;
        ws.wait_ack(f.seq, "paced frames").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A burst far above it: the connection is closed with 1008 before the burst is through.
    for f in &fixes[5..] {
        if !ws.binary(&encode_frame(std::slice::from_ref(f))).await {
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
    server.get("/healthz", None).await.expect_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_above_the_total_limit_get_503_until_one_closes() {
    let server = TestServer::start_with(|c| c.max_connections = 3);
    server
        .create_order(&NewOrder::new("o", LatLon::new(60.0, 25.0)))
        .await;
    let a = RawWs::courier(&server, "a").await;
    let _b = RawWs::courier(&server, "b").await;
    let _w = RawWs::watcher(&server, "o").await;
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
    server.get("/healthz", None).await.expect_status(200);
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
    let mut first = RawWs::courier(&server, "c").await;
    let mut second = RawWs::courier(&server, "c").await;
    first.expect_close(1008, "the superseded connection").await;
    second
        .binary(&encode_frame(&walk(LatLon::new(60.0, 25.0), 1, 1)))
        .await;
    second.wait_ack(1, "the newer connection").await;

    // With two allowed, the third closes the first and the second stays.
    let server = TestServer::start_with(|c| c.max_connections_per_courier = 2);
    let mut one = RawWs::courier(&server, "c").await;
    let mut two = RawWs::courier(&server, "c").await;
    assert_eq!(one.ending(Duration::from_millis(300)).await, Ending::Open);
    let mut three = RawWs::courier(&server, "c").await;
    one.expect_close(1008, "the oldest of three").await;
    let fixes = walk(LatLon::new(60.0, 25.0), 1, 2);
    two.binary(&encode_frame(&fixes[..1])).await;
    two.wait_ack(1, "the second of three").await;
    three.binary(&encode_frame(&fixes[1..])).await;
    three.wait_ack(2, "the third of three").await;
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
    server.get("/healthz", None).await.expect_status(200);
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
    server.get("/healthz", None).await.expect_status(200);
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
    let mut silent_courier = RawWs::courier(&server, "silent").await;
    let mut silent_watcher = RawWs::watcher(&server, "o").await;
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
    let mut watcher = RawWs::watcher(&server, "o").await;
    watcher.send(true, op::TEXT, &not_utf8).await;
    assert_eq!(watcher.ending(TIMEOUT).await, Ending::Closed(Some(1007)));
    let mut courier = RawWs::courier(&server, "c").await;
    courier.send(true, op::TEXT, &not_utf8).await;
    let ending = courier.ending(TIMEOUT).await;
    assert!(
        matches!(ending, Ending::Closed(Some(1003 | 1007))),
        "courier stream: {ending:?}"
    );
}
