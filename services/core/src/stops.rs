//! The stops of a delivery (a pickup before the door), a courier's plan of the stops of all its
//! orders, and the arrival window around an ETA.

use serde::{Deserialize, Serialize};

use crate::eta::{EtaConfig, EtaEstimator, Handover, PlannedStop};
use crate::fix::LatLon;
use crate::order::Eta;
use crate::OrderId;

/// The handover time assumed at a stop that names none, seconds.
pub const DEFAULT_DWELL_S: f64 = 120.0;

/// The longest handover a stop may name, seconds (an hour: longer is a mistake, not a wait).
pub const MAX_DWELL_S: f64 = 3600.0;

/// Where the courier collects an order before riding to its destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pickup {
    pub at: LatLon,
    /// When the order is expected to be ready (unix ms): the courier waits until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<i64>,
    /// How long the handover takes, seconds ([`DEFAULT_DWELL_S`] when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<f64>,
    /// The planned route to the pickup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<LatLon>>,
}

impl Pickup {
    /// The estimator's view of the pickup.
    pub fn planned(&self) -> PlannedStop {
        PlannedStop {
            at: self.at,
            route: self.route.clone(),
            handover: Handover {
                ready_at_ms: self.ready_at_ms,
                dwell_s: self.dwell_s.unwrap_or(DEFAULT_DWELL_S),
            },
        }
    }
}

/// The stops of an order still to visit: `pickup` when it is still to be collected (else
/// `None`), then the destination along `route`. The door's handover ([`DEFAULT_DWELL_S`] when
/// unset) only counts when another order's stop follows it in a courier's plan.
pub fn order_stops(
    pickup: Option<&Pickup>,
    destination: LatLon,
    destination_dwell_s: Option<f64>,
    route: Option<Vec<LatLon>>,
) -> Vec<PlannedStop> {
    let door = PlannedStop {
        at: destination,
        route,
        handover: Handover {
            ready_at_ms: None,
            dwell_s: destination_dwell_s.unwrap_or(DEFAULT_DWELL_S),
        },
    };
    match pickup {
        Some(pickup) => vec![pickup.planned(), door],
        None => vec![door],
    }
}

/// The estimator of an order alone ([`order_stops`]). The server and `trackctl replay` both
/// build it here, so that a replayed ETA is the one the server published.
pub fn order_estimator(
    pickup: Option<&Pickup>,
    destination: LatLon,
    destination_dwell_s: Option<f64>,
    route: Option<Vec<LatLon>>,
    config: EtaConfig,
) -> EtaEstimator {
    let stops = order_stops(pickup, destination, destination_dwell_s, route);
    EtaEstimator::with_stops(stops, config)
}

/// What a courier does at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    Pickup,
    Dropoff,
}

impl StopKind {
    pub fn to_proto(self) -> trackline_proto::v1::StopKind {
        match self {
            StopKind::Pickup => trackline_proto::v1::StopKind::Pickup,
            StopKind::Dropoff => trackline_proto::v1::StopKind::Dropoff,
        }
    }
}

/// One stop of an order as its state shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopView {
    pub kind: StopKind,
    pub lat: f64,
    pub lon: f64,
    /// The estimated arrival; null before the first fix and once the stop is reached.
    #[schema(required = true)]
    pub eta: Option<Eta>,
    /// When the courier reached the stop (unix ms, device time); null until then.
    #[schema(required = true)]
    pub reached_at_ms: Option<i64>,
}

impl StopView {
    pub fn to_proto(&self) -> trackline_proto::v1::Stop {
        trackline_proto::v1::Stop {
            kind: self.kind.to_proto() as i32,
            lat_e7: trackline_proto::to_e7(self.lat),
            lon_e7: trackline_proto::to_e7(self.lon),
            eta: self.eta.map(|e| e.to_proto()),
            reached_at_ms: self.reached_at_ms,
        }
    }
}

/// One stop of a courier's plan: an order's pickup or its dropoff.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanStop {
    #[schema(value_type = OrderId)]
    pub order_id: OrderId,
    pub kind: StopKind,
}

/// An active order a courier carries, as a plan sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedOrder {
    pub order_id: OrderId,
    /// The order has a pickup the courier has not left yet (not picked up).
    pub pickup_pending: bool,
}

impl CarriedOrder {
    /// The stops of the order still to visit, in their own order.
    fn stops(&self) -> impl Iterator<Item = PlanStop> + '_ {
        let pickup = self.pickup_pending.then_some(StopKind::Pickup);
        pickup
            .into_iter()
            .chain([StopKind::Dropoff])
            .map(|kind| PlanStop {
                order_id: self.order_id.clone(),
                kind,
            })
    }
}

/// Why a plan is refused; each is a 400 with [`PlanError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("order {0} is not an active order of this courier")]
    NotCarried(OrderId),
    #[error("order {0} has no pickup still to visit")]
    NoPickup(OrderId),
    #[error("the {1:?} of order {0} is in the plan twice")]
    Duplicate(OrderId, StopKind),
    #[error("the dropoff of order {0} comes before its pickup")]
    DropoffBeforePickup(OrderId),
}

impl PlanError {
    /// The error code of the answer.
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::NotCarried(_) => "plan_order_not_carried",
            PlanError::NoPickup(_) => "plan_no_such_stop",
            PlanError::Duplicate(..) => "plan_duplicate_stop",
            PlanError::DropoffBeforePickup(_) => "plan_dropoff_before_pickup",
        }
    }
}

/// Checks `plan` against the orders the courier carries: every stop is one still to visit, none
/// twice, and no dropoff before its order's pending pickup. A plan may leave stops out: they
/// follow it in the order of assignment ([`effective_plan`]).
///
/// # Errors
/// The first [`PlanError`] found, in plan order.
pub fn check_plan(plan: &[PlanStop], carried: &[CarriedOrder]) -> Result<(), PlanError> {
    let mut seen = std::collections::HashSet::with_capacity(plan.len());
    for stop in plan {
        let order = carried
            .iter()
            .find(|o| o.order_id == stop.order_id)
            .ok_or_else(|| PlanError::NotCarried(stop.order_id.clone()))?;
        if stop.kind == StopKind::Pickup && !order.pickup_pending {
            return Err(PlanError::NoPickup(stop.order_id.clone()));
        }
        if !seen.insert(stop) {
            return Err(PlanError::Duplicate(stop.order_id.clone(), stop.kind));
        }
        let pickup_first = PlanStop {
            order_id: stop.order_id.clone(),
            kind: StopKind::Pickup,
        };
        if stop.kind == StopKind::Dropoff && order.pickup_pending && !seen.contains(&pickup_first) {
            return Err(PlanError::DropoffBeforePickup(stop.order_id.clone()));
        }
    }
    Ok(())
}

/// The stops the courier will visit, in order: those of `explicit` still to visit (the stops of
/// ended orders and reached pickups drop out), then every other stop of `carried` in the order
/// of assignment, each order's pickup before its dropoff.
///
/// A dropoff whose pickup the explicit plan left out would come first; it waits for its pickup
/// instead, so the answer never breaks the rule [`check_plan`] keeps.
pub fn effective_plan(explicit: &[PlanStop], carried: &[CarriedOrder]) -> Vec<PlanStop> {
    let still_to_visit: Vec<PlanStop> = carried.iter().flat_map(CarriedOrder::stops).collect();
    let mut plan: Vec<PlanStop> = Vec::with_capacity(still_to_visit.len());
    for stop in explicit {
        if still_to_visit.contains(stop) && !plan.contains(stop) {
            plan.push(stop.clone());
        }
    }
    for stop in &still_to_visit {
        if plan.contains(stop) {
            continue;
        }
        match (
            stop.kind,
            plan.iter().position(|s| s.order_id == stop.order_id),
        ) {
            // A pickup the explicit plan left out goes before the dropoff it names.
            (StopKind::Pickup, Some(dropoff)) => plan.insert(dropoff, stop.clone()),
            _ => plan.push(stop.clone()),
        }
    }
    plan
}

/// What an order's estimator plans for in its courier's plan: every stop up to its own dropoff
/// (the last), and where its own pickup is among them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopsThrough {
    pub stops: Vec<PlannedStop>,
    pub own_pickup: Option<usize>,
}

/// The stops `order`'s courier visits up to `order`'s dropoff: first those it is at now
/// (`current`: pickups reached and not yet left, whose wait and handover are still ahead), then
/// `plan` (an [`effective_plan`]) up to the dropoff. `stop_of` gives each planned stop's place
/// and handover; a stop it does not know is left out. `None` when `order` is not in the plan.
pub fn stops_through<'a>(
    order: &OrderId,
    current: &[(&OrderId, &'a PlannedStop)],
    plan: &[PlanStop],
    stop_of: impl Fn(&PlanStop) -> Option<&'a PlannedStop>,
) -> Option<StopsThrough> {
    let mut through = StopsThrough {
        stops: Vec::with_capacity(current.len() + plan.len()),
        own_pickup: None,
    };
    for (at_order, stop) in current {
        if *at_order == order {
            through.own_pickup = Some(through.stops.len());
        }
        through.stops.push((*stop).clone());
    }
    for planned in plan {
        let Some(stop) = stop_of(planned) else {
            continue;
        };
        let own = planned.order_id == *order;
        if own && planned.kind == StopKind::Pickup {
            through.own_pickup = Some(through.stops.len());
        }
        through.stops.push(stop.clone());
        if own && planned.kind == StopKind::Dropoff {
            return Some(through);
        }
    }
    None
}

/// The interval the arrival falls in 8 times out of 10 (p10-p90), unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EtaWindow {
    pub earliest_ms: i64,
    pub latest_ms: i64,
}

/// The most a window reaches on either side of its estimate, seconds.
pub const MAX_WINDOW_SIDE_S: f64 = 12.0 * 3600.0;

/// What the estimator knows of its own uncertainty at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Uncertainty {
    /// Device time of the estimate and the estimated arrival, unix ms.
    pub now_ms: i64,
    pub arrive_at_ms: i64,
    /// How much of the time left is spent waiting for orders to be ready, ms: known, so it
    /// does not widen the window.
    pub waiting_ms: i64,
    /// Stops to visit before the one estimated.
    pub stops_ahead: usize,
    /// How much of the speed still rests on the prior: 1 at the first fix, towards 0 later.
    pub start_share: f64,
    /// How much the courier's pace swings around its mean (see the estimator's speed model).
    pub pace_variability: f64,
}

/// How the window is drawn around an estimate.
///
/// The spread of the time left `T` (riding, not waiting for an order to be ready) is `sigma = sqrt((rel x T)^2 + floor^2 + stops x stop^2)`,
/// with `rel^2 = base^2 + (pace_weight x pace variability)^2 + (start x start share)^2`: a
/// longer way left, a courier whose pace swings, a trip just begun and each stop ahead widen it.
/// The window is `[arrival - early x sigma, arrival + late x sigma]` (never before now): late
/// arrivals are likelier than early ones. The factors are calibrated with `trackctl eta-eval`
/// on the recorded trips (services/core/ETA.md), not set by hand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowModel {
    pub base_rel: f64,
    pub pace_weight: f64,
    pub start_rel: f64,
    pub floor_s: f64,
    pub per_stop_s: f64,
    pub early: f64,
    pub late: f64,
}

impl Default for WindowModel {
    fn default() -> Self {
        Self {
            // Chosen by a grid search with `trackctl eta-eval --pickup-at 0.4` on the recorded
            // trips: pooled coverage near 80 % in both protocols, each trip as near to it as
            // the others allow (services/core/ETA.md has the figures).
            base_rel: 0.15,
            pace_weight: 0.2,
            start_rel: 1.0,
            floor_s: 30.0,
            per_stop_s: 60.0,
            early: 1.28,
            late: 2.2,
        }
    }
}

impl WindowModel {
    /// The window around `u.arrive_at_ms`; it always contains it.
    pub fn window(&self, u: Uncertainty) -> EtaWindow {
        let left_s = ((u.arrive_at_ms - u.now_ms - u.waiting_ms) as f64 / 1000.0).max(0.0);
        let rel2 = self.base_rel.powi(2)
            + (self.pace_weight * u.pace_variability).powi(2)
            + (self.start_rel * u.start_share.clamp(0.0, 1.0)).powi(2);
        let sigma_s = (rel2 * left_s * left_s
            + self.floor_s.powi(2)
            + u.stops_ahead as f64 * self.per_stop_s.powi(2))
        .sqrt();
        // Whole seconds, as the ETA itself, and at most half a day on either side: a wider
        // window says nothing (and the resume buffer keeps each side in 16 bits).
        let side_ms = |factor: f64| (factor * sigma_s).round().min(MAX_WINDOW_SIDE_S) as i64 * 1000;
        let (early_ms, late_ms) = (side_ms(self.early), side_ms(self.late));
        EtaWindow {
            earliest_ms: (u.arrive_at_ms - early_ms)
                .max(u.now_ms)
                .min(u.arrive_at_ms),
            latest_ms: u.arrive_at_ms + late_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(left_s: i64, stops_ahead: usize, start_share: f64, pace: f64) -> Uncertainty {
        Uncertainty {
            now_ms: 1_000_000,
            arrive_at_ms: 1_000_000 + left_s * 1000,
            waiting_ms: 0,
            stops_ahead,
            start_share,
            pace_variability: pace,
        }
    }

    fn width(w: EtaWindow) -> i64 {
        w.latest_ms - w.earliest_ms
    }

    fn stop(order: &str, kind: StopKind) -> PlanStop {
        PlanStop {
            order_id: OrderId::new(order).unwrap(),
            kind,
        }
    }

    fn carried(order: &str, pickup_pending: bool) -> CarriedOrder {
        CarriedOrder {
            order_id: OrderId::new(order).unwrap(),
            pickup_pending,
        }
    }

    use StopKind::{Dropoff, Pickup};

    #[test]
    fn a_plan_names_only_stops_still_to_visit_once_each_and_no_drop_before_its_pickup() {
        let orders = [carried("a", true), carried("b", false)];
        let good = [stop("b", Dropoff), stop("a", Pickup), stop("a", Dropoff)];
        assert_eq!(check_plan(&good, &orders), Ok(()));
        assert_eq!(
            check_plan(&[], &orders),
            Ok(()),
            "an empty plan is assignment order"
        );
        let cases = [
            (vec![stop("x", Dropoff)], "plan_order_not_carried"),
            (vec![stop("b", Pickup)], "plan_no_such_stop"),
            (
                vec![stop("b", Dropoff), stop("b", Dropoff)],
                "plan_duplicate_stop",
            ),
            (
                vec![stop("a", Dropoff), stop("a", Pickup)],
                "plan_dropoff_before_pickup",
            ),
            (vec![stop("a", Dropoff)], "plan_dropoff_before_pickup"),
        ];
        for (plan, code) in cases {
            let refused = check_plan(&plan, &orders).expect_err(code);
            assert_eq!(refused.code(), code, "{plan:?}");
        }
    }

    #[test]
    fn without_a_plan_the_stops_follow_assignment_each_pickup_before_its_drop() {
        let orders = [carried("a", true), carried("b", true), carried("c", false)];
        assert_eq!(
            effective_plan(&[], &orders),
            [
                stop("a", Pickup),
                stop("a", Dropoff),
                stop("b", Pickup),
                stop("b", Dropoff),
                stop("c", Dropoff)
            ]
        );
    }

    #[test]
    fn an_explicit_plan_leads_and_loses_the_stops_no_longer_to_visit() {
        // Planned while "a" was still to collect and "gone" was carried.
        let explicit = [
            stop("b", Dropoff),
            stop("gone", Dropoff),
            stop("a", Pickup),
            stop("a", Dropoff),
        ];
        let now = [
            carried("a", false),
            carried("b", false),
            carried("new", true),
        ];
        assert_eq!(
            effective_plan(&explicit, &now),
            [
                stop("b", Dropoff),
                stop("a", Dropoff),
                stop("new", Pickup),
                stop("new", Dropoff)
            ]
        );
        // A dropoff planned without its pickup waits for it.
        let drop_only = [stop("a", Dropoff)];
        assert_eq!(
            effective_plan(&drop_only, &[carried("a", true)]),
            [stop("a", Pickup), stop("a", Dropoff)]
        );
    }

    fn planned(metres_north: f64, ready_at_ms: Option<i64>, dwell_s: f64) -> PlannedStop {
        PlannedStop {
            at: LatLon::new(62.6 + metres_north / 111_195.0, 29.76),
            route: None,
            handover: Handover {
                ready_at_ms,
                dwell_s,
            },
        }
    }

    #[test]
    fn an_order_plans_for_the_stops_before_its_door_from_where_the_courier_is() {
        let (a, b) = (OrderId::new("a").unwrap(), OrderId::new("b").unwrap());
        let (a_pickup, a_door, b_door) = (
            planned(100.0, None, 60.0),
            planned(500.0, None, 60.0),
            planned(900.0, None, 0.0),
        );
        let plan = [stop("a", Pickup), stop("b", Dropoff), stop("a", Dropoff)];
        let stop_of = |s: &PlanStop| match (s.order_id.as_str(), s.kind) {
            ("a", Pickup) => Some(&a_pickup),
            ("a", Dropoff) => Some(&a_door),
            ("b", Dropoff) => Some(&b_door),
            _ => None,
        };
        let for_a = stops_through(&a, &[], &plan, stop_of).unwrap();
        assert_eq!(
            for_a.stops,
            [a_pickup.clone(), b_door.clone(), a_door.clone()]
        );
        assert_eq!(for_a.own_pickup, Some(0));
        let for_b = stops_through(&b, &[], &plan, stop_of).unwrap();
        assert_eq!((for_b.stops.len(), for_b.own_pickup), (2, None));
        // At a's pickup (reached, not left): every order's way starts there.
        let at = planned(100.0, None, 60.0);
        let for_b = stops_through(&b, &[(&a, &at)], &plan[1..], stop_of).unwrap();
        assert_eq!(for_b.stops, [at.clone(), b_door.clone()]);
        assert!(stops_through(&OrderId::new("c").unwrap(), &[], &plan, stop_of).is_none());
    }

    #[test]
    fn each_stop_ahead_adds_its_wait_its_handover_and_the_leg_after_it() {
        use crate::eta::{EtaConfig, EtaEstimator};
        use crate::fix::Fix;
        let start = Fix {
            seq: 1,
            time_ms: 1_780_000_000_000,
            pos: LatLon::new(62.6, 29.76),
            accuracy_m: Some(5.0),
            speed_mps: Some(5.0),
            heading_deg: None,
        };
        let ready_at = start.time_ms + 1_800_000;
        // The door is where the other order's pickup is: no leg after it, only its wait and
        // its handover.
        let mut eta = EtaEstimator::with_stops(
            vec![
                planned(500.0, Some(ready_at), 300.0),
                planned(500.0, None, 0.0),
            ],
            EtaConfig::default(),
        );
        eta.update(&start, start.pos);
        let arrivals = eta.arrivals_ms();
        assert!(arrivals[0] < ready_at, "there before the order is ready");
        assert_eq!(arrivals[1], ready_at + 300_000);
        // Replanned: the stop headed to stays (its estimate too), the next is 500 m on.
        eta.replan(vec![planned(500.0, None, 60.0), planned(1000.0, None, 0.0)]);
        let replanned = eta.arrivals_ms();
        assert_eq!(replanned[0], arrivals[0]);
        assert!(
            replanned[1] > replanned[0] + 60_000 + 60_000,
            "{replanned:?}"
        );
        assert_eq!(eta.stops_ahead(), 1);
    }

    #[test]
    fn the_window_contains_the_estimate_and_widens_with_each_uncertainty() {
        let m = WindowModel::default();
        let near = m.window(at(120, 0, 0.0, 0.0));
        assert!(near.earliest_ms <= 1_120_000 && 1_120_000 <= near.latest_ms);
        let far = m.window(at(1200, 0, 0.0, 0.0));
        assert!(width(far) > width(near), "distance left");
        assert!(width(m.window(at(1200, 2, 0.0, 0.0))) > width(far), "stops");
        assert!(width(m.window(at(1200, 0, 1.0, 0.0))) > width(far), "start");
        assert!(width(m.window(at(1200, 0, 0.0, 0.8))) > width(far), "pace");
        let waiting = m.window(Uncertainty {
            waiting_ms: 1_000_000,
            ..at(1200, 0, 0.0, 0.0)
        });
        assert!(
            width(waiting) < width(far),
            "a wait for the food is no uncertainty"
        );
        let now = m.window(at(0, 0, 0.0, 0.0));
        assert_eq!(now.earliest_ms, 1_000_000, "never before now");
    }
}
