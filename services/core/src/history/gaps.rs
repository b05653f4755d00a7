//! Orders whose fixes a failed group commit did not store, and the writes the writer refuses
//! for them until their order has heard of the failure.
//!
//! An order pipelines its writes: a batch can already be queued when an earlier one fails. If
//! that later batch were stored, its progress (`last_seq` past the failed fixes) would be
//! durable while the fixes before it are not, and a node restarted before the app's resend
//! would take the resend for fixes it already has (acked, never stored). So once a group fails,
//! every write of its orders is refused until one comes that the order issued after hearing of
//! the failure (its state rolled back to what is durable: [`WriteBatch::follows_failure`]).

use std::collections::HashMap;

use super::{Changes, StoreError, WriteBatch};
use crate::ids::OrderId;

#[derive(Debug, Default)]
pub(super) struct Gaps {
    /// Per order, the lowest seq of the fixes a failed group held.
    first_missing: HashMap<OrderId, u64>,
}

impl Gaps {
    /// Why `batch` must not be written, if it touches an order with a gap and was issued before
    /// its order heard of the failure.
    pub fn refusal(&self, batch: &WriteBatch) -> Option<StoreError> {
        // The common case costs one branch: no write has failed.
        if self.first_missing.is_empty() || batch.follows_failure {
            return None;
        }
        let (order, seq) = Self::orders_of(batch)
            .find_map(|order| Some((order, *self.first_missing.get(order)?)))?;
        Some(StoreError::Log(format!(
            "an earlier write of order {order} failed: its fixes from seq {seq} come first"
        )))
    }

    /// Remembers the orders whose fixes `changes` held, after their group failed.
    pub fn failed(&mut self, changes: &Changes) {
        for (order, change) in changes {
            if let Some(first) = change.fixes.iter().map(|fix| fix.seq).min() {
                self.first_missing
                    .entry(order.clone())
                    .and_modify(|seq| *seq = (*seq).min(first))
                    .or_insert(first);
            }
        }
    }

    /// Forgets the gaps of `orders`, whose writes issued after the failure are durable.
    pub fn written(&mut self, orders: &[OrderId]) {
        for order in orders {
            self.first_missing.remove(order);
        }
    }

    /// The orders `batch` writes anything of (with repeats).
    pub fn orders_of(batch: &WriteBatch) -> impl Iterator<Item = &OrderId> {
        let fixes = batch.fixes.iter().map(|(order, _)| order);
        let records = batch.orders.iter().map(|record| &record.order_id);
        let progress = batch.progress.iter().map(|(order, _)| order);
        fixes.chain(records).chain(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::{Fix, LatLon};
    use crate::history::OrderChanges;

    fn fix(seq: u64) -> Fix {
        Fix {
            seq,
            time_ms: 1_700_000_000_000 + seq as i64 * 1000,
            pos: LatLon::new(45.0, 13.0),
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
        }
    }

    fn order(id: &str) -> OrderId {
        OrderId::new(id).unwrap()
    }

    fn batch(id: &str, seqs: std::ops::RangeInclusive<u64>, follows_failure: bool) -> WriteBatch {
        WriteBatch {
            fixes: seqs.map(|seq| (order(id), fix(seq))).collect(),
            follows_failure,
            ..Default::default()
        }
    }

    fn changes(id: &str, seqs: std::ops::RangeInclusive<u64>) -> Changes {
        let mut changes = Changes::new();
        changes.insert(
            order(id),
            OrderChanges {
                fixes: seqs.map(fix).collect(),
                ..Default::default()
            },
        );
        changes
    }

    #[test]
    fn a_write_queued_before_the_failure_is_refused_until_the_order_resends() {
        let mut gaps = Gaps::default();
        assert!(gaps.refusal(&batch("o-1", 11..=20, false)).is_none());
        gaps.failed(&changes("o-1", 1..=10));
        // Queued behind the failed group: storing it would make seq 20 durable without 1..10.
        let refused = gaps.refusal(&batch("o-1", 11..=20, false)).unwrap();
        assert!(refused.to_string().contains("from seq 1"), "{refused}");
        // Other orders write as before.
        assert!(gaps.refusal(&batch("o-2", 5..=6, false)).is_none());
        // The order's resend after hearing of the failure is taken, and once written the gap
        // is gone.
        let resend = batch("o-1", 1..=20, true);
        assert!(gaps.refusal(&resend).is_none());
        gaps.written(&Gaps::orders_of(&resend).cloned().collect::<Vec<_>>());
        assert!(gaps.refusal(&batch("o-1", 21..=22, false)).is_none());
    }

    #[test]
    fn a_record_or_progress_alone_is_refused_too_and_repeated_failures_keep_the_lowest_seq() {
        let mut gaps = Gaps::default();
        gaps.failed(&changes("o-1", 7..=9));
        gaps.failed(&changes("o-1", 3..=4));
        let progress_only = WriteBatch {
            progress: vec![(
                order("o-1"),
                crate::history::Progress {
                    offset: 9,
                    last_seq: 9,
                    updated_at_ms: 0,
                    position: None,
                    eta: None,
                    pickup_eta: None,
                },
            )],
            ..Default::default()
        };
        let refused = gaps.refusal(&progress_only).unwrap();
        assert!(refused.to_string().contains("from seq 3"), "{refused}");
        // A failed group of records only leaves no gap of fixes behind.
        gaps.failed(&Changes::from([(order("o-2"), OrderChanges::default())]));
        assert!(gaps.refusal(&batch("o-2", 1..=1, false)).is_none());
        // Writing an order's resend forgets only that order's gap.
        gaps.failed(&changes("o-3", 1..=1));
        gaps.written(&[order("o-3")]);
        assert!(gaps.refusal(&batch("o-3", 2..=2, false)).is_none());
        assert!(gaps.refusal(&batch("o-1", 10..=10, false)).is_some());
    }
}
