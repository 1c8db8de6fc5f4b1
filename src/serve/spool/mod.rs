//! The spool: every accepted message and each of its recipients' state, durable before intake
//! answers. What serve needs of it is the [`Spool`] trait; the store under it is fjall
//! ([`fjall`], chosen by measurement, docs/BENCHMARKS.md), and another (a replicated one, say)
//! can stand in by implementing the trait.
//!
//! What any spool keeps, and fjall's layout (keyspaces in one store under `DIR/store`, written
//! only in atomic batches):
//! - `messages`: message id (big-endian u64) -> when it was received, its sender, who handed it
//!   in, how many recipients, and its content (kept apart from the keys by the store);
//! - `recipients`: message id and recipient index (big-endian) -> the address and its state:
//!   waiting (attempts so far, when the next is due) or final;
//! - `due`: every waiting recipient again, under when its next attempt is due: the schedule,
//!   read in order a window at a time (see [`super::due`]);
//! - `meta`: the next message id, so ids never repeat, not even after the newest message has
//!   left the spool and the process restarted; the log's watermark (see [`Spool::record`]);
//!   the layout's format; settings (`setting/NAME`: an operator's suspensions, see
//!   `serve::queue`);
//! - `events`: webhook and the record's offset in the log (big-endian) -> the delivery log's
//!   record, until that webhook has it (see `serve::webhook`);
//! - `status`: message id and recipient index (or none, for the message) -> where its latest
//!   record is in the log (and when the message was received), for the status API; forgotten
//!   after `--status-retention` once the message has left (see `serve::status`);
//! - `idempotency`: the HTTP API's Idempotency-Keys, with what each admitted (see
//!   [`super::idempotency`]), written with those messages; expired ones go at the next start.
//!
//! A message leaves the spool in the batch that makes its last recipient final. One process
//! uses a spool at a time (`DIR/volley.lock`, an `flock` released however the holder ends);
//! one writer writes it (the group-commit thread, `serve::commit`), which is why writes take
//! `&mut self`.

mod fjall;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

pub use self::fjall::{FjallReader, FjallSpool};
use super::due::Scheduled;
use super::idempotency::{self, IdempotencyKey};
use crate::deliver::log::lock;
use crate::proto::Address;

/// A message's id in the spool: assigned at acceptance, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The most recipients a message may have: a recipient's id (in the engine and the delivery
/// log) is its message's id and its index, in 48 and 16 bits.
pub const MAX_RECIPIENTS: usize = 1 << 16;

/// A recipient's id outside the spool: its message's id and its place in the envelope in one
/// number (see [`MAX_RECIPIENTS`]).
pub fn recipient_id(message: MessageId, index: u32) -> u64 {
    (message.0 << 16) | u64::from(index & 0xffff)
}

/// The message and index a [`recipient_id`] names.
pub fn of_recipient_id(id: u64) -> (MessageId, u32) {
    (MessageId(id >> 16), (id & 0xffff) as u32)
}

/// A message as intake accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `None` is the null reverse-path.
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
    /// The whole message, as it will be sent (shared with the delivery it is handed to).
    pub content: Arc<[u8]>,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub received_ms: u64,
    /// Who handed it in (the SMTP user or the API key's name), for the log.
    pub origin: String,
}

/// Messages accepted together (one HTTP request's): all or none, under one Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub messages: Vec<Accepted>,
    pub idempotency: Option<IdempotencyKey>,
}

/// What became of a [`Group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Spooled: the messages' ids, in order.
    New(Vec<MessageId>),
    /// Its Idempotency-Key was seen: what it admitted then (message ids and first
    /// recipients); nothing was written.
    Replay(idempotency::Admitted),
}

/// A message as the spool holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: MessageId,
    pub sender: Option<Address>,
    pub content: Vec<u8>,
    pub received_ms: u64,
    pub origin: String,
    pub recipient_count: u32,
}

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// To be tried (again) at `due_ms` (milliseconds since the Unix epoch).
    Waiting { attempts: u32, due_ms: u64 },
    /// Delivered, bounced, expired or uncertain: its final record is the log's.
    Final,
}

/// One recipient of a message in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub message: MessageId,
    /// Its place in the message's envelope.
    pub index: u32,
    pub address: Address,
    pub status: Status,
}

/// A record of the delivery log to tell a webhook of (see `serve::webhook`), kept until the
/// webhook has it. Its offset in the log is its id: the same record queued twice (a restart
/// catching up from the log) is one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which webhook (see `serve::webhook::Webhook::id`).
    pub webhook: u64,
    pub offset: u64,
    /// The record, one JSON line without its newline.
    pub line: Arc<[u8]>,
}

/// Where a message's or a recipient's latest record is in the log, for the status API (see
/// `serve::status`): `index` `None` is the message's `received` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusEntry {
    pub message: MessageId,
    pub index: Option<u32>,
    pub offset: u64,
    /// When the message was received (milliseconds since the Unix epoch): what its entries'
    /// age counts from (message entries only).
    pub received_ms: u64,
}

/// What the log's records add to a batch of recipients' states: events for webhooks, and
/// where each record is (the status index).
#[derive(Debug, Clone, Default)]
pub struct FromLog {
    pub events: Vec<Event>,
    pub statuses: Vec<StatusEntry>,
}

/// A recipient's new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub message: MessageId,
    pub index: u32,
    pub status: Status,
}

#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("is in use by {}: one volley serve runs on a spool at a time", lock::holder_text(*pid))]
    InUse { pid: Option<u32> },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// fjall's own (see [`FjallSpool`]).
    #[error("{0}")]
    Store(#[from] ::fjall::Error),
    #[error("damaged {table} entry {key}: {error}")]
    Corrupt { table: &'static str, key: String, error: String },
    #[error("a message may have at most {MAX_RECIPIENTS} recipients, not {0}")]
    TooManyRecipients(usize),
}

impl SpoolError {
    /// The disk is full: intake should say "try later" (452, 503), not fail.
    pub fn is_full(&self) -> bool {
        let io = match self {
            SpoolError::Io(e) | SpoolError::Store(::fjall::Error::Io(e)) => e,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC)
    }

    /// The store cannot be written again by this process: a failed write to its journal (a
    /// full disk among other causes) leaves it poisoned until it is opened anew, which
    /// recovers what was committed and drops the half-written batch.
    pub fn breaks_store(&self) -> bool {
        matches!(self, SpoolError::Store(::fjall::Error::Poisoned | ::fjall::Error::Io(_)))
    }
}

/// What serve needs of its spool. One process uses a spool at a time, and one writer writes it
/// (the group-commit thread, `serve::commit`), which is why writes take `&mut self`; a
/// [`SpoolRead`] reads it from other threads meanwhile.
pub trait Spool: Send {
    /// Where it is (intake watches the free space of its file system).
    fn path(&self) -> &Path;

    /// The newest message's id (0 if there never was one).
    fn last_id(&self) -> MessageId;

    /// Writes every group's messages and recipients (each waiting, due when received) in one
    /// batch, durable (fdatasync) when this returns, and says what became of each group, in
    /// order: its new ids, or (an Idempotency-Key seen before `now_ms` made it expire, in the
    /// spool or earlier in `groups`) what the key admitted the first time, writing nothing.
    fn admit(&mut self, groups: &[Group], now_ms: u64) -> Result<Vec<Admission>, SpoolError>;

    /// Records recipients' new states in one atomic batch, with the log's length they bring the
    /// spool up to (`watermark`: every record before it is reflected). A message whose
    /// recipients are then all final leaves the spool in the same batch; a recipient final
    /// stays final. A change for a recipient no longer in the spool (its message left) is
    /// skipped: a restart may learn of the same final twice, and one stale change must not
    /// cost the others.
    ///
    /// Need not be synced of its own: the log already holds these records durably, so a crash
    /// that loses the batch only takes the watermark back, and the next start reads the log
    /// from there ([`super::run::reconcile`]); a lost deferral is retried sooner than planned.
    /// `from_log`'s webhook events and status entries are written in the same batch.
    fn record(
        &mut self,
        changes: &[Change],
        from_log: &FromLog,
        watermark: Option<u64>,
    ) -> Result<(), SpoolError>;

    /// Forgets the status entries of messages received before `cutoff_ms` that have left the
    /// spool (those still waiting keep theirs); how many messages' entries went.
    fn forget_statuses(&mut self, cutoff_ms: u64) -> Result<usize, SpoolError>;

    /// Drops a webhook's events it has (or will never have): not synced of its own, so a crash
    /// may tell the webhook of them again, as at-least-once allows.
    fn forget_events(&mut self, webhook: u64, offsets: &[u64]) -> Result<(), SpoolError>;

    /// Drops the events of every webhook but `webhooks` (no longer configured); how many.
    fn keep_events_of(&mut self, webhooks: &[u64]) -> Result<usize, SpoolError>;

    /// The log's length the spool is known to be up to date with (0 if never recorded).
    fn log_watermark(&self) -> Result<u64, SpoolError>;

    /// Every recipient still waiting, in message order.
    fn waiting(&self) -> Result<Vec<Recipient>, SpoolError>;

    /// A setting kept with the spool (an operator's suspensions), as last set; `None` if never.
    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, SpoolError>;

    /// Sets a setting, durable (fdatasync) when this returns.
    fn set_setting(&mut self, name: &str, value: &[u8]) -> Result<(), SpoolError>;

    /// A handle that reads messages and the schedule from another thread while this one writes.
    fn reader(&self) -> Arc<dyn SpoolRead>;

    /// A message's content and envelope sender, if it is still in the spool.
    fn message(&self, id: MessageId) -> Result<Option<Stored>, SpoolError> {
        self.reader().message(id)
    }

    /// Writes `accepted` and their recipients (each waiting, due when received) in one batch,
    /// durable when this returns; their ids, in order.
    fn accept(&mut self, accepted: &[Accepted]) -> Result<Vec<MessageId>, SpoolError> {
        let group = Group { messages: accepted.to_vec(), idempotency: None };
        match self.admit(std::slice::from_ref(&group), super::intake::now_ms())?.pop() {
            Some(Admission::New(ids)) => Ok(ids),
            _ => Ok(Vec::new()),
        }
    }
}

/// Reads a spool while its writer goes on: a recipient in memory keeps only its message's id,
/// and its content is read again when an attempt is due; a recipient not in memory at all is
/// read from the schedule when its time comes near.
pub trait SpoolRead: Send + Sync + fmt::Debug {
    /// A message's content and envelope sender, if it is still in the spool.
    fn message(&self, id: MessageId) -> Result<Option<Stored>, SpoolError>;

    /// Waiting recipients due at or after `from_ms`, soonest first (what is written meanwhile
    /// need not be seen).
    fn scheduled_from(&self, from_ms: u64) -> Box<dyn Iterator<Item = Result<Scheduled, SpoolError>> + Send>;

    /// Waiting recipients (counted one by one: for a start, not for every turn).
    fn scheduled_count(&self) -> Result<usize, SpoolError>;

    /// A webhook's next events after offset `after` (from its first if `None`), at most
    /// `limit`, in the log's order: offset and record.
    fn events(
        &self,
        webhook: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError>;

    /// A webhook's events waiting (counted one by one: for a start).
    fn event_count(&self, webhook: u64) -> Result<usize, SpoolError>;

    /// A message's status entries: its `received` record's offset, and each recipient's
    /// latest record's (by index); `None` if it has none (never, or forgotten).
    fn statuses(&self, message: MessageId) -> Result<Option<Statuses>, SpoolError>;

    /// A message's recipients still in the spool, with their states.
    fn recipients(&self, message: MessageId) -> Result<Vec<Recipient>, SpoolError>;
}

/// A message's entries in the status index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statuses {
    pub received: Option<u64>,
    pub recipients: Vec<(u32, u64)>,
}

/// Opens (or creates) the spool in `dir` on the store volley uses, refusing one another
/// process holds.
pub fn open(dir: &Path) -> Result<Box<dyn Spool>, SpoolError> {
    Ok(Box::new(FjallSpool::open(dir)?))
}

pub(super) fn corrupt(table: &'static str, key: &str, error: impl fmt::Display) -> SpoolError {
    SpoolError::Corrupt { table, key: key.to_owned(), error: error.to_string() }
}
