//! Message status for applications (`GET /api/v1/messages/{id}`): each recipient's latest
//! record (delivered, deferred with the reply and the next attempt, bounced...) as the
//! delivery log holds it.
//!
//! The log is the record of what happened; the spool keeps an index into it (`status`
//! keyspace: where each message's `received` record and each recipient's latest record are),
//! written with the recipients' states after each commit of the log, and caught up from the
//! log at a start as they are. A message's entries are forgotten `--status-retention` after it
//! was received, once it has left the spool. A record read through the index is checked to be
//! the one meant (its `line` or `message`), so a log replaced since says "not available"
//! rather than something else's.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::source::rfc3339_of_ms;
use super::spool::{MessageId, SpoolError, SpoolRead, Status, StatusEntry, of_recipient_id, recipient_id};
use crate::deliver::log::Committed;

/// How long a message's status is kept after it was received, by default.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest record read back.
const MAX_RECORD: usize = 64 * 1024;

/// The status entries of a commit's records: each recipient's record, and each message's
/// `received` record (received now, as far as its age goes).
pub fn entries_of(committed: &Committed, now_ms: u64) -> Vec<StatusEntry> {
    let mut entries = Vec::new();
    let mut start = 0;
    for r in &committed.records {
        let offset = committed.start + start as u64;
        start = r.end;
        entries.extend(entry_of(r.id, r.message, offset, now_ms));
    }
    entries
}

/// The status entry of the record at `offset` about recipient `id` (0: none) or, for a
/// `received` record, message `message` (0: none); `None` for a record about neither (a
/// `shaping` record).
pub fn entry_of(id: u64, message: u64, offset: u64, now_ms: u64) -> Option<StatusEntry> {
    if id != 0 {
        let (message, index) = of_recipient_id(id);
        Some(StatusEntry { message, index: Some(index), offset, received_ms: 0 })
    } else if message != 0 {
        Some(StatusEntry { message: MessageId(message), index: None, offset, received_ms: now_ms })
    } else {
        None
    }
}

/// Reads messages' status for the API.
#[derive(Debug, Clone)]
pub struct StatusReader {
    pub reader: Arc<dyn SpoolRead>,
    pub log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("the delivery log {path}: {error}")]
    Log { path: String, error: std::io::Error },
}

impl StatusReader {
    /// Message `id`'s status, if the spool or the index knows it and `may_see` its origin (the
    /// API key's name, or the SMTP user, that handed it in) allows; `None` otherwise (unknown
    /// and not yours look the same).
    pub fn message(
        &self,
        id: MessageId,
        may_see: impl Fn(&str) -> bool,
    ) -> Result<Option<Value>, StatusError> {
        let stored = self.reader.message(id)?;
        let index = self.reader.statuses(id)?;
        if stored.is_none() && index.is_none() {
            return Ok(None);
        }
        let log = File::open(&self.log).map_err(|error| self.error(error))?;
        let received = match index.as_ref().and_then(|i| i.received) {
            Some(offset) => self.record(&log, offset, |r| r["message"] == id.0)?,
            None => None,
        };
        let origin = stored
            .as_ref()
            .map(|s| s.origin.clone())
            .or_else(|| received.as_ref().and_then(|r| r["origin"].as_str().map(str::to_owned)));
        if !origin.as_deref().is_some_and(&may_see) {
            return Ok(None);
        }
        // Every recipient either the spool (still waiting) or the index (a record) knows.
        let mut by_index: std::collections::BTreeMap<u32, Map<String, Value>> = Default::default();
        for (index, offset) in index.as_ref().map_or(&[][..], |i| &i.recipients) {
            let rid = recipient_id(id, *index);
            let mut entry = Map::new();
            match self.record(&log, *offset, |r| r["line"] == rid)? {
                Some(record) => {
                    for field in [
                        "status", "rcpt", "attempts", "time", "code", "enhanced", "reply", "reason",
                        "category", "mx", "tls", "queue_ms",
                    ] {
                        if let Some(v) = record.get(field) {
                            entry.insert(field.into(), v.clone());
                        }
                    }
                }
                None => {
                    entry.insert("status".into(), json!("unknown"));
                    entry.insert("reason".into(), json!("its record is no longer in the delivery log"));
                }
            }
            by_index.insert(*index, entry);
        }
        for r in self.reader.recipients(id)? {
            let entry = by_index.entry(r.index).or_insert_with(|| {
                let mut m = Map::new();
                m.insert("status".into(), json!("queued"));
                m
            });
            entry.entry("rcpt").or_insert_with(|| json!(r.address.as_str()));
            if let Status::Waiting { attempts, due_ms } = r.status {
                entry.entry("attempts").or_insert(json!(attempts));
                entry.insert("next_attempt".into(), json!(rfc3339_of_ms(due_ms)));
            }
        }
        let recipients: Vec<Value> = by_index
            .into_iter()
            .map(|(index, mut entry)| {
                entry.insert("id".into(), json!(recipient_id(id, index)));
                if let Some(rcpt) = entry.remove("rcpt") {
                    entry.insert("email".into(), rcpt);
                }
                Value::Object(entry)
            })
            .collect();
        let mut answer = json!({"id": id.0, "recipients": recipients});
        if let Some(received) = received {
            answer["received"] = received;
        } else if let Some(s) = &stored {
            answer["received"] = json!({"time": rfc3339_of_ms(s.received_ms), "origin": s.origin});
        }
        answer["in_spool"] = json!(stored.is_some());
        Ok(Some(answer))
    }

    /// The record at `offset`, if it is there and `is_it` says it is the one meant.
    fn record(
        &self,
        log: &File,
        offset: u64,
        is_it: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, StatusError> {
        let mut buf = vec![0u8; 4096];
        let mut line = Vec::new();
        let mut at = offset;
        loop {
            let n = log.read_at(&mut buf, at).map_err(|error| self.error(error))?;
            if n == 0 {
                return Ok(None);
            }
            match buf[..n].iter().position(|&b| b == b'\n') {
                Some(end) => {
                    line.extend_from_slice(&buf[..end]);
                    break;
                }
                None => line.extend_from_slice(&buf[..n]),
            }
            if line.len() > MAX_RECORD {
                return Ok(None);
            }
            at += n as u64;
        }
        Ok(serde_json::from_slice::<Value>(&line).ok().filter(|r| is_it(r)))
    }

    fn error(&self, error: std::io::Error) -> StatusError {
        StatusError::Log { path: self.log.display().to_string(), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::log::CommittedRecord;

    #[test]
    fn each_recipient_record_and_each_received_record_is_an_entry_at_its_offset() {
        let committed = Committed {
            start: 1000,
            bytes: Vec::new(),
            records: vec![
                CommittedRecord { id: 0, message: 7, end: 40 },
                CommittedRecord { id: (7 << 16) | 1, message: 0, end: 100 },
                CommittedRecord { id: 0, message: 0, end: 130 }, // a shaping record: nobody's
                CommittedRecord { id: 7 << 16, message: 0, end: 190 },
            ],
        };
        let got: Vec<(u64, Option<u32>, u64)> =
            entries_of(&committed, 5).iter().map(|e| (e.message.0, e.index, e.offset)).collect();
        assert_eq!(got, [(7, None, 1000), (7, Some(1), 1040), (7, Some(0), 1130)]);
        assert_eq!(entries_of(&committed, 5)[0].received_ms, 5);
    }
}
