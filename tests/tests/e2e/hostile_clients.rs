//! Hostile clients against a real server while a well-behaved courier and watcher run
//! alongside: one test, on a server of its own, per family of hostile input (malformed protobuf,
//! refused WebSocket frames, floods, extreme fixes, another courier's order, stalled connections,
//! the upgrade, HTTP bodies, HTTP requests). Every case asserts its own outcome (close code,
//! `Rejected`, HTTP status and JSON error), then that the server is healthy and the bystanders
//! kept flowing; each family ends by checking that history holds exactly the good fixes. The
//! hostile clients speak raw bytes (`trackline_tests::raw`) so that any frame, valid or not, can
//! be sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::{now_ms, LatLon};
use trackline_proto::v1::server_frame::Kind;
use trackline_proto::{to_e7, v1, Message as _};
use trackline_tests::raw::{self, close_payload, frame, header_claiming, op, Ending, RawWs, MASK};
use trackline_tests::{
    encode_frame, fix, walk, CourierClient, NewOrder, TestServer, TokenIn, WatchError, WatchEvent,
    WatchProtocol, Watcher, TIMEOUT,
};

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
            Err(WatchError::Timeout) => {}
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

/// One family's server with its bystanders, and the cases run so far.
struct Suite {
    server: TestServer,
    ops: String,
    /// The good order's watch token.
    watch_token: String,
    seen: Shared,
    stop: Arc<AtomicBool>,
    streaming: tokio::task::JoinHandle<()>,
    watching: tokio::task::JoinHandle<()>,
    cases: Vec<(&'static str, Duration)>,
    /// When the family started, and when its current case did.
    family_started: Instant,
    started: Instant,
    next_courier: u32,
}

impl Suite {
    /// A server with small limits (so that they are reached quickly), the good order with its
    /// courier streaming and its watcher reading, and the hostile courier's own order.
    async fn start() -> Suite {
        let server = TestServer::start_with(|c| {
            c.max_frame_bytes = 64 * 1024;
            c.handshake_timeout_s = 1;
            c.heartbeat_s = 1;
            c.client_timeout_s = 3;
            c.max_connections = 600;
            c.max_frames_per_s = 200.0;
        });
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
            server,
            ops,
            watch_token,
            seen,
            stop,
            streaming,
            watching,
            cases: Vec::new(),
            family_started: Instant::now(),
            started: Instant::now(),
            next_courier: 0,
        };
        s.done("bystanders start").await;
        s.cases.clear();
        s
    }

    /// The end of a family: the bystanders saw everything, history holds exactly the good fixes,
    /// the hostile courier's order is untouched, and all `cases` of the family ran.
    async fn finish(self, cases: usize) {
        let Suite {
            server,
            seen,
            stop,
            streaming,
            watching,
            family_started,
            cases: ran,
            ..
        } = self;
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

        assert_eq!(ran.len(), cases, "cases run: {ran:?}");
        let took = family_started.elapsed();
        eprintln!(
            "{} hostile cases in {took:?}; the good courier sent {} fixes, the watcher saw {} updates",
            ran.len(),
            sent.len(),
            seen.updates
        );
        for (case, took) in &ran {
            eprintln!("  {took:>10.1?}  {case}");
        }
    }

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
        RawWs::courier(&self.server, &id).await
    }

    /// A case on the courier stream: `send` then expect the close `code`.
    async fn closes_with(&mut self, case: &'static str, code: u16, bytes: &[u8]) {
        self.begin();
        let mut ws = self.courier().await;
        ws.write(bytes).await;
        ws.expect_close(code, case).await;
        self.done(case).await;
    }

    /// After a case that must leave the connection up: a good frame is acked on it.
    async fn still_serves(ws: &mut RawWs, seq: u64, case: &str) {
        let f = fix(seq, now_ms(), LatLon::new(10.0, 10.0));
        assert!(
            ws.binary(&encode_frame(&[f])).await,
            "{case}: the connection was closed"
        );
        ws.wait_ack(seq, case).await;
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
async fn malformed_protobuf_closes_the_courier_stream_with_1002_and_unknown_fields_are_ignored() {
    let mut s = Suite::start().await;
    let mut random = vec![0x0fu8]; // field 1 with wire type 7, which does not exist
    random.extend((0..255).map(|_| rand::random::<u8>()));
    s.closes_with(
        "random bytes",
        1002,
        &frame(true, 0, op::BINARY, &random, MASK),
    )
    .await;

    let good5 = encode_frame(&walk(LatLon::new(10.0, 10.0), 1, 5));
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
    s.finish(7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_the_protocol_refuses_close_with_their_codes() {
    let mut s = Suite::start().await;
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
    let message = encode_frame(&walk(LatLon::new(10.0, 10.0), 1, 8));
    let mut bytes = Vec::new();
    for (i, b) in message.iter().enumerate() {
        let opcode = if i == 0 { op::BINARY } else { op::CONTINUATION };
        bytes.extend(frame(i == message.len() - 1, 0, opcode, &[*b], MASK));
    }
    ws.write(&bytes).await;
    ws.wait_ack(8, "one-byte fragments").await;
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
    s.finish(15).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_pong_frame_and_rejection_floods_leave_the_stream_serving_or_close_it_with_1008() {
    let mut s = Suite::start().await;
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
    ws.binary(&encode_frame(&invalid)).await;
    let rejected = ws.wait_ack(1500, "1500 invalid fixes").await;
    assert_eq!(rejected.len(), 1500);
    assert!(rejected.iter().all(|r| r.code == "lat_out_of_range"));
    Suite::still_serves(&mut ws, 1501, "after 1500 rejections").await;
    s.done("a frame of 1500 invalid fixes").await;
    s.finish(4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn extreme_but_valid_fixes_seqs_and_times_get_their_rejections() {
    let mut s = Suite::start().await;
    s.begin();
    let mut ws = RawWs::courier(&s.server, "evil-own").await;
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
            accuracy_m: Some(if i % 2 == 0 { 10_000.0 } else { 3.0 }),
            speed_mps: Some(85.0),
            heading_deg: Some(359.99),
            ..fix(
                i as u64 + 1,
                now - 60_000 + i as i64,
                LatLon::new(*lat, *lon),
            )
        })
        .collect();
    ws.binary(&encode_frame(&extreme)).await;
    let rejected = ws.wait_ack(extreme.len() as u64, "extreme fixes").await;
    assert!(
        rejected.iter().all(|r| r.code == "impossible_speed"),
        "{rejected:?}"
    );
    let state = s.server.order_state("evil-order").await;
    assert_eq!(state["order_id"], "evil-order", "{state}");
    s.done("fixes at the poles and the antimeridian").await;

    s.begin();
    let mut ws = s.courier().await;
    let now = now_ms();
    ws.binary(&encode_frame(&[
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
    ws.binary(&encode_frame(&[
        fix(1, i64::MIN, LatLon::new(1.0, 1.0)),
        fix(2, i64::MAX, LatLon::new(1.0, 1.0)),
    ]))
    .await;
    let rejected = ws.wait_ack(2, "extreme times").await;
    let codes: Vec<&str> = rejected.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["too_old", "in_future"]);
    s.done("times of i64::MIN and i64::MAX").await;
    s.finish(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_courier_cannot_write_to_an_order_not_its_own() {
    let mut s = Suite::start().await;
    s.begin();
    let evil = s.evil();
    let mut ws = RawWs::courier(&s.server, &evil).await;
    let fixes: Vec<v1::Fix> = (0..20)
        .map(|i| {
            fix(
                1_000_000 + i,
                now_ms(),
                LatLon::new(GOOD_START.lat + 0.01, GOOD_START.lon),
            )
        })
        .collect();
    ws.binary(&encode_frame(&fixes)).await;
    ws.wait_ack(1_000_019, "fixes of an unassigned courier")
        .await;
    let reply = s
        .server
        .post(
            &format!("/v1/orders/{GOOD_ORDER}/status"),
            Some(&s.server.courier_token(&evil)),
            &json!({"status": "delivered"}),
        )
        .await;
    assert_eq!(reply.expect_error(403), "forbidden");
    let reply = s
        .server
        .post(
            &format!("/v1/orders/{GOOD_ORDER}/assign"),
            Some(&s.server.courier_token(&evil)),
            &json!({"courier_id": evil}),
        )
        .await;
    assert_eq!(reply.expect_error(403), "forbidden");
    s.done("another courier writing to the good order").await;
    s.finish(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_silent_and_talking_back_connections_are_cut_or_ignored() {
    let mut s = Suite::start().await;
    let watch_token = s.watch_token.clone();
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
            s.server
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
    let mut ws = RawWs::watcher(&s.server, GOOD_ORDER).await;
    ws.write(&frame(true, 0, op::TEXT, b"hello", MASK)).await;
    ws.write(&frame(true, 0, op::BINARY, &[0xff; 100], MASK))
        .await;
    assert_eq!(ws.ending(Duration::from_millis(300)).await, Ending::Open);
    ws.write(&frame(true, 0, op::BINARY, &vec![0; 64 * 1024 + 1], MASK))
        .await;
    assert_eq!(ws.ending(TIMEOUT).await, Ending::Closed(Some(1009)));
    s.done("a watcher that talks back").await;
    s.finish(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_bad_upgrades_and_connection_churn_give_every_slot_back() {
    let mut s = Suite::start().await;
    let watch_token = s.watch_token.clone();
    s.begin();
    let request =
        raw::upgrade_request("/v1/courier/ws", Some(&s.server.courier_token("sloth")), "");
    let mut tcp = TcpStream::connect(s.server.addr()).await.unwrap();
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
        s.server.addr(),
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
            s.server.addr(),
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
    let addr = s.server.addr();
    for batch in 0..20 {
        let token = s.server.courier_token(&format!("churn-{batch}"));
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
    s.finish(3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_deep_huge_and_mistyped_json_bodies_get_400_or_413() {
    let mut s = Suite::start().await;
    let ops = s.ops.clone();
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
            &s.server,
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
        &s.server,
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
        &s.server,
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
        &s.server,
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
    s.finish(4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_headers_request_lines_and_queries_get_4xx_never_500() {
    let mut s = Suite::start().await;
    let ops = s.ops.clone();
    let auth = format!("Authorization: Bearer {ops}\r\nContent-Type: application/json\r\n");
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
            &s.server,
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
            s.server.addr(),
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
        s.server.addr(),
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
        s.server.addr(),
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
        s.server.addr(),
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
        let mut tcp = TcpStream::connect(s.server.addr()).await.unwrap();
        let _ = tcp.write_all(garbage).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.starts_with("HTTP/1.1 500"), "{text}");
    }
    // A body shorter than its Content-Length, then the client leaves.
    let mut tcp = TcpStream::connect(s.server.addr()).await.unwrap();
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
        let reply = s.server.get(path, Some(&ops)).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        reply.expect_error(400);
    }
    s.done("bad query strings").await;

    s.begin();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..200 {
        let url = s.server.http_url(&format!("/v1/orders/none-{i}"));
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
    s.finish(5).await;
}
