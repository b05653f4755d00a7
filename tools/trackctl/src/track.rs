//! An order's stored fixes run again through the server's own GPS filter and ETA estimator
//! (`trackline_core`, default settings, as the server runs them), so that `replay` can show the
//! marker, the ETA and its window as they were at each moment, and `stats` can measure the
//! displayed path. An order with a pickup is estimated through it until its `picked_up`.
//!
//! Refused fixes are not stored, so they cannot be replayed: after a refused jump the filter here
//! can differ from the server's for a fix or two (the server had the jump as a candidate).

use trackline_core::eta::{EtaConfig, EtaEstimate};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::Fix;
use trackline_core::order::OrderStatus;
use trackline_core::stops::{order_estimator, EtaWindow};
use trackline_core::LatLon;
use trackline_rest::OrderDetail;

/// One stored fix and what the filter and the estimator made of it.
#[derive(Debug, Clone)]
pub struct Step {
    pub fix: Fix,
    pub verdict: Verdict,
    /// The filter's smoothed ground speed after this fix, m/s.
    pub smoothed_speed_mps: Option<f64>,
    /// The estimate in force after this fix towards the stop the courier heads to (the pickup
    /// first, when the order has one): made at it when it was live, else the last one.
    pub eta: Option<EtaEstimate>,
    /// True when `eta` was made at this fix.
    pub eta_is_fresh: bool,
    /// The estimated arrival at the door in force (unix ms): the order's published `eta`.
    pub door_arrive_at_ms: Option<i64>,
    /// The arrival window at the door in force.
    pub window: Option<EtaWindow>,
    /// The estimated arrival at the pickup while the courier heads there (unix ms).
    pub pickup_arrive_at_ms: Option<i64>,
}

impl Step {
    /// Where the marker was shown after this fix, if this fix moved (or held) it.
    pub fn shown(&self) -> Option<LatLon> {
        match self.verdict {
            Verdict::Live(shown) => Some(shown),
            _ => None,
        }
    }

    /// The seconds to the door as seen at this fix's time (an older estimate counts down).
    pub fn eta_seconds(&self) -> Option<i64> {
        self.door_arrive_at_ms.map(|at| self.seconds_until(at))
    }

    /// The seconds to the pickup as seen at this fix's time, while the courier heads there.
    pub fn pickup_eta_seconds(&self) -> Option<i64> {
        self.pickup_arrive_at_ms.map(|at| self.seconds_until(at))
    }

    fn seconds_until(&self, at_ms: i64) -> i64 {
        ((at_ms - self.fix.time_ms) as f64 / 1000.0)
            .round()
            .max(0.0) as i64
    }

    /// The speed to show: the device's when it reported one, else the filter's smoothed speed.
    pub fn speed_mps(&self) -> Option<f64> {
        self.fix
            .speed_mps
            .map(f64::from)
            .or(self.smoothed_speed_mps)
    }

    /// The filter's verdict as a word: `live`, `history_only`, `duplicate` or `rejected`.
    pub fn verdict_name(&self) -> &'static str {
        match self.verdict {
            Verdict::Live(_) => "live",
            Verdict::HistoryOnly => "history_only",
            Verdict::Duplicate => "duplicate",
            Verdict::Rejected(_) => "rejected",
        }
    }
}

/// What the estimator had published after a live fix.
#[derive(Debug, Clone, Copy)]
struct InForce {
    estimate: EtaEstimate,
    door_ms: i64,
    window: Option<EtaWindow>,
    pickup_ms: Option<i64>,
}

/// Runs `fixes` (oldest first) through a fresh filter and an estimator for the order of
/// `detail`, as the server's order actor does with each fix it accepts: towards the pickup (when
/// the order has one and the detail shows it) until the status log's `picked_up`, then the door.
pub fn run(fixes: &[Fix], detail: &OrderDetail) -> Vec<Step> {
    let pickup = detail.pickup.as_ref().map(|p| p.to_pickup());
    let picked_up_at_ms = detail
        .status_log
        .iter()
        .flatten()
        .find(|change| change.status == OrderStatus::PickedUp)
        .map(|change| change.at_ms);
    let mut filter = GpsFilter::new(FilterConfig::default());
    let mut estimator = order_estimator(
        pickup.as_ref(),
        detail.state.destination,
        None,
        detail.route_points(),
        EtaConfig::default(),
    );
    let mut heading_to_pickup = pickup.is_some();
    let mut in_force: Option<InForce> = None;
    fixes
        .iter()
        .map(|fix| {
            if heading_to_pickup && picked_up_at_ms.is_some_and(|at| fix.time_ms > at) {
                // Collected: the server's estimate headed for the door from then on.
                estimator.advance();
                heading_to_pickup = false;
                if let Some(f) = &mut in_force {
                    f.pickup_ms = None;
                }
            }
            let verdict = filter.assess(fix);
            let fresh = if let Verdict::Live(shown) = verdict {
                let estimate = estimator.update(fix, shown);
                let arrivals = estimator.arrivals_ms();
                in_force = Some(InForce {
                    estimate,
                    door_ms: arrivals.last().copied().unwrap_or(estimate.arrive_at_ms),
                    window: estimator.window(),
                    pickup_ms: heading_to_pickup.then_some(estimate.arrive_at_ms),
                });
                true
            } else {
                false
            };
            Step {
                fix: *fix,
                verdict,
                smoothed_speed_mps: filter.speed_mps(),
                eta: in_force.map(|f| f.estimate),
                eta_is_fresh: fresh,
                door_arrive_at_ms: in_force.map(|f| f.door_ms),
                window: in_force.and_then(|f| f.window),
                pickup_arrive_at_ms: in_force.and_then(|f| f.pickup_ms),
            }
        })
        .collect()
}

/// An order as `GET /v1/orders/{id}` shows it to ops, for the tests of what reads one.
#[cfg(test)]
pub(crate) fn test_detail(
    destination: LatLon,
    route: Option<Vec<[f64; 2]>>,
    log: &[(OrderStatus, i64)],
) -> OrderDetail {
    use trackline_core::order::{OrderView, StatusChange};
    OrderDetail {
        state: OrderView {
            order_id: trackline_core::OrderId::new("o-1").unwrap(),
            status: log.last().map_or(OrderStatus::Assigned, |&(s, _)| s),
            courier_id: None,
            destination,
            position: None,
            eta: None,
            offset: 0,
            epoch: "e".into(),
            updated_at_ms: 0,
            promised_at_ms: None,
            stops: Vec::new(),
        },
        route,
        rejected: Some(Default::default()),
        status_log: Some(
            log.iter()
                .map(|&(status, at_ms)| StatusChange { status, at_ms })
                .collect(),
        ),
        clock: None,
        pickup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_rest::PickupRequest;

    fn fix(seq: u64, t_s: i64, lat: f64) -> Fix {
        Fix {
            seq,
            time_ms: t_s * 1000,
            pos: LatLon::new(lat, 13.0),
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
        }
    }

    /// North at ~11 m/s for `n` seconds.
    fn northwards(n: u64) -> Vec<Fix> {
        (0..n)
            .map(|i| fix(i, i as i64, 45.0 + i as f64 * 1e-4))
            .collect()
    }

    #[test]
    fn an_eta_counts_down_through_fixes_that_do_not_move_the_marker() {
        // then one fix resent (a duplicate)
        let mut fixes = northwards(30);
        fixes.push(fixes[29]);
        let detail = test_detail(LatLon::new(45.01, 13.0), None, &[]);
        let steps = run(&fixes, &detail);
        assert_eq!(steps.len(), 31);
        assert_eq!(steps[0].verdict_name(), "live");
        assert_eq!(steps[30].verdict_name(), "duplicate");
        assert!(!steps[30].eta_is_fresh && steps[30].eta == steps[29].eta);
        let first = steps[0].eta_seconds().unwrap();
        let last = steps[29].eta_seconds().unwrap();
        assert!(last < first, "{first} -> {last}");
        assert!(steps[29].speed_mps().unwrap() > 5.0);
        assert_eq!(steps[29].pickup_eta_seconds(), None, "no pickup");
        let window = steps[29].window.unwrap();
        let door = steps[29].door_arrive_at_ms.unwrap();
        assert!(
            window.earliest_ms <= door && door <= window.latest_ms,
            "{window:?} {door}"
        );
    }

    #[test]
    fn a_pickup_ahead_adds_its_wait_and_dwell_to_the_door_until_it_is_collected() {
        // The pickup 20 s up the road (ready at 200 s, a 60 s handover), the door beyond it.
        let fixes = northwards(60);
        let mut detail = test_detail(
            LatLon::new(45.01, 13.0),
            None,
            &[(OrderStatus::PickedUp, 25_000)],
        );
        detail.pickup = Some(PickupRequest {
            lat: 45.002,
            lon: 13.0,
            ready_at_ms: Some(200_000),
            dwell_s: Some(60.0),
            route: None,
        });
        let steps = run(&fixes, &detail);
        let before = &steps[10];
        let pickup_s = before.pickup_eta_seconds().expect("heading to the pickup");
        let door_s = before.eta_seconds().unwrap();
        // At 10 s the door is at least the wait until 200 s plus the handover away.
        assert!(pickup_s < door_s, "{pickup_s} {door_s}");
        assert!(door_s >= 190 + 60, "{door_s}");
        let window = before.window.unwrap();
        let door = before.door_arrive_at_ms.unwrap();
        assert!(
            window.earliest_ms <= door && door <= window.latest_ms,
            "{window:?} {door}"
        );

        // Collected at 25 s: straight to the door, no pickup, no wait any more.
        let after = &steps[30];
        assert_eq!(after.pickup_eta_seconds(), None);
        let door_after = after.eta_seconds().unwrap();
        // (at 30 s the door is due before the food would have been ready, at 200 s)
        assert!(30 + door_after < 200, "{door_after}");

        // Without the pickup the same fixes head straight for the door from the start.
        detail.pickup = None;
        let direct = run(&fixes, &detail);
        let direct_s = direct[10].eta_seconds().unwrap();
        assert!(direct_s + 60 < door_s, "{direct_s} {door_s}");
    }
}
