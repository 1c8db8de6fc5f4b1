//! The delivery log: JSONL, one record per attempt that did not end a recipient (`deferred`)
//! and exactly one final record per recipient (`delivered`, `bounced`, `expired`, `rejected`,
//! `uncertain`). Written by one thread with group commit; read back by `--resume`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek as _, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;

use super::bounce::Category;
use crate::proto::{EnhancedCode, Reply};

mod json;
pub mod lock;

/// Sync at least this often while records are waiting... Half of the window `--resume` may
/// resend: a record waits for a checkpoint (`deliver::HELD_AT_MOST`), for the log thread, then for
/// this (an fdatasync costs the log thread ~1 ms, never the cores).
pub const SYNC_EVERY: Duration = Duration::from_millis(50);
/// ...or once this many are.
pub const SYNC_RECORDS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The run's first record: what it is and which campaign (Message-IDs) it belongs to.
    Run,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Rejected,
    /// On a `--suppress` list: never sent to.
    Suppressed,
    Uncertain,
    /// Not about a recipient: a destination was suspended or slowed by a shaping reaction.
    Shaping,
    /// Not about one recipient: a message was accepted for delivery (serve's intake).
    Received,
}

impl Status {
    pub const ALL: [Status; 10] = [
        Status::Run,
        Status::Delivered,
        Status::Deferred,
        Status::Bounced,
        Status::Expired,
        Status::Rejected,
        Status::Suppressed,
        Status::Uncertain,
        Status::Shaping,
        Status::Received,
    ];

    pub fn is_final(self) -> bool {
        !matches!(self, Status::Run | Status::Deferred | Status::Shaping | Status::Received)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Run => "run",
            Status::Delivered => "delivered",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Suppressed => "suppressed",
            Status::Uncertain => "uncertain",
            Status::Shaping => "shaping",
            Status::Received => "received",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.name() == s)
    }
}

/// One line of the log. Fields that do not apply are left out. Shared and plain values rather
/// than formatted strings, so making a record allocates little: it is made per recipient.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub time: Arc<str>,
    pub status: Status,
    /// The recipient's id (see [`crate::deliver`]); 0 for records about no recipient. A
    /// campaign's ids are its input lines, and its log names them `line` (what `--resume`
    /// reads).
    #[serde(rename = "line")]
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcpt: Option<Arc<str>>,
    #[serde(skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "display")]
    pub enhanced: Option<EnhancedCode>,
    /// The server's reply text (lines joined by ` / `), or what went wrong without a reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<Box<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why a recipient was deferred, bounced or expired (see [`super::bounce`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// From the recipient's first admission to this outcome, retries included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<u64>,
    /// Run record only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Run record only: the recipients file's size and hash (see `input::digest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_digest: Option<String>,
    /// Shaping records only: the destination, the reaction rule, what it did and until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Received records only: the message's id (its recipients' ids are it times 65,536 plus
    /// their place in the envelope), its envelope sender (empty: the null sender), how many
    /// recipients, who handed it in (SMTP user, API key name, or the peer), and the request's
    /// Idempotency-Key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<Arc<str>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn display<S: serde::Serializer>(code: &Option<EnhancedCode>, s: S) -> Result<S::Ok, S::Error> {
    match code {
        Some(code) => s.collect_str(code),
        None => s.serialize_none(),
    }
}

impl Record {
    pub fn new(status: Status, id: u64) -> Record {
        Record::at(status, id, now_rfc3339().into())
    }

    /// A record stamped `time` (see [`Clock`]).
    pub fn at(status: Status, id: u64, time: Arc<str>) -> Record {
        Record {
            time,
            status,
            id,
            rcpt: None,
            attempts: 0,
            mx: None,
            ip: None,
            code: None,
            enhanced: None,
            reply: None,
            reason: None,
            category: None,
            tls: None,
            size: None,
            queue_ms: None,
            retry_in_s: None,
            campaign: None,
            input: None,
            input_digest: None,
            destination: None,
            rule: None,
            action: None,
            until: None,
            message: None,
            sender: None,
            recipients: None,
            origin: None,
            idempotency_key: None,
        }
    }

    pub fn rcpt(mut self, rcpt: impl Into<Arc<str>>) -> Record {
        self.rcpt = Some(rcpt.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Record {
        self.reason = Some(reason.into());
        self
    }

    /// Appends the record as one line of JSON, without its newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json::write(self, out);
    }

    pub fn reply(mut self, reply: Reply) -> Record {
        self.set_reply(reply);
        self
    }

    pub fn set_reply(&mut self, reply: Reply) {
        self.code = Some(reply.code);
        self.enhanced = reply.enhanced;
        self.reply =
            Some(if reply.text.contains('\n') { reply.text.replace('\n', " / ").into() } else { reply.text });
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What a reader of the log acts on in one line (`--resume`, serve catching its spool up):
/// read with serde, leaving every other field unparsed.
#[derive(Debug, serde::Deserialize)]
pub struct Head {
    /// `None`: a status this volley does not know (a record it can skip).
    #[serde(deserialize_with = "status_of")]
    pub status: Option<Status>,
    /// The recipient's id (`line` in the log); 0 for records about no recipient.
    #[serde(default, rename = "line")]
    pub id: u64,
    #[serde(default)]
    pub rcpt: Option<String>,
    /// The message a `received` record is about (0 for other records).
    #[serde(default)]
    pub message: u64,
    /// Run record only.
    #[serde(default)]
    pub campaign: Option<String>,
    #[serde(default)]
    pub input_digest: Option<String>,
}

impl Head {
    /// The line's head, if it is a record (a torn or foreign line is not).
    pub fn read(line: &[u8]) -> Option<Head> {
        serde_json::from_slice(line).ok()
    }
}

fn status_of<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Status>, D::Error> {
    let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    Ok(Status::parse(&name))
}

/// Time stamps for records, formatted once per millisecond rather than once per record.
#[derive(Debug, Default)]
pub struct Clock {
    last: Option<(u128, Arc<str>)>,
}

impl Clock {
    pub fn now(&mut self) -> Arc<str> {
        self.at(SystemTime::now())
    }

    /// The stamp of `now` (formatted again only when its millisecond differs from the last).
    pub fn at(&mut self, now: SystemTime) -> Arc<str> {
        let millis = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        match &self.last {
            Some((at, stamp)) if *at == millis => Arc::clone(stamp),
            _ => {
                let stamp: Arc<str> = humantime::format_rfc3339_millis(now).to_string().into();
                self.last = Some((millis, Arc::clone(&stamp)));
                stamp
            }
        }
    }
}

/// The log file, written with group commit: records are buffered and made durable together
/// (`fdatasync`) every [`SYNC_EVERY`] or [`SYNC_RECORDS`], so no fsync per message.
///
/// Records stay in memory until their commit succeeds, so a failed commit can hand back exactly
/// the records that may not be durable (see [`CommitError`]).
pub struct LogFile {
    file: File,
    path: PathBuf,
    /// A regular file, made durable by `fdatasync`; a device or pipe (`/dev/null`, a FIFO)
    /// cannot be (fsync says EINVAL) and is only written to.
    durable: bool,
    /// Serialised records not yet durable, each ending in a newline.
    pending: Vec<u8>,
    unsynced: usize,
    last_sync: Instant,
    /// The file's length up to which every record is durable.
    durable_len: u64,
    /// Records committed and not yet taken ([`LogFile::take_committed`]), when kept; and
    /// those written since the last commit (ids and where each ends in `pending`).
    committed: Option<Committed>,
    pending_records: Vec<CommittedRecord>,
}

/// Records a commit made durable: their JSON lines, where the first starts in the file, and
/// what each is about.
#[derive(Debug, Default)]
pub struct Committed {
    pub start: u64,
    pub bytes: Vec<u8>,
    pub records: Vec<CommittedRecord>,
}

/// One committed record: the recipient it is about (`line`; 0 for none), the message (for a
/// `received` record; else 0), and where its line ends in [`Committed::bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedRecord {
    pub id: u64,
    pub message: u64,
    pub end: usize,
}

/// A commit that failed, with the records it may not have made durable (JSON lines).
#[derive(Debug)]
pub struct CommitError {
    pub error: io::Error,
    pub records: Vec<u8>,
}

/// Why a delivery log could not be opened. Every variant but `Io` is the user's to fix, and
/// nothing was sent.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("is in use by {}: one run writes a log at a time", lock::holder_text(*pid))]
    InUse { pid: Option<u32> },
    #[error("exists: continue it with --resume, or choose another --log")]
    Exists,
    #[error(
        "has no `run` record: it is empty or not a volley delivery log, so there is no campaign to \
         continue (nothing was sent)"
    )]
    NotALog,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl LogFile {
    /// Creates the log of a new run, locked (see [`lock`]) for as long as it is open. A device
    /// or pipe (`/dev/full` in tests, a FIFO to another program) is opened as it is, unlocked:
    /// it cannot be resumed from anyway.
    pub fn create(path: &Path) -> Result<LogFile, OpenError> {
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let file = if special {
            OpenOptions::new().append(true).open(path)?
        } else {
            match OpenOptions::new().append(true).create_new(true).open(path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(OpenError::Exists),
                other => other?,
            }
        };
        if !special && !lock::try_lock(&file)? {
            // Created a moment ago by us, and already locked: another run created it too.
            return Err(OpenError::InUse { pid: lock::holder(&file) });
        }
        let mut log = LogFile::with(file, path);
        log.durable = !special;
        Ok(log)
    }

    /// Continues an earlier run's log: locks it, cuts off a last line a killed run left
    /// half-written (so the log stays valid JSONL), and appends from there; returns the octets
    /// cut off. The lock is taken before anything is read, so a second run refuses at once.
    /// What the log says is the caller's to read ([`LogFile::contents`]).
    pub fn reopen(path: &Path) -> Result<(LogFile, u64), OpenError> {
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        if !lock::try_lock(&file)? {
            return Err(OpenError::InUse { pid: lock::holder(&file) });
        }
        let cut = cut_torn_tail(&file)?;
        let mut log = LogFile::with(file, path);
        log.durable_len = log.file.metadata()?.len();
        Ok((log, cut))
    }

    /// The log's records so far, from its first line (writes still append at its end).
    pub fn contents(&self) -> io::Result<impl BufRead + '_> {
        self.contents_from(0)
    }

    /// The log's records from octet `offset` on (see [`LogFile::durable_len`]).
    pub fn contents_from(&self, offset: u64) -> io::Result<impl BufRead + '_> {
        (&self.file).seek(SeekFrom::Start(offset))?;
        Ok(BufReader::new(&self.file))
    }

    /// How long the file is up to its last commit: every record before it is durable. What a
    /// reader of the log's consequences (serve's spool) keeps to know where to read on from.
    pub fn durable_len(&self) -> u64 {
        self.durable_len
    }

    fn with(file: File, path: &Path) -> LogFile {
        LogFile {
            file,
            path: path.to_owned(),
            durable: true,
            pending: Vec::with_capacity(256 * 1024),
            unsynced: 0,
            last_sync: Instant::now(),
            durable_len: 0,
            committed: None,
            pending_records: Vec::new(),
        }
    }

    /// From now on keeps what each commit made durable, for [`LogFile::take_committed`].
    pub fn keep_committed(&mut self) {
        self.committed.get_or_insert_with(Committed::default);
    }

    /// The records made durable since the last call; nothing unless
    /// [`LogFile::keep_committed`] was called.
    pub fn take_committed(&mut self) -> Committed {
        let mut taken = self.committed.as_mut().map(std::mem::take).unwrap_or_default();
        taken.start = self.durable_len - taken.bytes.len() as u64;
        taken
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a record to the next commit.
    pub fn write(&mut self, record: &Record) {
        json::write(record, &mut self.pending);
        self.pending.push(b'\n');
        self.unsynced += 1;
        if self.committed.is_some() {
            let message = record.message.unwrap_or(0);
            self.pending_records.push(CommittedRecord { id: record.id, message, end: self.pending.len() });
        }
    }

    /// Whether a group commit is due.
    pub fn sync_due(&self) -> bool {
        self.unsynced > 0 && (self.unsynced >= SYNC_RECORDS || self.last_sync.elapsed() >= SYNC_EVERY)
    }

    /// How long until a commit is due, if records are waiting: the longest the log thread
    /// may sleep without making the window it promises longer.
    pub fn sync_wait(&self) -> Option<Duration> {
        (self.unsynced > 0).then(|| SYNC_EVERY.saturating_sub(self.last_sync.elapsed()))
    }

    /// How long since the last commit, if records wait for the next.
    pub fn unsynced_for(&self) -> Option<Duration> {
        (self.unsynced > 0).then(|| self.last_sync.elapsed())
    }

    /// Makes every record written so far durable. On failure the records that may not be (the
    /// unwritten ones, and if the sync itself failed every one since the last commit) are
    /// handed back, whole lines, and dropped from the log file's care.
    pub fn sync(&mut self) -> Result<(), CommitError> {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break if self.durable { self.file.sync_data() } else { Ok(()) };
            }
            match self.file.write(&self.pending[written..]) {
                Ok(0) => {
                    break Err(io::Error::new(io::ErrorKind::WriteZero, "the log file took no more bytes"));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.unsynced = 0;
        self.last_sync = Instant::now();
        match result {
            Ok(()) => {
                self.durable_len += self.pending.len() as u64;
                if let Some(committed) = &mut self.committed {
                    let base = committed.bytes.len();
                    committed.bytes.extend_from_slice(&self.pending);
                    committed.records.extend(
                        self.pending_records.drain(..).map(|r| CommittedRecord { end: base + r.end, ..r }),
                    );
                }
                self.pending.clear();
                Ok(())
            }
            Err(error) => {
                self.pending_records.clear();
                let pending = std::mem::take(&mut self.pending);
                let durable_prefix = if written == pending.len() {
                    0 // the sync failed: nothing since the last commit is known durable
                } else {
                    // Whole lines before the failed write reached the file.
                    pending[..written].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
                };
                Err(CommitError { error, records: pending[durable_prefix..].to_vec() })
            }
        }
    }
}

/// Ends the file at its last line break, unless what follows it is a whole JSON record that
/// only lost its newline (then the newline is added). Returns the octets cut off.
fn cut_torn_tail(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let len = file.metadata()?.len();
    let mut end = len; // the tail runs from the octet after the last newline to `len`
    let mut chunk = vec![0u8; 64 * 1024];
    let start = loop {
        if end == 0 {
            break 0;
        }
        let from = end.saturating_sub(chunk.len() as u64);
        let piece = &mut chunk[..(end - from) as usize];
        file.read_exact_at(piece, from)?;
        if let Some(i) = piece.iter().rposition(|&b| b == b'\n') {
            break from + i as u64 + 1;
        }
        end = from;
    };
    if start == len {
        return Ok(0);
    }
    let mut tail = vec![0u8; (len - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&tail).is_ok() {
        (&*file).write_all(b"\n")?;
        return Ok(0);
    }
    file.set_len(start)?;
    file.sync_data()?;
    Ok(len - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_without_empty_fields() {
        let r = Record::new(Status::Bounced, 12).rcpt("a@x.test").reply(Reply::new(
            550,
            crate::proto::ReplyParser::new().parse(b"550 5.1.1 no\r\n").unwrap().unwrap().0.enhanced,
            "5.1.1 no\nsuch user",
        ));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "bounced");
        assert_eq!(json["line"], 12);
        assert_eq!(json["code"], 550);
        assert_eq!(json["enhanced"], "5.1.1");
        assert_eq!(json["reply"], "5.1.1 no / such user");
        assert!(json.get("mx").is_none() && json.get("attempts").is_none());
    }

    #[test]
    fn a_full_disk_hands_back_every_record_it_could_not_commit() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let mut log = LogFile::create(Path::new("/dev/full")).unwrap();
        log.write(&Record::new(Status::Delivered, 1));
        log.write(&Record::new(Status::Bounced, 2));
        let err = log.sync().unwrap_err();
        assert_eq!(err.error.raw_os_error(), Some(libc::ENOSPC));
        let count = |b: &[u8]| b.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
        assert_eq!(count(&err.records), 2, "both records come back");
        log.write(&Record::new(Status::Delivered, 3));
        assert_eq!(count(&log.sync().unwrap_err().records), 1, "then only the new one");
    }
}
