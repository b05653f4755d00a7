//! The write-ahead log: what a group commit makes durable, one append and one `fdatasync`.
//!
//! The log is a folder of segment files (`log/00000000000000000001.wal`, ...). Each group commit
//! appends one record to the open segment: `len u32 LE | crc32 u32 LE | payload`. A crash can
//! leave the last record torn; reading stops at the first record whose length or checksum does
//! not hold, and that record was never acknowledged (a caller hears back only after the
//! `fdatasync` that covered it). Sealed segments are folded into sled by the compactor and then
//! deleted, so the log holds seconds of history, not days.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The folder of the log inside the data dir.
pub const LOG_DIR: &str = "log";
const SUFFIX: &str = ".wal";
/// A record larger than this is taken as corrupt (a group is far smaller).
const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// The open segment the writer appends to.
pub struct Segment {
    pub id: u64,
    file: File,
    pub len: u64,
    /// A failed append left bytes after `len` that could not be cut off: nothing may follow them.
    pub torn: bool,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

/// The ids of the segments in `dir`, oldest first.
///
/// # Errors
/// When the folder cannot be read.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        ids.push(id);
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes the log folder (and its entry in the data dir) durable.
///
/// # Errors
/// When the folder cannot be made.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Segment {
    /// Creates segment `id` in `dir`, durably (the file's name is in the folder on disk).
    ///
    /// # Errors
    /// When the file cannot be made.
    pub fn create(dir: &Path, id: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(dir, id))?;
        sync_dir(dir)?;
        Ok(Self {
            id,
            file,
            len: 0,
            torn: false,
        })
    }

    /// Appends one record and waits until it is on disk.
    ///
    /// # Errors
    /// When the write or the sync fails (a full disk, an I/O error). What was written of the
    /// record is cut off again, so that the next append follows the last intact record; when
    /// even that fails the segment is [`Segment::torn`] and must not be written again (a reader
    /// stops at the first bad record, and would never see the ones after it).
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        record.extend_from_slice(payload);
        let written = self
            .file
            .write_all(&record)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += record.len() as u64;
                Ok(())
            }
            Err(error) => {
                let len = self.len;
                let cut = self
                    .file
                    .set_len(len)
                    .and_then(|()| self.file.seek(SeekFrom::Start(len)).map(|_| ()));
                self.torn = cut.is_err();
                Err(error)
            }
        }
    }
}

/// The intact records of segment `id`, in order; a torn or corrupt tail ends the list (and is
/// reported as the count of bytes ignored).
///
/// # Errors
/// When the file cannot be read.
pub fn read(dir: &Path, id: u64) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut bytes = Vec::new();
    File::open(segment_path(dir, id))?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        // unwrap: the slices are 4 bytes long
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let end = at + 8 + len as usize;
        if len > MAX_RECORD || end > bytes.len() || crc32fast::hash(&bytes[at + 8..end]) != crc {
            break;
        }
        records.push(bytes[at + 8..end].to_vec());
        at = end;
    }
    Ok((records, (bytes.len() - at) as u64))
}

/// Deletes segment `id` (after its records are durable in sled).
///
/// # Errors
/// When the file cannot be removed.
pub fn remove(dir: &Path, id: u64) -> io::Result<()> {
    match fs::remove_file(segment_path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(dir.path(), 7).unwrap();
        segment.append(b"first").unwrap();
        segment.append(b"").unwrap();
        segment.append(b"third").unwrap();
        let (records, ignored) = read(dir.path(), 7).unwrap();
        assert_eq!(records, [b"first".to_vec(), vec![], b"third".to_vec()]);
        assert_eq!(ignored, 0);

        // A crash in the middle of the next append: a partial header, then a partial payload,
        // then a full-length payload with a wrong checksum.
        let path = segment_path(dir.path(), 7);
        let whole = fs::read(&path).unwrap();
        for tail in [
            &[9u8, 0][..],
            &[5, 0, 0, 0, 1, 2, 3, 4, b'a'],
            &[1, 0, 0, 0, 0, 0, 0, 0, b'x'],
        ] {
            let mut torn = whole.clone();
            torn.extend_from_slice(tail);
            fs::write(&path, &torn).unwrap();
            let (records, ignored) = read(dir.path(), 7).unwrap();
            assert_eq!(records.len(), 3);
            assert_eq!(ignored, tail.len() as u64);
        }
        assert_eq!(segments(dir.path()).unwrap(), [7]);
        remove(dir.path(), 7).unwrap();
        remove(dir.path(), 7).unwrap();
        assert!(segments(dir.path()).unwrap().is_empty());
    }
}
