//! The timeline `trackctl replay` plays: every stored fix with the marker, speed and ETA of that
//! moment (see [`crate::track`]), and the order's status changes, in time order.

use std::io::{self, Write};

use serde::Serialize;
use trackline_core::filter::Verdict;
use trackline_core::fix::Fix;
use trackline_core::order::OrderStatus;
use trackline_core::stops::EtaWindow;
use trackline_core::LatLon;

use crate::track::{self, Step};
use crate::when::{format_clock, format_span};
use trackline_rest::OrderDetail;

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Fix(Box<FixEvent>),
    Status(StatusEvent),
}

/// A stored fix as it was at its moment.
#[derive(Debug, Clone, Serialize)]
pub struct FixEvent {
    pub time_ms: i64,
    pub seq: u64,
    /// Where the courier's device said it was.
    pub lat: f64,
    pub lon: f64,
    /// Where the marker was shown (the filter smooths, and holds a stopped courier still); null
    /// when this fix did not move the marker.
    pub shown: Option<LatLon>,
    /// The device's speed when it reported one, else the filter's smoothed speed, m/s.
    pub speed_mps: Option<f64>,
    /// `live`, `history_only` (kept but not shown: out of order or poor accuracy), `duplicate`,
    /// or `rejected` (the filter would refuse it today).
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The ETA at the door in force at this moment, seconds, and the arrival time it gives
    /// (unix ms): what the order published as its `eta`.
    pub eta_s: Option<i64>,
    pub arrive_at_ms: Option<i64>,
    /// The arrival window at the door in force (p10-p90, unix ms).
    pub window: Option<EtaWindow>,
    /// While the courier heads to the pickup: the ETA there, seconds, and its arrival time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup_eta_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup_arrive_at_ms: Option<i64>,
    /// The distance still to go to the stop the courier heads to (the pickup first, when the
    /// order has one), metres, and whether it was measured along the planned route.
    pub remaining_m: Option<f64>,
    pub on_route: Option<bool>,
}

/// A status change from the order's status log.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEvent {
    pub time_ms: i64,
    pub status: OrderStatus,
}

impl Event {
    pub fn time_ms(&self) -> i64 {
        match self {
            Event::Fix(f) => f.time_ms,
            Event::Status(s) => s.time_ms,
        }
    }

    pub fn is_fix(&self) -> bool {
        matches!(self, Event::Fix(_))
    }
}

impl FixEvent {
    fn from_step(step: &Step) -> FixEvent {
        FixEvent {
            time_ms: step.fix.time_ms,
            seq: step.fix.seq,
            lat: step.fix.pos.lat,
            lon: step.fix.pos.lon,
            shown: step.shown(),
            speed_mps: step.speed_mps(),
            verdict: step.verdict_name(),
            reason: match &step.verdict {
                Verdict::Rejected(r) => Some(format!("{}: {}", r.code.as_str(), r.reason)),
                _ => None,
            },
            eta_s: step.eta_seconds(),
            arrive_at_ms: step.door_arrive_at_ms,
            window: step.window,
            pickup_eta_s: step.pickup_eta_seconds(),
            pickup_arrive_at_ms: step.pickup_arrive_at_ms,
            remaining_m: step.eta.map(|e| e.remaining_m),
            on_route: step.eta.map(|e| e.on_route),
        }
    }
}

/// The whole timeline of an order: `fixes` (all of its history, oldest first, so the filter and
/// the ETA start where the server started) merged with its status log. A status change at the
/// same millisecond as a fix comes after it (`arriving` is caused by a fix and stamped with its
/// time).
pub fn timeline(detail: &OrderDetail, fixes: &[Fix]) -> Vec<Event> {
    let steps = track::run(fixes, detail);
    let mut events: Vec<Event> = steps
        .iter()
        .map(|s| Event::Fix(Box::new(FixEvent::from_step(s))))
        .collect();
    events.extend(detail.status_log.iter().flatten().map(|change| {
        Event::Status(StatusEvent {
            time_ms: change.at_ms,
            status: change.status,
        })
    }));
    // stable: fixes keep their order, and come before a status change of the same instant
    events.sort_by_key(|e| (e.time_ms(), !e.is_fix()));
    events
}

/// The events with `from_ms <= time <= to_ms`.
pub fn window(events: Vec<Event>, from_ms: Option<i64>, to_ms: Option<i64>) -> Vec<Event> {
    let from = from_ms.unwrap_or(i64::MIN);
    let to = to_ms.unwrap_or(i64::MAX);
    events
        .into_iter()
        .filter(|e| (from..=to).contains(&e.time_ms()))
        .collect()
}

/// Keeps at most one fix per `every_ms` of trip time (the first of each stretch, and the last
/// fix); status changes are always kept.
pub fn thin(events: Vec<Event>, every_ms: i64) -> Vec<Event> {
    let last_fix = events.iter().rposition(Event::is_fix);
    let mut next_due = i64::MIN;
    events
        .into_iter()
        .enumerate()
        .filter(|(i, e)| match e {
            Event::Status(_) => true,
            Event::Fix(f) if f.time_ms >= next_due || Some(*i) == last_fix => {
                next_due = f.time_ms.saturating_add(every_ms);
                true
            }
            Event::Fix(_) => false,
        })
        .map(|(_, e)| e)
        .collect()
}

/// The column heads of [`write_row`].
pub fn write_header(mut out: impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{:<8}  {:>7}  {:>10}  {:>11}  {:>6}  {:>7}  {:<8}  {:<11}  note",
        "time", "elapsed", "lat", "lon", "km/h", "eta", "arrive", "window"
    )
}

/// One event as a line for people; times are UTC, `elapsed` counts from `start_ms`.
pub fn write_row(mut out: impl Write, event: &Event, start_ms: i64) -> io::Result<()> {
    let elapsed = format_elapsed(event.time_ms() - start_ms);
    match event {
        Event::Status(s) => writeln!(
            out,
            "{:<8}  {:>7}  -- status {} --",
            format_clock(s.time_ms),
            elapsed,
            s.status
        ),
        Event::Fix(f) => {
            let speed = f
                .speed_mps
                .map_or_else(|| "-".to_string(), |v| format!("{:.1}", v * 3.6));
            let eta = f
                .eta_s
                .map_or_else(|| "-".to_string(), |s| format_span(s as f64));
            let arrive = f.arrive_at_ms.map_or_else(|| "-".to_string(), format_clock);
            let window = f.window.map_or_else(
                || "-".to_string(),
                |w| format!("{}-{}", minutes(w.earliest_ms), minutes(w.latest_ms)),
            );
            let mut notes: Vec<String> = Vec::new();
            if let Some(pickup_s) = f.pickup_eta_s {
                notes.push(format!("pickup in {}", format_span(pickup_s as f64)));
            }
            match f.verdict {
                "live" => {}
                "history_only" => notes.push("not shown (out of order or poor accuracy)".into()),
                "duplicate" => notes.push("duplicate".into()),
                _ => notes.push(f.reason.clone().unwrap_or_else(|| f.verdict.to_string())),
            }
            if f.on_route == Some(false) {
                notes.push("off route: straight line".into());
            }
            let line = format!(
                "{:<8}  {:>7}  {:>10.6}  {:>11.6}  {:>6}  {:>7}  {:<8}  {:<11}  {}",
                format_clock(f.time_ms),
                elapsed,
                f.lat,
                f.lon,
                speed,
                eta,
                arrive,
                window,
                notes.join("; ")
            );
            writeln!(out, "{}", line.trim_end())
        }
    }
}

/// `12:05`: the hour and minute (UTC) of an instant, as an arrival window is read.
fn minutes(ms: i64) -> String {
    format_clock(ms).chars().take(5).collect()
}

/// `+4:05`, `+1:02:03`, `-0:03` (before the first fix).
fn format_elapsed(ms: i64) -> String {
    let s = (ms.unsigned_abs() + 500) / 1000;
    let sign = if ms < 0 && s > 0 { "-" } else { "+" };
    if s >= 3600 {
        format!("{sign}{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    } else {
        format!("{sign}{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(log: &[(OrderStatus, i64)]) -> OrderDetail {
        crate::track::test_detail(
            LatLon::new(45.01, 13.0),
            Some(vec![[45.0, 13.0], [45.01, 13.0]]),
            log,
        )
    }

    fn fixes(n: u64) -> Vec<Fix> {
        (0..n)
            .map(|i| Fix {
                seq: i + 1,
                time_ms: 1000 * i as i64,
                pos: LatLon::new(45.0 + i as f64 * 1e-4, 13.0),
                accuracy_m: None,
                speed_mps: None,
                heading_deg: None,
            })
            .collect()
    }

    #[test]
    fn status_changes_are_merged_in_time_after_a_fix_of_the_same_instant() {
        let log = [
            (OrderStatus::Assigned, -5000),
            (OrderStatus::PickedUp, 2000),
            (OrderStatus::Arriving, 4000),
        ];
        let events = timeline(&detail(&log), &fixes(6));
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Fix(f) => format!("f{}", f.seq),
                Event::Status(s) => s.status.to_string(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "assigned",
                "f1",
                "f2",
                "f3",
                "picked_up",
                "f4",
                "f5",
                "arriving",
                "f6"
            ]
        );
        let windowed = window(events, Some(2000), Some(3000));
        assert_eq!(windowed.len(), 3);
    }

    #[test]
    fn every_fix_has_the_eta_of_its_moment_on_the_route() {
        let events = timeline(&detail(&[]), &fixes(20));
        let etas: Vec<i64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Fix(f) => f.eta_s,
                Event::Status(_) => None,
            })
            .collect();
        assert_eq!(etas.len(), 20);
        assert!(etas.last() < etas.first(), "{etas:?}");
        let Event::Fix(last) = events.last().unwrap() else {
            panic!("not a fix")
        };
        assert_eq!(last.on_route, Some(true));
    }

    #[test]
    fn thinning_keeps_statuses_and_the_last_fix() {
        let log = [(OrderStatus::PickedUp, 2500)];
        let events = thin(timeline(&detail(&log), &fixes(10)), 4000);
        let times: Vec<i64> = events.iter().map(Event::time_ms).collect();
        assert_eq!(times, [0, 2500, 4000, 8000, 9000]);
    }

    #[test]
    fn rows_read_as_a_table() {
        let events = timeline(&detail(&[(OrderStatus::PickedUp, 61_000)]), &fixes(2));
        let mut out = Vec::new();
        write_header(&mut out).unwrap();
        for e in &events {
            write_row(&mut out, e, 0).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("time") && lines[0].ends_with("note"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("00:00:00    +0:00   45.000000    13.000000     0.0"),
            "{text}"
        );
        assert_eq!(lines[3], "00:01:01    +1:01  -- status picked_up --");
        assert_eq!(format_elapsed(3_723_000), "+1:02:03");
        assert_eq!(format_elapsed(-200), "+0:00");
        assert_eq!(format_elapsed(-61_000), "-1:01");
    }
}
