//! An order's track as GPX 1.1 and GeoJSON, written with the `gpx` and `geojson` crates (never by
//! pasting strings): one writer for the history endpoint and for `trackctl export`.

use serde_json::{json, Map, Value};

use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;

/// Which of the two document shapes to write. Both exist because each has readers that depend on
/// it exactly: API clients parse the endpoint's documented form, people open trackctl's files in
/// GIS tools and tell the features apart by `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `GET /v1/orders/{id}/history` (documented in proto/README.md). GeoJSON: the track is always
    /// a LineString whose properties are `order_id`, `times_ms` and `seqs`. GPX: created by
    /// "trackline", one track with a time on every point, no metadata.
    Api,
    /// `trackctl export`. GeoJSON: every feature says what it is in `kind`; the track (a Point for
    /// a single fix) also holds `accuracy_m`, `speed_mps` and `heading_deg`. GPX: created by
    /// "trackctl", with metadata (the order, the first fix's time) and the track's source.
    File,
}

/// What an export cannot be written for.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{what}: time {time_ms} ms is outside what GPX can express")]
    TimeOutOfRange {
        what: String,
        time_ms: i64,
        #[source]
        source: time::error::ComponentRange,
    },
    /// The GPX writer's message alone: all that either caller has ever shown of it.
    #[error("rendering GPX: {0}")]
    Render(String),
}

/// An order's fixes (oldest first) and, when known, where it is going and the planned route.
/// The destination and route are written after the track, in either shape.
#[derive(Debug, Clone, Copy)]
pub struct Track<'a> {
    pub order: &'a OrderId,
    pub fixes: &'a [Fix],
    pub destination: Option<LatLon>,
    pub route: Option<&'a [LatLon]>,
}

impl<'a> Track<'a> {
    /// The fixes alone, without a destination or route.
    pub fn new(order: &'a OrderId, fixes: &'a [Fix]) -> Self {
        Self {
            order,
            fixes,
            destination: None,
            route: None,
        }
    }

    /// The track as a GPX 1.1 document: the fixes as one track, the destination as a waypoint
    /// named "destination", the route as a route named "planned route".
    ///
    /// # Errors
    /// When a fix's time is outside what GPX can express.
    pub fn to_gpx(&self, shape: Shape) -> Result<gpx::Gpx, ExportError> {
        let mut segment = gpx::TrackSegment::new();
        for fix in self.fixes {
            let mut point = gpx::Waypoint::new(fix.pos.point());
            // no speed: GPX 1.1 has no element for it (the gpx crate drops it when writing)
            point.time = Some(gpx_time(fix.time_ms, || format!("fix {}", fix.seq))?);
            segment.points.push(point);
        }
        let name = format!("order {}", self.order);
        let mut track = gpx::Track::new();
        track.name = Some(name.clone());
        track.segments.push(segment);

        let creator = match shape {
            Shape::Api => "trackline",
            Shape::File => "trackctl",
        };
        let mut doc = gpx::Gpx {
            version: gpx::GpxVersion::Gpx11,
            creator: Some(creator.into()),
            ..Default::default()
        };
        if shape == Shape::File {
            track.source = Some("trackline".into());
            let mut metadata = gpx::Metadata {
                name: Some(name),
                ..Default::default()
            };
            if let Some(first) = self.fixes.first() {
                metadata.time = Some(gpx_time(first.time_ms, || "the first fix".into())?);
            }
            doc.metadata = Some(metadata);
        }
        doc.tracks.push(track);
        if let Some(destination) = self.destination {
            let mut point = gpx::Waypoint::new(destination.point());
            point.name = Some("destination".into());
            doc.waypoints.push(point);
        }
        if let Some(route) = self.route {
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

    /// [`Track::to_gpx`] rendered as XML. Rendered in memory so that the caller writes the bytes
    /// itself: the XML writer's errors hide an I/O error (a closed pipe), the caller's keep it.
    ///
    /// # Errors
    /// When a fix's time is outside what GPX can express, or the GPX writer refuses the document.
    pub fn to_gpx_bytes(&self, shape: Shape) -> Result<Vec<u8>, ExportError> {
        let doc = self.to_gpx(shape)?;
        let mut rendered = Vec::new();
        gpx::write(&doc, &mut rendered).map_err(|e| ExportError::Render(e.to_string()))?;
        Ok(rendered)
    }

    /// The track as a GeoJSON FeatureCollection (positions are `[lon, lat]`): first the track,
    /// with the fixes' times and seqs as parallel arrays in its properties, then the destination
    /// (a Point) and the planned route (a LineString, when it has two points or more), each with
    /// `kind` and `order_id` properties.
    pub fn to_geojson(&self, shape: Shape) -> geojson::FeatureCollection {
        let line: Vec<Vec<f64>> = self.fixes.iter().map(|f| position(f.pos)).collect();
        // the API promises a LineString whatever the count; a valid LineString has two positions
        // or more (RFC 7946), so a file of a single fix holds a Point
        let geometry = match line.as_slice() {
            [only] if shape == Shape::File => geojson::Value::Point(only.clone()),
            _ => geojson::Value::LineString(line),
        };
        let mut properties = Map::new();
        if shape == Shape::File {
            properties.insert("kind".into(), json!("track"));
        }
        properties.insert("order_id".into(), json!(self.order));
        properties.insert("times_ms".into(), self.per_fix(|f| json!(f.time_ms)));
        properties.insert("seqs".into(), self.per_fix(|f| json!(f.seq)));
        if shape == Shape::File {
            properties.insert("accuracy_m".into(), self.per_fix(|f| json!(f.accuracy_m)));
            properties.insert("speed_mps".into(), self.per_fix(|f| json!(f.speed_mps)));
            properties.insert("heading_deg".into(), self.per_fix(|f| json!(f.heading_deg)));
        }

        let mut features = vec![feature(geometry, properties)];
        let labelled = |kind: &str| {
            let mut p = Map::new();
            p.insert("kind".into(), json!(kind));
            p.insert("order_id".into(), json!(self.order));
            p
        };
        if let Some(destination) = self.destination {
            features.push(feature(
                geojson::Value::Point(position(destination)),
                labelled("destination"),
            ));
        }
        if let Some(route) = self.route.filter(|r| r.len() >= 2) {
            features.push(feature(
                geojson::Value::LineString(route.iter().map(|p| position(*p)).collect()),
                labelled("planned_route"),
            ));
        }
        geojson::FeatureCollection {
            bbox: None,
            features,
            foreign_members: None,
        }
    }

    /// One JSON array with a value per fix, for the track's parallel-array properties.
    fn per_fix(&self, value: impl Fn(&Fix) -> Value) -> Value {
        Value::Array(self.fixes.iter().map(value).collect())
    }
}

/// A GeoJSON position: longitude first.
fn position(p: LatLon) -> Vec<f64> {
    vec![p.lon, p.lat]
}

fn feature(geometry: geojson::Value, properties: Map<String, Value>) -> geojson::Feature {
    geojson::Feature {
        bbox: None,
        geometry: Some(geojson::Geometry::new(geometry)),
        id: None,
        properties: Some(properties),
        foreign_members: None,
    }
}

/// `time_ms` as a GPX time; `what` names the point in the error and is only built on failure.
fn gpx_time(time_ms: i64, what: impl FnOnce() -> String) -> Result<gpx::Time, ExportError> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
        .map_err(|source| ExportError::TimeOutOfRange {
            what: what(),
            time_ms,
            source,
        })?;
    Ok(at.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{order, two_fixes as fixes};

    const DESTINATION: LatLon = LatLon {
        lat: 45.28,
        lon: 13.72,
    };
    const ROUTE: [LatLon; 2] = [
        LatLon {
            lat: 45.27,
            lon: 13.71,
        },
        DESTINATION,
    ];

    /// The fixes with a destination and a planned route, as trackctl exports them.
    fn going_somewhere<'a>(order: &'a OrderId, fixes: &'a [Fix]) -> Track<'a> {
        Track {
            destination: Some(DESTINATION),
            route: Some(&ROUTE),
            ..Track::new(order, fixes)
        }
    }

    fn gpx_time_ms(time: gpx::Time) -> i64 {
        let at: time::OffsetDateTime = time.into();
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
    }

    fn read_gpx(track: &Track, shape: Shape) -> gpx::Gpx {
        gpx::read(track.to_gpx_bytes(shape).unwrap().as_slice()).unwrap()
    }

    fn read_geojson(track: &Track, shape: Shape) -> geojson::FeatureCollection {
        let text = serde_json::to_string(&track.to_geojson(shape)).unwrap();
        match text.parse().unwrap() {
            geojson::GeoJson::FeatureCollection(collection) => collection,
            other => panic!("not a collection: {other:?}"),
        }
    }

    fn geometry(feature: &geojson::Feature) -> &geojson::Value {
        &feature.geometry.as_ref().expect("a geometry").value
    }

    #[test]
    fn gpx_reads_back_with_the_same_points_and_times() {
        let (order, fixes) = (order(), fixes());
        let track = going_somewhere(&order, &fixes);
        for shape in [Shape::Api, Shape::File] {
            let doc = read_gpx(&track, shape);
            assert_eq!(doc.version, gpx::GpxVersion::Gpx11);
            assert_eq!(doc.tracks.len(), 1);
            assert_eq!(doc.tracks[0].name.as_deref(), Some("order o-1"));
            let points = &doc.tracks[0].segments[0].points;
            assert_eq!(points.len(), 2);
            for (point, fix) in points.iter().zip(&fixes) {
                assert_eq!(
                    (point.point().y(), point.point().x()),
                    (fix.pos.lat, fix.pos.lon)
                );
                assert_eq!(gpx_time_ms(point.time.unwrap()), fix.time_ms);
            }
            assert_eq!(doc.waypoints[0].name.as_deref(), Some("destination"));
            assert_eq!(doc.routes[0].points.len(), 2);
        }
    }

    #[test]
    fn only_the_file_gpx_has_metadata() {
        let (order, fixes) = (order(), fixes());
        let track = Track::new(&order, &fixes);

        let api = read_gpx(&track, Shape::Api);
        assert_eq!(api.creator.as_deref(), Some("trackline"));
        assert!(api.metadata.is_none());
        assert!(api.tracks[0].source.is_none());
        assert!(api.waypoints.is_empty() && api.routes.is_empty());

        let file = read_gpx(&track, Shape::File);
        assert_eq!(file.creator.as_deref(), Some("trackctl"));
        assert_eq!(file.tracks[0].source.as_deref(), Some("trackline"));
        let metadata = file.metadata.expect("metadata");
        assert_eq!(metadata.name.as_deref(), Some("order o-1"));
        assert_eq!(gpx_time_ms(metadata.time.unwrap()), fixes[0].time_ms);
    }

    #[test]
    fn a_time_gpx_cannot_express_is_an_error_naming_the_fix() {
        let order = order();
        let mut fixes = fixes();
        fixes[1].time_ms = i64::MAX;
        let err = Track::new(&order, &fixes)
            .to_gpx(Shape::Api)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "fix 8: time {} ms is outside what GPX can express",
                i64::MAX
            )
        );
    }

    #[test]
    fn api_geojson_is_one_line_with_order_times_and_seqs() {
        let (order, fixes) = (order(), fixes());
        for fixes in [&fixes[..], &fixes[..1]] {
            let collection = read_geojson(&Track::new(&order, fixes), Shape::Api);
            assert_eq!(collection.features.len(), 1);
            let track = &collection.features[0];
            let geojson::Value::LineString(line) = geometry(track) else {
                panic!("not a line")
            };
            assert_eq!(line[0], vec![13.714_21, 45.273_518_9]);
            let mut keys: Vec<_> = track.properties.as_ref().unwrap().keys().collect();
            keys.sort();
            assert_eq!(keys, ["order_id", "seqs", "times_ms"]);
            assert_eq!(track.property("order_id"), Some(&json!("o-1")));
            let seqs: Vec<u64> = fixes.iter().map(|f| f.seq).collect();
            assert_eq!(track.property("seqs"), Some(&json!(seqs)));
        }
    }

    #[test]
    fn file_geojson_is_lon_lat_with_parallel_arrays_then_destination_and_route() {
        let (order, fixes) = (order(), fixes());
        let track = going_somewhere(&order, &fixes);
        let collection = read_geojson(&track, Shape::File);
        let kinds: Vec<_> = collection
            .features
            .iter()
            .map(|f| f.property("kind").unwrap().as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["track", "destination", "planned_route"]);
        let track = &collection.features[0];
        let geojson::Value::LineString(line) = geometry(track) else {
            panic!("not a line")
        };
        assert_eq!(line[0], vec![13.714_21, 45.273_518_9]);
        assert_eq!(track.property("seqs"), Some(&json!([7, 8])));
        assert_eq!(track.property("accuracy_m"), Some(&json!([4.5, null])));
        assert_eq!(
            geometry(&collection.features[1]),
            &geojson::Value::Point(vec![13.72, 45.28])
        );
    }

    #[test]
    fn one_fix_is_a_point_in_file_geojson_and_a_short_route_is_left_out() {
        let (order, fixes) = (order(), fixes());
        let route = [LatLon::new(45.27, 13.71)];
        let track = Track {
            route: Some(&route),
            ..Track::new(&order, &fixes[..1])
        };
        let collection = read_geojson(&track, Shape::File);
        assert_eq!(collection.features.len(), 1);
        assert!(matches!(
            geometry(&collection.features[0]),
            geojson::Value::Point(_)
        ));
    }
}
