//! Gap-free watcher resume (`?since=&epoch=`): exactly the missed updates then live ones, and a
//! snapshot with `recovered = false` whenever the server cannot replay (too old, another epoch,
//! a future offset, after a restart, an order recreated after its history was lost).

use std::time::Duration;

use trackline_proto::v1;
use trackline_tests::scenarios::{
    jog_order, jog_points, read_through, stream_one_by_one, Reference,
};
use trackline_tests::{
    same_state, trip_fixes, update_at, CourierClient, TestServer, TokenIn, Update, WatchError,
    WatchProtocol, TIMEOUT,
};

const ORDER: &str = "order-g";

const COURIER: &str = "courier-g";

/// Asserts the first frame of a resume the server could not honour: a snapshot of the current
/// state with `recovered = false`.
fn assert_fresh_snapshot(first: &Update, current: &Update, context: &str) {
    assert_eq!(
        first.kind.as_deref(),
        Some("snapshot"),
        "{context}: the first frame must be a snapshot: {first:?}"
    );
    assert!(
        !first.recovered,
        "{context}: a snapshot instead of a replay must say recovered=false: {first:?}"
    );
    assert!(
        same_state(first, current),
        "{context}: the snapshot must be the current state {current:?}, got {first:?}"
    );
}

/// Sets up an order on a server, a reference watcher and a courier, and streams the first
/// `first` fixes of the jog; the fixes left for later.
async fn order_with_updates(
    server: &TestServer,
    first: usize,
    total: usize,
) -> (Reference, CourierClient, Vec<v1::Fix>) {
    let points = jog_points(total);
    server
        .create_order(&jog_order(ORDER, COURIER, &points))
        .await;
    let mut fixes = trip_fixes(&points, 1);
    let rest = fixes.split_off(first);
    let mut reference = Reference::start(server, ORDER).await;
    let mut courier = server.courier(COURIER).await;
    stream_one_by_one(&mut courier, &fixes).await;
    let (offset, _) = server.offset_and_epoch(ORDER).await;
    reference.catch_up(offset).await;
    (reference, courier, rest)
}

#[tokio::test(flavor = "multi_thread")]
async fn resumed_watcher_gets_exactly_the_missed_updates_in_order_then_live_ones() {
    let server = TestServer::start_with(|c| c.resume_buffer = 8);
    let (mut reference, mut courier, rest) = order_with_updates(&server, 3, 20).await;
    let token = server.watch_token(ORDER);

    // A watcher follows live, then its phone locks.
    let mut watcher = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let snapshot = watcher.next_update(TIMEOUT).await;
    stream_one_by_one(&mut courier, &rest[..2]).await;
    let (seen_through, epoch) = server.offset_and_epoch(ORDER).await;
    let live = read_through(&mut watcher, seen_through).await;
    assert_eq!(live.last().map(|u| u.offset), Some(seen_through));
    assert_eq!(snapshot.epoch, epoch);
    watcher.close().await;

    // Updates it misses (fewer than the buffer holds).
    stream_one_by_one(&mut courier, &rest[2..7]).await;
    let (current, _) = server.offset_and_epoch(ORDER).await;
    let missed = current - seen_through;
    assert!(
        (2..=8).contains(&missed),
        "5 fixes while away should make 2 to 8 updates, made {missed}"
    );
    let seen = reference.catch_up(current).await.to_vec();

    // Resume: exactly the missed updates, in order, recovered, identical to what a watcher
    // that stayed saw; nothing before them, nothing twice.
    let mut resumed = server
        .watch_resume(
            ORDER,
            seen_through,
            &epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
        .await;
    let replayed = read_through(&mut resumed, current).await;
    let offsets: Vec<u64> = replayed.iter().map(|u| u.offset).collect();
    assert_eq!(
        offsets,
        (seen_through + 1..=current).collect::<Vec<_>>(),
        "the replay is exactly the missed offsets, in order"
    );
    for update in &replayed {
        assert!(
            update.recovered,
            "a replayed update says recovered: {update:?}"
        );
        assert_eq!(update.kind.as_deref(), Some("update"), "{update:?}");
        assert!(
            same_state(update, update_at(&seen, update.offset)),
            "replayed {update:?} differs from the live {:?}",
            update_at(&seen, update.offset)
        );
    }

    // Then live updates, not recovered, continuing the offsets without a gap.
    stream_one_by_one(&mut courier, &rest[7..10]).await;
    let (now, _) = server.offset_and_epoch(ORDER).await;
    let seen = reference.catch_up(now).await.to_vec();
    let live = read_through(&mut resumed, now).await;
    assert_eq!(
        live.iter().map(|u| u.offset).collect::<Vec<_>>(),
        (current + 1..=now).collect::<Vec<_>>(),
        "live updates follow the replay without a gap"
    );
    for update in &live {
        assert!(
            !update.recovered,
            "a live update is not recovered: {update:?}"
        );
        assert!(
            same_state(update, update_at(&seen, update.offset)),
            "{update:?}"
        );
    }
    resumed.close().await;

    // The same on the protobuf stream: `recovered` is field 7 of OrderUpdate.
    let mut proto = server
        .watch_resume(
            ORDER,
            now - 2,
            &epoch,
            TokenIn::Header(&token),
            WatchProtocol::Proto,
        )
        .await;
    let replayed = read_through(&mut proto, now).await;
    assert_eq!(
        replayed
            .iter()
            .map(|u| (u.offset, u.recovered))
            .collect::<Vec<_>>(),
        [(now - 1, true), (now, true)],
        "protobuf replay: {replayed:?}"
    );
    proto.close().await;
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_nothing_missed_replays_nothing_then_goes_live() {
    let server = TestServer::start_with(|c| c.resume_buffer = 8);
    let (mut reference, mut courier, rest) = order_with_updates(&server, 4, 10).await;
    let (current, epoch) = server.offset_and_epoch(ORDER).await;
    let token = server.watch_token(ORDER);
    let mut resumed = server
        .watch_resume(
            ORDER,
            current,
            &epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
        .await;
    // Nothing was missed: the first frame is the next live update, not a repeat or a snapshot.
    match resumed.try_next_event(Duration::from_millis(800)).await {
        Err(WatchError::Timeout) => {}
        other => panic!("a resume with nothing missed must send nothing yet, got {other:?}"),
    }
    stream_one_by_one(&mut courier, &rest[..1]).await;
    let (now, _) = server.offset_and_epoch(ORDER).await;
    assert_eq!(now, current + 1, "one fix, one update");
    let seen = reference.catch_up(now).await.to_vec();
    let next = resumed.next_update(TIMEOUT).await;
    assert_eq!(next.kind.as_deref(), Some("update"), "{next:?}");
    assert!(!next.recovered, "{next:?}");
    assert!(same_state(&next, update_at(&seen, now)), "{next:?}");
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_older_than_the_buffer_gets_a_snapshot_with_recovered_false() {
    const BUFFER: u64 = 4;
    let server = TestServer::start_with(|c| c.resume_buffer = BUFFER as usize);
    let (mut reference, mut courier, rest) = order_with_updates(&server, 2, 20).await;
    let (seen_through, epoch) = server.offset_and_epoch(ORDER).await;
    stream_one_by_one(&mut courier, &rest[..10]).await;
    let (current, _) = server.offset_and_epoch(ORDER).await;
    assert!(
        current - seen_through > BUFFER + 1,
        "more updates missed ({}) than the buffer ({BUFFER}) holds",
        current - seen_through
    );
    let seen = reference.catch_up(current).await.to_vec();
    let token = server.watch_token(ORDER);

    // Exactly as many missed as the buffer holds: still a replay.
    let mut edge = server
        .watch_resume(
            ORDER,
            current - BUFFER,
            &epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
        .await;
    let replayed = read_through(&mut edge, current).await;
    assert_eq!(
        replayed
            .iter()
            .map(|u| (u.offset, u.recovered))
            .collect::<Vec<_>>(),
        (current - BUFFER + 1..=current)
            .map(|o| (o, true))
            .collect::<Vec<_>>(),
        "a resume of {BUFFER} missed updates with a buffer of {BUFFER} replays them all"
    );
    edge.close().await;

    // One more than the buffer holds, and much older: a snapshot with recovered=false, then live.
    for since in [current - BUFFER - 1, seen_through] {
        let mut resumed = server
            .watch_resume(
                ORDER,
                since,
                &epoch,
                TokenIn::Query(&token),
                WatchProtocol::Json,
            )
            .await;
        let first = resumed.next_update(TIMEOUT).await;
        assert_fresh_snapshot(
            &first,
            update_at(&seen, current),
            &format!("resume since {since}"),
        );
        resumed.close().await;
    }
    let mut resumed = server
        .watch_resume(
            ORDER,
            seen_through,
            &epoch,
            TokenIn::Query(&token),
            WatchProtocol::Proto,
        )
        .await;
    let first = resumed.next_update(TIMEOUT).await;
    assert!(
        !first.recovered && first.offset == current,
        "protobuf: a snapshot of offset {current} with recovered=false, got {first:?}"
    );
    stream_one_by_one(&mut courier, &rest[10..11]).await;
    let next = resumed.next_update(TIMEOUT).await;
    assert_eq!(
        (next.offset, next.recovered),
        (current + 1, false),
        "{next:?}"
    );
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_another_epoch_or_a_future_offset_gets_a_snapshot_with_recovered_false() {
    let server = TestServer::start_with(|c| c.resume_buffer = 8);
    let (mut reference, mut courier, rest) = order_with_updates(&server, 6, 10).await;
    let (current, epoch) = server.offset_and_epoch(ORDER).await;
    let seen = reference.catch_up(current).await.to_vec();
    let token = server.watch_token(ORDER);
    let wrong_epoch = format!("{epoch}x");
    // A since the buffer holds, in an epoch that is not the order's: the offsets mean nothing.
    let cases = [
        (current - 2, wrong_epoch.as_str(), "another epoch"),
        (
            current + 5,
            epoch.as_str(),
            "an offset the stream never reached",
        ),
    ];
    for (since, resume_epoch, what) in cases {
        let mut resumed = server
            .watch_resume(
                ORDER,
                since,
                resume_epoch,
                TokenIn::Query(&token),
                WatchProtocol::Json,
            )
            .await;
        let first = resumed.next_update(TIMEOUT).await;
        assert_fresh_snapshot(&first, update_at(&seen, current), what);
        assert_eq!(
            first.epoch, epoch,
            "{what}: the snapshot names the real epoch"
        );
        resumed.close().await;
    }
    // After the snapshot the stream is live.
    let mut resumed = server
        .watch_resume(
            ORDER,
            current - 1,
            &wrong_epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
        .await;
    resumed.next_update(TIMEOUT).await;
    stream_one_by_one(&mut courier, &rest[..1]).await;
    let next = resumed.next_update(TIMEOUT).await;
    assert_eq!(
        (next.offset, next.recovered),
        (current + 1, false),
        "{next:?}"
    );
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_after_a_restart_gets_a_snapshot_in_the_same_epoch_at_no_older_offset() {
    let mut server = TestServer::start_with(|c| c.resume_buffer = 8);
    let (reference, mut courier, rest) = order_with_updates(&server, 3, 10).await;
    let last_seen = reference.seen.last().cloned().expect("a snapshot at least");
    reference.watcher.close().await;
    // Updates made while the watcher is away: the buffer holds them, until the restart.
    stream_one_by_one(&mut courier, &rest[..3]).await;
    courier.close().await;
    let before = server.order_state(ORDER).await;
    server.restart();

    let (current, epoch) = server.offset_and_epoch(ORDER).await;
    assert_eq!(
        epoch, last_seen.epoch,
        "a restart keeps the epoch: nothing was lost"
    );
    assert_eq!(
        Some(current),
        before["offset"].as_u64(),
        "the durable offset survives"
    );
    assert!(current > last_seen.offset);
    let token = server.watch_token(ORDER);
    let mut resumed = server
        .watch_resume(
            ORDER,
            last_seen.offset,
            &last_seen.epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
        .await;
    let first = resumed.next_update(TIMEOUT).await;
    assert_eq!(first.kind.as_deref(), Some("snapshot"), "{first:?}");
    assert!(
        !first.recovered,
        "the resume buffer is in memory: after a restart it cannot replay: {first:?}"
    );
    assert_eq!(first.epoch, last_seen.epoch, "{first:?}");
    assert!(
        first.offset >= last_seen.offset,
        "an offset is never reused: {} after {}",
        first.offset,
        last_seen.offset
    );
    assert_eq!(first.offset, current, "{first:?}");
    assert_eq!(
        serde_json::to_value(first.position.map(|p| (p.lat, p.lon, p.time_ms))).unwrap(),
        serde_json::to_value(before["position"].as_object().map(|p| (
            p["lat"].clone(),
            p["lon"].clone(),
            p["time_ms"].clone()
        )))
        .unwrap(),
        "the snapshot shows the position from before the restart"
    );
    // And it goes live from there.
    let mut courier = server.courier(COURIER).await;
    stream_one_by_one(&mut courier, &rest[3..4]).await;
    let next = resumed.next_update(TIMEOUT).await;
    assert_eq!(
        (next.offset, next.recovered),
        (current + 1, false),
        "{next:?}"
    );
    courier.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_recreated_after_history_loss_has_a_new_epoch_and_old_resumes_get_a_snapshot() {
    let points = jog_points(30);
    let fixes = trip_fixes(&points, 1);
    // The first life of the order: a watcher follows it to some offset.
    let (old_offset, old_epoch) = {
        let server = TestServer::start_with(|c| c.resume_buffer = 64);
        let (reference, courier, _) = order_with_updates(&server, 8, 30).await;
        courier.close().await;
        let last = reference.seen.last().cloned().expect("updates");
        reference.watcher.close().await;
        (last.offset, last.epoch)
    };
    // The data dir is lost; the order is created again on a fresh server.
    let server = TestServer::start_with(|c| c.resume_buffer = 64);
    server
        .create_order(&jog_order(ORDER, COURIER, &points))
        .await;
    let (offset, epoch) = server.offset_and_epoch(ORDER).await;
    assert_ne!(
        epoch, old_epoch,
        "a stream that lost its history has a new epoch"
    );
    let token = server.watch_token(ORDER);
    let resume_old = |since: u64| {
        server.watch_resume(
            ORDER,
            since,
            &old_epoch,
            TokenIn::Query(&token),
            WatchProtocol::Json,
        )
    };

    // The old offset is ahead of the new stream.
    assert!(offset < old_offset);
    let mut resumed = resume_old(old_offset).await;
    let first = resumed.next_update(TIMEOUT).await;
    assert!(
        first.kind.as_deref() == Some("snapshot")
            && !first.recovered
            && first.epoch == epoch
            && first.offset == offset,
        "resume of the old stream: a snapshot of the new one, got {first:?}"
    );
    resumed.close().await;

    // The new stream overtakes the old offset: offsets alone would now look resumable, the epoch
    // says they are not (the frames after old_offset are not the ones the watcher missed).
    let mut courier = server.courier(COURIER).await;
    stream_one_by_one(&mut courier, &fixes[..old_offset as usize + 3]).await;
    let (current, _) = server.offset_and_epoch(ORDER).await;
    assert!(current > old_offset + 1, "{current} vs {old_offset}");
    let mut resumed = resume_old(old_offset).await;
    let first = resumed.next_update(TIMEOUT).await;
    assert!(
        first.kind.as_deref() == Some("snapshot")
            && !first.recovered
            && first.epoch == epoch
            && first.offset == current,
        "resume with the old epoch at an offset the new stream has: a snapshot, got {first:?}"
    );
    courier.close().await;
}
