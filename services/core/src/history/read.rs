//! Reading the store: order records and fixes from every layout sled holds (this version's
//! compact blocks and older versions' protobuf ones), merged with what the log holds but sled not
//! yet.

use prost::Message;
use trackline_proto::v1;

use super::codec::{fix_key, order_prefix};
use super::trees::{corrupt, decode_pack, sort_unique};
use super::{HistoryStore, Result};
use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;
use crate::order::OrderRecord;

fn from_proto(raw: &v1::Fix) -> Fix {
    let to_opt = |v: f32, known: bool| known.then_some(v);
    Fix {
        seq: raw.seq,
        time_ms: raw.time_ms,
        pos: LatLon::new(
            trackline_proto::from_e7(raw.lat_e7),
            trackline_proto::from_e7(raw.lon_e7),
        ),
        accuracy_m: to_opt(raw.accuracy_m, raw.accuracy_m > 0.0),
        speed_mps: to_opt(raw.speed_mps, raw.speed_mps >= 0.0),
        heading_deg: to_opt(raw.heading_deg, raw.heading_deg >= 0.0),
    }
}

fn decode_fix(key: &[u8], value: &[u8]) -> Result<Fix> {
    let raw = v1::Fix::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(from_proto(&raw))
}

fn decode_proto_block(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    let raw = v1::CourierFrame::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(raw.fixes.iter().map(from_proto).collect())
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
