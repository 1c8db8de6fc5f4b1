//! serve's job source: what the spool holds when serve starts (each waiting recipient at its
//! due time, its age counted from when its message was received), then every message intake
//! accepts, once durable; each recipient handed to `deliver::dispatch`, as `send`'s rows are.
//! It never runs dry: serve stops it by halting the engine, leaving what is not final in the
//! spool.
//!
//! Memory holds what is under way and due soon, not everything that waits, as Postfix keeps an
//! active queue beside its deferred one: a retry due beyond [`HORIZON`], or any once
//! `--active-recipients` wait in memory, is parked (dropped here; the spool keeps its schedule,
//! [`super::due`]) and read back from the schedule when its time comes near. So is what a
//! restart finds in the spool. A recipient in memory holds its message's id, not its content,
//! which is read from the spool on this thread (the producer's, never a core's) when an attempt
//! is due.
//!
//! A recipient is read from the schedule only if it is not held here already. It is held from
//! when it arrives or is read until the spool has recorded it final or parked: a parked one is
//! let go only when the spool's record of that deferral (not an older one) comes back from the
//! spool's writer, so the schedule never shows it at a time it no longer has.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::due::Scheduled;
use super::queue::{QueueControl, Turn};
use super::spool::{
    Accepted, Change, MessageId, SpoolError, SpoolRead, Status, of_recipient_id, recipient_id,
};
use crate::deliver::dispatch::{Dispatch, MAX_RESOLVING, Parking};
use crate::deliver::ledger::{Flow, Received, Report};
use crate::deliver::pending::Pending;
use crate::engine::{Compose, Job, JobSource, Next, Payload, Unsendable};
use crate::hash::FxMap;
use crate::proto::client::{Envelope, Message};
use crate::proto::{Address, Body};

/// How often to look for arrivals and answers while nothing is ready (they arrive by polling).
const POLL: Duration = Duration::from_millis(2);
/// Messages taken from intake per call at most, so a burst does not hold up retries.
const ARRIVALS_PER_CALL: usize = 256;
/// Retries due further ahead than this wait in the spool only; the schedule is read this far
/// ahead.
pub const HORIZON: Duration = Duration::from_secs(60);
/// The schedule is read at most this often (a read starts where the last one stopped).
const READ_EVERY: Duration = Duration::from_millis(100);
/// Recipients held in memory by default (`--active-recipients`): a few hundred octets each.
pub const ACTIVE_RECIPIENTS: usize = 100_000;

/// A message intake accepted, once durable in the spool.
#[derive(Debug)]
pub struct Arrival {
    pub id: MessageId,
    pub message: Accepted,
    /// The HTTP request's Idempotency-Key, for the `received` record.
    pub idempotency_key: Option<Arc<str>>,
    /// When it was durable and intake could say yes: its recipients' queue time (`queue_ms`
    /// in the log) counts from here.
    pub accepted_at: Instant,
}

pub struct SpoolSource {
    dispatch: Dispatch,
    arrivals: Receiver<Arrival>,
    /// What the spool's writer recorded (see the module's comment).
    recorded: Receiver<Vec<Change>>,
    flow: Arc<Flow>,
    reader: Arc<dyn SpoolRead>,
    /// Recipients held in memory (under way, or waiting for a retry due soon), by id.
    held: FxMap<u64, ()>,
    /// Recipients parked and still held until the spool records that deferral: attempts then.
    parked: FxMap<u64, u32>,
    /// No recipient that waits in the spool only is due before this (milliseconds since the
    /// Unix epoch); `None`: none waits there.
    unread_from: Option<u64>,
    /// Recipients that wait in the spool only (for progress).
    unread: usize,
    /// The last message in the spool when serve started: a recipient of a later one never
    /// tried is an arrival, handed over by intake, never read from the schedule.
    last_at_start: MessageId,
    read_at: Option<Instant>,
    limit: usize,
    /// An operator's commands (see [`super::queue`]).
    queue: Option<QueueControl>,
}

impl SpoolSource {
    /// `recorded` brings every batch of changes the spool's writer recorded; at most `limit`
    /// recipients wait in memory.
    pub fn new(
        mut dispatch: Dispatch,
        arrivals: Receiver<Arrival>,
        recorded: Receiver<Vec<Change>>,
        flow: Arc<Flow>,
        reader: Arc<dyn SpoolRead>,
        limit: usize,
    ) -> Self {
        let stow_reader = Arc::clone(&reader);
        dispatch.stow_retries_with(Box::new(move |id, message| stow(&stow_reader, id, message)));
        dispatch.park_retries(Parking { horizon: HORIZON, limit });
        SpoolSource {
            dispatch,
            arrivals,
            recorded,
            flow,
            reader,
            held: FxMap::default(),
            parked: FxMap::default(),
            unread_from: None,
            unread: 0,
            last_at_start: MessageId(0),
            read_at: None,
            limit,
            queue: None,
        }
    }

    /// Takes an operator's commands through `queue`, its suspensions in force from now.
    pub fn with_queue(mut self, queue: QueueControl) -> Self {
        self.dispatch.set_holds(queue.holds(Instant::now(), SystemTime::now()));
        self.queue = Some(queue);
        self
    }

    /// A turn of queue control, lending it what it acts on.
    fn control(&mut self, now: Instant) {
        let Some(queue) = &mut self.queue else { return };
        let last_at_start = self.last_at_start;
        let reader = &self.reader;
        let mut turn = Turn {
            dispatch: &mut self.dispatch,
            held: &mut self.held,
            parked: &mut self.parked,
            unread: &mut self.unread,
            unread_from: &mut self.unread_from,
            is_arrival: &|entry| is_arrival(entry, last_at_start),
            pending_of: &|entry, now, wall| spooled(reader, entry, now, wall),
        };
        queue.turn(&mut turn, now);
    }

    /// Takes on what the spool holds at the start, `last` being its newest message: each
    /// waiting recipient is read from the schedule as its time comes near (at once if it has
    /// passed). Returns how many wait.
    pub fn resume(&mut self, last: MessageId) -> Result<usize, SpoolError> {
        let waiting = self.reader.scheduled_count()?;
        self.last_at_start = last;
        self.unread = waiting;
        self.unread_from = (waiting > 0).then_some(0);
        self.flow.admitted.fetch_add(waiting as u64, Ordering::Relaxed);
        Ok(waiting)
    }

    fn arrive(&mut self, arrival: Arrival, now: Instant) {
        let Arrival { id, message, idempotency_key, accepted_at } = arrival;
        self.dispatch.report(Report::Received(Box::new(Received {
            message: id.0,
            sender: message.sender.as_ref().map_or("", Address::as_str).into(),
            recipients: message.recipients.len() as u64,
            origin: message.origin.as_str().into(),
            idempotency_key,
            size: message.content.len(),
            at: now,
        })));
        let body = Body::new(&message.content);
        let born = accepted_at.min(now);
        for (index, rcpt) in message.recipients.iter().enumerate() {
            let p =
                pending(recipient_id(id, index as u32), message.sender.clone(), rcpt, body.clone(), born, 0);
            self.held.insert(p.id, ());
            self.flow.admitted.fetch_add(1, Ordering::Relaxed);
            self.dispatch.route(p, now);
        }
    }

    /// Takes in what came back: retries (some parked) and the spool's records, which let go
    /// of final and parked recipients. Records are taken first: a retry is handed back before
    /// its deferral is recorded, so each record taken has its retry here by the time it is
    /// looked at.
    fn take_back(&mut self, now: Instant) {
        let recorded: Vec<Vec<Change>> = self.recorded.try_iter().collect();
        self.dispatch.poll(now);
        for (id, attempts) in self.dispatch.take_parked() {
            self.parked.insert(id, attempts);
        }
        for change in recorded.iter().flatten() {
            let id = recipient_id(change.message, change.index);
            match change.status {
                Status::Final => {
                    self.held.remove(&id);
                    self.parked.remove(&id);
                }
                Status::Waiting { attempts, due_ms } => {
                    if self.parked.get(&id).is_some_and(|parked| *parked <= attempts) {
                        self.parked.remove(&id);
                        self.held.remove(&id);
                        self.unread += 1;
                        self.unread_from = Some(self.unread_from.map_or(due_ms, |from| from.min(due_ms)));
                    } else if !self.held.contains_key(&id) {
                        // Moved in the spool while not here (an operator's retry-now): read
                        // from there when due.
                        self.unread_from = Some(self.unread_from.map_or(due_ms, |from| from.min(due_ms)));
                    }
                }
            }
        }
    }

    /// Reads from the schedule the recipients due within [`HORIZON`] that are not held, while
    /// fewer than the limit are held (counting those under way in the engine), once at most
    /// half are (so reads are not one recipient at a time).
    fn read_schedule(&mut self, now: Instant) -> Result<(), SpoolError> {
        let wall = SystemTime::now();
        let until = wall_ms_of(now + HORIZON, now, wall);
        let Some(from) = self.unread_from else { return Ok(()) };
        if from > until
            || self.held.len() > self.limit / 2
            || self.read_at.is_some_and(|at| now < at + READ_EVERY)
        {
            return Ok(());
        }
        self.read_at = Some(now);
        // Where the next read starts: the first recipient left unread, if any is.
        let mut next_from = None;
        for entry in self.reader.scheduled_from(from) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    // From the same place, a while later.
                    self.read_at = Some(now + Duration::from_secs(5));
                    return Err(e);
                }
            };
            if entry.due_ms > until || self.held.len() >= self.limit {
                next_from = Some(entry.due_ms);
                break;
            }
            let id = recipient_id(entry.message, entry.index);
            if self.held.contains_key(&id) || is_arrival(&entry, self.last_at_start) {
                continue;
            }
            self.held.insert(id, ());
            self.unread = self.unread.saturating_sub(1);
            let due = instant_of(entry.due_ms, now, wall);
            let pending = spooled(&self.reader, entry, now, wall);
            if due > now { self.dispatch.retry_at(due, pending) } else { self.dispatch.route(pending, now) }
        }
        self.unread_from = next_from;
        Ok(())
    }

    fn publish_waiting(&self) {
        self.flow.waiting.store((self.dispatch.waiting() + self.unread) as u64, Ordering::Relaxed);
        self.flow.held.store(self.held.len() as u64, Ordering::Relaxed);
    }
}

/// Whether `entry` is a recipient of a message accepted since the start and never tried nor
/// moved: intake hands it over, and the schedule must not hand it a second time. (A recipient
/// held back or brought forward by an operator has a due time later than its reception.)
fn is_arrival(entry: &Scheduled, last_at_start: MessageId) -> bool {
    entry.attempts == 0 && entry.message > last_at_start && entry.due_ms <= entry.received_ms
}

/// A recipient read from the schedule, its message to be read when its attempt is due.
fn spooled(reader: &Arc<dyn SpoolRead>, entry: Scheduled, now: Instant, wall: SystemTime) -> Pending {
    let Scheduled { message, index, attempts, received_ms, sender, address, .. } = entry;
    let envelope = Arc::new(Envelope { sender, recipients: vec![address.clone()] });
    Pending {
        id: recipient_id(message, index),
        rcpt: address,
        message: Payload::Compose(Box::new(Spooled { reader: Arc::clone(reader), message, envelope })),
        born: instant_of(received_ms, now, wall),
        attempts,
    }
}

impl JobSource for SpoolSource {
    fn next(&mut self, now: Instant) -> Next {
        self.take_back(now);
        self.control(now);
        if let Err(e) = self.read_schedule(now) {
            // Said, and tried again later: what waits stays in the spool meanwhile.
            eprintln!("volley serve: reading the spool's schedule: {e}");
        }
        let mut taken = 0;
        loop {
            if let Some(job) = self.dispatch.next_job(now) {
                self.publish_waiting();
                return Next::Job(load(job));
            }
            if taken >= ARRIVALS_PER_CALL || self.dispatch.resolving() >= MAX_RESOLVING {
                break;
            }
            let Ok(arrival) = self.arrivals.try_recv() else { break };
            taken += 1;
            self.arrive(arrival, now);
        }
        self.publish_waiting();
        let soon = now + if taken > 0 { Duration::ZERO } else { POLL };
        Next::Wait(self.dispatch.next_retry().map_or(soon, |at| at.min(soon)))
    }
}

/// A recipient's message, read from the spool when its attempt is due (see the module's
/// comment). Its envelope is kept: it is small, and the spool keeps recipients apart.
#[derive(Debug)]
struct Spooled {
    reader: Arc<dyn SpoolRead>,
    message: MessageId,
    envelope: Arc<Envelope>,
}

impl Compose for Spooled {
    fn compose(self: Box<Self>, _at: SystemTime) -> Result<Message, Unsendable> {
        let unsendable = |reason: String| Unsendable { recipients: self.envelope.recipients.clone(), reason };
        match self.reader.message(self.message) {
            Ok(Some(stored)) => Ok(Message::new(Arc::clone(&self.envelope), Body::new(&stored.content))),
            Ok(None) => Err(unsendable(format!("message {} is no longer in the spool", self.message))),
            Err(e) => Err(unsendable(format!("spool: {e}"))),
        }
    }

    fn recipients(&self) -> Vec<Address> {
        self.envelope.recipients.clone()
    }
}

/// A message that could not be read from the spool: the core taking the job records its
/// recipient as unsendable, as it does a template that failed.
#[derive(Debug)]
struct Unreadable(Unsendable);

impl Compose for Unreadable {
    fn compose(self: Box<Self>, _at: SystemTime) -> Result<Message, Unsendable> {
        Err(self.0)
    }

    fn recipients(&self) -> Vec<Address> {
        self.0.recipients.clone()
    }
}

/// What a recipient waiting for a retry keeps of its message: where it is in the spool.
fn stow(reader: &Arc<dyn SpoolRead>, id: u64, message: Payload) -> Payload {
    match message {
        Payload::Ready(m) => Payload::Compose(Box::new(Spooled {
            reader: Arc::clone(reader),
            message: of_recipient_id(id).0,
            envelope: m.envelope,
        })),
        other => other,
    }
}

/// A job with its message read from the spool if it waited there, here on the producer's
/// thread: reading the store is not for the cores, which only send.
fn load(mut job: Job) -> Job {
    job.message = match job.message {
        Payload::Compose(recipe) => match recipe.compose(SystemTime::now()) {
            Ok(message) => Payload::Ready(message),
            Err(unsendable) => Payload::Compose(Box::new(Unreadable(unsendable))),
        },
        ready => ready,
    };
    job
}

/// One recipient's job-to-be: the message addressed to it alone, sharing the body.
fn pending(
    id: u64,
    sender: Option<Address>,
    rcpt: &Address,
    body: Body,
    born: Instant,
    attempts: u32,
) -> Pending {
    let envelope = Arc::new(Envelope { sender, recipients: vec![rcpt.clone()] });
    let message = Payload::Ready(Message::new(envelope, body));
    Pending { id, rcpt: rcpt.clone(), message, born, attempts }
}

/// The instant of a wall-clock time `ms` (milliseconds since the Unix epoch), given one reading
/// of both clocks; a time ahead of the wall clock (it was set back) is taken as now.
pub fn instant_of(ms: u64, now: Instant, wall: SystemTime) -> Instant {
    let wall_ms = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    match wall_ms.checked_sub(ms) {
        Some(ago) => now.checked_sub(Duration::from_millis(ago)).unwrap_or(now),
        None => now + Duration::from_millis(ms - wall_ms),
    }
}

/// A wall-clock time `ms` (milliseconds since the Unix epoch) as RFC 3339, in seconds (UTC).
pub fn rfc3339_of_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Milliseconds since the Unix epoch of `at`, given one reading of both clocks.
pub fn wall_ms_of(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall_ms = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    if at >= now {
        wall_ms + at.duration_since(now).as_millis() as u64
    } else {
        wall_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Destination;
    use crate::serve::spool;

    #[test]
    fn a_waiting_recipient_keeps_an_id_and_its_content_is_read_when_due() {
        let dir = std::env::temp_dir().join(format!("volley-source-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = spool::open(&dir).unwrap();
        let rcpt = Address::new("a@example.net").unwrap();
        let content: Arc<[u8]> = Arc::from(&b"Subject: x\r\n\r\nhello\r\n"[..]);
        let accepted = Accepted {
            sender: None,
            recipients: vec![rcpt.clone()],
            content,
            received_ms: 1,
            origin: "t".into(),
        };
        let id = spool.accept(&[accepted]).unwrap()[0];
        let reader = spool.reader();
        let sent = pending(
            recipient_id(id, 0),
            None,
            &rcpt,
            Body::new(b"Subject: x\r\n\r\nhello\r\n"),
            Instant::now(),
            0,
        );
        let job = |message| Job {
            id: recipient_id(id, 0),
            destination: Arc::new(Destination::new(0, "d", vec![], 1)),
            message,
            due: Instant::now(),
            attempts: 1,
            last_conn: 0,
            partial: false,
        };

        let stowed = stow(&reader, sent.id, sent.message);
        assert!(matches!(stowed, Payload::Compose(_)), "no content kept while waiting");
        let loaded = load(job(stowed));
        let Payload::Ready(message) = loaded.message else { panic!("read back") };
        assert_eq!(&message.body.bytes()[..], b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(message.envelope.recipients, vec![rcpt.clone()]);

        // Gone from the spool meanwhile (its recipient made final elsewhere): unsendable, never
        // sent empty.
        spool
            .record(
                &[Change { message: id, index: 0, status: Status::Final }],
                &crate::serve::spool::FromLog::default(),
                None,
            )
            .unwrap();
        let envelope = Arc::new(Envelope { sender: None, recipients: vec![rcpt.clone()] });
        let gone = Payload::Compose(Box::new(Spooled { reader, message: id, envelope }));
        let loaded = load(job(gone));
        let Payload::Compose(recipe) = loaded.message else { panic!("not readable") };
        let err = recipe.compose(SystemTime::now()).unwrap_err();
        assert_eq!(err.recipients, vec![rcpt]);
        assert!(err.reason.contains("no longer in the spool"), "{}", err.reason);
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wall_times_and_instants_convert_both_ways() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let wall_ms = wall.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let earlier = instant_of(wall_ms - 5_000, now, wall);
        assert_eq!(now.duration_since(earlier), Duration::from_secs(5));
        let later = instant_of(wall_ms + 60_000, now, wall);
        assert_eq!(later.duration_since(now), Duration::from_secs(60), "a retry due in a minute");
        assert_eq!(wall_ms_of(later, now, wall), wall_ms + 60_000);
        assert_eq!(wall_ms_of(earlier, now, wall), wall_ms - 5_000);
    }
}
