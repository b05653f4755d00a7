//! The route-history commands (`replay`, `export`, `stats`, `orders`, `purge`, `eta-eval`)
//! through the real binary, against a real server populated over the courier stream, and
//! against its data dir once it is stopped.

mod common;
mod live;

use std::collections::BTreeSet;

use common::{run, stderr_of, stdout_of, testdata, testdata_trip, trackctl};
use live::Live;
use serde_json::Value;
use trackline_core::fix::Fix;

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// Raw path length of a testdata trip, metres.
fn raw_length(name: &str) -> f64 {
    let trip = testdata_trip(name);
    trip.points
        .windows(2)
        .map(|w| w[0].pos.distance_m(w[1].pos))
        .sum()
}

fn gpx_time_ms(time: gpx::Time) -> i64 {
    let at: time::OffsetDateTime = time.into();
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

#[test]
fn replay_shows_every_fix_the_status_changes_and_the_eta_the_server_published() {
    let mut live = Live::start();
    let streamed = live.ride("o-car", "c-car", "car_joensuu_head.csv", false);
    // the recording has one fix that jumps at thousands of km/h: refused, so never stored
    assert_eq!(streamed.rejected, ["impossible_speed"]);
    let stored = live.history("o-car");
    assert_eq!(stored.len(), 19);
    let served = live.order("o-car");

    let text = stdout_of(&mut live.trackctl(&["replay", "o-car", "--fast", "--json"]));
    let events = json_lines(&text);
    let fixes = of_type(&events, "fix");
    assert_eq!(fixes.len(), stored.len());
    for (event, fix) in fixes.iter().zip(&stored) {
        assert_eq!(event["seq"], fix.seq);
        assert_eq!(event["time_ms"], fix.time_ms);
        assert_eq!(event["lat"], fix.pos.lat);
    }
    let statuses: BTreeSet<&str> = of_type(&events, "status")
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["assigned", "picked_up", "arriving"])
    );
    // in time order; `arriving` right after the fix that caused it
    let times: Vec<i64> = events
        .iter()
        .map(|e| e["time_ms"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let arriving = events
        .iter()
        .position(|e| e["status"] == "arriving")
        .unwrap();
    assert_eq!(events[arriving - 1]["type"], "fix");
    assert_eq!(events[arriving - 1]["time_ms"], events[arriving]["time_ms"]);
    // the ETA recomputed at the last fix is the one the server published after it
    let published = served.state.eta.expect("an eta");
    let last = fixes.last().unwrap();
    assert_eq!(last["arrive_at_ms"], published.arrive_at_ms);
    assert_eq!(last["eta_s"], published.seconds);
    let etas: Vec<i64> = fixes.iter().map(|f| f["eta_s"].as_i64().unwrap()).collect();
    assert!(etas.last() < etas.first(), "{etas:?}");

    // a table for people, one line per fix and status change under a header
    let table = stdout_of(&mut live.trackctl(&["replay", "o-car", "--fast"]));
    assert_eq!(table.lines().count(), 1 + events.len(), "{table}");
    assert!(table.starts_with("time "), "{table}");
    assert!(table.contains("-- status arriving --"), "{table}");

    // a window of it
    let from = stored[5].time_ms.to_string();
    let to = stored[9].time_ms.to_string();
    let text = stdout_of(&mut live.trackctl(&[
        "replay", "o-car", "--fast", "--json", "--from", &from, "--to", &to,
    ]));
    let windowed = json_lines(&text);
    assert_eq!(of_type(&windowed, "fix").len(), 5);
    assert_eq!(
        of_type(&windowed, "fix")[0]["eta_s"],
        fixes[5]["eta_s"],
        "the ETA of a window is the one of that moment in the whole history"
    );

    // stats counts the refused fix by its code
    let stats: Value = serde_json::from_str(&stdout_of(
        &mut live.trackctl(&["stats", "o-car", "--json"]),
    ))
    .unwrap();
    assert_eq!(
        stats["rejected_by_server"],
        serde_json::json!({"impossible_speed": 1})
    );

    // the same timeline from the data dir once the server is stopped
    live.stop();
    let offline = stdout_of(&mut live.trackctl_offline(&["replay", "o-car", "--fast", "--json"]));
    assert_eq!(
        offline,
        stdout_of(&mut live.trackctl_offline(&["replay", "o-car", "--fast", "--json"]))
    );
    assert_eq!(json_lines(&offline), events);
}

#[test]
fn replay_shows_the_pickup_its_eta_and_the_window_the_server_published() {
    let live = Live::start();
    let trip = testdata_trip("run_vincennes_head.csv");
    // A trip with no refused fix: a refused fix is never stored, so a replay could not give the
    // filter the state the server's had after it, and the ETAs would differ by seconds.
    // The pickup halfway along the trip; the food is ready half an hour from now, so the door
    // ETA carries the wait, and the courier is never handed the order (no `picked_up`).
    let middle = trip.points[trip.points.len() / 2].pos;
    let mut new = live::order_request("o-pick", Some("c-pick"), &trip);
    new.pickup = Some(trackline_rest::PickupRequest {
        lat: middle.lat,
        lon: middle.lon,
        ready_at_ms: Some(trackline_core::now_ms() + 30 * 60 * 1000),
        dwell_s: Some(300.0),
        route: None,
    });
    live.create(&new);
    live.stream("c-pick", &trip);
    let served = live.order("o-pick");
    assert!(served.pickup.is_some(), "ops see the pickup");
    let published = served.state.eta.expect("an eta");

    let text = stdout_of(&mut live.trackctl(&["replay", "o-pick", "--fast", "--json"]));
    let events = json_lines(&text);
    let fixes = of_type(&events, "fix");
    let last = fixes.last().unwrap();
    // the door ETA and the window recomputed at the last fix are the ones the server published
    assert_eq!(last["arrive_at_ms"], published.arrive_at_ms);
    let window = published.window.expect("a window");
    assert_eq!(last["window"]["earliest_ms"], window.earliest_ms);
    assert_eq!(last["window"]["latest_ms"], window.latest_ms);
    // heading to the pickup all along: each live fix has its ETA there, before the door's
    for fix in fixes.iter().filter(|f| f["verdict"] == "live") {
        let pickup_s = fix["pickup_eta_s"].as_i64().expect("a pickup eta");
        assert!(pickup_s < fix["eta_s"].as_i64().unwrap(), "{fix}");
    }
    assert!(
        of_type(&events, "status")
            .iter()
            .any(|e| e["status"] == "at_pickup"),
        "{text}"
    );

    let output = run(&mut live.trackctl(&["replay", "o-pick", "--fast"]));
    assert!(output.status.success(), "{}", stderr_of(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.lines().next().unwrap().contains("window"), "{table}");
    assert!(table.contains("pickup in "), "{table}");
    assert!(table.contains("-- status at_pickup --"), "{table}");
    let stderr = stderr_of(&output);
    assert!(stderr.contains("stops: pickup "), "{stderr}");
}

/// A trip file of 80 s north at 10 m/s (9e-5 degrees a second).
fn northwards_trip(dir: &std::path::Path) -> std::path::PathBuf {
    let trip = dir.join("north.csv");
    let mut csv = String::from("t_unix,lat,lon\n");
    for i in 0..=80 {
        csv.push_str(&format!(
            "{},{:.7},13.0\n",
            1_700_000_000 + i,
            45.0 + i as f64 * 9e-5
        ));
    }
    std::fs::write(&trip, csv).unwrap();
    trip
}

/// The statuses of an order's log with their times.
fn status_times(detail: &trackline_rest::OrderDetail) -> Vec<(String, i64)> {
    detail
        .status_log
        .iter()
        .flatten()
        .map(|c| (c.status.to_string(), c.at_ms))
        .collect()
}

/// When `status` took effect in `log`.
fn time_of(log: &[(String, i64)], status: &str) -> i64 {
    log.iter()
        .find(|(s, _)| s == status)
        .map(|(_, at)| *at)
        .unwrap_or_else(|| panic!("no {status} in {log:?}"))
}

#[test]
fn a_simulated_pickup_is_reached_collected_and_replayed() {
    // the pickup at 40 % of the trip, 320 m up the road
    let dir = tempfile::tempdir().unwrap();
    let trip = northwards_trip(dir.path());
    let live = Live::start();
    let trip_arg = trip.to_str().unwrap();
    stdout_of(&mut live.trackctl(&[
        "simulate",
        "--pickup-at",
        "0.4",
        "--deliver",
        "--speedup",
        "4",
        "--order-prefix",
        "o-sim",
        "--courier-prefix",
        "c-sim",
        trip_arg,
    ]));
    let order = live.order("o-sim1");
    let pickup = order.pickup.as_ref().expect("the order has a pickup");
    assert!(
        (pickup.lat - (45.0 + 32.0 * 9e-5)).abs() < 1e-6,
        "{pickup:?}"
    );
    assert_eq!(pickup.dwell_s, Some(0.0));
    assert!(pickup.route.as_ref().is_some_and(|r| r.len() >= 2));
    let log = status_times(&order);
    let at = |status: &str| time_of(&log, status);
    // reached (within the arrival radius, 100 m before it), then collected when the courier got
    // there, then delivered at the end
    assert!(at("at_pickup") <= at("picked_up"), "{log:?}");
    assert!(at("picked_up") < at("delivered"), "{log:?}");
    assert_eq!(order.state.stops.len(), 2);
    assert!(order.state.stops.iter().all(|s| s.reached_at_ms.is_some()));

    // the replay heads for the pickup until it was collected, then for the door
    let text = stdout_of(&mut live.trackctl(&["replay", "o-sim1", "--fast", "--json"]));
    let events = json_lines(&text);
    let live_fixes: Vec<&Value> = of_type(&events, "fix")
        .into_iter()
        .filter(|f| f["verdict"] == "live")
        .collect();
    let picked_up_ms = at("picked_up");
    let (before, after): (Vec<&&Value>, Vec<&&Value>) = live_fixes
        .iter()
        .partition(|f| f["time_ms"].as_i64().unwrap() <= picked_up_ms);
    assert!(!before.is_empty() && !after.is_empty(), "{text}");
    assert!(before.iter().all(|f| f["pickup_eta_s"].is_i64()), "{text}");
    assert!(
        after.iter().all(|f| f.get("pickup_eta_s").is_none()),
        "{text}"
    );
}

#[test]
fn a_simulated_multi_drop_courier_delivers_its_orders_in_its_plan() {
    let dir = tempfile::tempdir().unwrap();
    let trip = northwards_trip(dir.path());
    let live = Live::start();
    stdout_of(&mut live.trackctl(&[
        "simulate",
        "--orders-per-courier",
        "2",
        "--deliver",
        "--speedup",
        "4",
        "--order-prefix",
        "o-md",
        "--courier-prefix",
        "c-md",
        trip.to_str().unwrap(),
    ]));
    let first = live.order("o-md1-1");
    let second = live.order("o-md1-2");
    // the first drop halfway (40 s, 360 m up the road), the second at the end
    assert!((first.state.destination.lat - (45.0 + 40.0 * 9e-5)).abs() < 1e-6);
    assert!((second.state.destination.lat - (45.0 + 80.0 * 9e-5)).abs() < 1e-6);
    let courier =
        |d: &trackline_rest::OrderDetail| d.state.courier_id.as_ref().map(|c| c.to_string());
    assert_eq!(courier(&first).as_deref(), Some("c-md1"));
    assert_eq!(courier(&second), courier(&first));
    let (first_log, second_log) = (status_times(&first), status_times(&second));
    // each delivered when the courier got there, the first before the second
    let first_delivered = time_of(&first_log, "delivered");
    assert!(
        first_delivered < time_of(&second_log, "delivered"),
        "{first_log:?} {second_log:?}"
    );
    assert!(
        time_of(&first_log, "arriving") <= first_delivered,
        "{first_log:?}"
    );
    assert!(time_of(&second_log, "arriving") > time_of(&first_log, "arriving"));
}

#[test]
fn replay_to_order_restreams_the_route_as_the_other_orders_courier() {
    let live = Live::start();
    live.ride("o-run", "c-run", "run_vincennes_head.csv", true);
    let source = live.history("o-run");
    live.create_order(
        "o-watch",
        Some("c-other"),
        &testdata_trip("run_vincennes_head.csv"),
    );

    let output = run(&mut live.trackctl(&[
        "replay",
        "o-run",
        "--to-order",
        "o-watch",
        "--fast",
        "--json",
    ]));
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("as courier c-other") && stderr.contains("watch: http://"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "streamed {n} fixes into order o-watch as courier c-other: acked {n}, rejected 0",
            n = source.len()
        )),
        "{stderr}"
    );
    assert_eq!(
        of_type(
            &json_lines(&String::from_utf8(output.stdout).unwrap()),
            "fix"
        )
        .len(),
        source.len()
    );

    let restreamed = live.history("o-watch");
    assert_eq!(restreamed.len(), source.len());
    for (copy, original) in restreamed.iter().zip(&source) {
        assert_eq!(copy.pos, original.pos);
    }
    // paced, faster than recorded, and stamped now
    let span = |fixes: &[Fix]| fixes.last().unwrap().time_ms - fixes[0].time_ms;
    assert!(
        span(&restreamed) < span(&source),
        "{} vs {}",
        span(&restreamed),
        span(&source)
    );
    assert!(restreamed[0].time_ms > source.last().unwrap().time_ms);

    // the other order must exist and have a courier
    let unknown = run(&mut live.trackctl(&["replay", "o-run", "--to-order", "o-none", "--fast"]));
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr_of(&unknown));
    live.create_order("o-idle", None, &testdata_trip("run_vincennes_head.csv"));
    let idle = run(&mut live.trackctl(&["replay", "o-run", "--to-order", "o-idle", "--fast"]));
    assert_eq!(idle.status.code(), Some(2));
    assert!(
        stderr_of(&idle).contains("assign one first"),
        "{}",
        stderr_of(&idle)
    );
}

#[test]
fn exported_gpx_and_geojson_round_trip_through_their_parsers() {
    let mut live = Live::start();
    live.ride("o-vis", "c-vis", "car_visnjan_hr.csv", true);
    let stored = live.history("o-vis");
    assert_eq!(stored.len(), 104);

    let gpx_text = stdout_of(&mut live.trackctl(&["export", "o-vis", "--format", "gpx"]));
    let doc = gpx::read(gpx_text.as_bytes()).expect("a valid GPX");
    assert_eq!(doc.version, gpx::GpxVersion::Gpx11);
    let points = &doc.tracks[0].segments[0].points;
    assert_eq!(points.len(), stored.len());
    for (point, fix) in points.iter().zip(&stored) {
        assert_eq!(
            (point.point().y(), point.point().x()),
            (fix.pos.lat, fix.pos.lon)
        );
        assert_eq!(gpx_time_ms(point.time.unwrap()), fix.time_ms);
    }
    let destination = testdata_trip("car_visnjan_hr.csv").destination();
    assert_eq!(doc.waypoints[0].point().y(), destination.lat);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o-vis.geojson");
    let output = run(&mut live.trackctl(&["export", "o-vis", "-o", path.to_str().unwrap()]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(output.stdout.is_empty());
    assert!(stderr_of(&output).contains("wrote 104 fixes of order o-vis"));
    let parsed: geojson::GeoJson = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let geojson::GeoJson::FeatureCollection(collection) = parsed else {
        panic!("not a FeatureCollection")
    };
    let track = &collection.features[0];
    let Some(geojson::Value::LineString(line)) = track.geometry.as_ref().map(|g| &g.value) else {
        panic!("the track is not a LineString")
    };
    assert_eq!(line.len(), stored.len());
    for (position, fix) in line.iter().zip(&stored) {
        assert_eq!(position, &vec![fix.pos.lon, fix.pos.lat]);
    }
    let times: Vec<i64> =
        serde_json::from_value(track.property("times_ms").unwrap().clone()).unwrap();
    assert_eq!(times, stored.iter().map(|f| f.time_ms).collect::<Vec<_>>());

    // a range
    let from = stored[10].time_ms.to_string();
    let to = stored[19].time_ms.to_string();
    let part = stdout_of(&mut live.trackctl(&[
        "export", "o-vis", "--format", "gpx", "--from", &from, "--to", &to,
    ]));
    assert_eq!(
        gpx::read(part.as_bytes()).unwrap().tracks[0].segments[0]
            .points
            .len(),
        10
    );

    // offline, the very same bytes
    live.stop();
    let offline = stdout_of(&mut live.trackctl_offline(&["export", "o-vis", "--format", "gpx"]));
    assert_eq!(offline, gpx_text);
}

#[test]
fn an_exported_csv_feeds_eta_eval() {
    let live = Live::start();
    live.ride("o-csv", "c-csv", "car_visnjan_hr.csv", true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o-csv.csv");
    let output = run(&mut live.trackctl(&["export", "o-csv", "-o", path.to_str().unwrap()]));
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let csv_text = std::fs::read_to_string(&path).unwrap();
    assert!(csv_text.starts_with("t_unix,lat,lon,seq,accuracy_m,speed_mps,heading_deg\n"));
    assert_eq!(csv_text.lines().count(), 105);

    let exported: Value = serde_json::from_str(&stdout_of(&mut trackctl(&[
        "eta-eval",
        path.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let recorded: Value = serde_json::from_str(&stdout_of(&mut trackctl(&[
        "eta-eval",
        testdata("car_visnjan_hr.csv").to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let (a, b) = (&exported["trips"][0], &recorded["trips"][0]);
    assert_eq!(a["name"], "o-csv.csv");
    assert_eq!(a["fixes"], 104);
    assert_eq!(a["instants"], b["instants"]);
    // the same trip, moved in time and stored at 1e-7 degrees: the same scores within a second
    let mae = |t: &Value| t["trackline"]["mae_s"].as_f64().unwrap();
    assert!((mae(a) - mae(b)).abs() < 1.0, "{} vs {}", mae(a), mae(b));

    let table = stdout_of(&mut trackctl(&["eta-eval", path.to_str().unwrap()]));
    assert!(
        table.contains("o-csv.csv") && table.contains("pooled"),
        "{table}"
    );
}

#[test]
fn stats_of_a_known_trip() {
    let mut live = Live::start();
    live.ride("o-stat", "c-stat", "car_visnjan_hr.csv", true);
    let text = stdout_of(&mut live.trackctl(&["stats", "o-stat", "--json"]));
    let stats: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["order_id"], "o-stat");
    assert_eq!(stats["status"], "delivered");
    assert_eq!(stats["fixes"], 104);
    assert_eq!(stats["duration_s"], 514.0);
    let raw = stats["distance_raw_m"].as_f64().unwrap();
    let expected = raw_length("car_visnjan_hr.csv");
    assert!((raw - expected).abs() < 1.0, "{raw} vs {expected}");
    let filtered = stats["distance_filtered_m"].as_f64().unwrap();
    assert!(
        filtered < raw && filtered > 0.8 * raw,
        "{filtered} vs {raw}"
    );
    let moving = stats["moving_s"].as_f64().unwrap();
    let stops = stats["stops"].as_array().unwrap();
    let stopped: f64 = stops
        .iter()
        .map(|s| s["duration_s"].as_f64().unwrap())
        .sum();
    assert!((moving + stopped - 514.0).abs() < 1e-6);
    for stop in stops {
        assert!(stop["duration_s"].as_f64().unwrap() >= 30.0, "{stop}");
    }
    let max = stats["max_speed_mps"].as_f64().unwrap();
    let avg = stats["avg_speed_mps"].as_f64().unwrap();
    assert!(avg > 0.0 && max > avg && max < 40.0, "avg {avg} max {max}");
    assert_eq!(stats["rejected_by_server"], serde_json::json!({}));

    let human = stdout_of(&mut live.trackctl(&["stats", "o-stat"]));
    for label in ["distance", "duration", "moving", "stops", "refused"] {
        assert!(human.contains(label), "{label}: {human}");
    }
    live.stop();
    let offline = stdout_of(&mut live.trackctl_offline(&["stats", "o-stat", "--json"]));
    assert_eq!(offline, text);
}

#[test]
fn an_unknown_order_or_an_empty_range_is_exit_code_one() {
    let mut live = Live::start();
    live.ride("o-known", "c-known", "car_joensuu_head.csv", false);
    let check = |output: std::process::Output, says: &str| {
        assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
        assert!(output.stdout.is_empty());
        assert!(stderr_of(&output).contains(says), "{}", stderr_of(&output));
    };
    for command in [
        vec!["replay", "o-nope", "--fast"],
        vec!["export", "o-nope", "--format", "csv"],
        vec!["stats", "o-nope"],
    ] {
        check(
            run(&mut live.trackctl(&command)),
            "order o-nope does not exist",
        );
    }
    let empty = ["--from", "2001-01-01", "--to", "2001-01-02"];
    let mut replay = vec!["replay", "o-known", "--fast"];
    replay.extend(empty);
    check(run(&mut live.trackctl(&replay)), "has no fixes between");
    let mut export = vec!["export", "o-known", "--format", "gpx"];
    export.extend(empty);
    check(run(&mut live.trackctl(&export)), "no stored fixes between");
    check(
        run(&mut live.trackctl(&["orders", "--status", "ended"])),
        "no ended orders",
    );

    live.stop();
    for command in [
        vec!["replay", "o-nope", "--fast"],
        vec!["export", "o-nope", "--format", "csv"],
        vec!["stats", "o-nope"],
    ] {
        check(
            run(&mut live.trackctl_offline(&command)),
            "order o-nope does not exist",
        );
    }
}

#[test]
fn a_data_dir_held_by_a_running_server_is_refused_with_what_to_do() {
    let live = Live::start();
    live.ride("o-lock", "c-lock", "car_joensuu_head.csv", false);
    for command in [
        vec!["stats", "o-lock"],
        vec!["export", "o-lock", "--format", "csv"],
        vec!["orders"],
    ] {
        let output = run(&mut live.trackctl_offline(&command));
        assert_eq!(output.status.code(), Some(2));
        assert!(output.stdout.is_empty());
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains("the data dir is in use by a running server; use --server or stop it"),
            "{stderr}"
        );
    }
    // and a directory that is not a data dir is not turned into one
    let empty = tempfile::tempdir().unwrap();
    let output = run(&mut trackctl(&[
        "orders",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]));
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("not a trackline data dir"));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn orders_lists_as_a_table_or_json_online_and_offline() {
    let mut live = Live::start();
    live.ride("o-done", "c-1", "car_joensuu_head.csv", true);
    live.ride("o-open", "c-2", "car_joensuu_head.csv", false);

    let table = stdout_of(&mut live.trackctl(&["orders"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("ORDER"), "{table}");
    assert!(
        lines[1].starts_with("o-open") && lines[1].contains("arriving"),
        "{table}"
    );

    let all: Value = serde_json::from_str(&stdout_of(
        &mut live.trackctl(&["orders", "--status", "all", "--json"]),
    ))
    .unwrap();
    let ids: Vec<&str> = all["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    // most recently updated first
    assert_eq!(ids, ["o-open", "o-done"]);
    let limited = stdout_of(&mut live.trackctl(&["orders", "--status", "all", "--limit", "1"]));
    assert_eq!(limited.lines().count(), 2);

    live.stop();
    let offline: Value = serde_json::from_str(&stdout_of(
        &mut live.trackctl_offline(&["orders", "--status", "all", "--json"]),
    ))
    .unwrap();
    assert_eq!(offline, all);
}

#[test]
fn purge_deletes_old_history_over_http_and_offline() {
    let mut live = Live::start();
    let streamed = live.ride("o-old", "c-old", "car_visnjan_hr.csv", true);
    let cutoff = streamed.sent[0].0 + 100_000;
    let older = streamed.sent.iter().filter(|(t, _)| *t < cutoff).count();
    let answer: Value = serde_json::from_str(&stdout_of(&mut live.trackctl(&[
        "purge",
        "--before",
        &cutoff.to_string(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(answer["before_ms"], cutoff);
    assert_eq!(answer["fixes"], older);
    assert_eq!(answer["orders"], 0);
    assert_eq!(live.history("o-old").len(), 104 - older);

    live.stop();
    // a data dir has no retention period of its own to fall back on
    let output = run(&mut live.trackctl_offline(&["purge"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("--older-than"),
        "{}",
        stderr_of(&output)
    );

    let later = (trackline_core::now_ms() + 60_000).to_string();
    let said = stdout_of(&mut live.trackctl_offline(&["purge", "--before", &later]));
    assert!(
        said.starts_with(&format!(
            "purged {} fixes and 1 ended order from before",
            104 - older
        )),
        "{said}"
    );
    let gone = run(&mut live.trackctl_offline(&["stats", "o-old"]));
    assert_eq!(gone.status.code(), Some(1));
}

#[test]
fn a_closed_stdout_ends_an_export_quietly() {
    let live = Live::start();
    live.ride("o-pipe", "c-pipe", "car_visnjan_hr.csv", false);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = live
        .trackctl(&["export", "o-pipe", "--format", "geojson"])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(output.stderr.is_empty(), "{}", stderr_of(&output));
}

#[test]
fn eta_eval_prints_the_table_and_a_trace() {
    let trip = testdata("car_visnjan_hr.csv");
    let text = stdout_of(&mut trackctl(&[
        "eta-eval",
        trip.to_str().unwrap(),
        "--trace",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("trip") && lines[0].contains("(b) true progress"),
        "{text}"
    );
    assert!(lines[1].starts_with("car_visnjan_hr.csv"), "{text}");
    assert!(lines[2].starts_with("pooled"), "{text}");
    assert!(lines[3].starts_with("trackline MAE / (b) MAE = "), "{text}");
    assert!(
        text.contains("car_visnjan_hr.csv: seconds left at each instant"),
        "{text}"
    );

    let json: Value = serde_json::from_str(&stdout_of(&mut trackctl(&[
        "eta-eval",
        trip.to_str().unwrap(),
        "--json",
        "--trace",
    ])))
    .unwrap();
    assert_eq!(
        json["traces"][0]["instants"].as_array().unwrap().len() as u64,
        json["trips"][0]["instants"].as_u64().unwrap()
    );

    let bad = run(&mut trackctl(&["eta-eval", "does-not-exist.csv"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr_of(&bad).contains("does-not-exist.csv"),
        "{}",
        stderr_of(&bad)
    );
}
