//! The outbox's file: every push, ack and rejection appended as a small record, so an app that
//! restarts reads back exactly the fixes the server has not acknowledged; rewritten compactly once
//! most of its records describe fixes that are gone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use trackline_proto::v1;
use trackline_proto::Message as _;

/// A fix was pushed: a little-endian u32 length, then the `Fix` in protobuf.
const PUSHED: u8 = b'F';
/// Every fix with a seq up to this one left the outbox (acked, or dropped from a full outbox).
const ACKED: u8 = b'A';
/// The fix with exactly this seq was rejected.
const REJECTED: u8 = b'R';
/// The highest seq ever pushed (written by a compaction, which may leave no fix to carry it).
const LAST_SEQ: u8 = b'S';
/// A compaction is due once the file holds this many records more than live fixes: small enough
/// that a day offline does not grow the file without bound, large enough that it is rare.
const COMPACT_SLACK: usize = 4096;

/// What a journal held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The unacknowledged fixes, oldest first.
    pub fixes: Vec<v1::Fix>,
    /// The highest seq ever pushed, acknowledged or not.
    pub last_seq: Option<u64>,
}

/// The append-only file behind a persistent outbox.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file, to decide when compacting pays.
    records: usize,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and reads back what it holds. A record cut short by
    /// a crash mid-write is dropped, and the file truncated to the last whole record.
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Recovered)> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (recovered, records, whole) = replay(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.set_len(whole as u64)?;
        let mut journal = Journal {
            path: path.to_path_buf(),
            file,
            records,
        };
        journal.seek_end()?;
        Ok((journal, recovered))
    }

    fn seek_end(&mut self) -> io::Result<()> {
        use std::io::Seek;
        self.file.seek(io::SeekFrom::End(0)).map(|_| ())
    }

    pub(crate) fn pushed(&mut self, fix: &v1::Fix) -> io::Result<()> {
        let mut record = Vec::with_capacity(40);
        encode_fix(&mut record, fix);
        self.append(&record)
    }

    pub(crate) fn acked(&mut self, seq: u64) -> io::Result<()> {
        self.append(&seq_record(ACKED, seq))
    }

    pub(crate) fn rejected(&mut self, seq: u64) -> io::Result<()> {
        self.append(&seq_record(REJECTED, seq))
    }

    /// Whether the file has grown enough past `live` fixes to be worth rewriting.
    pub(crate) fn wants_compaction(&self, live: usize) -> bool {
        self.records > live.saturating_mul(2) + COMPACT_SLACK
    }

    /// Rewrites the file as `fixes` and `last_seq` only: written beside it and renamed over it,
    /// so a crash leaves either the old file or the new one, never half of one.
    pub(crate) fn compact<'a>(
        &mut self,
        fixes: impl Iterator<Item = &'a v1::Fix>,
        last_seq: Option<u64>,
    ) -> io::Result<()> {
        let temporary = self.path.with_extension("compacting");
        let mut out = BufWriter::new(File::create(&temporary)?);
        let mut records = 0;
        if let Some(seq) = last_seq {
            out.write_all(&seq_record(LAST_SEQ, seq))?;
            records += 1;
        }
        let mut record = Vec::with_capacity(40);
        for fix in fixes {
            record.clear();
            encode_fix(&mut record, fix);
            out.write_all(&record)?;
            records += 1;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_data()?;
        fs::rename(&temporary, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = records;
        Ok(())
    }

    /// One record per write: the OS has it once this returns, so it survives the app being killed
    /// (a power loss may still take the last moments, as with any unsynced file).
    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        self.file.write_all(record)?;
        self.records += 1;
        Ok(())
    }
}

fn seq_record(kind: u8, seq: u64) -> [u8; 9] {
    let mut record = [0; 9];
    record[0] = kind;
    record[1..].copy_from_slice(&seq.to_le_bytes());
    record
}

fn encode_fix(out: &mut Vec<u8>, fix: &v1::Fix) {
    let body = fix.encode_to_vec();
    out.push(PUSHED);
    // a Fix is a few dozen bytes: its length always fits
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
}

/// What `bytes` describe, how many records they hold, and how many bytes are whole records.
fn replay(bytes: &[u8]) -> (Recovered, usize, usize) {
    let mut fixes = std::collections::VecDeque::<v1::Fix>::new();
    let mut last_seq: Option<u64> = None;
    let mut at = 0;
    let mut records = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some((used, record)) = read_record(rest) else {
            break;
        };
        match record {
            Record::Pushed(fix) => {
                last_seq = Some(last_seq.map_or(fix.seq, |last| last.max(fix.seq)));
                fixes.push_back(fix);
            }
            Record::Acked(seq) => {
                let gone = fixes.partition_point(|f| f.seq <= seq);
                fixes.drain(..gone);
            }
            Record::Rejected(seq) => {
                if let Ok(index) = fixes.binary_search_by_key(&seq, |f| f.seq) {
                    fixes.remove(index);
                }
            }
            Record::LastSeq(seq) => last_seq = Some(last_seq.map_or(seq, |last| last.max(seq))),
        }
        at += used;
        records += 1;
    }
    let recovered = Recovered {
        fixes: fixes.into(),
        last_seq,
    };
    (recovered, records, at)
}

enum Record {
    Pushed(v1::Fix),
    Acked(u64),
    Rejected(u64),
    LastSeq(u64),
}

/// One record at the start of `bytes` and its length; `None` for a record cut short or unknown.
fn read_record(bytes: &[u8]) -> Option<(usize, Record)> {
    let (&kind, rest) = bytes.split_first()?;
    let seq = || -> Option<u64> { Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)) };
    match kind {
        PUSHED => {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let body = rest.get(4..4 + len)?;
            let fix = v1::Fix::decode(body).ok()?;
            Some((5 + len, Record::Pushed(fix)))
        }
        ACKED => Some((9, Record::Acked(seq()?))),
        REJECTED => Some((9, Record::Rejected(seq()?))),
        LAST_SEQ => Some((9, Record::LastSeq(seq()?))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::tests::{fix, seqs};

    #[test]
    fn reopening_gives_back_what_was_not_acked_or_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.fixes.is_empty() && recovered.last_seq.is_none());
        for seq in 1..=6 {
            journal.pushed(&fix(seq)).unwrap();
        }
        journal.acked(2).unwrap();
        journal.rejected(4).unwrap();
        drop(journal);
        let (_journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(seqs(&recovered.fixes), [3, 5, 6]);
        assert_eq!(recovered.last_seq, Some(6));
    }

    #[test]
    fn a_record_cut_short_is_dropped_and_the_file_stays_usable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.pushed(&fix(1)).unwrap();
        journal.pushed(&fix(2)).unwrap();
        drop(journal);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(seqs(&recovered.fixes), [1]);
        journal.pushed(&fix(3)).unwrap();
        drop(journal);
        assert_eq!(seqs(&Journal::open(&path).unwrap().1.fixes), [1, 3]);
    }

    #[test]
    fn compaction_keeps_the_live_fixes_and_the_last_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let (mut journal, _) = Journal::open(&path).unwrap();
        for seq in 1..=10 {
            journal.pushed(&fix(seq)).unwrap();
        }
        journal.acked(10).unwrap();
        let before = fs::metadata(&path).unwrap().len();
        journal.compact([].iter(), Some(10)).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < before);
        journal.pushed(&fix(11)).unwrap();
        drop(journal);
        let (_, recovered) = Journal::open(&path).unwrap();
        assert_eq!(seqs(&recovered.fixes), [11]);
        assert_eq!(recovered.last_seq, Some(11));
        // with everything acked, the last seq alone survives
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.acked(11).unwrap();
        journal.compact([].iter(), Some(11)).unwrap();
        drop(journal);
        assert_eq!(Journal::open(&path).unwrap().1.last_seq, Some(11));
    }
}
