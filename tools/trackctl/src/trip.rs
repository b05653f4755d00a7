//! A recorded trip: the `t_unix,lat,lon` CSV files that drive simulated couriers, and the planned
//! route an order gets from one.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context};
use geo::{LineString, SimplifyIdx};
use trackline_core::plane::LocalPlane;
use trackline_core::LatLon;

/// One recorded fix of a trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TripPoint {
    /// Recording time in seconds (unix seconds in the files; only differences matter here).
    pub t_s: f64,
    pub pos: LatLon,
}

/// A trip as recorded: at least one point, times never going backwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// Where it came from, for messages (usually the file name).
    pub name: String,
    pub points: Vec<TripPoint>,
}

/// Column names accepted in a header line, first match wins.
const TIME_COLUMNS: &[&str] = &["t_unix", "t", "time", "timestamp"];
const LAT_COLUMNS: &[&str] = &["lat", "latitude"];
const LON_COLUMNS: &[&str] = &["lon", "lng", "longitude"];

/// Routes longer than this are thinned further: a route is sent in one JSON body and drawn on a map.
const MAX_ROUTE_POINTS: usize = 1000;

impl Trip {
    /// Reads a trip from a file: GPX when the name ends in `.gpx` (any case), CSV otherwise.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid trip (see [`Trip::from_reader`] and
    /// [`Trip::from_gpx_reader`]).
    pub fn from_path(path: &Path) -> anyhow::Result<Trip> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening trip {}", path.display()))?;
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let is_gpx = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("gpx"));
        let trip = if is_gpx {
            Trip::from_gpx_reader(&name, std::io::BufReader::new(file))
        } else {
            Trip::from_reader(&name, file)
        };
        trip.with_context(|| format!("reading trip {}", path.display()))
    }

    /// Reads a GPX document: every track point of every track and segment, in document order.
    /// Waypoints and routes are not part of a recording and are ignored.
    ///
    /// # Errors
    /// When the XML is not GPX, there is no track point, a point has no `<time>` (the message
    /// names the trip and the point), or time goes backwards.
    pub fn from_gpx_reader(name: &str, reader: impl Read) -> anyhow::Result<Trip> {
        let doc = gpx::read(reader).map_err(|e| anyhow::anyhow!("not a valid GPX file: {e}"))?;
        let mut points: Vec<TripPoint> = Vec::new();
        for (t, track) in doc.tracks.iter().enumerate() {
            for (s, segment) in track.segments.iter().enumerate() {
                for (p, waypoint) in segment.points.iter().enumerate() {
                    let at = || format!("track {} segment {} point {}", t + 1, s + 1, p + 1);
                    let Some(time) = waypoint.time else {
                        bail!(
                            "{name}: {} has no <time>; simulate needs a timestamp on every track \
                             point (a planned route without times is not a recording)",
                            at()
                        );
                    };
                    let time: time::OffsetDateTime = time.into();
                    let t_s = time.unix_timestamp_nanos() as f64 / 1e9;
                    let point = waypoint.point();
                    let pos = LatLon::new(point.y(), point.x());
                    ensure!(
                        pos.is_valid(),
                        "{}: position {}, {} is outside lat -90..90, lon -180..180",
                        at(),
                        pos.lat,
                        pos.lon
                    );
                    if let Some(prev) = points.last() {
                        ensure!(
                            t_s >= prev.t_s,
                            "{}: time {} is before the previous point's {}; trips must be in time order",
                            at(),
                            t_s,
                            prev.t_s
                        );
                    }
                    points.push(TripPoint { t_s, pos });
                }
            }
        }
        ensure!(
            !points.is_empty(),
            "{name}: no track points (<trkpt>) in the GPX file"
        );
        Ok(Trip {
            name: name.to_string(),
            points,
        })
    }

    /// The same trip with one point every `1 / rate_hz` seconds of recorded time, positions
    /// interpolated linearly between the recorded fixes; the first and last points are kept.
    /// More points than recorded when the rate is higher than the recording's, fewer when lower.
    /// A trip of one point or no duration is returned unchanged.
    pub fn resampled(&self, rate_hz: f64) -> Trip {
        let duration = self.duration_s();
        if self.points.len() < 2 || duration <= 0.0 || !(rate_hz.is_finite() && rate_hz > 0.0) {
            return self.clone();
        }
        let step = 1.0 / rate_hz;
        let start = self.points[0].t_s;
        let mut points = Vec::new();
        let mut segment = 0;
        let mut k = 0u64;
        loop {
            let t = start + k as f64 * step;
            // a hair of slack so that floating error does not add a point right before the end
            if t >= start + duration - step * 1e-6 {
                break;
            }
            while segment + 2 < self.points.len() && self.points[segment + 1].t_s <= t {
                segment += 1;
            }
            let (a, b) = (self.points[segment], self.points[segment + 1]);
            let span = b.t_s - a.t_s;
            let f = if span > 0.0 {
                ((t - a.t_s) / span).clamp(0.0, 1.0)
            } else {
                1.0
            };
            points.push(TripPoint {
                t_s: t,
                pos: LatLon::new(
                    a.pos.lat + (b.pos.lat - a.pos.lat) * f,
                    a.pos.lon + (b.pos.lon - a.pos.lon) * f,
                ),
            });
            k += 1;
        }
        points.extend(self.points.last().copied());
        Trip {
            name: self.name.clone(),
            points,
        }
    }

    /// Fixes per second of recorded time, on average (`None` for a trip without duration).
    pub fn rate_hz(&self) -> Option<f64> {
        let duration = self.duration_s();
        (duration > 0.0).then(|| (self.points.len() - 1) as f64 / duration)
    }

    /// Reads CSV `t_unix,lat,lon`: seconds (fractions allowed) and WGS84 degrees.
    ///
    /// A header line is optional; when present its names pick the columns, so extra columns and
    /// another order are fine. Lines starting with `#` are comments.
    ///
    /// # Errors
    /// When there is no point, a value is not a number, a coordinate is out of range, or time goes
    /// backwards; the message names the line.
    pub fn from_reader(name: &str, reader: impl Read) -> anyhow::Result<Trip> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(reader);
        let mut columns = [0usize, 1, 2];
        let mut points: Vec<TripPoint> = Vec::new();
        for (index, record) in csv.records().enumerate() {
            let record = record.context("malformed CSV")?;
            let line = record
                .position()
                .map_or(index as u64 + 1, csv::Position::line);
            if index == 0
                && record
                    .get(0)
                    .is_some_and(|first| first.parse::<f64>().is_err())
            {
                columns =
                    header_columns(&record).with_context(|| format!("line {line}: header"))?;
                continue;
            }
            let point = parse_point(&record, columns).with_context(|| format!("line {line}"))?;
            if let Some(prev) = points.last() {
                ensure!(
                    point.t_s >= prev.t_s,
                    "line {line}: time {} is before the previous fix's {}; trips must be in time order",
                    point.t_s,
                    prev.t_s
                );
            }
            points.push(point);
        }
        ensure!(
            !points.is_empty(),
            "no fixes: expected CSV lines `t_unix,lat,lon`"
        );
        Ok(Trip {
            name: name.to_string(),
            points,
        })
    }

    /// The last point: where the trip, and so the simulated order, ends.
    pub fn destination(&self) -> LatLon {
        // points is never empty: both constructors refuse an empty trip
        self.points.last().map_or(LatLon::new(0.0, 0.0), |p| p.pos)
    }

    /// The index of the last point at or before `fraction` (0 to 1) of the trip's duration: where
    /// a simulated pickup along the trip is.
    pub fn index_at(&self, fraction: f64) -> usize {
        let first = self.points.first().map_or(0.0, |p| p.t_s);
        let at_s = first + self.duration_s() * fraction.clamp(0.0, 1.0);
        self.points.iter().rposition(|p| p.t_s <= at_s).unwrap_or(0)
    }

    /// The points `range` of the trip, as a trip of their own (a leg of it).
    pub fn leg(&self, range: std::ops::RangeInclusive<usize>) -> Trip {
        Trip {
            name: self.name.clone(),
            points: self.points[range].to_vec(),
        }
    }

    /// Recorded duration in seconds.
    pub fn duration_s(&self) -> f64 {
        match (self.points.first(), self.points.last()) {
            (Some(first), Some(last)) => last.t_s - first.t_s,
            _ => 0.0,
        }
    }

    /// A typical moving speed in metres per second: the median of the speeds between consecutive
    /// fixes while moving (stops and single GPS jumps do not move a median). `None` when the trip
    /// never moves.
    pub fn typical_speed_mps(&self) -> Option<f64> {
        // below this a "move" between two fixes is GPS jitter of someone standing still
        const MOVING_MPS: f64 = 0.5;
        let mut speeds: Vec<f64> = self
            .points
            .windows(2)
            .filter(|w| w[1].t_s > w[0].t_s)
            .map(|w| w[0].pos.distance_m(w[1].pos) / (w[1].t_s - w[0].t_s))
            .filter(|speed| *speed >= MOVING_MPS)
            .collect();
        if speeds.is_empty() {
            return None;
        }
        speeds.sort_by(f64::total_cmp);
        speeds.get(speeds.len() / 2).copied()
    }

    /// The trip's path as a planned route: one point every `spacing_m` or so, straightened where
    /// it barely bends, first and last points kept.
    ///
    /// This is crude on purpose: a route only needs to be good enough for an along-route ETA, and
    /// GPS noise (a walk zig-zagging over the street) should not become part of the plan.
    pub fn simplified_route(&self, spacing_m: f64) -> Vec<LatLon> {
        let mut spacing_m = spacing_m.max(1.0);
        loop {
            let route = simplify(&self.points, spacing_m);
            if route.len() <= MAX_ROUTE_POINTS {
                return route;
            }
            spacing_m *= 2.0;
        }
    }
}

fn header_columns(header: &csv::StringRecord) -> anyhow::Result<[usize; 3]> {
    let find = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
            .with_context(|| {
                format!(
                    "no column named {} in {:?}",
                    names.join(" or "),
                    header.iter().collect::<Vec<_>>()
                )
            })
    };
    Ok([find(TIME_COLUMNS)?, find(LAT_COLUMNS)?, find(LON_COLUMNS)?])
}

fn parse_point(record: &csv::StringRecord, [t, lat, lon]: [usize; 3]) -> anyhow::Result<TripPoint> {
    let field = |index: usize, what: &str| -> anyhow::Result<f64> {
        let raw = record
            .get(index)
            .with_context(|| format!("missing {what} (column {})", index + 1))?;
        let value: f64 = raw
            .parse()
            .with_context(|| format!("{what} {raw:?} is not a number"))?;
        ensure!(value.is_finite(), "{what} {raw:?} is not a finite number");
        Ok(value)
    };
    let point = TripPoint {
        t_s: field(t, "time")?,
        pos: LatLon::new(field(lat, "lat")?, field(lon, "lon")?),
    };
    if !point.pos.is_valid() {
        bail!(
            "position {}, {} is outside lat -90..90, lon -180..180",
            point.pos.lat,
            point.pos.lon
        );
    }
    Ok(point)
}

fn simplify(points: &[TripPoint], spacing_m: f64) -> Vec<LatLon> {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Vec::new();
    };
    // keep a point whenever we are spacing_m away from the last kept one
    let mut kept = vec![first.pos];
    for point in &points[1..] {
        if kept
            .last()
            .is_some_and(|k| k.distance_m(point.pos) >= spacing_m)
        {
            kept.push(point.pos);
        }
    }
    if kept.len() > 1
        && kept
            .last()
            .is_some_and(|k| k.distance_m(last.pos) < spacing_m / 2.0)
    {
        // the destination replaces a kept point that is nearly on top of it
        kept.pop();
    }
    if kept.last() != Some(&last.pos) {
        kept.push(last.pos);
    }
    // then drop points that sit on a straight line: Douglas-Peucker in local metres
    // (degrees of longitude shrink with latitude, so plain degrees would be anisotropic)
    let plane = LocalPlane::at(first.pos);
    let local: LineString<f64> = kept
        .iter()
        .map(|p| plane.to_local(*p))
        .collect::<Vec<_>>()
        .into();
    local
        .simplify_idx(spacing_m / 10.0)
        .into_iter()
        .map(|i| kept[i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_comments_and_fractional_seconds() {
        let csv =
            "t_unix,lat,lon\n# a comment\n1608272150.5, 45.27, 13.71\n1608272151.25,45.28,13.72\n";
        let trip = Trip::from_reader("t", csv.as_bytes()).unwrap();
        assert_eq!(trip.points.len(), 2);
        assert_eq!(
            trip.points[0],
            TripPoint {
                t_s: 1608272150.5,
                pos: LatLon::new(45.27, 13.71)
            }
        );
        assert!((trip.duration_s() - 0.75).abs() < 1e-9);
        assert_eq!(trip.destination(), LatLon::new(45.28, 13.72));
    }

    #[test]
    fn header_names_pick_the_columns() {
        let csv = "lon,speed,lat,time\n13.71,3,45.27,10\n13.72,3,45.28,11\n";
        let trip = Trip::from_reader("t", csv.as_bytes()).unwrap();
        assert_eq!(
            trip.points[1],
            TripPoint {
                t_s: 11.0,
                pos: LatLon::new(45.28, 13.72)
            }
        );
    }

    #[test]
    fn headerless_files_are_positional() {
        let trip = Trip::from_reader("t", "1,45.0,13.0\n2,45.1,13.1\n".as_bytes()).unwrap();
        assert_eq!(trip.points.len(), 2);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("t_unix,lat,lon\n1,45,13\n2,95,13\n", "line 3"),
            ("t_unix,lat,lon\n1,45,13\n2,abc,13\n", "line 3"),
            ("t_unix,lat,lon\n5,45,13\n4,45,13\n", "line 3"),
            ("t_unix,lat,lon\n1,45\n", "line 2"),
            ("t_unix,lat,lon\n", "no fixes"),
            ("when,where\n1,2\n", "header"),
        ];
        for (csv, expected) in cases {
            let message = format!("{:#}", Trip::from_reader("t", csv.as_bytes()).unwrap_err());
            assert!(message.contains(expected), "{csv:?}: {message}");
        }
    }

    #[test]
    fn typical_speed_ignores_one_jump() {
        // 10 s apart, ~11 m steps (1.1 m/s), and one wild jump of ~11 km
        let mut points: Vec<TripPoint> = (0..20)
            .map(|i| TripPoint {
                t_s: f64::from(i) * 10.0,
                pos: LatLon::new(45.0 + f64::from(i) * 1e-4, 13.0),
            })
            .collect();
        points[10].pos.lat += 0.1;
        let trip = Trip {
            name: "t".into(),
            points,
        };
        let speed = trip.typical_speed_mps().unwrap();
        assert!((speed - 1.11).abs() < 0.05, "{speed}");
        let still = Trip {
            name: "s".into(),
            points: trip.points[..1].to_vec(),
        };
        assert_eq!(still.typical_speed_mps(), None);
    }

    #[test]
    fn route_keeps_ends_and_thins_the_middle() {
        // a straight line north, one point every ~11 m over ~1.1 km
        let points: Vec<TripPoint> = (0..=100)
            .map(|i| TripPoint {
                t_s: f64::from(i),
                pos: LatLon::new(45.0 + f64::from(i) * 1e-4, 13.0),
            })
            .collect();
        let trip = Trip {
            name: "line".into(),
            points,
        };
        let route = trip.simplified_route(50.0);
        assert_eq!(route.first(), Some(&LatLon::new(45.0, 13.0)));
        assert_eq!(route.last(), Some(&trip.destination()));
        // a straight line needs nothing but its ends
        assert_eq!(route.len(), 2);
    }
}
