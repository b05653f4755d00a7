//! An order's route history as files other tools open: GPX 1.1 and GeoJSON written with the
//! `gpx` and `geojson` crates (never by pasting strings), and CSV in the `t_unix,lat,lon` form
//! that `simulate` and `eta-eval` read back.

use std::io::Write;

use anyhow::Context;
use serde_json::json;
use trackline_core::fix::Fix;
use trackline_core::{LatLon, OrderId};

/// What `export --format` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// GPX 1.1: one track with a timestamp on every point, the destination as a waypoint and the
    /// planned route as a route
    Gpx,
    /// GeoJSON FeatureCollection: the track as a LineString ([lon, lat]) with times, seqs,
    /// accuracy, speed and heading as parallel arrays, the destination and the planned route
    Geojson,
    /// CSV `t_unix,lat,lon,seq,accuracy_m,speed_mps,heading_deg` (unknowns empty)
    Csv,
}

/// The CSV header; the first three columns are what trip readers need.
pub const CSV_HEADER: [&str; 7] = [
    "t_unix",
    "lat",
    "lon",
    "seq",
    "accuracy_m",
    "speed_mps",
    "heading_deg",
];

/// Writes `fixes` of `order` in `format`. `destination` and `route` go into GPX and GeoJSON as
/// extra features, after the track.
///
/// # Errors
/// When writing fails, or a fix's time cannot be expressed in GPX.
pub fn write(
    format: Format,
    order: &OrderId,
    fixes: &[Fix],
    destination: Option<LatLon>,
    route: Option<&[LatLon]>,
    out: impl Write,
) -> anyhow::Result<()> {
    match format {
        Format::Gpx => {
            let doc = to_gpx(order, fixes, destination, route)?;
            // rendered in memory first: the XML writer's errors hide an I/O error (a closed
            // pipe) from the caller, ours keep it
            let mut rendered = Vec::new();
            gpx::write(&doc, &mut rendered).map_err(|e| anyhow::anyhow!("rendering GPX: {e}"))?;
            write_all(&rendered, out)
        }
        Format::Geojson => {
            let collection = to_geojson(order, fixes, destination, route);
            write_json_line(&geojson::GeoJson::from(collection), out)
        }
        Format::Csv => write_csv(fixes, out),
    }
    .context("writing the export")
}

fn write_all(bytes: &[u8], mut out: impl Write) -> anyhow::Result<()> {
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

fn write_json_line(value: &impl serde::Serialize, mut out: impl Write) -> anyhow::Result<()> {
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn gpx_time(time_ms: i64, what: &str) -> anyhow::Result<gpx::Time> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
        .with_context(|| format!("{what}: time {time_ms} ms is outside what GPX can express"))?;
    Ok(at.into())
}

/// The track as a GPX 1.1 document.
///
/// # Errors
/// When a fix's time is outside what GPX can express.
pub fn to_gpx(
    order: &OrderId,
    fixes: &[Fix],
    destination: Option<LatLon>,
    route: Option<&[LatLon]>,
) -> anyhow::Result<gpx::Gpx> {
    let mut segment = gpx::TrackSegment::new();
    for fix in fixes {
        let mut point = gpx::Waypoint::new(fix.pos.point());
        point.time = Some(gpx_time(fix.time_ms, &format!("fix {}", fix.seq))?);
        segment.points.push(point);
    }
    let mut track = gpx::Track::new();
    track.name = Some(format!("order {order}"));
    track.source = Some("trackline".into());
    track.segments.push(segment);

    let mut doc = gpx::Gpx {
        version: gpx::GpxVersion::Gpx11,
        creator: Some("trackctl".into()),
        tracks: vec![track],
        ..Default::default()
    };
    let mut metadata = gpx::Metadata {
        name: Some(format!("order {order}")),
        ..Default::default()
    };
    if let Some(first) = fixes.first() {
        metadata.time = Some(gpx_time(first.time_ms, "the first fix")?);
    }
    doc.metadata = Some(metadata);
    if let Some(destination) = destination {
        let mut point = gpx::Waypoint::new(destination.point());
        point.name = Some("destination".into());
        doc.waypoints.push(point);
    }
    if let Some(route) = route {
        let mut planned = gpx::Route::new();
        planned.name = Some("planned route".into());
        planned.points = route
            .iter()
            .map(|p| gpx::Waypoint::new(p.point()))
            .collect();
        doc.routes.push(planned);
    }
    Ok(doc)
}

/// The track as a GeoJSON FeatureCollection: first the track (a LineString, or a Point for a
/// single fix), then the destination and the planned route when known. Every feature says what
/// it is in its `kind` property.
pub fn to_geojson(
    order: &OrderId,
    fixes: &[Fix],
    destination: Option<LatLon>,
    route: Option<&[LatLon]>,
) -> geojson::FeatureCollection {
    let position = |p: LatLon| vec![p.lon, p.lat];
    let line: Vec<Vec<f64>> = fixes.iter().map(|f| position(f.pos)).collect();
    let geometry = if line.len() == 1 {
        geojson::Value::Point(line[0].clone())
    } else {
        geojson::Value::LineString(line)
    };
    let mut properties = serde_json::Map::new();
    properties.insert("kind".into(), json!("track"));
    properties.insert("order_id".into(), json!(order));
    properties.insert(
        "times_ms".into(),
        json!(fixes.iter().map(|f| f.time_ms).collect::<Vec<_>>()),
    );
    properties.insert(
        "seqs".into(),
        json!(fixes.iter().map(|f| f.seq).collect::<Vec<_>>()),
    );
    properties.insert(
        "accuracy_m".into(),
        json!(fixes.iter().map(|f| f.accuracy_m).collect::<Vec<_>>()),
    );
    properties.insert(
        "speed_mps".into(),
        json!(fixes.iter().map(|f| f.speed_mps).collect::<Vec<_>>()),
    );
    properties.insert(
        "heading_deg".into(),
        json!(fixes.iter().map(|f| f.heading_deg).collect::<Vec<_>>()),
    );
    let feature = |geometry: geojson::Value,
                   properties: serde_json::Map<String, serde_json::Value>| {
        geojson::Feature {
            bbox: None,
            geometry: Some(geojson::Geometry::new(geometry)),
            id: None,
            properties: Some(properties),
            foreign_members: None,
        }
    };
    let mut features = vec![feature(geometry, properties)];
    let kind = |k: &str| {
        let mut p = serde_json::Map::new();
        p.insert("kind".into(), json!(k));
        p.insert("order_id".into(), json!(order));
        p
    };
    if let Some(destination) = destination {
        features.push(feature(
            geojson::Value::Point(position(destination)),
            kind("destination"),
        ));
    }
    if let Some(route) = route.filter(|r| r.len() >= 2) {
        features.push(feature(
            geojson::Value::LineString(route.iter().map(|p| position(*p)).collect()),
            kind("planned_route"),
        ));
    }
    geojson::FeatureCollection {
        bbox: None,
        features,
        foreign_members: None,
    }
}

/// Seconds with exactly the stored milliseconds: `1608272150.125`.
fn unix_seconds(time_ms: i64) -> String {
    let sign = if time_ms < 0 { "-" } else { "" };
    let ms = time_ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// CSV with [`CSV_HEADER`]; coordinates as stored (shortest exact decimal), unknowns empty.
///
/// # Errors
/// When writing fails.
pub fn write_csv(fixes: &[Fix], out: impl Write) -> anyhow::Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(CSV_HEADER)?;
    let opt = |v: Option<f32>| v.map(|v| v.to_string()).unwrap_or_default();
    for fix in fixes {
        csv.write_record([
            unix_seconds(fix.time_ms),
            fix.pos.lat.to_string(),
            fix.pos.lon.to_string(),
            fix.seq.to_string(),
            opt(fix.accuracy_m),
            opt(fix.speed_mps),
            opt(fix.heading_deg),
        ])?;
    }
    csv.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixes() -> Vec<Fix> {
        vec![
            Fix {
                seq: 7,
                time_ms: 1_608_272_150_125,
                pos: LatLon::new(45.273_518_9, 13.714_21),
                accuracy_m: Some(4.5),
                speed_mps: None,
                heading_deg: Some(90.0),
            },
            Fix {
                seq: 8,
                time_ms: 1_608_272_160_000,
                pos: LatLon::new(45.273_413_3, 13.714_188_5),
                accuracy_m: None,
                speed_mps: Some(1.25),
                heading_deg: None,
            },
        ]
    }

    fn order() -> OrderId {
        OrderId::new("o-1").unwrap()
    }

    #[test]
    fn gpx_reads_back_with_the_same_points_and_times() {
        let mut out = Vec::new();
        let route = [LatLon::new(45.27, 13.71), LatLon::new(45.28, 13.72)];
        write(
            Format::Gpx,
            &order(),
            &fixes(),
            Some(LatLon::new(45.28, 13.72)),
            Some(&route),
            &mut out,
        )
        .unwrap();
        let doc = gpx::read(out.as_slice()).unwrap();
        assert_eq!(doc.version, gpx::GpxVersion::Gpx11);
        let points = &doc.tracks[0].segments[0].points;
        assert_eq!(points.len(), 2);
        for (point, fix) in points.iter().zip(fixes()) {
            assert_eq!(
                (point.point().y(), point.point().x()),
                (fix.pos.lat, fix.pos.lon)
            );
            let at: time::OffsetDateTime = point.time.unwrap().into();
            assert_eq!((at.unix_timestamp_nanos() / 1_000_000) as i64, fix.time_ms);
        }
        assert_eq!(doc.waypoints[0].name.as_deref(), Some("destination"));
        assert_eq!(doc.routes[0].points.len(), 2);
    }

    #[test]
    fn geojson_is_lon_lat_with_parallel_arrays() {
        let mut out = Vec::new();
        write(Format::Geojson, &order(), &fixes(), None, None, &mut out).unwrap();
        let parsed: geojson::GeoJson = std::str::from_utf8(&out).unwrap().parse().unwrap();
        let geojson::GeoJson::FeatureCollection(collection) = parsed else {
            panic!("not a collection")
        };
        assert_eq!(collection.features.len(), 1);
        let track = &collection.features[0];
        let Some(geojson::Value::LineString(line)) = track.geometry.as_ref().map(|g| &g.value)
        else {
            panic!("not a line")
        };
        assert_eq!(line[0], vec![13.714_21, 45.273_518_9]);
        assert_eq!(track.property("seqs"), Some(&json!([7, 8])));
        assert_eq!(track.property("accuracy_m"), Some(&json!([4.5, null])));
    }

    #[test]
    fn one_fix_is_a_point_in_geojson() {
        let one = &fixes()[..1];
        let collection = to_geojson(&order(), one, None, None);
        assert!(matches!(
            collection.features[0].geometry.as_ref().map(|g| &g.value),
            Some(geojson::Value::Point(_))
        ));
    }

    #[test]
    fn csv_keeps_milliseconds_and_reads_back_as_a_trip() {
        let mut out = Vec::new();
        write(Format::Csv, &order(), &fixes(), None, None, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "t_unix,lat,lon,seq,accuracy_m,speed_mps,heading_deg\n\
             1608272150.125,45.2735189,13.71421,7,4.5,,90\n\
             1608272160.000,45.2734133,13.7141885,8,,1.25,\n"
        );
        let trip = crate::trip::Trip::from_reader("t", text.as_bytes()).unwrap();
        assert_eq!(trip.points[1].pos, fixes()[1].pos);
        let eval = trackline_core::eta_eval::read_trip_csv(text.as_bytes(), "t").unwrap();
        assert_eq!(eval[0], (1_608_272_150_125, fixes()[0].pos));
        assert_eq!(unix_seconds(-1), "-0.001");
    }
}
