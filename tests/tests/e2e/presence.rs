//! Accuracy, speed and heading left unset on a recorded trip: the server reads them as unknown,
//! exactly as it reads the values older apps send for unknown, and shows them as unknown on both
//! watch encodings; a speed that is sent, 0 included, is shown and used by the ETA.

use trackline_core::LatLon;
use trackline_proto::v1;
use trackline_tests::scenarios::{collect_until_time, join, stream_fixes};
use trackline_tests::{
    load_trip, trip_fixes, NewOrder, TestServer, TokenIn, Update, WatchProtocol, TIMEOUT,
};

/// A bike ride of about 16 minutes with its stops, one fix every 4 s: fewer fixes than a
/// watcher's queue holds, so every watcher sees every update.
const TRIP: &str = "bike_joensuu_1412412627743.csv";
const TRIP_POINTS: usize = 240;

/// What the courier's device reports along with each position.
#[derive(Debug, Clone, Copy)]
enum Reports {
    /// Nothing: accuracy, speed and heading unset (an app written from the .proto that sets
    /// seq, time and position only).
    Unset,
    /// What apps built before the fields had presence send for unknown.
    OldSentinels,
    /// The speed and heading of the trip, accuracy unset.
    Speeds,
    /// A speed of 0 (standing still) on every fix, which must reach the server as a speed.
    StandingStill,
}

impl Reports {
    fn apply(self, fix: &v1::Fix) -> v1::Fix {
        let (accuracy_m, speed_mps, heading_deg) = match self {
            Reports::Unset => (None, None, None),
            Reports::OldSentinels => (Some(0.0), Some(-1.0), Some(-1.0)),
            Reports::Speeds => (None, fix.speed_mps, fix.heading_deg),
            Reports::StandingStill => (None, Some(0.0), None),
        };
        v1::Fix {
            accuracy_m,
            speed_mps,
            heading_deg,
            ..*fix
        }
    }
}

/// What a watcher saw of one courier's ride.
struct Ride {
    updates: Vec<Update>,
    sent: Vec<v1::Fix>,
}

impl Ride {
    /// The published ETAs, each with the time of the position it was computed at.
    fn etas(&self) -> Vec<(i64, Option<(i64, i64)>)> {
        self.updates
            .iter()
            .filter_map(|u| {
                let position = u.position?;
                Some((position.time_ms, u.eta.map(|e| (e.seconds, e.arrive_at_ms))))
            })
            .collect()
    }

    /// Mean absolute error of the published arrival times against the trip's real arrival (its
    /// last fix), in seconds.
    fn eta_mae_s(&self) -> f64 {
        let arrived_ms = self.sent.last().expect("a trip").time_ms;
        let errors: Vec<f64> = self
            .etas()
            .iter()
            .filter_map(|(_, eta)| eta.map(|(_, at)| (at - arrived_ms).abs() as f64 / 1000.0))
            .collect();
        assert!(!errors.is_empty(), "no ETA published");
        errors.iter().sum::<f64>() / errors.len() as f64
    }

    /// The fix sent at `time_ms`.
    fn sent_at(&self, time_ms: i64) -> &v1::Fix {
        self.sent
            .iter()
            .find(|f| f.time_ms == time_ms)
            .unwrap_or_else(|| panic!("a position at {time_ms} that no fix has"))
    }
}

/// Rides the trip (`fixes`, shared so that every courier sends the same times) as a courier of
/// its own on an order of its own to the trip's end, reporting `reports`, watched over `protocol`.
async fn ride(
    server: &TestServer,
    name: &str,
    fixes: &[v1::Fix],
    destination: LatLon,
    reports: Reports,
    protocol: WatchProtocol,
) -> Ride {
    let (order, courier) = (format!("order-{name}"), format!("courier-{name}"));
    server
        .create_order(&NewOrder::new(&order, destination).courier(&courier))
        .await;
    let token = server.watch_token(&order);
    let mut watcher = server
        .watch(&order, TokenIn::Header(&token), protocol)
        .await;
    watcher.next_update(TIMEOUT).await;
    let sent: Vec<v1::Fix> = fixes.iter().map(|f| reports.apply(f)).collect();
    let last_ms = sent.last().expect("a trip").time_ms;
    let collecting = collect_until_time(watcher, last_ms);
    let streamed = stream_fixes(server, &courier, sent).await;
    let (_, updates) = join(collecting).await;
    Ride {
        updates,
        sent: streamed.accepted,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unset_and_old_unknowns_give_the_same_eta_and_sent_speeds_are_used() {
    let server = TestServer::start();
    let points = load_trip(TRIP)[..TRIP_POINTS].to_vec();
    let destination = points.last().expect("a trip").pos;
    let fixes = trip_fixes(&points, 1);
    let unset = ride(
        &server,
        "unset",
        &fixes,
        destination,
        Reports::Unset,
        WatchProtocol::Json,
    )
    .await;
    // Watched in protobuf: unknowns must arrive unset there too, not as sentinels.
    let old = ride(
        &server,
        "old",
        &fixes,
        destination,
        Reports::OldSentinels,
        WatchProtocol::Proto,
    )
    .await;
    let speeds = ride(
        &server,
        "speeds",
        &fixes,
        destination,
        Reports::Speeds,
        WatchProtocol::Proto,
    )
    .await;
    let still = ride(
        &server,
        "still",
        &fixes,
        destination,
        Reports::StandingStill,
        WatchProtocol::Json,
    )
    .await;

    for ride in [&unset, &old] {
        assert!(
            ride.etas().len() > TRIP_POINTS / 2,
            "{} updates",
            ride.etas().len()
        );
        for update in &ride.updates {
            if let Some(p) = update.position {
                assert_eq!(
                    (p.speed_mps, p.heading_deg, p.accuracy_m),
                    (None, None, None),
                    "an unknown shown as known: {update:?}"
                );
            }
        }
    }
    assert_eq!(
        unset.etas(),
        old.etas(),
        "unset fields and the old unknown values must give the same ETAs"
    );

    for update in &speeds.updates {
        let Some(p) = update.position else { continue };
        assert_eq!(
            p.speed_mps,
            speeds.sent_at(p.time_ms).speed_mps,
            "the shown speed is the one sent: {update:?}"
        );
    }
    assert_ne!(
        speeds.etas(),
        unset.etas(),
        "sent speeds must weigh in the ETA"
    );
    for update in &still.updates {
        let Some(p) = update.position else { continue };
        assert_eq!(p.speed_mps, Some(0.0), "a 0 speed is a speed: {update:?}");
    }
    assert_ne!(
        still.etas(),
        unset.etas(),
        "a courier that says it stands still is not one whose speed is unknown"
    );

    let (mae_unset, mae_speeds, mae_still) =
        (unset.eta_mae_s(), speeds.eta_mae_s(), still.eta_mae_s());
    eprintln!(
        "ETA MAE over {TRIP_POINTS} fixes of {TRIP}: unset {mae_unset:.0} s, old unknowns {:.0} s, \
         sent speeds {mae_speeds:.0} s, speed 0 on every fix {mae_still:.0} s",
        old.eta_mae_s()
    );
}
