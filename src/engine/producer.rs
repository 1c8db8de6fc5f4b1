//! The producer: one thread that takes jobs from the source and places them on the cores'
//! input queues, round robin over the cores holding part of each destination's connection
//! budget. Full queues hold it back (backpressure); with parking, a destination whose pools are
//! all full has its jobs set aside so they do not queue in front of other destinations' jobs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::backoff::AdaptiveWait;
use super::{Destination, Job, JobSource, Next, RunState, core};
use crate::hash::FxMap;

/// The producer's wait when every queue (or, with parking, every pool) is full: from
/// [`QUEUE_WAIT_MIN`] (they turn over fast) to [`QUEUE_WAIT_MAX`] (they drain slowly, e.g. when
/// signing holds the cores back). Within that, [`AdaptiveWait`] aims at a quarter of what a core
/// holds per wake. The producer waits parked: a core whose full pool takes jobs again wakes it
/// ([`RunState::wake_producer`]), so a wait for room in a pool ends when there is some (with
/// parking, that room is all a core holds for the destination: half its pool's backlog, ~8 ms
/// of work at 30,000 messages a second).
const QUEUE_WAIT_MIN: Duration = Duration::from_millis(1);
const QUEUE_WAIT_MAX: Duration = Duration::from_millis(16);

/// Which cores take a destination's jobs: those holding part of its connection budget, less
/// any the server has capped to no connection. It keeps nothing per destination (what it needs
/// is on the destination), so destinations come and go without it growing.
pub(super) struct Router {
    cores: usize,
    /// How long to wait when every queue is full; aims at a quarter of a core's buffer per wake.
    pace: AdaptiveWait,
}

impl Router {
    /// `buffer`: the jobs a core holds ahead of sending, which must not run dry while the
    /// producer waits.
    pub(super) fn new(cores: usize, buffer: usize) -> Self {
        Router { cores, pace: AdaptiveWait::new(QUEUE_WAIT_MIN, QUEUE_WAIT_MAX, buffer / 4) }
    }

    /// The cores holding part of the destination's connection budget.
    fn eligible(&self, d: &Destination) -> impl Iterator<Item = usize> + Clone + use<'_> {
        let (cores, limit, index) = (self.cores, d.max_connections.max(1), d.index);
        (0..cores).filter(move |&c| core::Core::share(limit, cores, c, index) > 0)
    }

    /// The cores to offer a job to, in order of preference (round robin). Blocked cores only
    /// when every core is blocked: a full queue elsewhere is backpressure, not a reason to park
    /// a job where no connection can take it. With `skip_full`, cores whose pool for the
    /// destination is full are left out.
    fn candidates<'a>(&'a self, d: &'a Destination, skip_full: bool) -> impl Iterator<Item = usize> + 'a {
        let count = self.eligible(d).count().max(1);
        let start = d.health.next_core(count);
        let health = &d.health;
        let all_blocked = self.eligible(d).all(|c| health.is_blocked(c));
        let usable =
            move |c: &usize| (all_blocked || !health.is_blocked(*c)) && !(skip_full && health.is_full(*c));
        self.eligible(d).cycle().skip(start).take(count).filter(usable)
    }

    /// Whether every core that takes the destination's jobs has a full pool for it.
    fn all_full(&self, d: &Destination) -> bool {
        self.eligible(d).all(|c| d.health.is_full(c))
    }
}

/// Jobs the producer set aside because every pool that could take them is full, by
/// destination (index), in arrival order; a destination's entry goes when its last job does.
/// Producer-owned: no core touches it.
#[derive(Default)]
struct Parking {
    jobs: FxMap<usize, VecDeque<Job>>,
    count: usize,
}

impl Parking {
    fn has(&self, destination: usize) -> bool {
        self.count > 0 && self.jobs.contains_key(&destination)
    }

    fn park(&mut self, job: Job) {
        self.jobs.entry(job.destination.index).or_default().push_back(job);
        self.count += 1;
    }

    /// Places what it can: the jobs of destinations with a pool that has room again. False
    /// when the run stopped meanwhile.
    fn release(&mut self, router: &mut Router, queues: &[Arc<ArrayQueue<Job>>], run: &RunState) -> bool {
        let mut stopped = false;
        self.jobs.retain(|_, jobs| {
            while !stopped && jobs.front().is_some_and(|j| !router.all_full(&j.destination)) {
                let Some(job) = jobs.pop_front() else { break };
                match place(job, router, queues, run, true) {
                    Place::Placed => self.count -= 1,
                    Place::Full(job) => {
                        jobs.push_front(job);
                        break;
                    }
                    Place::Stopped(job) => {
                        jobs.push_front(job);
                        stopped = true;
                    }
                }
            }
            !jobs.is_empty()
        });
        !stopped
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
    let destination = Arc::clone(&job.destination);
    let mut job = job;
    loop {
        if park && router.all_full(&destination) {
            return Place::Full(job);
        }
        match offer(job, queues, router.candidates(&destination, park)) {
            Ok(()) => {
                router.pace.done(1);
                return Place::Placed;
            }
            Err(back) => job = back,
        }
        if run.cut_short() {
            return Place::Stopped(job);
        }
        // Queues full: the engine is behind by a whole queue (thousands of jobs), so a wait
        // costs nothing, while spinning or yielding would take the core from an engine sharing it.
        // A core unparking the producer early (a pool with room) only brings this look forward.
        std::thread::park_timeout(router.pace.next_wait());
    }
}

/// Pushes a job to the first of `cores` whose queue has room; gives it back when none has.
fn offer(
    mut job: Job,
    queues: &[Arc<ArrayQueue<Job>>],
    cores: impl Iterator<Item = usize>,
) -> Result<(), Job> {
    for core in cores {
        match queues[core].push(job) {
            Ok(()) => return Ok(()),
            Err(back) => job = back,
        }
    }
    Err(job)
}

pub(super) fn produce(
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
                std::thread::park_timeout(router.pace.next_wait());
                continue;
            }
        }
        let job = match source.next(Instant::now()) {
            Next::Job(job) => job,
            Next::Done => break,
            Next::Wait(until) => {
                // Wait rather than spin even for tiny waits: a job released a little late still
                // counts its latency from its scheduled time, while a spinning producer would
                // take a core from the engine at high rates. Woken early, it looks again.
                let mut wait = until.saturating_duration_since(Instant::now());
                if parking.count > 0 {
                    // Jobs set aside are released only between looks: as often as they drain.
                    wait = wait.min(router.pace.next_wait());
                }
                std::thread::park_timeout(wait.clamp(Duration::from_micros(50), Duration::from_millis(10)));
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
            std::thread::park_timeout(router.pace.next_wait());
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
    use crate::engine::{EngineConfig, Payload};

    fn dest(index: usize, max_connections: usize) -> Arc<Destination> {
        Arc::new(Destination::new(index, format!("d{index}"), vec![], max_connections))
    }

    #[test]
    fn router_only_offers_cores_with_a_share() {
        let dests = [dest(0, 1), dest(1, 1), dest(2, 8)];
        let r = Router::new(4, 64);
        for d in &dests[..2] {
            let cores: Vec<usize> = r.candidates(d, false).collect();
            assert_eq!(cores.len(), 1, "limit 1: one core");
            assert_eq!(core::Core::share(1, 4, cores[0], d.index), 1);
        }
        let firsts: Vec<usize> = (0..4).map(|_| r.candidates(&dests[2], false).next().unwrap()).collect();
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
        let mut router = Router::new(2, 64);
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
        let r = Router::new(4, 64);
        d.health.set_blocked(1, true);
        d.health.set_blocked(3, true);
        for _ in 0..4 {
            let cores: Vec<usize> = r.candidates(&d, false).collect();
            assert!(cores.len() == 2 && cores.iter().all(|c| c % 2 == 0), "{cores:?}");
        }
        for c in [0, 2] {
            d.health.set_blocked(c, true);
        }
        assert_eq!(r.candidates(&d, false).count(), 4, "all blocked: every core again");
        d.health.set_blocked(2, false);
        assert_eq!(r.candidates(&d, false).collect::<Vec<_>>(), vec![2]);
    }
}
