//! Graceful shutdown: SIGTERM to the real `trackline` binary closes both streams with 1001,
//! exits 0 within the grace period and keeps every acked fix.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use trackline_proto::v1;
use trackline_tests::scenarios::{jog_order, join};
use trackline_tests::{
    load_trip, trip_fixes, TestServer, TokenIn, WatchEvent, WatchProtocol, TIMEOUT,
};

const ORDER: &str = "order-g";

const COURIER: &str = "courier-g";

// Graceful shutdown
/// What a courier streaming until the server goes away saw.
#[derive(Debug, Default)]
struct CourierRun {
    acked: u64,
    close: Option<Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>>,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_both_streams_with_1001_exits_0_within_the_grace_and_keeps_acked_fixes() {
    const GRACE_S: u64 = 5;
    let mut server = TestServer::start_binary(&[
        "--shutdown-grace-s",
        &GRACE_S.to_string(),
        "--max-frames-per-s",
        "1000",
        "--workers",
        "2",
    ]);
    let points = load_trip("run_vincennes_DC2_garmin.csv");
    server
        .create_order(&jog_order(ORDER, COURIER, &points))
        .await;
    let fixes = trip_fixes(&points, 1);
    let token = server.watch_token(ORDER);
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    watcher.next_update(TIMEOUT).await;
    let mut courier = server.courier(COURIER).await;
    courier.stream(&fixes[..100], 10).await;

    // The courier keeps streaming (a frame, its ack, a pause as an app makes, the next) until
    // the server goes away: paced, so that the trip outlasts the wait below on a fast machine.
    let acked = Arc::new(Mutex::new(CourierRun::default()));
    let courier_task = {
        let acked = acked.clone();
        let rest = fixes[100..].to_vec();
        tokio::spawn(async move {
            for chunk in rest.chunks(10) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = courier.try_send(chunk).await;
                loop {
                    match courier.next_message(TIMEOUT).await {
                        Some(Ok(Message::Binary(bytes))) => {
                            let frame = <v1::ServerFrame as prost::Message>::decode(bytes.as_ref())
                                .expect("a ServerFrame");
                            if let Some(v1::server_frame::Kind::Ack(ack)) = frame.kind {
                                acked.lock().unwrap().acked = ack.seq;
                                if ack.seq == chunk.last().unwrap().seq {
                                    break;
                                }
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            acked.lock().unwrap().close = Some(frame);
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => panic!("courier stream failed before a close: {e}"),
                        None => panic!("courier stream ended without a close frame"),
                    }
                }
            }
            panic!("the courier streamed the whole trip before the server went away");
        })
    };
    let watcher_task = tokio::spawn(async move {
        loop {
            match watcher.next_event(TIMEOUT).await {
                WatchEvent::Update(_) => {}
                WatchEvent::Closed(frame) => return frame,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) =
        tokio::task::block_in_place(|| server.terminate(Duration::from_secs(GRACE_S + 10)));
    eprintln!("graceful shutdown: {status}, {took:.2?} after SIGTERM (grace {GRACE_S} s)");

    let watcher_close = join(watcher_task).await;
    join(courier_task).await;
    let run = std::mem::take(&mut *acked.lock().unwrap());
    for (who, close) in [("watcher", watcher_close), ("courier", run.close.flatten())] {
        let close = close.unwrap_or_else(|| panic!("{who}: a close frame, not a bare disconnect"));
        assert_eq!(
            close.code,
            CloseCode::Away,
            "{who} closed with 1001: {close:?}"
        );
    }
    assert!(
        status.success(),
        "exit status 0 after SIGTERM, got {status}; the server's log ends with:\n{}",
        server.log_tail(20)
    );
    assert!(
        took <= Duration::from_secs(GRACE_S),
        "exit within the grace of {GRACE_S} s, took {took:?}; the server's log ends with:\n{}",
        server.log_tail(20)
    );
    assert!(
        run.acked > 100,
        "the courier was streaming: last ack {}",
        run.acked
    );

    server.start_again();
    let stored: Vec<u64> = server.history(ORDER).await.iter().map(|f| f.seq).collect();
    assert!(
        (1..=run.acked).all(|seq| stored.binary_search(&seq).is_ok()),
        "every acked fix (1..={}) is in history after the restart; stored {} fixes, last {:?}",
        run.acked,
        stored.len(),
        stored.last()
    );
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "stored once each, in order"
    );
}
