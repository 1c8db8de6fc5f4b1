//! The spool on fjall (a pure-Rust LSM tree: large values kept apart from the keys, atomic
//! batches across keyspaces, one fdatasync per group commit): the layout is in the parent
//! module's comment.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use super::{
    Accepted, Admission, Change, FromLog, Group, MAX_RECIPIENTS, MessageId, Recipient, Spool, SpoolError,
    SpoolRead, Status, Statuses, Stored, corrupt,
};
use crate::deliver::log::lock;
use crate::proto::Address;
use crate::serve::due::{self, Scheduled};
use crate::serve::idempotency;
use crate::serve::intake::now_ms;
use crate::serve::record::{DecodeError, Reader, Writer};

pub struct FjallSpool {
    path: PathBuf,
    db: Database,
    messages: Keyspace,
    recipients: Keyspace,
    meta: Keyspace,
    idempotency: Keyspace,
    due: Keyspace,
    events: Keyspace,
    status: Keyspace,
    next_id: u64,
    /// Held for as long as the spool is open.
    _lock: File,
}

const NEXT_ID: &[u8] = b"next_id";
/// The delivery log's length up to which every record's consequence is in the spool.
const LOG_WATERMARK: &[u8] = b"log_watermark";
/// The layout's format: absent in spools written before the schedule (`due`) was kept, which
/// opening brings up to date.
const FORMAT: &[u8] = b"format";
const SCHEDULED_FORMAT: u32 = 2;

/// Every keyspace's options (fjall keeps them with the keyspace: a spool created before keeps
/// its own).
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE)
}

/// A keyspace's memtable, not fjall's default of 64 MiB. Serve's keyspaces are written at
/// once (a message, its recipients, their schedule), so seven of 64 MiB grew the process for
/// minutes before the first were flushed and their memory reused, and every fresh page the
/// spool writer touched on the way was a page fault (a third of its time in the first 10 s
/// under load; docs/BENCHMARKS.md). Most of what goes in is deleted within milliseconds; a
/// smaller memtable flushes more of the rest before its deletion comes (fjall's flush thread
/// works harder under a burst), for half the memory.
const MEMTABLE: u64 = 16 << 20;

impl FjallSpool {
    /// Opens (or creates) the spool in `dir`, refusing one another process holds.
    pub fn open(dir: &Path) -> Result<FjallSpool, SpoolError> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("volley.lock"))?;
        if !lock::try_lock(&lock)? {
            return Err(SpoolError::InUse { pid: lock::holder(&lock) });
        }
        let db = Database::builder(dir.join("store")).open()?;
        let messages = db.keyspace("messages", || {
            keyspace_options().with_kv_separation(Some(KvSeparationOptions::default()))
        })?;
        let recipients = db.keyspace("recipients", keyspace_options)?;
        let meta = db.keyspace("meta", keyspace_options)?;
        let idempotency = db.keyspace("idempotency", keyspace_options)?;
        let due = db.keyspace("due", keyspace_options)?;
        let events = db.keyspace("events", keyspace_options)?;
        let status = db.keyspace("status", keyspace_options)?;
        let next_id = match meta.get(NEXT_ID)? {
            Some(v) => u64_of(&v).map_err(|error| corrupt("meta", "next_id", error))?,
            None => 1,
        };
        let mut spool = FjallSpool {
            path: dir.to_owned(),
            db,
            messages,
            recipients,
            meta,
            idempotency,
            due,
            events,
            status,
            next_id,
            _lock: lock,
        };
        spool.schedule_what_waits()?;
        spool.forget_expired_keys(now_ms())?;
        Ok(spool)
    }

    /// A spool from before the schedule was kept: every waiting recipient filed under its due
    /// time, once, so none is forgotten by a delivery that reads only the schedule.
    fn schedule_what_waits(&mut self) -> Result<(), SpoolError> {
        if self.meta.get(FORMAT)?.is_some() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut message: Option<Stored> = None;
        for guard in self.recipients.iter() {
            let (key, value) = guard.into_inner()?;
            let r = recipient_of(&key, &value)?;
            let Status::Waiting { attempts, due_ms } = r.status else { continue };
            if message.as_ref().is_none_or(|m| m.id != r.message) {
                message = self.message(r.message)?;
            }
            let Some(m) = &message else { continue };
            let entry = Scheduled {
                message: r.message,
                index: r.index,
                due_ms,
                attempts,
                received_ms: m.received_ms,
                sender: m.sender.clone(),
                address: r.address,
            };
            batch.insert(&self.due, due::key(due_ms, r.message, r.index), due::value(&entry));
        }
        batch.insert(&self.meta, FORMAT, SCHEDULED_FORMAT.to_be_bytes());
        batch.commit()?;
        Ok(())
    }

    /// Removes the Idempotency-Keys that expired by `now_ms`.
    fn forget_expired_keys(&mut self, now_ms: u64) -> Result<(), SpoolError> {
        let mut batch = self.db.batch();
        let mut any = false;
        for guard in self.idempotency.iter() {
            let (key, value) = guard.into_inner()?;
            // A value that does not read is no use either.
            if idempotency::decode(&value).is_ok_and(|(expires, _)| expires > now_ms) {
                continue;
            }
            batch.remove(&self.idempotency, key);
            any = true;
        }
        if any {
            batch.commit()?;
        }
        Ok(())
    }

    /// Moves `row` in the schedule to where its `new` state puts it: out (final), or under its
    /// new due time with its new count of attempts.
    fn reschedule(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        row: &Recipient,
        new: Status,
    ) -> Result<(), SpoolError> {
        let mut entry = None;
        if let Status::Waiting { due_ms, .. } = row.status {
            let old = due::key(due_ms, row.message, row.index);
            // Read back only to be filed anew: a final one (most) just leaves.
            if matches!(new, Status::Waiting { .. })
                && let Some(value) = self.due.get(old)?
            {
                entry = Some(due::decode(&old, &value)?);
            }
            batch.remove(&self.due, old);
        }
        let Status::Waiting { attempts, due_ms } = new else { return Ok(()) };
        let mut entry = match entry {
            Some(entry) => entry,
            // Not scheduled where its state said (it cannot be, but its message still says
            // all that is needed): filed anew rather than forgotten.
            None => {
                let Some(m) = self.message(row.message)? else { return Ok(()) };
                Scheduled {
                    message: row.message,
                    index: row.index,
                    due_ms,
                    attempts,
                    received_ms: m.received_ms,
                    sender: m.sender,
                    address: row.address.clone(),
                }
            }
        };
        entry.due_ms = due_ms;
        entry.attempts = attempts;
        batch.insert(&self.due, due::key(due_ms, row.message, row.index), due::value(&entry));
        Ok(())
    }

    /// A write batch with room for `items` writes.
    fn batch(&self, items: usize) -> fjall::OwnedWriteBatch {
        fjall::OwnedWriteBatch::with_capacity(self.db.clone(), items)
    }

    fn read(&self) -> FjallReader {
        FjallReader {
            messages: self.messages.clone(),
            recipients: self.recipients.clone(),
            due: self.due.clone(),
            events: self.events.clone(),
            status: self.status.clone(),
        }
    }

    /// Messages in the spool (an estimate from the store's counts, cheap to ask).
    pub fn approximate_messages(&self) -> usize {
        self.messages.approximate_len()
    }

    /// Octets the store takes on disk.
    pub fn disk_space(&self) -> Result<u64, SpoolError> {
        Ok(self.db.disk_space()?)
    }

    fn recipients_of(&self, id: MessageId) -> Result<Vec<Recipient>, SpoolError> {
        let mut rows = Vec::new();
        for guard in self.recipients.prefix(id.0.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            rows.push(recipient_of(&key, &value)?);
        }
        Ok(rows)
    }
}

impl Spool for FjallSpool {
    fn path(&self) -> &Path {
        &self.path
    }

    /// The newest message's id (0 if there never was one).
    fn last_id(&self) -> MessageId {
        MessageId(self.next_id - 1)
    }

    /// Writes every group's messages and recipients (each waiting, due when received) in one
    /// batch, durable (fdatasync) when this returns, and says what became of each group, in
    /// order: its new ids, or (an Idempotency-Key seen before `now_ms` made it expire, in the
    /// spool or earlier in `groups`) what the key admitted the first time, writing nothing.
    fn admit(&mut self, groups: &[Group], now_ms: u64) -> Result<Vec<Admission>, SpoolError> {
        if let Some(m) = groups.iter().flat_map(|g| &g.messages).find(|m| m.recipients.len() > MAX_RECIPIENTS)
        {
            return Err(SpoolError::TooManyRecipients(m.recipients.len()));
        }
        // Sized up front: a batch's list grown step by step took fresh pages from the
        // allocator at each step, and the page faults cost more than the writes.
        let items: usize = groups.iter().flat_map(|g| &g.messages).map(|m| 1 + 2 * m.recipients.len()).sum();
        let mut batch = self.batch(items + 2 * groups.len() + 1).durability(Some(PersistMode::SyncData));
        let mut out = Vec::with_capacity(groups.len());
        let mut keys_here: Vec<(&[u8], idempotency::Admitted)> = Vec::new();
        let mut next = self.next_id;
        for group in groups {
            if let Some(key) = &group.idempotency {
                if let Some((_, first)) = keys_here.iter().find(|(k, _)| *k == key.as_bytes()) {
                    out.push(Admission::Replay(first.clone()));
                    continue;
                }
                if let Some(value) = self.idempotency.get(key.as_bytes())? {
                    let (expires, first) = idempotency::decode(&value)
                        .map_err(|e| corrupt("idempotency", &String::from_utf8_lossy(key.as_bytes()), e))?;
                    if expires > now_ms {
                        out.push(Admission::Replay(first));
                        continue;
                    }
                }
            }
            let mut ids = Vec::with_capacity(group.messages.len());
            for m in &group.messages {
                let id = MessageId(next);
                next += 1;
                let sender = m.sender.as_ref().map_or("", Address::as_str);
                let value = Writer::new(m.content.len() + 64)
                    .u64(m.received_ms)
                    .u8(u8::from(m.sender.is_some()))
                    .str(sender)
                    .str(&m.origin)
                    .u32(m.recipients.len() as u32)
                    .rest(&m.content);
                batch.insert(&self.messages, id.0.to_be_bytes(), value);
                let waiting = Status::Waiting { attempts: 0, due_ms: m.received_ms };
                for (index, address) in m.recipients.iter().enumerate() {
                    let index = index as u32;
                    batch.insert(&self.recipients, recipient_key(id, index), state(address, waiting));
                    let entry = Scheduled {
                        message: id,
                        index,
                        due_ms: m.received_ms,
                        attempts: 0,
                        received_ms: m.received_ms,
                        sender: m.sender.clone(),
                        address: address.clone(),
                    };
                    batch.insert(&self.due, due::key(m.received_ms, id, index), due::value(&entry));
                }
                ids.push(id);
            }
            if let Some(key) = &group.idempotency {
                let first_rcpt =
                    |m: &Accepted| m.recipients.first().map_or(String::new(), |a| a.as_str().to_owned());
                let admitted: idempotency::Admitted =
                    ids.iter().copied().zip(group.messages.iter().map(first_rcpt)).collect();
                batch.insert(
                    &self.idempotency,
                    key.as_bytes(),
                    idempotency::encode(key.expires_ms, &admitted),
                );
                keys_here.push((key.as_bytes(), admitted));
            }
            out.push(Admission::New(ids));
        }
        batch.insert(&self.meta, NEXT_ID, next.to_be_bytes());
        batch.commit()?;
        self.next_id = next;
        Ok(out)
    }

    /// Records recipients' new states in one atomic batch, with the log's length they bring the
    /// spool up to (`watermark`: every record before it is reflected). A message whose
    /// recipients are then all final leaves the spool in the same batch. A change for a
    /// recipient no longer in the spool (its message left) is skipped: a restart may learn of
    /// the same final twice, and one stale change must not cost the others.
    ///
    /// Handed to the OS, not fsync'd: the log already holds these records durably, so a crash
    /// that loses the batch only takes the watermark back, and the next start reads the log
    /// from there ([`super::run::reconcile`]); a lost deferral is retried sooner than planned.
    /// The next message batch's sync (one journal) or closing the spool makes it durable.
    fn record(
        &mut self,
        changes: &[Change],
        from_log: &FromLog,
        watermark: Option<u64>,
    ) -> Result<(), SpoolError> {
        // At most: a recipient's state, its schedule's old and new entries; the message.
        let items = 3 * changes.len() + from_log.events.len() + from_log.statuses.len() + 1;
        let mut batch = self.batch(items).durability(Some(PersistMode::Buffer));
        if let Some(offset) = watermark {
            batch.insert(&self.meta, LOG_WATERMARK, offset.to_be_bytes());
        }
        for e in &from_log.events {
            batch.insert(&self.events, event_key(e.webhook, e.offset), &*e.line);
        }
        for s in &from_log.statuses {
            let mut value = s.offset.to_be_bytes().to_vec();
            if s.index.is_none() {
                value.extend_from_slice(&s.received_ms.to_be_bytes());
            }
            batch.insert(&self.status, status_key(s.message, s.index), value);
        }
        // Changes grouped by message, in order, so each message is looked at once.
        let mut sorted: Vec<&Change> = changes.iter().collect();
        sorted.sort_by_key(|c| (c.message, c.index));
        for group in sorted.chunk_by(|a, b| a.message == b.message) {
            let id = group[0].message;
            let rows = self.recipients_of(id)?;
            if rows.is_empty() {
                continue; // the message left already
            }
            // Each recipient's state after the batch: its last change wins, and a recipient
            // already final stays so (a change to waiting for it is stale).
            let mut after: Vec<Status> = rows.iter().map(|r| r.status).collect();
            for change in group {
                if let Some(at) = rows.iter().position(|r| r.index == change.index)
                    && after[at] != Status::Final
                {
                    after[at] = change.status;
                }
            }
            let leaves = after.iter().all(|s| *s == Status::Final);
            for (row, new) in rows.iter().zip(&after) {
                if leaves {
                    batch.remove(&self.recipients, recipient_key(id, row.index));
                } else if row.status != *new {
                    batch.insert(&self.recipients, recipient_key(id, row.index), state(&row.address, *new));
                }
                if row.status != *new {
                    self.reschedule(&mut batch, row, *new)?;
                }
            }
            if leaves {
                batch.remove(&self.messages, id.0.to_be_bytes());
            }
        }
        batch.commit()?;
        Ok(())
    }

    fn forget_statuses(&mut self, cutoff_ms: u64) -> Result<usize, SpoolError> {
        let mut batch = self.batch(0).durability(Some(PersistMode::Buffer));
        let mut forgotten = 0;
        // Messages in the order received (ids grow with time): stop at the first too young.
        let mut message: Option<(MessageId, bool)> = None;
        for guard in self.status.iter() {
            let (key, value) = guard.into_inner()?;
            let Some(id) = key.get(..8).and_then(|k| <[u8; 8]>::try_from(k).ok()).map(u64::from_be_bytes)
            else {
                continue;
            };
            let id = MessageId(id);
            if message.is_none_or(|(m, _)| m != id) {
                // A message's own entry sorts first (its key is the shortest).
                let received =
                    value.get(8..16).and_then(|v| <[u8; 8]>::try_from(v).ok()).map(u64::from_be_bytes);
                if key.len() == 8 && received.is_some_and(|r| r >= cutoff_ms) {
                    break;
                }
                let gone = self.messages.get(id.0.to_be_bytes())?.is_none();
                forgotten += usize::from(gone);
                message = Some((id, gone));
            }
            if message.is_some_and(|(_, gone)| gone) {
                batch.remove(&self.status, key.to_vec());
            }
        }
        batch.commit()?;
        Ok(forgotten)
    }

    fn forget_events(&mut self, webhook: u64, offsets: &[u64]) -> Result<(), SpoolError> {
        let mut batch = self.batch(offsets.len()).durability(Some(PersistMode::Buffer));
        for offset in offsets {
            batch.remove(&self.events, event_key(webhook, *offset));
        }
        batch.commit()?;
        Ok(())
    }

    fn keep_events_of(&mut self, webhooks: &[u64]) -> Result<usize, SpoolError> {
        let mut batch = self.batch(0).durability(Some(PersistMode::SyncData));
        let mut removed = 0;
        for guard in self.events.iter() {
            let key = guard.key()?;
            let webhook = key.get(..8).and_then(|k| <[u8; 8]>::try_from(k).ok()).map(u64::from_be_bytes);
            if !webhook.is_some_and(|w| webhooks.contains(&w)) {
                batch.remove(&self.events, key.to_vec());
                removed += 1;
            }
        }
        batch.commit()?;
        Ok(removed)
    }

    /// The log's length the spool is known to be up to date with (0 if never recorded).
    fn log_watermark(&self) -> Result<u64, SpoolError> {
        match self.meta.get(LOG_WATERMARK)? {
            Some(v) => u64_of(&v).map_err(|error| corrupt("meta", "log_watermark", error)),
            None => Ok(0),
        }
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        Ok(self.meta.get(setting_key(name))?.map(|v| v.to_vec()))
    }

    fn set_setting(&mut self, name: &str, value: &[u8]) -> Result<(), SpoolError> {
        let mut batch = self.batch(1).durability(Some(PersistMode::SyncData));
        batch.insert(&self.meta, setting_key(name), value);
        batch.commit()?;
        Ok(())
    }

    fn message(&self, id: MessageId) -> Result<Option<Stored>, SpoolError> {
        self.read().message(id)
    }

    /// A handle that reads messages from another thread while this one writes.
    fn reader(&self) -> Arc<dyn SpoolRead> {
        Arc::new(self.read())
    }

    /// Every recipient still waiting, in message order: what a restart schedules again.
    fn waiting(&self) -> Result<Vec<Recipient>, SpoolError> {
        let mut out = Vec::new();
        for guard in self.recipients.iter() {
            let (key, value) = guard.into_inner()?;
            let r = recipient_of(&key, &value)?;
            if r.status != Status::Final {
                out.push(r);
            }
        }
        Ok(out)
    }
}

impl Drop for FjallSpool {
    /// What [`Spool::record`] left buffered is made durable when the spool closes.
    fn drop(&mut self) {
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            eprintln!(
                "volley: syncing the spool at close failed ({e}); the next start catches up from the log"
            );
        }
    }
}

/// Reads messages' content and the schedule while the writer goes on: a recipient waiting for
/// its retry keeps only its message's id in memory, and its content is read again when the
/// retry is due; a recipient whose retry is far off is not in memory at all, and is read from
/// the schedule when its time comes near.
#[derive(Clone)]
pub struct FjallReader {
    messages: Keyspace,
    recipients: Keyspace,
    due: Keyspace,
    events: Keyspace,
    status: Keyspace,
}

impl fmt::Debug for FjallReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FjallReader")
    }
}

impl SpoolRead for FjallReader {
    /// A message's content and envelope sender, if it is still in the spool.
    fn message(&self, id: MessageId) -> Result<Option<Stored>, SpoolError> {
        let Some(value) = self.messages.get(id.0.to_be_bytes())? else { return Ok(None) };
        let decode = || -> Result<Stored, Box<dyn std::error::Error>> {
            let mut r = Reader::new(&value)?;
            let received_ms = r.u64()?;
            let has_sender = r.u8()? == 1;
            let sender = r.str()?;
            let sender = if has_sender { Some(Address::new(sender)?) } else { None };
            let origin = r.str()?.to_owned();
            let recipient_count = r.u32()?;
            let content = r.rest().to_vec();
            Ok(Stored { id, sender, content, received_ms, origin, recipient_count })
        };
        decode().map(Some).map_err(|e| corrupt("messages", &id.to_string(), e))
    }

    /// Waiting recipients due at or after `from_ms`, soonest first (a snapshot: what is
    /// written meanwhile is not seen).
    fn scheduled_from(&self, from_ms: u64) -> Box<dyn Iterator<Item = Result<Scheduled, SpoolError>> + Send> {
        Box::new(self.due.range(due::key(from_ms, MessageId(0), 0)..).map(|guard| {
            let (key, value) = guard.into_inner()?;
            due::decode(&key, &value)
        }))
    }

    /// Waiting recipients (counted one by one: for a start, not for every turn).
    fn scheduled_count(&self) -> Result<usize, SpoolError> {
        Ok(self.due.len()?)
    }

    fn events(
        &self,
        webhook: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let from = match after {
            Some(offset) if offset == u64::MAX => return Ok(Vec::new()),
            Some(offset) => event_key(webhook, offset + 1),
            None => event_key(webhook, 0),
        };
        let mut out = Vec::new();
        for guard in self.events.range(from..=event_key(webhook, u64::MAX)).take(limit) {
            let (key, value) = guard.into_inner()?;
            let offset = key.get(8..16).and_then(|k| <[u8; 8]>::try_from(k).ok()).map(u64::from_be_bytes);
            let offset =
                offset.ok_or_else(|| corrupt("events", &format!("{key:?}"), "a key of the wrong length"))?;
            out.push((offset, value.to_vec()));
        }
        Ok(out)
    }

    fn statuses(&self, message: MessageId) -> Result<Option<Statuses>, SpoolError> {
        let mut found = Statuses { received: None, recipients: Vec::new() };
        let mut any = false;
        for guard in self.status.prefix(message.0.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            any = true;
            let offset = value.get(..8).and_then(|v| <[u8; 8]>::try_from(v).ok()).map(u64::from_be_bytes);
            let offset =
                offset.ok_or_else(|| corrupt("status", &message.to_string(), "a value too short"))?;
            match key.get(8..12).and_then(|k| <[u8; 4]>::try_from(k).ok()).map(u32::from_be_bytes) {
                Some(index) => found.recipients.push((index, offset)),
                None => found.received = Some(offset),
            }
        }
        Ok(any.then_some(found))
    }

    fn recipients(&self, message: MessageId) -> Result<Vec<Recipient>, SpoolError> {
        let mut out = Vec::new();
        for guard in self.recipients.prefix(message.0.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            out.push(recipient_of(&key, &value)?);
        }
        Ok(out)
    }

    fn event_count(&self, webhook: u64) -> Result<usize, SpoolError> {
        let mut n = 0;
        for guard in self.events.range(event_key(webhook, 0)..=event_key(webhook, u64::MAX)) {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }
}

/// A status entry's key: the message, then the recipient's index (none: the message's own,
/// which sorts first).
fn status_key(message: MessageId, index: Option<u32>) -> Vec<u8> {
    let mut k = message.0.to_be_bytes().to_vec();
    if let Some(index) = index {
        k.extend_from_slice(&index.to_be_bytes());
    }
    k
}

/// An event's key: its webhook, then its offset in the log (big-endian: the log's order).
fn event_key(webhook: u64, offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&webhook.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Settings live in `meta` beside its own keys, apart by a prefix none of those has.
fn setting_key(name: &str) -> Vec<u8> {
    [b"setting/", name.as_bytes()].concat()
}

fn recipient_key(id: MessageId, index: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.0.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn state(address: &Address, status: Status) -> Vec<u8> {
    let (tag, attempts, due_ms) = match status {
        Status::Waiting { attempts, due_ms } => (0, attempts, due_ms),
        Status::Final => (1, 0, 0),
    };
    Writer::new(32).u8(tag).u32(attempts).u64(due_ms).str(address.as_str()).done()
}

fn recipient_of(key: &[u8], value: &[u8]) -> Result<Recipient, SpoolError> {
    let name = || key.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (Ok(id), Ok(index)) =
        (<[u8; 8]>::try_from(&key[..key.len().min(8)]), <[u8; 4]>::try_from(key.get(8..).unwrap_or(&[])))
    else {
        return Err(corrupt("recipients", &name(), "a key of the wrong length"));
    };
    let (message, index) = (MessageId(u64::from_be_bytes(id)), u32::from_be_bytes(index));
    let decode = || -> Result<(Status, Address), Box<dyn std::error::Error>> {
        let mut r = Reader::new(value)?;
        let tag = r.u8()?;
        let (attempts, due_ms) = (r.u32()?, r.u64()?);
        let address = Address::new(r.str()?)?;
        r.end()?;
        let status = match tag {
            0 => Status::Waiting { attempts, due_ms },
            1 => Status::Final,
            other => return Err(DecodeError::Unknown { what: "recipient state", value: other }.into()),
        };
        Ok((status, address))
    };
    let (status, address) = decode().map_err(|e| corrupt("recipients", &name(), e))?;
    Ok(Recipient { message, index, address, status })
}

fn u64_of(value: &[u8]) -> Result<u64, String> {
    <[u8; 8]>::try_from(value).map(u64::from_be_bytes).map_err(|_| format!("{} octets, not 8", value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::idempotency::{IdempotencyKey, KEPT_FOR};
    use crate::serve::spool::{of_recipient_id, recipient_id};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volley-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn accepted(n: u64, rcpts: &[&str]) -> Accepted {
        Accepted {
            sender: Some(Address::new("app@example.com").unwrap()),
            recipients: rcpts.iter().map(|r| Address::new(r).unwrap()).collect(),
            content: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes().into(),
            received_ms: 1_000 + n,
            origin: "api:test".into(),
        }
    }

    #[test]
    fn accepted_messages_survive_a_restart_with_their_recipients_waiting() {
        let dir = temp("restart");
        let ids = {
            let mut spool = FjallSpool::open(&dir).unwrap();
            let mut null_sender = accepted(3, &["c@z.test"]);
            null_sender.sender = None;
            spool
                .accept(&[accepted(1, &["a@x.test", "b@y.test"]), accepted(2, &["a@x.test"]), null_sender])
                .unwrap()
        };
        assert_eq!(ids, [MessageId(1), MessageId(2), MessageId(3)]);
        let spool = FjallSpool::open(&dir).unwrap();
        let waiting = spool.waiting().unwrap();
        let seen: Vec<(u64, u32, &str, Status)> =
            waiting.iter().map(|r| (r.message.0, r.index, r.address.as_str(), r.status)).collect();
        assert_eq!(
            seen,
            [
                (1, 0, "a@x.test", Status::Waiting { attempts: 0, due_ms: 1001 }),
                (1, 1, "b@y.test", Status::Waiting { attempts: 0, due_ms: 1001 }),
                (2, 0, "a@x.test", Status::Waiting { attempts: 0, due_ms: 1002 }),
                (3, 0, "c@z.test", Status::Waiting { attempts: 0, due_ms: 1003 }),
            ]
        );
        let stored = spool.message(MessageId(1)).unwrap().unwrap();
        assert_eq!(stored.content, &*accepted(1, &[]).content);
        assert_eq!(
            (stored.sender.unwrap().as_str(), stored.origin.as_str(), stored.recipient_count),
            ("app@example.com", "api:test", 2)
        );
        assert_eq!(spool.message(MessageId(3)).unwrap().unwrap().sender, None, "the null sender");
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_message_leaves_when_its_last_recipient_is_final_and_ids_never_repeat() {
        let dir = temp("final");
        let mut spool = FjallSpool::open(&dir).unwrap();
        let ids =
            spool.accept(&[accepted(1, &["a@x.test", "b@y.test"]), accepted(2, &["c@z.test"])]).unwrap();
        let later = Status::Waiting { attempts: 1, due_ms: 60_000 };
        spool
            .record(
                &[
                    Change { message: ids[0], index: 0, status: Status::Final },
                    Change { message: ids[0], index: 1, status: later },
                    Change { message: ids[1], index: 0, status: Status::Final },
                ],
                &FromLog::default(),
                Some(4096),
            )
            .unwrap();
        assert!(spool.message(ids[1]).unwrap().is_none(), "all final: gone");
        assert!(spool.message(ids[0]).unwrap().is_some(), "one still waiting");
        drop(spool);
        let mut spool = FjallSpool::open(&dir).unwrap();
        let waiting = spool.waiting().unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            (waiting[0].message, waiting[0].index, waiting[0].status),
            (ids[0], 1, later),
            "a deferral's schedule kept"
        );
        assert_eq!(spool.log_watermark().unwrap(), 4096, "kept with the changes it came with");
        spool
            .record(&[Change { message: ids[0], index: 1, status: Status::Final }], &FromLog::default(), None)
            .unwrap();
        assert_eq!(spool.log_watermark().unwrap(), 4096, "only moved when given");
        assert!(spool.waiting().unwrap().is_empty() && spool.message(ids[0]).unwrap().is_none());
        drop(spool);
        // The newest message left, and the process restarted: its id is still not reused.
        let mut spool = FjallSpool::open(&dir).unwrap();
        assert_eq!(spool.accept(&[accepted(3, &["d@x.test"])]).unwrap(), [MessageId(3)]);
        // A final learnt twice (a restart going over the log again) changes nothing.
        let gone = Change { message: ids[1], index: 0, status: Status::Final };
        let unknown = Change { message: MessageId(99), index: 0, status: Status::Final };
        let fourth = spool.accept(&[accepted(4, &["e@x.test"])]).unwrap()[0];
        let now_final = Change { message: fourth, index: 0, status: Status::Final };
        spool.record(&[gone, unknown, now_final], &FromLog::default(), None).unwrap();
        assert!(spool.message(fourth).unwrap().is_none(), "the others in the batch still count");
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn schedule(spool: &FjallSpool) -> Vec<(u64, u32, u64, u32)> {
        spool
            .reader()
            .scheduled_from(0)
            .map(|e| e.unwrap())
            .map(|e| (e.due_ms, e.attempts, e.message.0, e.index))
            .collect()
    }

    #[test]
    fn the_schedule_follows_every_waiting_recipient_and_only_those() {
        let dir = temp("schedule");
        let mut spool = FjallSpool::open(&dir).unwrap();
        let ids =
            spool.accept(&[accepted(1, &["a@x.test", "b@y.test"]), accepted(2, &["c@z.test"])]).unwrap();
        assert_eq!(
            schedule(&spool),
            [(1001, 0, 1, 0), (1001, 0, 1, 1), (1002, 0, 2, 0)],
            "due when received"
        );
        let first = spool.reader().scheduled_from(0).next().unwrap().unwrap();
        assert_eq!(
            (first.sender.unwrap().as_str(), first.address.as_str(), first.received_ms),
            ("app@example.com", "a@x.test", 1001),
            "all a job needs but the content"
        );
        let wait = |attempts, due_ms| Status::Waiting { attempts, due_ms };
        spool
            .record(
                &[
                    Change { message: ids[0], index: 0, status: wait(1, 5000) },
                    // Deferred twice before the spool heard: the last one counts.
                    Change { message: ids[0], index: 1, status: wait(1, 3000) },
                    Change { message: ids[0], index: 1, status: wait(2, 9000) },
                    Change { message: ids[1], index: 0, status: Status::Final },
                ],
                &FromLog::default(),
                None,
            )
            .unwrap();
        assert_eq!(schedule(&spool), [(5000, 1, 1, 0), (9000, 2, 1, 1)], "moved; the final one out");
        assert_eq!(
            spool.reader().scheduled_from(6000).map(|e| e.unwrap().index).collect::<Vec<_>>(),
            [1],
            "read from a time on"
        );
        spool
            .record(&[Change { message: ids[0], index: 0, status: wait(2, 1000) }], &FromLog::default(), None)
            .unwrap();
        assert_eq!(schedule(&spool), [(1000, 2, 1, 0), (9000, 2, 1, 1)], "sooner is fine too");
        spool
            .record(&[Change { message: ids[0], index: 1, status: Status::Final }], &FromLog::default(), None)
            .unwrap();
        spool
            .record(&[Change { message: ids[0], index: 1, status: wait(3, 1) }], &FromLog::default(), None)
            .unwrap();
        assert_eq!(schedule(&spool), [(1000, 2, 1, 0)], "a final recipient stays final");
        assert_eq!(spool.reader().scheduled_count().unwrap(), 1);
        spool
            .record(&[Change { message: ids[0], index: 0, status: Status::Final }], &FromLog::default(), None)
            .unwrap();
        assert!(schedule(&spool).is_empty() && spool.message(ids[0]).unwrap().is_none());
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_spool_from_before_the_schedule_gets_one_when_opened() {
        let dir = temp("format");
        let mut spool = FjallSpool::open(&dir).unwrap();
        let ids = spool.accept(&[accepted(1, &["a@x.test", "b@y.test"])]).unwrap();
        let later = Status::Waiting { attempts: 1, due_ms: 7000 };
        spool
            .record(&[Change { message: ids[0], index: 1, status: later }], &FromLog::default(), None)
            .unwrap();
        // As the previous layout left it: no schedule, no format.
        spool.due.clear().unwrap();
        spool.meta.remove(FORMAT).unwrap();
        assert!(schedule(&spool).is_empty());
        drop(spool);
        let spool = FjallSpool::open(&dir).unwrap();
        assert_eq!(schedule(&spool), [(1001, 0, 1, 0), (7000, 1, 1, 1)], "each at its due time");
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_recipient_id_names_its_message_and_place() {
        for (m, i) in [(1, 0), (7, 65_535), ((1 << 48) - 1, 3)] {
            assert_eq!(of_recipient_id(recipient_id(MessageId(m), i)), (MessageId(m), i));
        }
        assert!(recipient_id(MessageId(1), 0) > recipient_id(MessageId(0), 65_535), "ordered by message");
        let dir = temp("many");
        let mut spool = FjallSpool::open(&dir).unwrap();
        let mut big = accepted(1, &[]);
        big.recipients = vec![Address::new("a@x.test").unwrap(); MAX_RECIPIENTS + 1];
        assert!(
            matches!(spool.accept(&[big]), Err(SpoolError::TooManyRecipients(n)) if n == MAX_RECIPIENTS + 1)
        );
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_idempotency_key_admits_once_until_it_expires() {
        let dir = temp("idem");
        let key = |k: &str, now| IdempotencyKey::new("app", k, now);
        let group = |n, k: Option<IdempotencyKey>| Group {
            messages: vec![accepted(n, &["a@x.test"])],
            idempotency: k,
        };
        let now = 1_000;
        {
            let mut spool = FjallSpool::open(&dir).unwrap();
            let out = spool
                .admit(&[group(1, Some(key("k1", now))), group(2, Some(key("k1", now))), group(3, None)], now)
                .unwrap();
            let first = vec![(MessageId(1), "a@x.test".to_owned())];
            assert_eq!(
                out,
                [
                    Admission::New(vec![MessageId(1)]),
                    Admission::Replay(first.clone()),
                    Admission::New(vec![MessageId(2)])
                ],
                "the same key twice in one batch: the second replays the first"
            );
            let again = spool.admit(&[group(4, Some(key("k1", now)))], now + 10).unwrap();
            assert_eq!(again, [Admission::Replay(first)], "and in a later one");
            assert_eq!(spool.waiting().unwrap().len(), 2, "a replay writes nothing");
            let other = spool.admit(&[group(5, Some(IdempotencyKey::new("ops", "k1", now)))], now).unwrap();
            assert_eq!(other, [Admission::New(vec![MessageId(3)])], "keys are per API key");
            let later = now + KEPT_FOR.as_millis() as u64 + 1;
            let expired = spool.admit(&[group(6, Some(key("k1", later)))], later).unwrap();
            assert_eq!(expired, [Admission::New(vec![MessageId(4)])], "an expired key admits anew");
        }
        let spool = FjallSpool::open(&dir).unwrap();
        assert_eq!(
            spool.idempotency.iter().count(),
            0,
            "expired keys go at the next start (these are from 1970)"
        );
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = temp("lock");
        let spool = FjallSpool::open(&dir).unwrap();
        let me = std::process::id();
        assert!(matches!(FjallSpool::open(&dir), Err(SpoolError::InUse { pid: Some(p) }) if p == me));
        drop(spool);
        assert!(FjallSpool::open(&dir).is_ok(), "free once the first closed it");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_values_are_named_not_trusted() {
        let key = recipient_key(MessageId(7), 2);
        let bad = Writer::new(0).u8(5).u32(0).u64(0).str("a@x.test").done();
        let err = recipient_of(&key, &bad).unwrap_err().to_string();
        assert!(err.contains("recipients") && err.contains("unknown recipient state 5"), "{err}");
        let not_an_address = state(&Address::new("a@x.test").unwrap(), Status::Final);
        let mut damaged = not_an_address.clone();
        let at = damaged.iter().position(|&b| b == b'@').unwrap();
        damaged[at] = b' ';
        assert!(recipient_of(&key, &damaged).is_err());
        assert!(recipient_of(&key[..5], &not_an_address).is_err(), "a short key");
        let r = recipient_of(&key, &not_an_address).unwrap();
        assert_eq!((r.message, r.index, r.status), (MessageId(7), 2, Status::Final));
    }
}
