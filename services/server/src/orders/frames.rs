//! Watch-stream frames: an order's state encoded once per update, as JSON and as protobuf.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use bytestring::ByteString;
use prost::Message;
use serde::{Deserialize, Serialize};
use trackline_core::order::OrderView;

/// Which encoding a watcher asked for with its WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFormat {
    /// `trackline.v1.json`: text frames (the default).
    Json,
    /// `trackline.v1.proto`: binary `OrderUpdate` frames.
    Proto,
}

impl WatchFormat {
    /// The subprotocol of JSON text frames.
    pub const JSON_PROTOCOL: &'static str = "trackline.v1.json";
    /// The subprotocol of protobuf binary frames.
    pub const PROTO_PROTOCOL: &'static str = "trackline.v1.proto";

    /// The subprotocol name of this format.
    pub fn protocol(self) -> &'static str {
        match self {
            WatchFormat::Json => Self::JSON_PROTOCOL,
            WatchFormat::Proto => Self::PROTO_PROTOCOL,
        }
    }

    /// The first protocol in the client's `Sec-WebSocket-Protocol` list that we speak; JSON when
    /// the client named none; `None` when it named only ones we do not speak.
    pub fn negotiate(requested: Option<&str>) -> Option<Self> {
        let Some(list) = requested.filter(|l| !l.trim().is_empty()) else {
            return Some(WatchFormat::Json);
        };
        list.split(',').map(str::trim).find_map(|p| match p {
            Self::JSON_PROTOCOL => Some(WatchFormat::Json),
            Self::PROTO_PROTOCOL => Some(WatchFormat::Proto),
            _ => None,
        })
    }
}

/// What kind of frame a JSON watcher receives (`"type"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// The full current state, sent first on connect (or instead of an impossible resume).
    Snapshot,
    /// The state after one change.
    Update,
}

#[derive(Serialize)]
struct JsonFrame<'a> {
    #[serde(rename = "type")]
    kind: FrameKind,
    #[serde(flatten)]
    view: &'a OrderView,
    recovered: bool,
}

/// A frame between nodes (broker mode): the state, without its encodings.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireFrame {
    /// The state.
    pub view: OrderView,
    /// Snapshot or update.
    pub kind: FrameKind,
    /// Replayed after a resume.
    pub recovered: bool,
}

/// One state of an order, as sent to watchers.
///
/// Each encoding is made the first time a watcher of that kind needs it, then shared by every
/// watcher: an order nobody watches, or watched only in JSON, never pays for the other one.
/// A frame lives while it is the order's latest state or on its way to a watcher; the resume
/// buffer keeps no frames (see `fanout`), so past updates cost no encodings.
#[derive(Debug)]
pub struct Frame {
    /// The state it shows.
    pub view: OrderView,
    kind: FrameKind,
    recovered: bool,
    /// A `ByteString` so that each watcher's text frame shares it rather than copying it.
    json: OnceLock<ByteString>,
    proto: OnceLock<Bytes>,
    /// The order is delivered or cancelled: the watcher closes after this frame.
    pub is_final: bool,
}

impl Frame {
    /// A frame of `view`. `recovered` is true on frames replayed after a successful resume, and
    /// false on a snapshot sent because a resume was no longer possible.
    pub fn encode(view: OrderView, kind: FrameKind, recovered: bool) -> Arc<Frame> {
        let is_final = view.status.is_final();
        Arc::new(Frame {
            view,
            kind,
            recovered,
            json: OnceLock::new(),
            proto: OnceLock::new(),
            is_final,
        })
    }

    /// The `trackline.v1.json` text.
    #[cfg(test)]
    pub fn json(&self) -> &str {
        self.json_text()
    }

    /// The `trackline.v1.json` text as a watcher's text frame takes it: cloning it shares it.
    pub fn json_text(&self) -> &ByteString {
        self.json.get_or_init(|| {
            let frame = JsonFrame {
                kind: self.kind,
                view: &self.view,
                recovered: self.recovered,
            };
            // unwrap: an OrderView is plain data (strings, numbers, options): serde_json cannot fail on it
            ByteString::from(serde_json::to_string(&frame).unwrap())
        })
    }

    /// The `trackline.v1.proto` bytes.
    pub fn proto(&self) -> Bytes {
        self.proto
            .get_or_init(|| Bytes::from(self.view.to_update(self.recovered).encode_to_vec()))
            .clone()
    }

    /// Snapshot or update.
    pub fn kind(&self) -> FrameKind {
        self.kind
    }

    /// The frame as it travels between nodes in broker mode.
    pub fn wire(&self) -> WireFrame {
        WireFrame {
            view: self.view.clone(),
            kind: self.kind,
            recovered: self.recovered,
        }
    }

    /// A frame received from another node.
    pub fn from_wire(wire: WireFrame) -> Arc<Frame> {
        Frame::encode(wire.view, wire.kind, wire.recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_clients_order_and_defaults_to_json() {
        assert_eq!(WatchFormat::negotiate(None), Some(WatchFormat::Json));
        assert_eq!(
            WatchFormat::negotiate(Some("trackline.v1.proto, trackline.v1.json")),
            Some(WatchFormat::Proto)
        );
        assert_eq!(
            WatchFormat::negotiate(Some("mqtt, trackline.v1.json")),
            Some(WatchFormat::Json)
        );
        assert_eq!(WatchFormat::negotiate(Some("mqtt")), None);
    }
}
