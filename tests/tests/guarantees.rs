//! The delivery guarantees end to end, each test with assertions that fail if its
//! guarantee breaks: gap-free watcher resume (`?since=&epoch=`), slow watchers (bounded memory,
//! conflation, close 4008), graceful shutdown on SIGTERM, heartbeats on both streams, and order
//! actors that move to their couriers' threads without losing anything.
//!
//! Resume and heartbeats run an in-process server with a tuned `Config`; slow watchers and
//! shutdown run the real `trackline` binary (its memory is read from `/proc`, and it gets a real
//! SIGTERM). Crash safety (SIGKILL) is in `crash.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::LatLon;
use trackline_proto::v1;
use trackline_tests::{
    load_trip, same_state, trip_fixes, update_at, CourierClient, NewOrder, TestServer, TokenIn,
    TripPoint, Update, WatchError, WatchEvent, WatchProtocol, Watcher, TIMEOUT,
};

const ORDER: &str = "order-g";
const COURIER: &str = "courier-g";

/// The first `n` points of a clean jog (1 fix/s, no jumps): every fix moves the live state.
fn run_points(n: usize) -> Vec<TripPoint> {
    load_trip("run_vincennes_DC2_garmin.csv")[..n].to_vec()
}

/// An order 1.7 km north of where the jog starts, with a planned route, assigned to `courier`.
fn run_order(order: &str, courier: &str, points: &[TripPoint]) -> NewOrder {
    let start = points[0].pos;
    let destination = LatLon::new(start.lat + 0.015, start.lon + 0.002);
    let waypoint = LatLon::new(start.lat + 0.007, start.lon + 0.003);
    NewOrder::new(order, destination)
        .courier(courier)
        .route(vec![start, waypoint, destination])
}

/// Streams `fixes` one per frame (one update each), every frame acked before the next.
async fn stream_one_by_one(courier: &mut CourierClient, fixes: &[v1::Fix]) {
    let rejected = courier.stream(fixes, 1).await;
    assert!(
        rejected.is_empty(),
        "clean fixes rejected: {:?}",
        courier.rejected
    );
}

/// Reads updates until the one at `offset` (included).
async fn read_through(watcher: &mut Watcher, offset: u64) -> Vec<Update> {
    watcher.updates_until(TIMEOUT, |u| u.offset >= offset).await
}

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

/// Everything a watcher of the order sees, collected from the start: the ground truth against
/// which replays are compared.
struct Reference {
    watcher: Watcher,
    seen: Vec<Update>,
}

impl Reference {
    async fn start(server: &TestServer, order: &str) -> Self {
        let token = server.watch_token(order);
        let mut watcher = server
            .watch(order, TokenIn::Header(&token), WatchProtocol::Json)
            .await;
        let snapshot = watcher.next_update(TIMEOUT).await;
        Self {
            watcher,
            seen: vec![snapshot],
        }
    }

    /// Reads through `offset`, checking that offsets increase by one.
    async fn catch_up(&mut self, offset: u64) -> &[Update] {
        if self.seen.last().is_some_and(|u| u.offset >= offset) {
            return &self.seen;
        }
        for update in read_through(&mut self.watcher, offset).await {
            let last = self.seen.last().expect("starts with the snapshot");
            assert_eq!(
                update.offset,
                last.offset + 1,
                "a watcher that keeps up sees every offset: {update:?} after {last:?}"
            );
            self.seen.push(update);
        }
        &self.seen
    }
}

/// Sets up an order on a server, a reference watcher and a courier, and streams the first
/// `first` fixes of the jog; the fixes left for later.
async fn order_with_updates(
    server: &TestServer,
    first: usize,
    total: usize,
) -> (Reference, CourierClient, Vec<v1::Fix>) {
    let points = run_points(total);
    server
        .create_order(&run_order(ORDER, COURIER, &points))
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
    let points = run_points(30);
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
        .create_order(&run_order(ORDER, COURIER, &points))
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

// ---------------------------------------------------------------------------------------------
// Slow watchers

/// Stuck watchers on one order in the slow-watcher test.
const STUCK_WATCHERS: usize = 200;
/// The receive buffer and segment size of a stuck watcher's socket: a phone on a mobile link (see
/// `TestServer::watch_on_slow_link`: over loopback's defaults the kernel would absorb a whole
/// stream, and a watcher that stops reading would never look stuck to the server).
const STUCK_RECV_BUFFER: u32 = 4096;
const STUCK_MSS: u32 = 536;
/// Fixes per courier frame, and the pause between frames (2,600 fixes in about 5 s).
const FRAME: usize = 20;
const FRAME_PAUSE: Duration = Duration::from_millis(30);
/// The bound on the server's RSS growth with the stuck watchers, MiB.
const RSS_GROWTH_BOUND_MIB: u64 = 150;
/// Flags of the slow-watcher servers.
const SLOW_WATCHER_FLAGS: [&str; 8] = [
    "--slow-watcher-timeout-s",
    "2",
    // Small, but above the updates of one courier frame: a watcher that reads is not conflated
    // for the size of a burst, and one that stopped is sent everything until it stalls.
    "--watcher-queue",
    "32",
    "--max-frames-per-s",
    "1000",
    "--workers",
    "2",
];

/// The value of a counter or gauge in the Prometheus text of `/metrics` (0 when absent).
async fn metric(server: &TestServer, name: &str) -> f64 {
    let reply = server.get("/metrics", None).await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text);
    reply
        .text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name || key.starts_with(&format!("{name}{{"))).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls a metric until it reaches `at_least` or `within` passes; its last value.
async fn metric_reaching(server: &TestServer, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(server, name).await;
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`stall_watchers`] saw.
struct Stalled {
    /// The watchers that never read, still open on the client side.
    stuck: Vec<Watcher>,
    final_offset: u64,
    epoch: String,
    /// Updates published while the stuck watchers were connected.
    updates: u64,
    /// Updates that reached the healthy watcher.
    healthy_updates: usize,
    fixes: usize,
    frames: usize,
    streamed_in: Duration,
    /// Server RSS, KiB: before the stuck watchers, with them connected, the peak while streaming.
    baseline_kib: u64,
    connected_kib: u64,
    peak_kib: u64,
    /// The size of one JSON update, bytes (the order state as GET returns it).
    update_bytes: usize,
}

/// Connects `watchers` watchers that never read to the order of a binary server, then has a
/// courier stream a whole jog (2,643 fixes, frames of [`FRAME`], each acked within `TIMEOUT`)
/// while a healthy watcher reads; checks the acks and that the healthy watcher reached the final
/// offset with increasing offsets, and samples the server's RSS.
async fn stall_watchers(server: &TestServer, watchers: usize) -> Stalled {
    let points = load_trip("run_vincennes_DC2_garmin.csv");
    server
        .create_order(&run_order(ORDER, COURIER, &points))
        .await;
    let fixes = trip_fixes(&points, 1);
    let token = server.watch_token(ORDER);

    // The healthy watcher reads everything on its own task, as fast as it can.
    let mut healthy = server
        .watch(ORDER, TokenIn::Query(&token), WatchProtocol::Json)
        .await;
    let snapshot = healthy.next_update(TIMEOUT).await;
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let healthy_task = {
        let target = target.clone();
        tokio::spawn(async move {
            let mut updates: Vec<Update> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while updates
                .last()
                .is_none_or(|u| u.offset < target.load(Ordering::SeqCst))
            {
                assert!(
                    Instant::now() < deadline,
                    "healthy watcher: the final offset did not arrive (last {:?} after {} \
                     updates)",
                    updates.last().map(|u| u.offset),
                    updates.len()
                );
                match healthy.try_next_event(Duration::from_millis(200)).await {
                    Ok(WatchEvent::Update(update)) => updates.push(update),
                    Err(WatchError::Timeout) => {}
                    other => panic!("healthy watcher: {other:?} after {} updates", updates.len()),
                }
            }
            healthy.close().await;
            updates
        })
    };

    // Warm up (allocators, sled, the order actor) before the baseline.
    let mut courier = server.courier(COURIER).await;
    let (warmup, stream) = fixes.split_at(40);
    courier.stream(warmup, FRAME).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (baseline_kib, _) = server.rss_kib();

    let stuck: Vec<Watcher> = join_all((0..watchers).map(|_| {
        server.watch_on_slow_link(
            ORDER,
            TokenIn::Query(&token),
            WatchProtocol::Json,
            STUCK_RECV_BUFFER,
            STUCK_MSS,
        )
    }))
    .await;
    let (connected_kib, _) = server.rss_kib();
    let (offset_before, _) = server.offset_and_epoch(ORDER).await;

    // Sample the server's RSS while the courier streams.
    let peak_kib = Arc::new(AtomicU64::new(connected_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_kib, sampling, pid) = (peak_kib.clone(), sampling.clone(), server.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = vm_rss_kib(pid) {
                    peak_kib.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let frames = stream.len().div_ceil(FRAME);
    let mut rejected = Vec::new();
    for chunk in stream.chunks(FRAME) {
        // Every frame is acked within TIMEOUT, or stream() fails the test.
        rejected.extend(courier.stream(chunk, FRAME).await);
        tokio::time::sleep(FRAME_PAUSE).await;
    }
    let streamed_in = started.elapsed();
    assert_eq!(
        courier.acked,
        fixes.last().unwrap().seq,
        "the last frame is acked"
    );
    assert!(
        rejected.len() * 50 < stream.len(),
        "{} clean fixes rejected",
        rejected.len()
    );

    // The healthy watcher reaches the final offset, in order.
    let (final_offset, epoch) = server.offset_and_epoch(ORDER).await;
    target.store(final_offset, Ordering::SeqCst);
    let updates = join(healthy_task).await;
    let mut previous = snapshot.offset;
    for update in &updates {
        assert!(
            update.offset > previous,
            "healthy watcher: offsets must increase: {} after {previous}",
            update.offset
        );
        assert_eq!(update.epoch, epoch);
        previous = update.offset;
    }
    assert_eq!(
        updates.last().map(|u| u.offset),
        Some(final_offset),
        "the healthy watcher ends on the order's final offset"
    );
    sampling.store(false, Ordering::SeqCst);
    join(sampler).await;
    let state = server.order_state(ORDER).await;
    Stalled {
        stuck,
        final_offset,
        epoch,
        updates: final_offset - offset_before,
        healthy_updates: updates.len(),
        fixes: stream.len(),
        frames,
        streamed_in,
        baseline_kib,
        connected_kib,
        peak_kib: peak_kib.load(Ordering::SeqCst),
        update_bytes: state.to_string().len(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stuck_watchers_cost_bounded_memory_then_get_4008_while_acks_and_a_healthy_watcher_flow() {
    let mut flags = SLOW_WATCHER_FLAGS.to_vec();
    // The heartbeat must not be what removes the stuck watchers here.
    flags.extend(["--client-timeout-s", "300"]);
    let server = TestServer::start_binary(&flags);
    let run = stall_watchers(&server, STUCK_WATCHERS).await;

    // The stuck watchers are given up on (4008) once slow for the timeout.
    let evicted = metric_reaching(
        &server,
        "trackline_watchers_evicted_total",
        STUCK_WATCHERS as f64,
        Duration::from_secs(20),
    )
    .await;
    let (after_kib, hwm_kib) = server.rss_kib();
    let peak_kib = run.peak_kib.max(after_kib);
    let growth_kib = peak_kib.saturating_sub(run.baseline_kib);
    // What a queue per watcher that grew with the stream would hold at the end.
    let unbounded_kib = (STUCK_WATCHERS as u64 * run.updates * run.update_bytes as u64) / 1024;
    eprintln!(
        "slow watchers: {STUCK_WATCHERS} stuck watchers; {} fixes in {} frames streamed in \
         {:.1?}, all acked; {} updates meanwhile (the healthy watcher got {} in all); server RSS \
         baseline {} \
         KiB, with the watchers connected {} KiB (+{:.1} KiB each), peak {peak_kib} KiB (VmHWM \
         {hwm_kib} KiB); growth {growth_kib} KiB = {:.1} MiB = {:.1} KiB per stuck watcher \
         (an unbounded queue would hold {} MiB); evicted {evicted}",
        run.fixes,
        run.frames,
        run.streamed_in,
        run.updates,
        run.healthy_updates,
        run.baseline_kib,
        run.connected_kib,
        run.connected_kib.saturating_sub(run.baseline_kib) as f64 / STUCK_WATCHERS as f64,
        growth_kib as f64 / 1024.0,
        growth_kib as f64 / STUCK_WATCHERS as f64,
        unbounded_kib / 1024,
    );
    assert!(
        unbounded_kib > RSS_GROWTH_BOUND_MIB * 1024,
        "the stream is long enough that unbounded queues would break the bound"
    );
    assert!(
        growth_kib < RSS_GROWTH_BOUND_MIB * 1024,
        "server RSS grew by {growth_kib} KiB with {STUCK_WATCHERS} stuck watchers; bound \
         {RSS_GROWTH_BOUND_MIB} MiB"
    );
    assert!(
        evicted >= STUCK_WATCHERS as f64,
        "every stuck watcher is closed as too slow: {evicted} of {STUCK_WATCHERS} evicted"
    );

    // A stuck watcher that reads again gets what was queued for it (offsets may skip), then the
    // close 4008.
    let mut stuck = run.stuck.into_iter();
    let mut waking = stuck.next().expect("stuck watchers");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_offset = None;
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match waking.try_next_event(left).await {
            Ok(WatchEvent::Update(update)) => {
                assert!(
                    last_offset.is_none_or(|o| update.offset > o),
                    "offsets increase even when conflated: {} after {last_offset:?}",
                    update.offset
                );
                assert_eq!(update.epoch, run.epoch);
                last_offset = Some(update.offset);
            }
            Ok(WatchEvent::Closed(frame)) => break frame,
            Err(e) => panic!("the waking stuck watcher got no close 4008: {e:?}"),
        }
    };
    let close = close.expect("a close frame, not a bare disconnect");
    assert_eq!(
        close.code,
        CloseCode::from(4008),
        "a watcher that stopped reading is closed with 4008: {close:?}"
    );
    assert!(
        last_offset.is_some_and(|o| o < run.final_offset),
        "a stuck watcher is given up on, not sent the whole stream (last offset {last_offset:?} of \
         {})",
        run.final_offset
    );
}

/// A watcher whose socket is full is evicted by its order, but its session cannot act while
/// the client keeps the connection open without reading: it only runs when the HTTP dispatcher
/// polls its response body, which it stops doing while its write buffer is full. The server sets
/// TCP_USER_TIMEOUT (the client timeout) on every accepted socket, so the kernel aborts such a
/// connection and it gives back its `--max-connections` slot and its buffers.
#[tokio::test(flavor = "multi_thread")]
async fn stuck_watcher_connections_are_closed_once_the_client_timeout_passes() {
    const WATCHERS: usize = 20;
    const CLIENT_TIMEOUT_S: u64 = 4;
    let mut flags = SLOW_WATCHER_FLAGS.to_vec();
    let timeout = CLIENT_TIMEOUT_S.to_string();
    flags.extend(["--client-timeout-s", &timeout, "--heartbeat-s", "1"]);
    let server = TestServer::start_binary(&flags);
    let run = stall_watchers(&server, WATCHERS).await;
    // Evicted (slow for 2 s) or timed out (silent for CLIENT_TIMEOUT_S): either way gone.
    let deadline = Instant::now() + Duration::from_secs(2 + CLIENT_TIMEOUT_S + 5);
    let open = loop {
        let open = metric(&server, "trackline_watch_connections").await;
        if open == 0.0 || Instant::now() > deadline {
            break open;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        open,
        0.0,
        "{open} of {WATCHERS} watchers that stopped reading still hold a connection {} s after \
         the stream ended",
        2 + CLIENT_TIMEOUT_S + 5
    );
    drop(run.stuck);
}

/// `VmRSS` of a process, KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
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
        .create_order(&run_order(ORDER, COURIER, &points))
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

// ---------------------------------------------------------------------------------------------
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
    let points = run_points(5);
    server
        .create_order(&run_order(ORDER, COURIER, &points))
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
    let points = run_points(5);
    server
        .create_order(&run_order(ORDER, COURIER, &points))
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

/// Orders whose actors start on their watchers' threads (watchers subscribe before the couriers
/// connect) are moved to their couriers' session threads; a move loses no fix, no update and no
/// watcher, also when a courier reconnects (maybe on the other thread) and streams on.
#[tokio::test(flavor = "multi_thread")]
async fn orders_moved_to_their_couriers_threads_lose_no_fix_update_or_watcher() {
    const ORDERS: usize = 16;
    // The binary: its metrics are its own (in-process servers of one test binary share theirs).
    let server = TestServer::start_binary(&["--workers", "2"]);
    let points = run_points(24);
    let fixes = trip_fixes(&points, 1);
    let (first, second) = fixes.split_at(12);
    let ids = |i: usize| (format!("order-move-{i}"), format!("courier-move-{i}"));
    for i in 0..ORDERS {
        let (order, courier) = ids(i);
        server
            .create_order(&run_order(&order, &courier, &points))
            .await;
    }
    let mut watchers = Vec::new();
    for i in 0..ORDERS {
        watchers.push(Reference::start(&server, &ids(i).0).await);
    }
    // The server hands connections to its two threads in turn: one more connection (a request)
    // puts each courier on the other thread than its watcher, whose lookup started the actor.
    server.get("/healthz", None).await;
    let couriers: Vec<String> = (0..ORDERS).map(|i| ids(i).1).collect();
    stream_each(&server, &couriers, first).await;
    let moved = metric(&server, "trackline_order_moves_total").await;
    assert!(
        moved >= 1.0,
        "no order actor moved to its courier's thread ({moved})"
    );
    stream_each(&server, &couriers, second).await;

    for (i, watcher) in watchers.iter_mut().enumerate() {
        let (order, _) = ids(i);
        let stored: Vec<u64> = server.history(&order).await.iter().map(|f| f.seq).collect();
        assert_eq!(
            stored,
            (1..=fixes.len() as u64).collect::<Vec<_>>(),
            "{order}: every acked fix is in its history"
        );
        let (offset, _) = server.offset_and_epoch(&order).await;
        let seen = watcher.catch_up(offset).await;
        assert_eq!(
            seen.last().map(|u| u.offset),
            Some(offset),
            "{order}: the watcher from before the moves saw every update"
        );
    }
}

/// Every courier of `couriers` connects, streams `fixes` one per frame and closes, all at once.
async fn stream_each(server: &TestServer, couriers: &[String], fixes: &[v1::Fix]) {
    join_all(couriers.iter().map(|id| async move {
        let mut courier = server.courier(id).await;
        stream_one_by_one(&mut courier, fixes).await;
        courier.close().await;
    }))
    .await;
}
