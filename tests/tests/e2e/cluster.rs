//! Broker mode end to end: three real `trackline` nodes joined by a real `nats-server`, each test
//! with a broker and a cluster of its own. Orders and couriers are placed on chosen nodes with the
//! core's placement function, so every path a request can take between nodes is exercised: a
//! courier on one node, its home on a second, its order's owner on a third; REST and watchers on
//! any node; an owner killed with SIGKILL; the broker killed; nodes that must refuse to start.
//!
//! Every wait is bounded; nothing here asserts how fast anything is.

use std::time::Duration;

use serde_json::{json, Value};
use trackline_core::LatLon;
use trackline_proto::{from_e7, v1};
use trackline_rest::HealthStatus;
use trackline_tests::cluster::{
    failed_start, Broker, Cluster, CourierApp, WatchFeed, BROKER_TIMEOUT_MS, NODES,
    RECOVERY_TIMEOUT,
};
use trackline_tests::scenarios::{jog_destination, jog_points};
use trackline_tests::{
    same_state, trip_fixes, update_at, HistoryFix, NewOrder, Reply, TripPoint, Update, TIMEOUT,
};

/// A broker and a cluster of [`NODES`] on it (dropped in reverse: the nodes first).
fn start_cluster() -> (Broker, Cluster) {
    tokio::task::block_in_place(|| {
        let broker = Broker::start();
        let cluster = Cluster::start(&broker);
        (broker, cluster)
    })
}

/// An order to [`jog_destination`], assigned to `courier`.
fn run_order(order: &str, courier: &str, points: &[TripPoint]) -> NewOrder {
    NewOrder::new(order, jog_destination(points)).courier(courier)
}

/// Asserts that `frames` (one watcher's, over one or more connections) are one stream of the
/// order in `epoch`: every offset one more than the one before. The only exception is a snapshot
/// with `recovered = false` at an offset `may_jump_to` allows: the state a killed owner had made
/// durable but not yet published, which after its restart nobody can replay update by update.
fn assert_one_stream(
    frames: &[Update],
    epoch: &str,
    may_jump_to: impl Fn(u64) -> bool,
    context: &str,
) {
    for frame in frames {
        assert_eq!(frame.epoch, epoch, "{context}: one epoch: {frame:?}");
    }
    for pair in frames.windows(2) {
        let (before, next) = (&pair[0], &pair[1]);
        let snapshot_jump = next.kind.as_deref() == Some("snapshot")
            && !next.recovered
            && next.offset > before.offset
            && may_jump_to(next.offset);
        assert!(
            next.offset == before.offset + 1 || snapshot_jump,
            "{context}: offset {} ({:?}) follows offset {}: a gap or a repeat",
            next.offset,
            next.kind,
            before.offset
        );
    }
}

/// Asserts that `history` holds every fix of `sent` exactly once, as sent, in time order, and
/// nothing that was not sent.
fn assert_history(history: &[HistoryFix], sent: &[v1::Fix], context: &str) {
    let newest = sent.last().map_or(0, |f| f.seq);
    assert_history_through(history, sent, newest, context);
}

/// Asserts that `history` holds every fix of `sent` up to seq `through` (the acked ones), each
/// once and as sent, in time order; it may hold later fixes of `sent` (stored but not yet acked),
/// once each, and nothing that was not sent.
fn assert_history_through(history: &[HistoryFix], sent: &[v1::Fix], through: u64, context: &str) {
    let mut stored: Vec<u64> = history.iter().map(|f| f.seq).collect();
    stored.sort_unstable();
    let stored_len = stored.len();
    stored.dedup();
    assert_eq!(
        stored.len(),
        stored_len,
        "{context}: a fix is stored twice: {stored:?}"
    );
    let missing: Vec<u64> = sent
        .iter()
        .map(|f| f.seq)
        .filter(|seq| *seq <= through && stored.binary_search(seq).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{context}: fixes {missing:?} (acked through {through}) are not in history"
    );
    for stored in history {
        let fix = sent
            .iter()
            .find(|f| f.seq == stored.seq)
            .unwrap_or_else(|| {
                panic!("{context}: seq {} is stored but was never sent", stored.seq)
            });
        assert!(
            stored.time_ms == fix.time_ms
                && (stored.lat - from_e7(fix.lat_e7)).abs() < 1e-9
                && (stored.lon - from_e7(fix.lon_e7)).abs() < 1e-9,
            "{context}: seq {} is stored as {stored:?}, sent as {fix:?}",
            stored.seq
        );
    }
    assert!(
        history.windows(2).all(|w| w[0].time_ms < w[1].time_ms),
        "{context}: history is in time order"
    );
}

/// The order's history asked of every node: the same everywhere; the owner's copy.
async fn history_everywhere(cluster: &Cluster, order: &str) -> Vec<HistoryFix> {
    let owner = Cluster::owner(order);
    let history = cluster.node(owner).history(order).await;
    for (node, name) in NODES.iter().enumerate() {
        assert_eq!(
            cluster.node(node).history(order).await,
            history,
            "the history of {order} via {name} differs from its owner's"
        );
    }
    history
}

/// Asserts that `answer` (an order state as a write or a watch token gets it, which leaves out
/// some of what ops read) shows `state` (ops' read of the owner): each of its fields is the same.
fn assert_shows(answer: &Value, state: &Value, what: &str) {
    let fields = answer
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {answer}"));
    assert!(
        fields.contains_key("offset"),
        "{what}: not an order state: {answer}"
    );
    for (field, value) in fields {
        assert_eq!(
            value, &state[field],
            "{what}: {field} differs from the owner's state {state}"
        );
    }
}

/// Asks every node the same request and asserts the same status and body everywhere (the JSON
/// value when the body is JSON, else the text); when `producer` is given, also that every answer
/// names it in `x-trackline-node`. The first node's answer.
async fn same_on_every_node(
    cluster: &Cluster,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    producer: Option<usize>,
) -> Reply {
    let mut answers = Vec::new();
    for node in 0..NODES.len() {
        let (reply, by) = cluster
            .request(node, method.clone(), path, token, body)
            .await;
        assert!(
            NODES.contains(&by.as_str()),
            "{}: {by:?} is not a node of the cluster",
            reply.what
        );
        if let Some(producer) = producer {
            assert_eq!(
                by, NODES[producer],
                "{}: answered by {by}, not by the owner",
                reply.what
            );
        }
        answers.push(reply);
    }
    let first = &answers[0];
    for other in &answers[1..] {
        let same_body = match first.body {
            Value::Null => first.text == other.text,
            _ => first.body == other.body,
        };
        assert!(
            first.status == other.status && same_body,
            "{} answered {} {}\nbut {} answered {} {}",
            first.what,
            first.status,
            first.text,
            other.what,
            other.status,
            other.text
        );
    }
    answers.swap_remove(0)
}

/// Sends one more fix on the app's current connection after an outage began and asserts it is
/// not acked: the session closes, or no ack comes within a few broker timeouts.
async fn assert_not_acked_during_outage(app: &mut CourierApp, fix: v1::Fix, outage: &str) {
    let sent = app.send(std::slice::from_ref(&fix)).await;
    let window = Duration::from_millis(3 * BROKER_TIMEOUT_MS);
    match app.wait_ack(fix.seq, window).await {
        Ok(()) => panic!(
            "{}: seq {} was acked while {outage}: it cannot be durable",
            app.name, fix.seq
        ),
        Err(how) => eprintln!(
            "{}: seq {} not acked while {outage} (send: {sent:?}; {how})",
            app.name, fix.seq
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_of_an_order_owned_elsewhere_reach_watchers_on_every_node_in_offset_order() {
    let (_broker, cluster) = start_cluster();
    // The courier streams to node A, its assignments live on its home C, the order on B.
    let (courier_node, owner, home) = (0, 1, 2);
    let order = Cluster::id_on(owner, "fanout-order");
    let courier = Cluster::id_on(home, "fanout-courier");
    let points = jog_points(30);
    let fixes = trip_fixes(&points, 1);
    cluster
        .node(owner)
        .create_order(&run_order(&order, &courier, &points))
        .await;

    let mut feeds = Vec::new();
    for node in 0..NODES.len() {
        let mut feed = WatchFeed::open(cluster.node(node), &order).await;
        let snapshot = feed.first().await.expect("a snapshot on connect");
        assert_eq!(snapshot.kind.as_deref(), Some("snapshot"), "{snapshot:?}");
        feeds.push(feed);
    }

    let mut client = cluster.node(courier_node).courier(&courier).await;
    let rejected = client.stream(&fixes, 1).await;
    assert!(rejected.is_empty(), "clean fixes rejected: {rejected:?}");
    assert_eq!(
        client.acks,
        fixes.iter().map(|f| f.seq).collect::<Vec<_>>(),
        "one ack per frame, in order"
    );

    let (current, epoch) = cluster.offset_and_epoch(owner, &order).await;
    for (node, feed) in feeds.iter_mut().enumerate() {
        let seen = feed
            .through(current, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("watcher on {}: {e}", NODES[node]));
        assert_one_stream(
            seen,
            &epoch,
            |_| false,
            &format!("watcher on {}", NODES[node]),
        );
        assert_eq!(seen.last().map(|u| u.offset), Some(current));
    }
    let on_owner = &feeds[owner].seen;
    assert!(
        on_owner.len() > fixes.len() / 2,
        "the jog moves the live state with most fixes: {} frames for {} fixes",
        on_owner.len(),
        fixes.len()
    );
    for (node, feed) in feeds.iter().enumerate() {
        assert_eq!(
            feed.seen.len(),
            on_owner.len(),
            "watcher on {} saw another number of frames than the owner's",
            NODES[node]
        );
        for (frame, owners) in feed.seen.iter().zip(on_owner) {
            assert!(
                same_state(frame, owners),
                "watcher on {} saw {frame:?} where the owner's saw {owners:?}",
                NODES[node]
            );
        }
    }

    let history = history_everywhere(&cluster, &order).await;
    assert_history(&history, &fixes, "after streaming through a non-owner");
    for update in &on_owner[1..] {
        let position = update
            .position
            .expect("updates after fixes have a position");
        assert!(
            history.iter().any(|f| f.time_ms == position.time_ms),
            "offset {} shows a fix that is not in history: {position:?}",
            update.offset
        );
    }
    assert_eq!(
        on_owner.last().and_then(|u| u.position).map(|p| p.time_ms),
        fixes.last().map(|f| f.time_ms),
        "the last update shows the newest fix"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_on_any_node_answers_exactly_as_the_owner_and_names_it() {
    let (_broker, cluster) = start_cluster();
    let owner = 1;
    let order = Cluster::id_on(owner, "rest-order");
    let courier = Cluster::id_on(2, "rest-courier");
    let stranger = Cluster::id_on(0, "rest-stranger");
    let ops = cluster.node(0).ops_token();
    let points = jog_points(6);
    let new_order = NewOrder::new(&order, jog_destination(&points));
    let state_path = format!("/v1/orders/{order}");
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Create through a non-owner: the owner creates it and says so.
    let (reply, by) = cluster
        .post(0, "/v1/orders", Some(&ops), &new_order.to_json())
        .await;
    assert_eq!(by, NODES[owner], "{}", reply.what);
    let created = reply.expect_status(201);
    assert_eq!(created["order_id"], order.as_str(), "{created}");
    let watch_token = created["watch_token"].as_str().expect("a watch token");
    assert!(
        created["watch_url"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("/track/{order}"))),
        "{created}"
    );
    // Creating it again is a conflict, wherever it is asked.
    same_on_every_node(
        &cluster,
        post.clone(),
        "/v1/orders",
        Some(&ops),
        Some(&new_order.to_json()),
        Some(owner),
    )
    .await
    .expect_error(409);
    let invalid = json!({"order_id": Cluster::id_on(owner, "rest-invalid"), "destination": {"lat": 200.0, "lon": 0.0}});
    same_on_every_node(
        &cluster,
        post.clone(),
        "/v1/orders",
        Some(&ops),
        Some(&invalid),
        None,
    )
    .await
    .expect_error(400);

    // Reads are the owner's, and the order's watch token reads it on any node.
    let state = same_on_every_node(
        &cluster,
        get.clone(),
        &state_path,
        Some(&ops),
        None,
        Some(owner),
    )
    .await
    .expect_status(200);
    assert_eq!(state["status"], "created", "{state}");
    let with_watch_token = same_on_every_node(
        &cluster,
        get.clone(),
        &state_path,
        Some(watch_token),
        None,
        Some(owner),
    )
    .await
    .expect_status(200);
    // A watcher's view of the state is narrower than ops' (no rejections, no status log), but
    // what it shows is the same state.
    for field in ["order_id", "status", "offset", "epoch", "position", "eta"] {
        assert_eq!(
            with_watch_token[field], state[field],
            "{field}: {with_watch_token} vs {state}"
        );
    }

    // Writes through non-owners answer with the owner's new state.
    let (reply, by) = cluster
        .post(
            2,
            &format!("{state_path}/assign"),
            Some(&ops),
            &json!({"courier_id": courier}),
        )
        .await;
    assert_eq!(by, NODES[owner], "{}", reply.what);
    let assigned = reply.expect_status(200);
    assert_eq!(assigned["status"], "assigned", "{assigned}");
    assert_eq!(assigned["courier_id"], courier.as_str(), "{assigned}");
    assert_shows(
        &assigned,
        &cluster.node(owner).order_state(&order).await,
        "assign",
    );

    let courier_token = cluster.node(0).courier_token(&courier);
    let (reply, by) = cluster
        .post(
            0,
            &format!("{state_path}/status"),
            Some(&courier_token),
            &json!({"status": "picked_up"}),
        )
        .await;
    assert_eq!(by, NODES[owner], "{}", reply.what);
    let picked_up = reply.expect_status(200);
    assert_eq!(picked_up["status"], "picked_up", "{picked_up}");
    assert_shows(
        &picked_up,
        &cluster.node(owner).order_state(&order).await,
        "status",
    );

    // Another courier, or another order's watch token, is refused the same everywhere.
    let stranger_token = cluster.node(0).courier_token(&stranger);
    same_on_every_node(
        &cluster,
        post.clone(),
        &format!("{state_path}/status"),
        Some(&stranger_token),
        Some(&json!({"status": "delivered"})),
        Some(owner),
    )
    .await
    .expect_error(403);
    let other_watch = cluster
        .node(0)
        .watch_token(&Cluster::id_on(0, "rest-elsewhere"));
    same_on_every_node(
        &cluster,
        get.clone(),
        &state_path,
        Some(&other_watch),
        None,
        None,
    )
    .await
    .expect_error(403);

    // History in every format, after fixes streamed to a third node.
    let fixes = trip_fixes(&points, 1);
    let mut client = cluster.node(0).courier(&courier).await;
    assert!(
        client.stream(&fixes, 1).await.is_empty(),
        "clean fixes rejected"
    );
    for format in ["", "?format=json", "?format=geojson", "?format=gpx"] {
        let reply = same_on_every_node(
            &cluster,
            get.clone(),
            &format!("{state_path}/history{format}"),
            Some(&ops),
            None,
            Some(owner),
        )
        .await;
        let status = reply.status;
        assert_eq!(status, 200, "{}: {}", reply.what, reply.text);
    }
    assert_history(
        &history_everywhere(&cluster, &order).await,
        &fixes,
        "history via any node",
    );

    // An order nobody created: its owner's 404, everywhere.
    let unknown = Cluster::id_on(owner, "rest-unknown");
    for (method, path, body) in [
        (get.clone(), format!("/v1/orders/{unknown}"), None),
        (get.clone(), format!("/v1/orders/{unknown}/history"), None),
        (
            post.clone(),
            format!("/v1/orders/{unknown}/assign"),
            Some(json!({"courier_id": courier})),
        ),
        (
            post.clone(),
            format!("/v1/orders/{unknown}/status"),
            Some(json!({"status": "cancelled"})),
        ),
    ] {
        same_on_every_node(
            &cluster,
            method,
            &path,
            Some(&ops),
            body.as_ref(),
            Some(owner),
        )
        .await
        .expect_error(404);
    }

    // Bad ids: the same 400 wherever asked.
    for (method, path, body) in [
        (get.clone(), "/v1/orders/bad!id".to_string(), None),
        (get.clone(), "/v1/orders/bad!id/history".to_string(), None),
        (
            post.clone(),
            format!("{state_path}/assign"),
            Some(json!({"courier_id": "no spaces allowed"})),
        ),
    ] {
        same_on_every_node(&cluster, method, &path, Some(&ops), body.as_ref(), None)
            .await
            .expect_error(400);
    }

    // An illegal transition is the owner's 409, everywhere.
    let (reply, by) = cluster
        .post(
            2,
            &format!("{state_path}/status"),
            Some(&ops),
            &json!({"status": "delivered"}),
        )
        .await;
    assert_eq!(by, NODES[owner], "{}", reply.what);
    assert_eq!(reply.expect_status(200)["status"], "delivered");
    same_on_every_node(
        &cluster,
        post.clone(),
        &format!("{state_path}/status"),
        Some(&ops),
        Some(&json!({"status": "picked_up"})),
        Some(owner),
    )
    .await
    .expect_error(409);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_resumes_on_another_node_with_exactly_the_missed_updates_then_live_ones() {
    let (_broker, cluster) = start_cluster();
    let owner = 0;
    let order = Cluster::id_on(owner, "resume-order");
    let courier = Cluster::id_on(owner, "resume-courier");
    let points = jog_points(20);
    let fixes = trip_fixes(&points, 1);
    cluster
        .node(owner)
        .create_order(&run_order(&order, &courier, &points))
        .await;
    let mut reference = WatchFeed::open(cluster.node(owner), &order).await;
    reference.first().await.expect("a snapshot on connect");
    let mut client = cluster.node(owner).courier(&courier).await;
    assert!(client.stream(&fixes[..3], 1).await.is_empty());

    // A watcher follows on node B, then its phone loses the network.
    let mut watcher = WatchFeed::open(cluster.node(1), &order).await;
    watcher.first().await.expect("a snapshot on connect");
    assert!(client.stream(&fixes[3..6], 1).await.is_empty());
    let (seen_through, epoch) = cluster.offset_and_epoch(owner, &order).await;
    watcher
        .through(seen_through, TIMEOUT)
        .await
        .expect("the watcher on node B follows");
    watcher.disconnect();

    // Updates it misses, then it comes back through node C.
    assert!(client.stream(&fixes[6..12], 1).await.is_empty());
    let (current, _) = cluster.offset_and_epoch(owner, &order).await;
    assert!(current > seen_through + 1, "6 fixes made updates");
    reference
        .through(current, TIMEOUT)
        .await
        .expect("the reference follows");
    let from = watcher.resume_on(cluster.node(2), TIMEOUT).await;
    let replayed = watcher
        .through(current, TIMEOUT)
        .await
        .expect("the resumed watcher replays")[from..]
        .to_vec();
    assert_eq!(
        replayed.iter().map(|u| u.offset).collect::<Vec<_>>(),
        (seen_through + 1..=current).collect::<Vec<_>>(),
        "the replay on another node is exactly the missed offsets, in order"
    );
    for update in &replayed {
        assert_eq!(
            update.kind.as_deref(),
            Some("update"),
            "no snapshot: {update:?}"
        );
        assert!(
            update.recovered,
            "a replayed update says recovered: {update:?}"
        );
        assert!(
            same_state(update, update_at(&reference.seen, update.offset)),
            "replayed {update:?} differs from the live {:?}",
            update_at(&reference.seen, update.offset)
        );
    }

    // Then live updates on node C, not recovered, without a gap.
    assert!(client.stream(&fixes[12..15], 1).await.is_empty());
    let (now, _) = cluster.offset_and_epoch(owner, &order).await;
    reference
        .through(now, TIMEOUT)
        .await
        .expect("the reference follows");
    let seen = watcher
        .through(now, TIMEOUT)
        .await
        .expect("the resumed watcher goes live");
    assert_one_stream(seen, &epoch, |_| false, "the watcher across nodes B and C");
    for update in seen.iter().filter(|u| u.offset > current) {
        assert!(
            !update.recovered,
            "a live update is not recovered: {update:?}"
        );
        assert!(
            same_state(update, update_at(&reference.seen, update.offset)),
            "{update:?}"
        );
    }
    assert_eq!(seen.last().map(|u| u.offset), Some(now));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_owner_loses_no_acked_fix_and_a_watcher_elsewhere_continues_after_its_restart()
{
    let (_broker, mut cluster) = start_cluster();
    // The courier streams to its home A, the order lives on B, the watcher is on C.
    let (courier_node, owner, watcher_node) = (0, 1, 2);
    let order = Cluster::id_on(owner, "kill-order");
    let courier = Cluster::id_on(courier_node, "kill-courier");
    let points = jog_points(50);
    let fixes = trip_fixes(&points, 1);
    cluster
        .node(owner)
        .create_order(&run_order(&order, &courier, &points))
        .await;
    let mut feed = WatchFeed::open(cluster.node(watcher_node), &order).await;
    feed.first().await.expect("a snapshot on connect");
    let mut app = CourierApp::new(&courier);
    app.deliver(cluster.node(courier_node), &fixes[..10], TIMEOUT)
        .await;
    let (before, epoch) = cluster.offset_and_epoch(owner, &order).await;
    feed.through(before, TIMEOUT)
        .await
        .expect("the watcher follows");

    // A burst of frames sent without waiting; once the first ones are acked the owner is killed
    // with the rest in flight (received, being forwarded or stored, or waiting for their ack).
    for fix in &fixes[10..30] {
        app.send(std::slice::from_ref(fix))
            .await
            .expect("the courier's node is up");
    }
    app.wait_ack(fixes[11].seq, TIMEOUT)
        .await
        .expect("the burst is being acked");
    tokio::task::block_in_place(|| cluster.node_mut(owner).kill());
    assert_not_acked_during_outage(&mut app, fixes[30], "the owner is down").await;
    for node in [courier_node, watcher_node] {
        let (reply, by) = cluster
            .get(
                node,
                &format!("/v1/orders/{order}"),
                Some(&cluster.node(node).ops_token()),
            )
            .await;
        assert_eq!(
            by, NODES[node],
            "{}: answered by the node asked",
            reply.what
        );
        assert_eq!(reply.expect_error(503), "owner_unavailable");
    }

    // The owner comes back on its data dir; the app resends what was not acked, then goes on.
    tokio::task::block_in_place(|| cluster.node_mut(owner).start_again());
    // What was acked before the restart survived it, before the app resends anything.
    let acked_before_restart = app.acked;
    assert_history_through(
        &cluster.node(owner).history(&order).await,
        &app.made,
        acked_before_restart,
        "right after the owner's restart",
    );
    let (restarted_at, restarted_epoch) = cluster.offset_and_epoch(owner, &order).await;
    assert_eq!(restarted_epoch, epoch, "a restart keeps the epoch");
    assert!(restarted_at >= before, "the durable offset survives");
    if feed.through(restarted_at, TIMEOUT).await.is_err() && feed.ended.is_some() {
        eprintln!(
            "the watcher on {} was closed while the owner was down ({:?}); resuming there",
            NODES[watcher_node], feed.ended
        );
        feed.resume_on(cluster.node(watcher_node), RECOVERY_TIMEOUT)
            .await;
    }
    app.deliver(cluster.node(courier_node), &fixes[31..], RECOVERY_TIMEOUT)
        .await;
    assert!(
        app.rejected.is_empty(),
        "clean fixes rejected: {:?}",
        app.rejected
    );

    // Every fix made (each acked one included) is stored once; nothing else is.
    let history = history_everywhere(&cluster, &order).await;
    assert_history(&history, &app.made, "after the owner's SIGKILL and restart");
    let (last, _) = cluster.offset_and_epoch(owner, &order).await;
    let seen = feed
        .through(last, RECOVERY_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the watcher on {} after the restart: {e}",
                NODES[watcher_node]
            )
        });
    assert_one_stream(
        seen,
        &epoch,
        |offset| offset <= restarted_at,
        "the watcher on a third node across the owner's restart",
    );
    assert_eq!(
        seen.last().and_then(|u| u.position).map(|p| p.time_ms),
        fixes.last().map(|f| f.time_ms),
        "the watcher ends on the newest fix"
    );
    eprintln!(
        "owner kill: acked through {acked_before_restart} of 31 sent before the restart; offset \
         {before} before the frames in flight, {restarted_at} durable after the restart, {last} at \
         the end; the watcher on {} saw {} frames",
        NODES[watcher_node],
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_keeps_local_paths_working_and_cross_node_ones_recover() {
    let (mut broker, cluster) = start_cluster();
    // Order 1 and its courier live on A and the courier streams to A: nothing crosses nodes.
    // Order 2 lives on B, its courier's home is C, and the courier streams to A.
    let local = 0;
    let local_order = Cluster::id_on(local, "outage-local-order");
    let local_courier = Cluster::id_on(local, "outage-local-courier");
    let remote_order = Cluster::id_on(1, "outage-remote-order");
    let remote_courier = Cluster::id_on(2, "outage-remote-courier");
    let points = jog_points(30);
    let local_fixes = trip_fixes(&points, 1);
    let remote_fixes = trip_fixes(&points, 1);
    cluster
        .node(local)
        .create_order(&run_order(&local_order, &local_courier, &points))
        .await;
    cluster
        .node(local)
        .create_order(&run_order(&remote_order, &remote_courier, &points))
        .await;
    let mut local_feed = WatchFeed::open(cluster.node(local), &local_order).await;
    local_feed.first().await.expect("a snapshot on connect");
    let mut remote_feed = WatchFeed::open(cluster.node(2), &local_order).await;
    remote_feed.first().await.expect("a snapshot on connect");
    let mut local_app = CourierApp::new(&local_courier);
    let mut remote_app = CourierApp::new(&remote_courier);
    local_app
        .deliver(cluster.node(local), &local_fixes[..10], TIMEOUT)
        .await;
    remote_app
        .deliver(cluster.node(local), &remote_fixes[..10], TIMEOUT)
        .await;
    let (seen_through, epoch) = cluster.offset_and_epoch(local, &local_order).await;
    remote_feed
        .through(seen_through, TIMEOUT)
        .await
        .expect("the watcher on node C follows");
    remote_feed.disconnect();

    tokio::task::block_in_place(|| broker.kill());

    // What is local keeps working: acks, the watcher on the owner, new watchers, REST.
    local_app
        .deliver(cluster.node(local), &local_fixes[10..20], RECOVERY_TIMEOUT)
        .await;
    let (during, _) = cluster.offset_and_epoch(local, &local_order).await;
    local_feed
        .through(during, TIMEOUT)
        .await
        .expect("the watcher on the owner follows while the broker is down");
    let mut fresh = WatchFeed::open(cluster.node(local), &local_order).await;
    let snapshot = fresh
        .first()
        .await
        .expect("a new local watcher gets a snapshot");
    assert!(
        same_state(&snapshot, update_at(&local_feed.seen, during)),
        "a new local watcher sees the current state {:?}, got {snapshot:?}",
        update_at(&local_feed.seen, during)
    );
    // What crosses nodes is refused, not acked.
    let ops = cluster.node(1).ops_token();
    let (reply, by) = cluster
        .get(1, &format!("/v1/orders/{local_order}"), Some(&ops))
        .await;
    assert_eq!(by, NODES[1], "{}: answered by the node asked", reply.what);
    assert_eq!(reply.expect_error(503), "owner_unavailable");
    assert_not_acked_during_outage(&mut remote_app, remote_fixes[10], "the broker is down").await;

    tokio::task::block_in_place(|| broker.start_again());

    // Cross-node paths recover: the watcher resumes on node C with everything it missed.
    let from = remote_feed
        .resume_on(cluster.node(2), RECOVERY_TIMEOUT)
        .await;
    let replayed = remote_feed
        .through(during, TIMEOUT)
        .await
        .expect("the resumed watcher on node C replays")[from..]
        .to_vec();
    assert_eq!(
        replayed.iter().map(|u| u.offset).collect::<Vec<_>>(),
        (seen_through + 1..=during).collect::<Vec<_>>(),
        "the resume after the outage is exactly the missed offsets"
    );
    for update in &replayed {
        assert!(update.recovered, "{update:?}");
        assert!(
            same_state(update, update_at(&local_feed.seen, update.offset)),
            "{update:?}"
        );
    }
    remote_app
        .deliver(cluster.node(local), &remote_fixes[11..20], RECOVERY_TIMEOUT)
        .await;
    local_app
        .deliver(cluster.node(local), &local_fixes[20..], RECOVERY_TIMEOUT)
        .await;
    let (last, _) = cluster.offset_and_epoch(local, &local_order).await;
    for (feed, name) in [
        (&mut local_feed, "on the owner"),
        (&mut remote_feed, "on node C"),
    ] {
        let seen = feed
            .through(last, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("the watcher {name} after the outage: {e}"));
        assert_one_stream(seen, &epoch, |_| false, &format!("the watcher {name}"));
    }

    // Nothing acked is lost, and every fix resent after the outage is stored once.
    for (order, app) in [(&local_order, &local_app), (&remote_order, &remote_app)] {
        assert!(
            app.rejected.is_empty(),
            "{}: clean fixes rejected",
            app.name
        );
        let history = history_everywhere(&cluster, order).await;
        assert_history(
            &history,
            &app.made,
            &format!("{order} after the broker outage"),
        );
    }
}

#[test]
fn broker_mode_without_a_node_id_or_the_node_list_refuses_to_start() {
    // Never reached: the flags are checked before any connection.
    let url = Broker::unreachable_url();
    for (args, missing) in [
        (
            ["--broker", &url, "--cluster-nodes", "node-a,node-b"],
            "--node-id",
        ),
        (["--broker", &url, "--node-id", "node-a"], "--cluster-nodes"),
    ] {
        let (status, output) = failed_start(&args);
        assert!(!status.success(), "{args:?} exited with {status}");
        assert!(
            output.contains(missing),
            "{args:?}: the error does not name {missing}:\n{output}"
        );
    }
}

#[test]
fn a_node_id_outside_the_node_list_refuses_to_start() {
    // A reachable broker, so that the node id is the only thing wrong.
    let broker = Broker::start();
    let url = broker.url();
    let (status, output) = failed_start(&[
        "--broker",
        &url,
        "--node-id",
        "node-x",
        "--cluster-nodes",
        &NODES.join(","),
    ]);
    assert!(!status.success(), "exited with {status}:\n{output}");
    assert!(
        output.contains("node-x"),
        "the error does not name the unknown node id:\n{output}"
    );
}

#[test]
fn an_unreachable_broker_refuses_to_start() {
    let url = Broker::unreachable_url();
    let port = url.rsplit(':').next().expect("a port").to_string();
    let (status, output) = failed_start(&[
        "--broker",
        &url,
        "--node-id",
        NODES[0],
        "--cluster-nodes",
        &NODES.join(","),
    ]);
    assert!(!status.success(), "exited with {status}:\n{output}");
    assert!(
        output.to_lowercase().contains("broker") && output.contains(&port),
        "the error does not say which broker could not be reached ({url}):\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nearby_on_any_node_finds_a_courier_connected_to_another() {
    let (_broker, cluster) = start_cluster();
    // No order: the courier is live for dispatch only, known first to the node it streams to.
    let courier = Cluster::id_on(1, "nearby-courier");
    let points = jog_points(10);
    let fixes = trip_fixes(&points, 1);
    let mut client = cluster.node(0).courier(&courier).await;
    client.stream(&fixes, 1).await;
    let last = points.last().expect("points").pos;

    for (node, name) in NODES.iter().enumerate() {
        // Nodes share positions every half second: wait (bounded) until this one has it.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        let found = loop {
            let near = cluster.node(node).nearby(last, 200.0, 10).await;
            if let Some(found) = near.into_iter().find(|c| c.courier_id.as_str() == courier) {
                break found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never saw {courier}, connected to {}",
                NODES[0]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            found.distance_m < 50.0,
            "{name} places {courier} {} m from its last fix",
            found.distance_m
        );
    }
    // And a courier far away is not near: nobody else is there.
    let far = LatLon::new(last.lat + 1.0, last.lon);
    for node in 0..NODES.len() {
        assert!(cluster.node(node).nearby(far, 200.0, 10).await.is_empty());
    }
}

/// A create refused because the order exists takes back the courier link it made at the
/// courier's home node (else that node would forward every frame of the courier's to an order
/// that is not its), but not the link of the courier the order is assigned to.
#[tokio::test(flavor = "multi_thread")]
async fn a_create_refused_as_a_conflict_leaves_no_stray_courier_link() {
    let (_broker, mut cluster) = start_cluster();
    let order = Cluster::id_on(1, "dup-order");
    let assigned = Cluster::id_on(2, "dup-assigned");
    let other = Cluster::id_on(2, "dup-other");
    let ops = cluster.node(0).ops_token();
    let points = jog_points(2);
    let create_for = |courier: &str| {
        NewOrder::new(&order, jog_destination(&points))
            .courier(courier)
            .to_json()
    };
    let (reply, _) = cluster
        .post(0, "/v1/orders", Some(&ops), &create_for(&assigned))
        .await;
    reply.expect_status(201);
    for courier in [&other, &assigned] {
        let (reply, _) = cluster
            .post(0, "/v1/orders", Some(&ops), &create_for(courier))
            .await;
        reply.expect_error(409);
    }

    // Both couriers are homed on node c, which keeps their links in its store: read them there
    // with the node stopped.
    cluster.node_mut(2).kill();
    let (store, _writer) = trackline_core::history::HistoryStore::open(cluster.node(2).data_dir())
        .expect("node c's store opens once the node is gone");
    let links: Vec<(String, String)> = trackline_core::links::LinkStore::open(&store)
        .and_then(|links| links.all())
        .expect("node c's courier links")
        .into_iter()
        .map(|(courier, order)| (courier.to_string(), order.to_string()))
        .collect();
    assert_eq!(
        links,
        vec![(assigned.clone(), order.clone())],
        "only the assigned courier's link is kept"
    );
}

/// `GET /v1/orders` lists the whole fleet's orders on any node (each node keeps only the ones it
/// owns), merged most recently updated first and cut at the limit; with a node down the list
/// cannot be complete, and the call says so instead of answering short.
#[tokio::test(flavor = "multi_thread")]
async fn the_order_list_is_the_whole_fleets_on_any_node() {
    let (_broker, mut cluster) = start_cluster();
    let ops = cluster.node(0).ops_token();
    let points = jog_points(2);
    // Created one after another, so each is updated later than the one before.
    let orders: Vec<String> = [2, 0, 1]
        .iter()
        .map(|&owner| Cluster::id_on(owner, "listed"))
        .collect();
    for order in &orders {
        let new_order = NewOrder::new(order, jog_destination(&points)).to_json();
        let (reply, _) = cluster.post(0, "/v1/orders", Some(&ops), &new_order).await;
        reply.expect_status(201);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newest_first: Vec<String> = orders.iter().rev().cloned().collect();
    let listed = |answer: Value| -> Vec<String> {
        answer["orders"]
            .as_array()
            .unwrap_or_else(|| panic!("an order list: {answer}"))
            .iter()
            .map(|o| o["order_id"].as_str().expect("an order id").to_string())
            .collect()
    };
    for (node, name) in NODES.iter().enumerate() {
        let (reply, _) = cluster.get(node, "/v1/orders?status=all", Some(&ops)).await;
        assert_eq!(
            listed(reply.expect_status(200)),
            newest_first,
            "the list on {name}"
        );
        let (reply, _) = cluster.get(node, "/v1/orders?limit=2", Some(&ops)).await;
        assert_eq!(
            listed(reply.expect_status(200)),
            newest_first[..2],
            "the two newest on {name}"
        );
    }

    cluster.node_mut(2).kill();
    let (reply, _) = cluster.get(0, "/v1/orders", Some(&ops)).await;
    let text = reply.text.clone();
    assert_eq!(reply.expect_error(503), "owner_unavailable");
    assert!(text.contains("node-c"), "names the node missing: {text}");
}

/// A purge asked of one node purges every node's store with one cutoff and answers the totals;
/// with a node down it says so (503) rather than answering for part of the fleet.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_on_any_node_purges_the_whole_fleet() {
    let (_broker, mut cluster) = start_cluster();
    let ops = cluster.node(0).ops_token();
    let courier = Cluster::id_on(0, "purge-courier");
    let points = jog_points(12);
    let orders: Vec<String> = (0..NODES.len())
        .map(|owner| Cluster::id_on(owner, "purged"))
        .collect();
    for order in &orders {
        cluster
            .node(0)
            .create_order(&run_order(order, &courier, &points))
            .await;
    }
    let fixes = trip_fixes(&points, 1);
    let mut client = cluster.node(0).courier(&courier).await;
    client.stream(&fixes, 4).await;
    for order in &orders {
        assert_eq!(
            history_everywhere(&cluster, order).await.len(),
            fixes.len(),
            "{order} before the purge"
        );
    }

    let cutoff = json!({ "before_ms": fixes.last().expect("fixes").time_ms + 1 });
    let (reply, _) = cluster
        .post(1, "/v1/admin/purge", Some(&ops), &cutoff)
        .await;
    let purged = reply.expect_status(200);
    assert_eq!(
        purged["fixes"],
        orders.len() * fixes.len(),
        "every node's fixes: {purged}"
    );
    for order in &orders {
        assert!(
            history_everywhere(&cluster, order).await.is_empty(),
            "{order} after the purge"
        );
    }

    cluster.node_mut(2).kill();
    let (reply, _) = cluster
        .post(0, "/v1/admin/purge", Some(&ops), &cutoff)
        .await;
    let text = reply.text.clone();
    assert_eq!(reply.expect_error(503), "owner_unavailable");
    assert!(text.contains("node-c"), "names the node missing: {text}");
}

/// A node that loses its broker answers /readyz 503 `broker_lost` (a balancer sends traffic to a
/// node that can reach the others), and `ready` again once the broker is back on its port.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_reflects_a_lost_broker_connection_until_it_reconnects() {
    let (mut broker, cluster) = start_cluster();
    let node = cluster.node(0);
    let (status, health) = node.readiness().await;
    assert_eq!((status, health.status), (200, HealthStatus::Ready));
    assert_eq!(node.metric("trackline_broker_connected").await, 1.0);

    tokio::task::block_in_place(|| broker.kill());
    let (status, health, _) = node
        .wait_readiness(HealthStatus::BrokerLost, Duration::from_secs(10))
        .await;
    assert_eq!(
        status, 503,
        "a node without its broker is not ready: {health:?}"
    );
    assert!(health.reason.is_some(), "the 503 says why: {health:?}");
    assert_eq!(node.metric("trackline_broker_connected").await, 0.0);

    tokio::task::block_in_place(|| broker.start_again());
    let (status, health, _) = node
        .wait_readiness(HealthStatus::Ready, Duration::from_secs(20))
        .await;
    assert_eq!(status, 200, "ready again once reconnected: {health:?}");
    assert_eq!(node.metric("trackline_broker_connected").await, 1.0);
}
