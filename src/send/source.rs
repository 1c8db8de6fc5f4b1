//! `send`'s job source: reads rows, admits each recipient (resume, suppression,
//! de-duplication) with the recipe its message is rendered from, and hands it to
//! [`Dispatch`], which routes it (waiting for DNS without blocking) and makes the engine's
//! jobs, retries included, when they come due. It runs on the engine's producer thread; what it
//! decides itself (rejected rows, DNS bounces and deferrals) goes to the log thread as a
//! [`Report`], which makes the record and decides a deferral's retry.

use std::collections::{HashSet, VecDeque};
use std::hash::Hasher;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use super::hashing::Fingerprints;
use super::input::{BadRow, Item, Rows};
use super::resume::Resumed;
use super::suppress::Suppressions;
use super::template::{MessageTemplate, Recipe};
use crate::cluster::worker::QueueRead;
use crate::deliver::dispatch::{Dispatch, MAX_RESOLVING};
use crate::deliver::ledger::{Flow, Report, Unsent};
use crate::deliver::pending::Pending;
use crate::deliver::route::Routes;
use crate::engine::{JobSource, Next, Payload};

/// Rows read before the fingerprint set is sized for the whole input (see `SendSource::admit`).
const SIZE_SET_AFTER: u64 = 4096;
/// The most fingerprints reserved ahead (8 bytes and a control byte each, at most 7/8 full).
const MAX_RESERVE: u64 = 50_000_000;

/// How often to look for work while only DNS answers or retries can bring any (they arrive by
/// polling): often while answers are awaited, since rows wait on them; seldom once the input is
/// read and nothing is resolving, when only retries can come (scheduled seconds ahead) and each
/// look wakes a thread that may share a core with an engine.
const POLL_RESOLVING: Duration = Duration::from_millis(2);
const POLL_IDLE: Duration = Duration::from_millis(10);

/// Rows read per call at most, so a long run of bad rows does not hold up retries.
const ROWS_PER_CALL: usize = 256;

/// Rows read ahead of the one admitted: each one's slot in the fingerprint set is fetched into
/// the cache meanwhile (see [`Fingerprints::prefetch`]).
const READ_AHEAD: usize = 8;

/// What the source, the log thread and the main thread share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Rows admitted (read and not skipped by --resume), final and waiting: the counts the
    /// ledger keeps with the source.
    pub flow: Arc<Flow>,
    /// Rows skipped because the resumed log has their final record.
    pub skipped: AtomicU64,
    /// Why reading the input stopped early, if it did.
    pub input_error: Mutex<Option<String>>,
    /// The input was read to its end (a run stopped early may leave rows unread).
    pub input_done: std::sync::atomic::AtomicBool,
}

/// Where a campaign's rows come from.
pub enum Input {
    /// A recipients file, read in order.
    File(Rows),
    /// A campaign shared through Redis: rows as this node's worker reads them.
    Queue(crate::cluster::worker::QueueRows),
}

/// What reading gave.
enum Read {
    Row(Item, u64),
    /// Nothing now (a shared campaign's next rows are on their way).
    Later,
    End,
}

pub struct SendSource {
    input: Option<Input>,
    template: Arc<MessageTemplate>,
    /// Admitted recipients on their way to the engine: routing, DNS, retries.
    dispatch: Dispatch,
    /// Fingerprints of addresses seen (8 bytes each), unless duplicates are allowed.
    seen: Option<Fingerprints>,
    /// Addresses and domains never sent to.
    suppress: Suppressions,
    /// Rows read so far.
    rows_read: u64,
    /// Rows read from `rows` and not yet admitted, with their fingerprints (0 for a bad row or
    /// when duplicates are allowed), and how reading ended if it has.
    ahead: VecDeque<(Item, u64)>,
    ended: Option<io::Result<()>>,
    resume: Option<Resumed>,
    shared: Arc<Shared>,
    /// Rows another node took over that may still be here (see [`SendSource::drop_lost`]).
    lost: HashSet<u64>,
    look_for_lost: Option<Instant>,
}

/// What a campaign's job source reads, routes and reports through.
pub struct SourceConfig {
    pub input: Input,
    pub template: Arc<MessageTemplate>,
    pub routes: Routes,
    /// Send one message per address, to its first row.
    pub dedupe: bool,
    pub suppress: Suppressions,
    /// The log of the run being continued, if any: its final recipients are skipped.
    pub resume: Option<Resumed>,
    /// Deferred recipients the ledger hands back, with when to retry.
    pub retries: Receiver<(Instant, Pending)>,
    /// What the source decides itself (rejected, suppressed, unroutable), for the ledger.
    pub reports: SyncSender<Report>,
    pub shared: Arc<Shared>,
}

impl SendSource {
    pub fn new(config: SourceConfig) -> SendSource {
        let SourceConfig { input, template, routes, dedupe, suppress, resume, retries, reports, shared } =
            config;
        // A shared campaign's loader has de-duplicated its rows.
        let dedupe = dedupe && matches!(input, Input::File(_));
        SendSource {
            input: Some(input),
            template,
            dispatch: Dispatch::new(routes, retries, reports),
            seen: dedupe.then(Fingerprints::default),
            suppress,
            rows_read: 0,
            ahead: VecDeque::with_capacity(READ_AHEAD),
            ended: None,
            resume,
            shared,
            lost: HashSet::new(),
            look_for_lost: None,
        }
    }

    fn report(&self, report: Report) {
        self.dispatch.report(report);
    }

    fn reject(&self, bad: BadRow) {
        let rcpt = bad.email.map(Into::into);
        self.report(Report::Unsent { id: bad.line, rcpt, why: Unsent::Rejected, reason: bad.reason });
    }

    /// The next row to admit and its fingerprint. Reads a file up to [`READ_AHEAD`] rows
    /// ahead, starting the fetch of each one's fingerprint slot.
    fn read_row(&mut self) -> io::Result<Read> {
        if let Some(Input::Queue(queue)) = &mut self.input {
            // The loader de-duplicated the campaign's rows: no fingerprints here.
            return Ok(match queue.next_row()? {
                QueueRead::Row(item) => Read::Row(item, 0),
                QueueRead::Later => Read::Later,
                QueueRead::Complete => Read::End,
            });
        }
        while self.ahead.len() < READ_AHEAD && self.ended.is_none() {
            let Some(Input::File(rows)) = &mut self.input else { break };
            match rows.next_row() {
                Ok(Some(item)) => {
                    let fingerprint = match (&item, &self.seen) {
                        (Ok(row), Some(seen)) => {
                            let f = fingerprint(row.email.as_str());
                            seen.prefetch(f);
                            f
                        }
                        _ => 0,
                    };
                    self.ahead.push_back((item, fingerprint));
                }
                Ok(None) => self.ended = Some(Ok(())),
                Err(e) => self.ended = Some(Err(e)),
            }
        }
        match self.ahead.pop_front() {
            Some((item, fingerprint)) => Ok(Read::Row(item, fingerprint)),
            None => self.ended.take().unwrap_or(Ok(())).map(|()| Read::End),
        }
    }

    /// Admits one row (`fingerprint` is its address's, when de-duplicating): skipped
    /// (resumed), rejected, or routed.
    fn admit(&mut self, item: Item, fingerprint: u64, now: Instant) {
        self.rows_read += 1;
        if self.rows_read == SIZE_SET_AFTER {
            // Sized once for the whole file, as estimated from its first rows, the set is not
            // rebuilt (every fingerprint moved) each time it doubles.
            if let (Some(seen), Some(Input::File(rows))) = (&mut self.seen, &self.input) {
                let estimate = rows.estimated_rows(self.rows_read).unwrap_or(0).min(MAX_RESERVE);
                seen.reserve(estimate.saturating_sub(seen.len() as u64) as usize);
            }
        }
        let line = crate::send::input::line_of(&item);
        if self.resume.as_ref().is_some_and(|r| r.is_final(line)) {
            // Still remembered for de-duplication: a later duplicate stays a duplicate.
            if let (Ok(_), Some(seen)) = (&item, &mut self.seen) {
                seen.insert(fingerprint);
            }
            self.shared.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.shared.flow.admitted.fetch_add(1, Ordering::Relaxed);
        let row = match item {
            Ok(row) => row,
            Err(bad) => return self.reject(bad),
        };
        if let Some(why) = self.suppress.check(&row.email) {
            let (rcpt, reason) = (Some(row.email.shared()), why.reason().to_owned());
            return self.report(Report::Unsent { id: row.line, rcpt, why: Unsent::Suppressed, reason });
        }
        if let Some(seen) = &mut self.seen {
            if !seen.insert(fingerprint) {
                return self.reject(duplicate(&row));
            }
        }
        // Rendered by the core that sends it; a row its template refuses is rejected there.
        let (id, rcpt) = (row.line, row.email.clone());
        let recipe = Recipe { row, template: Arc::clone(&self.template) };
        let message = Payload::Compose(Box::new(recipe));
        self.dispatch.route(Pending { id, rcpt, message, born: now, attempts: 0 }, now);
    }

    /// Rows of a shared campaign another node took over (this one was cut off from Redis):
    /// those only waiting here are dropped, and no longer this node's to account for. One in a
    /// session goes on (its final record is counted once, for whichever node finishes first).
    fn drop_lost(&mut self, now: Instant) {
        let mut news = false;
        if let Some(Input::Queue(queue)) = &mut self.input {
            let lost = queue.take_lost();
            news = !lost.is_empty();
            self.lost.extend(lost);
        }
        // Looking costs a pass over what waits here: when news comes, and for rows that were
        // in a session then (they may come back deferred) once a second, not every turn.
        if self.lost.is_empty() || !(news || self.look_for_lost.is_none_or(|at| now >= at)) {
            return;
        }
        let dropped = self.dispatch.forget(&mut self.lost);
        self.shared.flow.admitted.fetch_sub(dropped as u64, Ordering::AcqRel);
        self.look_for_lost = Some(now + Duration::from_secs(1));
    }

    fn publish(&self) {
        self.shared.flow.waiting.store(self.dispatch.waiting() as u64, Ordering::Relaxed);
    }
}

impl JobSource for SendSource {
    fn next(&mut self, now: Instant) -> Next {
        self.dispatch.poll(now);
        self.drop_lost(now);
        let mut read = 0;
        loop {
            if let Some(job) = self.dispatch.next_job(now) {
                self.publish();
                return Next::Job(job);
            }
            if read >= ROWS_PER_CALL || self.dispatch.resolving() >= MAX_RESOLVING {
                break;
            }
            if self.input.is_none() {
                break;
            }
            match self.read_row() {
                Ok(Read::Row(item, fingerprint)) => {
                    read += 1;
                    self.admit(item, fingerprint, now);
                }
                Ok(Read::Later) => break,
                Ok(Read::End) => {
                    self.shared.input_done.store(true, Ordering::Release);
                    self.input = None;
                }
                Err(e) => {
                    if let Ok(mut slot) = self.shared.input_error.lock() {
                        *slot = Some(format!("reading the recipients stopped: {e}"));
                    }
                    self.input = None;
                }
            }
        }
        self.publish();
        if self.input.is_none() && self.dispatch.waiting() == 0 && self.shared.flow.all_final() {
            return Next::Done;
        }
        // Nothing to hand out now: look again soon, or when the next retry is due.
        let poll = if read > 0 {
            Duration::ZERO
        } else if self.input.is_none() && self.dispatch.resolving() == 0 {
            POLL_IDLE
        } else {
            POLL_RESOLVING
        };
        let soon = now + poll;
        Next::Wait(self.dispatch.next_retry().map_or(soon, |at| at.min(soon)))
    }
}

/// A row whose address an earlier row has: refused, so each address gets one message (the
/// loader of a campaign shared through Redis decides this with the same rule).
pub fn duplicate(row: &super::input::Row) -> BadRow {
    BadRow {
        line: row.line,
        email: Some(row.email.to_string()),
        reason: "duplicate address: sent once, for its first row (--allow-duplicates to send every row)"
            .into(),
    }
}

/// An address's 64-bit fingerprint, case-insensitive. Two different addresses share one with
/// probability about n²/2⁶⁵ (10 million addresses: 3 in a million runs).
pub fn fingerprint(address: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // Lower-cased piece by piece on the stack: no allocation per row.
    let mut buf = [0u8; 64];
    for piece in address.as_bytes().chunks(buf.len()) {
        let lower = &mut buf[..piece.len()];
        lower.copy_from_slice(piece);
        lower.make_ascii_lowercase();
        h.write(lower);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_ascii_case_only() {
        let long = format!("{}@example.com", "a".repeat(100));
        let cases = [
            ("Ann@Example.COM", "ann@example.com", true),
            (long.as_str(), &long.to_ascii_uppercase(), true),
            ("ann@example.com", "ann@example.co", false),
            ("ann@example.com", "anne@example.com", false),
            ("Ä@x.test", "ä@x.test", false),
        ];
        for (a, b, same) in cases {
            assert_eq!(fingerprint(a) == fingerprint(b), same, "{a} {b}");
        }
        let mut set = Fingerprints::default();
        assert!(set.insert(fingerprint("a@x.test")) && !set.insert(fingerprint("A@X.TEST")));
    }
}
