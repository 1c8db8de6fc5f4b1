//! `--resume`: what an earlier run's log says (its campaign, and which input lines already have
//! a final record), read from the log it continues.

use std::io::{self, BufRead};
use std::path::Path;

use crate::deliver::log::{Head, LogFile, OpenError, Status};

/// Opens the log of the run to continue, locked, and reads it. A log with no `run` record is
/// not one to continue ([`OpenError::NotALog`]).
pub fn open(path: &Path) -> Result<(LogFile, Resumed), OpenError> {
    let (log, cut_tail) = LogFile::reopen(path)?;
    let mut resumed = Resumed::from_reader(log.contents()?)?;
    if resumed.campaign.is_none() {
        return Err(OpenError::NotALog);
    }
    resumed.cut_tail = cut_tail;
    Ok((log, resumed))
}

/// What an earlier run's log says: its campaign, and the input lines with a final record.
#[derive(Debug, Default)]
pub struct Resumed {
    pub campaign: Option<String>,
    /// The first run's recipients file digest, if it recorded one.
    pub input_digest: Option<String>,
    finals: Vec<u64>,
    pub final_count: u64,
    /// Lines that were not JSON records (a line cut short by a kill): skipped.
    pub unreadable: u64,
    /// Octets of a half-written last line that opening the log cut off (see [`LogFile::reopen`]).
    pub cut_tail: u64,
}

impl Resumed {
    pub fn is_final(&self, line: u64) -> bool {
        let (word, bit) = ((line / 64) as usize, line % 64);
        self.finals.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn mark(&mut self, line: u64) {
        let (word, bit) = ((line / 64) as usize, line % 64);
        if self.finals.len() <= word {
            self.finals.resize(word + 1, 0);
        }
        if self.finals[word] & (1 << bit) == 0 {
            self.final_count += 1;
        }
        self.finals[word] |= 1 << bit;
    }

    /// Reads a log. Memory: one bit per input line.
    fn from_reader(mut reader: impl BufRead) -> io::Result<Resumed> {
        let mut resumed = Resumed::default();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let Some(record) = Head::read(&buf) else {
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    resumed.unreadable += 1;
                }
                continue;
            };
            match record.status {
                Some(Status::Run) if resumed.campaign.is_none() => {
                    resumed.campaign = record.campaign;
                    resumed.input_digest = record.input_digest;
                }
                Some(s) if s.is_final() => resumed.mark(record.id),
                _ => {}
            }
        }
        Ok(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::log::Record;
    use std::io::Write as _;
    use std::path::PathBuf;

    /// A fresh temp directory for one test.
    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volley-resume-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
    }

    #[test]
    fn resume_reads_finals_and_the_campaign_and_cuts_a_torn_last_line() {
        let dir = temp("torn");
        let path = dir.join("run.jsonl");
        let mut log = LogFile::create(&path).unwrap();
        let mut run = Record::new(Status::Run, 0);
        run.campaign = Some("abc".into());
        log.write(&run);
        for (status, line) in [
            (Status::Deferred, 2),
            (Status::Delivered, 3),
            (Status::Rejected, 4),
            (Status::Deferred, 5),
            (Status::Expired, 200),
        ] {
            log.write(&Record::new(status, line));
        }
        log.sync().unwrap();
        drop(log);
        let whole = std::fs::read(&path).unwrap();
        // A kill in the middle of a write leaves half a line.
        append(&path, b"{\"status\":\"deliv");
        let (mut log, r) = open(&path).unwrap();
        assert_eq!(r.campaign.as_deref(), Some("abc"));
        assert_eq!((r.final_count, r.unreadable, r.cut_tail), (3, 0, 16));
        assert!(r.is_final(3) && r.is_final(4) && r.is_final(200));
        assert!(!r.is_final(2) && !r.is_final(5) && !r.is_final(1) && !r.is_final(100_000));
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn line is gone, the rest untouched");
        // Continuing the log appends whole lines after the last whole one.
        log.write(&Record::new(Status::Delivered, 5));
        log.sync().unwrap();
        drop(log);
        let (_, r) = open(&path).unwrap();
        assert!(r.is_final(5));
        assert_eq!((r.unreadable, r.cut_tail), (0, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_whole_last_record_that_lost_its_newline_is_kept() {
        let dir = temp("newline");
        let path = dir.join("run.jsonl");
        std::fs::write(
            &path,
            "{\"status\":\"run\",\"line\":0,\"campaign\":\"c\"}\n{\"status\":\"delivered\",\"line\":7}",
        )
        .unwrap();
        let (log, r) = open(&path).unwrap();
        assert!(r.is_final(7));
        assert_eq!(r.cut_tail, 0);
        drop(log);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("7}\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_one_run_writes_a_log_and_only_a_volley_log_is_resumed() {
        let dir = temp("lock");
        let path = dir.join("run.jsonl");
        let mut log = LogFile::create(&path).unwrap();
        let mut run = Record::new(Status::Run, 0);
        run.campaign = Some("abc".into());
        log.write(&run);
        log.sync().unwrap();
        let me = std::process::id();
        assert!(matches!(open(&path), Err(OpenError::InUse { pid: Some(p) }) if p == me));
        assert!(matches!(LogFile::create(&path), Err(OpenError::Exists)));
        drop(log);
        assert!(open(&path).is_ok(), "free once the first run closed it");
        for (name, content) in [("empty", ""), ("garbage", "hello\nworld\n"), ("other", "{\"a\":1}\n")] {
            let other = dir.join(name);
            std::fs::write(&other, content).unwrap();
            assert!(matches!(open(&other), Err(OpenError::NotALog)), "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
