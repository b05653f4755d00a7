//! The client crate (`trackline-client`) against a real server: the courier's outbox gets every
//! fix stored exactly once across cut connections and an app restart, rejections and refused
//! tokens reach the app, and the watcher resumes across cuts with no update missed or repeated.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use trackline_client::{
    fix_at, ConnectError, Courier, CourierEvent, CourierOptions, Encoding, Error, Status,
    WatchOptions, Watcher,
};
use trackline_proto::v1;
use trackline_tests::scenarios::{jog_order, jog_points};
use trackline_tests::{trip_fixes, Proxy, TestServer, TIMEOUT};

const COURIER: &str = "courier-lib";

/// Reconnects within tens of milliseconds, so the tests spend their time on the protocol.
fn quick_courier() -> CourierOptions {
    CourierOptions {
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..CourierOptions::default()
    }
}

fn quick_watch(encoding: Encoding) -> WatchOptions {
    WatchOptions {
        encoding,
        backoff_first: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        give_up_after: Some(TIMEOUT),
        ..WatchOptions::default()
    }
}

/// A server with an order assigned to [`COURIER`] along the jog.
async fn server_with_order(order: &str) -> TestServer {
    let server = TestServer::start();
    server
        .create_order(&jog_order(order, COURIER, &jog_points(2)))
        .await;
    server
}

fn seqs(fixes: &[v1::Fix]) -> Vec<u64> {
    fixes.iter().map(|f| f.seq).collect()
}

async fn stored_seqs(server: &TestServer, order: &str) -> Vec<u64> {
    server.history(order).await.iter().map(|f| f.seq).collect()
}

#[tokio::test]
async fn every_fix_is_stored_once_across_cut_connections() {
    let server = server_with_order("o-lib-cut").await;
    let proxy = Proxy::start(server.addr()).await;
    let courier = Courier::connect(
        &proxy.ws_url("/v1/courier/ws"),
        &server.courier_token(COURIER),
        quick_courier(),
    )
    .unwrap();
    let fixes = trip_fixes(&jog_points(60), courier.next_seq());
    for (i, fix) in fixes.iter().enumerate() {
        courier.push(*fix).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if i % 15 == 14 {
            proxy.cut();
        }
    }
    courier.flush(TIMEOUT).await.unwrap();
    assert_eq!(stored_seqs(&server, "o-lib-cut").await, seqs(&fixes));
    let stats = courier.stats();
    assert!(
        stats.connections >= 2,
        "the cuts forced reconnects: {stats:?}"
    );
    assert_eq!((stats.acked, stats.rejected), (60, 0), "{stats:?}");
    assert_eq!(courier.close().await.unwrap(), 0);
}

#[tokio::test]
async fn the_outbox_file_keeps_unacked_fixes_across_an_app_restart() {
    let server = server_with_order("o-lib-file").await;
    let proxy = Proxy::start(server.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let options = CourierOptions {
        outbox_file: Some(dir.path().join("outbox")),
        ..quick_courier()
    };
    let url = proxy.ws_url("/v1/courier/ws");
    let token = server.courier_token(COURIER);

    let courier = Courier::connect(&url, &token, options.clone()).unwrap();
    let fixes = trip_fixes(&jog_points(40), courier.next_seq());
    for fix in &fixes[..10] {
        courier.push(*fix).await.unwrap();
    }
    courier.flush(TIMEOUT).await.unwrap();
    // the server goes out of reach, the app keeps recording, then it is killed
    proxy.refuse(true);
    proxy.cut();
    for fix in &fixes[10..30] {
        courier.push(*fix).await.unwrap();
    }
    assert_eq!(courier.unacked(), 20);
    drop(courier);

    let courier = Courier::connect(&url, &token, options).unwrap();
    assert_eq!(
        courier.unacked(),
        20,
        "the restarted app has its outbox back"
    );
    assert_eq!(
        courier.next_seq(),
        fixes[29].seq + 1,
        "seqs go on from the file"
    );
    proxy.refuse(false);
    for fix in &fixes[30..] {
        courier.push(*fix).await.unwrap();
    }
    courier.flush(TIMEOUT).await.unwrap();
    assert_eq!(stored_seqs(&server, "o-lib-file").await, seqs(&fixes));
    assert_eq!(courier.close().await.unwrap(), 0);
}

#[tokio::test]
async fn rejected_fixes_reach_the_app_and_leave_the_outbox() {
    let server = server_with_order("o-lib-reject").await;
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let seen = rejected.clone();
    let options = CourierOptions {
        on_event: Some(Arc::new(move |event: &CourierEvent| {
            if let CourierEvent::Rejected(r) = event {
                seen.lock().unwrap().push(r.clone());
            }
        })),
        ..quick_courier()
    };
    let courier = Courier::connect(
        &server.ws_url("/v1/courier/ws"),
        &server.courier_token(COURIER),
        options,
    )
    .unwrap();
    let good = trip_fixes(&jog_points(2), courier.next_seq());
    let bad = fix_at(good[1].seq + 1, good[1].time_ms, 95.0, 2.35);
    for fix in [good[0], good[1], bad] {
        courier.push(fix).await.unwrap();
    }
    courier.flush(TIMEOUT).await.unwrap();
    let rejected = rejected.lock().unwrap().clone();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (rejected[0].seq, rejected[0].code.as_str()),
        (bad.seq, "lat_out_of_range")
    );
    assert_eq!(courier.stats().rejected, 1);
    assert_eq!(stored_seqs(&server, "o-lib-reject").await, seqs(&good));
}

#[tokio::test]
async fn a_refused_token_ends_the_courier_instead_of_retrying() {
    let server = TestServer::start();
    for (token, status) in [
        ("not-a-token".to_string(), 401),
        (server.watch_token("o-1"), 403),
    ] {
        let courier =
            Courier::connect(&server.ws_url("/v1/courier/ws"), &token, quick_courier()).unwrap();
        let ended = tokio::time::timeout(TIMEOUT, courier.ended())
            .await
            .expect("a refused courier ends at once");
        assert!(
            matches!(&ended, Error::Refused(ConnectError::Refused { status: s, .. }) if *s == status),
            "{ended:?}"
        );
        let pushed = courier.try_push(fix_at(1, 0, 1.0, 1.0));
        assert!(matches!(pushed, Err(Error::Refused(_))), "{pushed:?}");
    }
}

#[tokio::test]
async fn a_refused_token_is_renewed_when_the_app_can_renew_it() {
    let server = server_with_order("o-lib-renew").await;
    let fresh = server.courier_token(COURIER);
    let renewals = Arc::new(Mutex::new(0));
    let counted = renewals.clone();
    let options = CourierOptions {
        renew_token: Some(Arc::new(move || {
            *counted.lock().unwrap() += 1;
            let fresh = fresh.clone();
            Box::pin(async move { Ok(fresh) })
        })),
        ..quick_courier()
    };
    let courier =
        Courier::connect(&server.ws_url("/v1/courier/ws"), "expired-token", options).unwrap();
    let fixes = trip_fixes(&jog_points(3), courier.next_seq());
    for fix in &fixes {
        courier.push(*fix).await.unwrap();
    }
    courier.flush(TIMEOUT).await.unwrap();
    assert_eq!(*renewals.lock().unwrap(), 1);
    assert_eq!(stored_seqs(&server, "o-lib-renew").await, seqs(&fixes));
}

/// Streams the jog through a courier while the watcher's connection is cut every few updates;
/// the watcher must hand out every offset once, in order, then the final state.
async fn watcher_resumes_across_cuts(encoding: Encoding, order: &str) {
    let server = server_with_order(order).await;
    let proxy = Proxy::start(server.addr()).await;
    let mut watcher = Watcher::connect(
        &proxy.ws_url(&format!("/v1/orders/{order}/watch")),
        &server.watch_token(order),
        quick_watch(encoding),
    )
    .await
    .unwrap();
    let courier = Courier::connect(
        &server.ws_url("/v1/courier/ws"),
        &server.courier_token(COURIER),
        quick_courier(),
    )
    .unwrap();
    let fixes = trip_fixes(&jog_points(40), courier.next_seq());
    let sending = tokio::spawn(async move {
        for fix in fixes {
            courier.push(fix).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        courier.flush(TIMEOUT).await.unwrap();
    });

    let first = tokio::time::timeout(TIMEOUT, watcher.next())
        .await
        .unwrap()
        .unwrap()
        .expect("a snapshot first");
    let mut offsets = vec![first.offset];
    let mut recovered = 0;
    let mut end: Option<u64> = None;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while end.is_none_or(|end| offsets.last() < Some(&end)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck after offsets {offsets:?}"
        );
        if end.is_none() && sending.is_finished() {
            end = Some(server.offset_and_epoch(order).await.0);
        }
        // short waits, so the end is noticed once the courier is done (next() may be dropped
        // mid-wait: it picks up where it was on the next call)
        let Ok(update) = tokio::time::timeout(Duration::from_millis(200), watcher.next()).await
        else {
            continue;
        };
        let update = update.unwrap().expect("the stream goes on");
        offsets.push(update.offset);
        recovered += usize::from(update.recovered);
        if offsets.len() % 8 == 0 {
            proxy.cut();
            // updates go on meanwhile: the reconnect must replay them
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    sending.await.unwrap();
    let contiguous: Vec<u64> = (first.offset..=first.offset + offsets.len() as u64 - 1).collect();
    assert_eq!(offsets, contiguous, "no update missed or repeated");
    assert!(proxy.connections() >= 3, "the cuts forced reconnects");
    assert!(recovered > 0, "some updates were replayed after a cut");

    let ops = server.ops_token();
    for status in ["picked_up", "delivered"] {
        let path = format!("/v1/orders/{order}/status");
        server
            .post(&path, Some(&ops), &json!({ "status": status }))
            .await
            .expect_status(200);
    }
    let mut last = None;
    while let Some(update) = tokio::time::timeout(TIMEOUT, watcher.next())
        .await
        .unwrap()
        .unwrap()
    {
        last = Some(update);
    }
    assert_eq!(last.map(|u| u.status), Some(Status::Delivered));
}

#[tokio::test]
async fn the_json_watcher_resumes_across_cuts_without_gaps_or_repeats() {
    watcher_resumes_across_cuts(Encoding::Json, "o-lib-watch-json").await;
}

#[tokio::test]
async fn the_proto_watcher_resumes_across_cuts_without_gaps_or_repeats() {
    watcher_resumes_across_cuts(Encoding::Proto, "o-lib-watch-proto").await;
}
