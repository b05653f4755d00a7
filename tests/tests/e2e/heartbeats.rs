//! Heartbeats on both streams: a silent courier or watcher is dropped after the client timeout,
//! one that answers pings stays connected past it.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use trackline_tests::scenarios::{jog_order, jog_points};
use trackline_tests::{trip_fixes, TestServer, TokenIn, WatchError, WatchProtocol, TIMEOUT};

const COURIER: &str = "courier-g";

const ORDER: &str = "order-g";

// Heartbeats
const HEARTBEAT_S: u64 = 1;

const CLIENT_TIMEOUT_S: u64 = 3;

/// How late past timeout + one heartbeat a dead connection may still be open.
const REAP_SLACK: Duration = Duration::from_secs(2);

fn heartbeat_server() -> TestServer {
    TestServer::start_with(|c| {
        c.heartbeat_s = HEARTBEAT_S;
        c.client_timeout_s = CLIENT_TIMEOUT_S;
    })
}

/// Reads what is left on a socket the client never answered on, expecting the server to have
/// closed it: the bytes read before the end.
async fn expect_closed(tcp: &mut tokio::net::TcpStream, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return seen,
            Ok(Err(e)) => panic!("{what}: reading the socket: {e}"),
            Err(_) => panic!(
                "{what}: still open {CLIENT_TIMEOUT_S} s + a heartbeat + {REAP_SLACK:?} after it \
                 went silent"
            ),
        }
    }
}

/// Checks, without answering anything, that the server has not dropped the socket yet.
fn expect_open(tcp: &mut tokio::net::TcpStream, seen: &mut Vec<u8>, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.try_read(&mut buf) {
            Ok(0) => panic!("{what}: dropped before the client timeout of {CLIENT_TIMEOUT_S} s"),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("{what}: dropped before the client timeout: {e}"),
        }
    }
}

/// The opcodes of the unmasked frames a server sent (from the first byte of the stream).
fn opcodes(mut bytes: &[u8]) -> Vec<u8> {
    let mut ops = Vec::new();
    while bytes.len() >= 2 {
        let len = usize::from(bytes[1] & 0x7f);
        let (header, len) = match len {
            126 if bytes.len() >= 4 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
            127 => break,
            126 => break,
            n => (2, n),
        };
        ops.push(bytes[0] & 0x0f);
        bytes = bytes.get(header + len..).unwrap_or_default();
    }
    ops
}

/// Waits, never answering, until just before the timeout (must still be open) and then past
/// timeout + heartbeat + slack (must be closed); returns what the server sent meanwhile.
async fn silent_until_dropped(
    tcp: &mut tokio::net::TcpStream,
    silent_since: Instant,
    what: &str,
) -> Vec<u8> {
    let timeout = Duration::from_secs(CLIENT_TIMEOUT_S);
    let mut seen = Vec::new();
    tokio::time::sleep_until((silent_since + timeout - Duration::from_millis(800)).into()).await;
    expect_open(tcp, &mut seen, what);
    let give_up = silent_since + timeout + Duration::from_secs(HEARTBEAT_S) + REAP_SLACK;
    tokio::time::sleep_until(give_up.into()).await;
    seen.extend(expect_closed(tcp, what).await);
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_courier_is_dropped_after_the_client_timeout() {
    let server = heartbeat_server();
    let mut courier = server.courier(COURIER).await;
    let silent_since = Instant::now();
    // Never read (so never answer a ping), never send.
    let seen = silent_until_dropped(courier.tcp(), silent_since, "silent courier").await;
    let ops = opcodes(&seen);
    assert!(
        ops.contains(&0x9),
        "the server pinged the silent courier before dropping it (frames seen: {ops:?})"
    );
    assert!(
        ops.iter().all(|&op| op == 0x9 || op == 0x8),
        "only pings (and maybe a close) were sent to an idle courier: {ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_watcher_is_dropped_after_the_client_timeout() {
    let server = heartbeat_server();
    let points = jog_points(5);
    server
        .create_order(&jog_order(ORDER, COURIER, &points))
        .await;
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let silent_since = Instant::now();
    // Never read: not even the snapshot, so no ping is ever answered.
    silent_until_dropped(watcher.tcp(), silent_since, "silent watcher").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn courier_and_watcher_that_answer_pings_stay_connected_past_the_timeout() {
    let server = heartbeat_server();
    let points = jog_points(5);
    server
        .create_order(&jog_order(ORDER, COURIER, &points))
        .await;
    let fixes = trip_fixes(&points, 1);
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    let mut courier = server.courier(COURIER).await;
    courier.stream(&fixes[..1], 1).await;
    watcher.next_update(TIMEOUT).await;

    // Both only read (the WebSocket layer answers each ping) for twice the timeout.
    let quiet_until = Instant::now() + Duration::from_secs(2 * CLIENT_TIMEOUT_S + HEARTBEAT_S);
    let courier_pings = async {
        let mut pings = 0;
        while Instant::now() < quiet_until {
            let left = quiet_until.saturating_duration_since(Instant::now());
            match courier.next_message(left).await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Err(e)) if e.starts_with("nothing within") => {}
                other => panic!("a courier that answers pings was dropped: {other:?}"),
            }
        }
        pings
    };
    let watcher_alive = async {
        match watcher
            .try_next_event(quiet_until.saturating_duration_since(Instant::now()))
            .await
        {
            Err(WatchError::Timeout) => {}
            other => panic!("a watcher that answers pings was dropped or got data: {other:?}"),
        }
    };
    let (pings, ()) = tokio::join!(courier_pings, watcher_alive);
    assert!(
        pings as u64 >= CLIENT_TIMEOUT_S,
        "pings every {HEARTBEAT_S} s: {pings} in {} s",
        2 * CLIENT_TIMEOUT_S
    );

    // Both still work.
    courier.stream(&fixes[1..2], 1).await;
    let update = watcher.next_update(TIMEOUT).await;
    assert_eq!(update.offset, snapshot.offset + 2, "{update:?}");
    courier.close().await;
    watcher.close().await;
}
