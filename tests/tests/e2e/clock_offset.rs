//! Device clocks that are off: a phone 2 h behind, one 37 min ahead, one that jumps mid-trip,
//! and a buffered upload from a right clock that must not be mistaken for one behind. Each runs
//! in real time, since the server waits for an offset to hold before it corrects by it.

use std::time::Duration;

use serde_json::Value;
use trackline_core::{now_ms, LatLon};
use trackline_proto::v1;
use trackline_tests::{fix, CourierClient, NewOrder, TestServer};

const HOUR_MS: i64 = 3_600_000;
const MIN_MS: i64 = 60_000;
/// Where every courier here starts; the order's destination is about 1.1 km north.
const START: LatLon = LatLon {
    lat: 60.17,
    lon: 24.94,
};
/// Between two frames of a live courier (the server needs 5 s of agreeing frames before it
/// corrects a clock that is behind).
const EVERY: Duration = Duration::from_millis(400);

/// A fix `seq` at `step` metres (about) along the walk north, stamped `skew_ms` off the server
/// clock.
fn fix_at(seq: u64, step: u64, skew_ms: i64) -> v1::Fix {
    let pos = LatLon::new(START.lat + 0.00001 * step as f64, START.lon);
    fix(seq, now_ms() + skew_ms, pos)
}

/// Sends the fixes `seqs`, one a frame, `EVERY` apart, each stamped `skew_ms(seq)` off and a
/// metre further than the one before (from `seqs.start() - skipped` metres); each frame's ack
/// awaited. The fixes as sent.
async fn drive(
    courier: &mut CourierClient,
    seqs: std::ops::RangeInclusive<u64>,
    skipped: u64,
    skew_ms: impl Fn(u64) -> i64,
) -> Vec<v1::Fix> {
    let mut sent = Vec::new();
    for seq in seqs {
        let one = fix_at(seq, seq - skipped, skew_ms(seq));
        courier.send(&[one]).await;
        courier.wait_ack(seq).await;
        sent.push(one);
        tokio::time::sleep(EVERY).await;
    }
    sent
}

async fn order_with_courier(server: &TestServer, order: &str, courier: &str) {
    let destination = LatLon::new(START.lat + 0.01, START.lon);
    server
        .create_order(&NewOrder::new(order, destination).courier(courier))
        .await;
}

/// Asserts that the order's shown position and its ETA are in server time (a stale position
/// from a clock behind would lie hours back, its arrival time with it).
fn assert_in_server_time(state: &Value) {
    let now = now_ms();
    let position_ms = state["position"]["time_ms"].as_i64().expect("a position");
    assert!(
        (now - 15_000..=now + 1000).contains(&position_ms),
        "position time {position_ms} is not within 15 s of the server's {now}: {state}"
    );
    let arrive_at = state["eta"]["arrive_at_ms"].as_i64().expect("an ETA");
    assert!(
        arrive_at >= now - 1000,
        "arrival at {arrive_at} is before the server's {now}: {state}"
    );
    let seconds = state["eta"]["seconds"].as_i64().expect("an ETA");
    assert_eq!(
        arrive_at,
        position_ms + seconds * 1000,
        "the ETA counts from the position's time: {state}"
    );
}

/// The offsets the order logged, as (from_seq, offset_ms).
fn offsets(detail: &Value) -> Vec<(u64, i64)> {
    detail["clock"]["offsets"]
        .as_array()
        .unwrap_or_else(|| panic!("no clock offsets in {detail}"))
        .iter()
        .map(|o| {
            (
                o["from_seq"].as_u64().unwrap(),
                o["offset_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The stored time of `seq` minus the time the app sent it with.
async fn stored_minus_sent(server: &TestServer, order: &str, sent: &[v1::Fix]) -> Vec<(u64, i64)> {
    let history = server.history(order).await;
    sent.iter()
        .filter_map(|f| {
            let stored = history.iter().find(|h| h.seq == f.seq)?;
            Some((f.seq, stored.time_ms - f.time_ms))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_two_hours_behind_is_tracked_in_server_time() {
    let server = TestServer::start();
    order_with_courier(&server, "o", "c").await;
    let mut courier = server.courier("c").await;
    let sent = drive(&mut courier, 1..=20, 0, |_| -2 * HOUR_MS).await;
    assert!(courier.rejected.is_empty(), "{:?}", courier.rejected);

    let state = server.order_state("o").await;
    assert_in_server_time(&state);
    let logged = offsets(&state);
    assert_eq!(logged.len(), 1, "one offset applied: {state}");
    let (from_seq, offset) = logged[0];
    assert!(
        (offset - 2 * HOUR_MS).abs() < 5000,
        "offset {offset} ms is not 2 h"
    );
    // The first frames went in on the device clock while the offset settled (5 s, at least
    // three frames; at 400 ms a frame and more, that is seq 3 to 14).
    assert!(
        (3..=14).contains(&from_seq),
        "corrected from seq {from_seq}"
    );
    let corrected = state["clock"]["fixes"].as_u64().unwrap();
    assert_eq!(corrected, 21 - from_seq, "{state}");
    // Stored in server time, the device time kept by the offset logged.
    for (seq, shift) in stored_minus_sent(&server, "o", &sent).await {
        let expected = if seq >= from_seq { offset } else { 0 };
        assert_eq!(shift, expected, "seq {seq}");
    }
    assert!(server.metric("trackline_fix_clock_adjusted_total").await >= corrected as f64);
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phone_37_minutes_ahead_is_corrected_instead_of_refused() {
    let server = TestServer::start();
    order_with_courier(&server, "o", "c").await;
    let mut courier = server.courier("c").await;
    let sent = drive(&mut courier, 1..=10, 0, |_| 37 * MIN_MS).await;
    // Three frames must agree on the offset: the first two are refused as before.
    let refused: Vec<(u64, &str)> = courier
        .rejected
        .iter()
        .map(|r| (r.seq, r.code.as_str()))
        .collect();
    assert_eq!(refused, [(1, "in_future"), (2, "in_future")]);

    let state = server.order_state("o").await;
    assert_in_server_time(&state);
    assert_eq!(state["rejected"]["in_future"], 2, "{state}");
    assert_eq!(state["clock"]["fixes"], 8, "{state}");
    let logged = offsets(&state);
    assert_eq!(logged.len(), 1, "{state}");
    assert_eq!(logged[0].0, 3);
    assert!((logged[0].1 + 37 * MIN_MS).abs() < 5000, "{logged:?}");
    let shifts = stored_minus_sent(&server, "o", &sent).await;
    assert_eq!(
        shifts.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (3..=10).collect::<Vec<_>>()
    );
    assert!(shifts.iter().all(|&(_, shift)| shift == logged[0].1));
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_that_jumps_mid_trip_is_followed_both_ways() {
    let server = TestServer::start();
    order_with_courier(&server, "o", "c").await;
    let mut courier = server.courier("c").await;
    // Right, then 2 h behind (a wrong manual setting), then synced again.
    let mut sent = drive(&mut courier, 1..=8, 0, |_| 0).await;
    sent.extend(drive(&mut courier, 9..=28, 0, |_| -2 * HOUR_MS).await);
    assert_in_server_time(&server.order_state("o").await);
    sent.extend(drive(&mut courier, 29..=40, 0, |_| 0).await);
    assert!(courier.rejected.is_empty(), "{:?}", courier.rejected);
    let state = server.order_state("o").await;
    assert_in_server_time(&state);

    let logged = offsets(&state);
    assert_eq!(
        logged.len(),
        2,
        "corrected, then back to the device clock: {state}"
    );
    let (behind_from, behind) = logged[0];
    // Settled 5 s after the jump (at seq 9), at least three frames: seq 12 to 22.
    assert!((12..=22).contains(&behind_from), "{logged:?}");
    assert!((behind - 2 * HOUR_MS).abs() < 5000, "{logged:?}");
    // A sample earlier than the offset allows proves the clock moved: followed at once.
    assert_eq!(logged[1], (29, 0));

    // History: every fix stored; the ones sent while the jump settled keep their device
    // times (2 h back, not shown: older than the live position); the rest lie in server time
    // in seq order, so the live track never went backwards.
    let history = server.history("o").await;
    assert_eq!(history.len(), 40);
    let shifts = stored_minus_sent(&server, "o", &sent).await;
    for (seq, shift) in &shifts {
        let expected = if (behind_from..29).contains(seq) {
            behind
        } else {
            0
        };
        assert_eq!(*shift, expected, "seq {seq}");
    }
    let mut server_time: Vec<(u64, i64)> = history
        .iter()
        .filter(|h| !(9..behind_from).contains(&h.seq))
        .map(|h| (h.seq, h.time_ms))
        .collect();
    server_time.sort_by_key(|(seq, _)| *seq);
    assert!(
        server_time.windows(2).all(|w| w[0].1 < w[1].1),
        "stored times in server time go backwards: {server_time:?}"
    );
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffered_upload_from_a_right_clock_stays_history_only() {
    let server = TestServer::start();
    order_with_courier(&server, "o", "c").await;
    let mut courier = server.courier("c").await;
    drive(&mut courier, 1..=6, 0, |_| 0).await;
    let before = server.order_state("o").await;
    let live_ms = before["position"]["time_ms"].as_i64().unwrap();

    // Fixes of 10 to 6 minutes ago that could not go up in a tunnel, flushed in four frames
    // at once: they look like a clock 6-10 minutes behind, but the clock is right.
    let now = now_ms();
    let buffered: Vec<v1::Fix> = (0..40u64)
        .map(|i| {
            let pos = LatLon::new(START.lat - 0.0001 + 0.000001 * i as f64, START.lon);
            fix(7 + i, now - 10 * MIN_MS + i as i64 * 6000, pos)
        })
        .collect();
    for chunk in buffered.chunks(10) {
        courier.send(chunk).await;
    }
    courier.wait_ack(46).await;
    let after_flush = server.order_state("o").await;
    assert_eq!(
        after_flush["position"]["time_ms"].as_i64(),
        Some(live_ms),
        "old fixes moved the marker: {after_flush}"
    );
    // The live walk goes on where it was: the buffered fixes took no step of it.
    drive(&mut courier, 47..=56, 40, |_| 0).await;
    assert!(courier.rejected.is_empty(), "{:?}", courier.rejected);

    let state = server.order_state("o").await;
    assert_in_server_time(&state);
    assert_eq!(state["clock"]["fixes"], 0, "{state}");
    assert_eq!(offsets(&state), Vec::new(), "nothing corrected: {state}");
    // Stored exactly as the device stamped them.
    let shifts = stored_minus_sent(&server, "o", &buffered).await;
    assert_eq!(shifts.len(), 40);
    assert!(shifts.iter().all(|&(_, shift)| shift == 0), "{shifts:?}");
    courier.close().await;
}
