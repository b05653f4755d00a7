//! One watch-stream frame, from JSON text or protobuf `OrderUpdate`, decoded into one shape.

use serde::Deserialize;
use trackline_proto::v1;
use trackline_proto::{from_e7, Message as _};

/// The encoding a watcher asks for (its subprotocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `trackline.v1.json`: text frames.
    #[default]
    Json,
    /// `trackline.v1.proto`: binary `OrderUpdate` frames.
    Proto,
}

impl Encoding {
    /// The subprotocol named in the upgrade.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "trackline.v1.json",
            Encoding::Proto => "trackline.v1.proto",
        }
    }
}

/// Whether a JSON frame is the state on connect or a change (protobuf frames do not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Snapshot,
    Update,
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Created,
    Assigned,
    /// The courier is at the pickup.
    AtPickup,
    PickedUp,
    Arriving,
    Delivered,
    Cancelled,
}

impl Status {
    /// The lower-case word of the JSON stream and the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Assigned => "assigned",
            Status::AtPickup => "at_pickup",
            Status::PickedUp => "picked_up",
            Status::Arriving => "arriving",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }

    /// After this the stream sends nothing more and closes.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Cancelled)
    }

    fn from_proto(status: i32) -> Option<Status> {
        Some(match v1::OrderStatus::try_from(status).ok()? {
            v1::OrderStatus::Unspecified => return None,
            v1::OrderStatus::Created => Status::Created,
            v1::OrderStatus::Assigned => Status::Assigned,
            v1::OrderStatus::AtPickup => Status::AtPickup,
            v1::OrderStatus::PickedUp => Status::PickedUp,
            v1::OrderStatus::Arriving => Status::Arriving,
            v1::OrderStatus::Delivered => Status::Delivered,
            v1::OrderStatus::Cancelled => Status::Cancelled,
        })
    }
}

/// The shown position of the courier; unknown speed, heading or accuracy are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Position {
    pub lat: f64,
    pub lon: f64,
    pub time_ms: i64,
    pub speed_mps: Option<f32>,
    pub heading_deg: Option<f32>,
    pub accuracy_m: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Eta {
    /// Seconds from the position's time to arrival.
    pub seconds: i64,
    pub arrive_at_ms: i64,
    /// The arrival window (the order's door ETA only; servers before it send none).
    #[serde(default)]
    pub window: Option<EtaWindow>,
}

impl Eta {
    fn from_proto(e: v1::Eta) -> Self {
        Eta {
            seconds: e.seconds,
            arrive_at_ms: e.arrive_at_ms,
            window: e.window.map(EtaWindow::from),
        }
    }
}

impl From<v1::EtaWindow> for EtaWindow {
    fn from(w: v1::EtaWindow) -> Self {
        let v1::EtaWindow {
            earliest_ms,
            latest_ms,
        } = w;
        EtaWindow {
            earliest_ms,
            latest_ms,
        }
    }
}

/// The interval the arrival falls in 8 times out of 10, unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct EtaWindow {
    pub earliest_ms: i64,
    pub latest_ms: i64,
}

/// What the courier does at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    Pickup,
    Dropoff,
}

/// One stop of the order: its pickup or its destination.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Stop {
    pub kind: StopKind,
    pub lat: f64,
    pub lon: f64,
    pub eta: Option<Eta>,
    pub reached_at_ms: Option<i64>,
}

impl Stop {
    /// None for a stop of a kind this client does not know.
    fn from_proto(s: v1::Stop) -> Option<Self> {
        let kind = match v1::StopKind::try_from(s.kind).ok()? {
            v1::StopKind::Pickup => StopKind::Pickup,
            v1::StopKind::Dropoff => StopKind::Dropoff,
            v1::StopKind::Unspecified => return None,
        };
        Some(Stop {
            kind,
            lat: from_e7(s.lat_e7),
            lon: from_e7(s.lon_e7),
            eta: s.eta.map(Eta::from_proto),
            reached_at_ms: s.reached_at_ms,
        })
    }
}

/// One frame of the watch stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Update {
    /// `None` on the protobuf stream, which does not say.
    #[serde(rename = "type")]
    pub kind: Option<UpdateKind>,
    pub order_id: String,
    /// Grows by one per update of the order.
    pub offset: u64,
    /// Names the order's stream; resume only within one.
    pub epoch: String,
    pub status: Status,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    /// True on an update replayed after a resume; false on a snapshot sent because the resume was
    /// no longer possible.
    #[serde(default)]
    pub recovered: bool,
    /// The order's stops in visiting order (servers before stops send none).
    #[serde(default)]
    pub stops: Vec<Stop>,
}

/// A frame that is not a watch update.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("a text frame that is not a JSON update: {0}")]
    Json(String),
    #[error("a binary frame that is not an OrderUpdate: {0}")]
    Proto(String),
    #[error("an OrderUpdate with the unknown status {0}")]
    Status(i32),
}

impl Update {
    /// A text frame of the `trackline.v1.json` stream (unknown fields are ignored: the stream
    /// may grow).
    ///
    /// # Errors
    /// When it is not an update.
    pub fn from_json(text: &str) -> Result<Update, DecodeError> {
        serde_json::from_str(text).map_err(|e| DecodeError::Json(format!("{e}: {text}")))
    }

    /// A binary frame of the `trackline.v1.proto` stream.
    ///
    /// # Errors
    /// When it is not an `OrderUpdate`.
    pub fn from_proto(bytes: &[u8]) -> Result<Update, DecodeError> {
        let update =
            v1::OrderUpdate::decode(bytes).map_err(|e| DecodeError::Proto(e.to_string()))?;
        let status = Status::from_proto(update.status).ok_or(DecodeError::Status(update.status))?;
        Ok(Update {
            kind: None,
            order_id: update.order_id,
            offset: update.offset,
            epoch: update.epoch,
            status,
            position: update.position.map(position_from_proto),
            eta: update.eta.map(Eta::from_proto),
            recovered: update.recovered,
            stops: update
                .stops
                .into_iter()
                .filter_map(Stop::from_proto)
                .collect(),
        })
    }
}

/// An unknown speed, heading or accuracy is unset; servers before those fields were `optional`
/// sent -1, -1 and 0 for unknown, which read as unknown too.
fn position_from_proto(p: v1::Position) -> Position {
    Position {
        lat: from_e7(p.lat_e7),
        lon: from_e7(p.lon_e7),
        time_ms: p.time_ms,
        speed_mps: p.speed_mps.filter(|speed| *speed >= 0.0),
        heading_deg: p.heading_deg.filter(|heading| *heading >= 0.0),
        accuracy_m: p.accuracy_m.filter(|accuracy| *accuracy > 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_proto::to_e7;

    #[test]
    fn json_and_proto_frames_decode_to_the_same_update() {
        let json = r#"{"type":"update","order_id":"o-1","status":"picked_up","offset":7,
            "epoch":"e1","recovered":true,"courier_id":"c-1","destination":{"lat":1,"lon":2},
            "position":{"lat":62.5,"lon":29.75,"time_ms":1000,"speed_mps":null,
            "heading_deg":90.0,"accuracy_m":null},"eta":{"seconds":60,"arrive_at_ms":61000,
            "window":{"earliest_ms":50000,"latest_ms":90000}},
            "stops":[{"kind":"pickup","lat":1.5,"lon":2.5,"eta":null,"reached_at_ms":500},
                     {"kind":"dropoff","lat":1,"lon":2,"eta":{"seconds":60,"arrive_at_ms":61000},
                      "reached_at_ms":null}]}"#;
        let from_json = Update::from_json(json).unwrap();
        let proto = v1::OrderUpdate {
            order_id: "o-1".into(),
            offset: 7,
            epoch: "e1".into(),
            status: v1::OrderStatus::PickedUp as i32,
            position: Some(v1::Position {
                time_ms: 1000,
                lat_e7: to_e7(62.5),
                lon_e7: to_e7(29.75),
                speed_mps: None,
                heading_deg: Some(90.0),
                accuracy_m: None,
            }),
            eta: Some(v1::Eta {
                seconds: 60,
                arrive_at_ms: 61_000,
                window: Some(v1::EtaWindow {
                    earliest_ms: 50_000,
                    latest_ms: 90_000,
                }),
            }),
            recovered: true,
            stops: vec![
                v1::Stop {
                    kind: v1::StopKind::Pickup as i32,
                    lat_e7: to_e7(1.5),
                    lon_e7: to_e7(2.5),
                    eta: None,
                    reached_at_ms: Some(500),
                },
                v1::Stop {
                    kind: v1::StopKind::Dropoff as i32,
                    lat_e7: to_e7(1.0),
                    lon_e7: to_e7(2.0),
                    eta: Some(v1::Eta {
                        seconds: 60,
                        arrive_at_ms: 61_000,
                        window: None,
                    }),
                    reached_at_ms: None,
                },
            ],
        };
        let from_proto = Update::from_proto(&proto.encode_to_vec()).unwrap();
        assert_eq!(from_json.kind, Some(UpdateKind::Update));
        assert_eq!(from_json.stops.len(), 2);
        assert_eq!(from_json.stops[0].kind, StopKind::Pickup);
        assert_eq!(from_json.eta.unwrap().window.unwrap().latest_ms, 90_000);
        assert_eq!(
            from_proto,
            Update {
                kind: None,
                ..from_json
            }
        );
    }

    #[test]
    fn frames_that_are_not_updates_are_errors() {
        assert!(matches!(Update::from_json("{}"), Err(DecodeError::Json(_))));
        assert!(matches!(
            Update::from_proto(&[0xff]),
            Err(DecodeError::Proto(_))
        ));
        let unknown = v1::OrderUpdate {
            status: 99,
            ..Default::default()
        };
        assert!(matches!(
            Update::from_proto(&unknown.encode_to_vec()),
            Err(DecodeError::Status(99))
        ));
    }
}
