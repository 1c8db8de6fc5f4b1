//! One core's share of the engine: a dispatcher that moves jobs from the core's queue into
//! per-destination pools, and for each pool as many connection slots as the core's share of the
//! destination's connection limit. Everything here is owned by one thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;

use super::idle::IdleSessions;
use super::job::{Destination, Job, Payload, instant_at, nanos_since_epoch};
use super::outcome::{self, Outcome, Via};
use super::policy::{AfterFailure, Bounds, ConnectionPolicy, PolicyRules, Proven, ReconnectBackoff, Sight};
use super::retry::{Deferral, Verdict};
use super::shaping::{FLEET_RETRY, ShapingEvent};
use super::signal::Signal;
use super::stats::{Metric, Stats};
use super::{EngineConfig, Progress, RunState, session};
use crate::hash::FxMap;
use crate::proto::Reply;
use crate::proto::client::{Completed, Disposition, Envelope, Message, SessionError};
use crate::rng::Rng;
use crate::rt::Watchdog;
use crate::tls::{Conn, TlsPolicy};

/// How long an idle dispatcher sleeps before looking at its queue again. Queues are polled:
/// crossbeam's are not async, and monoio has no cross-thread wake-up without its sync feature.
const QUEUE_POLL: Duration = Duration::from_micros(200);
/// How often a core publishes its progress counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Precision of reply timeouts: how often the watchdog looks for expired reads.
const WATCHDOG_TICK: Duration = Duration::from_millis(10);
/// Longest wait to hand close_notify to the kernel at the end of a TLS session.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);
/// How long a reading of the wall clock serves for messages' Date (see `Core::wall`).
const WALL_EVERY: Duration = Duration::from_secs(1);
/// How long a pool with no slot and no job is kept before it is retired (see
/// `Core::retire_idle`): long enough that a destination between two bursts keeps its
/// connection target, short enough that a campaign to many domains does not pile them up.
const POOL_LINGER: Duration = Duration::from_secs(2);
/// Pool backlogs' worth of jobs a core holds waiting for sessions, over all its pools.
const HOLD_BACKLOGS: usize = 8;
/// Sessions a core keeps open with nothing to send (see [`IdleSessions`]).
pub const IDLE_SESSIONS: usize = 256;

/// Bookkeeping that travels with a message through a session and comes back with its outcome.
#[derive(Debug)]
pub struct Meta {
    pub id: u64,
    pub destination: Arc<Destination>,
    pub due: Instant,
    /// When this attempt was handed to a session.
    pub dispatched: Instant,
    pub attempts: u32,
    /// A retry of some recipients of an already-counted message: only recipient totals change.
    pub partial: bool,
}

impl Meta {
    /// The outcome head of a job that was never sent: no connection, no attempt counted.
    fn unsent_head(&self) -> outcome::Head<'_> {
        outcome::Head {
            id: self.id,
            destination: &self.destination,
            via: None,
            attempts: self.attempts,
            due: self.due,
        }
    }

    pub fn attempt(job: &Job, now: Instant) -> Meta {
        Meta {
            id: job.id,
            destination: Arc::clone(&job.destination),
            due: job.due,
            dispatched: now,
            attempts: job.attempts,
            partial: job.partial,
        }
    }
}

/// This core's view of one destination, created when a job for it arrives and retired when it
/// has had no job and no connection for [`POOL_LINGER`].
pub struct Pool {
    pub destination: Arc<Destination>,
    pending: RefCell<VecDeque<Job>>,
    /// Jobs waiting in all of the core's pools (shared by them): whether the core is idle
    /// without looking at every pool.
    waiting: Rc<Cell<usize>>,
    /// Slot tasks alive: each opens and runs connections while there is work the open ones do
    /// not cover, and ends when there is none (see [`Core::staff`]).
    slots: Cell<usize>,
    /// When the last slot ended, if none is alive: the pool is retired after [`POOL_LINGER`].
    idle_since: Cell<Option<Instant>>,
    /// In the core's list of pools waiting for a slot.
    starved: Cell<bool>,
    /// Jobs arrived, or the run is draining.
    pub signal: Signal,
    /// Connections open (or being opened) by this core's slots.
    open: Cell<usize>,
    /// How many connections to keep, and what a failed one means (its share of the
    /// destination's limit is its number of slots).
    policy: RefCell<ConnectionPolicy>,
    /// The server gives this core no connection while other cores hold its sessions: jobs go
    /// back to the producer for the other cores (see `Core::return_jobs`).
    pub blocked: Cell<bool>,
    /// The core owning the pool, the backlog it holds before it is full, and whether it is
    /// (published on the destination for the producer; cleared at half the backlog).
    core: usize,
    backlog: usize,
    full: Cell<bool>,
    /// The run, whose producer a pool taking jobs again wakes.
    run: Arc<RunState>,
}

impl Pool {
    fn new(
        destination: Arc<Destination>,
        policy: ConnectionPolicy,
        core: usize,
        backlog: usize,
        run: Arc<RunState>,
        waiting: Rc<Cell<usize>>,
    ) -> Self {
        Pool {
            run,
            core,
            backlog: backlog.max(1),
            full: Cell::new(false),
            destination,
            pending: RefCell::default(),
            waiting,
            slots: Cell::new(0),
            idle_since: Cell::new(None),
            starved: Cell::new(false),
            signal: Signal::default(),
            open: Cell::new(0),
            policy: RefCell::new(policy),
            blocked: Cell::new(false),
        }
    }

    /// What the pool's policy sees of its destination now.
    fn sight(&self) -> Sight {
        let health = &self.destination.health;
        Sight { open: self.open.get(), established: health.established(), cap: health.cap() }
    }

    fn share(&self) -> usize {
        self.policy.borrow().share()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.borrow().is_empty()
    }

    fn pending_len(&self) -> usize {
        self.pending.borrow().len()
    }

    /// The next job for connection `conn`, preferring one whose last attempt was elsewhere.
    pub fn pop_for(&self, conn: u64) -> Option<Job> {
        let mut pending = self.pending.borrow_mut();
        let job = match (self.open.get() > 1)
            .then(|| pending.iter().take(8).position(|j| j.attempts == 0 || j.last_conn != conn))
            .flatten()
        {
            Some(i) => pending.remove(i),
            None => pending.pop_front(),
        };
        if job.is_some() {
            self.waiting.set(self.waiting.get() - 1);
        }
        if self.full.get() && pending.len() <= self.backlog / 2 {
            self.set_full(false);
        }
        job
    }

    pub fn push(&self, job: Job) {
        self.pending.borrow_mut().push_back(job);
        self.waiting.set(self.waiting.get() + 1);
        self.signal.notify();
    }

    /// Takes a job from the core's queue; past the backlog the pool says it is full. Wakes
    /// the pool's sessions (only this pool's: a core with thousands of pools must not wake
    /// them all for every job).
    fn take(&self, job: Job) {
        let mut pending = self.pending.borrow_mut();
        pending.push_back(job);
        self.waiting.set(self.waiting.get() + 1);
        if !self.full.get() && pending.len() >= self.backlog {
            self.set_full(true);
        }
        self.signal.notify();
    }

    /// Takes back the first job, to hand it elsewhere.
    fn pop_front(&self) -> Option<Job> {
        let job = self.pending.borrow_mut().pop_front()?;
        self.waiting.set(self.waiting.get() - 1);
        Some(job)
    }

    /// Puts back a job [`Pool::pop_front`] took.
    fn push_front(&self, job: Job) {
        self.pending.borrow_mut().push_front(job);
        self.waiting.set(self.waiting.get() + 1);
    }

    /// Whether a slot has something to do that the open connections do not cover.
    fn uncovered(&self) -> bool {
        self.pending_len() > self.open.get()
    }

    fn set_full(&self, full: bool) {
        self.full.set(full);
        self.destination.health.set_full(self.core, full);
        if !full {
            // The producer may be waiting for this room (it holds this destination's jobs
            // aside meanwhile): at most once per half backlog, so a cheap wake.
            self.run.wake_producer();
        }
    }

    fn take_all(&self) -> Vec<Job> {
        if self.full.get() {
            self.set_full(false);
        }
        let jobs: Vec<Job> = self.pending.borrow_mut().drain(..).collect();
        self.waiting.set(self.waiting.get() - jobs.len());
        jobs
    }
}

pub struct Core {
    pub index: usize,
    pub config: Arc<EngineConfig>,
    pub run: Arc<RunState>,
    pub stats: RefCell<Stats>,
    /// Message latency since the last progress publication.
    interval: RefCell<Histogram<u64>>,
    /// Pools by destination index: those with work, connections, or idle for less than
    /// [`POOL_LINGER`].
    pools: RefCell<FxMap<usize, Rc<Pool>>>,
    /// Pools whose last slot ended, in that order, each with when: retired after
    /// [`POOL_LINGER`] if still idle (see [`Core::retire_idle`]).
    retiring: RefCell<VecDeque<(Instant, Rc<Pool>)>>,
    /// Jobs waiting in the pools, all together.
    waiting: Rc<Cell<usize>>,
    /// The most sessions a capping server allowed, over the pools retired so far.
    retired_peak: Cell<usize>,
    /// Jitter for retry decisions.
    rng: RefCell<Rng>,
    /// What every pool's connection policy decides by.
    rules: PolicyRules,
    /// Sessions open with nothing to send.
    pub idle: IdleSessions,
    /// Slots alive on this core, over all pools (at most `config.sessions_per_core`).
    slots: Cell<usize>,
    /// Pools with work and no slot for it, the core being at its sessions: staffed in this
    /// order as slots end.
    starved: RefCell<VecDeque<Rc<Pool>>>,
    in_flight: Cell<u64>,
    /// Connections open or being opened, over all pools (for metrics).
    connections_open: Cell<u64>,
    conn_seq: Cell<u64>,
    /// Set once the producer is done and this core's queue is empty: idle sessions quit.
    pub draining: Cell<bool>,
    progress: Arc<Progress>,
    /// Where per-recipient outcomes go, when the job source keeps its own books; outcomes the
    /// queue had no room for wait in `held_outcomes` (and hold back new jobs meanwhile).
    outcomes: Option<Arc<ArrayQueue<Outcome>>>,
    held_outcomes: RefCell<VecDeque<Outcome>>,
    pub watchdog: Rc<Watchdog>,
    finished: Rc<Cell<bool>>,
    /// A blocked pool kept jobs the producer's return queue had no room for: retried each turn
    /// of the core's loop until they are all handed back.
    unreturned: Cell<bool>,
    /// A reading of the wall clock and the monotonic instant it was taken at (see
    /// [`Core::wall`]).
    wall: Cell<(Instant, SystemTime)>,
    /// When the warmup ends.
    measure_from: Instant,
}

impl Core {
    pub fn new(
        index: usize,
        config: Arc<EngineConfig>,
        run: Arc<RunState>,
        progress: Arc<Progress>,
        outcomes: Option<Arc<ArrayQueue<Outcome>>>,
        started: Instant,
    ) -> Rc<Core> {
        let measure_from = started + config.warmup;
        // Unbounded sessions (a load test's connections, as asked for) stay open idle too.
        let idle = IdleSessions::new(match config.sessions_per_core {
            usize::MAX => usize::MAX,
            sessions => IDLE_SESSIONS.min(sessions / 2),
        });
        let mut stats = Stats::default();
        stats.measuring = config.warmup.is_zero();
        let rules = PolicyRules {
            probe_interval: config.probe_interval,
            failing_after: config.failing_after,
            tls_fallback: config
                .tls
                .as_ref()
                .is_some_and(|t| t.policy == TlsPolicy::Opportunistic && !t.implicit),
            give_up_on_tls: config.give_up_on_tls,
            ramp: config.ramp_up.map(|ramp| (started, ramp)),
        };
        Rc::new(Core {
            index,
            config,
            run,
            stats: RefCell::new(stats),
            interval: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds")),
            pools: RefCell::default(),
            retiring: RefCell::default(),
            waiting: Rc::default(),
            retired_peak: Cell::new(0),
            rng: RefCell::new(Rng::new(0x5e7_12e7 ^ index as u64)),
            rules,
            idle,
            slots: Cell::new(0),
            starved: RefCell::default(),
            in_flight: Cell::new(0),
            connections_open: Cell::new(0),
            conn_seq: Cell::new((index as u64) << 40),
            draining: Cell::new(false),
            progress,
            outcomes,
            held_outcomes: RefCell::default(),
            watchdog: Watchdog::new(),
            finished: Rc::new(Cell::new(false)),
            unreturned: Cell::new(false),
            wall: Cell::new((started, SystemTime::now())),
            measure_from,
        })
    }

    /// Whether the run is being cut short: sessions abandon what they have.
    pub fn aborting(&self) -> bool {
        self.run.abort.load(Ordering::Relaxed)
    }

    /// Whether the run is halting: nothing new starts, what is in flight finishes.
    pub fn halted(&self) -> bool {
        self.run.halt.load(Ordering::Relaxed)
    }

    pub fn next_conn(&self) -> u64 {
        self.conn_seq.set(self.conn_seq.get() + 1);
        self.conn_seq.get()
    }

    /// The core's share of a destination's connection limit: split evenly, the remainder going
    /// to consecutive cores starting at one chosen by the destination, so small limits spread.
    pub fn share(limit: usize, cores: usize, core: usize, destination: usize) -> usize {
        let base = limit / cores;
        let extra = limit % cores;
        let offset = (core + cores - destination % cores) % cores;
        base + usize::from(offset < extra)
    }

    /// The pool for `destination`, made if it has none (a source's destination indices are
    /// unique among the destinations it has live).
    fn pool(&self, destination: &Arc<Destination>) -> Rc<Pool> {
        let mut pools = self.pools.borrow_mut();
        let i = destination.index;
        if let Some(p) = pools.get(&i).filter(|p| Arc::ptr_eq(&p.destination, destination)) {
            return Rc::clone(p);
        }
        // At least one connection, as the router assumes when it picks cores.
        let limit = Core::share(destination.max_connections.max(1), self.config.threads, self.index, i);
        let health = &destination.health;
        let sight = Sight { open: 0, established: health.established(), cap: health.cap() };
        let mut rules = self.rules;
        if destination.verified_tls.is_some() {
            // The receiver requires TLS: a failed handshake is never answered with plaintext.
            rules.tls_fallback = false;
        }
        let policy = ConnectionPolicy::new(rules, limit, sight, Instant::now());
        let pool = Rc::new(Pool::new(
            Arc::clone(destination),
            policy,
            self.index,
            self.config.pool_backlog,
            Arc::clone(&self.run),
            Rc::clone(&self.waiting),
        ));
        if let Some(old) = pools.insert(i, Rc::clone(&pool)) {
            // An index reused for another destination while the old pool lingered idle.
            self.retired(&old);
        }
        pool
    }

    /// Starts slots for the pool's work the open connections do not cover, up to its share:
    /// a slot per connection that may be needed, rather than a slot per connection allowed
    /// kept for the run (a campaign to many domains would otherwise hold thousands).
    /// At the core's sessions, the pool waits for a slot to end elsewhere.
    fn staff(self: &Rc<Self>, pool: &Rc<Pool>) {
        while pool.slots.get() < pool.share() && pool.slots.get() < pool.pending_len() {
            if self.slots.get() >= self.config.sessions_per_core {
                if !pool.starved.replace(true) {
                    self.starved.borrow_mut().push_back(Rc::clone(pool));
                    // A session kept open for nothing gives its room to this work.
                    self.idle.evict_oldest();
                }
                return;
            }
            self.slots.set(self.slots.get() + 1);
            pool.slots.set(pool.slots.get() + 1);
            pool.idle_since.set(None);
            monoio::spawn(slot(Rc::clone(self), Rc::clone(pool)));
        }
    }

    /// Whether work waits for a session, the core being at its sessions.
    pub fn starving(&self) -> bool {
        !self.starved.borrow().is_empty()
    }

    /// A slot ended: its room goes to the pools waiting for one; the pool lingers once it has
    /// none.
    fn slot_ended(self: &Rc<Self>, pool: &Rc<Pool>) {
        self.slots.set(self.slots.get() - 1);
        pool.slots.set(pool.slots.get() - 1);
        while self.slots.get() < self.config.sessions_per_core {
            let Some(next) = self.starved.borrow_mut().pop_front() else { break };
            next.starved.set(false);
            self.staff(&next);
            self.linger(&next);
        }
        self.linger(pool);
    }

    /// A pool left with no slot (and not waiting for one) is retired if it stays so.
    fn linger(&self, pool: &Rc<Pool>) {
        if pool.slots.get() == 0 && !pool.starved.get() && pool.idle_since.get().is_none() {
            let now = Instant::now();
            pool.idle_since.set(Some(now));
            self.retiring.borrow_mut().push_back((now, Rc::clone(pool)));
        }
    }

    /// Retires the pools idle for [`POOL_LINGER`]: no slot, no job since their last slot ended.
    fn retire_idle(&self, now: Instant) {
        loop {
            let (at, pool) = {
                let mut retiring = self.retiring.borrow_mut();
                match retiring.front() {
                    Some((at, _)) if now.saturating_duration_since(*at) >= POOL_LINGER => {}
                    _ => return,
                }
                let Some(front) = retiring.pop_front() else { return };
                front
            };
            if pool.slots.get() > 0
                || pool.idle_since.get() != Some(at)
                || pool.has_pending()
                || pool.starved.get()
            {
                continue; // busy again (a later entry stands for its next idle spell)
            }
            let mut pools = self.pools.borrow_mut();
            let index = pool.destination.index;
            if pools.get(&index).is_some_and(|p| Rc::ptr_eq(p, &pool)) {
                pools.remove(&index);
                self.retired(&pool);
            }
        }
    }

    /// What a retired pool leaves behind: its marks on the destination, its peak.
    fn retired(&self, pool: &Pool) {
        if pool.blocked.get() {
            pool.destination.health.set_blocked(self.index, false);
        }
        if pool.full.get() {
            pool.destination.health.set_full(self.index, false);
        }
        self.retired_peak.set(self.retired_peak.get().max(pool.destination.health.peak()));
    }

    /// A message finished an attempt: count it, or queue what should be retried.
    pub fn complete(&self, pool: &Pool, done: Completed<Meta>, conn: u64, via: Option<&Via>) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.react_to(&done, via);
        // When the outcome was decided: it may be reported later, once the session is proven
        // in step.
        let now = done.at;
        let attempts = done.user.attempts + 1;
        let recipients = done.message.envelope.recipients.len();
        // Retried here only under an immediate policy, and not once the run is stopping or the
        // destination is given up; a scheduled retry is the job source's (its outcome says so).
        // Asked only when something was deferred: not per message delivered.
        let deferral = Deferral { attempts, born: done.user.due, not_before: None };
        let disposition = done.disposition();
        let deferred = disposition == Disposition::Deferred
            || (0..recipients).any(|i| done.recipient(i).0 == Disposition::Deferred);
        let can_retry = deferred
            && !self.aborting()
            && pool.destination.health.given_up().is_none()
            && self.config.retry.decide(deferral, now, &mut self.rng.borrow_mut()) == Verdict::Now;
        let mut retry = Vec::new();
        {
            let mut stats = self.stats.borrow_mut();
            for i in 0..recipients {
                let disposition = done.recipient(i).0;
                match disposition {
                    Disposition::Deferred if can_retry => {
                        retry.push(i);
                        continue;
                    }
                    Disposition::Delivered => stats.recipients.delivered += 1,
                    Disposition::Deferred => stats.recipients.deferred += 1,
                    Disposition::Bounced => stats.recipients.bounced += 1,
                    // Never retried: the server may have the message already.
                    Disposition::Uncertain => stats.recipients.uncertain += 1,
                }
                if self.outcomes.is_some() {
                    let head = outcome::Head {
                        id: done.user.id,
                        destination: &done.user.destination,
                        via,
                        attempts,
                        due: done.user.due,
                    };
                    self.held_outcomes.borrow_mut().push_back(Outcome::of(&done, i, head));
                }
            }
        }
        self.flush_outcomes();
        let whole_message_retried = disposition == Disposition::Deferred && can_retry;
        if !retry.is_empty() {
            self.stats.borrow_mut().retries += 1;
            let envelope = if retry.len() == recipients {
                Arc::clone(&done.message.envelope)
            } else {
                let rcpts = retry.iter().map(|&i| done.message.envelope.recipients[i].clone()).collect();
                Arc::new(Envelope { sender: done.message.envelope.sender.clone(), recipients: rcpts })
            };
            pool.push(Job {
                id: done.user.id,
                destination: Arc::clone(&done.user.destination),
                message: Payload::Ready(Message { envelope, ..done.message.clone() }),
                due: done.user.due,
                attempts,
                last_conn: conn,
                partial: done.user.partial || !whole_message_retried,
            });
        }
        if done.user.partial || whole_message_retried {
            return;
        }
        let latency = now.saturating_duration_since(done.user.due);
        let mut stats = self.stats.borrow_mut();
        stats.finish(&done, disposition);
        if done.user.due >= self.measure_from {
            if disposition == Disposition::Delivered {
                stats.measured += 1;
                stats.measured_bytes += done.message.len() as u64;
            }
            stats.record_always(Metric::Message, latency);
            stats.record_always(Metric::Transaction, now.saturating_duration_since(done.user.dispatched));
        }
        self.interval.borrow_mut().saturating_record(latency.as_micros().max(1) as u64);
    }

    /// Records the reply latencies a session's client measured.
    pub fn record_latencies<T>(&self, client: &mut crate::proto::Client<T>) {
        let mut stats = self.stats.borrow_mut();
        for (command, latency) in client.take_latencies() {
            if let Some(metric) = Metric::for_reply_to(command) {
                stats.record(metric, latency);
            }
        }
    }

    /// A job was handed to a session at `now`.
    pub fn dispatched(&self, due: Instant, first_attempt: bool, now: Instant) {
        self.in_flight.set(self.in_flight.get() + 1);
        if first_attempt && due >= self.measure_from {
            self.stats.borrow_mut().record_always(Metric::Queue, now.saturating_duration_since(due));
        }
    }

    /// The wall-clock time at `now`, from a reading of the clock at most [`WALL_EVERY`] old:
    /// a message's Date needs seconds, and a clock call per message is a measurable cost.
    fn wall(&self, now: Instant) -> SystemTime {
        let (at, wall) = self.wall.get();
        match now.checked_duration_since(at) {
            Some(since) if since < WALL_EVERY => wall + since,
            _ => {
                let wall = SystemTime::now();
                self.wall.set((now, wall));
                wall
            }
        }
    }

    /// The message of the attempt `meta`, composed now if its source left that to the cores.
    /// `None`: it cannot be composed; its recipients' outcomes say why, and it is done.
    pub fn compose(&self, payload: Payload, meta: &Meta) -> Option<Message> {
        let failed = match payload.compose(self.wall(meta.dispatched)) {
            Ok(message) => return Some(message),
            Err(failed) => failed,
        };
        self.stats.borrow_mut().unsendable += 1;
        if self.outcomes.is_some() {
            let at = Instant::now();
            let mut held = self.held_outcomes.borrow_mut();
            for recipient in failed.recipients {
                held.push_back(Outcome::unsendable(recipient, &failed.reason, meta.unsent_head(), at));
            }
        }
        self.flush_outcomes();
        None
    }

    /// Whether a session may start one more message to the pool's destination at `now`: its
    /// rate, any suspension or slowing, and the run's rate. If not, when to ask again. A
    /// suspended destination's waiting jobs are handed back at once (see [`Core::suspended`]).
    pub fn admit(&self, pool: &Pool, now: Instant) -> Result<(), Instant> {
        let shaping = &pool.destination.shaping;
        if let Err(at) = shaping.admit_message(now) {
            self.suspended(pool, now);
            return Err(at);
        }
        if self.run.rate_interval > 0 {
            let t = nanos_since_epoch(now);
            if let Err(next) = self.run.rate.take(t, self.run.rate_interval) {
                shaping.give_back(now);
                return Err(instant_at(next));
            }
            if let Some(fleet) = &self.run.rate_fleet
                && !fleet.take_message()
            {
                self.run.rate.undo(t, self.run.rate_interval);
                shaping.give_back(now);
                return Err(now + FLEET_RETRY);
            }
        }
        Ok(())
    }

    /// Until when the pool's destination is suspended, if it is. Its waiting jobs are then
    /// handed back unattempted (deferred until the suspension ends, no attempt counted) when
    /// the source keeps its own books; otherwise they wait here.
    pub fn suspended(&self, pool: &Pool, now: Instant) -> Option<Instant> {
        let until = pool.destination.shaping.suspended(now)?;
        if self.outcomes.is_none() || !pool.has_pending() {
            return Some(until);
        }
        let reason = format!(
            "not attempted: {} is suspended for {}s by a shaping reaction",
            pool.destination.name,
            until.saturating_duration_since(now).as_secs().max(1)
        );
        for job in pool.take_all() {
            let meta = Meta::attempt(&job, now);
            self.stats.borrow_mut().suspended += 1;
            let mut recipients = job.message.recipients();
            if recipients.len() == 1 {
                // Handed back as it is: rendered and signed only when it is finally sent.
                let (rcpt, payload) = (recipients.remove(0), job.message);
                let o = Outcome::suspended(rcpt, payload, meta.unsent_head(), &reason, until);
                self.held_outcomes.borrow_mut().push_back(o);
                continue;
            }
            // Several recipients are retried one by one: the message is split.
            let Some(message) = self.compose(job.message, &meta) else { continue };
            for rcpt in recipients {
                let retry = Payload::Ready(outcome::alone(&message, &rcpt));
                let o = Outcome::suspended(rcpt, retry, meta.unsent_head(), &reason, until);
                self.held_outcomes.borrow_mut().push_back(o);
            }
        }
        self.flush_outcomes();
        Some(until)
    }

    /// Applies the first reaction matching `reply` (a refusal from the destination's `host`),
    /// and reports the destination as suspended or slowed when that is new.
    pub fn react(&self, destination: &Arc<Destination>, reply: &Reply, host: Option<&Arc<str>>) {
        let shaped_by = destination.shaped_by.as_deref();
        let Some(rule) = self.config.reactions.as_ref().and_then(|r| r.find(reply, shaped_by)) else {
            return;
        };
        let now = Instant::now();
        let until = now + rule.duration;
        if !destination.shaping.apply(&rule.action, now, until) {
            return;
        }
        let event = ShapingEvent {
            destination: Arc::clone(destination),
            rule: Arc::clone(&rule.name),
            action: rule.action.clone(),
            at: now,
            until,
            reply: reply.clone(),
            host: host.cloned(),
        };
        if self.run.events.push(event).is_err() {
            self.run.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reactions to the refusals among a finished transaction's replies (each distinct reply
    /// once).
    fn react_to(&self, done: &Completed<Meta>, via: Option<&Via>) {
        if self.config.reactions.as_ref().is_none_or(|r| r.is_empty()) {
            return;
        }
        let mut last: Option<&Reply> = None;
        for i in 0..done.message.envelope.recipients.len() {
            let (disposition, reply) = done.recipient(i);
            let Some(reply) = reply.filter(|_| disposition != Disposition::Delivered) else { continue };
            if last.is_some_and(|l| std::ptr::eq(l, reply)) {
                continue;
            }
            last = Some(reply);
            self.react(&done.user.destination, reply, via.and_then(|v| v.host.as_ref()));
        }
    }

    /// Counts jobs that never got a session (connect failures) as an attempt each.
    pub fn fail_pending(&self, pool: &Pool, error: &SessionError) {
        for job in pool.take_all() {
            let meta = Meta::attempt(&job, Instant::now());
            let Some(message) = self.compose(job.message, &meta) else { continue };
            self.in_flight.set(self.in_flight.get() + 1);
            let done = Completed {
                user: meta,
                message,
                result: crate::proto::client::TxnResult::Aborted(error.clone()),
                rejected: Vec::new(),
                at: Instant::now(),
            };
            self.complete(pool, done, 0, None);
        }
    }

    fn publish(&self) {
        let stats = self.stats.borrow();
        let p = &self.progress;
        p.delivered.store(stats.delivered, Ordering::Relaxed);
        p.deferred.store(stats.deferred, Ordering::Relaxed);
        p.bounced.store(stats.bounced, Ordering::Relaxed);
        p.in_flight.store(self.in_flight.get(), Ordering::Relaxed);
        p.connect_failures.store(stats.connect_failures, Ordering::Relaxed);
        p.session_errors.store(stats.session_errors.values().sum(), Ordering::Relaxed);
        p.uncertain.store(stats.uncertain, Ordering::Relaxed);
        p.connections_open.store(self.connections_open.get(), Ordering::Relaxed);
        p.connections.store(stats.connections, Ordering::Relaxed);
        p.tls_full.store(stats.tls.full, Ordering::Relaxed);
        p.tls_resumed.store(stats.tls.resumed, Ordering::Relaxed);
        p.tls_failed.store(stats.tls.failed, Ordering::Relaxed);
        p.tls_plaintext.store(stats.tls.plaintext, Ordering::Relaxed);
        let mut interval = self.interval.borrow_mut();
        let p99 = if interval.is_empty() { 0 } else { interval.value_at_quantile(0.99) };
        p.p99_micros.store(p99, Ordering::Relaxed);
        interval.reset();
    }

    /// Hands held outcomes to the queue, as many as it takes. True when none are left held.
    fn flush_outcomes(&self) -> bool {
        let Some(queue) = &self.outcomes else { return true };
        let mut held = self.held_outcomes.borrow_mut();
        while let Some(o) = held.pop_front() {
            if let Err(o) = queue.push(o) {
                held.push_front(o);
                return false;
            }
        }
        true
    }

    fn pools_idle(&self) -> bool {
        self.in_flight.get() == 0 && self.waiting.get() == 0
    }

    /// Wakes every pool's sessions and slots: only when the run changes state (draining,
    /// halting, aborting), never per job.
    fn notify_all(&self) {
        for p in self.pools.borrow().values() {
            p.signal.notify();
        }
    }
}

/// The core's main task: moves jobs from its queue into pools until the producer is done and
/// everything sent has an outcome, then lets the sessions quit.
pub async fn run(core: Rc<Core>, queue: Arc<ArrayQueue<Job>>) -> Stats {
    let finished = Rc::clone(&core.finished);
    monoio::spawn(Rc::clone(&core.watchdog).run(WATCHDOG_TICK, move || finished.get()));
    let cap = core.config.pool_backlog.max(1);
    // All the pools together hold at most this many jobs waiting for a session: past it, jobs
    // stay in the queue (backpressure), however many destinations they are for.
    let hold = HOLD_BACKLOGS * cap;
    // Without parking, a full pool holds up the queue (a closed loop's backpressure); with it,
    // the pool takes what is queued already and says it is full, so the producer sets the
    // destination's further jobs aside and the queue keeps moving for the others.
    let parking = core.config.park > 0;
    let mut held: Option<Job> = None;
    let mut last_publish = Instant::now();
    // Whether the sessions have been told the run is halting.
    let mut told_halt = false;
    // Whether the core had nothing in flight and nothing to send at its last look.
    let mut was_idle = true;
    loop {
        if core.aborting() {
            core.watchdog.shut_down();
            break;
        }
        // Outcomes the reader has not taken hold new jobs back: backpressure from the log.
        let outcomes_flowing = core.flush_outcomes();
        let halted = core.halted();
        if halted && !told_halt {
            core.notify_all();
            told_halt = true;
        }
        let taking = outcomes_flowing && !halted;
        while let Some(job) =
            if taking && core.waiting.get() < hold { held.take().or_else(|| queue.pop()) } else { None }
        {
            let pool = core.pool(&job.destination);
            if !parking && pool.pending_len() >= cap {
                held = Some(job);
                break;
            }
            pool.take(job);
            if pool.blocked.get() {
                core.hand_on_or_unblock(&pool);
            }
            core.staff(&pool);
        }
        if core.unreturned.get() {
            core.return_leftovers();
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            core.publish();
            last_publish = Instant::now();
            core.retire_idle(last_publish);
            if !core.stats.borrow().measuring && last_publish >= core.measure_from {
                core.stats.borrow_mut().measuring = true;
            }
        }
        // (`pools_idle` looks at the pools only once nothing is in flight.)
        let idle = held.is_none() && queue.is_empty() && core.pools_idle();
        if idle && !was_idle && outcomes_flowing {
            // Everything it had is done and its outcomes handed over: have them read now.
            if let Some(reader) = core.run.outcome_reader.get() {
                reader.unpark();
            }
        }
        was_idle = idle;
        let producer_done = core.run.producer_done.load(Ordering::Acquire);
        if producer_done && idle && outcomes_flowing {
            break;
        }
        if halted && core.in_flight.get() == 0 && outcomes_flowing {
            break;
        }
        monoio::time::sleep(QUEUE_POLL).await;
    }
    // Quit idle sessions (or abandon busy ones, when aborting) and wait for every slot to end.
    core.draining.set(true);
    core.notify_all();
    while core.pools.borrow().values().any(|p| p.open.get() > 0) {
        core.notify_all();
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every outcome reaches the reader, however long it takes: the reader drains until the
    // engine has finished, even after a failure of its own.
    while !core.flush_outcomes() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    // Jobs taken from the queue but never attempted because the run was cut short (what is
    // left in the queue itself is counted once every thread has stopped).
    let unsent = u64::from(held.is_some()) + core.waiting.get() as u64;
    core.publish();
    core.finished.set(true);
    let mut stats = core.stats.borrow().clone();
    stats.unsent += unsent;
    if stats.cap_refusals > 0 {
        // What the server allowed: the most sessions it kept at once. (At a refusal, sessions it
        // had just accepted may still be in their greeting, so the count then is too low.)
        let peak = core.pools.borrow().values().map(|p| p.destination.health.peak()).max();
        stats.connection_cap = peak.unwrap_or(0).max(core.retired_peak.get()) as u64;
    }
    stats
}

/// One connection's worth of a pool: connects when there is work and the pool's connection
/// target allows, runs a session, and after one that carried no transaction reconnects with
/// backoff. Ends when the pool has no work the open connections do not cover, or the core
/// drains.
async fn slot(core: Rc<Core>, pool: Rc<Pool>) {
    run_slot(&core, &pool).await;
    core.slot_ended(&pool);
}

async fn run_slot(core: &Rc<Core>, pool: &Rc<Pool>) {
    let config = &core.config;
    let mut backoff = ReconnectBackoff::new(config.reconnect_backoff, config.reconnect_backoff_max);
    loop {
        if let Some(until) = core.suspended(pool, Instant::now()) {
            // Suspended: jobs arriving meanwhile are handed back as they come (or wait here,
            // when the source keeps no books).
            if core.draining.get() || core.aborting() || core.halted() || !pool.has_pending() {
                return;
            }
            let rest = until.saturating_duration_since(Instant::now());
            monoio::select! {
                _ = pool.signal.wait() => {},
                _ = monoio::time::sleep(rest) => {},
            }
            continue;
        }
        // A new connection only for work the open ones do not cover: one message to a domain
        // opens one connection, not the destination's whole budget; and while the open ones
        // are held back by the destination's rate, none. Without such work the slot ends
        // (`Core::staff` starts another when some comes).
        loop {
            if core.draining.get() || core.aborting() || core.halted() || !pool.uncovered() {
                return;
            }
            let now = Instant::now();
            let under_target = pool.open.get() < core.connection_target(pool, now);
            if under_target && (pool.open.get() == 0 || pool.destination.shaping.message_ready(now)) {
                break;
            }
            // Over the target or the rate: look again when a probe may be due. (Held back by
            // its fleet leases, a destination asks for more, and looks again as soon as they
            // may have come.)
            let mut look = config.probe_interval.min(Duration::from_millis(500));
            if !under_target && let Some(soon) = pool.destination.shaping.want_connection() {
                look = look.min(soon);
            }
            monoio::time::sleep(look).await;
            if pool.destination.shaping.suspended(Instant::now()).is_some() {
                break;
            }
        }
        if core.aborting() {
            return;
        }
        if pool.destination.shaping.suspended(Instant::now()).is_some() {
            continue;
        }
        if let Err(at) = pool.destination.shaping.admit_connection(Instant::now()) {
            // The destination's connection rate.
            monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
            continue;
        }
        if let Some(error) = pool.destination.health.given_up() {
            // Jobs that arrive after the destination was given up end without a connection.
            let error = error.clone();
            core.fail_pending(pool, &error);
            continue;
        }
        pool.open.set(pool.open.get() + 1);
        core.connections_open.set(core.connections_open.get() + 1);
        pool.destination.shaping.connection_opened();
        let attempt = connect_and_run(core, pool).await;
        pool.destination.shaping.connection_closed(attempt.shed);
        core.connections_open.set(core.connections_open.get() - 1);
        pool.open.set(pool.open.get() - 1);
        // Slots holding back because this connection covered the pending work look again.
        pool.signal.notify();
        if attempt.answered {
            pool.destination.health.succeeded();
        }
        if attempt.carried {
            backoff.reset();
            continue;
        }
        let charged = match attempt.failure.filter(|_| pool.has_pending()) {
            Some(error) => core.session_failed_early(pool, &error).then_some(error),
            None => None,
        };
        let delay = backoff.next_delay();
        match charged {
            Some(error) => core.fail_arrivals(pool, &error, Instant::now() + delay).await,
            None => monoio::time::sleep(delay).await,
        }
    }
}

/// What a connection attempt came to.
struct Attempt {
    /// The session took at least one job.
    carried: bool,
    /// A transaction got a final reply (the destination works).
    answered: bool,
    /// Why it ended without carrying anything, if it did.
    failure: Option<SessionError>,
    /// Its session ended to give the connection's fleet lease back.
    shed: bool,
}

impl Core {
    /// How many connections this core may have open to the pool's destination now (see
    /// [`ConnectionPolicy::target`]).
    fn connection_target(&self, pool: &Pool, now: Instant) -> usize {
        let bounds = Bounds {
            // A reaction's limit, split across cores like the configured one.
            reaction: pool
                .destination
                .shaping
                .connection_cap(now)
                .map(|cap| Core::share(cap, self.config.threads, self.index, pool.destination.index)),
            // Jobs the producer no longer takes back (see `return_jobs`) are sent only from here.
            stranded: pool.has_pending() && self.run.closing.load(Ordering::SeqCst),
        };
        pool.policy.borrow_mut().target(now, pool.sight(), bounds)
    }

    /// Hands a blocked pool's jobs back to the producer, which routes them to other cores.
    /// Only while the producer still reads them: it sets `closing`, then waits for `returning`
    /// to drop to zero before its last look, so no job can be handed to a producer that is gone
    /// (those stay here, sent when this core gets a connection).
    pub fn return_jobs(&self, pool: &Pool) {
        let run = &self.run;
        run.returning.fetch_add(1, Ordering::SeqCst);
        if !run.closing.load(Ordering::SeqCst) {
            while let Some(job) = pool.pop_front() {
                if let Err(job) = run.returns.push(job) {
                    // The producer is behind (waiting on a full queue): the rest go later,
                    // from the core's loop. Nothing else would move them while this pool is
                    // blocked, as the producer routes no new jobs here (regression: they
                    // waited for the end of the run).
                    pool.push_front(job);
                    self.unreturned.set(true);
                    break;
                }
            }
        }
        run.returning.fetch_sub(1, Ordering::SeqCst);
    }

    /// Retries handing back what blocked pools kept (see `unreturned`).
    /// Those the producer no longer takes (it is closing) stay, and get a slot to be sent from
    /// here.
    fn return_leftovers(self: &Rc<Self>) {
        self.unreturned.set(false);
        let blocked: Vec<Rc<Pool>> =
            self.pools.borrow().values().filter(|p| p.blocked.get() && p.has_pending()).cloned().collect();
        for pool in &blocked {
            self.hand_on_or_unblock(pool);
            self.staff(pool);
        }
    }

    /// Whether another core takes the destination's jobs and is not blocked from it: only then
    /// may a blocked pool hand its jobs on. Otherwise (one core, or every core blocked, as
    /// when the sessions counted established on the others are dying with their server) the
    /// router hands them straight back (it offers blocked cores when all are), and they would
    /// go round between this core and the producer, no pool connecting, for ever.
    fn others_can_carry(&self, pool: &Pool) -> bool {
        let d = &pool.destination;
        let (limit, cores) = (d.max_connections.max(1), self.config.threads);
        (0..cores)
            .any(|c| c != self.index && Core::share(limit, cores, c, d.index) > 0 && !d.health.is_blocked(c))
    }

    /// A job came for a blocked pool: handed on if another core can carry it, else the pool
    /// is unblocked and tries again itself.
    fn hand_on_or_unblock(&self, pool: &Pool) {
        if self.others_can_carry(pool) {
            self.return_jobs(pool);
        } else {
            self.unblock(pool);
        }
    }

    /// A session of this core to the pool's destination got through: it is not blocked.
    pub fn unblock(&self, pool: &Pool) {
        if pool.blocked.replace(false) {
            pool.destination.health.set_blocked(self.index, false);
        }
    }

    /// Until `until` (the next connection attempt), fails every job that arrives for a
    /// destination whose waiting jobs were just charged for its failure, as it arrives: the
    /// destination is down, and holding them for the next attempt would let them pile up to
    /// the pool's backlog and hold the producer, and so every other destination, back (a
    /// campaign or spool with a million messages for a dead MX host is deferred at the rate
    /// they come, not a backlog per reconnect). Postfix does the same with a dead destination
    /// ("delivery temporarily suspended").
    async fn fail_arrivals(&self, pool: &Pool, error: &SessionError, until: Instant) {
        loop {
            let rest = until.saturating_duration_since(Instant::now());
            if rest.is_zero() || self.draining.get() || self.aborting() || self.halted() {
                return;
            }
            monoio::select! {
                _ = pool.signal.wait() => self.fail_pending(pool, error),
                _ = monoio::time::sleep(rest) => return,
            }
        }
    }

    /// A connection or session failed before carrying a transaction while jobs were waiting:
    /// applies what the pool's policy makes of it ([`ConnectionPolicy::failed_early`]).
    /// Whether the waiting jobs were charged for it (the destination has been failing long
    /// enough to count attempts).
    fn session_failed_early(&self, pool: &Pool, error: &SessionError) -> bool {
        let now = Instant::now();
        let health = &pool.destination.health;
        let decision =
            pool.policy.borrow_mut().failed_early(error, pool.sight(), health.failing_since(), now);
        match decision {
            AfterFailure::Persistent { give_up } => {
                if give_up {
                    health.give_up(error);
                }
                self.fail_pending(pool, error);
                true
            }
            AfterFailure::Capped { cap, blocked } => {
                health.set_cap(cap);
                self.stats.borrow_mut().cap_refusals += 1;
                if blocked && self.others_can_carry(pool) {
                    // Every session the server allows is on other cores: let them carry our
                    // jobs.
                    pool.blocked.set(true);
                    health.set_blocked(self.index, true);
                    self.return_jobs(pool);
                }
                false
            }
            AfterFailure::Failing { charge } => {
                health.mark_failing(now);
                if charge {
                    self.fail_pending(pool, error);
                }
                charge
            }
            AfterFailure::FallBackToPlaintext => {
                health.fall_back_to_plaintext(self.index);
                false
            }
        }
    }

    /// A session to the destination became ready: refusals just before it may prove a cap
    /// ([`ConnectionPolicy::session_ready`]).
    pub fn prove_refusals(&self, pool: &Pool) {
        let proven = pool.policy.borrow_mut().session_ready(pool.sight(), Instant::now());
        if let Some(Proven { refusals, cap }) = proven {
            pool.destination.health.set_cap(cap);
            self.stats.borrow_mut().cap_refusals += refusals;
        }
    }
}

async fn connect_and_run(core: &Rc<Core>, pool: &Rc<Pool>) -> Attempt {
    let started = Instant::now();
    let mut last_error = None;
    let order = pool.destination.connect_order(pool.destination.health.next_turn());
    for &addr in &order {
        let connecting = crate::rt::connect(addr, core.config.source_addr);
        let attempt = monoio::time::timeout(core.config.connect_timeout, connecting).await;
        match attempt {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                {
                    let mut stats = core.stats.borrow_mut();
                    stats.connections += 1;
                    stats.record(Metric::Connect, started.elapsed());
                }
                let id = core.next_conn();
                let mut conn = Conn::new(stream);
                if core.config.tls.as_ref().is_some_and(|t| t.implicit) {
                    let watch = core.watchdog.watch();
                    if let Err(error) = session::handshake(&mut conn, core, pool, addr, &watch).await {
                        core.stats.borrow_mut().session_failed(&error);
                        return Attempt {
                            carried: false,
                            answered: false,
                            failure: Some(error),
                            shed: false,
                        };
                    }
                }
                let end = session::run(&mut conn, core, pool, addr, id).await;
                if let Some(reply) = end.error.as_ref().and_then(SessionError::reply) {
                    core.react(&pool.destination, reply, pool.destination.host_of(addr));
                }
                if conn.tls().is_some() && end.error.is_none() {
                    // close_notify, so the server sees a clean end; best effort, never waited on long.
                    let _ = monoio::time::timeout(CLOSE_NOTIFY_WAIT, conn.shutdown()).await;
                }
                if !end.carried && end.error.as_ref().is_some_and(SessionError::refused_service) {
                    // A server that refuses service at the greeting (or hangs up before it) is
                    // one host of several: try the next address, as RFC 5321 §5 asks of MX
                    // hosts, before counting the destination as failing.
                    last_error = end.error.map(|e| format!("{addr}: {e}"));
                    continue;
                }
                // A session that ended to give its lease back failed at nothing.
                let failure = (!end.carried && !end.shed).then(|| {
                    // A server closing before we could hand it anything (a 421 right after
                    // EHLO) has not served us either.
                    end.error.unwrap_or(SessionError::Closed { command: None })
                });
                return Attempt { carried: end.carried, answered: end.answered, failure, shed: end.shed };
            }
            Ok(Err(e)) => last_error = Some(format!("{addr}: {e}")),
            Err(_) => {
                last_error = Some(format!("{addr}: no answer within {:?}", core.config.connect_timeout))
            }
        }
    }
    let message = last_error.unwrap_or_else(|| "destination has no addresses".into());
    let error = SessionError::Connect { waited: started.elapsed(), message };
    {
        let mut stats = core.stats.borrow_mut();
        stats.connect_failures += 1;
        stats.session_failed(&error);
        stats.last_connect_error = Some(error.to_string());
    }
    Attempt { carried: false, answered: false, failure: Some(error), shed: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_split_holds_globally() {
        for cores in 1..=8 {
            for limit in 0..=20 {
                for dest in 0..5 {
                    let shares: Vec<usize> = (0..cores).map(|c| Core::share(limit, cores, c, dest)).collect();
                    assert_eq!(shares.iter().sum::<usize>(), limit, "cores {cores} limit {limit}");
                    let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                    assert!(max - min <= 1, "even split: {shares:?}");
                }
            }
        }
        // Limit 1 on 4 cores: different destinations land on different cores.
        let owner = |dest| (0..4).find(|&c| Core::share(1, 4, c, dest) == 1).unwrap();
        assert_ne!(owner(0), owner(1));
    }

    #[test]
    fn a_full_pool_wakes_the_producer_when_it_takes_jobs_again() {
        let d = Arc::new(Destination::new(0, "d", vec![], 10));
        let config =
            EngineConfig::new(crate::proto::ClientConfig::new(crate::proto::Domain::new("t.test").unwrap()));
        let run = Arc::new(RunState::new(&config));
        // This thread plays the producer.
        run.producer.set(std::thread::current()).unwrap();
        let policy = ConnectionPolicy::new(test_core().rules, 1, Sight::default(), Instant::now());
        let pool = Pool::new(Arc::clone(&d), policy, 0, 4, Arc::clone(&run), Rc::default());
        for id in 0..4 {
            pool.take(job_for(&d, id));
        }
        assert!(d.health.is_full(0));
        assert!(pool.pop_for(1).is_some());
        assert!(d.health.is_full(0), "3 of 4: still full");
        assert!(pool.pop_for(1).is_some());
        assert!(!d.health.is_full(0), "half the backlog: room again");
        let t0 = Instant::now();
        std::thread::park_timeout(Duration::from_secs(10));
        assert!(t0.elapsed() < Duration::from_secs(5), "the producer was woken");
    }

    fn test_core() -> Rc<Core> {
        let config =
            EngineConfig::new(crate::proto::ClientConfig::new(crate::proto::Domain::new("t.test").unwrap()));
        let run = Arc::new(RunState::new(&config));
        Core::new(0, Arc::new(config), run, Arc::default(), None, Instant::now())
    }

    fn job_for(d: &Arc<Destination>, id: u64) -> Job {
        Job {
            id,
            destination: Arc::clone(d),
            message: crate::engine::Payload::Ready(crate::proto::client::Message::new(
                Arc::new(crate::proto::client::Envelope { sender: None, recipients: vec![] }),
                crate::proto::Body::new(b"x\r\n"),
            )),
            due: Instant::now(),
            attempts: 0,
            last_conn: 0,
            partial: false,
        }
    }

    #[test]
    fn a_pool_idle_past_its_linger_is_retired_and_one_with_work_is_kept() {
        let core = test_core();
        let (a, b) =
            (Arc::new(Destination::new(0, "a", vec![], 2)), Arc::new(Destination::new(1, "b", vec![], 2)));
        let (pa, pb) = (core.pool(&a), core.pool(&b));
        assert!(Rc::ptr_eq(&pa, &core.pool(&a)), "one pool per destination");
        // Both lose their last slot; b gets a job meanwhile (its slot not started here).
        core.linger(&pa);
        core.linger(&pb);
        pb.take(job_for(&b, 1));
        let t0 = pa.idle_since.get().unwrap();
        core.retire_idle(t0 + POOL_LINGER / 2);
        assert_eq!(core.pools.borrow().len(), 2, "not idle long enough");
        core.retire_idle(t0 + 2 * POOL_LINGER);
        assert!(!core.pools.borrow().contains_key(&0), "a is retired");
        assert!(core.pools.borrow().contains_key(&1), "b has a job waiting");
        assert!(core.retiring.borrow().is_empty());
        // A job for a retired destination gets a new pool.
        assert!(!Rc::ptr_eq(&pa, &core.pool(&a)));
    }

    #[test]
    fn a_retired_pools_marks_on_its_destination_are_cleared() {
        let core = test_core();
        let d = Arc::new(Destination::new(0, "d", vec![], 2));
        let pool = core.pool(&d);
        pool.blocked.set(true);
        d.health.set_blocked(0, true);
        d.health.session_ready();
        d.health.session_ended();
        core.linger(&pool);
        core.retire_idle(pool.idle_since.get().unwrap() + POOL_LINGER);
        assert!(!d.health.is_blocked(0), "the producer routes to this core again");
        assert_eq!(core.retired_peak.get(), 1, "the peak outlives the pool");
    }

    /// A blocked pool hands its jobs on only while another core can carry them; when none can
    /// (one core, or all blocked) it is unblocked and keeps them, to connect itself.
    #[test]
    fn a_blocked_pool_keeps_its_jobs_when_no_other_core_can_carry_them() {
        let core = test_core();
        let threads = core.config.threads;
        let d = Arc::new(Destination::new(0, "d", vec![], 4 * threads));
        let pool = core.pool(&d);
        pool.blocked.set(true);
        d.health.set_blocked(0, true);
        for c in 1..threads {
            d.health.set_blocked(c, true);
        }
        pool.take(job_for(&d, 1));
        core.hand_on_or_unblock(&pool);
        assert!(pool.has_pending(), "kept, not sent round to the producer");
        assert!(!pool.blocked.get() && !d.health.is_blocked(0), "unblocked, so it connects");
        if threads > 1 {
            // Another core free of the block: the job goes to it.
            pool.blocked.set(true);
            d.health.set_blocked(0, true);
            d.health.set_blocked(1, false);
            core.hand_on_or_unblock(&pool);
            assert!(!pool.has_pending(), "handed to the producer for core 1");
        }
    }

    #[test]
    fn an_index_reused_by_another_destination_gets_its_own_pool() {
        let core = test_core();
        let old = Arc::new(Destination::new(7, "old", vec![], 1));
        let new = Arc::new(Destination::new(7, "new", vec![], 1));
        let p_old = core.pool(&old);
        let p_new = core.pool(&new);
        assert!(!Rc::ptr_eq(&p_old, &p_new));
        assert!(Arc::ptr_eq(&core.pool(&new).destination, &new));
    }

    #[test]
    fn a_new_pool_for_a_capped_destination_starts_within_the_cap() {
        let core = test_core();
        let d = Arc::new(Destination::new(0, "d", vec![], 10));
        // The default config runs on this machine's cores: the pool's share is part of 10.
        let share = core.pool(&d).share();
        let d2 = Arc::new(Destination::new(1, "d2", vec![], 10));
        d2.health.set_cap(2);
        d2.health.session_ready(); // one of the two is held elsewhere
        let now = Instant::now();
        assert_eq!(core.connection_target(&core.pool(&d2), now), share.min(1));
        assert_eq!(core.connection_target(&core.pool(&d), now), share);
    }
}
