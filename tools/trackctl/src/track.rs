//! An order's stored fixes run again through the server's own GPS filter and ETA estimator
//! (`trackline_core`, default settings, as the server runs them), so that `replay` can show the
//! marker and the ETA as they were at each moment, and `stats` can measure the displayed path.
//!
//! Refused fixes are not stored, so they cannot be replayed: after a refused jump the filter here
//! can differ from the server's for a fix or two (the server had the jump as a candidate).

use trackline_core::eta::{EtaConfig, EtaEstimate, EtaEstimator};
use trackline_core::filter::{FilterConfig, GpsFilter, Verdict};
use trackline_core::fix::Fix;
use trackline_core::LatLon;

/// One stored fix and what the filter and the estimator made of it.
#[derive(Debug, Clone)]
pub struct Step {
    pub fix: Fix,
    pub verdict: Verdict,
    /// The filter's smoothed ground speed after this fix, m/s.
    pub smoothed_speed_mps: Option<f64>,
    /// The estimate in force after this fix: made at it when it was live, else the last one.
    pub eta: Option<EtaEstimate>,
    /// True when `eta` was made at this fix.
    pub eta_is_fresh: bool,
}

impl Step {
    /// Where the marker was shown after this fix, if this fix moved (or held) it.
    pub fn shown(&self) -> Option<LatLon> {
        match self.verdict {
            Verdict::Live(shown) => Some(shown),
            _ => None,
        }
    }

    /// The seconds to arrival as seen at this fix's time (an older estimate counts down).
    pub fn eta_seconds(&self) -> Option<i64> {
        self.eta.map(|e| {
            ((e.arrive_at_ms - self.fix.time_ms) as f64 / 1000.0)
                .round()
                .max(0.0) as i64
        })
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

/// Runs `fixes` (oldest first) through a fresh filter and an estimator for `destination` and
/// `route`, as the server's order actor does with each fix it accepts.
pub fn run(fixes: &[Fix], destination: LatLon, route: Option<Vec<LatLon>>) -> Vec<Step> {
    let mut filter = GpsFilter::new(FilterConfig::default());
    let mut estimator = EtaEstimator::new(destination, route, EtaConfig::default());
    let mut in_force: Option<EtaEstimate> = None;
    fixes
        .iter()
        .map(|fix| {
            let verdict = filter.assess(fix);
            let fresh = if let Verdict::Live(shown) = verdict {
                in_force = Some(estimator.update(fix, shown));
                true
            } else {
                false
            };
            Step {
                fix: *fix,
                verdict,
                smoothed_speed_mps: filter.speed_mps(),
                eta: in_force,
                eta_is_fresh: fresh,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_eta_counts_down_through_fixes_that_do_not_move_the_marker() {
        // north at ~11 m/s, then one fix resent (a duplicate) and one older than the last
        let mut fixes: Vec<Fix> = (0..30)
            .map(|i| fix(i, i as i64, 45.0 + i as f64 * 1e-4))
            .collect();
        fixes.push(fixes[29]);
        let destination = LatLon::new(45.01, 13.0);
        let steps = run(&fixes, destination, None);
        assert_eq!(steps.len(), 31);
        assert_eq!(steps[0].verdict_name(), "live");
        assert_eq!(steps[30].verdict_name(), "duplicate");
        assert!(!steps[30].eta_is_fresh && steps[30].eta == steps[29].eta);
        let first = steps[0].eta_seconds().unwrap();
        let last = steps[29].eta_seconds().unwrap();
        assert!(last < first, "{first} -> {last}");
        assert!(steps[29].speed_mps().unwrap() > 5.0);
    }
}
