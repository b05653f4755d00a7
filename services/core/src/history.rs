//! The history store on sled: every stored fix per order in time order, and the order records.
//!
//! Writes go through one writer thread that applies whatever has queued up and then flushes once
//! (group commit): a caller's future resolves only after its writes are on disk, yet a burst of
//! many couriers costs one fsync, not one per fix. sled's cost is per insert (a log entry each,
//! a copy of the node it lands in, splits), so a group writes each order's fixes as one block
//! and each order's record once, the latest of the group (an order sends its whole record with
//! every batch of fixes).
//!
//! Layout (sled trees):
//! - `fix_blocks`: `order_id 0x00 time_ms seq` of a block's first fix -> the block: up to
//!   [`MAX_FIXES_PER_BLOCK`] fixes of one order as a protobuf `CourierFrame`, sorted by time then
//!   seq. Ids never contain 0x00 and the time is big-endian with its sign bit flipped, so one
//!   order's blocks are one contiguous range; blocks of different groups may overlap in time (a
//!   late fix, a buffer flushed after a while), so reads merge them, and a fix stored twice (a
//!   resend after a crash that kept the fixes but not the record) is read once. A block written
//!   where one already starts is merged with it, never replacing it.
//! - `fixes`: `order_id 0x00 time_ms seq` -> one fix as protobuf: the layout before blocks, still
//!   read and purged (stores written by older versions), no longer written.
//! - `orders`: `order_id` -> the order record as JSON, rewritten with every update.
//! - `routes`: `order_id` -> the planned route as JSON, written once when the order is created.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::oneshot;
use trackline_proto::v1;

use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;
use crate::order::OrderRecord;

/// What the store can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("history store: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("history store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Writes that become durable together.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub fixes: Vec<(OrderId, Fix)>,
    pub orders: Vec<OrderRecord>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.fixes.is_empty() && self.orders.is_empty()
    }
}

enum Job {
    Write(WriteBatch, oneshot::Sender<Result<()>>),
    Create(Box<OrderRecord>, oneshot::Sender<Result<bool>>),
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PurgeStats {
    pub fixes: usize,
    pub orders: usize,
}

/// Figures about the group commit, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitStats {
    pub jobs: usize,
    pub fixes: usize,
    pub flush: Duration,
}

/// The most jobs applied before one flush; bounds the latency of the first job in a burst.
const MAX_JOBS_PER_FLUSH: usize = 4096;

/// The most fixes in one block: big enough that a group writes one block per order, small
/// enough that a purge that cuts a block rewrites little and a merge decodes little.
pub const MAX_FIXES_PER_BLOCK: usize = 256;

/// The history store. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct HistoryStore {
    db: sled::Db,
    /// The per-fix layout of older versions (read and purged only).
    fixes: sled::Tree,
    blocks: sled::Tree,
    orders: sled::Tree,
    routes: sled::Tree,
    jobs: mpsc::Sender<Job>,
}

/// Owns the writer thread; dropping every [`HistoryStore`] clone and then calling
/// [`WriterGuard::join`] waits until the last batch is flushed.
pub struct WriterGuard(Option<JoinHandle<()>>);

impl WriterGuard {
    /// Waits for the writer to drain and flush (after every store handle is dropped).
    pub fn join(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

fn order_prefix(order: &OrderId) -> Vec<u8> {
    let mut key = Vec::with_capacity(order.as_str().len() + 17);
    key.extend_from_slice(order.as_str().as_bytes());
    key.push(0);
    key
}

fn fix_key(order: &OrderId, time_ms: i64, seq: u64) -> Vec<u8> {
    let mut key = order_prefix(order);
    key.extend_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

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
    let raw = v1::Fix::decode(value).map_err(|e| corrupt(key, e.to_string()))?;
    Ok(from_proto(&raw))
}

fn encode_block(fixes: &[Fix]) -> Vec<u8> {
    let fixes = fixes.iter().map(Fix::to_proto).collect();
    v1::CourierFrame { fixes }.encode_to_vec()
}

fn decode_block(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    let raw = v1::CourierFrame::decode(value).map_err(|e| corrupt(key, e.to_string()))?;
    Ok(raw.fixes.iter().map(from_proto).collect())
}

/// The key of a block: that of its first fix.
fn block_key(order: &OrderId, fixes: &[Fix]) -> Vec<u8> {
    fix_key(order, fixes[0].time_ms, fixes[0].seq)
}

/// Sorts by time then seq and keeps one fix per (time, seq): the last one in `fixes`, as a later
/// write replaced an earlier one under the same key in the per-fix layout.
fn sort_unique(fixes: &mut Vec<Fix>) {
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

/// `fixes` (sorted, unique) as the value for `key`, merged with the block already stored there,
/// if any: two blocks starting with the same fix (a resend) must not lose the other's fixes.
fn merged_block(blocks: &sled::Tree, key: &[u8], fixes: Vec<Fix>) -> Result<Vec<u8>> {
    let Some(stored) = blocks.get(key)? else {
        return Ok(encode_block(&fixes));
    };
    let mut all = decode_block(key, &stored)?;
    all.extend(fixes);
    sort_unique(&mut all);
    Ok(encode_block(&all))
}

fn decode_order(key: &[u8], value: &[u8]) -> Result<OrderRecord> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode_order(record: &OrderRecord) -> Vec<u8> {
    // unwrap: an OrderRecord is plain data (strings, numbers, options): serde_json cannot fail on it
    serde_json::to_vec(record).unwrap()
}

impl HistoryStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    ///
    /// # Errors
    /// When sled cannot open the directory, e.g. another process holds its lock.
    pub fn open(dir: &Path) -> Result<(Self, WriterGuard)> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        let fixes = db.open_tree("fixes")?;
        let blocks = db.open_tree("fix_blocks")?;
        let orders = db.open_tree("orders")?;
        let routes = db.open_tree("routes")?;
        let (jobs, queue) = mpsc::channel();
        let store = Self {
            db,
            fixes,
            blocks,
            orders,
            routes,
            jobs,
        };
        let writer = store.clone_without_sender();
        let handle = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || writer.run_writer(queue))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok((store, WriterGuard(Some(handle))))
    }

    /// The writer keeps the trees but not a sender, so that it ends when every caller is gone.
    fn clone_without_sender(&self) -> WriterState {
        WriterState {
            db: self.db.clone(),
            blocks: self.blocks.clone(),
            orders: self.orders.clone(),
            routes: self.routes.clone(),
        }
    }

    /// Queues `batch` and returns a future that resolves once it is flushed to disk.
    ///
    /// The batch is queued before this returns, so batches are applied in call order even if
    /// their futures are polled in another order.
    ///
    /// # Errors
    /// The future fails when sled fails, or the store was closed.
    pub fn commit(
        &self,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        let queued = self.jobs.send(Job::Write(batch, reply));
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            done.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Stores a new order (and its route) durably unless one with its id exists; the future
    /// yields true when it was created.
    ///
    /// # Errors
    /// The future fails when sled fails, or the store was closed.
    pub fn create_order(
        &self,
        record: OrderRecord,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
        let (reply, done) = oneshot::channel();
        let queued = self.jobs.send(Job::Create(Box::new(record), reply));
        async move {
            queued.map_err(|_| StoreError::Closed)?;
            done.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// One order's record with its route (blocking: two sled reads).
    ///
    /// # Errors
    /// When sled fails or the record does not decode.
    pub fn order(&self, order: &OrderId) -> Result<Option<OrderRecord>> {
        let key = order.as_str().as_bytes();
        let Some(value) = self.orders.get(key)? else {
            return Ok(None);
        };
        let mut record = decode_order(key, &value)?;
        record.route = self.route(key)?;
        Ok(Some(record))
    }

    fn route(&self, key: &[u8]) -> Result<Option<Vec<LatLon>>> {
        self.routes
            .get(key)?
            .map(|v| {
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Every order record with its route (blocking: a scan).
    pub fn all_orders(&self) -> impl Iterator<Item = Result<OrderRecord>> + '_ {
        self.orders.iter().map(|item| {
            let (k, v) = item?;
            let mut record = decode_order(&k, &v)?;
            record.route = self.route(&k)?;
            Ok(record)
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
        let end = fix_key(order, to_ms, u64::MAX);
        let mut fixes = Vec::new();
        for item in self.fixes.range(fix_key(order, from_ms, 0)..=end.clone()) {
            let (k, v) = item?;
            fixes.push(decode_fix(&k, &v)?);
        }
        // Every block that starts by `to_ms`: one that starts earlier than `from_ms` may still
        // hold fixes after it.
        for item in self.blocks.range(order_prefix(order)..=end) {
            let (k, v) = item?;
            let block = decode_block(&k, &v)?;
            fixes.extend(
                block
                    .into_iter()
                    .filter(|f| (from_ms..=to_ms).contains(&f.time_ms)),
            );
        }
        sort_unique(&mut fixes);
        Ok(fixes)
    }

    /// How many fixes are stored for all orders (blocking: walks the trees; for tests and tools).
    pub fn fix_count(&self) -> usize {
        let in_blocks: usize = self
            .blocks
            .iter()
            .filter_map(|item| {
                let (k, v) = item.ok()?;
                Some(decode_block(&k, &v).ok()?.len())
            })
            .sum();
        self.fixes.len() + in_blocks
    }

    /// Deletes every fix older than `cutoff_ms`, and ended orders (delivered or cancelled) last
    /// updated before it with their routes, then flushes (blocking: walks every order).
    ///
    /// Location history is personal data: this is what the retention period and `trackctl purge`
    /// run. An active order keeps its record, whatever its age.
    ///
    /// # Errors
    /// When sled fails or a record does not decode.
    pub fn purge_before(&self, cutoff_ms: i64) -> Result<PurgeStats> {
        let mut stats = PurgeStats::default();
        for item in self.orders.iter() {
            let (key, value) = item?;
            let record = decode_order(&key, &value)?;
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
            for old in self.fixes.range(start..=end).keys() {
                doomed.remove(old?);
                removed += 1;
            }
            // Only when there is something to remove: a sled batch costs two writes of its I/O
            // buffer even when empty, and this runs for every order at every start (a server
            // restarted on 100,000 orders spent seconds in empty batches, and its shutdown
            // waited for them).
            if removed > 0 {
                self.fixes.apply_batch(doomed)?;
            }
            stats.fixes += removed + self.purge_blocks(&record.order_id, fixes_until)?;
            if ended_long_ago {
                self.orders.remove(&key)?;
                self.routes.remove(&key)?;
                stats.orders += 1;
            }
        }
        self.db.flush()?;
        Ok(stats)
    }

    /// The underlying database, for stores of other modules that must share its flushes.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    /// Removes `order`'s fixes up to `until_ms` from the blocks; a block that also holds later
    /// fixes is written again without the removed ones. Returns how many fixes went.
    fn purge_blocks(&self, order: &OrderId, until_ms: i64) -> Result<usize> {
        let mut removed = 0;
        let mut doomed = sled::Batch::default();
        let mut kept_blocks = Vec::new();
        for item in self
            .blocks
            .range(order_prefix(order)..=fix_key(order, until_ms, u64::MAX))
        {
            let (key, value) = item?;
            let (gone, kept): (Vec<Fix>, Vec<Fix>) = decode_block(&key, &value)?
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
        self.blocks.apply_batch(doomed)?;
        // After the removals: a kept remainder may start where another block starts.
        if !kept_blocks.is_empty() {
            let mut rewritten = sled::Batch::default();
            for kept in kept_blocks {
                let key = block_key(order, &kept);
                let value = merged_block(&self.blocks, &key, kept)?;
                rewritten.insert(key, value);
            }
            self.blocks.apply_batch(rewritten)?;
        }
        Ok(removed)
    }

    /// Flushes everything to disk (blocking).
    ///
    /// # Errors
    /// When sled fails.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

/// The writer thread's side of the store.
struct WriterState {
    db: sled::Db,
    blocks: sled::Tree,
    orders: sled::Tree,
    routes: sled::Tree,
}

impl WriterState {
    fn run_writer(self, queue: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(64);
        while let Ok(first) = queue.recv() {
            let started = Instant::now();
            jobs.push(first);
            while jobs.len() < MAX_JOBS_PER_FLUSH {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut group = Group::default();
            let mut applied = Vec::with_capacity(jobs.len());
            for job in jobs.drain(..) {
                applied.push(self.apply(job, &mut group));
            }
            let written = match group.failed.take() {
                Some(error) => Err(error),
                None => self.write(&mut group),
            };
            let flushed =
                written.and_then(|()| self.db.flush().map(|_| ()).map_err(StoreError::from));
            let stats = CommitStats {
                jobs: applied.len(),
                fixes: group.fix_count,
                flush: started.elapsed(),
            };
            metrics_hook(stats);
            for outcome in applied {
                outcome.reply(&flushed);
            }
        }
        if let Err(error) = self.db.flush() {
            tracing::error!(%error, "final history flush failed");
        }
    }

    /// Adds a write job to the group, or runs a create (after the group's writes so far, so that
    /// it sees the orders as the jobs before it left them).
    fn apply(&self, job: Job, group: &mut Group) -> Applied {
        match job {
            Job::Write(batch, reply) => {
                group.add(batch);
                Applied::Write(reply)
            }
            Job::Create(record, reply) => {
                if let Err(error) = self.write(group) {
                    // Fails the whole group: the writes drained just now are in no later batch.
                    group.failed.get_or_insert(error);
                }
                Applied::Create(self.create(&record), reply)
            }
        }
    }

    fn create(&self, record: &OrderRecord) -> Result<bool> {
        let key = record.order_id.as_str();
        let swapped =
            self.orders
                .compare_and_swap(key, None::<&[u8]>, Some(encode_order(record)))?;
        if swapped.is_err() {
            return Ok(false);
        }
        match &record.route {
            // unwrap: a list of finite coordinates always serialises
            Some(route) => self
                .routes
                .insert(key, serde_json::to_vec(route).unwrap())?,
            None => self.routes.remove(key)?,
        };
        Ok(true)
    }

    /// Applies the group's queued writes to the trees (not yet flushed): each order's fixes as
    /// blocks, then each order's latest record once. Fixes go first so that a record on disk never
    /// claims fixes (its `last_seq`) that the log lost: sled recovers a prefix of its log.
    ///
    /// Plain inserts, not `apply_batch`: each insert is atomic on its own, and the flush after
    /// the group makes them durable together. A sled batch seals the current I/O buffer twice
    /// (two more writes to disk for every batch) and sled does not support a batch that spans
    /// more than one I/O buffer, which a whole group's writes can.
    fn write(&self, group: &mut Group) -> Result<()> {
        for (order, mut fixes) in group.fixes.drain() {
            sort_unique(&mut fixes);
            for chunk in fixes.chunks(MAX_FIXES_PER_BLOCK) {
                let key = block_key(&order, chunk);
                let value = merged_block(&self.blocks, &key, chunk.to_vec())?;
                self.blocks.insert(key, value)?;
            }
        }
        for (_, record) in group.records.drain() {
            self.orders
                .insert(record.order_id.as_str(), encode_order(&record))?;
        }
        Ok(())
    }
}

/// The writes of one group commit, merged: each order's fixes in queue order, and per order only
/// the latest record (each record is the order's whole state, so a later one supersedes an
/// earlier one of the same group; the order actor sends one with every batch).
#[derive(Default)]
struct Group {
    fixes: HashMap<OrderId, Vec<Fix>>,
    records: HashMap<OrderId, OrderRecord>,
    /// Fixes in the group, for metrics.
    fix_count: usize,
    /// A write of the group that failed before its end (ahead of a create).
    failed: Option<StoreError>,
}

impl Group {
    fn add(&mut self, batch: WriteBatch) {
        self.fix_count += batch.fixes.len();
        for (order, fix) in batch.fixes {
            self.fixes.entry(order).or_default().push(fix);
        }
        for record in batch.orders {
            self.records.insert(record.order_id.clone(), record);
        }
    }
}

/// A job applied but not yet answered: its answer waits for the group's write and flush.
enum Applied {
    Write(oneshot::Sender<Result<()>>),
    Create(Result<bool>, oneshot::Sender<Result<bool>>),
}

impl Applied {
    /// `flushed` is the outcome of writing the group's merged batches and flushing: a write job
    /// shares it (its data was in those batches), a create adds its own outcome.
    fn reply(self, flushed: &Result<()>) {
        let group = || flushed.clone();
        // A send fails only when the caller stopped waiting; the write stands regardless.
        match self {
            Applied::Write(reply) => {
                let _ = reply.send(group());
            }
            Applied::Create(result, reply) => {
                let _ = reply.send(result.and_then(|c| group().map(|()| c)));
            }
        }
    }
}

/// Reports one group commit to whoever asked to observe them (the server feeds its metrics).
fn metrics_hook(stats: CommitStats) {
    if let Some(observer) = OBSERVER.get() {
        observer(stats);
    }
}

static OBSERVER: std::sync::OnceLock<fn(CommitStats)> = std::sync::OnceLock::new();

/// Installs a function called after every group commit; the first one installed stays.
pub fn observe_commits(observer: fn(CommitStats)) {
    let _ = OBSERVER.set(observer);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(seq: u64, time_ms: i64) -> Fix {
        Fix {
            seq,
            time_ms,
            pos: LatLon::new(62.0 + seq as f64 * 1e-4, 29.0),
            accuracy_m: Some(5.0),
            speed_mps: None,
            heading_deg: Some(10.0),
        }
    }

    fn order(id: &str) -> OrderRecord {
        let route = Some(vec![LatLon::new(62.1, 29.1), LatLon::new(62.0, 29.0)]);
        OrderRecord::new(
            OrderId::new(id).unwrap(),
            LatLon::new(62.0, 29.0),
            None,
            route,
            None,
            1,
        )
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn fixes_come_back_in_time_order_per_order_and_range() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let (a, ab) = (OrderId::new("a").unwrap(), OrderId::new("ab").unwrap());
        let batch = WriteBatch {
            fixes: vec![
                (a.clone(), fix(3, 3000)),
                (a.clone(), fix(1, -5)),
                (ab.clone(), fix(2, 2000)),
                (a.clone(), fix(2, 2000)),
            ],
            orders: vec![],
        };
        block_on(store.commit(batch)).unwrap();
        let seqs: Vec<u64> = store
            .fixes(&a, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3],
            "order 'a' must not see order 'ab' and must be time ordered"
        );
        assert_eq!(store.fixes(&a, 0, 2000).unwrap().len(), 1);
        assert_eq!(store.fixes(&a, 2001, 1).unwrap().len(), 0);
        assert_eq!(
            store.fixes(&ab, i64::MIN, i64::MAX).unwrap(),
            vec![fix(2, 2000)]
        );
    }

    #[test]
    fn a_resent_fix_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = OrderId::new("a").unwrap();
        for _ in 0..3 {
            block_on(store.commit(WriteBatch {
                fixes: vec![(a.clone(), fix(1, 10))],
                orders: vec![],
            }))
            .unwrap();
        }
        assert_eq!(store.fix_count(), 1);
    }

    #[test]
    fn create_refuses_an_existing_order_and_records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, writer) = HistoryStore::open(dir.path()).unwrap();
            assert!(block_on(store.create_order(order("o1"))).unwrap());
            assert!(!block_on(store.create_order(order("o1"))).unwrap());
            let mut updated = order("o1");
            updated.offset = 42;
            block_on(store.commit(WriteBatch {
                fixes: vec![(updated.order_id.clone(), fix(1, 1))],
                orders: vec![updated],
            }))
            .unwrap();
            drop(store);
            writer.join();
        }
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let back = store.order(&OrderId::new("o1").unwrap()).unwrap().unwrap();
        assert_eq!(back.offset, 42);
        assert_eq!(
            back.route.as_ref().map(Vec::len),
            Some(2),
            "the route is kept apart and comes back"
        );
        assert_eq!(store.all_orders().count(), 1);
        assert_eq!(store.fix_count(), 1);
    }

    #[test]
    fn purge_drops_old_fixes_and_long_ended_orders_only() {
        use crate::order::OrderStatus;
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let (active, ended_old, ended_new) =
            (order("active"), order("ended-old"), order("ended-new"));
        for record in [&active, &ended_old, &ended_new] {
            assert!(block_on(store.create_order(record.clone())).unwrap());
        }
        let mut closed_old = ended_old.clone();
        (closed_old.status, closed_old.updated_at_ms) = (OrderStatus::Delivered, 50);
        let mut closed_new = ended_new.clone();
        (closed_new.status, closed_new.updated_at_ms) = (OrderStatus::Cancelled, 500);
        let mut fixes = Vec::new();
        for record in [&active, &ended_old, &ended_new] {
            fixes.extend([
                (record.order_id.clone(), fix(1, 10)),
                (record.order_id.clone(), fix(2, 400)),
            ]);
        }
        block_on(store.commit(WriteBatch {
            fixes,
            orders: vec![closed_old, closed_new],
        }))
        .unwrap();

        let stats = store.purge_before(100).unwrap();
        assert_eq!(
            stats,
            PurgeStats {
                fixes: 4,
                orders: 1
            }
        );
        let times = |id: &OrderId| {
            store
                .fixes(id, i64::MIN, i64::MAX)
                .unwrap()
                .iter()
                .map(|f| f.time_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(times(&active.order_id), [400]);
        assert_eq!(times(&ended_new.order_id), [400]);
        assert!(times(&ended_old.order_id).is_empty());
        assert!(store.order(&ended_old.order_id).unwrap().is_none());
        assert!(
            store.order(&active.order_id).unwrap().is_some(),
            "an active order keeps its record"
        );
        assert_eq!(
            store.purge_before(100).unwrap(),
            PurgeStats::default(),
            "a second purge finds nothing"
        );
    }

    #[test]
    fn many_concurrent_commits_are_grouped_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = OrderId::new("a").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let (store, a) = (store.clone(), a.clone());
                    tokio::spawn(async move {
                        store
                            .commit(WriteBatch {
                                fixes: vec![(a, fix(i, i as i64))],
                                orders: vec![],
                            })
                            .await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
        });
        assert_eq!(store.fixes(&a, i64::MIN, i64::MAX).unwrap().len(), 200);
    }

    #[test]
    fn blocks_that_overlap_in_time_read_as_one_sorted_history_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = OrderId::new("a").unwrap();
        let commit = |seqs: &[(u64, i64)]| {
            let fixes = seqs.iter().map(|&(s, t)| (a.clone(), fix(s, t))).collect();
            block_on(store.commit(WriteBatch {
                fixes,
                orders: vec![],
            }))
            .unwrap();
        };
        commit(&[(1, 100), (2, 200), (3, 300)]);
        // A late fix (device time before the others) and a resend of one already stored.
        commit(&[(4, 150), (2, 200), (5, 400)]);
        // A resend that starts where the first block starts, with less in it: merged, not lost.
        commit(&[(1, 100)]);
        let all: Vec<(u64, i64)> = store
            .fixes(&a, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|f| (f.seq, f.time_ms))
            .collect();
        assert_eq!(all, [(1, 100), (4, 150), (2, 200), (3, 300), (5, 400)]);
        let middle: Vec<u64> = store
            .fixes(&a, 150, 300)
            .unwrap()
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(
            middle,
            [4, 2, 3],
            "a block that starts before the range still counts"
        );
    }

    #[test]
    fn a_group_splits_an_orders_fixes_into_bounded_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = OrderId::new("a").unwrap();
        let n = MAX_FIXES_PER_BLOCK as u64 * 2 + 3;
        let fixes = (1..=n).map(|i| (a.clone(), fix(i, i as i64))).collect();
        block_on(store.commit(WriteBatch {
            fixes,
            orders: vec![],
        }))
        .unwrap();
        assert_eq!(store.blocks.len(), 3);
        assert_eq!(store.fix_count(), n as usize);
        assert_eq!(
            store.fixes(&a, i64::MIN, i64::MAX).unwrap().len(),
            n as usize
        );
    }

    #[test]
    fn purge_cuts_a_block_that_straddles_the_cutoff_and_reads_the_per_fix_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = order("a");
        assert!(block_on(store.create_order(a.clone())).unwrap());
        let id = a.order_id.clone();
        // Two fixes as an older version stored them, one key each.
        for f in [fix(10, 10), fix(11, 500)] {
            store
                .fixes
                .insert(fix_key(&id, f.time_ms, f.seq), f.to_proto().encode_to_vec())
                .unwrap();
        }
        let fixes = [(1, 50), (2, 90), (3, 120), (4, 600)]
            .iter()
            .map(|&(s, t)| (id.clone(), fix(s, t)))
            .collect();
        block_on(store.commit(WriteBatch {
            fixes,
            orders: vec![],
        }))
        .unwrap();
        let times = || {
            store
                .fixes(&id, i64::MIN, i64::MAX)
                .unwrap()
                .iter()
                .map(|f| f.time_ms)
                .collect::<Vec<_>>()
        };
        assert_eq!(times(), [10, 50, 90, 120, 500, 600]);
        let stats = store.purge_before(100).unwrap();
        assert_eq!(
            stats.fixes, 3,
            "10 (per fix), 50 and 90 (cut from the block)"
        );
        assert_eq!(times(), [120, 500, 600]);
        assert_eq!(store.fix_count(), 3);
        assert_eq!(store.purge_before(100).unwrap(), PurgeStats::default());
    }
}
