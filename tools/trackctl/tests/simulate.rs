//! `simulate` against a scripted stand-in server: orders created as the protocol says, fixes
//! acknowledged, and what a dropped connection left unacknowledged resent with the same seqs.

mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use common::testdata;
use support::{FakeServer, Script};
use tokio::sync::watch;
use trackctl::courier::Stop;
use trackctl::simulate::{SimConfig, Simulation};
use trackctl::trip::Trip;
use trackline_core::auth::{Role, TokenKeys};
use trackline_core::CourierId;

const SECRET: &str = "sim-test-secret";

fn config(server: &str, trip: &str) -> SimConfig {
    let path = testdata(trip);
    SimConfig {
        server: server.to_string(),
        trips: vec![Arc::new(Trip::from_path(&path).unwrap())],
        couriers: 1,
        // the 20 fixes of car_joensuu_head.csv span 38 s: under half a second here
        speedup: 100.0,
        order_prefix: "o-".into(),
        courier_prefix: "c-".into(),
        create_orders: false,
        deliver: false,
        pickup_at: None,
        orders_per_courier: 1,
        batch: 1,
        looping: false,
        retry_for: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(10),
        route_spacing_m: 50.0,
        secret: Some(SECRET.into()),
        token: None,
    }
}

#[tokio::test]
async fn unacked_fixes_are_resent_with_the_same_seqs_after_a_drop() {
    let server = FakeServer::start(Script {
        first_connection_acks_through: Some(3),
        first_connection_rejects: Some(4),
        first_connection_drops_after: Some(6),
    })
    .await;
    let simulation = Simulation::prepare(config(&server.url, "car_joensuu_head.csv"))
        .await
        .unwrap();
    let (_keep, stop) = watch::channel(Stop::Run);
    let finished = simulation.run(stop, false).await;
    assert!(finished.error.is_none(), "{:?}", finished.error);
    let summary = finished.summary;

    assert_eq!(summary.fixes_generated, 20);
    assert_eq!(summary.acked, 19);
    assert_eq!(summary.rejected, 1);
    assert_eq!(summary.rejected_by_code.get("impossible_speed"), Some(&1));
    assert_eq!(summary.unacked, 0);
    assert_eq!(summary.reconnects, 1);
    assert!(summary.fixes_resent >= 2, "{summary:?}");

    let seen = server.seen.lock().unwrap();
    assert_eq!(seen.connections.len(), 2);
    let first: Vec<u64> = seen.connections[0].iter().map(|f| f.seq).collect();
    let second: Vec<u64> = seen.connections[1].iter().map(|f| f.seq).collect();
    // one seq per fix, consecutive, strictly increasing on each connection
    assert!(first.windows(2).all(|w| w[1] == w[0] + 1), "{first:?}");
    assert!(second.windows(2).all(|w| w[1] == w[0] + 1), "{second:?}");
    // the second connection starts with what the first left unacked (5 and 6; 4 was rejected)
    assert_eq!(second[..2], first[4..6]);
    assert_eq!(*second.last().unwrap(), first[0] + 19);
    // a resent fix is the same fix
    assert_eq!(seen.connections[1][0], seen.connections[0][4]);

    let keys = TokenKeys::new(SECRET.as_bytes());
    for auth in &seen.ws_auth {
        let token = auth.as_deref().unwrap().strip_prefix("Bearer ").unwrap();
        assert_eq!(
            keys.verify(token).unwrap().0,
            Role::Courier(CourierId::new("c-1").unwrap())
        );
    }
}

#[tokio::test]
async fn orders_are_created_with_destination_route_and_courier() {
    let server = FakeServer::start(Script::default()).await;
    let mut config = config(&server.url, "car_joensuu_head.csv");
    config.create_orders = true;
    config.deliver = true;
    config.batch = 4;
    let trip = config.trips[0].clone();
    let simulation = Simulation::prepare(config).await.unwrap();

    let orders = simulation.orders().to_vec();
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].order_id, "o-1");
    assert_eq!(orders[0].courier_id, "c-1");
    assert_eq!(
        orders[0].watch_url,
        format!("{}/track/o-1?token=watch.o-1.sig", server.url)
    );

    let (_keep, stop) = watch::channel(Stop::Run);
    let finished = simulation.run(stop, false).await;
    assert!(finished.error.is_none(), "{:?}", finished.error);
    assert_eq!((finished.summary.acked, finished.summary.unacked), (20, 0));
    // 20 fixes in frames of 4 (plus one when a fix was due before the first connect, which
    // flushes what is waiting)
    assert!(
        (5..=6).contains(&finished.summary.frames),
        "{:?}",
        finished.summary
    );

    let seen = server.seen.lock().unwrap();
    let calls: Vec<&str> = seen.http.iter().map(|(line, _, _)| line.as_str()).collect();
    assert_eq!(
        calls,
        [
            "POST /v1/orders",
            "POST /v1/orders/o-1/status",
            "POST /v1/orders/o-1/status"
        ]
    );
    let (_, auth, body) = &seen.http[0];
    let token = auth.as_deref().unwrap().strip_prefix("Bearer ").unwrap();
    assert_eq!(
        TokenKeys::new(SECRET.as_bytes()).verify(token).unwrap().0,
        Role::Ops
    );
    let destination = trip.destination();
    assert_eq!(body["order_id"], "o-1");
    assert_eq!(body["courier_id"], "c-1");
    assert_eq!(
        body["destination"],
        serde_json::json!({"lat": destination.lat, "lon": destination.lon})
    );
    let route = body["route"].as_array().unwrap();
    assert!(route.len() >= 2);
    assert_eq!(
        route[0],
        serde_json::json!([trip.points[0].pos.lat, trip.points[0].pos.lon])
    );
    assert_eq!(
        *route.last().unwrap(),
        serde_json::json!([destination.lat, destination.lon])
    );
    assert_eq!(seen.http[1].2, serde_json::json!({"status": "picked_up"}));
    assert_eq!(seen.http[2].2, serde_json::json!({"status": "delivered"}));
}

#[tokio::test]
async fn an_unreachable_server_is_an_error_after_retry_for() {
    // nothing listens on this port once the listener is dropped: every connect fails
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut config = config(&url, "car_joensuu_head.csv");
    config.retry_for = Duration::from_millis(500);
    let simulation = Simulation::prepare(config).await.unwrap();
    let (_keep, stop) = watch::channel(Stop::Run);
    let finished = simulation.run(stop, false).await;
    let err = format!("{:#}", finished.error.expect("gave up"));
    assert!(err.contains("is the server running"), "{err}");
    assert_eq!(finished.summary.acked, 0);
    assert_eq!(finished.summary.unacked, 20);
}

#[tokio::test]
async fn random_and_gpx_trips_ride_at_the_requested_rate_and_batch() {
    let server = FakeServer::start(Script::default()).await;
    let random = trackctl::random::RandomTrips {
        center: trackline_core::LatLon::new(48.83, 2.46),
        radius_m: 1000.0,
        duration_s: 20.0,
        speed_mps: 5.0,
        interval_s: 1.0,
        seed: 1,
    };
    let gpx = testdata("run_vincennes_head.gpx");
    let mut config = config(&server.url, "car_joensuu_head.csv");
    // two fixes a second of trip time: 41 over the random trip's 20 s, 119 over the GPX's 59 s
    config.trips = vec![
        Arc::new(random.trip(0).unwrap().resampled(2.0)),
        Arc::new(Trip::from_path(&gpx).unwrap().resampled(2.0)),
    ];
    config.couriers = 2;
    config.speedup = 20.0;
    // 2 fixes/s x 20 is 40 fixes/s: over the server's 20 frames/s one at a time
    let fixes_per_s = trackctl::simulate::peak_fixes_per_s(&config.trips, config.speedup);
    assert!((fixes_per_s - 40.0).abs() < 0.5, "{fixes_per_s}");
    config.batch = trackctl::simulate::batch_for(fixes_per_s, 1);
    assert_eq!(config.batch, 3);

    let simulation = Simulation::prepare(config).await.unwrap();
    let (_keep, stop) = watch::channel(Stop::Run);
    let finished = simulation.run(stop, false).await;
    assert!(finished.error.is_none(), "{:?}", finished.error);
    let summary = finished.summary;
    assert_eq!(summary.fixes_generated, 41 + 119);
    assert_eq!(summary.acked, 41 + 119);
    assert_eq!(summary.unacked, 0);
    // whole batches of 3 while riding (53 of them), the remainders flushed at the end
    assert!((54..=56).contains(&summary.frames), "{summary:?}");
}
