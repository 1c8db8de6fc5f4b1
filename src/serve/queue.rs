//! Queue control: what an operator sees of serve's queue and does to it (`volley queue`, over
//! the API's `/api/v1/queue`). DEST is a recipient domain, a destination or an MX host
//! ([`Selector`]).
//!
//! - **suspend DEST [--for D]**: recipients routed there are held back, not sent: each waits
//!   in the spool (out of memory) until the suspension ends, or until its maximum age, when it
//!   expires (category `admin`). Suspensions are a spool setting, so they survive a restart.
//!   Jobs a core already holds go on.
//! - **resume DEST**: lifts the suspension and brings every recipient waiting there forward.
//! - **retry-now DEST**: every recipient waiting there is due now.
//! - **bounce DEST**: every recipient waiting there ends `bounced` (category `admin`), its
//!   sender told as for any bounce. One in an attempt at that moment finishes it.
//! - **list**, **show DEST**: the spool's waiting recipients by destination.
//!
//! Commands come from the API's thread as [`Order`]s and are carried out on the producer's
//! thread (by [`QueueControl`], which the spool's job source turns), where the routes and the
//! recipients in memory are: nothing here is shared with a core. A command that must visit
//! what waits in the spool does it a slice a turn (a `Sweep`), so delivery goes on meanwhile;
//! its answer comes when it is done. Reading for `list` and `show` is done on the API's side,
//! from the spool's reader, with a snapshot of the routes from the producer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::commit::{Committer, Ticket};
use super::due::Scheduled;
use super::source::{instant_of, rfc3339_of_ms, wall_ms_of};
use super::spool::{Change, SpoolError, SpoolRead, Status, recipient_id};
use crate::deliver::dispatch::Dispatch;
use crate::deliver::hold::{Hold, Holds, Selector};
use crate::deliver::ledger::{Report, Withdrawal};
use crate::deliver::lowercase;
use crate::deliver::pending::Pending;
use crate::deliver::route::{Lookup, Route};
use crate::deliver::shaping::ShapingRules;
use crate::engine::Destination;

/// The spool setting the suspensions are kept in (JSON).
pub const SUSPENSIONS: &str = "suspensions";
/// Waiting recipients a sweep looks at in one turn of the producer.
const SWEEP_SLICE: usize = 2_000;
/// Recipients a sweep keeps while their domains resolve, before it reads no further.
const SWEEP_UNRESOLVED: usize = 10_000;
/// How long a sweep waits for a domain's route; one that does not come is taken as not named
/// (only its name can then name it).
const SWEEP_DNS: Duration = Duration::from_secs(30);
/// Destinations `list` shows by default, the most waiting first.
pub const LIST_LIMIT: usize = 100;
/// Recipients `show` names.
const SHOW_RECIPIENTS: usize = 50;
/// Domains a row of `list` or `show` names (with how many wait for each).
const ROW_DOMAINS: usize = 20;

/// An operator's suspension, as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub dest: String,
    /// When it was set and until when (milliseconds since the Unix epoch; `None`: until
    /// resumed).
    pub since_ms: u64,
    pub until_ms: Option<u64>,
}

impl Suspension {
    fn selector(&self) -> Option<Selector> {
        Selector::parse(&self.dest).ok()
    }

    fn json(&self) -> Value {
        json!({"dest": self.dest, "since": rfc3339_of_ms(self.since_ms), "until": self.until_ms.map(rfc3339_of_ms)})
    }
}

/// The suspensions a spool setting holds (none if unset); a damaged value is an error, not
/// silently nothing, so a restart never lifts a suspension by accident.
pub fn suspensions_of(value: Option<&[u8]>) -> Result<Vec<Suspension>, SpoolError> {
    match value {
        None => Ok(Vec::new()),
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| super::spool::corrupt("meta", SUSPENSIONS, e))
        }
    }
}

#[derive(Debug)]
pub enum Command {
    Suspend(Selector, Option<Duration>),
    Resume(Selector),
    RetryNow(Selector),
    Bounce(Selector),
    /// The routes and suspensions as they are now (for `list` and `show`).
    Routes,
    /// Shaping rules read again (serve's SIGHUP): destinations are made anew under them.
    Reshape(Box<ShapingRules>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("{0} is not suspended")]
    NotSuspended(String),
    #[error("the spool: {0}")]
    Spool(String),
    #[error("delivery is stopping")]
    Stopping,
}

pub type Answer = Result<Value, QueueError>;

/// A command and where its answer goes.
pub struct Order {
    pub command: Command,
    pub reply: oneshot::Sender<Answer>,
}

/// The API's side: sends orders to the producer, and reads the spool for `list` and `show`.
#[derive(Clone)]
pub struct QueueHandle {
    orders: mpsc::Sender<Order>,
    reader: Arc<dyn SpoolRead>,
}

impl QueueHandle {
    pub fn new(orders: mpsc::Sender<Order>, reader: Arc<dyn SpoolRead>) -> QueueHandle {
        QueueHandle { orders, reader }
    }

    /// Carries out `command` on the producer's thread; the answer when it is done.
    pub async fn order(&self, command: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.orders.send(Order { command, reply }).map_err(|_| QueueError::Stopping)?;
        answer.await.unwrap_or(Err(QueueError::Stopping))
    }

    /// [`QueueHandle::order`] from a thread that is not async (serve's main loop).
    pub fn order_blocking(&self, command: Command) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.orders.send(Order { command, reply }).map_err(|_| QueueError::Stopping)?;
        answer.blocking_recv().unwrap_or(Err(QueueError::Stopping))
    }

    /// What waits, by destination: every destination (or only those `only` names), the most
    /// waiting first, at most `limit`; with `only`, the first recipients too. Reads the whole
    /// schedule: call it off the async threads.
    pub fn summary(&self, routes: &Value, only: Option<&Selector>, limit: usize) -> Answer {
        summary(&*self.reader, routes, only, limit)
    }
}

/// What to do to each recipient a sweep finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    RetryNow,
    Bounce,
}

/// A command visiting every waiting recipient in the spool, a slice a turn.
struct Sweep {
    selector: Selector,
    act: Act,
    entries: Box<dyn Iterator<Item = Result<Scheduled, SpoolError>> + Send>,
    /// Recipients whose domain's route is being asked, by domain.
    unresolved: HashMap<String, Vec<Scheduled>>,
    unresolved_count: usize,
    read_all: bool,
    started: Instant,
    /// Recipients acted on so far, in memory and in the spool.
    count: usize,
    /// What the answer says besides the count.
    answer: Value,
    /// A write the answer waits for too (a resume's suspensions).
    saved: Option<Ticket<()>>,
    reply: oneshot::Sender<Answer>,
}

/// What the producer's job source lends a turn of queue control.
pub struct Turn<'a> {
    pub dispatch: &'a mut Dispatch,
    /// Recipients held in memory, by id (see `super::source`).
    pub held: &'a mut crate::hash::FxMap<u64, ()>,
    /// Recipients parked, held until the spool records it: attempts then.
    pub parked: &'a mut crate::hash::FxMap<u64, u32>,
    /// Recipients that wait in the spool only, and from when the schedule is to be read.
    pub unread: &'a mut usize,
    pub unread_from: &'a mut Option<u64>,
    /// Whether a recipient in the schedule is an arrival intake is handing over (never read
    /// from the schedule).
    pub is_arrival: &'a dyn Fn(&Scheduled) -> bool,
    /// A recipient read from the schedule, as the source makes it.
    pub pending_of: &'a dyn Fn(Scheduled, Instant, SystemTime) -> Pending,
}

/// A write of held-back recipients' new due times (id and attempts of each), under way.
struct Holding {
    ids: Vec<(u64, u32)>,
    ticket: Ticket<()>,
}

/// Queue control on the producer's thread.
pub struct QueueControl {
    orders: mpsc::Receiver<Order>,
    committer: Arc<Committer>,
    reader: Arc<dyn SpoolRead>,
    suspensions: Vec<Suspension>,
    /// Answers waiting for the suspensions to be durable.
    saving: VecDeque<(Ticket<()>, Value, oneshot::Sender<Answer>)>,
    /// Recipients held back, parked until the spool has their new due time.
    holding: VecDeque<Holding>,
    sweeps: VecDeque<Sweep>,
    max_age: Duration,
}

impl QueueControl {
    /// Queue control for a spool whose suspensions are `suspensions`, for recipients that
    /// expire after `max_age`.
    pub fn new(
        orders: mpsc::Receiver<Order>,
        committer: Arc<Committer>,
        reader: Arc<dyn SpoolRead>,
        suspensions: Vec<Suspension>,
        max_age: Duration,
    ) -> QueueControl {
        QueueControl {
            orders,
            committer,
            reader,
            suspensions,
            saving: VecDeque::new(),
            holding: VecDeque::new(),
            sweeps: VecDeque::new(),
            max_age,
        }
    }

    /// The holds the suspensions (and the bounces under way) make, for the dispatch.
    pub fn holds(&self, now: Instant, wall: SystemTime) -> Holds {
        let wall_ms = wall_ms_of(now, now, wall);
        let mut holds: Vec<Hold> = self
            .suspensions
            .iter()
            .filter(|s| s.until_ms.is_none_or(|until| until > wall_ms))
            .filter_map(|s| {
                let until = s.until_ms.map(|ms| instant_of(ms, now, wall));
                Some(Hold { selector: s.selector()?, until })
            })
            .collect();
        // A bounce holds back what is routed there while it sweeps, and bounces it.
        holds.extend(
            self.sweeps
                .iter()
                .filter(|s| s.act == Act::Bounce)
                .map(|s| Hold { selector: s.selector.clone(), until: None }),
        );
        Holds::new(holds)
    }

    /// One turn: new orders, recipients held back, durable writes, and a slice of the sweep
    /// under way.
    pub fn turn(&mut self, t: &mut Turn<'_>, now: Instant) {
        // The producer turns this for every job: with nothing to do, nothing more is looked at
        // (not even the wall clock).
        let orders: Vec<Order> = self.orders.try_iter().collect();
        let held = t.dispatch.take_held();
        let quiet = self.saving.is_empty() && self.holding.is_empty() && self.sweeps.is_empty();
        if orders.is_empty() && held.is_empty() && quiet {
            return;
        }
        let wall = SystemTime::now();
        let mut holds_changed = false;
        for order in orders {
            holds_changed |= self.order(order, t, now, wall);
        }
        self.hold_back(held, t, now, wall);
        self.answer_saved();
        self.released(t);
        if let Some(sweep) = self.sweeps.front_mut()
            && sweep_slice(sweep, t, &self.committer, now, wall)
        {
            // Answered once what it wrote is durable too.
            let saved = match &mut sweep.saved {
                Some(ticket) => ticket.try_take(),
                None => Some(Ok(())),
            };
            if let Some(saved) = saved
                && let Some(sweep) = self.sweeps.pop_front()
            {
                let mut answer = sweep.answer;
                answer["recipients"] = json!(sweep.count);
                let answer = saved.map(|()| answer).map_err(|e| QueueError::Spool(e.to_string()));
                let _ = sweep.reply.send(answer);
                holds_changed |= sweep.act == Act::Bounce;
            }
        }
        if holds_changed {
            t.dispatch.set_holds(self.holds(now, wall));
        }
    }

    /// Carries out `order` (its answer now, or when its writes or its sweep are done); true
    /// when the holds changed.
    fn order(&mut self, order: Order, t: &mut Turn<'_>, now: Instant, wall: SystemTime) -> bool {
        let Order { command, reply } = order;
        let wall_ms = wall_ms_of(now, now, wall);
        match command {
            Command::Routes => {
                let _ = reply.send(Ok(self.routes(t.dispatch, now, wall)));
                false
            }
            Command::Reshape(rules) => {
                let retired = t.dispatch.routes().in_use().len();
                t.dispatch.reshape(*rules);
                let _ = reply.send(Ok(json!({"reshaped": retired})));
                false
            }
            Command::Suspend(selector, duration) => {
                let until_ms = duration.map(|d| wall_ms + d.as_millis() as u64);
                let suspension = Suspension { dest: selector.to_string(), since_ms: wall_ms, until_ms };
                self.suspensions
                    .retain(|s| s.dest != suspension.dest && s.until_ms.is_none_or(|u| u > wall_ms));
                self.suspensions.push(suspension.clone());
                let answer = json!({"suspended": suspension.json()});
                self.save(answer, reply);
                // What is ready to go there now is held back too.
                let until = duration.map(|d| now + d);
                let ready: Vec<_> = t.dispatch.withdraw(&selector, now);
                let held: Vec<_> = ready.into_iter().map(|p| (p, None, until)).collect();
                self.hold_back_pending(held, t, now, wall);
                true
            }
            Command::Resume(selector) => {
                let before = self.suspensions.len();
                self.suspensions.retain(|s| s.dest != selector.as_str());
                if self.suspensions.len() == before {
                    let _ = reply.send(Err(QueueError::NotSuspended(selector.to_string())));
                    return false;
                }
                let value = serde_json::to_vec(&self.suspensions).unwrap_or_default();
                let saved = self.committer.set_setting(SUSPENSIONS, value);
                let count = t.dispatch.bring_forward(&selector, now);
                self.sweep(
                    selector.clone(),
                    Act::RetryNow,
                    json!({"resumed": selector.as_str()}),
                    count,
                    reply,
                );
                if let Some(sweep) = self.sweeps.back_mut() {
                    sweep.saved = Some(saved);
                }
                true
            }
            Command::RetryNow(selector) => {
                let count = t.dispatch.bring_forward(&selector, now);
                self.sweep(
                    selector.clone(),
                    Act::RetryNow,
                    json!({"retry_now": selector.as_str()}),
                    count,
                    reply,
                );
                false
            }
            Command::Bounce(selector) => {
                let withdrawn = t.dispatch.withdraw(&selector, now);
                let count = withdrawn.len();
                for p in withdrawn {
                    bounce(t.dispatch, p, &selector, now);
                }
                self.sweep(
                    selector.clone(),
                    Act::Bounce,
                    json!({"bounced": selector.as_str()}),
                    count,
                    reply,
                );
                true
            }
        }
    }

    fn sweep(
        &mut self,
        selector: Selector,
        act: Act,
        answer: Value,
        count: usize,
        reply: oneshot::Sender<Answer>,
    ) {
        self.sweeps.push_back(Sweep {
            selector,
            act,
            entries: self.reader.scheduled_from(0),
            unresolved: HashMap::new(),
            unresolved_count: 0,
            read_all: false,
            started: Instant::now(),
            count,
            answer,
            saved: None,
            reply,
        });
    }

    /// Writes the suspensions; `answer` goes out once they are durable.
    fn save(&mut self, answer: Value, reply: oneshot::Sender<Answer>) {
        let value = serde_json::to_vec(&self.suspensions).unwrap_or_default();
        let ticket = self.committer.set_setting(SUSPENSIONS, value);
        self.saving.push_back((ticket, answer, reply));
    }

    fn answer_saved(&mut self) {
        while let Some(result) = self.saving.front_mut().and_then(|(ticket, _, _)| ticket.try_take()) {
            let Some((_, answer, reply)) = self.saving.pop_front() else { break };
            let _ = reply.send(result.map(|()| answer).map_err(|e| QueueError::Spool(e.to_string())));
        }
    }

    /// Recipients the dispatch held back: each waits in the spool until its hold ends or it
    /// expires; one a bounce is sweeping for is bounced.
    fn hold_back(
        &mut self,
        held: Vec<(Pending, Arc<Destination>, Option<Instant>)>,
        t: &mut Turn<'_>,
        now: Instant,
        wall: SystemTime,
    ) {
        let held = held.into_iter().map(|(p, d, until)| (p, Some(d), until)).collect();
        self.hold_back_pending(held, t, now, wall);
    }

    fn hold_back_pending(
        &mut self,
        held: Vec<(Pending, Option<Arc<Destination>>, Option<Instant>)>,
        t: &mut Turn<'_>,
        now: Instant,
        wall: SystemTime,
    ) {
        let mut changes = Vec::new();
        let mut ids = Vec::new();
        for (p, destination, until) in held {
            let domain = lowercase(p.rcpt.domain()).into_owned();
            if let Some(sweep) = self.sweeps.iter().find(|s| {
                s.act == Act::Bounce
                    && (s.selector.is_domain(&domain)
                        || destination.as_ref().is_some_and(|d| s.selector.names(d)))
            }) {
                let selector = sweep.selector.clone();
                bounce(t.dispatch, p, &selector, now);
                continue;
            }
            let deadline = p.born + self.max_age;
            if deadline <= now {
                let reason =
                    "not attempted: its destination stayed suspended by an operator past its maximum age";
                t.dispatch.report(Report::Withdrawn {
                    pending: p,
                    status: Withdrawal::Expired,
                    reason: reason.into(),
                    at: now,
                });
                continue;
            }
            let due = until.map_or(deadline, |u| u.min(deadline));
            let (message, index) = super::spool::of_recipient_id(p.id);
            changes.push(Change {
                message,
                index,
                status: Status::Waiting { attempts: p.attempts, due_ms: wall_ms_of(due, now, wall) },
            });
            // Held here until the spool has it (see `super::source`).
            t.parked.insert(p.id, p.attempts);
            ids.push((p.id, p.attempts));
        }
        if !changes.is_empty() {
            let ticket = self.committer.record(changes, None, Vec::new());
            self.holding.push_back(Holding { ids, ticket });
        }
    }

    /// Looks at the writes of held-back recipients: one that failed lets them go back to the
    /// schedule as they were (read again, and held back again).
    fn released(&mut self, t: &mut Turn<'_>) {
        while let Some(result) = self.holding.front_mut().and_then(|h| h.ticket.try_take()) {
            let Some(Holding { ids, .. }) = self.holding.pop_front() else { break };
            if let Err(e) = result {
                eprintln!("volley serve: holding back {} recipients in the spool failed ({e})", ids.len());
                for (id, _) in ids {
                    if t.parked.remove(&id).is_some() && t.held.remove(&id).is_some() {
                        *t.unread += 1;
                        // Where it was, due as before: read the schedule from its start.
                        *t.unread_from = Some(0);
                    }
                }
            }
        }
    }

    /// The routes and suspensions now, for `list` and `show`.
    fn routes(&self, dispatch: &Dispatch, now: Instant, wall: SystemTime) -> Value {
        let wall_ms = wall_ms_of(now, now, wall);
        let routes = dispatch.routes();
        let destinations: Vec<Value> = routes
            .in_use()
            .iter()
            .map(|d| {
                json!({
                    "name": d.name,
                    "hosts": d.hosts.iter().map(|h| &**h).collect::<Vec<_>>(),
                    "connections": d.health.established(),
                    "max_connections": d.max_connections,
                    "slowed_or_suspended_until": d.shaping.suspended(now).map(|u| rfc3339_of_ms(wall_ms_of(u, now, wall))),
                })
            })
            .collect();
        let domains: serde_json::Map<String, Value> = routes
            .known(now)
            .map(|(domain, route)| {
                let to = match route {
                    Route::Deliver(d) => json!(d.name),
                    Route::Undeliverable(why) => json!({"undeliverable": why}),
                };
                (domain.to_owned(), to)
            })
            .collect();
        let suspended: Vec<Value> = self
            .suspensions
            .iter()
            .filter(|s| s.until_ms.is_none_or(|u| u > wall_ms))
            .map(Suspension::json)
            .collect();
        let relay = routes.relay_destination().map(|d| d.name.as_str());
        json!({"destinations": destinations, "domains": domains, "relay": relay, "suspended": suspended})
    }
}

/// Bounces `p` (taken out of the queue by an operator).
fn bounce(dispatch: &Dispatch, p: Pending, selector: &Selector, now: Instant) {
    let reason = format!("bounced by an operator (volley queue bounce {selector})");
    dispatch.report(Report::Withdrawn { pending: p, status: Withdrawal::Bounced, reason, at: now });
}

/// One slice of `sweep`; true when it is done.
fn sweep_slice(
    sweep: &mut Sweep,
    t: &mut Turn<'_>,
    committer: &Committer,
    now: Instant,
    wall: SystemTime,
) -> bool {
    let mut changes = Vec::new();
    // Recipients whose routes came meanwhile; those asked too long ago are taken as not named.
    let asked: Vec<String> = sweep.unresolved.keys().cloned().collect();
    for domain in asked {
        let named = match t.dispatch.route_of(&domain, now) {
            Lookup::Ready(Route::Deliver(d)) => sweep.selector.names(&d),
            Lookup::Ready(Route::Undeliverable(_)) => false,
            Lookup::Pending if now.saturating_duration_since(sweep.started) < SWEEP_DNS => continue,
            Lookup::Pending => false,
        };
        let entries = sweep.unresolved.remove(&domain).unwrap_or_default();
        sweep.unresolved_count -= entries.len();
        if named {
            for entry in entries {
                act(sweep, entry, t, &mut changes, now, wall);
            }
        }
    }
    let mut looked = 0;
    while !sweep.read_all && looked < SWEEP_SLICE && sweep.unresolved_count < SWEEP_UNRESOLVED {
        let Some(entry) = sweep.entries.next() else {
            sweep.read_all = true;
            break;
        };
        looked += 1;
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                eprintln!("volley serve: reading the spool's schedule for the queue command: {e}");
                continue;
            }
        };
        let id = recipient_id(entry.message, entry.index);
        // In memory (its own turn comes through the dispatch), or an arrival on its way there.
        if t.held.contains_key(&id) || (t.is_arrival)(&entry) {
            continue;
        }
        let domain = lowercase(entry.address.domain()).into_owned();
        if sweep.selector.is_domain(&domain) {
            act(sweep, entry, t, &mut changes, now, wall);
            continue;
        }
        match t.dispatch.route_of(&domain, now) {
            Lookup::Ready(Route::Deliver(d)) if sweep.selector.names(&d) => {
                act(sweep, entry, t, &mut changes, now, wall)
            }
            Lookup::Ready(_) => {}
            Lookup::Pending => {
                sweep.unresolved.entry(domain).or_default().push(entry);
                sweep.unresolved_count += 1;
            }
        }
    }
    if !changes.is_empty() {
        // Its failure is said by the writer; the recipients keep their times.
        drop(committer.record(changes, None, Vec::new()));
    }
    sweep.read_all && sweep.unresolved.is_empty()
}

/// Does what `sweep` is for to one recipient waiting in the spool only.
fn act(
    sweep: &mut Sweep,
    entry: Scheduled,
    t: &mut Turn<'_>,
    changes: &mut Vec<Change>,
    now: Instant,
    wall: SystemTime,
) {
    let now_ms = wall_ms_of(now, now, wall);
    match sweep.act {
        Act::RetryNow => {
            if entry.due_ms > now_ms {
                // Later than received, or it would look like an arrival on its way.
                let due_ms = now_ms.max(entry.received_ms + 1);
                let status = Status::Waiting { attempts: entry.attempts, due_ms };
                changes.push(Change { message: entry.message, index: entry.index, status });
                sweep.count += 1;
            }
        }
        Act::Bounce => {
            let id = recipient_id(entry.message, entry.index);
            t.held.insert(id, ());
            *t.unread = t.unread.saturating_sub(1);
            let p = (t.pending_of)(entry, now, wall);
            bounce(t.dispatch, p, &sweep.selector, now);
            sweep.count += 1;
        }
    }
}

/// `list` and `show`: the spool's waiting recipients grouped by the destination their domain
/// routes to now (by domain if its route is not known), joined with `routes`
/// ([`Command::Routes`]'s answer).
fn summary(reader: &dyn SpoolRead, routes: &Value, only: Option<&Selector>, limit: usize) -> Answer {
    #[derive(Default)]
    struct Row {
        waiting: usize,
        next_ms: u64,
        oldest_ms: u64,
        domains: BTreeMap<String, usize>,
        recipients: Vec<Value>,
    }
    let destinations: HashMap<&str, &Value> = routes["destinations"]
        .as_array()
        .map(|all| all.iter().filter_map(|d| Some((d["name"].as_str()?, d))).collect())
        .unwrap_or_default();
    let relay = routes["relay"].as_str();
    let destination_of =
        |domain: &str| relay.or_else(|| routes["domains"].get(domain).and_then(Value::as_str));
    // A destination's hosts, as the routes name them.
    let hosts_of = |name: &str| {
        destinations
            .get(name)
            .and_then(|d| d["hosts"].as_array())
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    };
    let named = |domain: &str, destination: Option<&str>| {
        let Some(selector) = only else { return true };
        selector.is_domain(domain) || destination.is_some_and(|name| selector.names_by(name, hosts_of(name)))
    };
    let mut rows: HashMap<String, Row> = HashMap::new();
    let mut total = 0usize;
    for entry in reader.scheduled_from(0) {
        let entry = entry.map_err(|e| QueueError::Spool(e.to_string()))?;
        total += 1;
        let domain = lowercase(entry.address.domain()).into_owned();
        let destination = destination_of(&domain);
        if !named(&domain, destination) {
            continue;
        }
        let row = rows.entry(destination.unwrap_or(&domain).to_owned()).or_default();
        if row.waiting == 0 || entry.due_ms < row.next_ms {
            row.next_ms = entry.due_ms;
        }
        if row.waiting == 0 || entry.received_ms < row.oldest_ms {
            row.oldest_ms = entry.received_ms;
        }
        row.waiting += 1;
        *row.domains.entry(domain).or_default() += 1;
        if only.is_some() && row.recipients.len() < SHOW_RECIPIENTS {
            row.recipients.push(json!({
                "id": recipient_id(entry.message, entry.index),
                "message": entry.message.0,
                "rcpt": entry.address.as_str(),
                "attempts": entry.attempts,
                "next_attempt": rfc3339_of_ms(entry.due_ms),
                "received": rfc3339_of_ms(entry.received_ms),
            }));
        }
    }
    let suspended = routes["suspended"].as_array().cloned().unwrap_or_default();
    let suspension_of = |name: &str, domains: &BTreeMap<String, usize>| {
        suspended.iter().find(|s| {
            let Some(selector) = s["dest"].as_str().and_then(|d| Selector::parse(d).ok()) else {
                return false;
            };
            domains.contains_key(selector.as_str()) || selector.names_by(name, hosts_of(name))
        })
    };
    let mut rows: Vec<(String, Row)> = rows.into_iter().collect();
    rows.sort_by(|a, b| b.1.waiting.cmp(&a.1.waiting).then_with(|| a.0.cmp(&b.0)));
    let shown: Vec<Value> = rows
        .iter()
        .take(limit)
        .map(|(name, row)| {
            let known = destinations.get(name.as_str());
            let mut v = json!({
                "destination": name,
                "routed": known.is_some(),
                "waiting": row.waiting,
                "next_attempt": rfc3339_of_ms(row.next_ms),
                "oldest": rfc3339_of_ms(row.oldest_ms),
                "domains": busiest(&row.domains),
                "domain_count": row.domains.len(),
                "connections": known.map(|d| d["connections"].clone()),
                "suspended": suspension_of(name, &row.domains).cloned(),
            });
            if only.is_some() {
                v["hosts"] = known.map_or(Value::Null, |d| d["hosts"].clone());
                v["recipients"] = json!(row.recipients);
            }
            v
        })
        .collect();
    Ok(json!({
        "waiting": total,
        "destinations": shown,
        "more": rows.len().saturating_sub(limit),
        "suspended": suspended,
    }))
}

/// A row's domains with the most waiting, at most [`ROW_DOMAINS`] (a provider's destination
/// may serve tens of thousands).
fn busiest(domains: &BTreeMap<String, usize>) -> BTreeMap<&str, usize> {
    let mut all: Vec<(&str, usize)> = domains.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter().take(ROW_DOMAINS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Address;
    use crate::serve::spool::{self, Accepted};

    #[test]
    fn suspensions_round_trip_and_a_damaged_setting_is_an_error_not_none() {
        assert!(suspensions_of(None).unwrap().is_empty());
        let s = vec![Suspension { dest: "mx.big.test".into(), since_ms: 1, until_ms: Some(2) }];
        assert_eq!(suspensions_of(Some(&serde_json::to_vec(&s).unwrap())).unwrap(), s);
        assert!(suspensions_of(Some(b"{not json")).is_err(), "never lifted by accident");
    }

    /// `list` groups what waits by the destination its domain routes to (by domain when the
    /// route is not known); `show` keeps what DEST names, by domain or by host.
    #[test]
    fn what_waits_is_summed_by_destination_and_shown_for_dest() {
        let dir = std::env::temp_dir().join(format!("volley-queue-summary-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = spool::open(&dir).unwrap();
        let message = |rcpts: &[&str]| Accepted {
            sender: None,
            recipients: rcpts.iter().map(|r| Address::new(r).unwrap()).collect(),
            content: Arc::from(&b"Subject: x\r\n\r\nx\r\n"[..]),
            received_ms: 1_000,
            origin: "t".into(),
        };
        spool.accept(&[message(&["a@a.test", "b@b.test", "c@c.test"]), message(&["d@a.test"])]).unwrap();
        let routes = json!({
            "destinations": [{"name": "mx.big.test", "hosts": ["mx.big.test"], "connections": 2}],
            "domains": {"a.test": "mx.big.test", "b.test": "mx.big.test"},
            "relay": null,
            "suspended": [{"dest": "b.test", "since": "x", "until": null}],
        });
        let reader = spool.reader();
        let list = summary(&*reader, &routes, None, 10).unwrap();
        assert_eq!(list["waiting"], 4);
        let rows = list["destinations"].as_array().unwrap();
        assert_eq!(
            (rows[0]["destination"].as_str(), rows[0]["waiting"].as_u64()),
            (Some("mx.big.test"), Some(3))
        );
        assert_eq!(rows[0]["domains"], json!({"a.test": 2, "b.test": 1}));
        assert_eq!(rows[0]["domain_count"], 2);
        let many: BTreeMap<String, usize> = (0..30).map(|i| (format!("d{i}.test"), i)).collect();
        let top = busiest(&many);
        assert_eq!((top.len(), top.get("d29.test"), top.get("d0.test")), (ROW_DOMAINS, Some(&29), None));
        assert_eq!(rows[0]["suspended"]["dest"], "b.test", "a suspension of one of its domains shows");
        assert_eq!(
            (rows[1]["destination"].as_str(), rows[1]["routed"].as_bool()),
            (Some("c.test"), Some(false))
        );
        let host = Selector::parse("MX.BIG.TEST").unwrap();
        let show = summary(&*reader, &routes, Some(&host), usize::MAX).unwrap();
        assert_eq!(show["destinations"].as_array().unwrap().len(), 1);
        assert_eq!(show["destinations"][0]["recipients"].as_array().unwrap().len(), 3);
        let domain = Selector::parse("c.test").unwrap();
        let show = summary(&*reader, &routes, Some(&domain), usize::MAX).unwrap();
        assert_eq!(show["destinations"][0]["recipients"][0]["rcpt"], "c@c.test");
        let limited = summary(&*reader, &routes, None, 1).unwrap();
        assert_eq!(limited["more"], 1);
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
