//! Drives one connection: the sans-IO client does the protocol, this loop only moves bytes,
//! jobs and outcomes. Plaintext and TLS are the same path: the [`Conn`] encrypts or not, and
//! STARTTLS is one event in the loop.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent};

use super::core::{Core, Meta, Pool};
use super::outcome::Via;
use super::stats::Metric;
use super::tls_watch::TlsSeen;
use crate::proto::client::{Client, ClientConfig, Event, SessionError, StartTls};
use crate::rt::ReadOutcome;
use crate::tls::{Conn, TlsError, TlsLayer, TlsPolicy};

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
    /// It ended to give its connection's lease back to the fleet (see `Shaping::claim_shed`).
    pub shed: bool,
}

/// The session settings for a new connection to `pool` at `addr`: whether to ask for STARTTLS
/// follows what the receiver requires of that host, else the run's TLS policy and the pool's
/// memory of a failed handshake.
fn client_config(core: &Core, pool: &Pool, addr: std::net::SocketAddr) -> ClientConfig {
    let mut config = core.config.client.clone();
    if let Some(n) = pool.destination.limits.messages_per_connection {
        config.max_messages = n;
    }
    config.starttls = match &core.config.tls {
        // Whatever the run's policy, and whatever the pool's memory of failed handshakes:
        // the receiver requires TLS (see `handshake`).
        _ if pool.destination.required_tls(addr).is_some() => StartTls::Required,
        None => StartTls::Off,
        Some(tls) if tls.implicit => StartTls::Off,
        Some(tls) => match tls.policy {
            TlsPolicy::None => StartTls::Off,
            TlsPolicy::Opportunistic if pool.destination.health.plaintext_fallback(core.index) => {
                StartTls::Off
            }
            TlsPolicy::Opportunistic => StartTls::IfOffered,
            TlsPolicy::Required | TlsPolicy::Verify => StartTls::Required,
        },
    };
    config
}

/// Runs a TLS handshake on `conn` for `pool`'s destination (to the address connected to):
/// counted and timed.
pub async fn handshake<S>(
    conn: &mut Conn<S>,
    core: &Core,
    pool: &Pool,
    addr: std::net::SocketAddr,
    watch: &crate::rt::Watch,
) -> Result<(), SessionError>
where
    S: AsyncWriteRent + CancelableAsyncReadRent,
{
    let config = match (pool.destination.required_tls(addr), &core.config.tls) {
        (Some(required), _) => required,
        (None, Some(tls)) => &tls.config,
        (None, None) => return Err(SessionError::Tls("TLS is not configured".into())),
    };
    // The destination's name, else the name of the host this address belongs to (an MX
    // host's certificate names the host, not the domain), else the address.
    let host_name = || {
        let host = pool.destination.host_of(addr)?;
        rustls::pki_types::ServerName::try_from(host.to_string()).ok()
    };
    let name = pool.destination.tls_name.clone().or_else(host_name).unwrap_or_else(|| addr.ip().into());
    let started = Instant::now();
    let result = match TlsLayer::client(std::sync::Arc::clone(config), name.clone()) {
        Ok(layer) => conn.start_tls(layer, watch, started + core.config.client.timeouts.ehlo).await,
        Err(e) => Err(e),
    };
    let info = conn.tls().and_then(TlsLayer::info);
    if let Some(tls_watch) = &pool.destination.tls_watch {
        // What a check would say of a certificate the run's own policy did not check.
        let checked = match (&result, &tls_watch.check, conn.tls()) {
            (Ok(()), Some(check), Some(layer)) if pool.destination.required_tls(addr).is_none() => {
                check.check(layer, &name)
            }
            _ => Ok(()),
        };
        let host = pool.destination.host_of(addr).map(|h| &**h);
        match result.as_ref().and(checked.as_ref()) {
            Ok(()) => tls_watch.observer.seen(TlsSeen::Secured { addr, host }),
            Err(e) => {
                let problem = match e {
                    TlsError::Certificate(problem, _) => Some(*problem),
                    _ => None,
                };
                tls_watch.observer.seen(TlsSeen::Failed { addr, host, problem, why: &e.to_string() });
            }
        }
    }
    let mut stats = core.stats.borrow_mut();
    match (result, info) {
        (Ok(()), Some(info)) => {
            stats.record(Metric::Tls, started.elapsed());
            stats.tls.established(&info);
            Ok(())
        }
        (Ok(()), None) => Err(SessionError::Tls("handshake ended without a session".into())),
        (Err(e), _) => {
            stats.tls.failed += 1;
            Err(match e {
                TlsError::Certificate(_, why) => SessionError::TlsCertificate(why),
                other => SessionError::Tls(other.to_string()),
            })
        }
    }
}

/// Tells `pool`'s watch, if it has one, of a session to `addr` that went on, or ended, without
/// STARTTLS: not offered, or refused (`error`, under a policy that requires it).
fn tls_missing(pool: &Pool, addr: std::net::SocketAddr, error: Option<&SessionError>) {
    let Some(tls_watch) = &pool.destination.tls_watch else { return };
    let host = pool.destination.host_of(addr).map(|h| &**h);
    match error {
        None | Some(SessionError::TlsUnavailable { reply: None }) => {
            tls_watch.observer.seen(TlsSeen::NotOffered { addr, host })
        }
        Some(e) => {
            tls_watch.observer.seen(TlsSeen::Failed { addr, host, problem: None, why: &e.to_string() })
        }
    }
}

/// Runs a session until it closes.
pub async fn run<S>(
    conn: &mut Conn<S>,
    core: &Rc<Core>,
    pool: &Rc<Pool>,
    addr: std::net::SocketAddr,
    id: u64,
) -> End
where
    S: AsyncWriteRent + CancelableAsyncReadRent,
{
    let mut client: Client<Meta> = Client::new(client_config(core, pool, addr), Instant::now());
    if conn.tls().is_some() {
        client.tls_established(Instant::now());
    }
    let watch = core.watchdog.watch();
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut answered = false;
    let mut carried = false;
    let mut ready = false;
    let mut via = Via { addr, host: pool.destination.host_of(addr).cloned(), tls: None };
    // The session's place among the core's idle ones, while it has nothing to send.
    let mut idle = None;
    // Ending to give its lease back: finishing what it holds, taking nothing new.
    let mut shed = false;
    // It carries its destination's only message, and ends with it.
    let mut last = false;
    loop {
        while let Some(event) = client.poll_event() {
            match event {
                Event::Ready(h) => {
                    ready = true;
                    via.tls = conn.tls().and_then(TlsLayer::info).map(|i| i.version);
                    pool.destination.health.session_ready();
                    core.prove_refusals(pool);
                    core.unblock(pool);
                    let mut stats = core.stats.borrow_mut();
                    stats.record(Metric::Greeting, h.greeting);
                    stats.record(Metric::Ehlo, h.ehlo);
                    if let Some(auth) = h.auth {
                        stats.record(Metric::Auth, auth);
                        stats.authenticated += 1;
                    }
                    let offered = client.capabilities().is_some_and(|c| c.starttls);
                    if offered {
                        stats.starttls_offered += 1;
                    } else if !client.is_secure() {
                        tls_missing(pool, addr, None);
                    }
                    if core.config.tls.as_ref().is_some_and(|t| t.policy != TlsPolicy::None)
                        && !client.is_secure()
                    {
                        stats.tls.plaintext += 1;
                    }
                }
                Event::StartTls => {
                    // The client has consumed every byte read (anything after the 220 failed
                    // it as an injection), so the handshake starts on a clean stream.
                    rbuf.clear();
                    match handshake(conn, core, pool, addr, &watch).await {
                        Ok(()) => client.tls_established(Instant::now()),
                        Err(e) => client.handle_tls_error(e),
                    }
                }
                Event::Done(done) => {
                    answered |= done.result.was_answered();
                    core.complete(pool, done, id, Some(&via));
                }
                Event::Closed(error) => {
                    if ready {
                        pool.destination.health.session_ended();
                    }
                    if let Some(e) = &error {
                        if matches!(e, SessionError::TlsUnavailable { .. }) {
                            tls_missing(pool, addr, Some(e));
                        }
                        core.stats.borrow_mut().session_failed(e);
                    }
                    return End { carried, answered, error, shed };
                }
            }
        }
        if core.aborting() {
            client.abandon("run stopped");
            continue;
        }
        // When the destination's (or the run's) rate lets the next message go, if not now.
        let mut held_until = None;
        // One reading of the clock for the whole burst of messages started here.
        let mut clock = None;
        if !shed && ready && pool.destination.shaping.claim_shed() {
            shed = true;
        }
        while !shed && client.wants_transaction() && !core.halted() && pool.has_pending() {
            let now = *clock.get_or_insert_with(Instant::now);
            if let Err(at) = core.admit(pool, now) {
                held_until = Some(at);
                break;
            }
            let Some(job) = pool.pop_for(id) else { break };
            let (due, first_attempt) = (job.due, job.attempts == 0);
            let meta = Meta::attempt(&job, now);
            let Some(message) = core.compose(job.message, &meta) else { continue };
            let pushed = client.push(message, meta);
            if pushed.is_ok() {
                // Counted only once the session holds it, so in-flight never counts a job
                // that is back in the pool.
                carried = true;
                idle = None;
                core.dispatched(due, first_attempt, now);
            }
            if let Err((message, meta)) = pushed {
                // Cannot happen (wants_transaction said yes); never drop a job on the floor.
                pool.push(super::job::Job {
                    id: meta.id,
                    destination: meta.destination,
                    message: super::job::Payload::Ready(message),
                    due: meta.due,
                    attempts: meta.attempts,
                    last_conn: id,
                    partial: meta.partial,
                });
                break;
            }
        }
        if !last && carried && pool.destination.health.placed() == 1 && !pool.has_pending() {
            // Connections are kept on demand, as Postfix keeps them: the session that carries
            // the only message its destination has had ends with it (its QUIT goes with the
            // content) rather than stay open for work that may never come, with a checkpoint
            // EHLO and a QUIT of their own. A destination's second message keeps its sessions
            // open: one destination, one message, one short session.
            last = true;
            client.close();
        }
        if let Some(transmit) = client.poll_transmit(Instant::now()) {
            let (res, transmit) = conn.write_transmit(transmit).await;
            client.recycle(transmit);
            if let Err(e) = res {
                // Replies may have arrived before the failure (a server that resets after its
                // 421): read them first, so a 250 already sent is not mistaken for a loss.
                rbuf = salvage(conn, &watch, &mut client, rbuf).await;
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
            if shed && client.in_flight() == 0 {
                client.close();
                continue;
            }
            if !shed
                && pool.has_pending()
                && client.wants_transaction()
                && !core.halted()
                && held_until.is_none()
            {
                continue;
            }
            if client.in_flight() == 0 && (core.draining.get() || core.halted()) {
                client.close();
                continue;
            }
            if client.in_flight() == 0 && !pool.has_pending() {
                // Nothing to send: one of the core's idle sessions, closed first if it has
                // been idle longest when there are too many, at once if other destinations'
                // work waits for a session.
                if core.starving()
                    || idle.get_or_insert_with(|| core.idle.enter(pool.signal.clone())).evicted()
                {
                    idle = None;
                    client.close();
                    continue;
                }
            }
            // Idle: wait for work, for the rate to let the next message go, or for the idle
            // timeout to send QUIT.
            let idle_deadline = client.poll_timeout();
            let wake = pool.signal.wait();
            let mut nap = RECHECK.min(until(idle_deadline));
            if let Some(at) = held_until {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            let sleep = monoio::time::sleep(nap);
            monoio::select! {
                _ = wake => {},
                _ = sleep => client.handle_timeout(Instant::now()),
            }
            continue;
        }
        // The core's watchdog interrupts this read at the client's deadline, or on abort.
        let (res, b) = conn.read(&watch, rbuf, READ_SPARE, client.poll_timeout()).await;
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
async fn salvage<S: AsyncWriteRent + CancelableAsyncReadRent>(
    conn: &mut Conn<S>,
    watch: &crate::rt::Watch,
    client: &mut Client<Meta>,
    mut rbuf: Vec<u8>,
) -> Vec<u8> {
    let deadline = Instant::now() + SALVAGE;
    while !client.is_closed() {
        let (res, b) = conn.read(watch, rbuf, READ_SPARE, Some(deadline)).await;
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
