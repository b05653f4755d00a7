//! Which orders each courier is assigned to, kept by the courier's home node in broker mode.
//!
//! The home node routes a courier's fixes to the owners of its orders, so an assignment only
//! counts once its link is durable here: after a crash the home node still knows where to send
//! the courier's next fixes. A stale link (the order ended elsewhere) costs one wasted forward and
//! is pruned then; a missing one would lose fixes, so links are written before assignments.

use crate::history::{HistoryStore, Result};
use crate::{CourierId, OrderId};

/// The links tree of a history store.
#[derive(Clone)]
pub struct LinkStore {
    tree: sled::Tree,
    db: sled::Db,
}

fn key(courier: &CourierId, order: &OrderId) -> Vec<u8> {
    // Ids never contain NUL (see ids.rs), so the split in `all` is unambiguous.
    [courier.as_str().as_bytes(), &[0], order.as_str().as_bytes()].concat()
}

impl LinkStore {
    /// The links kept in `store`'s database.
    ///
    /// # Errors
    /// When sled cannot open the tree.
    pub fn open(store: &HistoryStore) -> Result<Self> {
        let db = store.database().clone();
        Ok(Self {
            tree: db.open_tree("courier_links")?,
            db,
        })
    }

    /// Links (or unlinks) `courier` and `order`, durably: returns after the flush. Blocking.
    ///
    /// # Errors
    /// When sled fails to write or flush.
    pub fn set(&self, courier: &CourierId, order: &OrderId, linked: bool) -> Result<()> {
        let key = key(courier, order);
        if linked {
            self.tree.insert(key, &[])?;
        } else {
            self.tree.remove(key)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Every link, in key order. Entries that do not parse (never written by this code) are
    /// skipped.
    ///
    /// # Errors
    /// When sled fails to read.
    pub fn all(&self) -> Result<Vec<(CourierId, OrderId)>> {
        let mut links = Vec::new();
        for entry in self.tree.iter() {
            let (raw, _) = entry?;
            let mut parts = raw.splitn(2, |b| *b == 0);
            let (Some(courier), Some(order)) = (parts.next(), parts.next()) else {
                continue;
            };
            let parsed = std::str::from_utf8(courier)
                .ok()
                .and_then(|c| CourierId::new(c).ok())
                .zip(
                    std::str::from_utf8(order)
                        .ok()
                        .and_then(|o| OrderId::new(o).ok()),
                );
            links.extend(parsed);
        }
        Ok(links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_survive_reopening_and_unlinking_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let courier = CourierId::new("c-1").unwrap();
        let (a, b) = (OrderId::new("o.a").unwrap(), OrderId::new("o-b").unwrap());
        {
            let (store, writer) = HistoryStore::open(dir.path()).unwrap();
            let links = LinkStore::open(&store).unwrap();
            links.set(&courier, &a, true).unwrap();
            links.set(&courier, &b, true).unwrap();
            links.set(&courier, &a, false).unwrap();
            drop((links, store));
            writer.join();
        }
        let (store, writer) = HistoryStore::open(dir.path()).unwrap();
        let links = LinkStore::open(&store).unwrap();
        assert_eq!(links.all().unwrap(), vec![(courier, b)]);
        drop((links, store));
        writer.join();
    }
}
