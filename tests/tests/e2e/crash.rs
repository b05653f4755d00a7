//! Crash safety: the real `trackline` binary is killed with SIGKILL at random moments
//! while couriers stream fixes and watchers follow their orders, then restarted on the same data
//! dir, cycle after cycle. After every restart:
//!
//! - every fix the server acked is in its orders' history exactly once, in time order, with what
//!   was sent, and history holds nothing that was never sent;
//! - every active order comes back in the same epoch, at an offset no older than any a watcher
//!   saw, with the position and ETA of that offset (when a watcher saw it) and a position at
//!   least as new as the last acked fix;
//! - a watcher resuming with its last offset and epoch continues right after it (the server
//!   recovered exactly there) or gets a snapshot in the same epoch at no older offset.
//!
//! The couriers behave like the real app: they buffer every fix until it is acked and, after each
//! restart, resend everything unacked with the same seqs before streaming new fixes; the server
//! must store each fix once however often it arrives. At the end every fix ever sent is stored.
//!
//! The server folds its write-ahead log into sled every quarter second here (15 s by default), so
//! kills also land in the middle of a compaction and restarts fold what it left.
//!
//! `TRACKLINE_CRASH_CYCLES` sets the number of kill/restart cycles (default 5);
//! `TRACKLINE_CRASH_SEED` replays a run (the seed is printed). `tests/crash-check.sh` runs this
//! test with 20 cycles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use trackline_core::plane::{LocalPlane, M_PER_DEG};
use trackline_core::LatLon;
use trackline_proto::v1::server_frame::Kind;
use trackline_proto::{from_e7, to_e7, v1, Message as _};
use trackline_tests::{
    ws_connect, HistoryFix, NewOrder, TestServer, TokenIn, Update, WatchError, WatchEvent,
    WatchProtocol, Watcher, TIMEOUT,
};

const CYCLES_VAR: &str = "TRACKLINE_CRASH_CYCLES";

const SEED_VAR: &str = "TRACKLINE_CRASH_SEED";

const DEFAULT_CYCLES: usize = 5;

/// How often the server folds its write-ahead log into sled during the test.
const COMPACT_EVERY_S: &str = "0.25";

/// Courier `a` serves two orders (each fix goes to both), courier `b` one.
const COURIERS: [&str; 2] = ["crash-courier-a", "crash-courier-b"];

const ORDERS: [(&str, &str); 3] = [
    ("crash-a1", "crash-courier-a"),
    ("crash-a2", "crash-courier-a"),
    ("crash-b1", "crash-courier-b"),
];

/// Most fixes per frame, and most frames awaiting their ack (the app pipelines its buffer, so a
/// kill finds frames in flight: sent, maybe stored, not acked).
const MAX_FIXES_PER_FRAME: usize = 10;

const WINDOW: usize = 12;

/// How often the app sends a burst of frames while it has something to send.
const SEND_EVERY: Duration = Duration::from_millis(20);

/// The kill comes this long after the couriers reconnect, at random.
const KILL_AFTER_MS: std::ops::Range<u64> = 0..1500;

/// Device time between two fixes, and how far back the first one is (so that many cycles of
/// fixes stay within the 24 h the server accepts and never reach the future).
const FIX_SPACING_MS: i64 = 500;

const FIRST_FIX_AGE_MS: i64 = 20 * 3600 * 1000;

/// Where a courier drives: a circle of 1 km around its own centre at 8 m/s (4 m between fixes),
/// 3 km from its orders' destination. A clean track: no fix is a jump, every fix moves the live
/// state.
const RADIUS_M: f64 = 1000.0;

const SPEED_MPS: f64 = 8.0;

fn centre(courier: usize) -> LatLon {
    LatLon::new(48.85 + courier as f64 * 0.2, 2.35)
}

fn destination(courier: usize) -> LatLon {
    let c = centre(courier);
    LatLon::new(c.lat + 3000.0 / M_PER_DEG, c.lon)
}

/// The `i`-th fix of a courier (seq `i + 1`).
fn fix(courier: usize, i: u64, t0_ms: i64) -> v1::Fix {
    let c = centre(courier);
    let angle = i as f64 * SPEED_MPS * (FIX_SPACING_MS as f64 / 1000.0) / RADIUS_M;
    let pos = LocalPlane::at(c).to_lat_lon(RADIUS_M * angle.cos(), RADIUS_M * angle.sin());
    // Anticlockwise from east: the heading is the tangent.
    let heading = (360.0 - angle.to_degrees()).rem_euclid(360.0);
    v1::Fix {
        seq: i + 1,
        time_ms: t0_ms + i as i64 * FIX_SPACING_MS,
        lat_e7: to_e7(pos.lat),
        lon_e7: to_e7(pos.lon),
        accuracy_m: Some(5.0),
        speed_mps: Some(SPEED_MPS as f32),
        heading_deg: Some(if heading >= 360.0 {
            0.0
        } else {
            heading as f32
        }),
    }
}

/// A courier app: every fix it made, its buffer of unacked fixes, what the server said.
struct App {
    index: usize,
    name: &'static str,
    t0_ms: i64,
    /// Every fix made, by seq.
    made: BTreeMap<u64, v1::Fix>,
    /// Unacked fixes, oldest first: resent after every reconnect.
    buffer: VecDeque<v1::Fix>,
    /// The highest acked seq.
    acked: u64,
    rejected: Vec<v1::Rejected>,
    /// Fixes sent again after a reconnect.
    resent: usize,
    /// Fixes sent, resends included.
    sent: usize,
}

impl App {
    fn new(index: usize, t0_ms: i64) -> Self {
        Self {
            index,
            name: COURIERS[index],
            t0_ms,
            made: BTreeMap::new(),
            buffer: VecDeque::new(),
            acked: 0,
            rejected: Vec::new(),
            resent: 0,
            sent: 0,
        }
    }

    /// Makes `n` new fixes into the buffer.
    fn make(&mut self, n: usize) -> Vec<v1::Fix> {
        let next = self.made.len() as u64;
        let fixes: Vec<v1::Fix> = (next..next + n as u64)
            .map(|i| fix(self.index, i, self.t0_ms))
            .collect();
        let newest = fixes.last().map_or(0, |f| f.time_ms);
        assert!(
            newest < trackline_core::now_ms() - 60_000,
            "the test made fixes up to now: lower its rate or FIRST_FIX_AGE_MS"
        );
        for f in &fixes {
            self.made.insert(f.seq, *f);
            self.buffer.push_back(*f);
        }
        fixes
    }

    fn on_ack(&mut self, seq: u64) {
        assert!(
            seq >= self.acked,
            "{}: acks go backwards: {seq} after {}",
            self.name,
            self.acked
        );
        self.acked = seq;
        while self.buffer.front().is_some_and(|f| f.seq <= seq) {
            self.buffer.pop_front();
        }
    }

    /// The time of the newest acked fix.
    fn acked_time_ms(&self) -> Option<i64> {
        self.made.get(&self.acked).map(|f| f.time_ms)
    }
}

/// How a courier session ended.
#[derive(Debug)]
enum Ended {
    /// The connection broke (the server was killed).
    Dropped(String),
    /// The server closed it with a close frame.
    Closed(String),
    /// Everything in the buffer was acked and `drain` was asked.
    Drained,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Dropped(why) => write!(f, "dropped ({why})"),
            Ended::Closed(frame) => write!(f, "closed by the server ({frame})"),
            Ended::Drained => f.write_str("drained"),
        }
    }
}

/// One connection of a courier app: resends its buffer, then (unless `drain`) streams new fixes
/// in frames of random size with up to [`WINDOW`] frames unacked, until the connection ends.
/// Checks that every frame gets exactly one ack, in order, naming the frame's highest seq.
async fn courier_session(
    app: &mut App,
    url: String,
    token: String,
    drain: bool,
    seed: u64,
) -> Ended {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ws = match ws_connect(&url, TokenIn::Header(&token), None).await {
        Ok(ws) => ws,
        Err(e) => return Ended::Dropped(format!("connecting: {e:#}")),
    };
    let mut resend: VecDeque<v1::Fix> = app.buffer.clone();
    let mut in_flight: VecDeque<u64> = VecDeque::new();
    let mut tick = tokio::time::interval(SEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if drain && resend.is_empty() && in_flight.is_empty() {
            assert!(
                app.buffer.is_empty(),
                "{}: drained with fixes unacked",
                app.name
            );
            let _ = ws.close(None).await;
            return Ended::Drained;
        }
        let may_send = in_flight.len() < WINDOW && !(drain && resend.is_empty());
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = v1::ServerFrame::decode(bytes.as_ref())
                        .expect("server frames decode as ServerFrame");
                    match frame.kind {
                        Some(Kind::Ack(ack)) => {
                            let expected = in_flight.pop_front();
                            assert_eq!(
                                Some(ack.seq), expected,
                                "{}: one ack per frame, in order, naming its highest seq",
                                app.name
                            );
                            app.on_ack(ack.seq);
                        }
                        Some(Kind::Rejected(rejected)) => app.rejected.push(rejected),
                        None => panic!("server frame without a kind"),
                    }
                }
                Some(Ok(Message::Close(frame))) => return Ended::Closed(format!("{frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Dropped(e.to_string()),
                None => return Ended::Dropped("end of stream".into()),
            },
            _ = tick.tick(), if may_send => {
                // A burst of frames (an app flushing what it gathered), up to the window.
                let burst = rng.random_range(1..=WINDOW - in_flight.len());
                for _ in 0..burst {
                    if drain && resend.is_empty() {
                        break;
                    }
                    let n = rng.random_range(1..=MAX_FIXES_PER_FRAME);
                    let fixes: Vec<v1::Fix> = if resend.is_empty() {
                        app.make(n)
                    } else {
                        let k = n.min(resend.len());
                        app.resent += k;
                        resend.drain(..k).collect()
                    };
                    let last = fixes.last().expect("frames are never empty").seq;
                    app.sent += fixes.len();
                    let frame = v1::CourierFrame { fixes };
                    if let Err(e) = ws.send(Message::binary(frame.encode_to_vec())).await {
                        return Ended::Dropped(format!("sending: {e}"));
                    }
                    in_flight.push_back(last);
                }
            }
        }
    }
}

/// What a watcher saw of one order over one server life.
#[derive(Debug, Default, Clone)]
struct Seen {
    epoch: Option<String>,
    /// Every update, by offset.
    updates: BTreeMap<u64, Update>,
}

impl Seen {
    fn last(&self) -> Option<&Update> {
        self.updates.values().next_back()
    }
}

/// Follows an order until the connection ends: resumes after `seen`'s last offset when there is
/// one. Checks one epoch and increasing offsets; checks the first frame of a resume.
async fn watch_order(url: String, token: String, mut seen: Seen) -> Seen {
    let resume = seen.last().map(|u| (u.offset, u.epoch.clone()));
    let url = match &resume {
        Some((since, epoch)) => format!("{url}?since={since}&epoch={epoch}"),
        None => url,
    };
    let Ok(mut watcher) = Watcher::connect(&url, TokenIn::Query(&token), WatchProtocol::Json).await
    else {
        return seen; // the server died before the upgrade
    };
    let mut first = true;
    loop {
        let update = match watcher.try_next_event(Duration::from_secs(30)).await {
            Ok(WatchEvent::Update(update)) => update,
            Ok(WatchEvent::Closed(_)) | Err(WatchError::Failed(_)) => return seen,
            Err(WatchError::Timeout) => panic!("{url}: no update for 30 s"),
        };
        if first {
            if let Some((since, epoch)) = &resume {
                // After a restart the server either has every frame after `since` (it recovered
                // exactly there; the new life's frames are in its buffer, replayed or live) or it
                // cannot know them: then a snapshot, in the same epoch, no older than `since`.
                assert_eq!(&update.epoch, epoch, "{url}: the epoch survives a crash");
                match update.kind.as_deref() {
                    Some("snapshot") => {
                        assert!(
                            !update.recovered,
                            "{url}: a snapshot is not recovered: {update:?}"
                        );
                        assert!(
                            update.offset >= *since,
                            "{url}: offset {} is older than the {since} seen before the crash",
                            update.offset
                        );
                    }
                    _ => assert_eq!(
                        update.offset,
                        since + 1,
                        "{url}: a resume without a snapshot continues right after since: {update:?}"
                    ),
                }
            }
            first = false;
        }
        if let Some(epoch) = &seen.epoch {
            assert_eq!(&update.epoch, epoch, "{url}: one epoch: {update:?}");
        }
        if let Some(last) = seen.last() {
            assert!(
                update.offset > last.offset
                    || (update.offset == last.offset && update.kind.as_deref() == Some("snapshot")),
                "{url}: offsets increase: {} after {}",
                update.offset,
                last.offset
            );
            if update.offset == last.offset {
                assert_eq!(
                    update.position, last.position,
                    "{url}: same offset, same state"
                );
                assert_eq!(update.eta, last.eta, "{url}: same offset, same state");
            }
        }
        seen.epoch = Some(update.epoch.clone());
        seen.updates.insert(update.offset, update);
    }
}

/// Checks one order's history against its courier app: every acked, unrejected fix once, in time
/// order, as sent; nothing never sent. `complete` also requires every fix made to be there.
/// The number of acked fixes checked.
fn check_history(
    order: &str,
    history: &[HistoryFix],
    app: &App,
    complete: bool,
    cycle: usize,
) -> usize {
    let context = format!("cycle {cycle}, order {order}");
    let mut stored: HashMap<u64, &HistoryFix> = HashMap::with_capacity(history.len());
    for f in history {
        assert!(
            stored.insert(f.seq, f).is_none(),
            "{context}: seq {} is stored twice",
            f.seq
        );
        let made = app
            .made
            .get(&f.seq)
            .unwrap_or_else(|| panic!("{context}: seq {} is stored but was never sent", f.seq));
        assert!(
            f.time_ms == made.time_ms
                && (f.lat - from_e7(made.lat_e7)).abs() < 1e-9
                && (f.lon - from_e7(made.lon_e7)).abs() < 1e-9,
            "{context}: seq {} is stored as {f:?}, sent as {made:?}",
            f.seq
        );
    }
    assert!(
        history
            .windows(2)
            .all(|w| (w[0].time_ms, w[0].seq) < (w[1].time_ms, w[1].seq)),
        "{context}: history is not in time order"
    );
    let rejected: Vec<u64> = app.rejected.iter().map(|r| r.seq).collect();
    let must_have = if complete {
        app.made.len() as u64
    } else {
        app.acked
    };
    let missing: Vec<u64> = (1..=must_have)
        .filter(|seq| !stored.contains_key(seq) && !rejected.contains(seq))
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: {} fixes {} are not in history (acked through {}, {} stored): first missing {:?}",
        missing.len(),
        if complete { "sent" } else { "acked" },
        app.acked,
        history.len(),
        &missing[..missing.len().min(10)]
    );
    must_have as usize - rejected.iter().filter(|&&s| s <= must_have).count()
}

/// Checks an order's recovered state against what a watcher saw before the kill, and against
/// the acks: same epoch, no older offset, the state of that offset, a position at least as new
/// as the last acked fix and stored in history, a consistent ETA.
fn check_recovered(
    order: &str,
    state: &Value,
    seen: &Seen,
    app: &App,
    history: &[HistoryFix],
    cycle: usize,
) {
    let context = format!("cycle {cycle}, order {order}: recovered {state}");
    let offset = state["offset"].as_u64().expect("an offset");
    let epoch = state["epoch"].as_str().expect("an epoch");
    assert_eq!(state["status"], "assigned", "{context}");
    if let Some(seen_epoch) = &seen.epoch {
        assert_eq!(epoch, seen_epoch, "{context}: the epoch changed");
    }
    let position: Option<trackline_tests::Position> =
        serde_json::from_value(state["position"].clone()).expect("a position or null");
    let eta: Option<trackline_tests::Eta> =
        serde_json::from_value(state["eta"].clone()).expect("an ETA or null");
    if let Some(last) = seen.last() {
        assert!(
            offset >= last.offset,
            "{context}: offset {offset} is older than the {} a watcher saw",
            last.offset
        );
        if let Some(update) = seen.updates.get(&offset) {
            assert_eq!(
                position, update.position,
                "{context}: the position of offset {offset}"
            );
            assert_eq!(eta, update.eta, "{context}: the ETA of offset {offset}");
        }
        if let (Some(p), Some(seen_p)) = (position, last.position) {
            assert!(
                p.time_ms >= seen_p.time_ms,
                "{context}: the position went back in time"
            );
        }
    }
    if let Some(acked_ms) = app.acked_time_ms() {
        let p = position.unwrap_or_else(|| panic!("{context}: fixes were acked, no position"));
        // Every fix of the track moves the live state, so the durable state is at least at the
        // last acked fix.
        assert!(
            p.time_ms >= acked_ms,
            "{context}: the position is at {} but fixes up to {acked_ms} were acked",
            p.time_ms
        );
        assert!(
            history.iter().any(|f| f.time_ms == p.time_ms),
            "{context}: the position's fix is not in history"
        );
        let eta = eta.unwrap_or_else(|| panic!("{context}: a position without an ETA"));
        assert!(
            eta.seconds >= 0 && (eta.arrive_at_ms - (p.time_ms + eta.seconds * 1000)).abs() <= 1000,
            "{context}: the ETA does not follow from the position"
        );
    }
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw:?} is not a number")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn acked_fixes_and_order_state_survive_sigkill_at_random_moments() {
    let cycles = env_number(CYCLES_VAR).map_or(DEFAULT_CYCLES, |n| n as usize);
    assert!(cycles >= 1, "{CYCLES_VAR} must be at least 1");
    let seed = env_number(SEED_VAR).unwrap_or_else(rand::random);
    eprintln!("crash: {cycles} cycles, seed {seed} (replay with {SEED_VAR}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // The log is folded into sled several times a second, so that kills land before, during
    // and after compactions, and restarts fold what a killed compaction left.
    let mut server = TestServer::start_binary(&[
        "--max-frames-per-s",
        "1000",
        "--workers",
        "2",
        "--compact-every-s",
        COMPACT_EVERY_S,
    ]);
    for (order, courier) in ORDERS {
        let index = COURIERS.iter().position(|c| *c == courier).unwrap();
        server
            .create_order(&NewOrder::new(order, destination(index)).courier(courier))
            .await;
    }
    let t0_ms = trackline_core::now_ms() - FIRST_FIX_AGE_MS;
    let mut apps: Vec<App> = (0..COURIERS.len()).map(|i| App::new(i, t0_ms)).collect();
    let mut seen: HashMap<&str, Seen> = ORDERS.iter().map(|(o, _)| (*o, Seen::default())).collect();
    let mut checked = 0;

    for cycle in 1..=cycles {
        // Couriers and watchers connect; the server is killed at a random moment.
        let sessions: Vec<_> = apps
            .drain(..)
            .map(|mut app| {
                let url = server.ws_url("/v1/courier/ws");
                let token = server.courier_token(app.name);
                let session_seed = rng.random();
                tokio::spawn(async move {
                    let ended = courier_session(&mut app, url, token, false, session_seed).await;
                    (app, ended)
                })
            })
            .collect();
        let watchers: Vec<_> = ORDERS
            .iter()
            .map(|(order, _)| {
                let url = server.ws_url(&format!("/v1/orders/{order}/watch"));
                let token = server.watch_token(order);
                let before = seen[order].clone();
                tokio::spawn(watch_order(url, token, before))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        tokio::time::sleep(kill_after).await;
        tokio::task::block_in_place(|| server.kill());

        for session in sessions {
            let (app, ended) = tokio::time::timeout(TIMEOUT, session)
                .await
                .expect("a courier session outlived the server by 10 s")
                .expect("courier session task");
            assert!(
                matches!(ended, Ended::Dropped(_)),
                "cycle {cycle}: {} was {ended} before the kill",
                app.name
            );
            apps.push(app);
        }
        for ((order, _), watcher) in ORDERS.iter().zip(watchers) {
            let after = tokio::time::timeout(TIMEOUT, watcher)
                .await
                .expect("a watcher outlived the server by 10 s")
                .expect("watcher task");
            seen.insert(order, after);
        }

        // Restart on the same data dir and check what survived, before anyone reconnects.
        tokio::task::block_in_place(|| server.start_again());
        for (order, courier) in ORDERS {
            let app = apps.iter().find(|a| a.name == courier).unwrap();
            let history = server.history(order).await;
            checked += check_history(order, &history, app, false, cycle);
            let state = server.order_state(order).await;
            check_recovered(order, &state, &seen[order], app, &history, cycle);
        }
        eprintln!(
            "crash: cycle {cycle}: killed after {kill_after:?}; acked through {:?}, unacked {:?}; \
             watchers at offsets {:?}",
            apps.iter().map(|a| a.acked).collect::<Vec<_>>(),
            apps.iter().map(|a| a.buffer.len()).collect::<Vec<_>>(),
            ORDERS
                .iter()
                .map(|(o, _)| seen[o].last().map(|u| u.offset))
                .collect::<Vec<_>>(),
        );
    }

    // The apps flush what is still unacked; then every fix ever made is stored exactly once.
    for app in &mut apps {
        let url = server.ws_url("/v1/courier/ws");
        let token = server.courier_token(app.name);
        let ended = tokio::time::timeout(
            Duration::from_secs(30),
            courier_session(app, url, token, true, rng.random()),
        )
        .await
        .expect("flushing the buffer took over 30 s");
        assert!(matches!(ended, Ended::Drained), "{}: {ended}", app.name);
    }
    let mut stored = 0;
    for (order, courier) in ORDERS {
        let app = apps.iter().find(|a| a.name == courier).unwrap();
        let history = server.history(order).await;
        check_history(order, &history, app, true, cycles + 1);
        stored += history.len();
        let state = server.order_state(order).await;
        let newest = app.made.values().next_back().expect("fixes were made");
        assert_eq!(
            state["position"]["time_ms"].as_i64(),
            Some(newest.time_ms),
            "order {order} shows the newest fix at the end: {state}"
        );
    }
    for app in &apps {
        assert!(
            app.rejected.is_empty(),
            "{}: clean fixes rejected: {:?}",
            app.name,
            &app.rejected[..app.rejected.len().min(5)]
        );
    }
    eprintln!(
        "crash: {cycles} SIGKILL cycles in {:.1?}: {} fixes made, {} sent ({} of them resends), \
         {checked} acked fixes checked in history after the restarts, {stored} fixes stored at the end across {} orders, none lost or duplicated",
        started.elapsed(),
        apps.iter().map(|a| a.made.len()).sum::<usize>(),
        apps.iter().map(|a| a.sent).sum::<usize>(),
        apps.iter().map(|a| a.resent).sum::<usize>(),
        ORDERS.len(),
    );
}
