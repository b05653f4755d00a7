//! The store's behaviour through its public interface: durability, reads across layouts and
//! the log, compaction, purging, recovery.

use super::read::{StoredBlock, StoredFix};
use prost::Message;

use super::codec::{block_key, fix_key};
use super::trees::decode_order;
use super::*;
use crate::fix::LatLon;

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
    let (active, ended_old, ended_new) = (order("active"), order("ended-old"), order("ended-new"));
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
            .insert(
                fix_key(&id, f.time_ms, f.seq),
                StoredFix::from(&f).encode_to_vec(),
            )
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
    let frame = StoredBlock {
        fixes: old.iter().map(StoredFix::from).collect(),
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
