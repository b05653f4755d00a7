//! The GPS filter: decides, per order and courier, what each validated fix does to the live marker.
//!
//! # Model
//!
//! Every validated fix goes through gates, in this order:
//!
//! 1. **Duplicate**: the same device time and the same position as a fix seen recently (an app
//!    resending its buffer after a reconnect). Nothing is stored.
//! 2. **Out of order**: a device time not after the last live fix. It is history, but the marker
//!    must never move backwards in time.
//! 3. **Accuracy**: a fix reporting a worse accuracy than [`FilterConfig::max_accuracy_m`] is
//!    history only; a 300 m cell-tower fix must not drag a marker that knows better.
//! 4. **Impossible speed**: the straight line from the last live fix, minus both fixes' noise,
//!    must be coverable at [`FilterConfig::max_speed_mps`]. Because the allowance grows with the
//!    time elapsed, a courier reappearing far away after a long gap passes. A rejected fix never
//!    becomes the reference, so one wild fix cannot poison what follows; but it is remembered as
//!    a *candidate*: when the next fix agrees with the candidate and not with the reference, the
//!    courier really is over there (or the reference was the bad one) and the filter re-anchors.
//!
//! A fix that passes feeds a constant-velocity Kalman filter in a local metric plane. Its
//! measurement noise is the reported accuracy when there is one, otherwise it is learnt from the
//! innovations (a robust running mean square), because many receivers report nothing and the
//! noise of a phone in a street canyon changes by an order of magnitude within minutes. Its
//! process noise grows with speed (a car turning a corner accelerates far more than a walker),
//! so the smoother does not overshoot corners at speed nor follow every jitter on foot.
//!
//! **Stillness**: the marker shown is held where it is until the smoothed position leaves a
//! noise radius ([`FilterConfig::hold_sigmas`] measurement sigmas) around it. A stopped
//! courier's marker does not wander, and the displayed path of a noisy walk is not inflated by
//! jitter (see the tests: 36 km of raw track for a 5.7 km walk).

use std::collections::VecDeque;

use crate::fix::{Fix, LatLon, RejectCode, Rejection};
use crate::plane::LocalPlane;

/// Tuning of the filter.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Fixes reporting a worse accuracy than this are kept in history but never move the marker.
    pub max_accuracy_m: f32,
    /// Above this speed between consecutive fixes a jump is physically impossible for a courier.
    pub max_speed_mps: f64,
    /// The accuracy assumed for a fix that reports none, metres; it is the slack of the speed gate.
    pub assumed_accuracy_m: f64,
    /// Baseline acceleration noise of the smoother, m^2/s^3 (a walker's gentle changes of pace).
    pub accel_noise: f64,
    /// Typical turn rate of a courier, rad/s; with the speed it gives the manoeuvre acceleration.
    pub turn_rate_rad_s: f64,
    /// How long a manoeuvre lasts, seconds (scales the speed-dependent process noise).
    pub manoeuvre_s: f64,
    /// The marker is held while the smoothed position stays within this many measurement sigmas.
    pub hold_sigmas: f64,
    /// Upper bound of the hold radius, metres, so a very noisy receiver still moves the marker.
    pub max_hold_radius_m: f64,
    /// Memory of the learnt measurement noise, seconds.
    pub noise_memory_s: f64,
    /// After a gap this long without a live fix, seconds, the smoother restarts at the new fix.
    pub reset_gap_s: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_accuracy_m: 100.0,
            max_speed_mps: 55.0,
            assumed_accuracy_m: 15.0,
            accel_noise: 0.02,
            turn_rate_rad_s: 0.1,
            manoeuvre_s: 2.0,
            hold_sigmas: 3.0,
            max_hold_radius_m: 30.0,
            noise_memory_s: 60.0,
            reset_gap_s: 60.0,
        }
    }
}

/// What one fix does.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Store it and show the marker at this position (which may be held still while stopped).
    Live(LatLon),
    /// Store it in history, but it does not move the marker (older than the live fix, poor accuracy).
    HistoryOnly,
    /// The same fix again (same time and place): store nothing.
    Duplicate,
    /// Refuse it; the courier gets a `Rejected` frame.
    Rejected(Rejection),
}

/// How many recent fixes are remembered to recognise a resent one.
const DEDUPE_WINDOW: usize = 32;
/// Converts a 68 % horizontal accuracy radius into the sigma of one axis (2-D Gaussian).
const ACCURACY_TO_SIGMA: f64 = 1.0 / 1.51;
/// Bounds of the learnt measurement sigma, metres: below 1 m nothing a phone reports is real,
/// above 30 m the fix is barely worth smoothing.
const MIN_SIGMA_M: f64 = 1.0;
const MAX_SIGMA_M: f64 = 30.0;
/// Innovations beyond this many sigmas count as outliers: clipped when learning the noise and
/// down-weighted when updating, so a single multipath jump barely moves the smoothed position.
const OUTLIER_SIGMAS: f64 = 3.0;
/// The smoother's local plane is re-centred when the courier is this far from its origin, so
/// the equirectangular approximation stays well under a centimetre per metre.
const RECENTRE_M: f64 = 20_000.0;

/// The filter state of one courier on one order.
#[derive(Debug, Clone)]
pub struct GpsFilter {
    config: FilterConfig,
    /// The reference of the speed gate: the last fix that moved (or held) the marker.
    last_live: Option<Fix>,
    /// The last fix refused as an impossible jump; a following fix that agrees with it re-anchors.
    candidate: Option<Fix>,
    /// (time, lat, lon) of recent fixes, to recognise duplicates.
    recent: VecDeque<(i64, LatLon)>,
    track: Option<Track>,
    /// Where the marker is shown.
    shown: Option<LatLon>,
}

impl Default for GpsFilter {
    fn default() -> Self {
        Self::new(FilterConfig::default())
    }
}

impl GpsFilter {
    pub fn new(config: FilterConfig) -> Self {
        Self {
            config,
            last_live: None,
            candidate: None,
            recent: VecDeque::new(),
            track: None,
            shown: None,
        }
    }

    /// The position the marker is shown at, once a fix has been live.
    pub fn shown(&self) -> Option<LatLon> {
        self.shown
    }

    /// The smoothed ground speed, m/s, once a fix has been live.
    pub fn speed_mps(&self) -> Option<f64> {
        self.track.as_ref().map(Track::speed)
    }

    /// The measurement noise currently assumed (reported or learnt), as a one-axis sigma in metres.
    pub fn noise_sigma_m(&self) -> Option<f64> {
        self.track.as_ref().map(|t| t.noise_var.sqrt())
    }

    /// Judges one validated fix, in arrival order.
    pub fn assess(&mut self, fix: &Fix) -> Verdict {
        let key = (fix.time_ms, fix.pos);
        if self.recent.contains(&key) {
            return Verdict::Duplicate;
        }
        if self.recent.len() == DEDUPE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(key);

        let Some(reference) = self.last_live else {
            if self.accuracy_too_poor(fix) {
                return Verdict::HistoryOnly;
            }
            return self.anchor(fix);
        };
        if fix.time_ms <= reference.time_ms {
            return Verdict::HistoryOnly;
        }
        if self.accuracy_too_poor(fix) {
            return Verdict::HistoryOnly;
        }
        if let Some(excess) = self.impossible(&reference, fix) {
            // The reference may be the bad one, or the courier really is over there (a gap in
            // the upload, a phone that was off): two fixes that agree with each other outvote it.
            if let Some(candidate) = self.candidate.take() {
                if fix.time_ms > candidate.time_ms && self.impossible(&candidate, fix).is_none() {
                    return self.anchor(fix);
                }
            }
            self.candidate = Some(*fix);
            return Verdict::Rejected(Rejection::new(RejectCode::ImpossibleSpeed, excess));
        }
        self.candidate = None;
        let gap_s = (fix.time_ms - reference.time_ms) as f64 / 1000.0;
        if gap_s > self.config.reset_gap_s {
            // After a long silence the velocity is stale: start afresh where the courier is now.
            return self.anchor(fix);
        }
        self.last_live = Some(*fix);
        let measured_var = fix
            .accuracy_m
            .map(|a| (f64::from(a) * ACCURACY_TO_SIGMA).powi(2));
        let Some(track) = self.track.as_mut() else {
            return self.anchor(fix);
        };
        track.update(fix, measured_var, &self.config);
        let smoothed = track.position();
        let radius =
            (self.config.hold_sigmas * track.noise_var.sqrt()).min(self.config.max_hold_radius_m);
        let shown = match self.shown {
            Some(held) if held.distance_m(smoothed) <= radius => held,
            _ => smoothed,
        };
        self.shown = Some(shown);
        Verdict::Live(shown)
    }

    fn accuracy_too_poor(&self, fix: &Fix) -> bool {
        fix.accuracy_m
            .is_some_and(|a| a > self.config.max_accuracy_m)
    }

    /// Restarts the reference and the smoother at this fix and shows it as is.
    fn anchor(&mut self, fix: &Fix) -> Verdict {
        let learnt = self.track.as_ref().map(|t| t.learnt_var);
        self.track = Some(Track::start(fix, learnt));
        self.last_live = Some(*fix);
        self.candidate = None;
        self.shown = Some(fix.pos);
        Verdict::Live(fix.pos)
    }

    /// `Some(reason)` when going from `from` to `to` needs more than the maximum speed.
    fn impossible(&self, from: &Fix, to: &Fix) -> Option<String> {
        let dt_s = (to.time_ms - from.time_ms) as f64 / 1000.0;
        let acc = |f: &Fix| {
            f.accuracy_m
                .map_or(self.config.assumed_accuracy_m, f64::from)
        };
        let slack_m = acc(from) + acc(to);
        let distance_m = from.pos.distance_m(to.pos);
        if distance_m <= self.config.max_speed_mps * dt_s.max(0.0) + slack_m {
            return None;
        }
        let kmh = if dt_s > 0.0 {
            distance_m / dt_s * 3.6
        } else {
            f64::INFINITY
        };
        Some(format!(
            "moved {distance_m:.0} m in {dt_s:.1} s ({kmh:.0} km/h) since fix {}; more than {:.0} km/h allows",
            from.seq,
            self.config.max_speed_mps * 3.6
        ))
    }
}

/// A constant-velocity Kalman filter in a local east/north plane, metres.
///
/// Both axes share one covariance (the noise is isotropic), so it is three numbers per filter.
#[derive(Debug, Clone)]
struct Track {
    plane: LocalPlane,
    /// East, north, east speed, north speed.
    x: [f64; 4],
    /// Per-axis covariance: position variance, position-speed covariance, speed variance.
    p: [f64; 3],
    time_ms: i64,
    /// Measurement variance in use for the last update (reported or learnt), m^2.
    noise_var: f64,
    /// Learnt measurement variance, m^2, kept across restarts: the receiver is the same.
    learnt_var: f64,
    /// Running mean square of the (clipped) innovations, m^2 per axis.
    innovation_ms: Option<f64>,
}

impl Track {
    fn start(fix: &Fix, learnt: Option<f64>) -> Self {
        let reported = fix
            .accuracy_m
            .map(|a| (f64::from(a) * ACCURACY_TO_SIGMA).powi(2));
        // Before anything is learnt, a phone in a city is good to about 5 m per axis.
        let learnt_var = learnt.unwrap_or(25.0);
        let noise_var = reported.unwrap_or(learnt_var);
        Self {
            plane: LocalPlane::at(fix.pos),
            x: [0.0; 4],
            // Unknown speed: a courier may already be moving at up to ~15 m/s.
            p: [noise_var, 0.0, 100.0],
            time_ms: fix.time_ms,
            noise_var,
            learnt_var,
            innovation_ms: learnt.map(|v| v + 1.0),
        }
    }

    fn position(&self) -> LatLon {
        self.plane.to_lat_lon(self.x[0], self.x[1])
    }

    fn speed(&self) -> f64 {
        self.x[2].hypot(self.x[3])
    }

    fn update(&mut self, fix: &Fix, reported_var: Option<f64>, config: &FilterConfig) {
        let (e, n) = self.plane.to_local(fix.pos);
        if e.hypot(n) > RECENTRE_M {
            let here = self.position();
            let (ve, vn) = (self.x[2], self.x[3]);
            self.plane = LocalPlane::at(here);
            self.x = [0.0, 0.0, ve, vn];
            return self.update(fix, reported_var, config);
        }
        let dt = ((fix.time_ms - self.time_ms) as f64 / 1000.0).max(0.0);
        self.time_ms = fix.time_ms;

        // Predict. Manoeuvre acceleration is speed times turn rate: v * omega.
        let maneuver = self.speed() * config.turn_rate_rad_s;
        let q = config.accel_noise + maneuver * maneuver * config.manoeuvre_s;
        let [p00, p01, p11] = self.p;
        let p00 = p00 + 2.0 * dt * p01 + dt * dt * p11 + q * dt.powi(3) / 3.0;
        let p01 = p01 + dt * p11 + q * dt * dt / 2.0;
        let p11 = p11 + q * dt;
        let pred = [self.x[0] + dt * self.x[2], self.x[1] + dt * self.x[3]];
        let nu = [e - pred[0], n - pred[1]];
        let nu2 = (nu[0] * nu[0] + nu[1] * nu[1]) / 2.0;

        // Learn the measurement noise from what the innovations say beyond the prediction's own
        // uncertainty; outliers are clipped so one wild fix does not make the filter sluggish.
        let s_learnt = p00 + self.learnt_var;
        let clipped = nu2.min(OUTLIER_SIGMAS * OUTLIER_SIGMAS * s_learnt);
        let alpha = 1.0 - (-dt / config.noise_memory_s).exp();
        let ms = match self.innovation_ms {
            Some(ms) => ms + alpha * (clipped - ms),
            None => clipped,
        };
        self.innovation_ms = Some(ms);
        self.learnt_var = (ms - p00).clamp(MIN_SIGMA_M * MIN_SIGMA_M, MAX_SIGMA_M * MAX_SIGMA_M);
        self.noise_var = reported_var
            .unwrap_or(self.learnt_var)
            .max(MIN_SIGMA_M * MIN_SIGMA_M);

        // Update, down-weighting an outlier in proportion to how far out it is (Huber-like).
        let d2 = nu2 / (p00 + self.noise_var);
        let r = self.noise_var * (d2 / (OUTLIER_SIGMAS * OUTLIER_SIGMAS)).max(1.0);
        let s = p00 + r;
        let (k0, k1) = (p00 / s, p01 / s);
        self.x = [
            pred[0] + k0 * nu[0],
            pred[1] + k0 * nu[1],
            self.x[2] + k1 * nu[0],
            self.x[3] + k1 * nu[1],
        ];
        self.p = [(1.0 - k0) * p00, (1.0 - k0) * p01, p11 - k1 * p01];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::plane::M_PER_DEG;

    const T0: i64 = 1_700_000_000_000;

    fn fix(seq: u64, t_s: f64, lat: f64, lon: f64) -> Fix {
        Fix {
            seq,
            time_ms: T0 + (t_s * 1000.0) as i64,
            pos: LatLon::new(lat, lon),
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
        }
    }

    /// Reads a recorded trip of the shared test data as fixes without accuracy or speed (the
    /// CSVs have none).
    pub(crate) fn trip_fixes(name: &str) -> Vec<Fix> {
        trackline_testdata::trip(name)
            .iter()
            .enumerate()
            .map(|(i, point)| Fix {
                seq: i as u64 + 1,
                time_ms: point.time_ms(),
                pos: LatLon::new(point.lat, point.lon),
                accuracy_m: None,
                speed_mps: None,
                heading_deg: None,
            })
            .collect()
    }

    struct Run {
        verdicts: Vec<Verdict>,
        live: Vec<LatLon>,
    }

    impl Run {
        fn of(fixes: &[Fix]) -> Self {
            let mut filter = GpsFilter::default();
            let verdicts: Vec<Verdict> = fixes.iter().map(|f| filter.assess(f)).collect();
            let live = verdicts
                .iter()
                .filter_map(|v| match v {
                    Verdict::Live(p) => Some(*p),
                    _ => None,
                })
                .collect();
            Self { verdicts, live }
        }

        fn rejected(&self) -> Vec<usize> {
            (0..self.verdicts.len())
                .filter(|&i| matches!(self.verdicts[i], Verdict::Rejected(_)))
                .collect()
        }

        fn shown_length_m(&self) -> f64 {
            self.live.windows(2).map(|w| w[0].distance_m(w[1])).sum()
        }
    }

    fn raw_length_m(fixes: &[Fix]) -> f64 {
        fixes
            .windows(2)
            .map(|w| w[0].pos.distance_m(w[1].pos))
            .sum()
    }

    #[test]
    fn the_noisy_walk_shows_close_to_the_distance_walked() {
        let fixes = trip_fixes("walk_vincennes_MC_ublox_single_noisy.csv");
        let run = Run::of(&fixes);
        let raw = raw_length_m(&fixes);
        let shown = run.shown_length_m();
        eprintln!(
            "noisy walk: raw {raw:.0} m, shown {shown:.0} m, rejected {}",
            run.rejected().len()
        );
        assert!(raw > 35_000.0, "{raw}");
        // The walk is 5.7 km; a real-time filter cannot look ahead, so allow some residual jitter.
        assert!((5_000.0..7_000.0).contains(&shown), "{shown}");
        // Its outliers are rejected, but the walk is not lost: nearly every fix stays live.
        assert!(
            run.live.len() as f64 > 0.97 * fixes.len() as f64,
            "{} of {}",
            run.live.len(),
            fixes.len()
        );
    }

    #[test]
    fn the_joensuu_car_rejects_its_teleports_and_nothing_else() {
        let fixes = trip_fixes("car_joensuu_1326877679263.csv");
        let run = Run::of(&fixes);
        let rejected = run.rejected();
        // Fix 71 (0-based) is the 3751 km/h one; fixes 7 and 92 jump about 630 m in 2 s
        // (~1070 km/h) and are just as impossible for a car. Everything after each jump agrees
        // with the jump, so the filter re-anchors on the next fix instead of rejecting the rest.
        assert_eq!(rejected, vec![7, 71, 92], "{:?}", run.verdicts);
        let Verdict::Rejected(why) = &run.verdicts[71] else {
            unreachable!()
        };
        assert_eq!(why.code, RejectCode::ImpossibleSpeed);
        assert!(why.reason.contains("3751 km/h"), "{}", why.reason);
        assert_eq!(run.live.len(), fixes.len() - 3);
    }

    #[test]
    fn the_clean_trips_stay_live() {
        for name in [
            "car_visnjan_hr.csv",
            "run_vincennes_DC2_garmin.csv",
            "bike_joensuu_1412412627743.csv",
        ] {
            let fixes = trip_fixes(name);
            let run = Run::of(&fixes);
            let raw = raw_length_m(&fixes);
            let shown = run.shown_length_m();
            eprintln!("{name}: raw {raw:.0} m, shown {shown:.0} m");
            assert!(run.rejected().is_empty(), "{name}: {:?}", run.rejected());
            assert_eq!(run.live.len(), fixes.len(), "{name}: every fix is live");
            // Smoothing must not eat real distance, nor add much (overshoot at corners).
            assert!(
                shown > 0.95 * raw && shown < 1.03 * raw,
                "{name}: raw {raw:.0}, shown {shown:.0}"
            );
        }
    }

    #[test]
    fn a_single_wild_fix_is_rejected_and_does_not_poison_the_reference() {
        let mut filter = GpsFilter::default();
        let lat0 = 62.59;
        // Driving north at ~10 m/s, one fix every 2 s; fix 4 is 5 km away.
        let mut verdicts = Vec::new();
        for i in 0..10u64 {
            let lat = if i == 4 {
                lat0 + 0.05
            } else {
                lat0 + i as f64 * 20.0 / M_PER_DEG
            };
            verdicts.push(filter.assess(&fix(i, i as f64 * 2.0, lat, 29.74)));
        }
        for (i, v) in verdicts.iter().enumerate() {
            match (i, v) {
                (4, Verdict::Rejected(r)) => assert_eq!(r.code, RejectCode::ImpossibleSpeed),
                (4, other) => panic!("the wild fix was {other:?}"),
                (_, Verdict::Live(_)) => {}
                (_, other) => panic!("fix {i} was {other:?}"),
            }
        }
    }

    #[test]
    fn a_far_position_after_a_long_gap_is_accepted() {
        let mut filter = GpsFilter::default();
        assert!(matches!(
            filter.assess(&fix(1, 0.0, 62.59, 29.74)),
            Verdict::Live(_)
        ));
        // 10 km north, 10 minutes later: 17 m/s, a car on a ring road.
        let far = fix(2, 600.0, 62.59 + 10_000.0 / M_PER_DEG, 29.74);
        assert_eq!(filter.assess(&far), Verdict::Live(far.pos));
        // But 10 km in 10 s is refused.
        let wild = fix(3, 610.0, 62.59, 29.74);
        assert!(matches!(filter.assess(&wild), Verdict::Rejected(_)));
    }

    #[test]
    fn duplicates_out_of_order_and_poor_accuracy() {
        let mut filter = GpsFilter::default();
        let a = fix(1, 0.0, 48.85, 2.35);
        let b = fix(2, 1.0, 48.85001, 2.35);
        assert!(matches!(filter.assess(&a), Verdict::Live(_)));
        assert!(matches!(filter.assess(&b), Verdict::Live(_)));
        // Resent after a reconnect, possibly with a new seq.
        assert_eq!(filter.assess(&Fix { seq: 7, ..a }), Verdict::Duplicate);
        assert_eq!(filter.assess(&b), Verdict::Duplicate);
        // Older than the live fix, at a new place: history only.
        assert_eq!(
            filter.assess(&fix(3, 0.5, 48.85002, 2.35)),
            Verdict::HistoryOnly
        );
        // Same time as the live fix but elsewhere: cannot be ordered, history only.
        assert_eq!(
            filter.assess(&fix(4, 1.0, 48.85003, 2.35)),
            Verdict::HistoryOnly
        );
        // A cell-tower fix.
        let coarse = Fix {
            accuracy_m: Some(800.0),
            ..fix(5, 2.0, 48.86, 2.35)
        };
        assert_eq!(filter.assess(&coarse), Verdict::HistoryOnly);
        // A good one still moves on from b.
        assert!(matches!(
            filter.assess(&fix(6, 3.0, 48.85004, 2.35)),
            Verdict::Live(_)
        ));
    }

    #[test]
    fn a_stopped_courier_marker_does_not_wander() {
        let mut filter = GpsFilter::default();
        let centre = LatLon::new(48.85, 2.35);
        let mut shown = Vec::new();
        // Five minutes stopped, 1 Hz, deterministic jitter of up to ~6 m in a 5 m-sigma-ish cloud.
        for i in 0..300u64 {
            let a = i as f64 * 2.399_963; // golden angle: covers the disc without a pattern
            let r = 6.0 * ((i * 7919 % 100) as f64 / 100.0).sqrt();
            let lat = centre.lat + r * a.sin() / M_PER_DEG;
            let lon = centre.lon + r * a.cos() / (M_PER_DEG * centre.lat.to_radians().cos());
            let Verdict::Live(p) = filter.assess(&Fix {
                accuracy_m: Some(8.0),
                ..fix(i, i as f64, lat, lon)
            }) else {
                panic!("fix {i} not live")
            };
            shown.push(p);
        }
        let moved: f64 = shown[30..].windows(2).map(|w| w[0].distance_m(w[1])).sum();
        assert!(moved < 15.0, "the marker wandered {moved:.1} m");
        assert!(shown.last().unwrap().distance_m(centre) < 6.0);
    }
}
