//! The history store: every stored fix per order in time order, and the order records.
//!
//! Writes go through one writer thread that takes whatever has queued up and makes it durable
//! with one append to a write-ahead log and one `fdatasync` (group commit): a caller's future
//! resolves only after its writes are on disk, yet a burst of many couriers costs one sync, and
//! no sled work happens on that path. A compactor thread folds each sealed log segment into sled
//! in the background (every few seconds: one compact block per order and segment, the order's
//! progress, its record if it changed) and then deletes the segment. Reads see sled and the
//! not yet compacted fixes alike; opening the store folds what a crash left in the log first.
//!
//! Why a log of our own in front of sled: a fix is ~15 bytes and arrives alone. Written to sled
//! one group at a time it paid a tree insert per order, a rewrite of the order's whole record,
//! and sled's flush through its I/O threads: ~950 bytes of disk and most of the server's CPU per
//! fix. The log costs one `write` and one `fdatasync` per group on the writer's own thread, and
//! sled sees each order once per compaction.
//!
//! Layout (sled trees):
//! - `fix_packs`: `order_id 0x00 time_ms seq` of a block's first fix -> the block: up to
//!   [`MAX_FIXES_PER_BLOCK`] fixes of one order, compactly encoded ([`codec::encode_block`]),
//!   sorted by time then seq. Ids never contain 0x00 and the time is big-endian with its sign
//!   bit flipped, so one order's blocks are one contiguous range; blocks of different
//!   compactions may overlap in time (a late fix, a buffer flushed after a while), so reads merge
//!   them, and a fix stored twice (a resend, a segment folded again after a crash) is read once.
//!   A block written where one already starts is merged with it, never replacing it.
//! - `fix_blocks` (protobuf `CourierFrame` blocks) and `fixes` (one protobuf fix per key): the
//!   layouts of older versions, still read and purged, no longer written.
//! - `orders`: `order_id` -> the order record as JSON, written when the order is created and when
//!   its status, courier or counts of refused fixes change.
//! - `progress`: `order_id` -> what changes with every fix (offset, last seq, position, ETA;
//!   [`Progress`]), laid over the record when read.
//! - `routes`: `order_id` -> the planned route as JSON, written once when the order is created.
//!
//! The log is the folder `log/` beside sled's files ([`log`]).

mod codec;
pub mod log;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;
use trackline_proto::v1;

pub use codec::Progress;
use codec::{block_key, decode_block, encode_block, fix_key, order_prefix};

use crate::fix::{Fix, LatLon};
use crate::ids::OrderId;
use crate::order::OrderRecord;

/// What the store can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("history store: {0}")]
    Sled(#[from] sled::Error),
    #[error("history log: {0}")]
    Log(String),
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("history store is closed")]
    Closed,
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Log(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Writes that become durable together.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub fixes: Vec<(OrderId, Fix)>,
    /// Whole records: for a change of status, courier or counts (rare).
    pub orders: Vec<OrderRecord>,
    /// What changes with every fix, for orders whose record is otherwise as last written.
    pub progress: Vec<(OrderId, Progress)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.fixes.is_empty() && self.orders.is_empty() && self.progress.is_empty()
    }
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

/// The most fixes in one block: big enough that a compaction writes one block per order, small
/// enough that a purge that cuts a block rewrites little and a merge decodes little.
pub const MAX_FIXES_PER_BLOCK: usize = 256;

/// How the store runs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A log segment is sealed and folded into sled once it is this old (or this big).
    pub compact_every: Duration,
    pub max_segment_bytes: u64,
    /// How long the writer gathers jobs after the first one before it syncs: a fleet's fixes
    /// arrive one at a time, and without a wait almost every sync would carry a single fix
    /// (each sync costs the disk's round trip and tens of microseconds of kernel CPU).
    pub commit_window: Duration,
    /// Bytes of history pages sled keeps in memory: what was written lately, for reads. It fills
    /// as history is written and then stays at this bound, whatever the number of orders.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            compact_every: Duration::from_secs(15),
            max_segment_bytes: 64 * 1024 * 1024,
            commit_window: Duration::from_millis(2),
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// One order's writes in a group commit or a log segment, merged: its fixes in the order they
/// came, its latest whole record, its latest progress.
#[derive(Debug, Default, Clone)]
pub(crate) struct OrderChanges {
    pub fixes: Vec<Fix>,
    pub record: Option<OrderRecord>,
    pub progress: Option<Progress>,
}

impl OrderChanges {
    /// Adds `later` (written after what `self` holds).
    pub fn merge(&mut self, later: OrderChanges) {
        self.fixes.extend(later.fixes);
        if later.record.is_some() {
            self.record = later.record;
        }
        if let Some(p) = later.progress {
            if self.progress.is_none_or(|q| p.offset >= q.offset) {
                self.progress = Some(p);
            }
        }
    }

    /// Lays these changes over `record` (the state before them).
    fn apply_to(&self, record: &mut OrderRecord) {
        if let Some(newer) = &self.record {
            let route = record.route.take();
            *record = newer.clone();
            record.route = route;
        }
        if let Some(p) = &self.progress {
            p.apply_to(record);
        }
    }
}

pub(crate) type Changes = HashMap<OrderId, OrderChanges>;

/// Durable writes not yet folded into sled: the open segment's and the sealed ones', oldest
/// first. The writer adds a group after its sync; the compactor drops a segment after sled has
/// it; reads look here too. One lock, taken once per group by the writer and briefly by reads.
#[derive(Default)]
pub(crate) struct Pending {
    pub sealed: VecDeque<(u64, Arc<Changes>)>,
    pub open: Changes,
}

impl Pending {
    fn each<'a>(&'a self, order: &'a OrderId) -> impl Iterator<Item = &'a OrderChanges> + 'a {
        self.sealed
            .iter()
            .map(|(_, changes)| changes.as_ref())
            .chain(std::iter::once(&self.open))
            .filter_map(move |changes| changes.get(order))
    }
}

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
    pub log_dir: PathBuf,
    pub pending: Arc<Mutex<Pending>>,
    /// Held while a compaction runs (the compactor's, or a purge's own).
    pub compacting: Arc<Mutex<()>>,
}

enum Job {
    Write(WriteBatch, oneshot::Sender<Result<()>>),
    Create(Box<OrderRecord>, oneshot::Sender<Result<bool>>),
    /// Seal the open segment now (a purge wants every write in sled first).
    Seal(mpsc::Sender<()>),
}

/// The history store. Cheap to clone: clones share the database and the writer.
#[derive(Clone)]
pub struct HistoryStore {
    trees: Trees,
    jobs: mpsc::Sender<Job>,
}

/// Owns the writer and compactor threads; dropping every [`HistoryStore`] clone and then
/// calling [`WriterGuard::join`] waits until the last batch is durable and folded into sled.
pub struct WriterGuard(Vec<JoinHandle<()>>);

impl WriterGuard {
    /// Waits for the writer to drain and the compactor to fold the log (after every store
    /// handle is dropped).
    pub fn join(mut self) {
        for handle in self.0.drain(..) {
            let _ = handle.join();
        }
    }
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
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
    let raw = v1::Fix::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(from_proto(&raw))
}

fn decode_proto_block(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    let raw = v1::CourierFrame::decode(value).map_err(|e| corrupt(key, e))?;
    Ok(raw.fixes.iter().map(from_proto).collect())
}

/// Decodes a stored block (key, value) of one of the layouts.
type DecodeBlocks = fn(&[u8], &[u8]) -> Result<Vec<Fix>>;

fn decode_pack(key: &[u8], value: &[u8]) -> Result<Vec<Fix>> {
    decode_block(value).map_err(|e| corrupt(key, e))
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

fn decode_order(key: &[u8], value: &[u8]) -> Result<OrderRecord> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e))
}

fn encode_order(record: &OrderRecord) -> Vec<u8> {
    // unwrap: an OrderRecord is plain data (strings, numbers, options): serde_json cannot fail on it
    serde_json::to_vec(record).unwrap()
}

impl Trees {
    /// `fixes` (sorted, unique) as the value for `key`, merged with the block already stored
    /// there, if any: two blocks starting with the same fix (a resend) must not lose the other's
    /// fixes.
    fn merged_pack(&self, key: &[u8], fixes: Vec<Fix>) -> Result<Vec<u8>> {
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
    fn fold(&self, changes: &Changes) -> Result<()> {
        for (order, change) in changes {
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
    fn compact_sealed(&self) -> Result<usize> {
        let _one_at_a_time = self.compacting.lock().unwrap_or_else(|e| e.into_inner());
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

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record stored under `key` with its progress and route, before pending changes.
    fn stored_order(&self, key: &[u8], value: &[u8]) -> Result<OrderRecord> {
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
    fn with_pending(&self, mut record: OrderRecord) -> OrderRecord {
        let pending = self.lock_pending();
        let order = record.order_id.clone();
        for change in pending.each(&order) {
            change.apply_to(&mut record);
        }
        record
    }
}

impl HistoryStore {
    /// Opens (or creates) the store in `dir` with the default options.
    ///
    /// # Errors
    /// When sled cannot open the directory, e.g. another process holds its lock, or the log
    /// left by an earlier run cannot be folded in.
    pub fn open(dir: &Path) -> Result<(Self, WriterGuard)> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`, folds what the log holds (the writes of a run that
    /// did not stop cleanly) into sled, and starts the writer and the compactor.
    ///
    /// # Errors
    /// As [`HistoryStore::open`].
    pub fn open_with(dir: &Path, options: StoreOptions) -> Result<(Self, WriterGuard)> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .open()?;
        let trees = Trees {
            fixes: db.open_tree("fixes")?,
            proto_blocks: db.open_tree("fix_blocks")?,
            packs: db.open_tree("fix_packs")?,
            orders: db.open_tree("orders")?,
            progress: db.open_tree("progress")?,
            routes: db.open_tree("routes")?,
            log_dir: dir.join(log::LOG_DIR),
            pending: Arc::default(),
            compacting: Arc::default(),
            db,
        };
        log::create_dir(&trees.log_dir)?;
        let next_segment = writer::recover(&trees)? + 1;
        let (jobs, queue) = mpsc::channel();
        let threads = writer::start(trees.clone(), queue, next_segment, options)?;
        Ok((Self { trees, jobs }, WriterGuard(threads)))
    }

    /// Queues `batch` and returns a future that resolves once it is durable.
    ///
    /// The batch is queued before this returns, so batches are applied in call order even if
    /// their futures are polled in another order.
    ///
    /// # Errors
    /// The future fails when the log or sled fails, or the store was closed.
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
    fn block_layouts(&self) -> [(&sled::Tree, DecodeBlocks); 2] {
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

    /// Seals the log and folds all of it into sled (blocking): what a purge needs first.
    ///
    /// # Errors
    /// When the log or sled fails, or the writer is gone.
    pub fn compact_now(&self) -> Result<()> {
        let (sealed, done) = mpsc::channel();
        self.jobs
            .send(Job::Seal(sealed))
            .map_err(|_| StoreError::Closed)?;
        done.recv().map_err(|_| StoreError::Closed)?;
        self.trees.compact_sealed()?;
        Ok(())
    }

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
                stats.orders += 1;
            }
        }
        trees.db.flush()?;
        Ok(stats)
    }

    /// The underlying database, for stores of other modules that must share its flushes.
    pub fn database(&self) -> &sled::Db {
        &self.trees.db
    }

    /// Flushes sled to disk (blocking; the log is durable at every commit already).
    ///
    /// # Errors
    /// When sled fails.
    pub fn flush(&self) -> Result<()> {
        self.trees.db.flush()?;
        Ok(())
    }
}

impl Trees {
    /// Removes `order`'s fixes up to `until_ms` from the blocks of `tree`; a block that also
    /// holds later fixes is written again, in this version's layout, without the removed ones.
    /// Returns how many fixes went.
    fn purge_blocks(
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
            ..Default::default()
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
                ..Default::default()
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
                ..Default::default()
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
            ..Default::default()
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
                                ..Default::default()
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
                ..Default::default()
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
            ..Default::default()
        }))
        .unwrap();
        store.compact_now().unwrap();
        assert_eq!(store.trees.packs.len(), 3);
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
                .trees
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
            ..Default::default()
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

    /// A copy of a live data dir: what a machine that lost power leaves (sled's files as far as
    /// they got, the log as synced).
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn acked_writes_come_back_from_the_log_when_sled_never_got_them() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            compact_every: Duration::from_secs(3600),
            ..Default::default()
        };
        let (store, _writer) = HistoryStore::open_with(dir.path(), options).unwrap();
        let mut record = order("o1");
        assert!(block_on(store.create_order(record.clone())).unwrap());
        let id = record.order_id.clone();
        record.status = crate::order::OrderStatus::PickedUp;
        record.offset = 3;
        block_on(store.commit(WriteBatch {
            fixes: vec![(id.clone(), fix(1, 100)), (id.clone(), fix(2, 200))],
            orders: vec![record.clone()],
            ..Default::default()
        }))
        .unwrap();
        record.offset = 5;
        record.last_seq = 3;
        block_on(store.commit(WriteBatch {
            fixes: vec![(id.clone(), fix(3, 300))],
            progress: vec![(id.clone(), Progress::of(&record))],
            ..Default::default()
        }))
        .unwrap();
        // Seen before any compaction, by the running store.
        let live = store.order(&id).unwrap().unwrap();
        assert_eq!(
            (live.status, live.offset, live.last_seq),
            (record.status, 5, 3)
        );
        assert_eq!(store.fixes(&id, i64::MIN, i64::MAX).unwrap().len(), 3);
        assert_eq!(store.trees.packs.len(), 0, "nothing compacted yet");

        let crashed = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), crashed.path());
        let (back, writer) = HistoryStore::open(crashed.path()).unwrap();
        let record_back = back.order(&id).unwrap().unwrap();
        assert_eq!(
            (record_back.status, record_back.offset, record_back.last_seq),
            (record.status, 5, 3)
        );
        assert_eq!(record_back.route.as_ref().map(Vec::len), Some(2));
        let times: Vec<i64> = back
            .fixes(&id, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|f| f.time_ms)
            .collect();
        assert_eq!(times, [100, 200, 300]);
        assert!(
            log::segments(&back.trees.log_dir).unwrap().len() <= 1,
            "the log was folded into sled at open"
        );
        assert_eq!(back.trees.packs.len(), 1);
        drop(back);
        writer.join();
    }

    #[test]
    fn a_segment_folded_twice_stores_its_fixes_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = OrderId::new("a").unwrap();
        let mut changes = Changes::new();
        changes.entry(a.clone()).or_default().fixes = vec![fix(1, 10), fix(2, 20)];
        store.trees.fold(&changes).unwrap();
        store.trees.fold(&changes).unwrap();
        changes.entry(a.clone()).or_default().fixes = vec![fix(2, 20), fix(3, 30)];
        store.trees.fold(&changes).unwrap();
        assert_eq!(store.fixes(&a, i64::MIN, i64::MAX).unwrap().len(), 3);
        assert_eq!(store.fix_count(), 3);
    }

    #[test]
    fn progress_is_seen_before_and_after_compaction_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = order("o1");
        let id = record.order_id.clone();
        {
            let (store, writer) = HistoryStore::open(dir.path()).unwrap();
            assert!(block_on(store.create_order(record.clone())).unwrap());
            record.offset = 9;
            record.last_seq = 77;
            block_on(store.commit(WriteBatch {
                progress: vec![(id.clone(), Progress::of(&record))],
                ..Default::default()
            }))
            .unwrap();
            assert_eq!(store.order(&id).unwrap().unwrap().offset, 9);
            store.compact_now().unwrap();
            assert_eq!(store.order(&id).unwrap().unwrap().last_seq, 77);
            assert_eq!(
                store
                    .trees
                    .orders
                    .get(id.as_str())
                    .unwrap()
                    .map(|v| { decode_order(b"", &v).unwrap().offset }),
                Some(0),
                "the record itself is not rewritten for progress"
            );
            drop(store);
            writer.join();
        }
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let back = store.all_orders().next().unwrap().unwrap();
        assert_eq!((back.offset, back.last_seq), (9, 77));
    }

    #[test]
    fn blocks_of_the_older_protobuf_layout_are_read_merged_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = HistoryStore::open(dir.path()).unwrap();
        let a = order("a");
        assert!(block_on(store.create_order(a.clone())).unwrap());
        let id = a.order_id.clone();
        // A block as the version before the log wrote it: a protobuf CourierFrame.
        let old = [fix(1, 10), fix(2, 20), fix(3, 300)];
        let frame = v1::CourierFrame {
            fixes: old.iter().map(Fix::to_proto).collect(),
        };
        store
            .trees
            .proto_blocks
            .insert(block_key(&id, &old), frame.encode_to_vec())
            .unwrap();
        block_on(store.commit(WriteBatch {
            fixes: vec![(id.clone(), fix(2, 20)), (id.clone(), fix(4, 400))],
            ..Default::default()
        }))
        .unwrap();
        let seqs = |store: &HistoryStore| -> Vec<u64> {
            let fixes = store.fixes(&id, i64::MIN, i64::MAX).unwrap();
            fixes.iter().map(|f| f.seq).collect()
        };
        assert_eq!(seqs(&store), [1, 2, 3, 4]);
        assert_eq!(store.fix_count(), 4);
        // Fix 2 was stored in both layouts (a resend) and goes from both.
        assert_eq!(store.purge_before(100).unwrap().fixes, 3);
        assert_eq!(
            seqs(&store),
            [3, 4],
            "the old block's remainder is kept, rewritten"
        );
        assert_eq!(store.trees.proto_blocks.len(), 0);
    }
}
