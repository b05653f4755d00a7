//! The plans ops gave couriers (`PUT /v1/couriers/{id}/plan`), kept across restarts.
//!
//! A plan is small and changes only when ops set it, so it is one sled entry per courier (its
//! stops as JSON), flushed before the answer. Only the explicit plan is kept: the effective plan
//! is derived from it and the orders' states, and a plan naming orders that ended meanwhile
//! simply names stops no longer carried, which the derivation skips.

use crate::history::{HistoryStore, Result};
use crate::stops::PlanStop;
use crate::CourierId;

/// The plans tree of a history store.
#[derive(Clone)]
pub struct PlanStore {
    tree: sled::Tree,
    db: sled::Db,
}

impl PlanStore {
    /// The plans kept in `store`'s database.
    ///
    /// # Errors
    /// When sled cannot open the tree.
    pub fn open(store: &HistoryStore) -> Result<Self> {
        let db = store.database().clone();
        Ok(Self {
            tree: db.open_tree("courier_plans")?,
            db,
        })
    }

    /// Keeps `stops` as `courier`'s plan (none: forgets it), durably: returns after the flush.
    /// Blocking.
    ///
    /// # Errors
    /// When sled fails to write or flush.
    pub fn set(&self, courier: &CourierId, stops: &[PlanStop]) -> Result<()> {
        let key = courier.as_str().as_bytes();
        if stops.is_empty() {
            self.tree.remove(key)?;
        } else {
            // A Vec of plain structs always serializes.
            let value = serde_json::to_vec(stops).unwrap_or_default();
            self.tree.insert(key, value)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Forgets `courier`'s plan without waiting for the disk: sled writes it with its next
    /// flush. Should a crash come first, the plan comes back naming orders that ended, whose
    /// stops the effective plan skips.
    ///
    /// # Errors
    /// When sled fails to write.
    pub fn forget(&self, courier: &CourierId) -> Result<()> {
        self.tree.remove(courier.as_str().as_bytes())?;
        Ok(())
    }

    /// Every plan kept, in courier order. Entries that do not parse (never written by this
    /// code) are skipped.
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn all(&self) -> Result<Vec<(CourierId, Vec<PlanStop>)>> {
        let mut plans = Vec::new();
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            let courier = std::str::from_utf8(&key)
                .ok()
                .and_then(|c| CourierId::new(c).ok());
            let stops = serde_json::from_slice::<Vec<PlanStop>>(&value).ok();
            plans.extend(courier.zip(stops));
        }
        Ok(plans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stops::StopKind;
    use crate::OrderId;

    #[test]
    fn a_plan_is_kept_replaced_and_forgotten_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let courier = CourierId::new("c-1").unwrap();
        let stop = |order: &str, kind| PlanStop {
            order_id: OrderId::new(order).unwrap(),
            kind,
        };
        let first = vec![
            stop("o-2", StopKind::Dropoff),
            stop("o-1", StopKind::Dropoff),
        ];
        {
            let (store, writer) = HistoryStore::open(dir.path()).unwrap();
            let plans = PlanStore::open(&store).unwrap();
            plans.set(&courier, &first).unwrap();
            let other = CourierId::new("c-2").unwrap();
            plans.set(&other, &first[..1]).unwrap();
            plans.set(&other, &[]).unwrap();
            drop((plans, store));
            writer.join();
        }
        let (store, writer) = HistoryStore::open(dir.path()).unwrap();
        let plans = PlanStore::open(&store).unwrap();
        assert_eq!(plans.all().unwrap(), [(courier.clone(), first)]);
        let second = vec![stop("o-1", StopKind::Pickup)];
        plans.set(&courier, &second).unwrap();
        assert_eq!(plans.all().unwrap(), [(courier, second)]);
        drop((plans, store));
        writer.join();
    }
}
