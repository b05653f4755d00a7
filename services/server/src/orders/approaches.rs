//! Where the order actors of one courier find the way it takes to its next stop
//! ([`SharedApproaches`]): the fixes of a courier carrying several orders on this node are
//! estimated once for all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use trackline_core::eta::SharedApproaches;
use trackline_core::CourierId;

/// Couriers below which the directory is never swept.
const SWEEP_FROM: usize = 64;

/// The couriers' shared approaches on this node, by courier.
#[derive(Debug, Clone, Default)]
pub struct CourierApproaches(Arc<Mutex<Directory>>);

#[derive(Debug, Default)]
struct Directory {
    by_courier: HashMap<CourierId, SharedApproaches>,
    /// How many couriers were left at the last sweep.
    kept_at_sweep: usize,
}

impl CourierApproaches {
    /// The approaches `courier`'s orders share (asked when an order actor starts or is given
    /// a courier, not per fix).
    pub fn of(&self, courier: &CourierId) -> SharedApproaches {
        let mut directory = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Couriers whose orders all ended are forgotten once the directory has doubled since
        // the last sweep: a sweep costs a pass, paid for by as many insertions.
        if directory.by_courier.len() >= SWEEP_FROM.max(2 * directory.kept_at_sweep) {
            directory.by_courier.retain(|_, shared| !shared.is_unused());
            directory.kept_at_sweep = directory.by_courier.len();
        }
        directory
            .by_courier
            .entry(courier.clone())
            .or_default()
            .clone()
    }

    /// Couriers known.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_courier
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_couriers_orders_share_and_ended_couriers_are_swept() {
        let directory = CourierApproaches::default();
        let courier = CourierId::new("courier-a").unwrap();
        let held = directory.of(&courier);
        assert!(!directory.of(&courier).is_unused());
        for i in 0..2 * SWEEP_FROM {
            directory.of(&CourierId::new(&format!("gone-{i}")).unwrap());
        }
        // Swept at 64 entries (only courier-a was kept), then grew again.
        assert!(directory.len() <= SWEEP_FROM, "{}", directory.len());
        drop(held);
    }
}
