//! The append-only journal of human review: one JSON object per line, each line
//! written whole and fsync'd before `append` returns, under an exclusive file lock so
//! several processes can append at once.
//!
//! An entry is acknowledged once [`Journal::append`] returns; a crash can only tear the
//! line being written, never an acknowledged one. A torn last line (no trailing newline,
//! or unparseable) is skipped when reading and cut off by the next append.
//!
//! The lock is taken on `journal.jsonl` itself rather than on a sibling lock file:
//! every reader and writer opens the journal anyway, there is no second file to create
//! or leave behind, and the kernel drops the lock when a holder dies. Repairs only
//! shorten the file in place (never replace it), so the locked file is always the one
//! in use.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// The journal's file name inside its directory.
const FILE_NAME: &str = "journal.jsonl";

/// What can go wrong with the journal, each as a one-line message naming the file so
/// a person can act on it without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal cannot be created or opened for appending; reported by
    /// [`Journal::open`] so a misconfigured location fails before any review work is
    /// done rather than when a decision is about to be recorded.
    #[error(
        "cannot write the ethics journal in {}: {source} (set PATHOS_HOME, PATHOS_JOURNAL or --journal to a writable directory)",
        dir.display()
    )]
    Unwritable { dir: PathBuf, source: io::Error },

    /// Opening, locking, reading, writing or syncing an open journal failed; `action`
    /// says which step, since the remedy differs (a full disk, a vanished file, …).
    #[error("cannot {action} the ethics journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },

    /// A line other than the last does not parse. Only the last line can be torn by a
    /// crash, so this is damage from outside (an edit, a disk fault) that a person must
    /// look at; skipping it silently could drop a recorded decision.
    #[error(
        "the ethics journal {} is damaged at line {line}: {message} (repair or remove that line)",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// The entry cannot be written as JSON (say, a map with non-string keys); reported
    /// before the file is touched, so nothing was written.
    #[error("cannot encode an ethics journal entry: {0}")]
    Encode(#[from] serde_json::Error),
}

/// One stored line: the entry plus what a reader needs to order and cite it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<T> {
    /// 1, 2, 3, … in file order, unique across processes, so later entries (a decision)
    /// can refer to earlier ones (the case) by number.
    pub seq: u64,
    /// When it was written, RFC 3339 UTC to the second, for people auditing decisions.
    pub time: String,
    /// What the caller stored.
    pub entry: T,
}

/// The journal file. Holds only its path: the sequence counter lives in the file and is
/// read under the lock, so separate processes (and handles) never hand out the same seq.
#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// Opens `dir/journal.jsonl`, creating both if needed. The file is opened for
    /// appending here, so an unwritable location fails now, naming the directory.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        let unwritable = |source| JournalError::Unwritable {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(unwritable)?;
        let path = dir.join(FILE_NAME);
        if open_for_append(&path).map_err(unwritable)? {
            // A new file's directory entry must be durable too, or a power cut could
            // take the whole journal with its acknowledged entries.
            sync_dir(dir).map_err(unwritable)?;
        }
        Ok(Self { path })
    }

    /// The journal file, so commands can tell people where their decisions are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `entry` and returns its record once it is on disk. Everything happens
    /// under an exclusive lock: cutting a torn tail, taking the next seq from the file,
    /// writing the line in one call and fsyncing it, so an Ok means it survives a crash.
    pub fn append<T: Serialize + DeserializeOwned>(
        &self,
        entry: T,
    ) -> Result<Record<T>, JournalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(self.io("open"))?;
        file.lock().map_err(self.io("lock"))?;
        let result = self.append_locked(&mut file, entry);
        // Closing the file releases the lock anyway, so a failed unlock loses nothing.
        let _ = file.unlock();
        result
    }

    fn append_locked<T: Serialize>(
        &self,
        file: &mut File,
        entry: T,
    ) -> Result<Record<T>, JournalError> {
        let bytes = self.read_all(file)?;
        // Only the envelope matters here; entries are skipped unparsed.
        let parsed = parse::<Record<IgnoredAny>>(&self.path, &bytes)?;
        // The max rather than the last seq keeps seqs unique even after a hand edit.
        let seq = parsed.records.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        let record = Record {
            seq,
            time: now_rfc3339(),
            entry,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let keep = parsed.keep as u64;
        if parsed.keep < bytes.len() {
            file.set_len(keep).map_err(self.io("repair"))?;
        }
        file.seek(SeekFrom::Start(keep))
            .map_err(self.io("append to"))?;
        file.write_all(&line).map_err(self.io("append to"))?;
        file.sync_data().map_err(self.io("sync"))?;
        Ok(record)
    }

    /// Every acknowledged record, in file order. A torn last line is skipped, since it
    /// was never acknowledged; a bad line before it is [`JournalError::Corrupt`].
    pub fn read<T: DeserializeOwned>(&self) -> Result<Vec<Record<T>>, JournalError> {
        let mut file = File::open(&self.path).map_err(self.io("open"))?;
        // Shared, so readers never see an append half-way through its repair.
        file.lock_shared().map_err(self.io("lock"))?;
        let bytes = self.read_all(&mut file);
        let _ = file.unlock();
        Ok(parse(&self.path, &bytes?)?.records)
    }

    fn read_all(&self, file: &mut File) -> Result<Vec<u8>, JournalError> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(self.io("read"))?;
        Ok(bytes)
    }

    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> JournalError + '_ {
        move |source| JournalError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

/// Opens `path` for appending, creating it; true when this call created it.
fn open_for_append(path: &Path) -> io::Result<bool> {
    match OpenOptions::new().append(true).create_new(true).open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path).map(|_| false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The acknowledged records of a journal and how many leading bytes hold them (and
/// the blank lines among them); an append cuts the file back to that length.
struct Parsed<R> {
    records: Vec<R>,
    keep: usize,
}

/// One line of the file.
struct Line<'a> {
    /// 1-based, counting blank lines, as an editor shows it.
    number: usize,
    /// Without its '\n'.
    body: &'a [u8],
    /// Offset just past the line (and its '\n').
    end: usize,
    terminated: bool,
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut end = 0;
    bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .map(move |(i, raw)| {
            end += raw.len();
            let body = raw.strip_suffix(b"\n");
            Line {
                number: i + 1,
                body: body.unwrap_or(raw),
                end,
                terminated: body.is_some(),
            }
        })
}

/// Parses every non-blank line. The last one is torn, not corrupt, when it lacks its
/// '\n' or does not parse: `append` writes the newline in the same call as the line
/// and fsyncs before acknowledging, so such a line was never acknowledged.
fn parse<R: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<Parsed<R>, JournalError> {
    let lines: Vec<Line> = lines(bytes)
        .filter(|l| !l.body.trim_ascii().is_empty())
        .collect();
    let mut parsed = Parsed {
        records: Vec::with_capacity(lines.len()),
        keep: 0,
    };
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        match serde_json::from_slice(line.body) {
            Ok(record) if line.terminated => {
                parsed.records.push(record);
                parsed.keep = line.end;
            }
            Err(e) if !last => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: line.number,
                    message: e.to_string(),
                });
            }
            // Only the last line can get here: torn.
            _ => {}
        }
    }
    Ok(parsed)
}
