//! The append-only journal of human review: one JSON object per line, each line
//! written whole and fsync'd before `append` returns, under an exclusive file lock so
//! several processes can append at once.
//!
//! An entry is acknowledged once [`Journal::append`] returns; a crash can only tear the
//! line being written, never an acknowledged one. A torn last line (no trailing newline,
//! or unparseable) is skipped when reading and cut off by the next append.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "cannot use the ethics journal at {}: {source} (set --journal or PATHOS_JOURNAL to a writable directory)",
        path.display()
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the ethics journal {} is damaged at line {line}: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("cannot encode a journal entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    /// 1, 2, 3, … in file order, unique across processes.
    pub seq: u64,
    /// When it was written, RFC 3339 UTC.
    pub time: String,
    pub entry: T,
}

/// The journal file.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

/// Just the sequence number of a line, whatever its entry type.
#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

impl Journal {
    /// Opens `dir/journal.jsonl`, creating both if needed; fails now, with the path, if
    /// the directory cannot be written.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join("journal.jsonl");
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self { path })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends `entry` and returns its record once it is on disk.
    pub fn append<T: Serialize + DeserializeOwned>(
        &self,
        entry: T,
    ) -> Result<Record<T>, JournalError> {
        // Locking the journal file itself: every writer and reader opens it anyway,
        // and a lock on it cannot be left behind by a crashed process.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        let result = self.append_locked(&mut file, entry);
        let _ = file.unlock();
        result
    }

    fn append_locked<T: Serialize>(
        &self,
        file: &mut File,
        entry: T,
    ) -> Result<Record<T>, JournalError> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        // Cut a torn tail back to the end of the last whole line.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole < bytes.len() {
            file.set_len(whole as u64).map_err(|e| self.io(e))?;
        }
        let last = bytes[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<SeqOnly>(l).ok())
            .map(|s| s.seq)
            .max()
            .unwrap_or(0);
        let record = Record {
            seq: last + 1,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            entry,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        file.seek(SeekFrom::Start(whole as u64))
            .map_err(|e| self.io(e))?;
        file.write_all(&line).map_err(|e| self.io(e))?;
        file.sync_data().map_err(|e| self.io(e))?;
        Ok(record)
    }

    /// Every whole record, in order. A torn last line is skipped; a bad line before it
    /// is an error naming the line.
    pub fn read<T: DeserializeOwned>(&self) -> Result<Vec<Record<T>>, JournalError> {
        let mut file = File::open(&self.path).map_err(|e| self.io(e))?;
        file.lock_shared().map_err(|e| self.io(e))?;
        let mut text = Vec::new();
        let read = file.read_to_end(&mut text);
        let _ = file.unlock();
        read.map_err(|e| self.io(e))?;
        let complete = text.ends_with(b"\n");
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let n = lines.len();
        let mut out = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let is_last = i + 1 == n || (i + 2 == n && complete);
            match serde_json::from_slice::<Record<T>>(line) {
                Ok(r) if !is_last || complete => out.push(r),
                // A last line without its newline was never acknowledged.
                Ok(_) => {}
                Err(_) if is_last => {}
                Err(e) => {
                    return Err(JournalError::Corrupt {
                        path: self.path.clone(),
                        line: i + 1,
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_skipped_then_cut() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(1u32).unwrap();
        j.append(2u32).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"{\"seq\":3,\"ti").unwrap();
        assert_eq!(j.read::<u32>().unwrap().len(), 2);
        let r = j.append(3u32).unwrap();
        assert_eq!(r.seq, 3);
        let all = j.read::<u32>().unwrap();
        assert_eq!(
            all.iter().map(|r| r.entry).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(all[0].time.ends_with('Z'));
    }

    #[test]
    fn a_bad_middle_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.append(1u32).unwrap();
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(b"garbage\n").unwrap();
        j.append(2u32).unwrap();
        match j.read::<u32>() {
            Err(JournalError::Corrupt { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
