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

mod backoff;
mod core;
mod idle;
pub mod job;
pub mod outcome;
pub mod policy;
mod producer;
pub mod retry;
mod session;
pub mod shaping;
mod signal;
pub mod stats;
pub mod tls_watch;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

pub use backoff::AdaptiveWait;
pub use job::{Compose, Destination, Job, JobSource, Next, Payload, Unsendable};
pub use outcome::{Origin, Outcome, Via};
pub use retry::{Deferral, RetryPolicy, Schedule, Verdict};
pub use shaping::{Action, Limits, Rate, Reaction, Reactions, ShapingEvent};
pub use stats::{METRICS, Metric, Stats};
pub use tls_watch::{TlsObserver, TlsSeen, TlsWatch};

use crate::proto::ClientConfig;
use crate::rt::{self, Driver};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub threads: usize,
    pub driver: Driver,
    /// Session settings: EHLO name, pipeline depth, messages per connection, timeouts.
    pub client: ClientConfig,
    pub connect_timeout: Duration,
    /// How deferred recipients are retried: at once by the engine (a load test), or handed
    /// back on a schedule (a campaign, with `outcomes`).
    pub retry: RetryPolicy,
    /// Jobs each core's input queue holds before the producer is held back.
    pub queue_capacity: usize,
    /// Jobs a core takes from its queue into one destination's pool ahead of sending.
    pub pool_backlog: usize,
    /// Sessions (and connection attempts) a core runs at once, over all destinations: what
    /// bounds its memory and descriptors when a campaign reaches thousands of domains at once.
    /// Destinations past it wait for a session to end, in the order their jobs arrived.
    pub sessions_per_core: usize,
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
    /// Hand every recipient's final outcome (and, under a scheduled `retry`, every deferral) to
    /// the caller through per-core queues (see [`Running::outcomes`]), for a source that keeps
    /// its own books and schedules its own retries.
    pub outcomes: bool,
    /// Jobs the producer may set aside for destinations whose pools are full before it stops
    /// taking jobs from the source. Zero: none; a full pool then holds up its core's queue,
    /// which is what a closed loop measuring latency wants (no hidden buffer).
    pub park: usize,
    /// Messages per unit of time for the whole run, across cores.
    pub rate: Option<Rate>,
    /// The run's rate shared with other processes: its turns are also taken from this (see
    /// [`shaping::Fleet`]).
    pub rate_fleet: Option<Arc<shaping::Fleet>>,
    /// Replies that suspend or slow their destination (see [`shaping`]).
    pub reactions: Option<Arc<Reactions>>,
    /// Whether a TLS failure a new connection would repeat (a refused certificate, STARTTLS not
    /// offered under a policy that requires it) ends the destination at once, as a refused
    /// password does. A load test wants that (`bench`); a campaign does not: a certificate gets
    /// fixed, a server starts offering STARTTLS, so its waiting jobs are deferred (an attempt
    /// each, since a connection was made) and retried on the schedule.
    pub give_up_on_tls: bool,
}

impl EngineConfig {
    pub fn new(client: ClientConfig) -> Self {
        EngineConfig {
            threads: rt::default_threads(),
            driver: Driver::Auto,
            client,
            connect_timeout: Duration::from_secs(30),
            retry: RetryPolicy::Immediate { retries: 3 },
            // Enough to ride out the producer's 1 ms naps at ~500k msg/s on two cores; more
            // would only add queueing to every message's latency in a closed loop.
            queue_capacity: 2048,
            pool_backlog: 512,
            // A load test's connections are what it asks for.
            sessions_per_core: usize::MAX,
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
            rate_fleet: None,
            reactions: None,
            give_up_on_tls: true,
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
    /// The run's rate shared with other processes, if it is.
    pub rate_fleet: Option<Arc<shaping::Fleet>>,
    /// Destinations suspended or slowed, for the caller's log and report; when the queue is
    /// full, events are dropped and counted.
    pub events: Arc<ArrayQueue<ShapingEvent>>,
    pub events_dropped: AtomicU64,
    /// The producer thread, which waits parked while every queue or pool it could fill is full:
    /// a core whose full pool takes jobs again wakes it (see `Pool::set_full`).
    pub producer: std::sync::OnceLock<std::thread::Thread>,
    /// The thread reading the outcome queues, if it waits parked when they are empty: a core
    /// that has just finished all it had wakes it, so the last outcomes of a burst (or of the
    /// run) are read at once rather than after the reader's idle wait.
    pub outcome_reader: std::sync::OnceLock<std::thread::Thread>,
}

impl RunState {
    /// Wakes the producer if it waits (a core's pool has room again).
    pub fn wake_producer(&self) {
        if let Some(t) = self.producer.get() {
            t.unpark();
        }
    }

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
            rate_fleet: config.rate.and(config.rate_fleet.clone()),
            events: Arc::new(ArrayQueue::new(shaping::EVENT_QUEUE)),
            events_dropped: AtomicU64::new(0),
            producer: std::sync::OnceLock::new(),
            outcome_reader: std::sync::OnceLock::new(),
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
    /// Connections open or being opened now, and opened in all.
    pub connections_open: AtomicU64,
    pub connections: AtomicU64,
    /// TLS handshakes: full, resumed, failed; sessions that went on in plaintext.
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub tls_failed: AtomicU64,
    pub tls_plaintext: AtomicU64,
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

impl Snapshot {
    /// How fast `counter` grew from `last` to this one, per second.
    pub fn rate_since(&self, last: &Snapshot, counter: impl Fn(&Snapshot) -> u64) -> f64 {
        let secs = (self.elapsed.saturating_sub(last.elapsed)).as_secs_f64().max(1e-9);
        counter(self).saturating_sub(counter(last)) as f64 / secs
    }
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

    /// Names the thread that reads the outcome queues, for cores to wake (see
    /// `RunState::outcome_reader`).
    pub fn set_outcome_reader(&self, reader: std::thread::Thread) {
        let _ = self.run.outcome_reader.set(reader);
    }

    /// The producer thread, for a job source's helpers to wake when there may be work for it
    /// (e.g. the last outcome recorded: the source may be done).
    pub fn producer_thread(&self) -> Option<std::thread::Thread> {
        self.run.producer.get().cloned()
    }

    /// Each core's live counters (published every 250 ms), for a caller's own progress line.
    pub fn progress(&self) -> Vec<Arc<Progress>> {
        self.progress.clone()
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

/// Starts the cores and the producer. The source's jobs bring their destinations: each
/// destination's `index` must be unique among those it has in use at once.
pub fn start(config: EngineConfig, source: Box<dyn JobSource>) -> io::Result<Running> {
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
    // What a core holds ahead of sending: its queue, or with parking only a destination's pool
    // (the producer keeps a full destination's jobs out of the queue), which takes jobs again
    // once it is down to half its backlog.
    let buffer = if config.park > 0 {
        config.queue_capacity.min(config.pool_backlog / 2)
    } else {
        config.queue_capacity
    };
    let router = producer::Router::new(threads, buffer);
    let producer_run = Arc::clone(&run);
    let producer_queues = queues.clone();
    let park = config.park;
    let producer = std::thread::Builder::new()
        .name("producer".into())
        .spawn(move || producer::produce(source, router, producer_queues, producer_run, park))?;
    let _ = run.producer.set(producer.thread().clone());
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
