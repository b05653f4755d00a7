//! The courier's outbox: fixes not yet acknowledged, which of them went out on the current
//! connection, and what to resend after a reconnect; optionally mirrored in a file
//! ([`crate::journal`]) so an app restart loses nothing.

use std::collections::VecDeque;
use std::path::Path;

use trackline_proto::v1;

use crate::journal::Journal;

/// Fixes waiting for an `Ack`, oldest first, with strictly increasing `seq`.
///
/// A fix leaves the buffer when an `Ack` covers it (durable on the server) or a `Rejected` names it
/// (the server will never take it, so resending is pointless). After a reconnect everything left
/// is sent again with the same seqs; the server de-duplicates.
#[derive(Debug)]
pub(crate) struct Outbox {
    fixes: VecDeque<v1::Fix>,
    /// How many fixes at the front were sent on the current connection.
    sent: usize,
    /// The highest seq ever handed out for sending, to tell a resend from a first send.
    max_sent_seq: u64,
    /// The last seq pushed, which outlives its fix: seqs must keep increasing after an ack.
    last_seq: Option<u64>,
    capacity: usize,
    /// The file every change is appended to, for a persistent outbox.
    journal: Option<Journal>,
}

/// A seq that is not above the last one pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqNotIncreasing {
    pub seq: u64,
    pub last: u64,
}

/// What [`Outbox::push`] refuses.
#[derive(Debug)]
pub(crate) enum PushFailed {
    Seq(SeqNotIncreasing),
    Io(std::io::Error),
}

impl Outbox {
    /// A buffer that keeps at most `capacity` fixes; beyond that the oldest are dropped, as a phone
    /// that has been offline too long gives up on its oldest positions rather than on the newest.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            fixes: VecDeque::new(),
            sent: 0,
            max_sent_seq: 0,
            last_seq: None,
            capacity: capacity.max(1),
            journal: None,
        }
    }

    /// An outbox kept in the file at `path` as well: what an earlier run left unacknowledged is
    /// in it again, and its seqs keep increasing from there.
    ///
    /// # Errors
    /// When the file cannot be read or created.
    pub(crate) fn open(path: &Path, capacity: usize) -> std::io::Result<Self> {
        let (journal, recovered) = Journal::open(path)?;
        let mut outbox = Self::new(capacity);
        outbox.fixes = recovered.fixes.into();
        outbox.last_seq = recovered.last_seq;
        outbox.journal = Some(journal);
        Ok(outbox)
    }

    /// The last seq pushed, in this run or an earlier one of a persistent outbox.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Whether another push would drop the oldest fix.
    pub(crate) fn is_full(&self) -> bool {
        self.fixes.len() >= self.capacity
    }

    /// Adds a new fix; the seq of the oldest one, when a full buffer dropped it to make room.
    ///
    /// # Errors
    /// When its seq is not above the last one buffered (the protocol needs strictly increasing
    /// seqs), or the outbox's file cannot be written.
    pub(crate) fn push(&mut self, fix: v1::Fix) -> Result<Option<u64>, PushFailed> {
        if let Some(last) = self.last_seq {
            if fix.seq <= last {
                return Err(PushFailed::Seq(SeqNotIncreasing { seq: fix.seq, last }));
            }
        }
        if let Some(journal) = &mut self.journal {
            journal.pushed(&fix).map_err(PushFailed::Io)?;
        }
        self.last_seq = Some(fix.seq);
        let mut dropped = None;
        if self.fixes.len() >= self.capacity {
            if let Some(oldest) = self.fixes.pop_front() {
                self.journal_write(|journal| journal.acked(oldest.seq));
                dropped = Some(oldest.seq);
            }
            self.sent = self.sent.saturating_sub(1);
        }
        self.fixes.push_back(fix);
        Ok(dropped)
    }

    /// Records a departure in the file. A failure is only logged: the worst it causes is that a
    /// restarted app resends a fix the server already holds, which the server ignores.
    fn journal_write(&mut self, write: impl FnOnce(&mut Journal) -> std::io::Result<()>) {
        let Some(journal) = &mut self.journal else {
            return;
        };
        let mut written = write(journal);
        if written.is_ok() && journal.wants_compaction(self.fixes.len()) {
            written = journal.compact(self.fixes.iter(), self.last_seq);
        }
        if let Err(err) = written {
            tracing::warn!(%err, "could not update the outbox file");
        }
    }

    /// Fixes not acknowledged yet.
    pub(crate) fn len(&self) -> usize {
        self.fixes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fixes.is_empty()
    }

    /// Fixes not sent on the current connection.
    pub(crate) fn unsent_len(&self) -> usize {
        self.fixes.len() - self.sent
    }

    /// Up to `max` of the oldest unsent fixes, now counted as sent, and how many of them are resends.
    pub(crate) fn take_unsent(&mut self, max: usize) -> (Vec<v1::Fix>, usize) {
        let end = self.fixes.len().min(self.sent + max);
        let batch: Vec<v1::Fix> = self.fixes.range(self.sent..end).cloned().collect();
        self.sent = end;
        let resent = batch.iter().filter(|f| f.seq <= self.max_sent_seq).count();
        if let Some(last) = batch.last() {
            self.max_sent_seq = self.max_sent_seq.max(last.seq);
        }
        (batch, resent)
    }

    /// The connection is gone: everything still buffered must go out again on the next one.
    pub(crate) fn connection_lost(&mut self) {
        self.sent = 0;
    }

    /// `Ack { seq }`: every fix up to `seq` is durable. Returns how many left the buffer.
    pub(crate) fn ack(&mut self, seq: u64) -> usize {
        let acked = self.fixes.partition_point(|f| f.seq <= seq);
        self.fixes.drain(..acked);
        self.sent = self.sent.saturating_sub(acked);
        if acked > 0 {
            self.journal_write(|journal| journal.acked(seq));
        }
        acked
    }

    /// `Rejected { seq }`: that fix will never be taken. Returns false when it was not buffered
    /// (already acknowledged, or never sent by us).
    pub(crate) fn reject(&mut self, seq: u64) -> bool {
        let Ok(index) = self.fixes.binary_search_by_key(&seq, |f| f.seq) else {
            return false;
        };
        self.fixes.remove(index);
        if index < self.sent {
            self.sent -= 1;
        }
        self.journal_write(|journal| journal.rejected(seq));
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fix with only a seq and a time: what the outbox and its journal look at.
    pub(crate) fn fix(seq: u64) -> v1::Fix {
        v1::Fix {
            seq,
            time_ms: 1_700_000_000_000 + seq as i64,
            ..Default::default()
        }
    }

    pub(crate) fn seqs(fixes: &[v1::Fix]) -> Vec<u64> {
        fixes.iter().map(|f| f.seq).collect()
    }

    fn buffer_with(range: std::ops::RangeInclusive<u64>) -> Outbox {
        let mut buffer = Outbox::new(100);
        for seq in range {
            buffer.push(fix(seq)).unwrap();
        }
        buffer
    }

    #[test]
    fn sends_in_batches_and_acks_drop_the_prefix() {
        let mut buffer = buffer_with(1..=5);
        let (first, resent) = buffer.take_unsent(2);
        assert_eq!((seqs(&first), resent), (vec![1, 2], 0));
        assert_eq!(buffer.unsent_len(), 3);
        assert_eq!(buffer.ack(1), 1);
        assert_eq!(buffer.len(), 4);
        assert_eq!(seqs(&buffer.take_unsent(10).0), [3, 4, 5]);
        assert_eq!(buffer.ack(4), 3);
        assert_eq!(seqs(&buffer.take_unsent(10).0), Vec::<u64>::new());
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn after_a_reconnect_everything_unacked_is_resent_with_the_same_seqs() {
        let mut buffer = buffer_with(10..=14);
        buffer.take_unsent(5);
        buffer.ack(11);
        buffer.connection_lost();
        buffer.push(fix(15)).unwrap();
        let (again, resent) = buffer.take_unsent(100);
        assert_eq!(seqs(&again), [12, 13, 14, 15]);
        // 15 goes out for the first time
        assert_eq!(resent, 3);
    }

    #[test]
    fn an_ack_for_unsent_or_unknown_seqs_is_harmless() {
        let mut buffer = buffer_with(5..=7);
        assert_eq!(buffer.ack(4), 0);
        assert_eq!(buffer.ack(100), 3);
        assert!(buffer.is_empty());
        assert_eq!(buffer.unsent_len(), 0);
    }

    #[test]
    fn rejected_fixes_are_never_resent() {
        let mut buffer = buffer_with(1..=4);
        buffer.take_unsent(3);
        assert!(buffer.reject(2));
        assert!(!buffer.reject(2));
        assert_eq!(buffer.unsent_len(), 1);
        assert_eq!(seqs(&buffer.take_unsent(10).0), [4]);
        buffer.connection_lost();
        assert_eq!(seqs(&buffer.take_unsent(10).0), [1, 3, 4]);
        // rejecting an unsent fix leaves the sent count alone
        let mut buffer = buffer_with(1..=3);
        buffer.take_unsent(1);
        assert!(buffer.reject(3));
        assert_eq!(buffer.unsent_len(), 1);
    }

    #[test]
    fn seqs_must_increase() {
        let mut buffer = buffer_with(1..=3);
        assert!(matches!(
            buffer.push(fix(3)),
            Err(PushFailed::Seq(SeqNotIncreasing { seq: 3, last: 3 }))
        ));
        // even when everything before was acknowledged
        buffer.ack(3);
        assert!(matches!(
            buffer.push(fix(2)),
            Err(PushFailed::Seq(SeqNotIncreasing { seq: 2, last: 3 }))
        ));
        assert!(buffer.push(fix(4)).is_ok());
    }

    #[test]
    fn a_full_buffer_drops_the_oldest() {
        let mut buffer = Outbox::new(3);
        for seq in 1..=3 {
            buffer.push(fix(seq)).unwrap();
        }
        buffer.take_unsent(2);
        assert_eq!(buffer.push(fix(4)).unwrap(), Some(1));
        assert_eq!(buffer.unsent_len(), 2);
        assert_eq!(seqs(&buffer.take_unsent(10).0), [3, 4]);
    }

    #[test]
    fn a_persistent_outbox_comes_back_with_its_unacked_fixes_and_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let mut outbox = Outbox::open(&path, 100).unwrap();
        for seq in 1..=5 {
            outbox.push(fix(seq)).unwrap();
        }
        outbox.take_unsent(5);
        outbox.ack(2);
        outbox.reject(4);
        drop(outbox);
        let mut outbox = Outbox::open(&path, 100).unwrap();
        assert_eq!(outbox.last_seq(), Some(5));
        // nothing of it went out on this run's connection yet
        assert_eq!(seqs(&outbox.take_unsent(10).0), [3, 5]);
        assert!(outbox.push(fix(5)).is_err());
    }
}
