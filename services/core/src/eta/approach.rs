//! The leg a courier rides now, to the next stop of its plan: route matching, speed and the
//! smoothed arrival there. Every order the courier carries heads for that same stop first, so the
//! orders that share one [`SharedApproaches`] estimate it once per fix between them; each order
//! only adds the stops after it (see [`super::EtaEstimator`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{EtaConfig, EtaEstimate, Route, SpeedModel, STOPPED_SPEED_MPS};
use crate::fix::{Fix, LatLon};

/// Estimates kept for fixes another order of the courier may still apply: its actor can be a
/// few frames behind (another thread, a full mailbox); an older fix gets the latest estimate.
const RECENT_ESTIMATES: usize = 16;

/// The estimation of the way to one stop.
#[derive(Debug, Clone)]
pub(super) struct Approach {
    /// The stop, and the planned route to it.
    pub(super) destination: LatLon,
    pub(super) route: Option<Route>,
    /// Device time of the first update: how long the courier has been watched.
    pub(super) started_ms: Option<i64>,
    /// Whether the last estimate divided route progress (else ground distance).
    pub(super) last_on_route_model: bool,
    /// Distance along the route covered, metres, once matched.
    pub(super) progress_m: Option<f64>,
    /// The furthest progress matched so far: the window never reaches further back than
    /// [`EtaConfig::back_tolerance_m`] behind it, so repeated small steps back cannot add up.
    furthest_m: f64,
    /// Device time and shown position of the last position matched on the route.
    matched: Option<(i64, LatLon)>,
    /// When the position first failed to match the route (off-route pending or confirmed).
    unmatched_since_ms: Option<i64>,
    pub(super) off_route: bool,
    pub(super) route_speed: SpeedModel,
    pub(super) ground_speed: SpeedModel,
    /// The last update: device time and shown position.
    pub(super) last: Option<(i64, LatLon)>,
    /// When the shown position last changed.
    last_moved_ms: i64,
    /// The smoothed arrival at the stop, unix ms (fractional to keep the smoothing exact).
    pub(super) arrival_ms: Option<f64>,
    /// The estimates of the last fixes, by seq and device time, newest last.
    recent: VecDeque<((u64, i64), EtaEstimate)>,
    /// Fixes estimated (not taken from `recent`).
    pub(super) estimated: u64,
}

impl Approach {
    pub(super) fn new(destination: LatLon, route: Option<Route>, config: &EtaConfig) -> Self {
        let prior = SpeedModel::new(config.default_speed_mps, config.prior_weight_s);
        Self {
            destination,
            route,
            started_ms: None,
            last_on_route_model: false,
            progress_m: None,
            furthest_m: 0.0,
            matched: None,
            unmatched_since_ms: None,
            off_route: false,
            route_speed: prior.clone(),
            ground_speed: prior,
            last: None,
            last_moved_ms: 0,
            arrival_ms: None,
            recent: VecDeque::new(),
            estimated: 0,
        }
    }

    /// The way on to `destination` from where the courier is, arriving at `arrival_ms` (None:
    /// estimated afresh by the next fix): the route matched afresh, what was learnt of the
    /// courier's speed and of the trip kept.
    pub(super) fn next(
        &self,
        destination: LatLon,
        route: Option<Route>,
        arrival_ms: Option<f64>,
    ) -> Self {
        Self {
            destination,
            route,
            progress_m: None,
            furthest_m: 0.0,
            matched: None,
            unmatched_since_ms: None,
            off_route: false,
            arrival_ms,
            recent: VecDeque::new(),
            estimated: 0,
            ..self.clone()
        }
    }

    /// True while the courier is matched on the planned route.
    pub(super) fn on_route(&self) -> bool {
        self.route.is_some() && self.progress_m.is_some() && !self.off_route
    }

    /// The speed model the last estimate used.
    pub(super) fn model(&self) -> &SpeedModel {
        if self.last_on_route_model {
            &self.route_speed
        } else {
            &self.ground_speed
        }
    }

    /// The estimate for `fix`, shown at `shown`: made once, the first time any order of the
    /// courier applies it, and the same for the others. True when made by this call.
    pub(super) fn update(
        &mut self,
        fix: &Fix,
        shown: LatLon,
        config: &EtaConfig,
    ) -> (EtaEstimate, bool) {
        let key = (fix.seq, fix.time_ms);
        // Where this order shows the courier (its filter is its own) decides its arrival.
        let taken = |estimate: &EtaEstimate| EtaEstimate {
            to_destination_m: shown.distance_m(self.destination),
            ..*estimate
        };
        if let Some((_, estimate)) = self.recent.iter().rev().find(|(k, _)| *k == key) {
            return (taken(estimate), false);
        }
        if let (Some((_, latest)), Some((last_ms, _))) = (self.recent.back(), self.last) {
            if fix.time_ms < last_ms {
                // Applied by another order long ago: that order is behind, and this is newer.
                return (taken(latest), false);
            }
        }
        let estimate = self.estimate(fix, shown, config);
        if self.recent.len() == RECENT_ESTIMATES {
            self.recent.pop_front();
        }
        self.recent.push_back((key, estimate));
        self.estimated += 1;
        (estimate, true)
    }

    fn estimate(&mut self, fix: &Fix, shown: LatLon, config: &EtaConfig) -> EtaEstimate {
        let now = fix.time_ms;
        self.started_ms.get_or_insert(now);
        let (dt_s, moved_m) = match self.last {
            Some((t, p)) => (((now - t) as f64 / 1000.0).max(0.0), p.distance_m(shown)),
            None => (0.0, 0.0),
        };
        if self.last.is_none() || moved_m > 0.0 {
            self.last_moved_ms = now;
        }
        let stopped = match fix.speed_mps {
            Some(v) => v < STOPPED_SPEED_MPS,
            None => (now - self.last_moved_ms) as f64 / 1000.0 >= config.stop_detect_s,
        };
        self.last = Some((now, shown));

        // Ground speed: the Doppler speed is better than differences of positions when reported.
        let ground_m = fix.speed_mps.map_or(moved_m, |v| f64::from(v) * dt_s);
        let cap = config.max_speed_mps * dt_s;
        self.ground_speed
            .observe(ground_m.min(cap), dt_s, stopped, config);

        let accuracy_m = fix.accuracy_m.map_or(0.0, f64::from);
        let progress_before = if self.on_route() {
            self.progress_m
        } else {
            None
        };
        self.match_route(now, shown, accuracy_m, config);
        if let (Some(before), Some(after), true) =
            (progress_before, self.progress_m, self.on_route())
        {
            // Not capped: a jump of progress is route consumed (a loop of the planned route the
            // courier skipped, a stretch covered during a gap), and the remaining distance no
            // longer counts it either.
            self.route_speed
                .observe(after - before, dt_s, stopped, config);
        }

        let to_destination_m = shown.distance_m(self.destination);
        let (remaining_m, model) = match (&self.route, self.progress_m) {
            (Some(route), Some(s)) if !self.off_route => {
                let tail = route.end().distance_m(self.destination) * config.detour_factor;
                ((route.length() - s).max(0.0) + tail, &self.route_speed)
            }
            _ => (to_destination_m * config.detour_factor, &self.ground_speed),
        };
        self.last_on_route_model = std::ptr::eq(model, &self.route_speed);
        let speed_mps = model.predict(remaining_m, config);
        let raw_arrival = now as f64 + remaining_m / speed_mps * 1000.0;
        let arrival = match self.arrival_ms {
            Some(prev) => {
                let alpha = 1.0 - (-dt_s / config.smoothing_s).exp();
                prev + alpha * (raw_arrival - prev)
            }
            None => raw_arrival,
        };
        // Never in the past: the courier has not arrived until the server is told so.
        let arrival = arrival.max(now as f64);
        self.arrival_ms = Some(arrival);
        let seconds = ((arrival - now as f64) / 1000.0).round() as i64;
        EtaEstimate {
            seconds,
            arrive_at_ms: now + seconds * 1000,
            remaining_m,
            to_destination_m,
            on_route: self.on_route(),
            speed_mps,
        }
    }

    /// Moves the progress along the route to where `shown` matches, or marks it off the route.
    fn match_route(&mut self, now: i64, shown: LatLon, accuracy_m: f64, cfg: &EtaConfig) {
        let Some(route) = &self.route else { return };
        let threshold = cfg.off_route_m + accuracy_m;
        let found = match (self.progress_m, self.matched) {
            (Some(s), Some((matched_ms, matched_pos))) => {
                // Where the courier should be if it followed the route since the last match,
                // and how far along the route it can plausibly have got: the window grows with
                // the time unmatched, so a courier who cut a corner or skipped a loop of the
                // plan is found again where it rejoins, without ever searching the whole route.
                let since_s = (now - matched_ms).max(0) as f64 / 1000.0;
                let moved_m = matched_pos.distance_m(shown);
                let speed = self.route_speed.long().max(self.route_speed.recent());
                let reach = moved_m.max(speed * since_s);
                let from = self.furthest_m - cfg.back_tolerance_m;
                let near = route.best_match(
                    shown,
                    from,
                    s + cfg.window_ahead_m + 2.0 * reach,
                    threshold,
                    s + moved_m,
                    cfg.progress_weight,
                );
                // Nothing close where expected: the plan may have a detour the courier skipped
                // (a loop, a spur) and it rejoins further on. Look further ahead, but accept only
                // a close match, so a later leg that merely passes nearby does not capture a
                // courier who is really off the route.
                near.or_else(|| {
                    route.best_match(
                        shown,
                        from,
                        s + cfg.rejoin_ahead_m + 4.0 * reach,
                        threshold / 2.0,
                        s + moved_m,
                        cfg.progress_weight,
                    )
                })
            }
            _ => {
                // Not matched yet: the courier is at the start of the route as planned, or joins
                // it somewhere; prefer the earliest place it passes close by.
                route.best_match(
                    shown,
                    0.0,
                    route.length(),
                    threshold,
                    0.0,
                    cfg.progress_weight,
                )
            }
        };
        match found {
            Some(s) => {
                self.progress_m = Some(s);
                self.furthest_m = self.furthest_m.max(s);
                self.matched = Some((now, shown));
                self.unmatched_since_ms = None;
                self.off_route = false;
            }
            None => {
                let since = *self.unmatched_since_ms.get_or_insert(now);
                if self.progress_m.is_none()
                    || (now - since) as f64 / 1000.0 >= cfg.off_route_confirm_s
                {
                    self.off_route = true;
                }
            }
        }
    }
}

/// Which stop an approach goes to: its place and its planned route, exactly (two orders of one
/// courier head for the same stop with the same route, as their plan gives it to both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StopKey {
    lat: u64,
    lon: u64,
    route_points: usize,
    route_m: u64,
}

impl StopKey {
    pub(super) fn of(at: LatLon, route: Option<&Route>) -> Self {
        Self {
            lat: at.lat.to_bits(),
            lon: at.lon.to_bits(),
            route_points: route.map_or(0, |r| r.points.len()),
            route_m: route.map_or(0, |r| r.length().to_bits()),
        }
    }
}

/// An approach, as the estimators that share it hold it.
pub(super) type Shared = Arc<Mutex<Approach>>;

/// The approaches a courier takes, by stop, held by their estimators only.
type ByStop = Vec<(StopKey, std::sync::Weak<Mutex<Approach>>)>;

/// Locks `approach`: a panic while it was held left it as consistent as any update does.
pub(super) fn lock(approach: &Shared) -> MutexGuard<'_, Approach> {
    approach.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The approaches of one courier's orders, by stop: the estimators of the orders a courier
/// carries join the same one ([`super::EtaEstimator::share`]) and estimate each fix once.
#[derive(Debug, Clone, Default)]
pub struct SharedApproaches(Arc<Mutex<ByStop>>);

impl SharedApproaches {
    /// The approach to `key` some estimator already follows, else `candidate`, which others
    /// then join.
    pub(super) fn join(&self, key: StopKey, candidate: Shared) -> Shared {
        let mut approaches = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A courier heads for one stop, or two while its orders learn of a change of plan.
        approaches.retain(|(_, approach)| approach.strong_count() > 0);
        let existing = approaches
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, approach)| approach.upgrade());
        existing.unwrap_or_else(|| {
            approaches.push((key, Arc::downgrade(&candidate)));
            candidate
        })
    }

    /// True when no estimator holds it any more (only whoever hands it out does).
    pub fn is_unused(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}
