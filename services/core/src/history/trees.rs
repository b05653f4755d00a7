//! The sled side of the store: its trees, folding log segments into them (compaction), and the
//! records read back from them with the changes not yet folded laid over.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::codec::{block_key, decode_block, encode_block, Progress};
use super::{log, Changes, Pending, Result, StoreError, StoreHealth, MAX_FIXES_PER_BLOCK};
use crate::fix::Fix;
use crate::order::OrderRecord;

/// The trees of the store, shared by every handle, the writer and the compactor.
#[derive(Clone)]
pub(crate) struct Trees {
    pub db: sled::Db,
    /// The per-fix layout of older versions (read and purged only).
    pub fixes: sled::Tree,
    /// The protobuf blocks of older versions (read and purged only).
    pub proto_blocks: sled::Tree,
    pub packs: sled::Tree,
    pub orders: sled::Tree,
    pub progress: sled::Tree,
    pub routes: sled::Tree,
    pub webhooks: crate::webhooks::WebhookStore,
    pub log_dir: PathBuf,
    pub pending: Arc<Mutex<Pending>>,
    /// Held while a compaction runs (the compactor's, or a purge's own).
    pub compacting: Arc<Mutex<()>>,
    /// Whether the writer's last append reached the disk.
    pub health: Arc<StoreHealth>,
    /// The thread that files durable webhook events in sled, off the writer's path (none while
    /// the store opens: recovery files them itself).
    pub filer: Arc<Mutex<Option<std::sync::mpsc::Sender<Filing>>>>,
}

/// Work for the filer thread.
pub(crate) enum Filing {
    Events(Vec<crate::webhooks::WebhookEvent>),
    /// Answered once everything sent before it is filed.
    Barrier(std::sync::mpsc::Sender<()>),
}

pub(super) fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}
pub(super) fn decode_pack(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    decode_block(value).map_err(|e| corrupt(key, e))
}
/// Sorts by time then seq and keeps one fix per (time, seq): the last one in `fixes`, as a later
/// write replaced an earlier one under the same key in the per-fix layout.
pub(super) fn sort_unique(fixes: &mut Vec<Fix>) {
    // Stable, so among equal keys the order of writing survives the sort.
    fixes.sort_by_key(|f| (f.time_ms, f.seq));
    let mut unique: Vec<Fix> = Vec::with_capacity(fixes.len());
    for fix in fixes.drain(..) {
        match unique.last_mut() {
            Some(last) if (last.time_ms, last.seq) == (fix.time_ms, fix.seq) => *last = fix,
            _ => unique.push(fix),
        }
    }
    *fixes = unique;
}
pub(super) fn decode_order(key: &[u8], value: &[u8]) -> Result<OrderRecord> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e))
}

pub(super) fn encode_order(record: &OrderRecord) -> Vec<u8> {
    // unwrap: an OrderRecord is plain data (strings, numbers, options): serde_json cannot fail on it
    serde_json::to_vec(record).unwrap()
}
impl Trees {
    /// `fixes` (sorted, unique) as the value for `key`, merged with the block already stored
    /// there, if any: two blocks starting with the same fix (a resend) must not lose the other's
    /// fixes.
    pub(super) fn merged_pack(&self, key: &[u8], fixes: Vec<Fix>) -> Result<Vec<u8>> {
        let Some(stored) = self.packs.get(key)? else {
            return Ok(encode_block(&fixes));
        };
        let mut all = decode_pack(key, &stored)?;
        all.extend(fixes);
        sort_unique(&mut all);
        Ok(encode_block(&all))
    }

    /// Writes `changes` into the trees (not flushed): each order's fixes as blocks, its record
    /// if it changed, its progress. Folding the same changes twice stores them once.
    ///
    /// Plain inserts, not `apply_batch`: each insert is atomic on its own and the flush after
    /// them makes them durable together; until then the log still holds them. (A sled batch
    /// seals the current I/O buffer twice and cannot span more than one.)
    pub(super) fn fold(&self, changes: &Changes) -> Result<()> {
        for (order, change) in changes {
            // Only a log read back at recovery still holds events (the writer files them in
            // sled after each sync and keeps them out of what it hands to compaction).
            self.webhooks.store_events(&change.events)?;
            if !change.fixes.is_empty() {
                let mut fixes = change.fixes.clone();
                sort_unique(&mut fixes);
                for chunk in fixes.chunks(MAX_FIXES_PER_BLOCK) {
                    let key = block_key(order, chunk);
                    let value = self.merged_pack(&key, chunk.to_vec())?;
                    self.packs.insert(key, value)?;
                }
            }
            let key = order.as_str().as_bytes();
            let progress = match &change.record {
                Some(record) => {
                    let mut record = record.clone();
                    if let Some(p) = &change.progress {
                        p.apply_to(&mut record);
                    }
                    self.orders.insert(key, encode_order(&record))?;
                    Some(Progress::of(&record))
                }
                None => change.progress,
            };
            if let Some(progress) = progress {
                self.progress.insert(key, progress.to_bytes())?;
            }
        }
        Ok(())
    }

    /// Folds every sealed segment into sled, flushes, then forgets the segments (in memory and
    /// on disk), oldest first. Returns how many were folded.
    pub(super) fn compact_sealed(&self) -> Result<usize> {
        let _one_at_a_time = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
        // A segment goes once sled has its events: the filer must have filed what it was given.
        self.wait_for_filer();
        let sealed: Vec<(u64, Arc<Changes>)> = self.lock_pending().sealed.iter().cloned().collect();
        if sealed.is_empty() {
            return Ok(0);
        }
        for (_, changes) in &sealed {
            self.fold(changes)?;
        }
        self.db.flush()?;
        for (id, _) in &sealed {
            // Dropped from memory before the file: a read between the two finds the fixes in
            // sled already, and a crash before the removal folds the segment again (harmlessly).
            self.lock_pending().sealed.pop_front();
            log::remove(&self.log_dir, *id)?;
        }
        Ok(sealed.len())
    }

    /// Waits until the filer has filed every event handed to it so far.
    fn wait_for_filer(&self) {
        let filer = self.filer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(filer) = filer {
            let (done, filed) = std::sync::mpsc::channel();
            if filer.send(Filing::Barrier(done)).is_ok() {
                let _ = filed.recv();
            }
        }
    }

    pub(super) fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record stored under `key` with its progress and route, before pending changes.
    pub(super) fn stored_order(&self, key: &[u8], value: &[u8]) -> Result<OrderRecord> {
        let mut record = decode_order(key, value)?;
        if let Some(progress) = self.progress.get(key)? {
            Progress::from_bytes(&progress)
                .map_err(|e| corrupt(key, e))?
                .apply_to(&mut record);
        }
        record.route = self
            .routes
            .get(key)?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(key, e)))
            .transpose()?;
        Ok(record)
    }

    /// `record` with the changes not yet folded into sled laid over it.
    pub(super) fn with_pending(&self, mut record: OrderRecord) -> OrderRecord {
        let pending = self.lock_pending();
        let order = record.order_id.clone();
        for change in pending.each(&order) {
            change.apply_to(&mut record);
        }
        record
    }
}
