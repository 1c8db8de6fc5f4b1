//! Group commit: one thread writes the spool; intake (SMTP and HTTP alike) and delivery hand it
//! work and wait for the batch it went into to be durable. Whatever is waiting when the thread
//! looks goes into one batch, so one `fdatasync` serves every injection that arrived during the
//! last one: under load a batch grows to what arrived during a sync, and alone a message waits
//! for its own sync only (docs/BENCHMARKS.md: 0.25 ms at one a batch, 30,000 msg/s at 16).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::oneshot;

use super::dsn;
use super::intake::now_ms;
use super::source::Arrival;
use super::spool::{Accepted, Admission, Change, FromLog, Group, MessageId, Spool, SpoolError};
use crate::deliver::ledger::Failed;

/// The most messages, and content octets, one batch takes: a bound on what a commit writes and
/// on how long the first request of a batch waits behind the others.
const BATCH_MESSAGES: usize = 1024;
const BATCH_OCTETS: usize = 32 * 1024 * 1024;
/// Requests queued for the writer before intake waits to queue more (back-pressure).
const QUEUED: usize = 4096;

#[derive(Debug, Clone, Error)]
pub enum CommitError {
    #[error("the spool could not be written: {0}")]
    Spool(Arc<SpoolError>),
    #[error("the spool writer has stopped")]
    Stopped,
}

impl CommitError {
    /// The disk is full: answer "try later", keep running.
    pub fn is_full(&self) -> bool {
        matches!(self, CommitError::Spool(e) if e.is_full())
    }
}

/// The answer to one request, once its batch is durable (or failed): `.wait()` from a plain
/// thread, `.await` from async code.
pub struct Ticket<T>(oneshot::Receiver<Result<T, CommitError>>);

impl<T> Ticket<T> {
    /// Blocks until the batch is durable. Not from within an async runtime (`.await` there).
    pub fn wait(self) -> Result<T, CommitError> {
        self.0.blocking_recv().unwrap_or(Err(CommitError::Stopped))
    }
}

impl<T> Ticket<T> {
    /// The answer if it has come, without waiting.
    pub fn try_take(&mut self) -> Option<Result<T, CommitError>> {
        match self.0.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(CommitError::Stopped)),
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T, CommitError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(CommitError::Stopped)))
    }
}

enum Request {
    /// Messages accepted together (one HTTP request's): durable in one batch, or none.
    Accept(Group, oneshot::Sender<Result<Admission, CommitError>>),
    /// Recipients' new states, the log's records for webhooks, the log length they bring the
    /// spool to, and the failures to report to senders (see [`super::dsn`]).
    Record(Recorded, oneshot::Sender<Result<(), CommitError>>),
    /// A webhook's events it has: forgotten.
    Forget(u64, Vec<u64>),
    /// The status entries of messages gone and received before then: forgotten.
    ForgetStatuses(u64),
    /// A setting's new value, durable before the answer.
    Setting(String, Vec<u8>, oneshot::Sender<Result<(), CommitError>>),
    /// Finish what came before, then end: intake may still hold the writer, so dropping every
    /// sender cannot be what stops it.
    Stop,
}

impl Request {
    fn octets(&self) -> usize {
        match self {
            Request::Accept(g, _) => g.messages.iter().map(|m| m.content.len()).sum(),
            _ => 0,
        }
    }

    fn messages(&self) -> usize {
        match self {
            Request::Accept(g, _) => g.messages.len(),
            _ => 0,
        }
    }
}

/// What the log thread hands the spool after a commit of the log.
#[derive(Debug, Default)]
pub struct Recorded {
    pub changes: Vec<Change>,
    pub from_log: FromLog,
    pub watermark: Option<u64>,
    pub failures: Vec<Failure>,
}

/// A recipient of a message in the spool that bounced or expired.
pub type Failure = (MessageId, Box<Failed>);

/// Delivery status notifications: made by the writer (which holds the failed messages) and
/// handed to delivery as any accepted message is.
pub struct Notify {
    /// This host's name, in the reports.
    pub hostname: String,
    pub arrivals: SyncSender<Arrival>,
}

/// What the writer has made durable: for the report and metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    pub changes: AtomicU64,
    /// Set once a write left the store unusable (see [`SpoolError::breaks_store`]): why.
    pub broken: std::sync::OnceLock<String>,
}

impl CommitStats {
    /// A write failed: noted if it broke the store; the error every request in it hears.
    fn failed(&self, e: SpoolError) -> CommitError {
        if e.breaks_store() {
            let _ = self.broken.set(e.to_string());
        }
        CommitError::Spool(Arc::new(e))
    }
}

pub struct Committer {
    requests: SyncSender<Request>,
    thread: std::sync::Mutex<Option<JoinHandle<Box<dyn Spool>>>>,
    stats: Arc<CommitStats>,
}

impl Committer {
    /// Starts the writer thread, which owns `spool` until [`Committer::stop`]; with `notify`,
    /// it reports failures to senders; with `recorded`, it sends each batch of recipients'
    /// states once the spool holds it.
    pub fn start(
        spool: Box<dyn Spool>,
        notify: Option<Notify>,
        recorded: Option<mpsc::Sender<Vec<Change>>>,
    ) -> std::io::Result<Committer> {
        let (requests, incoming) = mpsc::sync_channel(QUEUED);
        let stats = Arc::new(CommitStats::default());
        let shared = Arc::clone(&stats);
        let thread = std::thread::Builder::new().name("spool".into()).spawn(move || {
            let mut spool = spool;
            let mut gather = Gather::default();
            while let Some(batch) = gather.next(&incoming, BATCH_MESSAGES, BATCH_OCTETS) {
                if commit(&mut *spool, batch, &shared, notify.as_ref(), recorded.as_ref()) == Go::Stop {
                    break;
                }
            }
            spool
        })?;
        Ok(Committer { requests, thread: std::sync::Mutex::new(Some(thread)), stats })
    }

    /// Queues messages accepted together; the ticket says what became of them once they are
    /// durable (they go into one batch: all or none; see [`Spool::admit`]). Waits while the
    /// writer's queue is full.
    pub fn admit(&self, group: Group) -> Ticket<Admission> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Accept(group, tx));
        Ticket(rx)
    }

    /// Queues messages without an Idempotency-Key; the ticket gives their ids, in order.
    pub fn accept(&self, messages: Vec<Accepted>) -> Ticket<Admission> {
        self.admit(Group { messages, idempotency: None })
    }

    /// Queues recipients' new states, and the log length they bring the spool up to (see
    /// [`Spool::record`]), with the failures among them to report; the ticket says when they
    /// are durable.
    pub fn record(&self, changes: Vec<Change>, watermark: Option<u64>, failures: Vec<Failure>) -> Ticket<()> {
        self.record_all(Recorded { changes, from_log: FromLog::default(), watermark, failures })
    }

    /// [`Committer::record`], with the log's records to queue for webhooks in the same batch.
    pub fn record_all(&self, recorded: Recorded) -> Ticket<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Record(recorded, tx));
        Ticket(rx)
    }

    /// Forgets the status entries of the messages received before `cutoff_ms` that have left
    /// the spool (see [`Spool::forget_statuses`]).
    pub fn forget_statuses(&self, cutoff_ms: u64) {
        self.send(Request::ForgetStatuses(cutoff_ms));
    }

    /// Forgets a webhook's events it has (see [`Spool::forget_events`]); a failure is the
    /// writer's to say, and costs at most their being sent again.
    pub fn forget_events(&self, webhook: u64, offsets: Vec<u64>) {
        self.send(Request::Forget(webhook, offsets));
    }

    /// Sets a setting of the spool's (see [`Spool::set_setting`]); the ticket says when it is
    /// durable.
    pub fn set_setting(&self, name: &str, value: Vec<u8>) -> Ticket<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Setting(name.to_owned(), value, tx));
        Ticket(rx)
    }

    fn send(&self, request: Request) {
        // A writer that is gone drops the request's sender, and the ticket says `Stopped`.
        let _ = self.requests.send(request);
    }

    /// Whether the writer thread is still there (it ends only at [`Committer::stop`], or by a
    /// panic).
    pub fn is_running(&self) -> bool {
        self.thread.lock().is_ok_and(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Why the store can no longer be written by this process, if a write broke it.
    pub fn broken(&self) -> Option<&str> {
        self.stats.broken.get().map(String::as_str)
    }

    pub fn stats(&self) -> &Arc<CommitStats> {
        &self.stats
    }

    /// Lets the writer finish what is queued, and gives the spool back (once: `None` after,
    /// or if the writer panicked). What is queued later is answered `Stopped`.
    pub fn stop(&self) -> Option<Box<dyn Spool>> {
        let thread = self.thread.lock().ok()?.take()?;
        self.send(Request::Stop);
        thread.join().ok()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether the writer goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    On,
    Stop,
}

/// How the writer gathers a batch: every request already queued, and, when the last batch
/// showed that requests come concurrently, those that keep coming for a moment longer.
///
/// A sync costs the same for one message as for a hundred (on this machine's virtual disk
/// ~1 ms, and a sixth of a core at a thousand a second), so a writer that syncs as soon as it
/// has anything syncs small batches over and over while the rest of the service waits for
/// the CPU. Lingering while requests still arrive (sleeping [`GAP`] at a time for as long as
/// each sleep brings more, [`LINGER`] at most) makes the batches as large as the concurrency
/// allows; a lone client (a last batch with one request of intake's) never waits.
#[derive(Debug)]
struct Gather {
    /// Intake's requests (messages to admit) in the last batch.
    last: usize,
    gap: Duration,
    linger: Duration,
}

impl Default for Gather {
    fn default() -> Gather {
        Gather { last: 0, gap: GAP, linger: LINGER }
    }
}

/// How long the writer sleeps before it looks for more of a burst: a sleep that brings none
/// ends it.
const GAP: Duration = Duration::from_micros(150);
/// The longest a batch is held open for more.
const LINGER: Duration = Duration::from_millis(1);

impl Gather {
    /// The next batch: waits for one request, then takes every one already queued (and, see
    /// the type, those still coming), up to `max_messages` messages and `max_octets` of
    /// content (at least one request). `None` once every sender is gone and nothing is left.
    fn next(
        &mut self,
        incoming: &Receiver<Request>,
        max_messages: usize,
        max_octets: usize,
    ) -> Option<Vec<Request>> {
        let first = incoming.recv().ok()?;
        let linger_until = (self.last > 1).then(|| Instant::now() + self.linger);
        let mut octets = first.octets();
        let mut messages = first.messages();
        let mut batch = vec![first];
        let full = |messages: usize, octets: usize| messages >= max_messages || octets >= max_octets;
        let mut slept = false;
        loop {
            let before = batch.len();
            while !full(messages, octets)
                && let Ok(next) = incoming.try_recv()
            {
                octets += next.octets();
                messages += next.messages();
                batch.push(next);
            }
            // Lingering sleeps a gap at a time and then takes what came, rather than waiting
            // on the queue: a writer blocked on it is woken by every request, two context
            // switches each on a core intake shares, for nothing, since the batch is not
            // written before the burst ends anyway.
            let Some(until) = linger_until else { break };
            let left = until.saturating_duration_since(Instant::now());
            if full(messages, octets) || left.is_zero() || (slept && batch.len() == before) {
                break;
            }
            std::thread::sleep(left.min(self.gap));
            slept = true;
        }
        // Only intake's requests say whether clients come concurrently: the log's records of
        // states, in the same queue, would make a lone client's next request wait.
        self.last = batch.iter().filter(|r| matches!(r, Request::Accept(..))).count();
        Some(batch)
    }
}

/// Writes a batch: the messages in one durable commit, the state changes in another, and
/// answers every request. A commit fails as a whole, and every request in it hears so.
fn commit(
    spool: &mut dyn Spool,
    batch: Vec<Request>,
    stats: &CommitStats,
    notify: Option<&Notify>,
    recorded_to: Option<&mpsc::Sender<Vec<Change>>>,
) -> Go {
    let mut go = Go::On;
    let mut groups = Vec::new();
    let mut accepted = Vec::new();
    let mut changes = Vec::new();
    let mut from_log = FromLog::default();
    let mut forgotten: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut statuses_before: Option<u64> = None;
    let mut watermark: Option<u64> = None;
    let mut recorded = Vec::new();
    let mut failures = Vec::new();
    for request in batch {
        match request {
            Request::Accept(group, reply) => {
                groups.push(group);
                accepted.push(reply);
            }
            Request::Record(r, reply) => {
                changes.extend(r.changes);
                from_log.events.extend(r.from_log.events);
                from_log.statuses.extend(r.from_log.statuses);
                failures.extend(r.failures);
                watermark = watermark.max(r.watermark);
                recorded.push(reply);
            }
            Request::Forget(webhook, offsets) => forgotten.push((webhook, offsets)),
            Request::ForgetStatuses(cutoff) => statuses_before = statuses_before.max(Some(cutoff)),
            // Rare (an operator's command): written at once, in its own commit.
            Request::Setting(name, value, reply) => {
                let _ = reply.send(spool.set_setting(&name, &value).map_err(|e| stats.failed(e)));
            }
            // What came in the same batch is still written; what comes later hears `Stopped`.
            Request::Stop => go = Go::Stop,
        }
    }
    if !groups.is_empty() {
        match spool.admit(&groups, now_ms()) {
            Ok(admissions) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                for (admission, reply) in admissions.into_iter().zip(accepted) {
                    if let Admission::New(ids) = &admission {
                        stats.messages.fetch_add(ids.len() as u64, Ordering::Relaxed);
                    }
                    let _ = reply.send(Ok(admission));
                }
            }
            Err(e) => {
                let e = stats.failed(e);
                for reply in accepted {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    if let Some(notify) = notify
        && !failures.is_empty()
    {
        // Before the batch that may let the failed messages go: a stop in between costs a
        // report only if this batch fails too, and never makes one twice (a restart catches
        // up from the log, not through here).
        report_failures(spool, &failures, notify);
    }
    if !recorded.is_empty() {
        let result = spool.record(&changes, &from_log, watermark).map_err(|e| stats.failed(e));
        if result.is_ok() {
            stats.changes.fetch_add(changes.len() as u64, Ordering::Relaxed);
            if let Some(to) = recorded_to
                && !changes.is_empty()
            {
                // Delivery gone (stopping): nobody needs to know.
                let _ = to.send(changes);
            }
        }
        for reply in recorded {
            let _ = reply.send(result.clone());
        }
    }
    if let Some(cutoff) = statuses_before
        && let Err(e) = spool.forget_statuses(cutoff)
    {
        eprintln!("volley serve: forgetting old status entries failed ({e}); tried again later");
        stats.failed(e);
    }
    for (webhook, offsets) in forgotten {
        if let Err(e) = spool.forget_events(webhook, &offsets) {
            eprintln!(
                "volley serve: forgetting {} delivered webhook events failed ({e}); they may be sent again",
                offsets.len()
            );
            stats.failed(e);
        }
    }
    go
}

/// Makes and spools the reports for `failures`, one per message, and hands them to delivery.
fn report_failures(spool: &mut dyn Spool, failures: &[Failure], notify: &Notify) {
    let now = now_ms();
    let mut reports = Vec::new();
    let mut sorted: Vec<&Failure> = failures.iter().collect();
    sorted.sort_by_key(|(id, _)| *id);
    for group in sorted.chunk_by(|a, b| a.0 == b.0) {
        let failed: Vec<&Failed> = group.iter().map(|(_, f)| &**f).collect();
        match spool.message(group[0].0) {
            Ok(Some(message)) => reports.extend(dsn::report(&message, &failed, &notify.hostname, now)),
            Ok(None) => {}
            Err(e) => eprintln!("volley serve: no delivery report for message {}: {e}", group[0].0.0),
        }
    }
    if reports.is_empty() {
        return;
    }
    let group = Group { messages: reports.clone(), idempotency: None };
    match spool.admit(std::slice::from_ref(&group), now) {
        Ok(admitted) => {
            if let Some(Admission::New(ids)) = admitted.into_iter().next() {
                let accepted_at = Instant::now();
                for (id, message) in ids.into_iter().zip(reports) {
                    let _ = notify.arrivals.send(Arrival { id, message, idempotency_key: None, accepted_at });
                }
            }
        }
        Err(e) => eprintln!("volley serve: {} delivery reports could not be spooled: {e}", reports.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Address;
    use crate::serve::spool::{self, Status};

    fn message(n: usize, size: usize) -> Accepted {
        Accepted {
            sender: None,
            recipients: vec![Address::new(&format!("r{n}@x.test")).unwrap()],
            content: vec![b'x'; size].into(),
            received_ms: n as u64,
            origin: "test".into(),
        }
    }

    fn group(messages: Vec<Accepted>) -> Group {
        Group { messages, idempotency: None }
    }

    fn new_ids(admission: Admission) -> Vec<MessageId> {
        match admission {
            Admission::New(ids) => ids,
            Admission::Replay(_) => panic!("no key, no replay"),
        }
    }

    #[test]
    fn a_batch_takes_what_is_queued_up_to_its_bounds() {
        let (tx, rx) = mpsc::sync_channel(100);
        for n in 0..10 {
            tx.send(Request::Accept(group(vec![message(n, 100)]), oneshot::channel().0)).unwrap();
        }
        tx.send(Request::Record(Recorded::default(), oneshot::channel().0)).unwrap();
        let mut gather = Gather::default();
        let lens: Vec<usize> =
            std::iter::from_fn(|| gather.next(&rx, 4, usize::MAX).map(|b| b.len())).take(3).collect();
        assert_eq!(lens, [4, 4, 3], "four messages a batch; a state change does not count as one");
        for n in 0..3 {
            tx.send(Request::Accept(group(vec![message(n, 1000)]), oneshot::channel().0)).unwrap();
        }
        assert_eq!(gather.next(&rx, 100, 1500).map(|b| b.len()), Some(2), "octets bound it too");
        assert_eq!(gather.next(&rx, 100, 1500).map(|b| b.len()), Some(1));
        drop(tx);
        assert!(gather.next(&rx, 100, 1500).is_none(), "senders gone: the writer ends");
    }

    #[test]
    fn a_batch_waits_for_more_only_after_a_batch_of_several() {
        // Generous bounds (requests 20 ms apart, a gap of 500 ms), so that only a stalled
        // machine could make this fail.
        let mut gather = Gather { last: 1, gap: Duration::from_millis(500), linger: Duration::from_secs(4) };
        let (tx, rx) = mpsc::sync_channel(100);
        let send_two_later = |tx: SyncSender<Request>| {
            tx.send(Request::Accept(group(vec![message(0, 10)]), oneshot::channel().0)).unwrap();
            std::thread::spawn(move || {
                for n in 1..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    tx.send(Request::Accept(group(vec![message(n, 10)]), oneshot::channel().0)).unwrap();
                }
            })
        };
        // A lone client's request is written at once.
        let later = send_two_later(tx.clone());
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(1));
        later.join().unwrap();
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(2));
        // After a batch of two, requests that keep coming join the batch.
        let later = send_two_later(tx.clone());
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(3));
        later.join().unwrap();
        // And the linger is bounded: one more arriving after it is the next batch's.
        gather.linger = Duration::from_millis(30);
        let later = send_two_later(tx.clone());
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(2));
        later.join().unwrap();
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(1));
        // The log's records in a batch do not count as clients: one request of intake's and
        // a record, then a lone client's request is written at once again.
        gather.linger = Duration::from_secs(4);
        tx.send(Request::Record(Recorded::default(), oneshot::channel().0)).unwrap();
        tx.send(Request::Accept(group(vec![message(9, 10)]), oneshot::channel().0)).unwrap();
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(2));
        let later = send_two_later(tx);
        assert_eq!(gather.next(&rx, 100, usize::MAX).map(|b| b.len()), Some(1));
        later.join().unwrap();
    }

    #[test]
    fn concurrent_intake_shares_syncs_and_every_message_is_durable_once() {
        let dir = std::env::temp_dir().join(format!("volley-commit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let committer = Arc::new(Committer::start(spool::open(&dir).unwrap(), None, None).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = Arc::clone(&committer);
                std::thread::spawn(move || {
                    (0..25)
                        .flat_map(|i| new_ids(c.accept(vec![message(t * 100 + i, 500)]).wait().unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<MessageId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100, "one id each");
        let first = ids[0];
        committer
            .record(vec![Change { message: first, index: 0, status: Status::Final }], Some(10), Vec::new())
            .wait()
            .unwrap();
        let mut too_big = message(0, 10);
        too_big.recipients = vec![too_big.recipients[0].clone(); crate::serve::spool::MAX_RECIPIENTS + 1];
        let err = committer.accept(vec![message(1, 10), too_big]).wait().unwrap_err();
        assert!(
            matches!(&err, CommitError::Spool(e) if matches!(**e, SpoolError::TooManyRecipients(_))),
            "{err}"
        );
        let stats = committer.stats();
        assert_eq!(
            stats.messages.load(Ordering::Relaxed),
            100,
            "a group with a bad message is refused whole"
        );
        let pair = new_ids(committer.accept(vec![message(1, 10), message(2, 10)]).wait().unwrap());
        assert_eq!(pair.len(), 2);
        assert_eq!(pair[1].0, pair[0].0 + 1, "a group's ids, in order");
        assert!(stats.batches.load(Ordering::Relaxed) <= 100);
        let spool = Arc::try_unwrap(committer).ok().unwrap().stop().unwrap();
        drop(spool);
        let spool = spool::open(&dir).unwrap();
        let waiting = spool.waiting().unwrap();
        assert_eq!(waiting.len(), 101, "all durable; the final one left");
        assert!(waiting.iter().all(|r| r.message != first));
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stopped_writer_says_so() {
        let (tx, rx) = oneshot::channel::<Result<(), CommitError>>();
        drop(tx);
        assert!(matches!(Ticket(rx).wait(), Err(CommitError::Stopped)));
    }
}
