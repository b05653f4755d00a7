//! Watchers that stop reading: bounded server memory, conflation, close 4008 while acks and a
//! healthy watcher keep flowing, and their connections closed once the client timeout passes.
//! These run the real `trackline` binary: its memory is read from `/proc` and its metrics are its
//! own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use trackline_tests::scenarios::{jog_order, join};
use trackline_tests::{
    load_trip, proc_status_kib, trip_fixes, TestServer, TokenIn, Update, WatchError, WatchEvent,
    WatchProtocol, Watcher, TIMEOUT,
};

const ORDER: &str = "order-g";

const COURIER: &str = "courier-g";

// Slow watchers
/// Stuck watchers on one order in the slow-watcher test.
const STUCK_WATCHERS: usize = 1000;

/// The receive buffer and segment size of a stuck watcher's socket: a phone on a mobile link (see
/// `TestServer::watch_on_slow_link`: over loopback's defaults the kernel would absorb a whole
/// stream, and a watcher that stops reading would never look stuck to the server).
const STUCK_RECV_BUFFER: u32 = 4096;

const STUCK_MSS: u32 = 536;

/// Fixes per courier frame, and the pause between frames (2,600 fixes in about 5 s).
const FRAME: usize = 20;

const FRAME_PAUSE: Duration = Duration::from_millis(30);

/// The bound on the server's RSS growth with the stuck watchers, MiB: 24 KiB per stuck watcher.
/// Measured with 1,000 (debug and release builds alike): 16.7-17.9 KiB each, of which 1.5-2 KiB is
/// what being stuck adds (8 bytes a queued frame, and what the HTTP writer holds) and the rest
/// what any open connection costs: actix's 8 KiB read and write buffers (of each the page the
/// handshake touched), its connection task, the session, and 2-3 KiB each of the requests actix
/// keeps for reuse (up to 128 per worker, filled by the first handshakes; a connection beyond
/// them costs 13-14.7 KiB, a stuck watcher beyond them 14.7-16.3). With `--write-buffer-bytes`
/// and the session's bursts at 2 KiB, being stuck took 5.5-5.8 KiB (a second page of the
/// writer's buffer) and a stuck watcher 20.3-24 KiB; with the frames queued as actix mailbox
/// messages (some 80 bytes each) 24.6-27.4 KiB, and 41.8 KiB at the default `--watcher-queue` of
/// 256; with actix's 32 KiB writer buffer and whole-mailbox bursts 81-89 KiB.
const RSS_GROWTH_BOUND_MIB: u64 = (STUCK_WATCHERS as u64 * 24).div_ceil(1024);

/// The bound on what being stuck adds to a connection, KiB: the writer's buffer must stay within
/// the page its handshake touched (a second page is 4 KiB).
const STUCK_GROWTH_BOUND_KIB: f64 = 3.5;

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
    /// With the first half of the stuck watchers connected. actix keeps up to 128 finished
    /// requests (each with its header map, some 6.5 KiB) per worker for reuse; the first
    /// handshakes fill that, so the second half shows what a connection itself costs.
    half_connected_kib: u64,
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
        .create_order(&jog_order(ORDER, COURIER, &points))
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

    // In two halves: the first also fills what actix pools per worker (see
    // [`Stalled::half_connected_kib`]).
    let connect = |count: usize| {
        join_all((0..count).map(|_| {
            server.watch_on_slow_link(
                ORDER,
                TokenIn::Query(&token),
                WatchProtocol::Json,
                STUCK_RECV_BUFFER,
                STUCK_MSS,
            )
        }))
    };
    let mut stuck: Vec<Watcher> = connect(watchers / 2).await;
    let (half_connected_kib, _) = server.rss_kib();
    stuck.extend(connect(watchers - watchers / 2).await);
    let (connected_kib, _) = server.rss_kib();
    let (offset_before, _) = server.offset_and_epoch(ORDER).await;

    // Sample the server's RSS while the courier streams.
    let peak_kib = Arc::new(AtomicU64::new(connected_kib));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak_kib, sampling, pid) = (peak_kib.clone(), sampling.clone(), server.pid());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
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
        half_connected_kib,
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
    let evicted = server
        .metric_reaching(
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
    let per_watcher = |kib: u64, watchers: usize| kib as f64 / watchers as f64;
    let second_half = STUCK_WATCHERS - STUCK_WATCHERS / 2;
    // A connection of the second half, and what being stuck added to each.
    let connection_kib = per_watcher(
        run.connected_kib.saturating_sub(run.half_connected_kib),
        second_half,
    );
    let stuck_kib = per_watcher(peak_kib.saturating_sub(run.connected_kib), STUCK_WATCHERS);
    eprintln!(
        "slow watchers: {STUCK_WATCHERS} stuck watchers; {} fixes in {} frames streamed in \
         {:.1?}, all acked; {} updates meanwhile (the healthy watcher got {} in all); server RSS \
         baseline {} KiB, with half the watchers connected {} KiB, with all {} KiB (+{:.1} KiB \
         each; the second half +{connection_kib:.1} KiB each), peak {peak_kib} KiB (VmHWM \
         {hwm_kib} KiB); growth {growth_kib} KiB = {:.1} MiB = {:.1} KiB per stuck watcher, \
         of which being stuck {stuck_kib:.1} KiB; a stuck watcher beyond the first \
         {}: {:.1} KiB (an unbounded queue would hold {} MiB); evicted {evicted}",
        run.fixes,
        run.frames,
        run.streamed_in,
        run.updates,
        run.healthy_updates,
        run.baseline_kib,
        run.half_connected_kib,
        run.connected_kib,
        per_watcher(
            run.connected_kib.saturating_sub(run.baseline_kib),
            STUCK_WATCHERS
        ),
        growth_kib as f64 / 1024.0,
        per_watcher(growth_kib, STUCK_WATCHERS),
        STUCK_WATCHERS / 2,
        connection_kib + stuck_kib,
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
        stuck_kib < STUCK_GROWTH_BOUND_KIB,
        "being stuck added {stuck_kib:.1} KiB to each watcher's connection; bound \
         {STUCK_GROWTH_BOUND_KIB} KiB"
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
        let open = server.metric("trackline_watch_connections").await;
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
