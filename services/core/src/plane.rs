//! The Earth's radius and the local plane: metres east and north of an origin, the
//! equirectangular approximation the filter, the ETA and the trip tools work in. Within ~20 km of
//! the origin it is off by well under a centimetre per metre, and it costs a multiply per axis
//! where a geodesic projection costs trigonometry per point.

use crate::fix::LatLon;

/// The mean Earth radius in metres (IUGG; the one geo's haversine uses).
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Metres per degree of latitude (of longitude too, at the equator).
pub const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

/// A plane tangent to the Earth at `origin`: x metres east, y metres north.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalPlane {
    origin: LatLon,
    m_per_deg_lon: f64,
}

impl LocalPlane {
    /// The plane about `origin`.
    pub fn at(origin: LatLon) -> Self {
        Self {
            origin,
            m_per_deg_lon: M_PER_DEG * origin.lat.to_radians().cos(),
        }
    }

    pub fn origin(&self) -> LatLon {
        self.origin
    }

    /// `pos` as (east, north) metres from the origin.
    pub fn to_local(&self, pos: LatLon) -> (f64, f64) {
        (
            (pos.lon - self.origin.lon) * self.m_per_deg_lon,
            (pos.lat - self.origin.lat) * M_PER_DEG,
        )
    }

    /// The point `east`, `north` metres from the origin.
    pub fn to_lat_lon(&self, east: f64, north: f64) -> LatLon {
        LatLon::new(
            self.origin.lat + north / M_PER_DEG,
            self.origin.lon + east / self.m_per_deg_lon,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_goes_there_and_back_and_short_distances_match_the_haversine() {
        let plane = LocalPlane::at(LatLon::new(60.17, 24.94));
        let there = plane.to_lat_lon(1200.0, -800.0);
        let (east, north) = plane.to_local(there);
        assert!((east - 1200.0).abs() < 1e-6 && (north + 800.0).abs() < 1e-6);
        let metres = 1200.0_f64.hypot(800.0);
        let haversine = plane.origin().distance_m(there);
        assert!(
            (haversine - metres).abs() < metres * 1e-3,
            "{haversine} m on the sphere, {metres} m on the plane"
        );
    }
}
