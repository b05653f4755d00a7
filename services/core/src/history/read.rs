//! Reading the store: order records and fixes from every layout sled holds (this version's
//! compact blocks and older versions' protobuf ones), merged with what the log holds but sled not
//! yet.

use prost::Message;

use super::codec::{fix_key, order_prefix};
use super::trees::{corrupt, decode_pack, sort_unique};
use super::{HistoryStore, Result};
use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;
use crate::order::OrderRecord;

/// A fix as older versions stored it: the v1 `Fix` of the time, when accuracy, speed and heading
/// were plain floats with 0 and negative values for unknown. Decoded with `v1::Fix`, whose fields
/// now have presence, a stored speed or heading of 0 (left off the wire then) would read as
/// unknown rather than as standing still or north.
#[derive(Clone, PartialEq, Message)]
pub(super) struct StoredFix {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(int64, tag = "2")]
    time_ms: i64,
    #[prost(sint32, tag = "3")]
    lat_e7: i32,
    #[prost(sint32, tag = "4")]
    lon_e7: i32,
    #[prost(float, tag = "5")]
    accuracy_m: f32,
    #[prost(float, tag = "6")]
    speed_mps: f32,
    #[prost(float, tag = "7")]
    heading_deg: f32,
}

/// A block of the older protobuf layout: a `CourierFrame` of [`StoredFix`]es.
#[derive(Clone, PartialEq, Message)]
pub(super) struct StoredBlock {
    #[prost(message, repeated, tag = "1")]
    pub(super) fixes: Vec<StoredFix>,
}

impl StoredFix {
    fn to_fix(&self) -> Fix {
        Fix {
            seq: self.seq,
            time_ms: self.time_ms,
            pos: LatLon::new(
                trackline_proto::from_e7(self.lat_e7),
                trackline_proto::from_e7(self.lon_e7),
            ),
            accuracy_m: (self.accuracy_m > 0.0).then_some(self.accuracy_m),
            speed_mps: (self.speed_mps >= 0.0).then_some(self.speed_mps),
            heading_deg: (self.heading_deg >= 0.0).then_some(self.heading_deg),
        }
    }
}

/// The older versions' encoding, to write their layouts in tests.
#[cfg(test)]
impl From<&Fix> for StoredFix {
    fn from(fix: &Fix) -> Self {
        Self {
            seq: fix.seq,
            time_ms: fix.time_ms,
            lat_e7: trackline_proto::to_e7(fix.pos.lat),
            lon_e7: trackline_proto::to_e7(fix.pos.lon),
            accuracy_m: fix.accuracy_m.unwrap_or(0.0),
            speed_mps: fix.speed_mps.unwrap_or(-1.0),
            heading_deg: fix.heading_deg.unwrap_or(-1.0),
        }
    }
}

fn decode_fix(key: &[u8], value: &[u8]) -> Result<Fix> {
    let raw = StoredFix::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(raw.to_fix())
}

fn decode_proto_block(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    let raw = StoredBlock::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(raw.fixes.iter().map(StoredFix::to_fix).collect())
}

/// Decodes a stored block (key, value) of one of the layouts.
pub(super) type DecodeBlocks = fn(&[u8], &[u8]) -> Result<Vec<Fix>>;

impl HistoryStore {
    /// One order's record with its route (blocking: a few sled reads).
    ///
    /// # Errors
    /// When sled fails or the record does not decode.
    pub fn order(&self, order: &OrderId) -> Result<Option<OrderRecord>> {
        let key = order.as_str().as_bytes();
        let Some(value) = self.trees.orders.get(key)? else {
            return Ok(None);
        };
        let record = self.trees.stored_order(key, &value)?;
        Ok(Some(self.trees.with_pending(record)))
    }

    /// Every order record with its route (blocking: a scan).
    pub fn all_orders(&self) -> impl Iterator<Item = Result<OrderRecord>> + '_ {
        self.trees.orders.iter().map(|item| {
            let (k, v) = item?;
            let record = self.trees.stored_order(&k, &v)?;
            Ok(self.trees.with_pending(record))
        })
    }

    /// One order's stored fixes with `from_ms <= time_ms <= to_ms`, oldest first (blocking: a scan).
    ///
    /// # Errors
    /// When sled fails or a fix does not decode.
    pub fn fixes(&self, order: &OrderId, from_ms: i64, to_ms: i64) -> Result<Vec<Fix>> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let in_range = |f: &Fix| (from_ms..=to_ms).contains(&f.time_ms);
        let end = fix_key(order, to_ms, u64::MAX);
        let mut fixes = Vec::new();
        for item in self
            .trees
            .fixes
            .range(fix_key(order, from_ms, 0)..=end.clone())
        {
            let (k, v) = item?;
            fixes.push(decode_fix(&k, &v)?);
        }
        // Every block that starts by `to_ms`: one that starts earlier than `from_ms` may still
        // hold fixes after it.
        for (tree, decode) in self.block_layouts() {
            for item in tree.range(order_prefix(order)..=end.clone()) {
                let (k, v) = item?;
                fixes.extend(decode(&k, &v)?.into_iter().filter(in_range));
            }
        }
        // Read after sled: a segment folded meanwhile is then found in one or both, never in
        // neither.
        let pending = self.trees.lock_pending();
        for change in pending.each(order) {
            fixes.extend(change.fixes.iter().copied().filter(in_range));
        }
        drop(pending);
        sort_unique(&mut fixes);
        Ok(fixes)
    }

    /// The trees holding blocks, with their decoders: this version's and the older protobuf one.
    pub(super) fn block_layouts(&self) -> [(&sled::Tree, DecodeBlocks); 2] {
        [
            (&self.trees.packs, decode_pack),
            (&self.trees.proto_blocks, decode_proto_block),
        ]
    }

    /// How many distinct fixes are stored for all orders (blocking: folds the log into sled,
    /// then reads every order's history; for tests and tools).
    pub fn fix_count(&self) -> usize {
        if let Err(error) = self.compact_now() {
            tracing::warn!(%error, "fix count without folding the log");
        }
        let mut orders = std::collections::BTreeSet::new();
        for tree in [
            &self.trees.fixes,
            &self.trees.proto_blocks,
            &self.trees.packs,
        ] {
            for key in tree.iter().keys().flatten() {
                let id = key.split(|&b| b == 0).next().unwrap_or_default();
                if let Some(order) = std::str::from_utf8(id)
                    .ok()
                    .and_then(|id| OrderId::new(id).ok())
                {
                    orders.insert(order);
                }
            }
        }
        orders
            .iter()
            .filter_map(|order| self.fixes(order, i64::MIN, i64::MAX).ok())
            .map(|fixes| fixes.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_layout_keeps_a_stored_zero_speed_and_north() {
        let stored = StoredFix {
            seq: 4,
            time_ms: 1_700_000_000_000,
            lat_e7: 626_000_000,
            lon_e7: 297_000_000,
            accuracy_m: 0.0,
            speed_mps: 0.0,
            heading_deg: 0.0,
        };
        let fix = decode_fix(b"key", &stored.encode_to_vec()).unwrap();
        assert_eq!(
            (fix.accuracy_m, fix.speed_mps, fix.heading_deg),
            (None, Some(0.0), Some(0.0))
        );
        let unknown = StoredFix {
            speed_mps: -1.0,
            heading_deg: -1.0,
            ..stored
        };
        let fix = decode_fix(b"key", &unknown.encode_to_vec()).unwrap();
        assert_eq!((fix.speed_mps, fix.heading_deg), (None, None));
    }
}
