//! Drives one connection: the sans-IO client does the protocol, this loop only moves bytes,
//! jobs and outcomes. Generic over the stream so TLS reuses it unchanged.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent};

use super::core::{Core, Meta, Pool};
use super::stats::Metric;
use crate::proto::client::{Client, Event, SessionError};
use crate::rt::{ReadOutcome, TransmitBuf};

/// Longest an idle session waits before looking at the run's state again.
const RECHECK: Duration = Duration::from_millis(200);
/// Free space each read gets.
const READ_SPARE: usize = 16 * 1024;
/// How long replies are collected after a failed write.
const SALVAGE: Duration = Duration::from_millis(100);

/// How a session ended, as far as its slot cares.
pub struct End {
    /// It took at least one job (whose outcome is already counted).
    pub carried: bool,
    /// A transaction got a final reply, accepted or refused: the destination works.
    pub answered: bool,
    pub error: Option<SessionError>,
}

/// Runs a session until it closes.
pub async fn run<S>(stream: &mut S, core: &Rc<Core>, pool: &Rc<Pool>, conn: u64) -> End
where
    S: AsyncWriteRent + CancelableAsyncReadRent,
{
    let mut client: Client<Meta> = Client::new(core.config.client.clone(), Instant::now());
    let watch = core.watchdog.watch();
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut iovecs = Vec::new();
    let mut answered = false;
    let mut carried = false;
    let mut ready = false;
    loop {
        while let Some(event) = client.poll_event() {
            match event {
                Event::Ready(h) => {
                    ready = true;
                    pool.destination.health.session_ready();
                    core.unblock(pool);
                    let mut stats = core.stats.borrow_mut();
                    stats.record(Metric::Greeting, h.greeting);
                    stats.record(Metric::Ehlo, h.ehlo);
                    if client.capabilities().is_some_and(|c| c.starttls) {
                        stats.starttls_offered += 1;
                    }
                }
                Event::Done(done) => {
                    answered |= done.result.was_answered();
                    core.complete(pool, done, conn);
                }
                Event::Closed(error) => {
                    if ready {
                        pool.destination.health.session_ended();
                    }
                    if let Some(e) = &error {
                        core.stats.borrow_mut().session_failed(e);
                    }
                    return End { carried, answered, error };
                }
            }
        }
        if core.aborting() {
            client.abandon("run stopped");
            continue;
        }
        while client.wants_transaction() {
            let Some(job) = pool.pop_for(conn) else { break };
            let now = Instant::now();
            let (due, first_attempt) = (job.due, job.attempts == 0);
            let meta = Meta::attempt(&job, now);
            let pushed = client.push(job.message, meta);
            if pushed.is_ok() {
                // Counted only once the session holds it, so in-flight never counts a job
                // that is back in the pool.
                carried = true;
                core.dispatched(due, first_attempt, now);
            }
            if let Err((message, meta)) = pushed {
                // Cannot happen (wants_transaction said yes); never drop a job on the floor.
                pool.push(super::job::Job {
                    id: meta.id,
                    destination: meta.destination,
                    message,
                    due: meta.due,
                    attempts: meta.attempts,
                    last_conn: conn,
                    partial: meta.partial,
                });
                break;
            }
        }
        if let Some(transmit) = client.poll_transmit(Instant::now()) {
            let buf = TransmitBuf::new(transmit, std::mem::take(&mut iovecs));
            let (res, buf) = stream.write_vectored_all(buf).await;
            let (transmit, v) = buf.into_parts();
            iovecs = v;
            client.recycle(transmit);
            if let Err(e) = res {
                // Replies may have arrived before the failure (a server that resets after its
                // 421): read them first, so a 250 already sent is not mistaken for a loss.
                rbuf = salvage(stream, &watch, &mut client, rbuf).await;
                if !client.is_closed() {
                    client.handle_transport_error(&e.to_string());
                }
            }
            continue;
        }
        if client.is_closed() {
            continue; // the Closed event is queued
        }
        if !client.awaiting_reply() {
            if pool.has_pending() && client.wants_transaction() {
                continue;
            }
            if client.in_flight() == 0 && core.draining.get() {
                client.close();
                continue;
            }
            // Idle: wait for work, or for the idle timeout to send QUIT.
            let idle_deadline = client.poll_timeout();
            let wake = pool.signal.wait();
            let sleep = monoio::time::sleep(RECHECK.min(until(idle_deadline)));
            monoio::select! {
                _ = wake => {},
                _ = sleep => client.handle_timeout(Instant::now()),
            }
            continue;
        }
        // The core's watchdog interrupts this read at the client's deadline, or on abort.
        let (res, b) = watch.read(stream, rbuf, READ_SPARE, client.poll_timeout()).await;
        rbuf = b;
        let now = Instant::now();
        match res {
            Ok(ReadOutcome::Data(_)) => {
                let used = client.handle_input(now, &rbuf);
                rbuf.drain(..used);
                core.record_latencies(&mut client);
            }
            Ok(ReadOutcome::Deadline) => client.handle_timeout(now),
            Ok(ReadOutcome::Eof) => client.handle_eof(),
            Err(e) => client.handle_transport_error(&e.to_string()),
        }
    }
}

/// Feeds the client whatever the server still has for us, briefly, after a failed write.
async fn salvage<S: CancelableAsyncReadRent>(
    stream: &mut S,
    watch: &crate::rt::Watch,
    client: &mut Client<Meta>,
    mut rbuf: Vec<u8>,
) -> Vec<u8> {
    let deadline = Instant::now() + SALVAGE;
    while !client.is_closed() {
        let (res, b) = watch.read(stream, rbuf, READ_SPARE, Some(deadline)).await;
        rbuf = b;
        let Ok(ReadOutcome::Data(_)) = res else { break };
        let used = client.handle_input(Instant::now(), &rbuf);
        rbuf.drain(..used);
    }
    rbuf
}

fn until(deadline: Option<Instant>) -> Duration {
    deadline.map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()))
}
