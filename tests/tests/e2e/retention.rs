//! History retention: the purge endpoint and the background purge.

use std::time::{Duration, Instant};

use serde_json::json;
use trackline_core::{now_ms, LatLon};
use trackline_proto::v1;
use trackline_tests::scenarios::DAY_MS;
use trackline_tests::{fix, NewOrder, TestServer, TIMEOUT};

/// Streams `fixes` as `courier` and expects every one to be acked and none rejected.
async fn stream_all(server: &TestServer, courier: &str, fixes: &[v1::Fix]) {
    let mut client = server.courier(courier).await;
    client.stream(fixes, 50).await;
    assert!(client.rejected.is_empty(), "{:?}", client.rejected);
    client.close().await;
}

fn fixes_at(start: LatLon, first_seq: u64, times: &[i64]) -> Vec<v1::Fix> {
    times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            fix(
                first_seq + i as u64,
                *t,
                LatLon::new(start.lat + 0.00001 * i as f64, start.lon),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_purge_endpoint_removes_old_fixes_and_long_ended_orders() {
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 40 * 24 * 3600;
        c.retention_days = 30;
        c.purge_every_s = 24 * 3600; // not in this test
    });
    let here = LatLon::new(60.0, 25.0);
    let now = now_ms();
    server
        .create_order(&NewOrder::new("active", here).courier("a"))
        .await;
    let reply = server
        .create_order(&NewOrder::new("ended", here).courier("b"))
        .await;
    let watch_ended = reply["watch_token"].as_str().unwrap().to_string();
    // Three fixes of 35 and 31 days ago, three of the last minute.
    let old = [now - 35 * DAY_MS, now - 34 * DAY_MS, now - 31 * DAY_MS];
    let recent = [now - 50_000, now - 40_000, now - 30_000];
    let times: Vec<i64> = old.iter().chain(&recent).copied().collect();
    stream_all(&server, "a", &fixes_at(here, 1, &times)).await;
    stream_all(&server, "b", &fixes_at(here, 1, &recent)).await;
    for status in ["picked_up", "delivered"] {
        server
            .ops_post("/v1/orders/ended/status", &json!({"status": status}), 200)
            .await;
    }
    assert_eq!(server.history("active").await.len(), 6);

    // The default cutoff: now minus the retention period.
    let purged = server.ops_post("/v1/admin/purge", &json!({}), 200).await;
    assert_eq!(purged["fixes"], 3, "{purged}");
    assert_eq!(purged["orders"], 0, "{purged}");
    let before = purged["before_ms"].as_i64().unwrap();
    assert!((before - (now - 30 * DAY_MS)).abs() < 60_000, "{purged}");
    let left: Vec<i64> = server
        .history("active")
        .await
        .iter()
        .map(|f| f.time_ms)
        .collect();
    assert_eq!(
        left, recent,
        "only the fixes within the retention period are left"
    );
    assert_eq!(
        server.history("ended").await.len(),
        3,
        "recently ended: kept"
    );

    // A cutoff after the end of `ended`: the order goes with its history; the active order
    // keeps its record and loses the fixes before the cutoff.
    let purged = server
        .ops_post(
            "/v1/admin/purge",
            &json!({"before_ms": now_ms() + 1000}),
            200,
        )
        .await;
    assert_eq!(purged["fixes"], 6, "{purged}");
    assert_eq!(purged["orders"], 1, "{purged}");
    let ops = server.ops_token();
    assert_eq!(
        server
            .get("/v1/orders/ended", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get("/v1/orders/ended/history", Some(&ops))
            .await
            .expect_error(404),
        "not_found"
    );
    assert_eq!(
        server
            .get("/v1/orders/ended", Some(&watch_ended))
            .await
            .expect_error(404),
        "not_found"
    );
    assert!(server.history("active").await.is_empty());
    assert_eq!(server.order_state("active").await["status"], "assigned");
    // Purging again finds nothing.
    let purged = server
        .ops_post(
            "/v1/admin/purge",
            &json!({"before_ms": now_ms() + 1000}),
            200,
        )
        .await;
    assert_eq!(
        (purged["fixes"].as_u64(), purged["orders"].as_u64()),
        (Some(0), Some(0))
    );
    // A purge without a retention period needs a cutoff.
    let server = TestServer::start_with(|c| c.retention_days = 0);
    let code = server
        .post("/v1/admin/purge", Some(&server.ops_token()), &json!({}))
        .await
        .expect_error(400);
    assert_eq!(code, "bad_purge");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_background_purge_removes_history_past_the_retention_period() {
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 3 * 24 * 3600;
        c.retention_days = 1;
        c.purge_every_s = 1;
    });
    let here = LatLon::new(60.0, 25.0);
    server
        .create_order(&NewOrder::new("o", here).courier("c"))
        .await;
    let now = now_ms();
    let doomed = [now - 2 * DAY_MS, now - DAY_MS - 3_600_000];
    let kept = [now - 23 * 3_600_000, now - 60_000];
    let times: Vec<i64> = doomed.iter().chain(&kept).copied().collect();
    // Acked without a rejection: all four were accepted and stored (a 2-day-old fix is within
    // the 3 days allowed).
    stream_all(&server, "c", &fixes_at(here, 1, &times)).await;
    let deadline = Instant::now() + TIMEOUT;
    let left = loop {
        let left: Vec<i64> = server
            .history("o")
            .await
            .iter()
            .map(|f| f.time_ms)
            .collect();
        if left.len() <= kept.len() || Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        left, kept,
        "the background purge removed the fixes older than a day, only them"
    );
    // The counter moves once the purge's flush is done, a moment after the fixes are gone.
    // (One recorder per process: other tests' purges may add to it, never take away.)
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = server.get("/metrics", None).await.text;
        let purged: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("trackline_purged_fixes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if purged >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trackline_purged_fixes_total {purged}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Without a retention period nothing is purged.
    let server = TestServer::start_with(|c| {
        c.max_fix_age_s = 3 * 24 * 3600;
        c.retention_days = 0;
        c.purge_every_s = 1;
    });
    server
        .create_order(&NewOrder::new("o", here).courier("c"))
        .await;
    stream_all(&server, "c", &fixes_at(here, 1, &times)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.history("o").await.len(), 4);
}
