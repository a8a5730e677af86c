//! The ethics journal under real concurrency and crashes: two processes appending at
//! once, and a writer killed mid-stream, must never lose or duplicate an acknowledged
//! entry. The test binary re-runs itself as the writer processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use pathos::ethics::journal::{Journal, JournalError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    writer: u32,
    n: u32,
}

const DIR: &str = "PATHOS_JOURNAL_TEST_DIR";
const WRITER: &str = "PATHOS_JOURNAL_TEST_WRITER";
const FOREVER: &str = "PATHOS_JOURNAL_TEST_FOREVER";

/// The writer process: appends 200 notes, or appends forever printing each
/// acknowledged seq. Does nothing when run as an ordinary test.
#[test]
fn child_writer() {
    let (Ok(dir), Ok(writer)) = (std::env::var(DIR), std::env::var(WRITER)) else {
        return;
    };
    let j = Journal::open(std::path::Path::new(&dir)).unwrap();
    let writer: u32 = writer.parse().unwrap();
    let forever = std::env::var(FOREVER).is_ok();
    let mut n = 0;
    while forever || n < 200 {
        let r = j.append(Note { writer, n }).unwrap();
        if forever {
            println!("ack {}", r.seq);
        }
        n += 1;
    }
}

fn child(dir: &std::path::Path, writer: u32, forever: bool) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "child_writer",
        "--nocapture",
        "--test-threads",
        "1",
        "-q",
    ])
    .env(DIR, dir)
    .env(WRITER, writer.to_string());
    if forever {
        c.env(FOREVER, "1");
    }
    c
}

#[test]
fn two_processes_append_without_losing_or_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = child(dir.path(), 1, false).spawn().unwrap();
    let mut b = child(dir.path(), 2, false).spawn().unwrap();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let j = Journal::open(dir.path()).unwrap();
    let all = j.read::<Note>().unwrap();
    assert_eq!(all.len(), 400);
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());
    for w in [1, 2] {
        let ns: Vec<u32> = all
            .iter()
            .filter(|r| r.entry.writer == w)
            .map(|r| r.entry.n)
            .collect();
        assert_eq!(ns, (0..200).collect::<Vec<u32>>(), "writer {w}");
    }
}

#[test]
fn a_killed_writer_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = child(dir.path(), 1, true)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix("ack ") {
            acked.push(seq.trim().parse::<u64>().unwrap());
            if acked.len() == 50 {
                break;
            }
        }
    }
    c.kill().unwrap();
    c.wait().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    let stored: Vec<u64> = j.read::<Note>().unwrap().iter().map(|r| r.seq).collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged entry {seq} lost");
    }
    let next = j.append(Note { writer: 9, n: 0 }).unwrap();
    assert_eq!(next.seq, stored.last().copied().unwrap_or(0) + 1);
    assert_eq!(j.read::<Note>().unwrap().len(), stored.len() + 1);
}

#[test]
fn a_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let err = Journal::open(&file.join("sub")).unwrap_err();
    assert!(matches!(err, JournalError::Io { .. }));
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}
