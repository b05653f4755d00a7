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
//! - `webhooks`: the webhook events, endpoints and deliveries ([`crate::webhooks::WebhookStore`]).
//!   An order's events travel in the same log record as the change that caused them, so a
//!   change is durable exactly when its events are; the writer files them in this tree right after
//!   the sync (a crash before the next compaction files them again from the log, once).
//!
//! The log is the folder `log/` beside sled's files ([`log`]).

mod codec;
mod gaps;
pub mod log;
mod purge;
mod read;
#[cfg(test)]
mod tests;
mod trees;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

pub use codec::Progress;
use trees::{encode_order, sort_unique, Trees};

use crate::fix::Fix;
use crate::ids::OrderId;
use crate::order::OrderRecord;
use crate::webhooks::{WebhookEvent, WebhookStore};

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
    /// The webhook events these changes cause: durable with them, in the same log record.
    pub events: Vec<WebhookEvent>,
    /// Written by an order that heard that an earlier write of it failed, and rolled its state
    /// back to what is durable: the one kind of write the store takes for such an order until
    /// the gap is filled (the `gaps` module says why).
    pub follows_failure: bool,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.fixes.is_empty()
            && self.orders.is_empty()
            && self.progress.is_empty()
            && self.events.is_empty()
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

/// The default of [`StoreOptions::cache_bytes`], in MiB: it fills within minutes under a fleet's
/// load, after which the process's memory no longer follows what is written.
pub const DEFAULT_CACHE_MIB: u64 = 16;

/// How the store runs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A log segment is sealed and folded into sled once it is this old (or this big).
    pub compact_every: Duration,
    pub max_segment_bytes: u64,
    /// The shortest time between the starts of two syncs: a job that comes to an idle writer
    /// is synced at once, and the jobs that come while the last sync is younger than this wait
    /// for the window to end and share the next one. A fleet's fixes arrive one at a time, and
    /// without a window almost every sync would carry a single fix (each sync costs the disk's
    /// round trip and tens of microseconds of kernel CPU).
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
            commit_window: Duration::from_millis(3),
            cache_bytes: DEFAULT_CACHE_MIB * 1024 * 1024,
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
    /// Its webhook events, oldest first (only until the writer has filed them in sled).
    pub events: Vec<WebhookEvent>,
}

impl OrderChanges {
    /// Adds `later` (written after what `self` holds).
    pub fn merge(&mut self, later: OrderChanges) {
        self.fixes.extend(later.fixes);
        self.events.extend(later.events);
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

enum Job {
    Write(WriteBatch, oneshot::Sender<Result<()>>),
    Create(Box<OrderRecord>, oneshot::Sender<Result<bool>>),
    /// Seal the open segment now (a purge wants every write in sled first).
    Seal(mpsc::Sender<()>),
}

/// Whether the history log can be written: the error of the writer's last append, if it failed
/// (a full disk, an I/O error). The writer keeps trying (every write, and a probe every second
/// while idle), so this clears by itself once the disk takes writes again.
#[derive(Debug, Default)]
pub(crate) struct StoreHealth(std::sync::Mutex<Option<String>>);

impl StoreHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn failed(&self, error: &StoreError) {
        let mut failure = self.lock();
        if failure.is_none() {
            tracing::error!(%error, "history writes fail: not ready until they succeed again");
        }
        *failure = Some(error.to_string());
    }

    pub fn succeeded(&self) {
        let mut failure = self.lock();
        if failure.take().is_some() {
            tracing::info!("history writes succeed again");
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.lock().clone()
    }

    pub fn is_failing(&self) -> bool {
        self.lock().is_some()
    }
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
            webhooks: WebhookStore::open(&db)?,
            log_dir: dir.join(log::LOG_DIR),
            pending: Arc::default(),
            compacting: Arc::default(),
            health: Arc::default(),
            filer: Arc::default(),
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

    /// Why the last write to the history log failed, while writes fail (none once one succeeds).
    pub fn write_failure(&self) -> Option<String> {
        self.trees.health.failure()
    }

    /// The webhook endpoints, events and deliveries, stored with the history.
    pub fn webhooks(&self) -> &WebhookStore {
        &self.trees.webhooks
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
