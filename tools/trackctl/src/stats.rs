//! The figures of `trackctl stats`: distance raw and as displayed, duration, moving time, stops,
//! speeds, and what was refused, measured on an order's stored fixes.
//!
//! The *raw* distance joins every stored fix. The *filtered* distance joins the positions the
//! marker was shown at after the server's GPS filter ([`crate::track`]): no jitter of a standing
//! courier, no single wild fix. Stops are found on that displayed path: a stretch of at least
//! [`StopRule::min_duration_s`] during which the marker stays within `below_mps x min_duration_s`
//! of where the stretch began, i.e. the courier averaged less than [`StopRule::below_mps`].
//! Moving time is the duration minus the stops.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use trackline_core::fix::Fix;
use trackline_core::LatLon;

use crate::track::{self, Step};
use crate::when::{format_clock, format_span, format_utc};
use trackline_rest::OrderDetail;

/// What counts as a stop.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StopRule {
    /// Slower than this on average, m/s...
    pub below_mps: f64,
    /// ...for at least this long, seconds.
    pub min_duration_s: f64,
}

impl Default for StopRule {
    fn default() -> Self {
        Self {
            below_mps: 0.5,
            min_duration_s: 30.0,
        }
    }
}

impl StopRule {
    /// How far the marker may drift during a stop, metres.
    pub fn radius_m(&self) -> f64 {
        self.below_mps * self.min_duration_s
    }
}

/// One stop.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stop {
    pub start_ms: i64,
    pub end_ms: i64,
    pub duration_s: f64,
    /// Where the marker stood.
    pub lat: f64,
    pub lon: f64,
}

/// What the GPS filter does with the stored fixes today.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FilterCounts {
    pub live: usize,
    pub history_only: usize,
    pub duplicate: usize,
    pub rejected: BTreeMap<String, usize>,
}

/// The figures of one order's route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStats {
    pub order_id: String,
    pub status: String,
    /// Fixes stored for the order.
    pub fixes: usize,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub duration_s: f64,
    /// Joining every stored fix, metres.
    pub distance_raw_m: f64,
    /// Joining the displayed (filtered) positions, metres.
    pub distance_filtered_m: f64,
    /// Duration minus the stops, seconds.
    pub moving_s: f64,
    /// Filtered distance over the duration, m/s.
    pub avg_speed_mps: f64,
    /// Filtered distance over the moving time, m/s.
    pub avg_moving_speed_mps: f64,
    /// The highest speed: the device's when it reported one, else the filter's smoothed speed, m/s.
    pub max_speed_mps: f64,
    pub stop_rule: StopRule,
    pub stops: Vec<Stop>,
    /// The filter run again over the stored fixes.
    pub filter: FilterCounts,
    /// Fixes the server refused when they arrived (never stored), by code.
    pub rejected_by_server: BTreeMap<String, u64>,
}

/// Measures `fixes` (the order's whole history, oldest first).
pub fn measure(detail: &OrderDetail, fixes: &[Fix], rule: StopRule) -> RouteStats {
    let steps = track::run(fixes, detail);
    let distance_raw_m = path_length(fixes.iter().map(|f| f.pos));
    let shown: Vec<(i64, LatLon)> = steps
        .iter()
        .filter_map(|s| s.shown().map(|p| (s.fix.time_ms, p)))
        .collect();
    let distance_filtered_m = path_length(shown.iter().map(|(_, p)| *p));
    let (first_ms, last_ms) = (
        fixes.first().map(|f| f.time_ms),
        fixes.last().map(|f| f.time_ms),
    );
    let duration_s = match (first_ms, last_ms) {
        (Some(a), Some(b)) => (b - a) as f64 / 1000.0,
        _ => 0.0,
    };
    let stops = find_stops(&shown, rule);
    let stopped_s: f64 = stops.iter().map(|s| s.duration_s).sum();
    let moving_s = (duration_s - stopped_s).max(0.0);
    let per_s = |m: f64, s: f64| if s > 0.0 { m / s } else { 0.0 };
    RouteStats {
        order_id: detail.state.order_id.to_string(),
        status: detail.state.status.to_string(),
        fixes: fixes.len(),
        first_ms,
        last_ms,
        duration_s,
        distance_raw_m,
        distance_filtered_m,
        moving_s,
        avg_speed_mps: per_s(distance_filtered_m, duration_s),
        avg_moving_speed_mps: per_s(distance_filtered_m, moving_s),
        max_speed_mps: steps
            .iter()
            .filter(|s| s.shown().is_some())
            .filter_map(Step::speed_mps)
            .fold(0.0, f64::max),
        stop_rule: rule,
        stops,
        filter: count_verdicts(&steps),
        rejected_by_server: detail.rejected.clone().unwrap_or_default(),
    }
}

fn path_length(points: impl Iterator<Item = LatLon>) -> f64 {
    let mut total = 0.0;
    let mut prev: Option<LatLon> = None;
    for p in points {
        if let Some(q) = prev {
            total += q.distance_m(p);
        }
        prev = Some(p);
    }
    total
}

fn count_verdicts(steps: &[Step]) -> FilterCounts {
    let mut counts = FilterCounts::default();
    for step in steps {
        match &step.verdict {
            trackline_core::filter::Verdict::Live(_) => counts.live += 1,
            trackline_core::filter::Verdict::HistoryOnly => counts.history_only += 1,
            trackline_core::filter::Verdict::Duplicate => counts.duplicate += 1,
            trackline_core::filter::Verdict::Rejected(r) => {
                *counts
                    .rejected
                    .entry(r.code.as_str().to_string())
                    .or_default() += 1;
            }
        }
    }
    counts
}

/// Stay points on the displayed path: from each position, the longest run of following ones
/// within the rule's radius; a run that lasts long enough is a stop, and the search goes on after
/// it.
pub fn find_stops(path: &[(i64, LatLon)], rule: StopRule) -> Vec<Stop> {
    let radius = rule.radius_m();
    let min_ms = (rule.min_duration_s * 1000.0).round() as i64;
    let mut stops = Vec::new();
    let mut i = 0;
    while i < path.len() {
        let anchor = path[i].1;
        let mut j = i;
        while j + 1 < path.len() && anchor.distance_m(path[j + 1].1) <= radius {
            j += 1;
        }
        // the radius also takes in the last metres of the approach and the first of the
        // departure: trim the ends that still move at walking pace
        let moving = |a: (i64, LatLon), b: (i64, LatLon)| {
            let dt_s = (b.0 - a.0) as f64 / 1000.0;
            dt_s > 0.0 && a.1.distance_m(b.1) / dt_s >= rule.below_mps
        };
        let mut first = i;
        while first < j && moving(path[first], path[first + 1]) {
            first += 1;
        }
        let mut last = j;
        while last > first && moving(path[last - 1], path[last]) {
            last -= 1;
        }
        let (start_ms, end_ms) = (path[first].0, path[last].0);
        if last > first && end_ms - start_ms >= min_ms {
            let n = (last - first + 1) as f64;
            let (lat, lon) = path[first..=last]
                .iter()
                .fold((0.0, 0.0), |(a, b), (_, p)| (a + p.lat, b + p.lon));
            stops.push(Stop {
                start_ms,
                end_ms,
                duration_s: (end_ms - start_ms) as f64 / 1000.0,
                lat: lat / n,
                lon: lon / n,
            });
            i = j + 1;
        } else {
            i += 1;
        }
    }
    stops
}

impl RouteStats {
    /// The figures for people, one per line.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write_human(&self, mut out: impl Write) -> io::Result<()> {
        let km = |m: f64| format!("{:.2} km", m / 1000.0);
        let kmh = |v: f64| format!("{:.1} km/h", v * 3.6);
        writeln!(out, "order            {} ({})", self.order_id, self.status)?;
        let span = match (self.first_ms, self.last_ms) {
            (Some(a), Some(b)) => format!("{} .. {}", format_utc(a), format_clock(b)),
            _ => "-".into(),
        };
        writeln!(out, "fixes stored     {} ({span})", self.fixes)?;
        writeln!(
            out,
            "distance         {} filtered, {} raw",
            km(self.distance_filtered_m),
            km(self.distance_raw_m)
        )?;
        writeln!(
            out,
            "duration         {}, moving {}",
            format_span(self.duration_s),
            format_span(self.moving_s)
        )?;
        writeln!(
            out,
            "speed            {} average, {} moving, {} max",
            kmh(self.avg_speed_mps),
            kmh(self.avg_moving_speed_mps),
            kmh(self.max_speed_mps)
        )?;
        writeln!(
            out,
            "stops            {} (slower than {} m/s for {} s or more){}",
            self.stops.len(),
            self.stop_rule.below_mps,
            self.stop_rule.min_duration_s,
            if self.stops.is_empty() { "" } else { ":" }
        )?;
        for stop in &self.stops {
            writeln!(
                out,
                "  {} .. {}  {:>7}  at {:.6}, {:.6}",
                format_clock(stop.start_ms),
                format_clock(stop.end_ms),
                format_span(stop.duration_s),
                stop.lat,
                stop.lon
            )?;
        }
        writeln!(
            out,
            "refused          {}",
            codes(
                self.rejected_by_server
                    .iter()
                    .map(|(c, n)| (c.as_str(), *n))
            )
        )?;
        let f = &self.filter;
        let mut refiltered = format!("{} live, {} not shown", f.live, f.history_only);
        if f.duplicate > 0 {
            refiltered.push_str(&format!(", {} duplicate", f.duplicate));
        }
        if !f.rejected.is_empty() {
            let rejected = codes(f.rejected.iter().map(|(c, n)| (c.as_str(), *n as u64)));
            refiltered.push_str(&format!(", would refuse {rejected}"));
        }
        writeln!(out, "filter replayed  {refiltered}")
    }
}

fn codes<'a>(counts: impl Iterator<Item = (&'a str, u64)>) -> String {
    let counts: Vec<(&str, u64)> = counts.collect();
    if counts.is_empty() {
        return "none".to_string();
    }
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = counts
        .iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(seconds, metres north of a point)`
    fn path(points: &[(i64, f64)]) -> Vec<(i64, LatLon)> {
        points
            .iter()
            .map(|&(t, north)| {
                (
                    t * 1000,
                    LatLon::new(45.0 + north / trackline_core::plane::M_PER_DEG, 13.0),
                )
            })
            .collect()
    }

    #[test]
    fn a_long_wait_is_a_stop_and_a_red_light_is_not() {
        let mut points = Vec::new();
        let mut north = 0.0;
        // walk 60 s at 1.5 m/s, wait 20 s (a light), walk 30 s, wait 90 s, walk 30 s
        for t in 0..230 {
            let walking = !(60..80).contains(&t) && !(110..200).contains(&t);
            if walking {
                north += 1.5;
            }
            points.push((t, north));
        }
        let stops = find_stops(&path(&points), StopRule::default());
        assert_eq!(stops.len(), 1, "{stops:?}");
        let stop = stops[0];
        // the wait, give or take the few seconds of walking the radius allows
        assert_eq!((stop.start_ms, stop.end_ms), (109_000, 199_000), "{stop:?}");
        assert_eq!(stop.duration_s, 90.0);
    }

    #[test]
    fn a_slow_walk_is_no_stop() {
        let points: Vec<(i64, f64)> = (0..300).map(|t| (t, t as f64 * 0.6)).collect();
        assert!(find_stops(&path(&points), StopRule::default()).is_empty());
    }

    #[test]
    fn codes_are_summed_and_listed() {
        assert_eq!(codes(std::iter::empty()), "none");
        assert_eq!(
            codes([("impossible_speed", 2), ("too_old", 1)].into_iter()),
            "3 (2 impossible_speed, 1 too_old)"
        );
    }
}
