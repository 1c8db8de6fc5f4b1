//! Recipients on their way to the engine, whatever job source they come from: each is routed
//! (set aside while its domain resolves, without blocking), held until its retry is due, and
//! turned into a job; a route that fails is reported to the ledger, which records it as an
//! attempt and decides its retry. A source (`send`'s rows, `serve`'s spool) admits recipients
//! with [`Dispatch::route`] and takes jobs from [`Dispatch::next_job`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use super::bounce::Category;
use super::hold::{Holds, Selector};
use super::ledger::Report;
use super::lowercase;
use super::pending::Pending;
use super::route::{Lookup, Route, Routes};
use crate::engine::{Destination, Job, Payload};
use crate::hash::DomainMap;
use crate::proto::client::Disposition;

/// Recipients set aside waiting for DNS before a source should stop admitting more until
/// answers come: many seconds of lookups at the resolver's concurrency, and a bounded share of
/// memory (a few hundred bytes a recipient) however many distinct domains there are.
pub const MAX_RESOLVING: usize = 10_000;

pub struct Dispatch {
    routes: Routes,
    /// Recipients whose domain is being resolved, by domain.
    resolving: DomainMap<Vec<Pending>>,
    resolving_count: usize,
    /// Routed recipients, to be taken as jobs.
    ready: VecDeque<(Pending, Arc<Destination>)>,
    /// Recipients waiting for a retry, soonest first.
    retries_due: BinaryHeap<Reverse<Due>>,
    retry_seq: u64,
    /// Deferred recipients the ledger hands back, with when to retry.
    retries: Receiver<(Instant, Pending)>,
    reports: SyncSender<Report>,
    /// What a recipient keeps of its message while it waits for a retry (see
    /// [`Dispatch::stow_retries_with`]).
    stow: Option<Stow>,
    /// Which retries are not kept in memory (see [`Dispatch::park_retries`]).
    parking: Option<Parking>,
    /// Recipients parked since the source last asked: id and attempts so far.
    parked: Vec<(u64, u32)>,
    /// What an operator holds back (see [`super::hold`]).
    holds: Holds,
    /// Recipients held back since the source last asked: where they were routed, and until
    /// when.
    held_back: Vec<(Pending, Arc<Destination>, Option<Instant>)>,
}

/// Which retries a source that keeps its own schedule on disk (serve's spool) takes back from
/// memory: those due beyond `horizon`, and any once `limit` recipients wait in memory.
#[derive(Debug, Clone, Copy)]
pub struct Parking {
    pub horizon: Duration,
    pub limit: usize,
}

/// A recipient waiting for its retry, ordered by when it is due (a sequence number breaks ties,
/// so equal times keep their order), holding the recipient itself: no second map to find it
/// by (with a million waiting, dropping that map took serve from 1,022 MiB to
/// 732 MiB; docs/BENCHMARKS.md).
struct Due {
    at: Instant,
    seq: u64,
    pending: Pending,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Turns a recipient's message (given the recipient's id) into what it keeps while it waits
/// for a retry.
pub type Stow = Box<dyn Fn(u64, Payload) -> Payload + Send>;

impl Dispatch {
    pub fn new(
        routes: Routes,
        retries: Receiver<(Instant, Pending)>,
        reports: SyncSender<Report>,
    ) -> Dispatch {
        Dispatch {
            routes,
            resolving: DomainMap::default(),
            resolving_count: 0,
            ready: VecDeque::new(),
            retries_due: BinaryHeap::new(),
            retry_seq: 0,
            retries,
            reports,
            stow: None,
            parking: None,
            parked: Vec::new(),
            holds: Holds::default(),
            held_back: Vec::new(),
        }
    }

    /// From now on, a recipient routed where `holds` name is not made a job but handed back
    /// by [`Dispatch::take_held`] (jobs already taken by the engine go on).
    pub fn set_holds(&mut self, holds: Holds) {
        self.holds = holds;
    }

    /// The recipients held back since the last call, with their destination and when their
    /// hold ends (`None`: when lifted).
    pub fn take_held(&mut self) -> Vec<(Pending, Arc<Destination>, Option<Instant>)> {
        std::mem::take(&mut self.held_back)
    }

    /// The route for `domain` (lower-case), asking DNS if it is not known: an answer is kept
    /// by the routes (for its TTL) when it comes, so asking again later finds it.
    pub fn route_of(&mut self, domain: &str, now: Instant) -> Lookup {
        self.routes.lookup(domain, now)
    }

    /// Takes out every recipient here that `selector` names, among those routed and those
    /// waiting for a retry whose route is known (a recipient waiting for DNS is looked at when
    /// it is routed).
    pub fn withdraw(&mut self, selector: &Selector, now: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        let ready = std::mem::take(&mut self.ready);
        for (p, destination) in ready {
            if selector.matches(&lowercase(p.rcpt.domain()), &destination) {
                out.push(p);
            } else {
                self.ready.push_back((p, destination));
            }
        }
        let due = std::mem::take(&mut self.retries_due).into_vec();
        for Reverse(d) in due {
            if self.named(selector, &d.pending, now) {
                out.push(d.pending);
            } else {
                self.retries_due.push(Reverse(d));
            }
        }
        out
    }

    /// Takes out the recipients named in `ids` that are waiting here for their turn or a
    /// retry, and removes them from `ids`; how many. Those in a session or waiting for DNS stay
    /// (and in `ids`).
    pub fn forget(&mut self, ids: &mut std::collections::HashSet<u64>) -> usize {
        let before = ids.len();
        self.ready.retain(|(p, _)| !ids.remove(&p.id));
        let due = std::mem::take(&mut self.retries_due).into_vec();
        self.retries_due = due.into_iter().filter(|Reverse(d)| !ids.remove(&d.pending.id)).collect();
        before - ids.len()
    }

    /// Makes every retry waiting here that `selector` names due now; how many.
    pub fn bring_forward(&mut self, selector: &Selector, now: Instant) -> usize {
        let mut due = std::mem::take(&mut self.retries_due).into_vec();
        let mut brought = 0;
        for Reverse(d) in &mut due {
            if d.at > now && self.named(selector, &d.pending, now) {
                d.at = now;
                brought += 1;
            }
        }
        self.retries_due = due.into();
        brought
    }

    /// Whether `selector` names `p` by its domain, or by its route if that is known.
    fn named(&self, selector: &Selector, p: &Pending, now: Instant) -> bool {
        let domain = lowercase(p.rcpt.domain());
        selector.is_domain(&domain)
            || matches!(self.routes.cached(&domain, now), Some(Route::Deliver(d)) if selector.names(&d))
    }

    /// Retries `parking` says need not wait in memory are dropped here and named by
    /// [`Dispatch::take_parked`]: the source, whose store holds each recipient's schedule,
    /// reads them back when their time comes near. Memory then holds what is due soon, up to a
    /// bound, however many wait (a dead destination with a million).
    pub fn park_retries(&mut self, parking: Parking) {
        self.parking = Some(parking);
    }

    /// The recipients parked since the last call (id, attempts so far), in the order parked.
    pub fn take_parked(&mut self) -> Vec<(u64, u32)> {
        std::mem::take(&mut self.parked)
    }

    /// Recipients waiting for a retry keep their message as `stow` makes it, not as it was
    /// sent: a source that can read it again when the retry is due (serve's spool) keeps only
    /// where to find it, so the memory a wait takes does not grow with messages' sizes. Without
    /// it (send), a rendered message is kept for the next attempt.
    pub fn stow_retries_with(&mut self, stow: Stow) {
        self.stow = Some(stow);
    }

    /// Tells the ledger about a recipient the source decided on itself.
    pub fn report(&self, report: Report) {
        // The log thread outlives the source; a send error means it is gone, and the run is
        // being torn down anyway.
        let _ = self.reports.send(report);
    }

    /// A recipient to send: made a job now if its domain's route is known, else set aside
    /// until the answer comes.
    pub fn route(&mut self, pending: Pending, now: Instant) {
        let domain = lowercase(pending.rcpt.domain());
        match self.routes.lookup(&domain, now) {
            Lookup::Ready(route) => self.deliver(pending, route, now),
            Lookup::Pending => {
                self.resolving.entry(domain.into_owned()).or_default().push(pending);
                self.resolving_count += 1;
            }
        }
    }

    /// A recipient to try again at `at`, not before.
    pub fn retry_at(&mut self, at: Instant, pending: Pending) {
        self.retry_seq += 1;
        self.retries_due.push(Reverse(Due { at, seq: self.retry_seq, pending }));
    }

    /// Takes what has arrived since the last turn: DNS answers (their recipients become jobs,
    /// or are reported unroutable) and retries the ledger handed back.
    pub fn poll(&mut self, now: Instant) {
        for (domain, result) in self.routes.poll(now) {
            let Some(waiting) = self.resolving.remove(&domain) else { continue };
            self.resolving_count -= waiting.len();
            for p in waiting {
                match &result {
                    Ok(route) => self.deliver(p, route.clone(), now),
                    Err(failure) => {
                        self.unroutable(p, Disposition::Deferred, &failure.reason, failure.category, now)
                    }
                }
            }
        }
        while let Ok((at, mut p)) = self.retries.try_recv() {
            if let Some(parking) = self.parking
                && (at > now + parking.horizon || self.held() >= parking.limit)
            {
                self.parked.push((p.id, p.attempts));
                continue;
            }
            if let Some(stow) = &self.stow {
                p.message = stow(p.id, p.message);
            }
            self.retry_at(at, p);
        }
    }

    /// The next job ready to go, routing retries that have come due first.
    pub fn next_job(&mut self, now: Instant) -> Option<Job> {
        loop {
            if let Some((p, destination)) = self.ready.pop_front() {
                return Some(Job {
                    id: p.id,
                    destination,
                    message: p.message,
                    due: p.born,
                    attempts: p.attempts,
                    last_conn: 0,
                    partial: false,
                });
            }
            if self.retries_due.peek()?.0.at > now {
                return None;
            }
            if let Some(Reverse(due)) = self.retries_due.pop() {
                self.route(due.pending, now);
            }
        }
    }

    /// From now on, `shaping`'s limits and rules for what is routed (see [`Routes::reshape`]).
    pub fn reshape(&mut self, shaping: super::shaping::ShapingRules) {
        self.routes.reshape(shaping);
    }

    /// The routes, as known now.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Recipients waiting for DNS.
    pub fn resolving(&self) -> usize {
        self.resolving_count
    }

    /// Recipients waiting for DNS or a retry.
    pub fn waiting(&self) -> usize {
        self.resolving_count + self.retries_due.len()
    }

    /// Recipients held here: waiting for DNS or a retry, or ready to be taken as jobs.
    pub fn held(&self) -> usize {
        self.waiting() + self.ready.len()
    }

    /// When the next retry is due, if one is waiting.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries_due.peek().map(|Reverse(due)| due.at)
    }

    fn deliver(&mut self, p: Pending, route: Route, now: Instant) {
        match route {
            Route::Deliver(destination) => {
                if !self.holds.is_empty()
                    && let Some(until) = self.holds.holding(&lowercase(p.rcpt.domain()), &destination, now)
                {
                    self.held_back.push((p, destination, until));
                    return;
                }
                self.ready.push_back((p, destination));
            }
            Route::Undeliverable(why) => {
                self.unroutable(p, Disposition::Bounced, &why, Category::BadDomain, now)
            }
        }
    }

    /// Routing `p` failed: the ledger records the attempt (and decides its retry).
    fn unroutable(
        &self,
        pending: Pending,
        disposition: Disposition,
        why: &str,
        category: Category,
        at: Instant,
    ) {
        self.report(Report::Unroutable { pending, disposition, reason: why.to_owned(), category, at });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::dns::{DnsConfig, Resolver};
    use crate::deliver::shaping::{Defaults, ShapingRules};
    use crate::engine::Limits;
    use crate::proto::client::{Envelope, Message};
    use crate::proto::{Address, Body};
    use crate::testkit::dns::{DnsStub, Zone};
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pending(id: u64, rcpt: &str, born: Instant) -> Pending {
        let rcpt = Address::new(rcpt).unwrap();
        let envelope = Arc::new(Envelope { sender: None, recipients: vec![rcpt.clone()] });
        Pending {
            id,
            rcpt,
            message: Payload::Ready(Message::new(envelope, Body::new(b"x\r\n"))),
            born,
            attempts: 0,
        }
    }

    /// Recipients wait for their domain without holding others up, become jobs when it
    /// resolves, are reported when it cannot be routed, and retries wait until due.
    #[test]
    fn recipients_become_jobs_when_routed_and_retries_when_due() {
        let zone: Zone =
            "ok.test MX 10 mx.ok.test\nmx.ok.test A 127.0.0.2\nnull.test MX 0 .\nbad.test SERVFAIL"
                .parse()
                .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let config = DnsConfig::for_stub(stub.addr());
        let shaping =
            ShapingRules::load(&[], false, Defaults { connections: 2, limits: Limits::default() }).unwrap();
        let routes = Routes::mx(Resolver::start(config).unwrap(), 2525, shaping);
        let (retries_tx, retries_rx) = mpsc::channel();
        let (reports_tx, reports_rx) = mpsc::sync_channel(16);
        let mut d = Dispatch::new(routes, retries_rx, reports_tx);
        let t0 = Instant::now();
        for (id, rcpt) in [(1, "a@ok.test"), (2, "b@Ok.Test"), (3, "c@null.test"), (4, "d@bad.test")] {
            d.route(pending(id, rcpt, t0), t0);
        }
        assert_eq!((d.resolving(), d.waiting()), (4, 4), "all set aside; the domain is asked once");
        assert!(d.next_job(t0).is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut jobs = Vec::new();
        let mut reports = Vec::new();
        while (jobs.len() < 2 || reports.len() < 2) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            d.poll(Instant::now());
            jobs.extend(std::iter::from_fn(|| d.next_job(Instant::now())).map(|j| j.id));
            reports.extend(reports_rx.try_iter().map(|r| match r {
                Report::Unroutable { pending, disposition, .. } => (pending.id, disposition),
                Report::Unsent { id, .. } => (id, Disposition::Delivered),
                Report::Received(m) => (m.message, Disposition::Delivered),
                Report::Withdrawn { pending, .. } => (pending.id, Disposition::Bounced),
            }));
        }
        assert_eq!(jobs, [1, 2], "one lookup for both, case aside");
        reports.sort_by_key(|r| r.0);
        assert_eq!(reports, [(3, Disposition::Bounced), (4, Disposition::Deferred)]);
        assert_eq!(d.waiting(), 0);
        // A retry handed back by the ledger waits until it is due.
        let due = Instant::now() + Duration::from_secs(60);
        retries_tx.send((due, pending(5, "e@ok.test", t0))).unwrap();
        d.poll(Instant::now());
        assert_eq!((d.waiting(), d.next_retry()), (1, Some(due)));
        assert!(d.next_job(Instant::now()).is_none(), "not before it is due");
        assert_eq!(d.next_job(due).map(|j| (j.id, j.due)), Some((5, t0)), "then a job, born when it was");
        assert_eq!(d.waiting(), 0);
    }

    /// An operator's holds keep recipients from becoming jobs; withdrawing takes out what is
    /// ready or waiting, and bringing forward makes a waiting retry due now.
    #[test]
    fn holds_withdrawals_and_retries_brought_forward() {
        use crate::deliver::hold::{Hold, Holds, Selector};
        let shaping =
            ShapingRules::load(&[], false, Defaults { connections: 2, limits: Limits::default() }).unwrap();
        let routes = Routes::relay("relay.test", vec!["127.0.0.1:2525".parse().unwrap()], shaping);
        let (_retries_tx, retries_rx) = mpsc::channel();
        let (reports_tx, _reports_rx) = mpsc::sync_channel(16);
        let mut d = Dispatch::new(routes, retries_rx, reports_tx);
        let now = Instant::now();
        let until = now + Duration::from_secs(600);
        let select = |s: &str| Selector::parse(s).unwrap();
        d.set_holds(Holds::new(vec![Hold { selector: select("held.test"), until: Some(until) }]));
        d.route(pending(1, "a@held.test", now), now);
        d.route(pending(2, "b@free.test", now), now);
        d.route(pending(3, "c@free.test", now), now);
        let held = d.take_held();
        assert_eq!(
            held.iter().map(|(p, dest, u)| (p.id, dest.name.as_str(), *u)).collect::<Vec<_>>(),
            [(1, "relay.test", Some(until))]
        );
        assert_eq!(d.held(), 2, "the others are ready");
        d.retry_at(now + Duration::from_secs(3600), pending(4, "d@free.test", now));
        d.retry_at(now + Duration::from_secs(3600), pending(5, "e@other.test", now));
        assert_eq!(d.bring_forward(&select("free.test"), now), 1);
        assert_eq!(d.next_retry(), Some(now), "due now");
        let out: Vec<u64> = d.withdraw(&select("relay.test"), now).iter().map(|p| p.id).collect();
        assert_eq!(out.len(), 4, "the relay names every one: {out:?}");
        assert_eq!(d.held(), 0);
        d.set_holds(Holds::default());
        d.route(pending(6, "f@held.test", now), now);
        assert!(d.take_held().is_empty() && d.next_job(now).is_some(), "lifted");
    }

    /// Forgetting takes out recipients waiting for their turn or a retry, and leaves the
    /// others named (in a session, say) to be looked for again.
    #[test]
    fn forgotten_recipients_leave_the_queues() {
        let now = Instant::now();
        let shaping =
            ShapingRules::load(&[], false, Defaults { connections: 2, limits: Limits::default() }).unwrap();
        let routes = Routes::relay("relay", vec!["127.0.0.1:2525".parse().unwrap()], shaping);
        let (_retries_tx, retries_rx) = mpsc::channel();
        let (reports_tx, _reports_rx) = mpsc::sync_channel(16);
        let mut d = Dispatch::new(routes, retries_rx, reports_tx);
        d.route(pending(1, "a@x.test", now), now);
        d.route(pending(2, "b@x.test", now), now);
        d.retry_at(now + Duration::from_secs(60), pending(3, "c@x.test", now));
        d.retry_at(now + Duration::from_secs(60), pending(4, "d@x.test", now));
        let mut ids: std::collections::HashSet<u64> = [2, 3, 9].into_iter().collect();
        assert_eq!(d.forget(&mut ids), 2);
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![9], "9 is not here: looked for again later");
        let jobs: Vec<u64> = std::iter::from_fn(|| d.next_job(now)).map(|j| j.id).collect();
        assert_eq!(jobs, vec![1]);
        assert_eq!(d.waiting(), 1, "4 still waits for its retry");
    }

    /// With parking, memory holds retries due within the horizon up to the limit; the rest
    /// are named for the source to read back later, with their attempts.
    #[test]
    fn retries_beyond_the_horizon_or_the_limit_are_parked() {
        let shaping =
            ShapingRules::load(&[], false, Defaults { connections: 2, limits: Limits::default() }).unwrap();
        let routes = Routes::relay("relay", vec!["127.0.0.1:2525".parse().unwrap()], shaping);
        let (retries_tx, retries_rx) = mpsc::channel();
        let (reports_tx, _reports_rx) = mpsc::sync_channel(16);
        let mut d = Dispatch::new(routes, retries_rx, reports_tx);
        d.park_retries(Parking { horizon: Duration::from_secs(60), limit: 3 });
        let now = Instant::now();
        let retry = |id: u64, in_s: u64, attempts: u32| {
            let mut p = pending(id, "a@x.test", now);
            p.attempts = attempts;
            retries_tx.send((now + Duration::from_secs(in_s), p)).unwrap();
        };
        retry(1, 10, 1);
        retry(2, 600, 2);
        retry(3, 20, 1);
        d.poll(now);
        assert_eq!((d.waiting(), d.take_parked()), (2, vec![(2, 2)]), "beyond the horizon");
        assert!(d.take_parked().is_empty(), "named once");
        d.route(pending(4, "b@x.test", now), now);
        assert_eq!(d.held(), 3, "a job ready counts too");
        retry(5, 5, 3);
        d.poll(now);
        assert_eq!((d.waiting(), d.take_parked()), (2, vec![(5, 3)]), "at the limit, even if due soon");
        assert_eq!(d.next_job(now).map(|j| j.id), Some(4));
        retry(6, 5, 1);
        d.poll(now);
        assert_eq!((d.waiting(), d.take_parked()), (3, vec![]), "room again");
    }
}
