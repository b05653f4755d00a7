//! An order's route history as files other tools open: GPX 1.1 and GeoJSON in the file shape of
//! [`trackline_core::export`] (shared with the server's history endpoint), and CSV in the
//! `t_unix,lat,lon` form that `simulate` and `eta-eval` read back.

use std::io::Write;

use anyhow::Context;
use trackline_core::export::{Shape, Track};
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
    let track = Track {
        order,
        fixes,
        destination,
        route,
    };
    match format {
        // rendered in memory by core, so that a closed pipe surfaces here as an I/O error
        Format::Gpx => write_all(&track.to_gpx_bytes(Shape::File)?, out),
        Format::Geojson => {
            let collection = track.to_geojson(Shape::File);
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
    use trackline_core::fixtures::{order, two_fixes as fixes};

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
        let eval = crate::eta_eval::read_trip_csv(text.as_bytes(), "t").unwrap();
        assert_eq!(eval[0], (1_608_272_150_125, fixes()[0].pos));
        assert_eq!(unix_seconds(-1), "-0.001");
    }
}
