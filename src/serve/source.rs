//! serve's job source: what the spool holds when serve starts (each waiting recipient at its
//! due time, its age counted from when its message was received), then every message intake
//! accepts, once durable; each recipient handed to `deliver::dispatch`, as `send`'s rows are.
//! It never runs dry: serve stops it by halting the engine, leaving what is not final in the
//! spool.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::spool::{Accepted, MessageId, Spool, SpoolError, Status, recipient_id};
use crate::deliver::dispatch::{Dispatch, MAX_RESOLVING};
use crate::deliver::ledger::{Flow, Received, Report};
use crate::deliver::pending::Pending;
use crate::engine::{JobSource, Next, Payload};
use crate::proto::client::{Envelope, Message};
use crate::proto::{Address, Body};

/// How often to look for arrivals and answers while nothing is ready (they arrive by polling).
const POLL: Duration = Duration::from_millis(2);
/// Messages taken from intake per call at most, so a burst does not hold up retries.
const ARRIVALS_PER_CALL: usize = 256;

/// A message intake accepted, once durable in the spool.
#[derive(Debug)]
pub struct Arrival {
    pub id: MessageId,
    pub message: Accepted,
    /// The HTTP request's Idempotency-Key, for the `received` record.
    pub idempotency_key: Option<Arc<str>>,
}

pub struct SpoolSource {
    dispatch: Dispatch,
    arrivals: Receiver<Arrival>,
    flow: Arc<Flow>,
}

impl SpoolSource {
    pub fn new(dispatch: Dispatch, arrivals: Receiver<Arrival>, flow: Arc<Flow>) -> Self {
        SpoolSource { dispatch, arrivals, flow }
    }

    /// Schedules what `spool` holds: each waiting recipient at its due time (at once if that
    /// has passed). `now` and `wall` are one reading of the two clocks. Returns how many.
    pub fn resume(&mut self, spool: &Spool, now: Instant, wall: SystemTime) -> Result<usize, SpoolError> {
        let waiting = spool.waiting()?;
        let mut current: Option<(MessageId, Option<Address>, Body, u64)> = None;
        for r in &waiting {
            if current.as_ref().is_none_or(|(id, ..)| *id != r.message) {
                // Recipients come in message order: each message's content is read once.
                let Some(stored) = spool.message(r.message)? else { continue };
                current = Some((r.message, stored.sender, Body::new(&stored.content), stored.received_ms));
            }
            let Some((_, sender, body, received_ms)) = &current else { continue };
            let Status::Waiting { attempts, due_ms } = r.status else { continue };
            let born = instant_of(*received_ms, now, wall);
            let pending = pending(
                recipient_id(r.message, r.index),
                sender.clone(),
                &r.address,
                body.clone(),
                born,
                attempts,
            );
            self.flow.admitted.fetch_add(1, Ordering::Relaxed);
            let due = instant_of(due_ms, now, wall);
            if due > now { self.dispatch.retry_at(due, pending) } else { self.dispatch.route(pending, now) }
        }
        Ok(waiting.len())
    }

    fn arrive(&mut self, arrival: Arrival, now: Instant) {
        let Arrival { id, message, idempotency_key } = arrival;
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
        for (index, rcpt) in message.recipients.iter().enumerate() {
            let p =
                pending(recipient_id(id, index as u32), message.sender.clone(), rcpt, body.clone(), now, 0);
            self.flow.admitted.fetch_add(1, Ordering::Relaxed);
            self.dispatch.route(p, now);
        }
    }
}

impl JobSource for SpoolSource {
    fn next(&mut self, now: Instant) -> Next {
        self.dispatch.poll(now);
        let mut taken = 0;
        loop {
            if let Some(job) = self.dispatch.next_job(now) {
                self.flow.waiting.store(self.dispatch.waiting() as u64, Ordering::Relaxed);
                return Next::Job(job);
            }
            if taken >= ARRIVALS_PER_CALL || self.dispatch.resolving() >= MAX_RESOLVING {
                break;
            }
            let Ok(arrival) = self.arrivals.try_recv() else { break };
            taken += 1;
            self.arrive(arrival, now);
        }
        self.flow.waiting.store(self.dispatch.waiting() as u64, Ordering::Relaxed);
        let soon = now + if taken > 0 { Duration::ZERO } else { POLL };
        Next::Wait(self.dispatch.next_retry().map_or(soon, |at| at.min(soon)))
    }
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
