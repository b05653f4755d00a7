//! Offline evaluation of the ETA on recorded trips, with the same filter and estimator as the server.
//!
//! # Protocol
//!
//! For each trip, a list of `(device time, position)`:
//!
//! * the destination is the trip's last fix;
//! * the planned route is the trip's own path simplified with Douglas-Peucker at 15 m (what a
//!   routing engine would have planned). The simplification runs in a local metric plane (an
//!   equirectangular projection about the trip's centre; trips are city sized, so its scale
//!   error is far below a metre), because an epsilon in degrees would mean different distances
//!   east-west and north-south;
//! * every fix goes, in order, through [`GpsFilter`], and every live one through
//!   [`EtaEstimator`] with that destination and route; the estimator does its own route matching;
//! * every 10 s of trip time, while more than 60 s remain, the estimate in force (from the last
//!   fix at or before that instant) is compared with the truth, the time actually left. An
//!   estimate made at a fix is an arrival time, so at a later instant the prediction is
//!   `arrival - instant`.
//!
//! Two baselines are scored at the same instants, from the last fix at or before the instant:
//!
//! * (a) straight-line distance to the destination / mean speed so far;
//! * (b) remaining route length from the *true* progress / mean speed so far. The true progress
//!   of a fix is its projection on the simplified segment that replaced it, which a live system
//!   can never know: it is perfect route matching.
//!
//! The mean speed so far is the true progress along the route divided by the time elapsed since
//! the first fix (the same distance measure as the route's remaining length, so (b) is a
//! consistent "fraction done" estimate), floored at [`EtaConfig::min_speed_mps`] as the
//! estimator's own speed is.
//!
//! Scores are the mean absolute error in seconds (MAE) and the mean absolute percentage error
//! of the time left (MAPE); pooled scores weigh every evaluated instant of every trip equally.
//! The arrival window is scored by its coverage (the share of instants whose true arrival falls
//! inside the window in force) and its median width.
//!
//! # Two-leg protocol
//!
//! With [`EvalConfig::pickup_at`] (`--pickup-at 0.4`), the trip's last fix at or before that
//! fraction of its duration is a pickup with no wait and no handover (the recording did not
//! stop there): the estimator is given the pickup with the route to it, and the destination
//! with the route from it (both the trip's own path simplified as above), and is told the order
//! was picked up right after that fix. The door ETA is scored over the whole trip, so the
//! instants before the pickup test the estimate across both legs; the baselines use the two
//! routes laid end to end.

use std::fmt;
use std::path::Path;

use geo::{LineString, SimplifyIdx};
use serde::Serialize;

use trackline_core::eta::{EtaConfig, EtaEstimator, Handover, PlannedStop};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::{Fix, LatLon};
use trackline_core::plane::LocalPlane;

/// One recorded trip: device time (unix ms) and position of each fix, in recording order.
pub type Trip = Vec<(i64, LatLon)>;

/// Why a trip could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("trip {0} is too short to evaluate (it needs more than 70 s and two fixes)")]
    TooShort(String),
}

/// Reads a trip from CSV or GPX as `trackctl simulate` does ([`crate::trip::Trip::from_path`]:
/// the same columns, comments and checks), as device times in milliseconds.
///
/// # Errors
/// The file cannot be read, or a row is not a time and a position.
pub fn read_trip_file(path: &Path) -> anyhow::Result<Trip> {
    Ok(in_milliseconds(&crate::trip::Trip::from_path(path)?))
}

/// Reads a trip from CSV `t_unix,lat,lon`; see [`crate::trip::Trip::from_reader`]. `source`
/// names the input in errors.
///
/// # Errors
/// As [`crate::trip::Trip::from_reader`].
pub fn read_trip_csv(reader: impl std::io::Read, source: &str) -> anyhow::Result<Trip> {
    Ok(in_milliseconds(&crate::trip::Trip::from_reader(
        source, reader,
    )?))
}

fn in_milliseconds(trip: &crate::trip::Trip) -> Trip {
    trip.points
        .iter()
        .map(|p| ((p.t_s * 1000.0).round() as i64, p.pos))
        .collect()
}

/// Parameters of an evaluation run.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub filter: FilterConfig,
    pub eta: EtaConfig,
    /// Douglas-Peucker tolerance of the planned route, metres.
    pub simplify_m: f64,
    /// Trip time between two evaluated instants, seconds.
    pub step_s: f64,
    /// Instants with less time than this left are not evaluated, seconds.
    pub min_left_s: f64,
    /// The two-leg protocol: the pickup is at this fraction of the trip's duration.
    pub pickup_at: Option<f64>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            filter: FilterConfig::default(),
            eta: EtaConfig::default(),
            simplify_m: 15.0,
            step_s: 10.0,
            min_left_s: 60.0,
            pickup_at: None,
        }
    }
}

/// Mean absolute error of one method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Score {
    /// Mean absolute error of the time left, seconds.
    pub mae_s: f64,
    /// Mean absolute error relative to the time left, percent.
    pub mape_pct: f64,
}

/// How well the arrival window did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowScore {
    /// Share of instants whose true arrival was inside the window, 0 to 1.
    pub coverage: f64,
    /// Median width of the window, seconds.
    pub median_width_s: f64,
}

impl WindowScore {
    fn of(outcomes: &[(bool, f64)]) -> Self {
        if outcomes.is_empty() {
            return Self::default();
        }
        let inside = outcomes.iter().filter(|(hit, _)| *hit).count();
        let mut widths: Vec<f64> = outcomes.iter().map(|(_, w)| *w).collect();
        widths.sort_by(f64::total_cmp);
        Self {
            coverage: inside as f64 / outcomes.len() as f64,
            median_width_s: widths[widths.len() / 2],
        }
    }
}

/// The scores on one trip.
#[derive(Debug, Clone, Serialize)]
pub struct TripReport {
    pub name: String,
    pub fixes: usize,
    pub duration_s: f64,
    /// Fixes the filter made live, kept as history only, and rejected.
    pub live: usize,
    pub history_only: usize,
    pub rejected: usize,
    /// The planned route: points after simplification and length, metres.
    pub route_points: usize,
    pub route_m: f64,
    /// Instants evaluated.
    pub instants: usize,
    pub trackline: Score,
    /// Baseline (a): straight line / mean speed so far.
    pub straight_line: Score,
    /// Baseline (b): remaining route from the true progress / mean speed so far.
    pub route_true_progress: Score,
    pub window: WindowScore,
    /// Each instant's window outcome (inside, width in seconds), for pooling.
    #[serde(skip)]
    window_outcomes: Vec<(bool, f64)>,
}

/// The pooled scores over every evaluated instant of every trip.
#[derive(Debug, Clone, Serialize)]
pub struct PooledReport {
    pub instants: usize,
    pub trackline: Score,
    pub straight_line: Score,
    pub route_true_progress: Score,
    /// trackline MAE / baseline (b) MAE: the estimator's target is at most 0.6.
    pub mae_ratio_to_route_true_progress: f64,
    /// Over every instant of every trip.
    pub window: WindowScore,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub trips: Vec<TripReport>,
    pub pooled: PooledReport,
}

/// Sums of absolute and relative errors, to average per trip and pooled.
#[derive(Debug, Clone, Copy, Default)]
struct ErrorSum {
    abs_s: f64,
    rel: f64,
    n: usize,
}

impl ErrorSum {
    fn add(&mut self, predicted_s: f64, truth_s: f64) {
        let err = (predicted_s - truth_s).abs();
        self.abs_s += err;
        self.rel += err / truth_s;
        self.n += 1;
    }

    fn score(self) -> Score {
        if self.n == 0 {
            return Score::default();
        }
        Score {
            mae_s: self.abs_s / self.n as f64,
            mape_pct: 100.0 * self.rel / self.n as f64,
        }
    }

    fn pool(scores: impl Iterator<Item = (Score, usize)>) -> Score {
        let mut sum = ErrorSum::default();
        for (s, n) in scores {
            sum.abs_s += s.mae_s * n as f64;
            sum.rel += s.mape_pct / 100.0 * n as f64;
            sum.n += n;
        }
        sum.score()
    }
}

/// The planned route of the protocol and, for each fix, its true progress along it (metres).
struct PlannedRoute {
    points: Vec<LatLon>,
    length_m: f64,
    true_progress_m: Vec<f64>,
}

fn plan_route(trip: &[(i64, LatLon)], simplify_m: f64) -> PlannedRoute {
    // Equirectangular plane about the centre of the trip's bounding box.
    let (mut lat_min, mut lat_max, mut lon_min, mut lon_max) =
        (90.0_f64, -90.0_f64, 180.0_f64, -180.0_f64);
    for (_, p) in trip {
        lat_min = lat_min.min(p.lat);
        lat_max = lat_max.max(p.lat);
        lon_min = lon_min.min(p.lon);
        lon_max = lon_max.max(p.lon);
    }
    let centre = LatLon::new((lat_min + lat_max) / 2.0, (lon_min + lon_max) / 2.0);
    let plane = LocalPlane::at(centre);
    let xy: Vec<(f64, f64)> = trip.iter().map(|(_, p)| plane.to_local(*p)).collect();
    let keep = LineString::from(xy.clone()).simplify_idx(simplify_m);

    let points: Vec<LatLon> = keep.iter().map(|&i| trip[i].1).collect();
    let mut cum_m = vec![0.0];
    for w in points.windows(2) {
        let last = cum_m.last().copied().unwrap_or(0.0);
        cum_m.push(last + w[0].distance_m(w[1]));
    }
    // Each fix lies between two kept ones; its true progress is its projection on that segment.
    let mut true_progress_m = Vec::with_capacity(trip.len());
    let mut seg = 0;
    for (i, &(px, py)) in xy.iter().enumerate() {
        while seg + 2 < keep.len() && keep[seg + 1] <= i {
            seg += 1;
        }
        let progress = if keep.len() < 2 {
            0.0
        } else {
            let (ax, ay) = xy[keep[seg]];
            let (bx, by) = xy[keep[seg + 1]];
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            let t = if len2 > 0.0 {
                (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            cum_m[seg] + t * (cum_m[seg + 1] - cum_m[seg])
        };
        true_progress_m.push(progress);
    }
    let length_m = cum_m.last().copied().unwrap_or(0.0);
    PlannedRoute {
        points,
        length_m,
        true_progress_m,
    }
}

/// The routes to the pickup (fix `k`) and from it laid end to end, with each fix's true
/// progress along the whole: what the baselines of the two-leg protocol measure.
fn two_leg_route(trip: &[(i64, LatLon)], k: usize, simplify_m: f64) -> PlannedRoute {
    let first = plan_route(&trip[..=k], simplify_m);
    let second = plan_route(&trip[k..], simplify_m);
    let mut points = first.points;
    points.extend(second.points.into_iter().skip(1));
    let mut true_progress_m = first.true_progress_m;
    true_progress_m.extend(
        second
            .true_progress_m
            .iter()
            .skip(1)
            .map(|p| first.length_m + p),
    );
    PlannedRoute {
        points,
        length_m: first.length_m + second.length_m,
        true_progress_m,
    }
}

/// One evaluated instant, for looking into a trip (`trackctl eta-eval --trace`).
#[derive(Debug, Clone, Serialize)]
pub struct TraceRow {
    /// Seconds since the trip's first fix.
    pub t_s: f64,
    /// The time actually left, seconds.
    pub truth_s: f64,
    pub trackline_s: f64,
    pub straight_line_s: f64,
    pub route_true_progress_s: f64,
    /// The true progress along the planned route and the estimator's own, metres.
    pub true_progress_m: f64,
    pub matched_progress_m: Option<f64>,
    pub on_route: bool,
    /// The speed the estimate assumed, m/s.
    pub speed_mps: f64,
    /// The arrival window in force, seconds from the instant.
    pub window_s: (f64, f64),
}

/// Runs the protocol on one trip.
///
/// # Errors
/// [`EvalError::TooShort`] when the trip leaves no instant to evaluate.
pub fn evaluate_trip(
    name: &str,
    trip: &[(i64, LatLon)],
    config: &EvalConfig,
) -> Result<TripReport, EvalError> {
    run_trip(name, trip, config).map(|(report, _)| report)
}

/// Runs the protocol on one trip and returns every evaluated instant as well.
///
/// # Errors
/// [`EvalError::TooShort`] when the trip leaves no instant to evaluate.
pub fn trace_trip(
    name: &str,
    trip: &[(i64, LatLon)],
    config: &EvalConfig,
) -> Result<Vec<TraceRow>, EvalError> {
    run_trip(name, trip, config).map(|(_, rows)| rows)
}

/// What the estimator had published after a fix.
#[derive(Debug, Clone, Copy)]
struct InForce {
    arrive_at_ms: i64,
    window: trackline_core::stops::EtaWindow,
    progress_m: Option<f64>,
    on_route: bool,
    speed_mps: f64,
}

fn run_trip(
    name: &str,
    trip: &[(i64, LatLon)],
    config: &EvalConfig,
) -> Result<(TripReport, Vec<TraceRow>), EvalError> {
    let (Some(&(t_first, _)), Some(&(t_last, destination))) = (trip.first(), trip.last()) else {
        return Err(EvalError::TooShort(name.to_string()));
    };
    let (route, pickup_index) = match config.pickup_at {
        None => (plan_route(trip, config.simplify_m), None),
        Some(fraction) => {
            let at_ms = t_first + ((t_last - t_first) as f64 * fraction).round() as i64;
            let k = trip.iter().rposition(|(t, _)| *t <= at_ms).unwrap_or(0);
            (two_leg_route(trip, k, config.simplify_m), Some(k))
        }
    };
    let mut filter = GpsFilter::new(config.filter.clone());
    let mut estimator = match pickup_index {
        None => EtaEstimator::new(destination, Some(route.points.clone()), config.eta.clone()),
        Some(k) => {
            let leg = |points: &[(i64, LatLon)]| plan_route(points, config.simplify_m).points;
            EtaEstimator::with_stops(
                vec![
                    PlannedStop {
                        at: trip[k].1,
                        route: Some(leg(&trip[..=k])),
                        handover: Handover::default(),
                    },
                    PlannedStop {
                        at: destination,
                        route: Some(leg(&trip[k..])),
                        handover: Handover::default(),
                    },
                ],
                config.eta.clone(),
            )
        }
    };
    let mut picked_up = false;

    // The arrival time in force after each fix (the last live estimate so far).
    let (mut live, mut history_only, mut rejected) = (0, 0, 0);
    let mut in_force_after: Vec<Option<InForce>> = Vec::with_capacity(trip.len());
    let mut current = None;
    for (i, &(time_ms, pos)) in trip.iter().enumerate() {
        let fix = Fix {
            seq: i as u64 + 1,
            time_ms,
            pos,
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
        };
        match filter.assess(&fix) {
            Verdict::Live(shown) => {
                live += 1;
                let e = estimator.update(&fix, shown);
                let door_ms = estimator.arrivals_ms().last().copied();
                current = Some(InForce {
                    arrive_at_ms: door_ms.unwrap_or(e.arrive_at_ms),
                    window: estimator
                        .window()
                        .unwrap_or(trackline_core::stops::EtaWindow {
                            earliest_ms: e.arrive_at_ms,
                            latest_ms: e.arrive_at_ms,
                        }),
                    progress_m: estimator.progress_m(),
                    on_route: e.on_route,
                    speed_mps: e.speed_mps,
                });
            }
            Verdict::HistoryOnly => history_only += 1,
            Verdict::Rejected(_) => rejected += 1,
            Verdict::Duplicate => {}
        }
        if pickup_index.is_some_and(|k| i >= k) && !picked_up {
            // Picked up as soon as the courier got there: the dwell of the protocol is 0.
            picked_up = estimator.advance();
        }
        in_force_after.push(current);
    }

    let step_ms = (config.step_s * 1000.0).round().max(1.0) as i64;
    let min_left_ms = (config.min_left_s * 1000.0).round() as i64;
    let (mut ours, mut straight, mut perfect) = (
        ErrorSum::default(),
        ErrorSum::default(),
        ErrorSum::default(),
    );
    let mut rows = Vec::new();
    let mut window_outcomes = Vec::new();
    let mut i = 0;
    let mut instant = t_first + step_ms;
    while t_last - instant > min_left_ms {
        // The last fix at or before the instant (recorded times may repeat or go back: the
        // latest recorded one that is not after the instant is what a live system had).
        while i + 1 < trip.len() && trip[i + 1].0 <= instant {
            i += 1;
        }
        let truth_s = (t_last - instant) as f64 / 1000.0;
        let (fix_ms, fix_pos) = trip[i];
        let elapsed_s = (fix_ms - t_first) as f64 / 1000.0;
        let done_m = route.true_progress_m[i];
        let mean_speed = if elapsed_s > 0.0 {
            done_m / elapsed_s
        } else {
            0.0
        }
        .max(config.eta.min_speed_mps);
        let from_fix_s = (fix_ms - instant) as f64 / 1000.0;
        let straight_s = from_fix_s + fix_pos.distance_m(destination) / mean_speed;
        let perfect_s = from_fix_s + (route.length_m - done_m) / mean_speed;
        // Without accuracies the first fix is always live, so an estimate is in force; if it
        // were not, the instant would be skipped for every method alike.
        if let Some(estimate) = in_force_after[i] {
            let ours_s = (estimate.arrive_at_ms - instant) as f64 / 1000.0;
            ours.add(ours_s, truth_s);
            straight.add(straight_s, truth_s);
            perfect.add(perfect_s, truth_s);
            let w = estimate.window;
            window_outcomes.push((
                (w.earliest_ms..=w.latest_ms).contains(&t_last),
                (w.latest_ms - w.earliest_ms) as f64 / 1000.0,
            ));
            rows.push(TraceRow {
                t_s: (instant - t_first) as f64 / 1000.0,
                truth_s,
                trackline_s: ours_s,
                straight_line_s: straight_s,
                route_true_progress_s: perfect_s,
                true_progress_m: done_m,
                matched_progress_m: estimate.progress_m,
                on_route: estimate.on_route,
                speed_mps: estimate.speed_mps,
                window_s: (
                    (w.earliest_ms - instant) as f64 / 1000.0,
                    (w.latest_ms - instant) as f64 / 1000.0,
                ),
            });
        }
        instant += step_ms;
    }
    if ours.n == 0 {
        return Err(EvalError::TooShort(name.to_string()));
    }
    let report = TripReport {
        name: name.to_string(),
        fixes: trip.len(),
        duration_s: (t_last - t_first) as f64 / 1000.0,
        live,
        history_only,
        rejected,
        route_points: route.points.len(),
        route_m: route.length_m,
        instants: ours.n,
        trackline: ours.score(),
        straight_line: straight.score(),
        route_true_progress: perfect.score(),
        window: WindowScore::of(&window_outcomes),
        window_outcomes,
    };
    Ok((report, rows))
}

/// Runs the protocol on each named trip and pools the scores.
///
/// # Errors
/// The first trip that cannot be evaluated.
pub fn evaluate(trips: &[(String, Trip)], config: &EvalConfig) -> Result<EvalReport, EvalError> {
    let trips = trips
        .iter()
        .map(|(name, trip)| evaluate_trip(name, trip, config))
        .collect::<Result<Vec<_>, _>>()?;
    let pool =
        |f: fn(&TripReport) -> Score| ErrorSum::pool(trips.iter().map(|t| (f(t), t.instants)));
    let trackline = pool(|t| t.trackline);
    let route_true_progress = pool(|t| t.route_true_progress);
    let pooled = PooledReport {
        instants: trips.iter().map(|t| t.instants).sum(),
        trackline,
        straight_line: pool(|t| t.straight_line),
        route_true_progress,
        mae_ratio_to_route_true_progress: if route_true_progress.mae_s > 0.0 {
            trackline.mae_s / route_true_progress.mae_s
        } else {
            f64::NAN
        },
        window: WindowScore::of(
            &trips
                .iter()
                .flat_map(|t| t.window_outcomes.iter().copied())
                .collect::<Vec<_>>(),
        ),
    };
    Ok(EvalReport { trips, pooled })
}

impl fmt::Display for EvalReport {
    /// A plain-text table: one row per trip and a pooled row, MAE in seconds and MAPE in percent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<42} {:>6} {:>7} {:>6} | {:>16} | {:>16} | {:>16} | {:>14}",
            "trip",
            "fixes",
            "route_m",
            "evals",
            "trackline",
            "(a) straight",
            "(b) true progress",
            "window in/width"
        )?;
        let window =
            |w: WindowScore| format!("{:>5.1}% {:>5.0} s", 100.0 * w.coverage, w.median_width_s);
        let cell = |s: Score| format!("{:>6.0} s {:>5.1}%", s.mae_s, s.mape_pct);
        for t in &self.trips {
            writeln!(
                f,
                "{:<42} {:>6} {:>7.0} {:>6} | {:>16} | {:>16} | {:>16} | {:>14}",
                t.name,
                t.fixes,
                t.route_m,
                t.instants,
                cell(t.trackline),
                cell(t.straight_line),
                cell(t.route_true_progress),
                window(t.window)
            )?;
        }
        let p = &self.pooled;
        writeln!(
            f,
            "{:<42} {:>6} {:>7} {:>6} | {:>16} | {:>16} | {:>16} | {:>14}",
            "pooled",
            "",
            "",
            p.instants,
            cell(p.trackline),
            cell(p.straight_line),
            cell(p.route_true_progress),
            window(p.window)
        )?;
        write!(
            f,
            "trackline MAE / (b) MAE = {:.2}",
            p.mae_ratio_to_route_true_progress
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use trackline_testdata::FULL_TRIPS as TRIPS;

    fn testdata(name: &str) -> Trip {
        read_trip_file(&trackline_testdata::path(name)).unwrap()
    }

    #[test]
    fn the_trace_matches_the_report_and_follows_the_route() {
        let trip = testdata("run_vincennes_DC2_garmin.csv");
        let config = EvalConfig::default();
        let report = evaluate_trip("run", &trip, &config).unwrap();
        let rows = trace_trip("run", &trip, &config).unwrap();
        assert_eq!(rows.len(), report.instants);
        let mae = rows
            .iter()
            .map(|r| (r.trackline_s - r.truth_s).abs())
            .sum::<f64>()
            / rows.len() as f64;
        assert!((mae - report.trackline.mae_s).abs() < 1e-6);
        // The run is laps around the same loop: matching must keep to the right lap, so the
        // estimator's own progress stays close to the true one all along.
        for r in &rows {
            assert!(r.on_route, "off route at {} s", r.t_s);
            let off = (r.matched_progress_m.unwrap() - r.true_progress_m).abs();
            assert!(
                off < 150.0,
                "at {} s matched {:?} vs true {}",
                r.t_s,
                r.matched_progress_m,
                r.true_progress_m
            );
        }
    }

    #[test]
    fn reads_the_csv_format() {
        let text = "t_unix,lat,lon\n1326877679.263,62.590097,29.740108\n1326877683.291, 62.590358 ,29.740367\n";
        let trip = read_trip_csv(text.as_bytes(), "inline").unwrap();
        assert_eq!(trip.len(), 2);
        assert_eq!(trip[0].0, 1_326_877_679_263);
        assert_eq!(trip[1].1, LatLon::new(62.590358, 29.740367));
        let bad = read_trip_csv("t_unix,lat,lon\n1,95.0,0\n".as_bytes(), "inline").unwrap_err();
        assert!(bad.to_string().contains("line 2"), "{bad}");
        assert!(read_trip_csv("t_unix,lat,lon\n1,x,0\n".as_bytes(), "inline").is_err());
    }

    #[test]
    fn the_planned_route_and_true_progress_are_consistent() {
        let trip = testdata("run_vincennes_DC2_garmin.csv");
        let route = plan_route(&trip, 15.0);
        let raw: f64 = trip.windows(2).map(|w| w[0].1.distance_m(w[1].1)).sum();
        // Simplifying only cuts corners: shorter than the raw path, but not by much on a clean run.
        assert!(
            route.length_m < raw && route.length_m > 0.85 * raw,
            "{} vs {raw}",
            route.length_m
        );
        assert_eq!(route.true_progress_m.len(), trip.len());
        assert!(route.true_progress_m[0].abs() < 1e-9);
        assert!((route.true_progress_m.last().unwrap() - route.length_m).abs() < 1e-6);
        assert!(route
            .true_progress_m
            .windows(2)
            .all(|w| w[1] >= w[0] - 15.0));
    }

    #[test]
    fn trackline_beats_perfect_progress_on_the_shared_trips() {
        let trips: Vec<(String, Trip)> =
            TRIPS.iter().map(|n| (n.to_string(), testdata(n))).collect();
        let report = evaluate(&trips, &EvalConfig::default()).unwrap();
        eprintln!("{report}");
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"pooled\""));
        assert_eq!(report.trips.len(), 5);
        let p = &report.pooled;
        assert!(p.trackline.mae_s < p.route_true_progress.mae_s, "{report}");
        assert!(p.trackline.mae_s < p.straight_line.mae_s, "{report}");
    }

    #[test]
    fn a_pickup_on_the_way_costs_little_and_the_window_covers_most_arrivals() {
        let trips: Vec<(String, Trip)> =
            TRIPS.iter().map(|n| (n.to_string(), testdata(n))).collect();
        let single = evaluate(&trips, &EvalConfig::default()).unwrap();
        let two_leg = evaluate(
            &trips,
            &EvalConfig {
                pickup_at: Some(0.4),
                ..EvalConfig::default()
            },
        )
        .unwrap();
        let ratio = two_leg.pooled.trackline.mae_s / single.pooled.trackline.mae_s;
        assert!(ratio < 1.1, "two-leg MAE {ratio:.2} x the single-leg one");
        for report in [&single, &two_leg] {
            let coverage = report.pooled.window.coverage;
            assert!((0.7..=0.9).contains(&coverage), "{report}");
            assert!(report.pooled.window.median_width_s > 0.0);
        }
    }
}
