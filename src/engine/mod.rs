//! The sending engine: thread-per-core, pooled, pipelined. Job sources (`bench`, later `send`)
//! feed it through bounded lock-free queues; each core owns its sessions, pools and statistics.
//!
//! Connection limits per destination hold across cores by splitting: a destination with limit
//! L gets `L / cores` connections on each core, the remainder spread from a core chosen by the
//! destination. The producer routes a destination's jobs only to cores holding part of its
//! budget, so no core needs to ask another for anything while sending.
//!
//! A core whose pool for a destination holds its whole backlog (a slow or rate-limited
//! destination) says so on the destination; the producer then sets that destination's jobs
//! aside (`park`) instead of letting them queue in front of other destinations' jobs.

mod core;
pub mod job;
pub mod outcome;
mod session;
pub mod shaping;
mod signal;
pub mod stats;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

pub use job::{Compose, Destination, Job, JobSource, Next, Payload, Unsendable};
pub use outcome::{Outcome, Via};
pub use shaping::{Action, Limits, Rate, Reaction, Reactions, ShapingEvent};
pub use stats::{METRICS, Metric, Stats};

use crate::proto::ClientConfig;
use crate::rt::{self, Driver};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub threads: usize,
    pub driver: Driver,
    /// Session settings: EHLO name, pipeline depth, messages per connection, timeouts.
    pub client: ClientConfig,
    pub connect_timeout: Duration,
    /// Further attempts for a deferred message or recipient.
    pub retries: u32,
    /// Jobs each core's input queue holds before the producer is held back.
    pub queue_capacity: usize,
    /// Jobs a core takes from its queue into one destination's pool ahead of sending.
    pub pool_backlog: usize,
    /// First wait before reconnecting after a session that carried no transaction; doubles up
    /// to `reconnect_backoff_max`, and starts over after a session that carried one.
    pub reconnect_backoff: Duration,
    pub reconnect_backoff_max: Duration,
    /// A destination is failing once its sessions have failed for this long with none getting
    /// a final reply to a transaction. Only then does a failed connection or session charge an
    /// attempt to every job waiting for the destination; until then only a job's own
    /// transactions do.
    pub failing_after: Duration,
    /// After the server refused a connection while others were open, how long a core waits
    /// before trying one more (additive increase; the decrease is to what the server allowed).
    pub probe_interval: Duration,
    /// Connections grow linearly to their limit over this long (a closed-loop ramp).
    pub ramp_up: Option<Duration>,
    /// Jobs due, and sessions and replies measured, this long after the start are left out of
    /// the latency histograms and the rate (they still count as outcomes).
    pub warmup: Duration,
    /// Local address to connect from.
    pub source_addr: Option<std::net::IpAddr>,
    /// TLS: policy, implicit or STARTTLS, and the client configuration every core shares (so
    /// sessions resume across cores). `None`: plaintext.
    pub tls: Option<crate::tls::ClientTls>,
    /// Hand every recipient's final outcome (and, with `retries` at zero, every deferral) to
    /// the caller through per-core queues (see [`Running::outcomes`]), for a source that keeps
    /// its own books and schedules its own retries.
    pub outcomes: bool,
    /// Jobs the producer may set aside for destinations whose pools are full before it stops
    /// taking jobs from the source. Zero: none; a full pool then holds up its core's queue,
    /// which is what a closed loop measuring latency wants (no hidden buffer).
    pub park: usize,
    /// Messages per unit of time for the whole run, across cores.
    pub rate: Option<Rate>,
    /// Replies that suspend or slow their destination (see [`shaping`]).
    pub reactions: Option<Arc<Reactions>>,
}

impl EngineConfig {
    pub fn new(client: ClientConfig) -> Self {
        EngineConfig {
            threads: rt::default_threads(),
            driver: Driver::Auto,
            client,
            connect_timeout: Duration::from_secs(30),
            retries: 3,
            // Enough to ride out the producer's 1 ms naps at ~500k msg/s on two cores; more
            // would only add queueing to every message's latency in a closed loop.
            queue_capacity: 2048,
            pool_backlog: 512,
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            failing_after: Duration::from_secs(10),
            probe_interval: Duration::from_secs(5),
            ramp_up: None,
            warmup: Duration::ZERO,
            source_addr: None,
            tls: None,
            outcomes: false,
            park: 0,
            rate: None,
            reactions: None,
        }
    }
}

/// Outcomes each core's queue holds before the core holds back new jobs.
const OUTCOME_QUEUE: usize = 8192;

/// Run-wide flags, written rarely (start, end), read by every core.
#[derive(Debug)]
pub struct RunState {
    pub producer_done: AtomicBool,
    /// Jobs a core hands back because the server allows its connections only to other cores'
    /// sessions; the producer routes them again. A core may return jobs only while `returning`
    /// counts it and the producer is not `closing` (see `Core::return_jobs`).
    pub returns: ArrayQueue<Job>,
    pub returning: AtomicUsize,
    pub closing: AtomicBool,
    /// Stop producing; what was produced is still sent.
    pub stop_producing: AtomicBool,
    /// Stop producing and start nothing new: transactions in flight finish, queued jobs stay
    /// unsent.
    pub halt: AtomicBool,
    pub abort: AtomicBool,
    pub produced: AtomicU64,
    /// Jobs the producer still had set aside when it stopped (counted unsent).
    pub parked: AtomicU64,
    /// The run-wide message rate's gate, and its interval in nanoseconds (zero: no rate).
    pub rate: shaping::Gate,
    pub rate_interval: u64,
    /// Destinations suspended or slowed, for the caller's log and report; when the queue is
    /// full, events are dropped and counted.
    pub events: Arc<ArrayQueue<ShapingEvent>>,
    pub events_dropped: AtomicU64,
}

impl RunState {
    /// Aborted or halted: nothing new is placed.
    fn cut_short(&self) -> bool {
        self.abort.load(Ordering::Relaxed) || self.halt.load(Ordering::Relaxed)
    }

    fn new(config: &EngineConfig) -> RunState {
        RunState {
            producer_done: AtomicBool::new(false),
            returns: ArrayQueue::new(config.queue_capacity.max(1)),
            returning: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            stop_producing: AtomicBool::new(false),
            halt: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            produced: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            rate: shaping::Gate::default(),
            rate_interval: config.rate.map_or(0, |r| r.interval_nanos()),
            events: Arc::new(ArrayQueue::new(shaping::EVENT_QUEUE)),
            events_dropped: AtomicU64::new(0),
        }
    }
}

/// What one core publishes for live progress, a few times a second. Padded so cores do not
/// share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
    pub in_flight: AtomicU64,
    pub connect_failures: AtomicU64,
    pub session_errors: AtomicU64,
    pub uncertain: AtomicU64,
    /// p99 message latency over the core's last publication interval.
    pub p99_micros: AtomicU64,
}

/// A point-in-time view across cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub produced: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub in_flight: u64,
    pub connect_failures: u64,
    pub session_errors: u64,
    pub uncertain: u64,
    /// The highest of the cores' recent p99s.
    pub p99_micros: u64,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    pub stats: Stats,
    pub produced: u64,
    pub elapsed: Duration,
    pub threads: usize,
    pub driver: Driver,
    pub warmup: Duration,
}

impl Report {
    /// Delivered messages per second and megabytes per second, over the time after the warmup.
    pub fn rates(&self) -> (f64, f64) {
        let secs = self.elapsed.saturating_sub(self.warmup).as_secs_f64().max(1e-9);
        (self.stats.measured as f64 / secs, self.stats.measured_bytes as f64 / secs / 1e6)
    }
}

/// A running engine.
pub struct Running {
    run: Arc<RunState>,
    progress: Vec<Arc<Progress>>,
    queues: Vec<Arc<ArrayQueue<Job>>>,
    outcomes: Vec<Arc<ArrayQueue<Outcome>>>,
    cores: Vec<JoinHandle<io::Result<Stats>>>,
    producer: Option<JoinHandle<()>>,
    started: Instant,
    threads: usize,
    driver: Driver,
    warmup: Duration,
}

impl Running {
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            elapsed: self.started.elapsed(),
            produced: self.run.produced.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        for p in &self.progress {
            s.delivered += p.delivered.load(Ordering::Relaxed);
            s.deferred += p.deferred.load(Ordering::Relaxed);
            s.bounced += p.bounced.load(Ordering::Relaxed);
            s.in_flight += p.in_flight.load(Ordering::Relaxed);
            s.connect_failures += p.connect_failures.load(Ordering::Relaxed);
            s.session_errors += p.session_errors.load(Ordering::Relaxed);
            s.uncertain += p.uncertain.load(Ordering::Relaxed);
            s.p99_micros = s.p99_micros.max(p.p99_micros.load(Ordering::Relaxed));
        }
        s
    }

    /// Whether every core has finished.
    pub fn is_finished(&self) -> bool {
        self.cores.iter().all(|c| c.is_finished())
    }

    /// Each core's outcome queue (empty unless `EngineConfig::outcomes`). The reader must keep
    /// draining them until the engine has finished: a core with outcomes it cannot hand over
    /// takes no new jobs and does not finish.
    pub fn outcomes(&self) -> &[Arc<ArrayQueue<Outcome>>] {
        &self.outcomes
    }

    /// Destinations suspended or slowed by a reaction, as it happens.
    pub fn shaping_events(&self) -> Arc<ArrayQueue<ShapingEvent>> {
        Arc::clone(&self.run.events)
    }

    pub fn producer_done(&self) -> bool {
        self.run.producer_done.load(Ordering::Acquire)
    }

    /// Ends the run gracefully: no more jobs are produced, those already produced are sent.
    /// Ends the run as soon as what is in flight has finished: no more jobs are produced, none
    /// queued is started (they count as unsent), every transaction already sent gets its reply.
    pub fn halt(&self) {
        self.run.stop_producing.store(true, Ordering::Relaxed);
        self.run.halt.store(true, Ordering::Relaxed);
    }

    pub fn stop_producing(&self) {
        self.run.stop_producing.store(true, Ordering::Relaxed);
    }

    /// Cuts the run short: no more jobs, sessions abandon what they have (counted deferred).
    pub fn abort(&self) {
        self.run.abort.store(true, Ordering::Relaxed);
    }

    pub fn join(mut self) -> io::Result<Report> {
        if let Some(p) = self.producer.take() {
            p.join().map_err(|_| io::Error::other("producer thread panicked"))?;
        }
        let mut stats = Stats::default();
        for c in self.cores.drain(..) {
            let core_stats = c.join().map_err(|_| io::Error::other("engine thread panicked"))??;
            stats.merge(&core_stats);
        }
        // Counted only now that nothing can push or pop: a job the producer pushed after its
        // core had finished is still accounted for.
        stats.unsent += self.queues.iter().map(|q| q.len() as u64).sum::<u64>()
            + self.run.returns.len() as u64
            + self.run.parked.load(Ordering::Acquire);
        stats.shaping_events_dropped = self.run.events_dropped.load(Ordering::Relaxed);
        Ok(Report {
            stats,
            produced: self.run.produced.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
            threads: self.threads,
            driver: self.driver,
            warmup: self.warmup,
        })
    }
}

/// Starts the cores and the producer. `destinations` lists every destination the source will
/// use, indexed by `Destination::index`.
pub fn start(
    config: EngineConfig,
    destinations: Vec<Arc<Destination>>,
    source: Box<dyn JobSource>,
) -> io::Result<Running> {
    let threads = config.threads.max(1);
    let config = Arc::new(EngineConfig { threads, ..config });
    let run = Arc::new(RunState::new(&config));
    let queues: Vec<Arc<ArrayQueue<Job>>> =
        (0..threads).map(|_| Arc::new(ArrayQueue::new(config.queue_capacity.max(1)))).collect();
    let progress: Vec<Arc<Progress>> = (0..threads).map(|_| Arc::default()).collect();
    let outcomes: Vec<Arc<ArrayQueue<Outcome>>> = if config.outcomes {
        (0..threads).map(|_| Arc::new(ArrayQueue::new(OUTCOME_QUEUE))).collect()
    } else {
        Vec::new()
    };
    let mut cores = Vec::with_capacity(threads);
    let started = Instant::now();
    for index in 0..threads {
        let (config, run, queue, progress) =
            (Arc::clone(&config), Arc::clone(&run), Arc::clone(&queues[index]), Arc::clone(&progress[index]));
        let outcome_queue = outcomes.get(index).cloned();
        cores.push(rt::spawn_pinned("engine", index, move || {
            let driver = config.driver;
            rt::block_on(driver, async move {
                let core = core::Core::new(index, config, run, progress, outcome_queue, started);
                core::run(core, queue).await
            })
        })?);
    }
    let router = Router::new(&destinations, threads);
    let producer_run = Arc::clone(&run);
    let producer_queues = queues.clone();
    let park = config.park;
    let producer = std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || produce(source, router, producer_queues, producer_run, park))?;
    Ok(Running {
        run,
        progress,
        queues,
        outcomes,
        cores,
        producer: Some(producer),
        started,
        threads,
        driver: config.driver,
        warmup: config.warmup,
    })
}

/// Which cores take a destination's jobs: those holding part of its connection budget, less
/// any the server has capped to no connection.
struct Router {
    destinations: Vec<Option<Arc<Destination>>>,
    eligible: Vec<Vec<usize>>,
    next: Vec<usize>,
    cores: usize,
}

impl Router {
    fn new(destinations: &[Arc<Destination>], cores: usize) -> Self {
        let mut router = Router { destinations: Vec::new(), eligible: Vec::new(), next: Vec::new(), cores };
        for d in destinations {
            router.register(d);
        }
        router
    }

    /// Learns a destination (a source may create them as it goes, e.g. as domains resolve).
    fn register(&mut self, d: &Arc<Destination>) {
        if self.eligible.len() <= d.index {
            self.eligible.resize(d.index + 1, Vec::new());
            self.destinations.resize(d.index + 1, None);
            self.next.resize(d.index + 1, 0);
        }
        if self.destinations[d.index].is_some() {
            return;
        }
        self.destinations[d.index] = Some(Arc::clone(d));
        let cores = self.cores;
        self.eligible[d.index] = (0..cores)
            .filter(|&c| core::Core::share(d.max_connections.max(1), cores, c, d.index) > 0)
            .collect();
    }

    /// The cores to offer a job to, in order of preference (round robin). Blocked cores only
    /// when every core is blocked: a full queue elsewhere is backpressure, not a reason to park
    /// a job where no connection can take it. With `skip_full`, cores whose pool for the
    /// destination is full are left out.
    fn candidates(&mut self, destination: usize, skip_full: bool) -> impl Iterator<Item = usize> + '_ {
        let cores = &self.eligible[destination];
        let start = self.next[destination];
        self.next[destination] = (start + 1) % cores.len().max(1);
        let health = self.destinations[destination].as_ref().map(|d| &d.health);
        let all_blocked = cores.iter().all(|&c| health.is_some_and(|h| h.is_blocked(c)));
        let usable = move |c: &usize| {
            (all_blocked || !health.is_some_and(|h| h.is_blocked(*c)))
                && !(skip_full && health.is_some_and(|h| h.is_full(*c)))
        };
        (0..cores.len()).map(move |k| cores[(start + k) % cores.len()]).filter(usable)
    }

    /// Whether every core that takes the destination's jobs has a full pool for it.
    fn all_full(&self, destination: usize) -> bool {
        let Some(d) = self.destinations.get(destination).and_then(Option::as_ref) else { return false };
        self.eligible[destination].iter().all(|&c| d.health.is_full(c))
    }
}

/// Jobs the producer set aside because every pool that could take them is full, by
/// destination, in arrival order. Producer-owned: no core touches it.
#[derive(Default)]
struct Parking {
    jobs: Vec<std::collections::VecDeque<Job>>,
    /// Destinations with jobs set aside.
    waiting: Vec<usize>,
    count: usize,
}

impl Parking {
    fn has(&self, destination: usize) -> bool {
        self.jobs.get(destination).is_some_and(|q| !q.is_empty())
    }

    fn park(&mut self, job: Job) {
        let d = job.destination.index;
        if self.jobs.len() <= d {
            self.jobs.resize_with(d + 1, Default::default);
        }
        if self.jobs[d].is_empty() {
            self.waiting.push(d);
        }
        self.jobs[d].push_back(job);
        self.count += 1;
    }

    /// Places what it can: the jobs of destinations with a pool that has room again. False
    /// when the run stopped meanwhile.
    fn release(&mut self, router: &mut Router, queues: &[Arc<ArrayQueue<Job>>], run: &RunState) -> bool {
        let mut i = 0;
        while i < self.waiting.len() {
            let d = self.waiting[i];
            while !router.all_full(d) {
                let Some(job) = self.jobs[d].pop_front() else { break };
                match place(job, router, queues, run, true) {
                    Place::Placed => self.count -= 1,
                    Place::Full(job) => {
                        self.jobs[d].push_front(job);
                        break;
                    }
                    Place::Stopped(job) => {
                        self.jobs[d].push_front(job);
                        return false;
                    }
                }
            }
            if self.jobs[d].is_empty() {
                self.waiting.swap_remove(i);
            } else {
                i += 1;
            }
        }
        true
    }
}

/// Routes the jobs cores handed back. False when the run is aborted meanwhile; a job that could
/// not be placed then stays in `returns` (counted unsent).
fn reroute_returns(
    router: &mut Router,
    parking: &mut Parking,
    queues: &[Arc<ArrayQueue<Job>>],
    run: &RunState,
    park: bool,
) -> bool {
    while let Some(job) = run.returns.pop() {
        if let Err(job) = route(job, router, parking, queues, run, park) {
            // Room is certain: the job was just taken from there and only the producer pops.
            let _ = run.returns.push(job);
            return false;
        }
    }
    true
}

/// Places a job, or with `park` sets it aside when its destination's pools are all full or
/// it has jobs set aside already (which keep their order). Gives the job back when the run is
/// aborted or halted meanwhile.
fn route(
    job: Job,
    router: &mut Router,
    parking: &mut Parking,
    queues: &[Arc<ArrayQueue<Job>>],
    run: &RunState,
    park: bool,
) -> Result<(), Job> {
    if park && parking.has(job.destination.index) {
        parking.park(job);
        return Ok(());
    }
    match place(job, router, queues, run, park) {
        Place::Placed => {}
        Place::Full(job) => parking.park(job),
        Place::Stopped(job) => return Err(job),
    }
    Ok(())
}

/// Where [`place`] put a job.
enum Place {
    Placed,
    /// Every pool that could take it is full (only when parking).
    Full(Job),
    /// The run was aborted or halted meanwhile.
    Stopped(Job),
}

/// Pushes a job to the first core that takes it, waiting while every queue is full: that is the
/// backpressure. With `park`, a job whose destination's pools are all full comes back instead.
fn place(
    job: Job,
    router: &mut Router,
    queues: &[Arc<ArrayQueue<Job>>],
    run: &RunState,
    park: bool,
) -> Place {
    let destination = job.destination.index;
    if router.destinations.get(destination).is_none_or(Option::is_none) {
        router.register(&job.destination);
    }
    let mut job = job;
    let mut idle_spins = 0u32;
    loop {
        if park && router.all_full(destination) {
            return Place::Full(job);
        }
        for core in router.candidates(destination, park) {
            match queues[core].push(job) {
                Ok(()) => return Place::Placed,
                Err(back) => job = back,
            }
        }
        if run.cut_short() {
            return Place::Stopped(job);
        }
        // Queues full: the engine is behind by a whole queue (thousands of jobs), so a short
        // sleep costs nothing, while spinning would steal a core from it.
        idle_spins += 1;
        if idle_spins < 4 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn produce(
    mut source: Box<dyn JobSource>,
    mut router: Router,
    queues: Vec<Arc<ArrayQueue<Job>>>,
    run: Arc<RunState>,
    park: usize,
) {
    let mut parking = Parking::default();
    loop {
        if run.abort.load(Ordering::Relaxed) || run.stop_producing.load(Ordering::Relaxed) {
            break;
        }
        if !reroute_returns(&mut router, &mut parking, &queues, &run, park > 0) {
            break;
        }
        if parking.count > 0 {
            if !parking.release(&mut router, &queues, &run) {
                break;
            }
            if parking.count >= park {
                // As many set aside as allowed: the source waits (bounded memory) until a full
                // destination drains.
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        let job = match source.next(Instant::now()) {
            Next::Job(job) => job,
            Next::Done => break,
            Next::Wait(until) => {
                // Sleep rather than spin even for tiny waits: a job released a little late still
                // counts its latency from its scheduled time, while a spinning producer would
                // take a core from the engine at high rates.
                let wait = until.saturating_duration_since(Instant::now());
                std::thread::sleep(wait.clamp(Duration::from_micros(50), Duration::from_millis(10)));
                continue;
            }
        };
        // Full queues hold the producer back: that is the backpressure. A job not placed before
        // an abort was never produced.
        if route(job, &mut router, &mut parking, &queues, &run, park > 0).is_err() {
            break;
        }
        run.produced.fetch_add(1, Ordering::Relaxed);
    }
    // What was set aside was produced: it is sent unless the run is cut short.
    while parking.count > 0 && !run.cut_short() {
        if !reroute_returns(&mut router, &mut parking, &queues, &run, true)
            || !parking.release(&mut router, &queues, &run)
        {
            break;
        }
        if parking.count > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    run.parked.store(parking.count as u64, Ordering::Release);
    // No core may hand jobs back once nobody reads them: close, wait for any core in the middle
    // of returning, then route what came back.
    run.closing.store(true, Ordering::SeqCst);
    while run.returning.load(Ordering::SeqCst) > 0 {
        std::thread::yield_now();
    }
    reroute_returns(&mut router, &mut parking, &queues, &run, false);
    run.producer_done.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(index: usize, max_connections: usize) -> Arc<Destination> {
        Arc::new(Destination::new(index, format!("d{index}"), vec![], max_connections))
    }

    #[test]
    fn router_only_offers_cores_with_a_share() {
        let dests = vec![dest(0, 1), dest(1, 1), dest(2, 8)];
        let mut r = Router::new(&dests, 4);
        for d in 0..2 {
            let cores: Vec<usize> = r.candidates(d, false).collect();
            assert_eq!(cores.len(), 1, "limit 1: one core");
            assert_eq!(core::Core::share(1, 4, cores[0], d), 1);
        }
        let firsts: Vec<usize> = (0..4).map(|_| r.candidates(2, false).next().unwrap()).collect();
        assert_eq!(firsts, vec![0, 1, 2, 3], "round robin over every core");
    }

    fn job(id: u64, destination: &Arc<Destination>) -> Job {
        let rcpt = crate::proto::Address::new("a@x.test").unwrap();
        let envelope = Arc::new(crate::proto::client::Envelope { sender: None, recipients: vec![rcpt] });
        let message = crate::proto::client::Message::new(envelope, crate::proto::Body::new(b"x\r\n"));
        Job {
            id,
            destination: Arc::clone(destination),
            message: Payload::Ready(message),
            due: Instant::now(),
            attempts: 0,
            last_conn: 0,
            partial: false,
        }
    }

    #[test]
    fn jobs_for_full_pools_are_set_aside_and_released_in_order_when_there_is_room() {
        let (slow, fast) = (dest(0, 2), dest(1, 2));
        let mut router = Router::new(&[Arc::clone(&slow), Arc::clone(&fast)], 2);
        let queues: Vec<Arc<ArrayQueue<Job>>> = (0..2).map(|_| Arc::new(ArrayQueue::new(64))).collect();
        let run = RunState::new(&EngineConfig::new(crate::proto::ClientConfig::new(
            crate::proto::Domain::new("t.test").unwrap(),
        )));
        let mut parking = Parking::default();
        slow.health.set_full(0, true);
        assert!(matches!(place(job(1, &slow), &mut router, &queues, &run, true), Place::Placed));
        assert_eq!(queues[1].len(), 1, "only the core with room");
        slow.health.set_full(1, true);
        for id in 2..5 {
            match place(job(id, &slow), &mut router, &queues, &run, true) {
                Place::Full(j) => parking.park(j),
                _ => panic!("every pool is full: set aside"),
            }
        }
        assert!(
            matches!(place(job(9, &fast), &mut router, &queues, &run, true), Place::Placed),
            "others go on"
        );
        assert!(parking.has(0) && !parking.has(1) && parking.count == 3);
        assert!(
            matches!(place(job(7, &slow), &mut router, &queues, &run, false), Place::Placed),
            "without parking: queued"
        );
        assert!(parking.release(&mut router, &queues, &run));
        assert_eq!(parking.count, 3, "still full: nothing released");
        slow.health.set_full(1, false);
        assert!(parking.release(&mut router, &queues, &run));
        assert_eq!(parking.count, 0);
        let ids: Vec<u64> = std::iter::from_fn(|| queues[1].pop())
            .filter(|j| j.destination.index == 0)
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, vec![1, 7, 2, 3, 4], "in the order they came");
    }

    #[test]
    fn router_skips_blocked_cores_unless_all_are() {
        let d = dest(0, 8);
        let mut r = Router::new(std::slice::from_ref(&d), 4);
        d.health.set_blocked(1, true);
        d.health.set_blocked(3, true);
        for _ in 0..4 {
            let cores: Vec<usize> = r.candidates(0, false).collect();
            assert!(cores.len() == 2 && cores.iter().all(|c| c % 2 == 0), "{cores:?}");
        }
        for c in [0, 2] {
            d.health.set_blocked(c, true);
        }
        assert_eq!(r.candidates(0, false).count(), 4, "all blocked: every core again");
        d.health.set_blocked(2, false);
        assert_eq!(r.candidates(0, false).collect::<Vec<_>>(), vec![2]);
    }
}
