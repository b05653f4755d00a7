//! Purging history past the retention period: old fixes out of every layout, ended orders whole.

use super::codec::{block_key, fix_key, order_prefix};
use super::read::DecodeBlocks;
use super::trees::Trees;
use super::{HistoryStore, PurgeStats, Result};
use crate::fix::Fix;
use crate::ids::OrderId;

impl HistoryStore {
    /// Deletes every fix older than `cutoff_ms`, and ended orders (delivered or cancelled) last
    /// updated before it with their routes, then flushes (blocking: folds the log, then walks
    /// every order).
    ///
    /// Location history is personal data: this is what the retention period and `trackctl purge`
    /// run. An active order keeps its record, whatever its age.
    ///
    /// # Errors
    /// When sled fails or a record does not decode.
    pub fn purge_before(&self, cutoff_ms: i64) -> Result<PurgeStats> {
        self.compact_now()?;
        let trees = &self.trees;
        let mut stats = PurgeStats::default();
        for item in trees.orders.iter() {
            let (key, value) = item?;
            let record = trees.stored_order(&key, &value)?;
            let ended_long_ago = record.status.is_final() && record.updated_at_ms < cutoff_ms;
            let fixes_until = if ended_long_ago {
                i64::MAX
            } else {
                cutoff_ms.saturating_sub(1)
            };
            let start = fix_key(&record.order_id, i64::MIN, 0);
            let end = fix_key(&record.order_id, fixes_until, u64::MAX);
            let mut doomed = sled::Batch::default();
            let mut removed = 0;
            for old in trees.fixes.range(start..=end).keys() {
                doomed.remove(old?);
                removed += 1;
            }
            // Only when there is something to remove: a sled batch costs two writes of its I/O
            // buffer even when empty, and this runs for every order at every start (a server
            // restarted on 100,000 orders spent seconds in empty batches, and its shutdown
            // waited for them).
            if removed > 0 {
                trees.fixes.apply_batch(doomed)?;
            }
            stats.fixes += removed;
            for (tree, decode) in self.block_layouts() {
                stats.fixes += trees.purge_blocks(tree, decode, &record.order_id, fixes_until)?;
            }
            if ended_long_ago {
                trees.orders.remove(&key)?;
                trees.progress.remove(&key)?;
                trees.routes.remove(&key)?;
                // Its webhook events go with its history (its deliveries are made by now, or
                // given up and purged on their own clock).
                trees.webhooks.purge_order(&record.order_id)?;
                stats.orders += 1;
            }
        }
        trees.db.flush()?;
        Ok(stats)
    }
}

impl Trees {
    /// Removes `order`'s fixes up to `until_ms` from the blocks of `tree`; a block that also
    /// holds later fixes is written again, in this version's layout, without the removed ones.
    /// Returns how many fixes went.
    pub(super) fn purge_blocks(
        &self,
        tree: &sled::Tree,
        decode: DecodeBlocks,
        order: &OrderId,
        until_ms: i64,
    ) -> Result<usize> {
        let mut removed = 0;
        let mut doomed = sled::Batch::default();
        let mut kept_blocks = Vec::new();
        for item in tree.range(order_prefix(order)..=fix_key(order, until_ms, u64::MAX)) {
            let (key, value) = item?;
            let (gone, kept): (Vec<Fix>, Vec<Fix>) = decode(&key, &value)?
                .into_iter()
                .partition(|f| f.time_ms <= until_ms);
            if gone.is_empty() {
                continue;
            }
            removed += gone.len();
            doomed.remove(key);
            if !kept.is_empty() {
                kept_blocks.push(kept);
            }
        }
        if removed == 0 {
            return Ok(0);
        }
        tree.apply_batch(doomed)?;
        // After the removals: a kept remainder may start where another block starts.
        // One at a time, so that two remainders starting with the same fix merge.
        for kept in kept_blocks {
            let key = block_key(order, &kept);
            let value = self.merged_pack(&key, kept)?;
            self.packs.insert(key, value)?;
        }
        Ok(removed)
    }
}
