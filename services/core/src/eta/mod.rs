//! The ETA estimator: remaining distance (along the planned route when there is one) over a smoothed speed.
//!
//! # Model
//!
//! `ETA = remaining distance / predicted mean speed over what remains`, then smoothed.
//!
//! **Remaining distance.** With a planned route, the shown position is matched to the route and
//! the distance still to go is measured along it (plus the straight line from the route's end to
//! the destination, times the detour factor, when they differ). Matching keeps a *progress*, the
//! distance along the route already covered, and only looks for the courier in a window from a
//! little behind that progress ([`EtaConfig::back_tolerance_m`]) to a reach ahead that grows with
//! the time elapsed and the distance moved. Among the route points in that window the one
//! chosen minimises the lateral distance plus [`EtaConfig::progress_weight`] times its distance
//! from where the courier is expected to be; so a route that loops, U-turns or uses the same
//! street twice is followed leg by leg instead of jumping to whichever leg is nearest. When no
//! route point lies within [`EtaConfig::off_route_m`] plus the fix accuracy, a close match (half
//! that distance) up to [`EtaConfig::rejoin_ahead_m`] further on is accepted as a rejoin: the
//! courier skipped a loop or a spur of the plan. If nothing matches for
//! [`EtaConfig::off_route_confirm_s`] the courier is off route and the estimate falls back to the
//! straight line times [`EtaConfig::detour_factor`] until a position matches the route again
//! (the window keeps growing with the time since the last match, so the rejoin is found). Without a route it is always the straight line times the detour factor
//! (1.3 by default: the circuity of urban road networks measured in the literature is 1.2-1.4).
//!
//! **Speed.** Speed is measured in the same unit as the distance it divides: route progress per
//! second while on the route (so a route that is longer or shorter than the road actually driven
//! does not bias the ETA), ground distance per second otherwise (the device's Doppler speed when
//! it reports one). Two views are kept, each a ratio of exponentially decaying sums of distance
//! and time, which unlike an average of instantaneous speeds is not skewed by uneven sampling:
//!
//! * a *long* mean, memory [`EtaConfig::long_memory_s`], that includes the stops (red lights,
//!   queues) a trip of that length will meet again. It starts from a prior,
//!   [`EtaConfig::default_speed_mps`] worth [`EtaConfig::prior_weight_s`] seconds, so the first
//!   minutes are not at the mercy of a courier who waited at the restaurant door;
//! * a *recent* mean of moving speed, memory [`EtaConfig::recent_memory_s`]. It is frozen while
//!   the courier is stopped (the marker held for [`EtaConfig::stop_detect_s`], or a reported
//!   speed under 0.5 m/s), so it does not collapse to zero at a traffic light: the stop is paid
//!   for by the long mean and by the clock, since an ETA that stays the same while the courier
//!   waits pushes the arrival time back one second per second.
//!
//! The speed predicted over the remaining horizon `H` treats the recent speed as a deviation
//! from the long mean that fades with time constant `tau` ([`EtaConfig::reversion_s`]): its
//! average over `H` is `long + (recent - long) * tau / H * (1 - exp(-H / tau))`. Close to the
//! destination the current pace dominates; far from it, the long mean. The result is floored at
//! [`EtaConfig::min_speed_fraction`] of the long mean.
//!
//! **Smoothing.** What is published is the *arrival time*, anchored to the device time of the
//! fix, smoothed exponentially with time constant [`EtaConfig::smoothing_s`]. A steady courier
//! gives a steady arrival time (the countdown runs at one second per second) and a single odd
//! fix barely moves it, while a real change (a long stop, leaving the route) is fully reflected
//! within a minute.
//!
//! **One courier, several orders.** Every order a courier carries heads for the same stop first
//! (the next of the courier's plan), so the way there (matching, speed, smoothed arrival) is
//! kept apart from the order, in an approach its estimator can share with the courier's other
//! orders ([`EtaEstimator::share`]): a fix is estimated once for all of them, and each order
//! adds only the stops after it up to its own door.

mod approach;

use crate::fix::{Fix, LatLon};
use crate::plane::LocalPlane;
pub use approach::SharedApproaches;

/// Tuning of the estimator.
#[derive(Debug, Clone)]
pub struct EtaConfig {
    /// Without a route, the straight line is multiplied by this to approximate the road distance.
    pub detour_factor: f64,
    /// The speed assumed before any has been observed, metres per second.
    pub default_speed_mps: f64,
    /// How many seconds of observation the default speed is worth.
    pub prior_weight_s: f64,
    /// Memory of the long mean speed, seconds.
    pub long_memory_s: f64,
    /// Memory of the recent moving speed, seconds.
    pub recent_memory_s: f64,
    /// How fast a deviation of the recent speed from the long mean fades, seconds.
    pub reversion_s: f64,
    /// The predicted speed never falls below this fraction of the long mean.
    pub min_speed_fraction: f64,
    /// The predicted speed never falls below this, metres per second.
    pub min_speed_mps: f64,
    /// Progress samples faster than this are capped, metres per second.
    pub max_speed_mps: f64,
    /// The marker held still this long means the courier is stopped, seconds.
    pub stop_detect_s: f64,
    /// Farther than this (plus the fix accuracy) from the route, metres, a position is off it.
    pub off_route_m: f64,
    /// Off the route for this long, seconds, the estimate falls back to the straight line.
    pub off_route_confirm_s: f64,
    /// How far behind its progress the courier may be matched (noise, a short reverse), metres.
    pub back_tolerance_m: f64,
    /// The match window always reaches at least this far ahead of the progress, metres.
    pub window_ahead_m: f64,
    /// When nothing matches in the window, a close match this far ahead is a rejoin, metres.
    pub rejoin_ahead_m: f64,
    /// Metres of lateral distance one metre of progress away from the expected one costs.
    pub progress_weight: f64,
    /// Time constant of the published arrival time, seconds.
    pub smoothing_s: f64,
    /// The arrival window: see [`crate::stops::WindowModel`].
    pub window: crate::stops::WindowModel,
}

impl Default for EtaConfig {
    fn default() -> Self {
        Self {
            detour_factor: 1.3,
            default_speed_mps: 4.0,
            prior_weight_s: 120.0,
            long_memory_s: 900.0,
            recent_memory_s: 45.0,
            reversion_s: 300.0,
            min_speed_fraction: 0.3,
            min_speed_mps: 0.3,
            max_speed_mps: 55.0,
            stop_detect_s: 30.0,
            off_route_m: 50.0,
            off_route_confirm_s: 10.0,
            back_tolerance_m: 30.0,
            window_ahead_m: 150.0,
            rejoin_ahead_m: 2000.0,
            progress_weight: 0.1,
            smoothing_s: 20.0,
            window: crate::stops::WindowModel::default(),
        }
    }
}

/// One estimate, anchored to the device time of the fix it was made from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaEstimate {
    pub seconds: i64,
    pub arrive_at_ms: i64,
    /// The distance still to go, metres (along the route when matched on it).
    pub remaining_m: f64,
    /// The straight-line distance to the destination, metres.
    pub to_destination_m: f64,
    /// True when the remaining distance was measured along the planned route.
    pub on_route: bool,
    /// The speed the estimate assumes for what remains, metres per second (of route progress
    /// when on the route).
    pub speed_mps: f64,
}

/// Below this reported speed, m/s, a courier is standing still.
const STOPPED_SPEED_MPS: f32 = 0.5;

/// The estimator state of one order: the way to the stop its courier heads for (shared with the
/// courier's other orders once [`EtaEstimator::share`]d), and the stops after it.
#[derive(Debug)]
pub struct EtaEstimator {
    config: EtaConfig,
    /// The way to the stop the courier is heading to.
    approach: approach::Shared,
    /// Which stop that is, as the approaches of the courier are told apart.
    heading_to: approach::StopKey,
    /// The wait and handover at that stop.
    handover: Handover,
    /// The stops after it, in the order they will be visited (the door last).
    ahead: std::collections::VecDeque<Leg>,
    /// Where the approaches of the courier's other orders are found, once shared.
    shared: Option<SharedApproaches>,
}

/// A stop the estimator plans for: where, the planned route to it, and what happens there.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedStop {
    pub at: LatLon,
    /// The planned route from the previous stop (or the courier) to this one.
    pub route: Option<Vec<LatLon>>,
    pub handover: Handover,
}

/// What keeps a courier at a stop: waiting for the order to be ready, then handing it over.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    /// Not before this (unix ms): when the order is ready to be collected.
    pub ready_at_ms: Option<i64>,
    /// How long the handover takes, seconds.
    pub dwell_s: f64,
}

impl Handover {
    /// When a courier arriving at `arrival_ms` leaves again.
    fn leave_ms(&self, arrival_ms: f64) -> f64 {
        let ready = self
            .ready_at_ms
            .map_or(arrival_ms, |r| arrival_ms.max(r as f64));
        ready + self.dwell_s * 1000.0
    }
}

/// A stop after the current one, its route prepared for matching once the courier heads there.
#[derive(Debug, Clone)]
struct Leg {
    at: LatLon,
    route: Option<Route>,
    handover: Handover,
}

impl From<PlannedStop> for Leg {
    fn from(s: PlannedStop) -> Self {
        Leg {
            at: s.at,
            route: s.route.and_then(Route::new),
            handover: s.handover,
        }
    }
}

impl Leg {
    /// The distance of the leg from `from`, metres: along its route (plus the straight gaps
    /// at both ends, times the detour factor), else the straight line times the detour factor.
    fn length_m(&self, from: LatLon, detour: f64) -> f64 {
        match &self.route {
            Some(route) => {
                let gaps = from.distance_m(route.start()) + route.end().distance_m(self.at);
                route.length() + gaps * detour
            }
            None => from.distance_m(self.at) * detour,
        }
    }
}

/// `at_ms` as published: `now_ms` plus a whole number of seconds.
fn whole_seconds_from(now_ms: i64, at_ms: f64) -> i64 {
    now_ms + ((at_ms - now_ms as f64) / 1000.0).round() as i64 * 1000
}

impl EtaEstimator {
    /// An estimator for a single drop: the destination and the planned route to it.
    pub fn new(destination: LatLon, route: Option<Vec<LatLon>>, config: EtaConfig) -> Self {
        Self::with_stops(
            vec![PlannedStop {
                at: destination,
                route,
                handover: Handover::default(),
            }],
            config,
        )
    }

    /// An estimator for a courier visiting `stops` in order (the estimate is for the last).
    /// With no stop at all it estimates towards 0/0, which no order has.
    pub fn with_stops(stops: Vec<PlannedStop>, config: EtaConfig) -> Self {
        let mut legs = stops.into_iter().map(Leg::from);
        let first = legs.next().unwrap_or(Leg {
            at: LatLon::new(0.0, 0.0),
            route: None,
            handover: Handover::default(),
        });
        let heading_to = approach::StopKey::of(first.at, first.route.as_ref());
        let approach = approach::Approach::new(first.at, first.route, &config);
        Self {
            approach: std::sync::Arc::new(std::sync::Mutex::new(approach)),
            heading_to,
            handover: first.handover,
            ahead: legs.collect(),
            shared: None,
            config,
        }
    }

    /// Estimates the way to the stop the courier heads for together with the other estimators
    /// sharing `shared` (the courier's other orders): a fix one of them applied is not
    /// estimated again for the others. The way is the first of them to head there: what this
    /// one learnt gives way to it (the courier is the same), or is kept if it is the first.
    pub fn share(&mut self, shared: SharedApproaches) {
        // A copy: the approach may be shared still with the orders of a courier this order
        // no longer has.
        let own = approach::lock(&self.approach).clone();
        self.approach = shared.join(
            self.heading_to,
            std::sync::Arc::new(std::sync::Mutex::new(own)),
        );
        self.shared = Some(shared);
    }

    /// Fixes whose estimate was made for this estimator's way so far, by it or by another
    /// sharing it (diagnostics: one courier's orders together estimate each fix once).
    pub fn estimated(&self) -> u64 {
        self.approach().estimated
    }

    fn approach(&self) -> std::sync::MutexGuard<'_, approach::Approach> {
        approach::lock(&self.approach)
    }

    /// Distance along the planned route covered so far, metres, once matched on it.
    pub fn progress_m(&self) -> Option<f64> {
        self.approach().progress_m
    }

    /// Length of the planned route, metres (None without one).
    pub fn route_length_m(&self) -> Option<f64> {
        self.approach().route.as_ref().map(Route::length)
    }

    /// The long and recent mean speeds of route progress, m/s (for diagnostics).
    pub fn route_speeds(&self) -> (f64, f64) {
        let approach = self.approach();
        (approach.route_speed.long(), approach.route_speed.recent())
    }

    /// True while the courier is matched on the planned route.
    pub fn on_route(&self) -> bool {
        self.approach().on_route()
    }

    /// The estimated arrival at the stop the courier heads to and at each stop after it, unix
    /// ms, in visiting order (the last is the door); empty before the first update.
    ///
    /// Each later stop adds the wait and handover of the one before it and its own leg at the
    /// speed the current estimate expects, so a pickup ahead is priced as what it will cost.
    pub fn arrivals_ms(&self) -> Vec<i64> {
        let approach = self.approach();
        let Some((now, _)) = approach.last else {
            return Vec::new();
        };
        self.arrivals(&approach)
            .into_iter()
            .map(|t| whole_seconds_from(now, t))
            .collect()
    }

    fn arrivals(&self, approach: &approach::Approach) -> Vec<f64> {
        let Some(first) = approach.arrival_ms else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(1 + self.ahead.len());
        out.push(first);
        let (mut t, mut from, mut handover) = (first, approach.destination, self.handover);
        for leg in &self.ahead {
            t = handover.leave_ms(t) + self.leg_seconds(approach, leg, from) * 1000.0;
            out.push(t);
            (from, handover) = (leg.at, leg.handover);
        }
        out
    }

    /// How long `leg`, from `from`, takes at the speed the current estimate assumes.
    fn leg_seconds(&self, approach: &approach::Approach, leg: &Leg, from: LatLon) -> f64 {
        let leg_m = leg.length_m(from, self.config.detour_factor);
        leg_m / approach.model().predict(leg_m, &self.config)
    }

    /// How long of the time to the last stop is spent waiting for orders to be ready, ms.
    fn waiting_ms(&self, arrivals: &[f64]) -> i64 {
        let mut handovers =
            std::iter::once(&self.handover).chain(self.ahead.iter().map(|l| &l.handover));
        let waits = arrivals
            .iter()
            .zip(&mut handovers)
            .map(|(arrival, handover)| {
                handover
                    .ready_at_ms
                    .map_or(0.0, |ready| (ready as f64 - arrival).max(0.0))
            });
        // The last stop's own wait comes after the arrival estimated: not part of it.
        let n = arrivals.len().saturating_sub(1);
        waits.take(n).sum::<f64>().round() as i64
    }

    /// Stops still to visit before the last one.
    pub fn stops_ahead(&self) -> usize {
        self.ahead.len()
    }

    /// The arrival window at the last stop (p10-p90), from the estimator's own uncertainty;
    /// None before the first update.
    pub fn window(&self) -> Option<crate::stops::EtaWindow> {
        let approach = self.approach();
        let (now, _) = approach.last?;
        // One pass over the stops for the door and the waits (this runs with every live fix).
        let arrivals = self.arrivals(&approach);
        let door = whole_seconds_from(now, *arrivals.last()?);
        let watched_s = (now - approach.started_ms.unwrap_or(now)) as f64 / 1000.0;
        // Waiting for an order to be ready is known, not guessed: only the riding is uncertain.
        let waiting_ms = self.waiting_ms(&arrivals);
        Some(self.config.window.window(crate::stops::Uncertainty {
            now_ms: now,
            arrive_at_ms: door,
            waiting_ms,
            stops_ahead: self.ahead.len(),
            start_share: self.config.prior_weight_s / (self.config.prior_weight_s + watched_s),
            pace_variability: approach.model().pace_variability(),
        }))
    }

    /// The courier's plan changed (another order's stop came or went before this one's): it
    /// heads for `stops` from now on, with what was learnt of its speed. The matching on the
    /// route is kept when the stop it heads to stays the same; otherwise the next update
    /// estimates the new first leg afresh (unless another order of the courier heads there
    /// already). Nothing changes with no stop at all.
    pub fn replan(&mut self, stops: Vec<PlannedStop>) {
        let mut legs = stops.into_iter().map(Leg::from);
        let Some(first) = legs.next() else {
            return;
        };
        self.ahead = legs.collect();
        if first.at == self.approach().destination {
            self.handover = first.handover;
            return;
        }
        self.head_for(first, None);
    }

    /// Heads for `leg` from where the courier is, arriving at `arrival_ms` (None: estimated
    /// afresh): its route matched afresh, the speed learnt kept. Another order of the courier
    /// heading there already has the way estimated: this one joins it.
    fn head_for(&mut self, leg: Leg, arrival_ms: Option<f64>) {
        self.heading_to = approach::StopKey::of(leg.at, leg.route.as_ref());
        self.handover = leg.handover;
        let next = self.approach().next(leg.at, leg.route, arrival_ms);
        let next = std::sync::Arc::new(std::sync::Mutex::new(next));
        self.approach = match &self.shared {
            Some(shared) => shared.join(self.heading_to, next),
            None => next,
        };
    }

    /// The courier left the stop it was heading to (the order was picked up): it heads to the
    /// next one from now on, with what was learnt of its speed. False when there is none.
    pub fn advance(&mut self) -> bool {
        let Some(next) = self.ahead.pop_front() else {
            return false;
        };
        // The smoothing goes on from the arrival the courier leaves with, so the published ETA
        // does not jump at the handover.
        let arrival_ms = {
            let approach = self.approach();
            let leg_s = self.leg_seconds(&approach, &next, approach.destination);
            approach.last.map(|(t, _)| t as f64 + leg_s * 1000.0)
        };
        self.head_for(next, arrival_ms);
        true
    }

    /// Updates the estimate with a fix that moved the live marker (position as shown).
    pub fn update(&mut self, fix: &Fix, shown: LatLon) -> EtaEstimate {
        self.update_shared(fix, shown).0
    }

    /// [`Self::update`], and whether the estimate was made by this call (false: another order
    /// of the courier had made it).
    pub fn update_shared(&mut self, fix: &Fix, shown: LatLon) -> (EtaEstimate, bool) {
        let config = &self.config;
        approach::lock(&self.approach).update(fix, shown, config)
    }
}

/// A ratio of exponentially decaying sums of distance and time: a long and a recent mean speed.
#[derive(Debug, Clone)]
struct SpeedModel {
    long_m: f64,
    long_s: f64,
    recent_m: f64,
    recent_s: f64,
    /// Decaying sums (over the long memory) of the squared relative gap between the recent and
    /// the long mean, and of its time: how much the courier's pace swings.
    pace_gap2_s: f64,
    pace_s: f64,
}

impl SpeedModel {
    fn new(prior_mps: f64, prior_s: f64) -> Self {
        // The recent mean starts at the prior too, but worth little: the first minute speaks for itself.
        let recent_prior_s = 10.0;
        Self {
            long_m: prior_mps * prior_s,
            long_s: prior_s,
            recent_m: prior_mps * recent_prior_s,
            recent_s: recent_prior_s,
            pace_gap2_s: 0.0,
            pace_s: 0.0,
        }
    }

    /// The root mean square of `(recent - long) / long` over the long memory: 0 for a steady
    /// pace, about 1 for a courier who alternates between riding and standing.
    fn pace_variability(&self) -> f64 {
        if self.pace_s > 0.0 {
            (self.pace_gap2_s / self.pace_s).sqrt()
        } else {
            0.0
        }
    }

    fn observe(&mut self, distance_m: f64, dt_s: f64, stopped: bool, cfg: &EtaConfig) {
        if dt_s <= 0.0 {
            return;
        }
        let keep = (-dt_s / cfg.long_memory_s).exp();
        self.long_m = self.long_m * keep + distance_m;
        self.long_s = self.long_s * keep + dt_s;
        if !stopped {
            let keep = (-dt_s / cfg.recent_memory_s).exp();
            self.recent_m = self.recent_m * keep + distance_m;
            self.recent_s = self.recent_s * keep + dt_s;
        }
        let long = self.long().max(cfg.min_speed_mps);
        let gap = ((self.recent() - long) / long).min(3.0);
        self.pace_gap2_s = self.pace_gap2_s * keep + gap * gap * dt_s;
        self.pace_s = self.pace_s * keep + dt_s;
    }

    fn long(&self) -> f64 {
        (self.long_m / self.long_s).max(0.0)
    }

    fn recent(&self) -> f64 {
        (self.recent_m / self.recent_s).max(0.0)
    }

    /// The mean speed expected over the time it takes to cover `remaining_m`.
    fn predict(&self, remaining_m: f64, cfg: &EtaConfig) -> f64 {
        let long = self.long().max(cfg.min_speed_mps);
        let horizon_s = remaining_m / long;
        let weight = if horizon_s > 1e-6 {
            cfg.reversion_s / horizon_s * (1.0 - (-horizon_s / cfg.reversion_s).exp())
        } else {
            1.0
        };
        let blended = long + (self.recent() - long) * weight;
        blended
            .max(cfg.min_speed_fraction * long)
            .max(cfg.min_speed_mps)
    }
}

/// A planned route with cumulative distances, ready for projecting positions onto it.
#[derive(Debug, Clone)]
struct Route {
    points: Vec<LatLon>,
    /// Distance from the start to each point, metres.
    cum_m: Vec<f64>,
}

impl Route {
    /// None when fewer than two distinct points remain: a route that goes nowhere is no route.
    fn new(points: Vec<LatLon>) -> Option<Self> {
        let mut kept: Vec<LatLon> = Vec::with_capacity(points.len());
        for p in points.into_iter().filter(|p| p.is_valid()) {
            if kept.last().is_none_or(|q| q.distance_m(p) > 0.01) {
                kept.push(p);
            }
        }
        if kept.len() < 2 {
            return None;
        }
        let mut cum_m = Vec::with_capacity(kept.len());
        let mut total = 0.0;
        cum_m.push(0.0);
        for w in kept.windows(2) {
            total += w[0].distance_m(w[1]);
            cum_m.push(total);
        }
        Some(Self {
            points: kept,
            cum_m,
        })
    }

    fn length(&self) -> f64 {
        self.cum_m.last().copied().unwrap_or(0.0)
    }

    fn start(&self) -> LatLon {
        self.points
            .first()
            .copied()
            .unwrap_or(LatLon::new(0.0, 0.0))
    }

    fn end(&self) -> LatLon {
        self.points.last().copied().unwrap_or(LatLon::new(0.0, 0.0))
    }

    /// Index of the segment containing distance `s` (clamped to the route).
    fn segment_at(&self, s: f64) -> usize {
        let i = self.cum_m.partition_point(|&c| c <= s);
        i.saturating_sub(1).min(self.points.len() - 2)
    }

    /// The progress of the best match of `p` between distances `from` and `to`, or None when no
    /// route point in that range is within `threshold` metres.
    ///
    /// Best is the smallest lateral distance plus `weight` times the distance from `expected`.
    fn best_match(
        &self,
        p: LatLon,
        from: f64,
        to: f64,
        threshold: f64,
        expected: f64,
        weight: f64,
    ) -> Option<f64> {
        let from = from.max(0.0);
        let to = to.min(self.length());
        if to < from {
            return None;
        }
        let mut best: Option<(f64, f64)> = None;
        for i in self.segment_at(from)..=self.segment_at(to) {
            let (a, b) = (self.points[i], self.points[i + 1]);
            let len = self.cum_m[i + 1] - self.cum_m[i];
            // A local plane at the segment's start: segments are short, so this is exact to
            // well under a metre anywhere on Earth, and cheaper than a geodesic projection.
            let plane = LocalPlane::at(a);
            let ((bx, by), (px, py)) = (plane.to_local(b), plane.to_local(p));
            let len2 = bx * bx + by * by;
            let t = if len2 > 0.0 {
                (px * bx + py * by) / len2
            } else {
                0.0
            };
            // Only the part of the segment inside the window counts.
            let t_min = ((from - self.cum_m[i]) / len).clamp(0.0, 1.0);
            let t_max = ((to - self.cum_m[i]) / len).clamp(0.0, 1.0);
            let t = t.clamp(t_min, t_max);
            let lateral = (px - t * bx).hypot(py - t * by);
            if lateral > threshold {
                continue;
            }
            let s = self.cum_m[i] + t * len;
            let cost = lateral + weight * (s - expected).abs();
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, s));
            }
        }
        best.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const LAT: f64 = 48.85;

    /// A point `east` and `north` metres from a fixed origin.
    fn at(east: f64, north: f64) -> LatLon {
        LocalPlane::at(LatLon::new(LAT, 2.35)).to_lat_lon(east, north)
    }

    fn fix(t_s: f64, pos: LatLon) -> Fix {
        Fix {
            seq: 0,
            time_ms: T0 + (t_s * 1000.0).round() as i64,
            pos,
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
        }
    }

    #[test]
    fn without_a_route_it_is_the_straight_line_times_the_detour() {
        let dest = at(1000.0, 0.0);
        let mut eta = EtaEstimator::new(dest, None, EtaConfig::default());
        let e = eta.update(&fix(0.0, at(0.0, 0.0)), at(0.0, 0.0));
        assert!((e.to_destination_m - 1000.0).abs() < 1.0);
        assert!((e.remaining_m - 1300.0).abs() < 1.0);
        // The prior speed, 4 m/s.
        assert_eq!(e.seconds, 325);
        assert_eq!(e.arrive_at_ms, T0 + 325_000);
        assert!(!e.on_route);
    }

    #[test]
    fn arrival_time_is_anchored_to_device_time_and_steady_at_constant_speed() {
        let dest = at(3000.0, 0.0);
        let route = vec![at(0.0, 0.0), at(3000.0, 0.0)];
        let mut eta = EtaEstimator::new(dest, Some(route), EtaConfig::default());
        let mut arrivals = Vec::new();
        // 5 m/s for 400 s, one fix a second.
        for i in 0..=400 {
            let p = at(5.0 * i as f64, 0.0);
            let e = eta.update(&fix(i as f64, p), p);
            assert!(e.on_route);
            assert_eq!(e.arrive_at_ms, T0 + i * 1000 + e.seconds * 1000);
            arrivals.push(e.arrive_at_ms);
        }
        // Truth: arrival at t = 600 s. After the first minutes it has converged and holds.
        let truth = T0 + 600_000;
        for (i, &a) in arrivals.iter().enumerate().skip(200) {
            assert!(
                (a - truth).abs() < 20_000,
                "at {i} s: {} s off",
                (a - truth) / 1000
            );
        }
        let late = &arrivals[300..];
        let spread = late.iter().max().unwrap() - late.iter().min().unwrap();
        assert!(spread < 5_000, "the arrival time wandered {spread} ms");
    }

    #[test]
    fn a_traffic_light_does_not_collapse_the_estimate() {
        let dest = at(3000.0, 0.0);
        let route = vec![at(0.0, 0.0), at(3000.0, 0.0)];
        let mut eta = EtaEstimator::new(dest, Some(route), EtaConfig::default());
        let mut x = 0.0;
        let mut before = 0;
        for i in 0..300 {
            x += 8.0;
            let p = at(x, 0.0);
            before = eta.update(&fix(i as f64, p), p).seconds;
        }
        // 60 s at a red light 600 m before the destination.
        let p = at(x, 0.0);
        let mut during = 0;
        for i in 300..360 {
            during = eta.update(&fix(i as f64, p), p).seconds;
        }
        // Before the light: 600 m at 8 m/s, about 75 s. During the wait the estimate may grow
        // (the long mean includes the stop) but it must stay of the order of the drive left.
        assert!((60..100).contains(&before), "{before}");
        assert!((60..200).contains(&during), "{during}");
    }

    /// An out-and-back route: east 1 km along a street, then back west on the same street to a
    /// destination 100 m from the start.
    fn out_and_back() -> (LatLon, Vec<LatLon>) {
        (
            at(100.0, 8.0),
            vec![
                at(0.0, 0.0),
                at(1000.0, 0.0),
                at(1000.0, 8.0),
                at(100.0, 8.0),
            ],
        )
    }

    #[test]
    fn a_route_using_the_same_street_twice_is_followed_leg_by_leg() {
        let (dest, route) = out_and_back();
        let mut eta = EtaEstimator::new(dest, Some(route), EtaConfig::default());
        let mut remaining = Vec::new();
        let mut t = 0.0;
        // Out along y=0 (noisy by +-4 m), then back along y=8.
        for i in 0..=100 {
            let p = at(10.0 * i as f64, if i % 2 == 0 { 4.0 } else { -3.0 });
            remaining.push(eta.update(&fix(t, p), p).remaining_m);
            t += 2.0;
        }
        for i in 0..=90 {
            let p = at(
                1000.0 - 10.0 * i as f64,
                if i % 2 == 0 { 4.0 } else { 11.0 },
            );
            remaining.push(eta.update(&fix(t, p), p).remaining_m);
            t += 2.0;
        }
        // Total route 1908 m; the remaining distance must decrease all the way, never jumping
        // to the other leg (which would skip or add ~2 x the distance to the turn).
        assert!((remaining[0] - 1908.0).abs() < 5.0, "{}", remaining[0]);
        for (i, w) in remaining.windows(2).enumerate() {
            assert!(w[1] <= w[0] + 8.0, "step {i}: {} -> {}", w[0], w[1]);
            assert!(w[0] - w[1] < 30.0, "step {i}: {} -> {}", w[0], w[1]);
        }
        assert!(*remaining.last().unwrap() < 10.0);
    }

    #[test]
    fn going_off_route_falls_back_to_the_straight_line_and_comes_back() {
        // Route: east 2 km. The courier leaves it northwards for a while, then returns.
        let dest = at(2000.0, 0.0);
        let route = vec![at(0.0, 0.0), at(2000.0, 0.0)];
        let mut eta = EtaEstimator::new(dest, Some(route), EtaConfig::default());
        let mut t = 0.0;
        let mut step = |eta: &mut EtaEstimator, p: LatLon| {
            t += 2.0;
            eta.update(&fix(t, p), p)
        };
        for i in 0..50 {
            assert!(step(&mut eta, at(10.0 * i as f64, 0.0)).on_route);
        }
        // 300 m north at (500, 300) over 60 s.
        let mut last = None;
        for i in 1..=30 {
            last = Some(step(&mut eta, at(500.0, 10.0 * i as f64)));
        }
        let off = last.unwrap();
        assert!(!off.on_route);
        let straight = at(500.0, 300.0).distance_m(dest);
        assert!((off.remaining_m - straight * 1.3).abs() < 1.0);
        // Back down onto the route further east.
        for i in 1..=30 {
            step(
                &mut eta,
                at(500.0 + 10.0 * i as f64, 300.0 - 10.0 * i as f64),
            );
        }
        let back = step(&mut eta, at(810.0, 0.0));
        assert!(back.on_route);
        assert!(
            (back.remaining_m - 1190.0).abs() < 15.0,
            "{}",
            back.remaining_m
        );
    }

    #[test]
    fn laps_of_a_loop_are_counted_not_skipped() {
        // A 400 m square lap run three times; destination is the start.
        let lap = [
            at(0.0, 0.0),
            at(100.0, 0.0),
            at(100.0, 100.0),
            at(0.0, 100.0),
        ];
        let mut route: Vec<LatLon> = Vec::new();
        for _ in 0..3 {
            route.extend_from_slice(&lap);
        }
        route.push(lap[0]);
        let mut eta = EtaEstimator::new(lap[0], Some(route), EtaConfig::default());
        let mut t = 0.0;
        let mut last = 0.0;
        for k in 0..1200 {
            // 1 m steps around the square, 3 m/s.
            let d = (k % 400) as f64;
            let p = match d {
                d if d < 100.0 => at(d, 0.0),
                d if d < 200.0 => at(100.0, d - 100.0),
                d if d < 300.0 => at(300.0 - d, 100.0),
                d => at(0.0, 400.0 - d),
            };
            t += 1.0 / 3.0;
            let e = eta.update(&fix(t, p), p);
            let expected = 1200.0 - k as f64;
            assert!(
                (e.remaining_m - expected).abs() < 5.0,
                "step {k}: {} vs {expected}",
                e.remaining_m
            );
            last = e.remaining_m;
        }
        assert!(last < 5.0);
    }

    #[test]
    fn reported_speed_is_used_and_a_far_destination_tail_is_added() {
        let dest = at(1000.0, 100.0);
        let route = vec![at(0.0, 0.0), at(1000.0, 0.0)];
        let mut eta = EtaEstimator::new(dest, Some(route), EtaConfig::default());
        let e = eta.update(&fix(0.0, at(0.0, 0.0)), at(0.0, 0.0));
        assert!(
            (e.remaining_m - (1000.0 + 130.0)).abs() < 1.0,
            "{}",
            e.remaining_m
        );
        // Standing still with a reported speed of 0: the recent speed is frozen, not zeroed.
        for i in 1..60 {
            let f = Fix {
                speed_mps: Some(0.0),
                ..fix(i as f64, at(0.0, 0.0))
            };
            let e = eta.update(&f, at(0.0, 0.0));
            assert!(e.speed_mps > 1.0, "{}", e.speed_mps);
        }
    }

    fn pickup_then_door(ready_at_ms: Option<i64>, dwell_s: f64) -> EtaEstimator {
        // Pickup 1 km east, the door 1 km further east; no routes.
        EtaEstimator::with_stops(
            vec![
                PlannedStop {
                    at: at(1000.0, 0.0),
                    route: None,
                    handover: Handover {
                        ready_at_ms,
                        dwell_s,
                    },
                },
                PlannedStop {
                    at: at(2000.0, 0.0),
                    route: None,
                    handover: Handover::default(),
                },
            ],
            EtaConfig::default(),
        )
    }

    #[test]
    fn the_door_eta_before_pickup_adds_the_wait_the_handover_and_the_second_leg() {
        let mut eta = pickup_then_door(None, 120.0);
        let e = eta.update(&fix(0.0, at(0.0, 0.0)), at(0.0, 0.0));
        // 1300 m to the pickup at the prior 4 m/s: 325 s.
        assert_eq!(e.seconds, 325);
        let arrivals = eta.arrivals_ms();
        assert_eq!(arrivals[0], T0 + 325_000);
        // Then 120 s of handover and 1300 m more.
        assert_eq!(arrivals[1], T0 + (325 + 120 + 325) * 1000);
        assert_eq!(eta.stops_ahead(), 1);

        // Food ready in 20 minutes: the courier waits at the counter.
        let mut waiting = pickup_then_door(Some(T0 + 1_200_000), 120.0);
        waiting.update(&fix(0.0, at(0.0, 0.0)), at(0.0, 0.0));
        assert_eq!(
            *waiting.arrivals_ms().last().unwrap(),
            T0 + (1200 + 120 + 325) * 1000
        );
    }

    /// A stop `east` metres east with a 60 s handover, the planned route the kilometre to it.
    fn stop(east: f64) -> PlannedStop {
        PlannedStop {
            at: at(east, 0.0),
            route: Some(vec![at(east - 1000.0, 0.0), at(east, 0.0)]),
            handover: Handover {
                ready_at_ms: None,
                dwell_s: 60.0,
            },
        }
    }

    /// A courier heading east to a pickup 1 km away, then two doors 1 and 2 km further: the
    /// estimators of the first order (pickup, its door) and of the second (both, then its door).
    fn two_orders_of_one_courier() -> (EtaEstimator, EtaEstimator) {
        let first =
            EtaEstimator::with_stops(vec![stop(1000.0), stop(2000.0)], EtaConfig::default());
        let second = EtaEstimator::with_stops(
            vec![stop(1000.0), stop(2000.0), stop(3000.0)],
            EtaConfig::default(),
        );
        (first, second)
    }

    /// A ride east at 5 m/s from `from_s` to `to_s` seconds, a fix a second.
    fn ride(from_s: i64, to_s: i64) -> impl Iterator<Item = Fix> {
        (from_s..to_s).map(|i| {
            let mut f = fix(i as f64, at(5.0 * i as f64, 0.0));
            f.seq = i as u64 + 1;
            f
        })
    }

    #[test]
    fn the_orders_of_one_courier_estimate_each_fix_once_and_as_each_would_alone() {
        let (mut alone_first, mut alone_second) = two_orders_of_one_courier();
        let (mut first, mut second) = two_orders_of_one_courier();
        let courier = SharedApproaches::default();
        first.share(courier.clone());
        second.share(courier.clone());
        for f in ride(0, 150) {
            for eta in [&mut alone_first, &mut alone_second, &mut first, &mut second] {
                eta.update(&f, f.pos);
            }
            assert_eq!(first.arrivals_ms(), alone_first.arrivals_ms());
            assert_eq!(second.arrivals_ms(), alone_second.arrivals_ms());
            assert_eq!(second.window(), alone_second.window());
        }
        assert_eq!(alone_first.estimated(), 150);
        assert_eq!(alone_second.estimated(), 150);
        // Together: once per fix, not once per order.
        assert_eq!(first.estimated(), 150);
        assert_eq!(second.estimated(), 150);

        // An order a few fixes behind (another thread) gets the estimates already made.
        let (mut late, _) = two_orders_of_one_courier();
        late.share(courier.clone());
        let ahead: Vec<_> = ride(150, 160).collect();
        let estimates: Vec<_> = ahead.iter().map(|f| first.update(f, f.pos)).collect();
        for (f, estimate) in ahead.iter().zip(estimates) {
            assert_eq!(late.update(f, f.pos), estimate);
        }
        assert_eq!(late.estimated(), 160);
        assert!(!courier.is_unused());
        drop((first, second, late));
        assert!(courier.is_unused());
    }

    #[test]
    fn an_order_whose_plan_changes_joins_the_way_its_courier_already_takes() {
        let (mut first, mut second) = two_orders_of_one_courier();
        let courier = SharedApproaches::default();
        first.share(courier.clone());
        second.share(courier.clone());
        for f in ride(0, 200) {
            first.update(&f, f.pos);
            second.update(&f, f.pos);
        }
        // The first order is collected: it heads for its door, with the arrival it left with.
        assert!(first.advance());
        let door = first.arrivals_ms()[0];
        // The second order hears of the change later, and heads there too: the same way.
        let (_, mut plan) = two_orders_of_one_courier();
        plan.advance();
        second.replan(vec![stop(2000.0), stop(3000.0)]);
        assert_eq!(second.arrivals_ms()[0], door);
        for f in ride(200, 260) {
            first.update(&f, f.pos);
            second.update(&f, f.pos);
        }
        assert_eq!(first.estimated(), 60, "one estimate per fix on the new way");
        assert_eq!(second.arrivals_ms()[0], first.arrivals_ms()[0]);

        // Given to another courier, an order takes its way along, and leaves the first
        // courier's orders theirs.
        let other = SharedApproaches::default();
        second.share(other);
        let f = ride(260, 261).next().unwrap();
        second.update(&f, f.pos);
        assert_eq!(first.estimated(), 60);
        assert_eq!(second.estimated(), 61);
    }

    #[test]
    fn after_the_pickup_it_heads_to_the_door_without_a_jump() {
        let mut eta = pickup_then_door(None, 0.0);
        let mut door_before = 0;
        for i in 0..=200 {
            let p = at(5.0 * i as f64, 0.0);
            eta.update(&fix(i as f64, p), p);
            door_before = *eta.arrivals_ms().last().unwrap();
        }
        assert!(eta.advance());
        assert!(!eta.advance(), "the door is the last stop");
        let p = at(1005.0, 0.0);
        let e = eta.update(&fix(201.0, p), p);
        assert!((e.to_destination_m - 995.0).abs() < 1.0);
        assert!(
            (e.arrive_at_ms - door_before).abs() < 15_000,
            "{} s apart",
            (e.arrive_at_ms - door_before) / 1000
        );
        let window = eta.window().unwrap();
        assert!(window.earliest_ms <= e.arrive_at_ms && e.arrive_at_ms <= window.latest_ms);
    }
}
