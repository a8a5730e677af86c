//! The ethics journal's promises: records come back as written, a torn last line is
//! skipped and then cut, damage elsewhere is reported with its line, and under real
//! concurrency and crashes (two processes appending at once, a writer killed
//! mid-stream) no acknowledged entry is lost or duplicated. The test binary re-runs
//! itself as the writer processes.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use pathos::ethics::journal::{Journal, JournalError, Record};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    writer: u32,
    n: u32,
}

const DIR: &str = "PATHOS_JOURNAL_TEST_DIR";
const WRITER: &str = "PATHOS_JOURNAL_TEST_WRITER";
const FOREVER: &str = "PATHOS_JOURNAL_TEST_FOREVER";

fn note(n: u32) -> Note {
    Note { writer: 0, n }
}

/// Adds raw bytes at the end of the journal, as a crash or a hand edit would.
fn append_raw(j: &Journal, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(j.path())
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn seqs(records: &[Record<Note>]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[test]
fn records_come_back_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    assert_eq!(j.path(), dir.path().join("journal.jsonl"));
    let before = SystemTime::now() - Duration::from_secs(1);
    let written: Vec<Record<Note>> = (0..3).map(|n| j.append(note(n)).unwrap()).collect();
    let after = SystemTime::now();

    let read = j.read::<Note>().unwrap();
    assert_eq!(read, written);
    assert_eq!(seqs(&read), [1, 2, 3]);
    assert_eq!(
        read.iter().map(|r| r.entry.clone()).collect::<Vec<_>>(),
        [note(0), note(1), note(2)]
    );
    for r in &read {
        let t = humantime::parse_rfc3339(&r.time).unwrap();
        assert!(r.time.ends_with('Z'), "{}", r.time);
        assert!(before <= t && t <= after, "{} is not now", r.time);
    }
    // A second handle continues the same sequence: it lives in the file.
    let again = Journal::open(dir.path()).unwrap();
    assert_eq!(again.append(note(3)).unwrap().seq, 4);
}

#[test]
fn an_empty_journal_reads_empty_and_starts_at_one() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("a/b")).unwrap();
    assert!(j.read::<Note>().unwrap().is_empty());
    assert_eq!(j.append(note(0)).unwrap().seq, 1);
}

#[test]
fn a_torn_last_line_is_skipped_then_cut() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.append(note(1)).unwrap();
    j.append(note(2)).unwrap();
    append_raw(&j, br#"{"seq":3,"ti"#);
    assert_eq!(seqs(&j.read::<Note>().unwrap()), [1, 2]);

    assert_eq!(j.append(note(3)).unwrap().seq, 3);
    let all = j.read::<Note>().unwrap();
    assert_eq!(seqs(&all), [1, 2, 3]);
    assert_eq!(all[2].entry, note(3));
    let text = std::fs::read_to_string(j.path()).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(
        !text.contains(r#"{"seq":3,"ti{"#),
        "torn bytes left: {text}"
    );
    for line in text.lines() {
        serde_json::from_str::<Record<Note>>(line).unwrap();
    }
}

#[test]
fn a_whole_but_unterminated_last_line_was_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.append(note(1)).unwrap();
    append_raw(
        &j,
        br#"{"seq":2,"time":"2020-01-01T00:00:00Z","entry":{"writer":0,"n":2}}"#,
    );
    assert_eq!(seqs(&j.read::<Note>().unwrap()), [1]);
    assert_eq!(j.append(note(9)).unwrap().seq, 2);
    let all = j.read::<Note>().unwrap();
    assert_eq!(all.iter().map(|r| r.entry.n).collect::<Vec<_>>(), [1, 9]);
}

#[test]
fn an_unparseable_last_line_is_torn_and_cut_by_the_next_append() {
    // What a power cut can leave: the newline made it to disk, the line did not.
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.append(note(1)).unwrap();
    append_raw(&j, b"\0\0\0\0\0\0\n");
    assert_eq!(seqs(&j.read::<Note>().unwrap()), [1]);
    assert_eq!(j.append(note(2)).unwrap().seq, 2);
    // Had the append kept the bad line, it would now be a corrupt middle line.
    assert_eq!(seqs(&j.read::<Note>().unwrap()), [1, 2]);
}

#[test]
fn a_bad_middle_line_is_reported_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path()).unwrap();
    j.append(note(1)).unwrap();
    j.append(note(2)).unwrap();
    // Written raw: an append would cut the garbage while it is the last line.
    append_raw(&j, b"\ngarbage\n");
    append_raw(
        &j,
        b"{\"seq\":3,\"time\":\"2020-01-01T00:00:00Z\",\"entry\":{\"writer\":0,\"n\":3}}\n",
    );
    let err = j.read::<Note>().unwrap_err();
    match &err {
        // Lines 1 and 2 are records, 3 is blank.
        JournalError::Corrupt { path, line, .. } => {
            assert_eq!(*line, 4);
            assert_eq!(path, j.path());
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&j.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("line 4"), "{message}");
    // Appending on top of damage would bury it: refused with the same error.
    assert!(matches!(
        j.append(note(5)),
        Err(JournalError::Corrupt { line: 4, .. })
    ));
}

#[test]
fn a_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("sub");
    let err = Journal::open(&target).unwrap_err();
    assert!(matches!(err, JournalError::Unwritable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&target.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn a_journal_path_that_is_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("journal.jsonl")).unwrap();
    let err = Journal::open(dir.path()).unwrap_err();
    assert!(matches!(err, JournalError::Unwritable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

/// The writer process: appends 200 notes, or appends forever printing each
/// acknowledged seq. Does nothing when run as an ordinary test.
#[test]
fn child_writer() {
    let (Ok(dir), Ok(writer)) = (std::env::var(DIR), std::env::var(WRITER)) else {
        return;
    };
    let j = Journal::open(Path::new(&dir)).unwrap();
    let writer: u32 = writer.parse().unwrap();
    let forever = std::env::var_os(FOREVER).is_some();
    let mut stdout = std::io::stdout();
    let mut n = 0;
    while forever || n < 200 {
        let r = j.append(Note { writer, n }).unwrap();
        if forever {
            writeln!(stdout, "ack {}", r.seq).unwrap();
            stdout.flush().unwrap();
        }
        n += 1;
    }
}

fn child(dir: &Path, writer: u32, forever: bool) -> Command {
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
    .env(WRITER, writer.to_string())
    .env_remove(FOREVER);
    if forever {
        c.env(FOREVER, "1");
    }
    c
}

#[test]
fn two_processes_append_without_losing_or_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    // Their harness chatter is noise; panics still reach stderr.
    let spawn = |w| child(dir.path(), w, false).stdout(Stdio::null()).spawn();
    let mut a = spawn(1).unwrap();
    let mut b = spawn(2).unwrap();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let j = Journal::open(dir.path()).unwrap();
    let all = j.read::<Note>().unwrap();
    assert_eq!(all.len(), 400);
    assert_eq!(seqs(&all), (1..=400).collect::<Vec<u64>>());
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
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = String::new();
    while acked.len() < 50 && out.read_line(&mut line).unwrap() > 0 {
        if let Some(seq) = line.trim().strip_prefix("ack ") {
            acked.push(seq.parse::<u64>().unwrap());
        }
        line.clear();
    }
    // Killed while still writing; the pipe stays open until then so the child never
    // stops on a closed stdout instead.
    c.kill().unwrap();
    c.wait().unwrap();
    drop(out);
    assert_eq!(
        acked,
        (1..=50).collect::<Vec<u64>>(),
        "the writer stopped early"
    );

    let j = Journal::open(dir.path()).unwrap();
    let stored = seqs(&j.read::<Note>().unwrap());
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged entry {seq} lost");
    }
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<u64>>());
    let next = j.append(note(0)).unwrap();
    assert_eq!(next.seq, stored.len() as u64 + 1);
    assert_eq!(
        seqs(&j.read::<Note>().unwrap()),
        (1..=next.seq).collect::<Vec<u64>>()
    );
}
