//! The log thread: the one place outcomes become records. It drains the cores' outcome queues
//! and the source's reports, decides retry or expiry for deferrals, keeps the per-domain
//! books, and writes the delivery log with group commit. The cores never wait on the disk; if
//! this thread falls behind, their bounded queues fill and they stop taking new jobs.
//!
//! If the log cannot be written (a full disk, a file size limit), the run must stop: the
//! failure is raised for the main thread, which stops sending, and every record that could not
//! be written goes to stderr instead, so nothing a server accepted goes unrecorded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;

use super::books::DomainBooks;
pub use super::books::{DomainSummary, MAX_DOMAIN_BOOKS, Tally, fmt_ms};
use super::bounce::{Category, Classifier, Failure};
use super::log::{Clock, Committed, LogFile, Record, Status};
use super::pending::Pending;
use crate::engine::{
    AdaptiveWait, Deferral, Origin, Outcome, Payload, Progress, RetryPolicy, ShapingEvent, Verdict, Via,
};
use crate::metrics::delivery::DeliveryMeter;
use crate::proto::client::Disposition;
use crate::proto::{Address, Reply};
use crate::rng::Rng;

/// How often live progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Outcomes recorded per reading of the clock.
const CLOCK_EVERY: usize = 64;

/// The least time between two commits made early because every recipient is final (see
/// [`Ledger::sync_when_all_final`]): a node starved of rows, every message final as soon as
/// sent, makes at most 200 a second.
const SYNC_ALL_FINAL_MIN: Duration = Duration::from_millis(5);
/// The log thread's wait when it finds nothing to do: short while outcomes come fast, longer
/// while they trickle (a sender held back by DKIM signing), a quarter of an outcome queue per
/// wake either way. The engine wakes it at the end, so no run waits this long to finish.
const IDLE_WAIT_MIN: Duration = Duration::from_millis(1);
const IDLE_WAIT_MAX: Duration = Duration::from_millis(32);

/// Failures of one category: final ones (bounced, expired) and deferred attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CategoryTally {
    pub bounced: u64,
    pub expired: u64,
    pub deferred: u64,
}

/// What shaping reactions did to one destination, by rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShapingSummary {
    pub destination: String,
    pub rule: String,
    /// What the rule did (`suspended`, `slowed to 1/min, 1 connection`).
    pub action: String,
    /// How many times it began (a match while it held only extended it).
    pub times: u64,
    pub first: String,
    /// The end of the last one.
    pub until: String,
    /// The reply that began the last one.
    pub reply: String,
}

/// The ledger's account of the run.
#[derive(Debug, Clone, Default)]
pub struct Books {
    pub tally: Tally,
    /// Destinations suspended or slowed, in the order it first happened.
    pub shaping: Vec<ShapingSummary>,
    /// Failures by category (see [`crate::deliver::bounce`]).
    pub categories: BTreeMap<Category, CategoryTally>,
    pub domains: Vec<DomainSummary>,
    /// The domains folded out of `domains` (past the [`MAX_DOMAIN_BOOKS`] busiest), together.
    pub other_domains: Option<Tally>,
    /// Records that could not be written to the log (they went to stderr).
    pub unrecorded: u64,
    pub log_error: Option<String>,
}

pub struct Ledger {
    log: LogFile,
    outcomes: Vec<Arc<ArrayQueue<Outcome>>>,
    events: Arc<ArrayQueue<ShapingEvent>>,
    shaping: Vec<ShapingSummary>,
    reports: Receiver<Report>,
    retries: Sender<(Instant, Pending)>,
    flow: Arc<Flow>,
    retry: RetryPolicy,
    rng: Rng,
    tally: Tally,
    classifier: Arc<Classifier>,
    categories: BTreeMap<Category, CategoryTally>,
    domains: DomainBooks,
    clock: Clock,
    log_error: Option<String>,
    unrecorded: u64,
    started: Instant,
    progress: bool,
    /// The engine's producer, woken when every admitted recipient has its final record: the
    /// source may be done, and the run's end should not wait out the producer's idle poll.
    producer: Option<std::thread::Thread>,
    /// Commit as soon as every admitted recipient has its final record (see
    /// [`Ledger::sync_when_all_final`]).
    sync_when_all_final: bool,
    /// The cores' counters: how many recipients are in a session right now.
    engine: Vec<Arc<Progress>>,
    /// Told what became of recipients once their records are durable (see
    /// [`Ledger::on_durable`]), with those not yet durable.
    on_durable: Option<OnDurable>,
    settled: Vec<Settled>,
    /// The log's counts for metrics, published after each sync.
    meter: Option<DeliveryMeter>,
    /// Told of every reaction the engine applied (a shared campaign tells the other nodes).
    on_shaping: Option<OnShaping>,
}

/// Called on the log thread with each destination suspended or slowed.
pub type OnShaping = Box<dyn FnMut(&ShapingEvent) + Send>;

/// What became of a recipient, for a source that keeps its own state (serve's spool): told
/// only once the record saying so is durable in the log, so the state never runs ahead of the
/// log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Its final record is written, with this status; `failed` when it bounced or expired.
    Final { id: u64, status: Status, rcpt: Option<Arc<str>>, failed: Option<Box<Failed>> },
    /// Deferred: attempts so far, and when it is to be tried again.
    Retry { id: u64, attempts: u32, at: Instant },
}

/// A recipient that will not get its message (bounced or expired): what a delivery status
/// notification (RFC 3464) says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub rcpt: Arc<str>,
    /// Expired (still deferred when its time ran out) rather than bounced.
    pub expired: bool,
    pub code: Option<u16>,
    pub enhanced: Option<crate::proto::EnhancedCode>,
    /// The server's reply, or what went wrong without one.
    pub text: String,
    /// The host that answered, if one did.
    pub mx: Option<Arc<str>>,
}

/// What a commit of the log made durable.
#[derive(Debug, Default)]
pub struct Durable {
    /// What became of recipients.
    pub settled: Vec<Settled>,
    /// The log's length up to that commit ([`LogFile::durable_len`]).
    pub len: u64,
    /// The records themselves, when kept ([`Ledger::keep_records`]).
    pub records: Committed,
}

/// Called on the log thread with what the last commit of the log made durable.
pub type OnDurable = Box<dyn FnMut(Durable) + Send>;

/// The recipients a job source and the ledger account for together: every one handed in
/// ends in exactly one final record, and the run is over when the counts meet.
#[derive(Debug, Default)]
pub struct Flow {
    /// Recipients the source has taken on (a campaign's rows not skipped by `--resume`).
    pub admitted: AtomicU64,
    /// Recipients with a final record: counted by the ledger.
    pub finalized: AtomicU64,
    /// Recipients waiting for a retry or for DNS: published by the source.
    pub waiting: AtomicU64,
    /// Recipients the source holds in memory, under way or waiting (serve's spool holds the
    /// rest): published by the source.
    pub held: AtomicU64,
}

impl Flow {
    /// Every recipient taken on so far has its final record.
    pub fn all_final(&self) -> bool {
        self.finalized.load(Ordering::Acquire) == self.admitted.load(Ordering::Acquire)
    }
}

/// What a job source tells the ledger about a recipient it did not hand to the engine. The
/// ledger makes its record, and decides a deferral's retry, as for the engine's outcomes.
#[derive(Debug)]
pub enum Report {
    /// Never sent: its input was refused (malformed, a duplicate) or it is suppressed.
    Unsent { id: u64, rcpt: Option<Arc<str>>, why: Unsent, reason: String },
    /// Routing failed `at`: deferred (DNS may answer later; or the domain's MTA-STS policy
    /// lists none of its MX hosts) or bounced (the domain takes no mail). An attempt, counted
    /// as one.
    Unroutable { pending: Pending, disposition: Disposition, reason: String, category: Category, at: Instant },
    /// A message was accepted for delivery: its `received` record (see [`Received`]).
    Received(Box<Received>),
    /// Taken out of the queue by an operator, unattempted this time: `Bounced` (`volley queue
    /// bounce`) or `Expired` (its destination stayed suspended past its maximum age). Its
    /// final record, category `admin`.
    Withdrawn { pending: Pending, status: Withdrawal, reason: String, at: Instant },
}

/// How an operator's action ended a recipient (see [`Report::Withdrawn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    Bounced,
    Expired,
}

/// What a `received` record says of an accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    pub message: u64,
    /// The envelope sender; empty for the null sender.
    pub sender: Arc<str>,
    pub recipients: u64,
    pub origin: Arc<str>,
    pub idempotency_key: Option<Arc<str>>,
    pub size: usize,
    /// When it was accepted.
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    Rejected,
    Suppressed,
}

/// One attempt's result, from the engine or from routing: what every attempt's record is built
/// from, in one place ([`Ledger::attempt`]).
struct Attempt {
    id: u64,
    rcpt: Address,
    disposition: Disposition,
    /// Attempts made, this one included.
    attempts: u32,
    born: Instant,
    /// When it was decided.
    at: Instant,
    reply: Option<Reply>,
    reason: Option<String>,
    /// Set when the reply (if any) is not what to classify: a suspension, a local refusal,
    /// DNS.
    category: Option<Category>,
    /// Not to be retried before this.
    not_before: Option<Instant>,
    via: Option<Via>,
    size: Option<usize>,
    /// For a deferral: the message to retry with.
    retry: Option<Payload>,
}

/// Signals between the main thread and the ledger.
#[derive(Debug, Default)]
pub struct Control {
    /// Set by the main thread once the engine has finished: drain and stop.
    pub engine_done: AtomicBool,
    /// Set by the ledger when the log cannot be written: stop sending.
    pub log_failed: AtomicBool,
}

/// What a ledger reads, writes and decides with.
pub struct LedgerConfig {
    pub log: LogFile,
    /// The cores' outcome queues and the engine's shaping events.
    pub outcomes: Vec<Arc<ArrayQueue<Outcome>>>,
    pub events: Arc<ArrayQueue<ShapingEvent>>,
    /// What the source decided without the engine (rejected, suppressed, unroutable).
    pub reports: Receiver<Report>,
    /// Where deferred recipients go back to the source, with when to retry.
    pub retries: Sender<(Instant, Pending)>,
    /// Counted with the job source: recipients handed in, final, waiting.
    pub flow: Arc<Flow>,
    /// How deferrals are retried (scheduled, for a campaign).
    pub retry: RetryPolicy,
    /// Shared with whoever may replace its rules (serve's SIGHUP).
    pub classifier: Arc<Classifier>,
    /// Print live progress on stderr.
    pub progress: bool,
}

impl Ledger {
    pub fn new(config: LedgerConfig) -> Ledger {
        let LedgerConfig { log, outcomes, events, reports, retries, flow, retry, classifier, progress } =
            config;
        Ledger {
            log,
            outcomes,
            events,
            shaping: Vec::new(),
            reports,
            retries,
            flow,
            retry,
            rng: Rng::new(0x1ed9e7 ^ u64::from(std::process::id())),
            tally: Tally::default(),
            classifier,
            categories: BTreeMap::new(),
            domains: DomainBooks::default(),
            clock: Clock::default(),
            log_error: None,
            unrecorded: 0,
            started: Instant::now(),
            progress,
            producer: None,
            sync_when_all_final: false,
            engine: Vec::new(),
            on_durable: None,
            settled: Vec::new(),
            meter: None,
            on_shaping: None,
        }
    }

    /// Counts every record in `meter`, which scrapes see as of the last sync of the log.
    pub fn with_metrics(mut self, meter: DeliveryMeter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Calls `hook` after each commit of the log with the recipients it settled (see
    /// [`Settled`]).
    pub fn on_durable(mut self, hook: OnDurable) -> Self {
        self.on_durable = Some(hook);
        self
    }

    /// Calls `hook` with each reaction the engine applies (see [`OnShaping`]).
    pub fn on_shaping(mut self, hook: OnShaping) -> Self {
        self.on_shaping = Some(hook);
        self
    }

    /// Hands [`Ledger::on_durable`]'s hook the records each commit made durable too (serve's
    /// webhooks), after every commit that has some.
    pub fn keep_records(mut self) -> Self {
        self.log.keep_committed();
        self
    }

    /// Reads the cores' counters for the progress line (how many recipients are being sent).
    pub fn show_sessions(mut self, engine: Vec<Arc<Progress>>) -> Self {
        self.engine = engine;
        self
    }

    /// Wakes `producer` whenever every admitted recipient has its final record.
    pub fn wake_when_all_final(mut self, producer: Option<std::thread::Thread>) -> Self {
        self.producer = producer;
        self
    }

    /// Commits the log as soon as every admitted recipient has its final record, not at the
    /// next group commit (at most every [`SYNC_ALL_FINAL_MIN`]): for a source whose end waits
    /// on its last records being durable. A shared campaign's rows are acknowledged only then,
    /// and its end is known only when all are; waiting for the group commit (up to
    /// `log::SYNC_EVERY`, 50 ms) made each node's run that much longer, where a run from a file
    /// ends with its source and commits at once.
    pub fn sync_when_all_final(mut self) -> Self {
        self.sync_when_all_final = true;
        self
    }

    pub fn spawn(self, control: Arc<Control>) -> std::io::Result<JoinHandle<Books>> {
        std::thread::Builder::new().name("log".into()).spawn(move || self.run(&control))
    }

    fn run(mut self, control: &Control) -> Books {
        let mut last_progress = Instant::now();
        let queue = self.outcomes.first().map_or(1, |q| q.capacity());
        let mut pace = AdaptiveWait::new(IDLE_WAIT_MIN, IDLE_WAIT_MAX, queue / 4);
        loop {
            // Read the flag before draining: whatever the engine produced before it finished
            // is then in the queues for this last round.
            let engine_done = control.engine_done.load(Ordering::Acquire);
            let mut got = 0usize;
            // Shaping events first: a suspension's record comes before the deferrals it caused.
            while let Some(event) = self.events.pop() {
                self.shaping_event(event);
                got += 1;
            }
            for q in 0..self.outcomes.len() {
                // The clock is read once per few outcomes, not per outcome: a record's time
                // has millisecond resolution, and 64 outcomes take well under a millisecond.
                let mut when = self.when();
                while let Some(o) = self.outcomes[q].pop() {
                    if got % CLOCK_EVERY == CLOCK_EVERY - 1 {
                        when = self.when();
                    }
                    self.outcome(o, &when);
                    got += 1;
                }
            }
            let when = self.when();
            while let Ok(report) = self.reports.try_recv() {
                self.report(report, &when);
                got += 1;
            }
            if self.log_error.is_none() && (self.commit_due() || (engine_done && got == 0)) {
                match self.log.sync() {
                    Ok(()) => {
                        self.settle();
                        if let Some(meter) = &mut self.meter {
                            meter.publish(Instant::now(), &self.categories);
                        }
                    }
                    Err(e) => {
                        self.fail(&e.error);
                        self.unrecorded_lines(&e.records);
                    }
                }
            }
            if self.log_error.is_some() {
                control.log_failed.store(true, Ordering::Release);
            }
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                // Ranking domains takes a percentile of each one's histogram: only when shown.
                if self.progress {
                    self.print_progress(&self.domains.slowest(3));
                }
            }
            if engine_done && got == 0 {
                break;
            }
            pace.done(got);
            if got > 0
                && let Some(producer) = &self.producer
                && self.flow.all_final()
            {
                producer.unpark();
            }
            if got == 0 {
                let mut wait = pace.next_wait();
                for due in [self.log.sync_wait(), self.early_commit_in()].into_iter().flatten() {
                    wait = wait.min(due);
                }
                std::thread::park_timeout(wait);
            }
        }
        self.books()
    }

    /// Whether to commit the log now: the group commit is due, or (see
    /// [`Ledger::sync_when_all_final`]) every admitted recipient is final.
    fn commit_due(&self) -> bool {
        self.log.sync_due() || self.early_commit_in() == Some(Duration::ZERO)
    }

    /// How long until the commit [`Ledger::sync_when_all_final`] asks for is due (zero: now),
    /// if it is asked for, records wait, and every admitted recipient is final.
    fn early_commit_in(&self) -> Option<Duration> {
        let since = self.log.unsynced_for().filter(|_| self.sync_when_all_final && self.flow.all_final())?;
        Some(SYNC_ALL_FINAL_MIN.saturating_sub(since))
    }

    /// Now, as a monotonic instant and as wall-clock time.
    fn when(&mut self) -> (Instant, SystemTime) {
        (Instant::now(), SystemTime::now())
    }

    /// A record's time stamp for something decided `at` (see [`Ledger::when`]): stamped when
    /// decided, not when written, since a session may hold an outcome until a checkpoint and
    /// the record's time must agree with its `queue_ms`.
    fn stamp(&mut self, at: Instant, &(now, wall): &(Instant, SystemTime)) -> Arc<str> {
        self.clock.at(wall.checked_sub(now.saturating_duration_since(at)).unwrap_or(wall))
    }

    fn outcome(&mut self, o: Outcome, when: &(Instant, SystemTime)) {
        if o.origin == Origin::Unsendable {
            // Its template refused the row (on the core that was to send it): nothing was sent.
            let stamp = self.stamp(o.at, when);
            let reason = o.error.unwrap_or_default();
            return self.unsent(o.id, Some(o.recipient.shared()), Unsent::Rejected, reason, stamp);
        }
        let category = match &o.origin {
            // Held back by a shaping reaction: that is the reason, not the connection.
            Origin::Suspended { .. } => Some(Category::RateLimited),
            // Refused before sending (no reply to classify): the reason is the server's lack.
            Origin::LocalRefusal(refusal) => Some(super::bounce::of_local(refusal)),
            Origin::Attempt | Origin::Unsendable => None,
        };
        let not_before = match o.origin {
            Origin::Suspended { until } => Some(until),
            _ => None,
        };
        let attempt = Attempt {
            id: o.id,
            rcpt: o.recipient,
            disposition: o.disposition,
            attempts: o.attempts,
            born: o.due,
            at: o.at,
            reply: o.reply,
            reason: o.error,
            category,
            not_before,
            via: o.via,
            size: o.size,
            retry: o.retry,
        };
        self.attempt(attempt, when);
    }

    /// What the job source decided about a recipient without the engine.
    fn report(&mut self, report: Report, when: &(Instant, SystemTime)) {
        match report {
            Report::Unsent { id, rcpt, why, reason } => {
                let stamp = self.stamp(when.0, when);
                self.unsent(id, rcpt, why, reason, stamp);
            }
            Report::Received(m) => {
                let mut r = Record::at(Status::Received, 0, self.stamp(m.at, when));
                r.message = Some(m.message);
                r.sender = Some(m.sender);
                r.recipients = Some(m.recipients);
                r.origin = Some(m.origin);
                r.idempotency_key = m.idempotency_key;
                r.size = Some(m.size);
                self.write(r);
            }
            Report::Unroutable { pending: p, disposition, reason, category, at } => {
                let retry = (disposition == Disposition::Deferred).then_some(p.message);
                let attempt = Attempt {
                    id: p.id,
                    rcpt: p.rcpt,
                    disposition,
                    attempts: p.attempts + 1,
                    born: p.born,
                    at,
                    reply: None,
                    reason: Some(reason),
                    category: Some(category),
                    not_before: None,
                    via: None,
                    size: None,
                    retry,
                };
                self.attempt(attempt, when);
            }
            Report::Withdrawn { pending: p, status, reason, at } => {
                let status = match status {
                    Withdrawal::Bounced => Status::Bounced,
                    Withdrawal::Expired => Status::Expired,
                };
                let mut r = Record::at(status, p.id, self.stamp(at, when));
                r.rcpt = Some(p.rcpt.shared());
                r.attempts = p.attempts;
                r.reason = Some(reason);
                r.category = Some(Category::Admin);
                r.queue_ms = Some(at.saturating_duration_since(p.born).as_millis() as u64);
                self.write_timed(&mut r, Some(p.rcpt.domain()), None);
            }
        }
    }

    /// The record of a recipient that was never sent.
    fn unsent(&mut self, id: u64, rcpt: Option<Arc<str>>, why: Unsent, reason: String, stamp: Arc<str>) {
        let status = match why {
            Unsent::Rejected => Status::Rejected,
            Unsent::Suppressed => Status::Suppressed,
        };
        let mut r = Record::at(status, id, stamp);
        r.rcpt = rcpt;
        r.reason = Some(reason);
        self.write(r);
    }

    /// The record of an attempt, and for a deferral, the retry decision and the hand-back.
    fn attempt(&mut self, a: Attempt, when: &(Instant, SystemTime)) {
        let now = when.0;
        let stamp = self.stamp(a.at, when);
        let retry_at = match a.disposition {
            Disposition::Deferred if a.retry.is_some() => {
                let deferral = Deferral { attempts: a.attempts, born: a.born, not_before: a.not_before };
                match self.retry.decide(deferral, now, &mut self.rng) {
                    Verdict::Now => Some(now),
                    Verdict::At(at) => Some(at),
                    Verdict::Final => None,
                }
            }
            _ => None,
        };
        let status = match a.disposition {
            Disposition::Delivered => Status::Delivered,
            Disposition::Bounced => Status::Bounced,
            Disposition::Uncertain => Status::Uncertain,
            Disposition::Deferred if retry_at.is_some() => Status::Deferred,
            Disposition::Deferred => Status::Expired,
        };
        // Filled in place: a record is a few hundred octets, and every move of it is a copy.
        let mut r = Record::at(status, a.id, stamp);
        r.rcpt = Some(a.rcpt.shared());
        r.attempts = a.attempts;
        if let Some(reply) = a.reply {
            r.set_reply(reply);
        }
        r.reason = a.reason;
        r.category = a.category;
        if let Some(via) = a.via {
            r.mx = via.host;
            r.ip = Some(via.addr.ip());
            r.tls = via.tls;
        }
        r.size = a.size;
        let queued = a.at.saturating_duration_since(a.born);
        r.queue_ms = Some(queued.as_millis() as u64);
        if let (Some(at), Some(message)) = (retry_at, a.retry) {
            r.retry_in_s = Some(at.saturating_duration_since(now).as_secs());
            let rcpt = a.rcpt.clone();
            let pending = Pending { id: a.id, rcpt, message, born: a.born, attempts: a.attempts };
            // The source reads these until it is done, and it is not done while this
            // recipient has no final record.
            let _ = self.retries.send((at, pending));
            if self.on_durable.is_some() {
                self.settled.push(Settled::Retry { id: a.id, attempts: a.attempts, at });
            }
        }
        let latency = (status == Status::Delivered).then_some(queued);
        self.write_timed(&mut r, Some(a.rcpt.domain()), latency);
    }

    /// A destination suspended or slowed: a `shaping` record, and a line in the report.
    fn shaping_event(&mut self, e: ShapingEvent) {
        if let Some(hook) = &mut self.on_shaping {
            hook(&e);
        }
        let wall = |at: Instant| {
            let now = (Instant::now(), std::time::SystemTime::now());
            let t = if at >= now.0 { now.1 + (at - now.0) } else { now.1 - (now.0 - at) };
            humantime::format_rfc3339_seconds(t).to_string()
        };
        let action = e.action.to_string();
        let until = wall(e.until);
        // As the report shows a reply: code, enhanced code, text.
        let reply = e.reply.to_string();
        let mut r = Record::at(Status::Shaping, 0, self.clock.now()).reply(e.reply);
        r.mx = e.host;
        r.destination = Some(e.destination.name.as_str().into());
        r.rule = Some(Arc::clone(&e.rule));
        r.action = Some(action.clone());
        r.until = Some(until.clone());
        r.reason = Some(format!(
            "{} {action} for {} by shaping reaction {}",
            e.destination.name,
            humantime::format_duration(Duration::from_secs(
                e.until.saturating_duration_since(e.at).as_secs()
            )),
            e.rule
        ));
        let (destination, rule) = (e.destination.name.as_str(), &*e.rule);
        match self.shaping.iter_mut().find(|s| s.destination == destination && s.rule == rule) {
            Some(s) => {
                s.times += 1;
                s.until = until;
                s.reply = reply;
            }
            None => self.shaping.push(ShapingSummary {
                destination: destination.to_owned(),
                rule: rule.to_owned(),
                action,
                times: 1,
                first: wall(e.at),
                until,
                reply,
            }),
        }
        self.write(r);
    }

    fn write(&mut self, mut r: Record) {
        let rcpt = r.rcpt.clone();
        let domain = rcpt.as_deref().and_then(|a| a.rsplit_once('@')).map(|(_, domain)| domain);
        self.write_timed(&mut r, domain, None);
    }

    /// Counts and writes a record, in the books of its recipient's `domain` if it has one;
    /// `latency`: a delivered recipient's queue time.
    fn write_timed(&mut self, r: &mut Record, domain: Option<&str>, latency: Option<Duration>) {
        self.tally.count(r.status);
        if matches!(r.status, Status::Deferred | Status::Bounced | Status::Expired) {
            let category = *r.category.get_or_insert_with(|| {
                let text = r.reply.as_deref().or(r.reason.as_deref()).unwrap_or("");
                self.classifier.classify(Failure { code: r.code, enhanced: r.enhanced, text })
            });
            let counts = self.categories.entry(category).or_default();
            match r.status {
                Status::Deferred => counts.deferred += 1,
                Status::Bounced => counts.bounced += 1,
                _ => counts.expired += 1,
            }
        }
        let domain = domain.map(super::lowercase);
        if let Some(domain) = &domain {
            self.domains.count(domain, r.status, latency);
        }
        if let Some(meter) = &mut self.meter {
            meter.count(r.status, domain.as_deref(), r.queue_ms.map(Duration::from_millis));
        }
        if r.status.is_final() {
            self.flow.finalized.fetch_add(1, Ordering::Release);
            if self.on_durable.is_some() {
                let failed =
                    r.rcpt.as_ref().filter(|_| matches!(r.status, Status::Bounced | Status::Expired)).map(
                        |rcpt| {
                            Box::new(Failed {
                                rcpt: Arc::clone(rcpt),
                                expired: r.status == Status::Expired,
                                code: r.code,
                                enhanced: r.enhanced,
                                text: r.reply.as_deref().or(r.reason.as_deref()).unwrap_or("").to_owned(),
                                mx: r.mx.clone(),
                            })
                        },
                    );
                self.settled.push(Settled::Final {
                    id: r.id,
                    status: r.status,
                    rcpt: r.rcpt.clone(),
                    failed,
                });
            }
        }
        if self.log_error.is_none() {
            self.log.write(r);
            return;
        }
        // The log is broken: the record goes to stderr, so it is not lost.
        let mut line = Vec::new();
        r.write_json(&mut line);
        self.unrecorded_lines(&line);
    }

    /// The log's last commit made what it settled durable: tell the hook.
    fn settle(&mut self) {
        let Some(hook) = &mut self.on_durable else { return };
        let records = self.log.take_committed();
        if !self.settled.is_empty() || !records.bytes.is_empty() {
            let settled = std::mem::take(&mut self.settled);
            hook(Durable { settled, len: self.log.durable_len(), records });
        }
    }

    /// Records the log could not take, one JSON line each, to stderr.
    fn unrecorded_lines(&mut self, lines: &[u8]) {
        let mut err = std::io::stderr().lock();
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.unrecorded += 1;
            let _ = err.write_all(b"volley: unrecorded: ");
            let _ = err.write_all(line);
            let _ = err.write_all(b"\n");
        }
    }

    fn fail(&mut self, e: &std::io::Error) {
        if self.log_error.is_none() {
            let msg = format!("cannot write the delivery log {}: {e}", self.log.path().display());
            eprintln!("volley: {msg}; stopping (records that cannot be written follow on stderr)");
            self.log_error = Some(msg);
        }
    }

    fn print_progress(&self, slowest: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let t = &self.tally;
        let admitted = self.flow.admitted.load(Ordering::Relaxed);
        let waiting = self.flow.waiting.load(Ordering::Relaxed);
        let unfinished = admitted.saturating_sub(t.finals()).saturating_sub(waiting);
        // In a session (a transaction under way) against handed to the engine and not yet
        // taken by one; the cores publish theirs every 250 ms, so the split is approximate.
        let sending =
            self.engine.iter().map(|p| p.in_flight.load(Ordering::Relaxed)).sum::<u64>().min(unfinished);
        let queued = unfinished - sending;
        eprintln!(
            "[{:>5.0}s] {:.0} msg/s | delivered {} deferred {} bounced {} expired {} rejected {} uncertain {} | sending {} queued {} waiting {}{}",
            secs,
            t.delivered as f64 / secs,
            t.delivered,
            t.deferred,
            t.bounced,
            t.expired,
            t.rejected,
            t.uncertain,
            sending,
            queued,
            waiting,
            if slowest.is_empty() { String::new() } else { format!(" | slowest: {slowest}") }
        );
    }

    fn books(self) -> Books {
        let (domains, other_domains) = self.domains.summaries();
        Books {
            tally: self.tally,
            shaping: self.shaping,
            categories: self.categories,
            domains,
            other_domains,
            unrecorded: self.unrecorded,
            log_error: self.log_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Schedule;
    use crate::proto::client::{Envelope, Message};
    use crate::proto::{Address, Body};
    use std::sync::mpsc;

    fn ledger_on(path: &std::path::Path, flow: &Arc<Flow>) -> (Ledger, mpsc::SyncSender<Report>) {
        let (reports_tx, reports_rx) = mpsc::sync_channel(16);
        let (retries_tx, _) = mpsc::channel();
        let ledger = Ledger::new(LedgerConfig {
            log: LogFile::create(path).unwrap(),
            outcomes: Vec::new(),
            events: Arc::new(ArrayQueue::new(1)),
            reports: reports_rx,
            retries: retries_tx,
            flow: Arc::clone(flow),
            retry: RetryPolicy::Immediate { retries: 0 },
            classifier: Arc::new(Classifier::load(&[] as &[&str]).unwrap()),
            progress: false,
        });
        (ledger, reports_tx)
    }

    /// A source whose end waits on its finals being durable (a shared campaign) has them
    /// committed once every recipient it took is final, not at the next group commit; while
    /// one is still under way, or without the option, the group commit decides.
    #[test]
    fn finals_are_committed_at_once_when_every_recipient_is_final_if_asked() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("volley-ledger-final-{}.jsonl", std::process::id()));
        let plain_path = dir.join(format!("volley-ledger-plain-{}.jsonl", std::process::id()));
        for p in [&path, &plain_path] {
            let _ = std::fs::remove_file(p);
        }
        let flow = Arc::new(Flow::default());
        flow.admitted.store(2, Ordering::Release);
        let (mut ledger, _tx) = ledger_on(&path, &flow);
        ledger = ledger.sync_when_all_final();
        let when = (Instant::now(), SystemTime::now());
        let unsent =
            |id| Report::Unsent { id, rcpt: None, why: Unsent::Rejected, reason: "no address".into() };
        ledger.report(unsent(1), &when);
        std::thread::sleep(SYNC_ALL_FINAL_MIN);
        let started = ledger.log.unsynced_for().unwrap();
        assert!(
            !ledger.commit_due() || started >= crate::deliver::log::SYNC_EVERY,
            "one of two is final: not yet"
        );
        ledger.report(unsent(2), &when);
        assert!(flow.all_final());
        assert!(ledger.commit_due(), "every recipient is final");
        // Every recipient final, the log not committed: only the option commits now.
        flow.admitted.store(3, Ordering::Release);
        let (mut plain, _tx) = ledger_on(&plain_path, &flow);
        plain.report(unsent(3), &when);
        assert!(flow.all_final());
        std::thread::sleep(SYNC_ALL_FINAL_MIN);
        assert!(
            !plain.commit_due() || plain.log.unsynced_for().unwrap() >= crate::deliver::log::SYNC_EVERY,
            "without the option the group commit decides"
        );
        for p in [&path, &plain_path] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Reports from a source go through the same decision and builder as the engine's
    /// outcomes: a DNS failure is a counted attempt, deferred with a retry handed back while
    /// young, expired once past its maximum age; a domain without mail is bounced; unsent rows
    /// are final records of their own kind.
    #[test]
    fn reports_become_records_by_the_one_decision() {
        let path = std::env::temp_dir().join(format!("volley-ledger-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (reports_tx, reports_rx) = mpsc::sync_channel(16);
        let (retries_tx, retries_rx) = mpsc::channel();
        let flow = Arc::new(Flow::default());
        let schedule = Schedule {
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        };
        let ledger = Ledger::new(LedgerConfig {
            log: LogFile::create(&path).unwrap(),
            outcomes: Vec::new(),
            events: Arc::new(ArrayQueue::new(1)),
            reports: reports_rx,
            retries: retries_tx,
            flow: Arc::clone(&flow),
            retry: RetryPolicy::Scheduled(schedule),
            classifier: Arc::new(Classifier::load(&[] as &[&str]).unwrap()),
            progress: false,
        });
        let (settled_tx, settled_rx) = mpsc::channel();
        let ledger = ledger.on_durable(Box::new(move |d| settled_tx.send(d.settled).unwrap()));
        let now = Instant::now();
        let pending = |id: u64, born: Instant, attempts: u32| {
            let rcpt = Address::new(&format!("r{id}@x.test")).unwrap();
            let envelope = Arc::new(Envelope { sender: None, recipients: vec![rcpt.clone()] });
            let message = Payload::Ready(Message::new(envelope, Body::new(b"Subject: t\r\n\r\nhi\r\n")));
            Pending { id, rcpt, message, born, attempts }
        };
        let servfail = "DNS: SERVFAIL".to_owned();
        let old = now.checked_sub(Duration::from_secs(7200)).unwrap();
        let reports = [
            Report::Unroutable {
                pending: pending(2, now, 0),
                disposition: Disposition::Deferred,
                reason: servfail.clone(),
                category: Category::Connection,
                at: now,
            },
            Report::Unroutable {
                pending: pending(3, old, 4),
                disposition: Disposition::Deferred,
                reason: servfail,
                category: Category::Connection,
                at: now,
            },
            Report::Unroutable {
                pending: pending(4, now, 0),
                disposition: Disposition::Bounced,
                reason: "no MX".into(),
                category: Category::BadDomain,
                at: now,
            },
            Report::Unsent {
                id: 5,
                rcpt: Some("r5@x.test".into()),
                why: Unsent::Suppressed,
                reason: "listed".into(),
            },
            Report::Unsent { id: 6, rcpt: None, why: Unsent::Rejected, reason: "no address".into() },
        ];
        for r in reports {
            reports_tx.send(r).unwrap();
        }
        let control = Control::default();
        control.engine_done.store(true, Ordering::Release);
        let books = ledger.run(&control);
        assert_eq!(books.tally.finals(), 4);
        assert_eq!(flow.finalized.load(Ordering::Acquire), 4, "every final record is counted once");
        let (at, retry) = retries_rx.try_recv().expect("the young deferral is handed back");
        assert_eq!((retry.id, retry.attempts), (2, 1));
        assert!(
            at >= now + Duration::from_secs(54) && at <= now + Duration::from_secs(66),
            "first retry ~60 s"
        );
        assert!(retries_rx.try_recv().is_err(), "nothing else is retried");
        let settled: Vec<Settled> = settled_rx.try_iter().flatten().collect();
        assert!(matches!(settled[0], Settled::Retry { id: 2, attempts: 1, at: a } if a == at));
        let finals: Vec<(u64, Status, bool, Option<bool>)> = settled[1..]
            .iter()
            .map(|s| match s {
                Settled::Final { id, status, rcpt, failed } => {
                    (*id, *status, rcpt.is_some(), failed.as_ref().map(|f| f.expired))
                }
                Settled::Retry { .. } => panic!("a retry among the finals"),
            })
            .collect();
        assert_eq!(
            finals,
            [
                (3, Status::Expired, true, Some(true)),
                (4, Status::Bounced, true, Some(false)),
                (5, Status::Suppressed, true, None),
                (6, Status::Rejected, false, None),
            ],
            "told once the log is synced, with the status, failures with what to report; a row without an \
             address too (a shared campaign acknowledges it)"
        );
        let Settled::Final { failed: Some(bounced), .. } = &settled[2] else { panic!("4 bounced") };
        assert_eq!((&*bounced.rcpt, bounced.text.as_str()), ("r4@x.test", "no MX"));
        let records: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let field = |i: usize, k: &str| records[i][k].clone();
        let expect = [
            (2, "deferred", Some("connection"), 1),
            (3, "expired", Some("connection"), 5),
            (4, "bounced", Some("bad_domain"), 1),
            (5, "suppressed", None, 0),
            (6, "rejected", None, 0),
        ];
        assert_eq!(records.len(), expect.len());
        for (i, (line, status, category, attempts)) in expect.into_iter().enumerate() {
            assert_eq!(field(i, "line"), line, "{i}");
            assert_eq!(field(i, "status"), status, "{i}");
            assert_eq!(field(i, "category").as_str(), category, "{i}");
            assert_eq!(field(i, "attempts").as_u64().unwrap_or(0), attempts, "{i}");
        }
        assert!(field(0, "retry_in_s").as_u64().is_some_and(|s| (54..=66).contains(&s)));
        assert!(field(1, "retry_in_s").is_null() && field(1, "queue_ms").as_u64() >= Some(7_200_000));
        let _ = std::fs::remove_file(&path);
    }
}
