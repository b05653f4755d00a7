//! The writer thread (group commit into the log), the compactor thread (sealed segments into
//! sled), the byte layout of one group in the log, and recovery of the log at open.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::codec::{decode_block, encode_block, put_bytes, DecodeError, Progress, Reader};
use super::gaps::Gaps;
use super::log::{self, Segment};
use super::trees::Filing;
use super::{
    encode_order, sort_unique, Changes, CommitStats, Job, OrderChanges, Result, StoreError,
    StoreOptions, Trees,
};
use crate::ids::OrderId;
use crate::order::OrderRecord;
use crate::webhooks::{EventType, WebhookEvent};

/// How often a store whose writes fail tries again while no write comes.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The most jobs taken before one sync; bounds the latency of the first job in a burst.
const MAX_JOBS_PER_SYNC: usize = 4096;

mod part {
    pub const RECORD: u8 = 1;
    pub const PROGRESS: u8 = 1 << 1;
    pub const FIXES: u8 = 1 << 2;
    pub const EVENTS: u8 = 1 << 3;
}

/// One group as a log record: per order its id, then what it has of record (JSON), progress
/// and fixes (a compact block).
fn encode_group(changes: &Changes) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 + changes.len() * 96);
    super::codec::put_u64(&mut buf, changes.len() as u64);
    for (order, change) in changes {
        put_bytes(&mut buf, order.as_str().as_bytes());
        let mut parts = 0;
        if change.record.is_some() {
            parts |= part::RECORD;
        }
        if change.progress.is_some() {
            parts |= part::PROGRESS;
        }
        if !change.fixes.is_empty() {
            parts |= part::FIXES;
        }
        if !change.events.is_empty() {
            parts |= part::EVENTS;
        }
        buf.push(parts);
        if let Some(record) = &change.record {
            put_bytes(&mut buf, &encode_order(record));
        }
        if let Some(progress) = &change.progress {
            progress.encode(&mut buf);
        }
        if !change.fixes.is_empty() {
            put_bytes(&mut buf, &encode_block(&change.fixes));
        }
        if !change.events.is_empty() {
            // unwrap: events are plain data (strings, numbers, options)
            put_bytes(&mut buf, &serde_json::to_vec(&change.events).unwrap());
        }
    }
    buf
}

fn decode_group(bytes: &[u8], into: &mut Changes) -> Result<(), DecodeError> {
    let mut r = Reader(bytes);
    let n = r.u64()?;
    for _ in 0..n {
        let id = std::str::from_utf8(r.bytes()?).map_err(|e| DecodeError(e.to_string()))?;
        let order = OrderId::new(id).map_err(|e| DecodeError(e.to_string()))?;
        let parts = r.u8()?;
        let mut change = OrderChanges::default();
        if parts & part::RECORD != 0 {
            let record: OrderRecord =
                serde_json::from_slice(r.bytes()?).map_err(|e| DecodeError(e.to_string()))?;
            change.record = Some(record);
        }
        if parts & part::PROGRESS != 0 {
            change.progress = Some(Progress::decode(&mut r)?);
        }
        if parts & part::FIXES != 0 {
            change.fixes = decode_block(r.bytes()?)?;
        }
        if parts & part::EVENTS != 0 {
            change.events =
                serde_json::from_slice(r.bytes()?).map_err(|e| DecodeError(e.to_string()))?;
        }
        into.entry(order).or_default().merge(change);
    }
    if !r.is_empty() {
        return Err(DecodeError("bytes after the last order of a group".into()));
    }
    Ok(())
}

/// Folds every segment a run left into sled and deletes them; returns the highest segment id
/// seen (0 for none), so that new segments sort after it.
///
/// # Errors
/// When the log cannot be read, a record inside it does not decode, or sled fails.
pub(super) fn recover(trees: &Trees) -> Result<u64> {
    let ids = log::segments(&trees.log_dir)?;
    for &id in &ids {
        let (records, torn) = log::read(&trees.log_dir, id)?;
        if torn > 0 {
            // The tail of a write that never finished: nobody was told it was durable.
            tracing::warn!(
                segment = id,
                bytes = torn,
                "ignoring the torn end of a log segment"
            );
        }
        let mut changes = Changes::new();
        for record in &records {
            decode_group(record, &mut changes).map_err(|e| StoreError::Corrupt {
                key: format!("log segment {id}"),
                reason: e.to_string(),
            })?;
        }
        trees
            .lock_pending()
            .sealed
            .push_back((id, Arc::new(changes)));
    }
    let folded = trees.compact_sealed()?;
    if folded > 0 {
        tracing::info!(segments = folded, "folded the history log into the store");
    }
    Ok(ids.last().copied().unwrap_or(0))
}

/// Starts the writer and the compactor; the writer appends to segments from `next_segment` on.
pub(super) fn start(
    trees: Trees,
    queue: mpsc::Receiver<Job>,
    next_segment: u64,
    options: StoreOptions,
) -> Result<Vec<JoinHandle<()>>> {
    let segment = Segment::create(&trees.log_dir, next_segment)?;
    let (filings, filer_queue) = mpsc::channel::<Filing>();
    let webhooks = trees.webhooks.clone();
    let filer = std::thread::Builder::new()
        .name("webhook-filer".into())
        .spawn(move || run_filer(&webhooks, &filer_queue))?;
    *trees.filer.lock().unwrap_or_else(|e| e.into_inner()) = Some(filings);
    let (sealed_tx, sealed_rx) = mpsc::channel::<()>();
    let compactor_trees = trees.clone();
    let compactor = std::thread::Builder::new()
        .name("history-compactor".into())
        .spawn(move || run_compactor(&compactor_trees, &sealed_rx))?;
    let writer = Writer {
        trees,
        segment,
        opened: Instant::now(),
        last_sync: None,
        sealed: sealed_tx,
        options,
        gaps: Gaps::default(),
    };
    let writer = std::thread::Builder::new()
        .name("history-writer".into())
        .spawn(move || writer.run(&queue))?;
    // The writer first: once it is done (every store handle dropped), it seals the last segment
    // and lets the compactor go, which folds it and ends; the filer ends with the last handle.
    Ok(vec![writer, compactor, filer])
}

/// Files the webhook events of durable groups in sled, in the order they came, so that the
/// writer (and every ack) never waits for sled.
fn run_filer(webhooks: &crate::webhooks::WebhookStore, queue: &mpsc::Receiver<Filing>) {
    while let Ok(filing) = queue.recv() {
        match filing {
            Filing::Events(events) => {
                // Should sled fail here, the next start files them from the log.
                if let Err(error) = webhooks.store_events(&events) {
                    tracing::error!(%error, "filing webhook events failed; the log keeps them");
                }
            }
            Filing::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn run_compactor(trees: &Trees, sealed: &mpsc::Receiver<()>) {
    while sealed.recv().is_ok() {
        // Notices that came meanwhile are covered by this pass.
        while sealed.try_recv().is_ok() {}
        if let Err(error) = trees.compact_sealed() {
            // The segments stay in the log and in memory: the next pass (or the next start)
            // folds them again.
            tracing::error!(%error, "compacting the history log failed");
        }
    }
    if let Err(error) = trees.compact_sealed() {
        tracing::error!(%error, "final compaction of the history log failed");
    }
}

struct Writer {
    trees: Trees,
    segment: Segment,
    /// When the open segment got its first record (or was opened).
    opened: Instant,
    /// When the last group started its sync: the next one waits out the commit window from then.
    last_sync: Option<Instant>,
    sealed: mpsc::Sender<()>,
    options: StoreOptions,
    /// Orders whose fixes a failed group lacks, and whose earlier-issued writes are refused.
    gaps: Gaps,
}

/// A job taken into a group, waiting for the group's sync.
enum Taken {
    Write(oneshot::Sender<Result<()>>),
    Refused(StoreError, oneshot::Sender<Result<()>>),
    Create(Result<bool>, oneshot::Sender<Result<bool>>),
    Seal(mpsc::Sender<()>),
}

impl Writer {
    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(64);
        loop {
            let idle_for = if self.trees.health.is_failing() {
                PROBE_EVERY.min(self.options.compact_every)
            } else {
                self.options.compact_every
            };
            match queue.recv_timeout(idle_for) {
                Ok(first) => jobs.push(first),
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: what the open segment holds goes to sled all the same.
                    self.probe_if_failing();
                    self.seal_if_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let started = Instant::now();
            // At most one sync per commit window: a job that finds the writer idle for longer is
            // synced at once, and under load the jobs that come within a window share one sync
            // (one sleep, not a wake-up per job that comes meanwhile).
            let since_sync = self.last_sync.map_or(Duration::MAX, |at| started - at);
            if let Some(wait) = self.options.commit_window.checked_sub(since_sync) {
                std::thread::sleep(wait);
            }
            while jobs.len() < MAX_JOBS_PER_SYNC {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.last_sync = Some(Instant::now());
            self.group(&mut jobs, started);
            self.seal_if_due();
        }
        self.seal();
    }

    /// Makes the jobs durable together and answers them.
    fn group(&mut self, jobs: &mut Vec<Job>, started: Instant) {
        let mut changes = Changes::new();
        let mut fix_count = 0;
        let mut created = false;
        let mut seal = false;
        // The writes that fill gaps: their orders' gaps close once the group is durable.
        let mut filling = Vec::new();
        let taken: Vec<Taken> = jobs
            .drain(..)
            .map(|job| match job {
                Job::Write(batch, reply) => {
                    if let Some(refusal) = self.gaps.refusal(&batch) {
                        return Taken::Refused(refusal, reply);
                    }
                    fix_count += batch.fixes.len();
                    if batch.follows_failure {
                        filling.extend(Gaps::orders_of(&batch).cloned());
                    }
                    add_batch(&mut changes, batch);
                    Taken::Write(reply)
                }
                Job::Create(record, reply) => {
                    created = true;
                    Taken::Create(create(&self.trees, &record), reply)
                }
                Job::Seal(reply) => {
                    seal = true;
                    Taken::Seal(reply)
                }
            })
            .collect();
        for change in changes.values_mut() {
            sort_unique(&mut change.fixes);
        }
        let mut durable = self.append(&changes);
        if created && durable.is_ok() {
            // A create writes sled directly (it must see whether the order exists).
            durable = self.trees.db.flush().map(|_| ()).map_err(StoreError::from);
        }
        match &durable {
            Ok(()) => self.gaps.written(&filling),
            Err(_) => self.gaps.failed(&changes),
        }
        // Durable in the log already (when the group is), so filed in sled for the dispatchers
        // by the filer thread: no courier's ack waits for sled.
        let mut events: Vec<_> = changes
            .values_mut()
            .flat_map(|c| std::mem::take(&mut c.events))
            .collect();
        if durable.is_ok() && !changes.is_empty() {
            let mut pending = self.trees.lock_pending();
            for (order, change) in changes {
                pending.open.entry(order).or_default().merge(change);
            }
        }
        if seal {
            self.file_events(&mut events, durable.is_ok());
            self.seal();
        }
        super::metrics_hook(CommitStats {
            jobs: taken.len(),
            fixes: fix_count,
            flush: started.elapsed(),
        });
        // A send fails only when the caller stopped waiting; the write stands regardless.
        for job in taken {
            match job {
                Taken::Write(reply) => {
                    let _ = reply.send(durable.clone());
                }
                Taken::Refused(refusal, reply) => {
                    let _ = reply.send(Err(refusal));
                }
                Taken::Create(result, reply) => {
                    let _ = reply.send(result.and_then(|c| durable.clone().map(|()| c)));
                }
                Taken::Seal(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        self.file_events(&mut events, durable.is_ok());
    }

    /// Hands a durable group's webhook events to the filer (once: `events` is emptied). Before
    /// the segment that holds them is sealed: compaction waits for what the filer was given.
    fn file_events(&mut self, events: &mut Vec<crate::webhooks::WebhookEvent>, durable: bool) {
        let events = std::mem::take(events);
        // Without an endpoint the filer would store nothing: spare it the wake-up.
        if durable && !events.is_empty() && self.trees.webhooks.has_endpoints() {
            let filer = self
                .trees
                .filer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(filer) = filer {
                let _ = filer.send(Filing::Events(events));
            }
        }
    }

    /// Appends the group to the open segment and syncs it (nothing to do for an empty group:
    /// every earlier group is durable already).
    fn append(&mut self, changes: &Changes) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.append_record(&encode_group(changes))
    }

    /// Appends one record to the open segment, and records whether the store can write.
    fn append_record(&mut self, record: &[u8]) -> Result<()> {
        if self.segment.torn {
            // Nothing may follow a torn record: only a new segment takes writes.
            self.seal();
            if self.segment.torn {
                let error = StoreError::Log("the history log cannot open a new segment".into());
                self.trees.health.failed(&error);
                return Err(error);
            }
        }
        if self.segment.len == 0 {
            self.opened = Instant::now();
        }
        let appended = self.segment.append(record).map_err(StoreError::from);
        match &appended {
            Ok(()) => self.trees.health.succeeded(),
            Err(error) => self.trees.health.failed(error),
        }
        appended
    }

    /// While writes fail, tries one (an empty group, which recovery reads as nothing) so that
    /// the store finds out by itself when it can write again, with no fix waiting to be stored.
    fn probe_if_failing(&mut self) {
        if self.trees.health.is_failing() {
            let _ = self.append_record(&encode_group(&Changes::new()));
        }
    }

    fn seal_if_due(&mut self) {
        let due = self.segment.len >= self.options.max_segment_bytes
            || (self.segment.len > 0 && self.opened.elapsed() >= self.options.compact_every);
        if due {
            self.seal();
        }
    }

    /// Closes the open segment, hands its changes to the compactor and opens the next one.
    fn seal(&mut self) {
        if self.segment.len == 0 && !self.segment.torn {
            return;
        }
        let next = match Segment::create(&self.trees.log_dir, self.segment.id + 1) {
            Ok(next) => next,
            Err(error) => {
                // Keep appending to the open segment; sealing is tried again after the next group.
                tracing::error!(%error, "cannot open the next history log segment");
                return;
            }
        };
        let done = std::mem::replace(&mut self.segment, next);
        self.opened = Instant::now();
        let mut pending = self.trees.lock_pending();
        let changes = std::mem::take(&mut pending.open);
        pending.sealed.push_back((done.id, Arc::new(changes)));
        drop(pending);
        let _ = self.sealed.send(());
    }
}

fn add_batch(changes: &mut Changes, batch: super::WriteBatch) {
    for (order, fix) in batch.fixes {
        changes.entry(order).or_default().fixes.push(fix);
    }
    for record in batch.orders {
        let order = record.order_id.clone();
        let change = OrderChanges {
            record: Some(record),
            ..Default::default()
        };
        changes.entry(order).or_default().merge(change);
    }
    for (order, progress) in batch.progress {
        let change = OrderChanges {
            progress: Some(progress),
            ..Default::default()
        };
        changes.entry(order).or_default().merge(change);
    }
    for event in batch.events {
        let order = event.order_id().clone();
        changes.entry(order).or_default().events.push(event);
    }
}

/// Stores a new order and its route unless the id exists (flushed with the group).
fn create(trees: &Trees, record: &OrderRecord) -> Result<bool> {
    let key = record.order_id.as_str();
    let swapped = trees
        .orders
        .compare_and_swap(key, None::<&[u8]>, Some(encode_order(record)))?;
    if swapped.is_err() {
        return Ok(false);
    }
    // A progress left by an earlier order of this id (purged) must not lay over the new one.
    trees.progress.remove(key)?;
    match &record.route {
        // unwrap: a list of finite coordinates always serialises
        Some(route) => trees
            .routes
            .insert(key, serde_json::to_vec(route).unwrap())?,
        None => trees.routes.remove(key)?,
    };
    // Flushed with the order, before anyone hears it was created.
    let created = WebhookEvent::of(record, EventType::OrderCreated, 1, record.created_at_ms);
    trees.webhooks.store_events([&created])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::{Fix, LatLon};

    #[test]
    fn a_group_round_trips_through_its_log_record() {
        let order = OrderId::new("o-1").unwrap();
        let mut record =
            OrderRecord::new(order.clone(), LatLon::new(1.0, 2.0), None, None, None, 3);
        record.offset = 4;
        let fix = Fix {
            seq: 9,
            time_ms: 1000,
            pos: LatLon::new(1.5, 2.5),
            accuracy_m: None,
            speed_mps: Some(3.0),
            heading_deg: None,
        };
        let mut changes = Changes::new();
        changes.insert(
            order.clone(),
            OrderChanges {
                fixes: vec![fix],
                record: Some(record.clone()),
                progress: Some(Progress::of(&record)),
                events: vec![crate::webhooks::WebhookEvent::of(
                    &record,
                    crate::webhooks::EventType::OrderEta,
                    2,
                    5,
                )],
            },
        );
        changes.insert(OrderId::new("o-2").unwrap(), OrderChanges::default());
        let mut back = Changes::new();
        decode_group(&encode_group(&changes), &mut back).unwrap();
        let got = &back[&order];
        assert_eq!(got.fixes, [fix]);
        assert_eq!(got.record.as_ref(), Some(&record));
        assert_eq!(got.progress, Some(Progress::of(&record)));
        assert_eq!(got.events, changes[&order].events);
        assert_eq!(back.len(), 2);
        let bytes = encode_group(&changes);
        assert!(decode_group(&bytes[..bytes.len() - 1], &mut Changes::new()).is_err());
    }
}
