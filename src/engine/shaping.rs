//! Traffic shaping: message and connection rates per destination and for the whole run, and
//! reactions to replies that ask us to slow down (a `421 4.7.0 [TSS04]`), which suspend or slow
//! a destination for a while.
//!
//! Every core shares a destination's limits through atomics on the [`Destination`], never a
//! lock or a map: a rate is a GCRA gate (the time the next message may go, advanced by one
//! interval per message with a compare-and-swap), so it holds exactly across cores however the
//! destination's jobs are spread. A destination without limits pays two relaxed loads per
//! message.
//!
//! [`Destination`]: super::Destination

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::job::{instant_at, nanos_since_epoch};
use crate::proto::Reply;
use crate::proto::pattern::ReplyPattern;

/// Events waiting for the reader before new ones are dropped (and counted).
pub const EVENT_QUEUE: usize = 1024;

/// A rate: `count` per `per`, written `100/s`, `6000/min`, `20000/h` (also `second`,
/// `minute`, `hour`, `m`, `hr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    /// The time between two events at this rate, in nanoseconds (at least one).
    pub fn interval_nanos(&self) -> u64 {
        let nanos = self.per.as_nanos() / u128::from(self.count.max(1));
        u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
    }

    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = || format!("rate `{s}`: write COUNT/UNIT, like `100/s`, `6000/min` or `20000/h`");
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().replace('_', "").parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("rate `{s}`: the count must be at least 1"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hr" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            86_400 => "day",
            _ => return write!(f, "{}/{:?}", self.count, self.per),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A rate gate shared by every core: the earliest time (nanoseconds after the engine's epoch)
/// the next event may happen. Taking a turn moves it one interval on. No burst: events are
/// spaced evenly, which is what a receiver counting per second sees as polite.
#[derive(Debug, Default)]
pub struct Gate {
    next: AtomicU64,
}

impl Gate {
    /// Takes a turn at `now` with `interval` between turns, or says when the next one is.
    pub fn take(&self, now: u64, interval: u64) -> Result<(), u64> {
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            if next > now {
                return Err(next);
            }
            match self.next.compare_exchange_weak(next, now + interval, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => next = seen,
            }
        }
    }

    /// Undoes a turn taken at `now` with `interval`, unless another was taken since.
    pub fn undo(&self, now: u64, interval: u64) {
        let _ = self.next.compare_exchange(now + interval, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When the next turn is, without taking it.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// A destination's configured limits (what `send`'s shaping rules decide for it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Messages (transactions) per connection before it is closed and another opened.
    pub messages_per_connection: Option<u64>,
    /// Messages per unit of time, across cores.
    pub rate: Option<Rate>,
    /// New connections per unit of time, across cores.
    pub connection_rate: Option<Rate>,
}

/// What a reaction does to a destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing new is sent: queued messages are deferred to the end of the suspension.
    Suspend,
    /// At most this rate, and at most this many connections (across cores), meanwhile.
    Slow { rate: Option<Rate>, connections: Option<usize> },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Suspend => f.write_str("suspended"),
            Action::Slow { rate, connections } => {
                f.write_str("slowed to")?;
                if let Some(r) = rate {
                    write!(f, " {r}")?;
                }
                if let Some(c) = connections {
                    write!(
                        f,
                        "{} {c} connection{}",
                        if rate.is_some() { "," } else { "" },
                        if *c == 1 { "" } else { "s" }
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// A reply pattern and what to do to the destination that sent it, for how long.
#[derive(Debug, Clone)]
pub struct Reaction {
    pub name: Arc<str>,
    pub pattern: ReplyPattern,
    pub action: Action,
    pub duration: Duration,
    /// Only for destinations set up by these shaping rules (empty: every destination).
    pub only: Vec<Arc<str>>,
}

/// The run's reactions, tried in order; the first that matches a reply applies. They can be
/// replaced while the cores read them (serve's SIGHUP), without a lock.
#[derive(Debug, Default)]
pub struct Reactions {
    rules: arc_swap::ArcSwap<Vec<Reaction>>,
}

impl Reactions {
    pub fn new(rules: Vec<Reaction>) -> Reactions {
        Reactions { rules: arc_swap::ArcSwap::from_pointee(rules) }
    }

    /// From now on, these rules.
    pub fn replace(&self, rules: Vec<Reaction>) {
        self.rules.store(Arc::new(rules));
    }

    pub fn is_empty(&self) -> bool {
        self.rules.load().is_empty()
    }

    /// The reaction to `reply` from a destination set up by the shaping rule `shaped_by`, if
    /// any. Positive replies never match. (A copy: asked on refusals only.)
    pub fn find(&self, reply: &Reply, shaped_by: Option<&str>) -> Option<Reaction> {
        let rules = self.rules.load();
        if reply.code < 400 || rules.is_empty() {
            return None;
        }
        let text = reply.text.to_lowercase();
        rules
            .iter()
            .find(|r| {
                (r.only.is_empty() || shaped_by.is_some_and(|s| r.only.iter().any(|o| &**o == s)))
                    && r.pattern.matches(Some(reply.code), reply.enhanced, &text)
            })
            .cloned()
    }
}

/// A destination suspended or slowed: the reply that did it and until when.
#[derive(Debug, Clone)]
pub struct ShapingEvent {
    pub destination: Arc<super::Destination>,
    pub rule: Arc<str>,
    pub action: Action,
    pub at: Instant,
    pub until: Instant,
    pub reply: Reply,
    /// The host that sent it, if the destination names its hosts.
    pub host: Option<Arc<str>>,
}

/// What a destination may use of limits it shares with other processes (the nodes of a
/// campaign shared through Redis): message and new-connection tokens and connection leases,
/// granted in blocks by someone outside the engine (`cluster::limits`), which reads back what
/// the cores wanted and had. Per message: one atomic decrement.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Messages and new connections this process may still start (granted, not yet used).
    messages: AtomicI64,
    connection_turns: AtomicI64,
    /// Connections this process may have open at once, across its cores.
    leases: AtomicU64,
    /// Connections open now (connecting or in session), across cores.
    open: AtomicU64,
    /// Of those, sessions closing because more are open than leased (the fleet gave some
    /// leases to other nodes): each finishes what it has in flight, takes nothing new, and
    /// ends.
    shedding: AtomicU64,
    /// Since the last look: messages held back for want of a token, and whether a slot
    /// waited for a lease.
    wanted_messages: AtomicU64,
    wanted_connection: std::sync::atomic::AtomicBool,
}

impl Fleet {
    /// Adds granted message tokens.
    pub fn grant_messages(&self, n: u64) {
        self.messages.fetch_add(n as i64, Ordering::AcqRel);
    }

    pub fn grant_connection_turns(&self, n: u64) {
        self.connection_turns.fetch_add(n as i64, Ordering::AcqRel);
    }

    /// Message tokens in hand.
    pub fn messages(&self) -> i64 {
        self.messages.load(Ordering::Acquire)
    }

    pub fn connection_turns(&self) -> i64 {
        self.connection_turns.load(Ordering::Acquire)
    }

    /// Sets the connections this process may hold (its leases).
    pub fn set_leases(&self, n: u64) {
        self.leases.store(n, Ordering::Release);
    }

    pub fn leases(&self) -> u64 {
        self.leases.load(Ordering::Acquire)
    }

    /// Connections open now, across cores.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Messages held back for want of a token since the last call.
    pub fn take_wanted_messages(&self) -> u64 {
        self.wanted_messages.swap(0, Ordering::AcqRel)
    }

    /// Whether a slot waited for a lease since the last call.
    pub fn take_wanted_connection(&self) -> bool {
        self.wanted_connection.swap(false, Ordering::AcqRel)
    }

    /// Takes a message token, or counts the want.
    pub fn take_message(&self) -> bool {
        let taken = Fleet::take(&self.messages);
        if !taken {
            self.wanted_messages.fetch_add(1, Ordering::AcqRel);
        }
        taken
    }

    /// Takes one token from `tokens`, or counts the want.
    fn take(tokens: &AtomicI64) -> bool {
        if tokens.fetch_sub(1, Ordering::AcqRel) > 0 {
            return true;
        }
        tokens.fetch_add(1, Ordering::AcqRel);
        false
    }
}

/// How soon to ask again when the fleet's tokens ran out (they are refilled every 100 ms).
pub const FLEET_RETRY: Duration = Duration::from_millis(10);

/// How often a slot held back by its fleet leases looks again (and says it wants one): twice
/// per settling of the leases (every 100 ms), so every settling sees the want.
pub const FLEET_LOOK: Duration = Duration::from_millis(50);

/// A destination's shaping state, shared by every core.
#[derive(Debug, Default)]
pub struct Shaping {
    /// Interval between messages (nanoseconds; zero: no rate).
    message_interval: u64,
    connection_interval: u64,
    messages: Gate,
    connections: Gate,
    /// Nanoseconds after the epoch until which nothing is sent (zero: never suspended).
    suspended_until: AtomicU64,
    /// While slowed: the interval between messages, and the connection limit (zero: none).
    slowed_until: AtomicU64,
    slow_interval: AtomicU64,
    slow_connections: AtomicU64,
    /// Limits shared with other processes, when they are (see [`Fleet`]).
    fleet: std::sync::OnceLock<Arc<Fleet>>,
}

impl Shaping {
    pub fn new(limits: &Limits) -> Shaping {
        // Fix the epoch before any instant this destination will see.
        nanos_since_epoch(Instant::now());
        Shaping {
            message_interval: limits.rate.map_or(0, |r| r.interval_nanos()),
            connection_interval: limits.connection_rate.map_or(0, |r| r.interval_nanos()),
            ..Shaping::default()
        }
    }

    /// Takes over what reactions did to `old` (suspended or slowed, until when): `old` is the
    /// same hosts' destination under earlier rules.
    pub fn carry_over(&self, old: &Shaping) {
        self.suspended_until.fetch_max(old.suspended_until.load(Ordering::Relaxed), Ordering::Relaxed);
        let slowed = old.slowed_until.load(Ordering::Relaxed);
        if slowed > self.slowed_until.load(Ordering::Relaxed) {
            self.slow_interval.store(old.slow_interval.load(Ordering::Relaxed), Ordering::Relaxed);
            self.slow_connections.store(old.slow_connections.load(Ordering::Relaxed), Ordering::Relaxed);
            self.slowed_until.store(slowed, Ordering::Relaxed);
        }
    }

    /// Shares this destination's limits with other processes through `fleet` (set once, before
    /// any core uses the destination).
    pub fn share_with_fleet(&self, fleet: Arc<Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.get()
    }

    /// A connection opened, for the fleet's count of open ones.
    pub fn connection_opened(&self) {
        if let Some(f) = self.fleet.get() {
            f.open.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A connection closed; `shed`: its session had claimed to shed (see
    /// [`Shaping::claim_shed`]).
    pub fn connection_closed(&self, shed: bool) {
        if let Some(f) = self.fleet.get() {
            f.open.fetch_sub(1, Ordering::AcqRel);
            if shed {
                f.shedding.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether a session should end (finishing what it has in flight, taking nothing new)
    /// because more connections are open than the fleet's leases allow now: true for as
    /// many sessions as are over, each claiming one (the fleet lowers a node's leases when
    /// other nodes wait for their share, and counts its open connections until they close).
    pub fn claim_shed(&self) -> bool {
        let Some(f) = self.fleet.get() else { return false };
        let leases = f.leases();
        let mut shedding = f.shedding.load(Ordering::Acquire);
        loop {
            if f.open().saturating_sub(shedding) <= leases {
                return false;
            }
            match f.shedding.compare_exchange(shedding, shedding + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => shedding = now,
            }
        }
    }

    /// A slot is held back by the connection target: if it is the fleet's leases that hold
    /// it back (every one leased is open), say so, and how soon to look again; `None`: not
    /// held by leases.
    pub fn want_connection(&self) -> Option<Duration> {
        let f = self.fleet.get()?;
        if f.open() < f.leases() {
            return None;
        }
        f.wanted_connection.store(true, Ordering::Release);
        Some(FLEET_LOOK)
    }

    /// Until when the destination is suspended, if it is at `now`.
    pub fn suspended(&self, now: Instant) -> Option<Instant> {
        let until = self.suspended_until.load(Ordering::Relaxed);
        (until > nanos_since_epoch(now)).then(|| instant_at(until))
    }

    fn slowed(&self, now: u64) -> bool {
        self.slowed_until.load(Ordering::Relaxed) > now
    }

    fn message_interval(&self, now: u64) -> u64 {
        if self.slowed(now) {
            self.message_interval.max(self.slow_interval.load(Ordering::Relaxed))
        } else {
            self.message_interval
        }
    }

    /// Takes the turn of one message at `now`, or says when to ask again.
    pub fn admit_message(&self, now: Instant) -> Result<(), Instant> {
        let t = nanos_since_epoch(now);
        let until = self.suspended_until.load(Ordering::Relaxed);
        if until > t {
            return Err(instant_at(until));
        }
        let interval = self.message_interval(t);
        if interval > 0 {
            self.messages.take(t, interval).map_err(instant_at)?;
        }
        if let Some(f) = self.fleet.get().filter(|_| self.message_interval > 0) {
            if !f.take_message() {
                if interval > 0 {
                    self.messages.undo(t, interval);
                }
                return Err(now + FLEET_RETRY);
            }
        }
        Ok(())
    }

    /// Gives back the message turn taken at `now` (the run's own rate refused it).
    pub fn give_back(&self, now: Instant) {
        let t = nanos_since_epoch(now);
        let interval = self.message_interval(t);
        if interval > 0 {
            self.messages.undo(t, interval);
        }
    }

    /// Whether a message could go at `now` (without taking its turn): a new connection is
    /// opened only for messages the rate lets through.
    pub fn message_ready(&self, now: Instant) -> bool {
        let t = nanos_since_epoch(now);
        self.suspended_until.load(Ordering::Relaxed) <= t
            && (self.message_interval(t) == 0 || self.messages.next() <= t)
            && self.fleet.get().is_none_or(|f| self.message_interval == 0 || f.messages() > 0)
    }

    /// Takes the turn of one new connection at `now`, or says when to ask again.
    pub fn admit_connection(&self, now: Instant) -> Result<(), Instant> {
        let t = nanos_since_epoch(now);
        let until = self.suspended_until.load(Ordering::Relaxed);
        if until > t {
            return Err(instant_at(until));
        }
        if self.connection_interval == 0 {
            return Ok(());
        }
        self.connections.take(t, self.connection_interval).map_err(instant_at)?;
        if let Some(f) = self.fleet.get()
            && !Fleet::take(&f.connection_turns)
        {
            self.connections.undo(t, self.connection_interval);
            return Err(now + FLEET_RETRY);
        }
        Ok(())
    }

    /// The connection limit a reaction set, while it lasts, and the leases this process holds
    /// when its connections are counted fleet-wide: the lower.
    pub fn connection_cap(&self, now: Instant) -> Option<usize> {
        let slowed = match self.slowed(nanos_since_epoch(now)) {
            true => Some(self.slow_connections.load(Ordering::Relaxed)).filter(|&n| n > 0),
            false => None,
        };
        let leased = self.fleet.get().map(|f| f.leases());
        match (slowed, leased) {
            (Some(a), Some(b)) => Some(a.min(b) as usize),
            (a, b) => a.or(b).map(|n| n as usize),
        }
    }

    /// The interval between messages (and new connections) its own limits set, in
    /// nanoseconds; zero: no such limit.
    pub fn message_rate_interval(&self) -> u64 {
        self.message_interval
    }

    pub fn connection_rate_interval(&self) -> u64 {
        self.connection_interval
    }

    /// Applies `action` until `until`. True when the destination was not already under an
    /// action of this kind (an event worth reporting); a match meanwhile only extends it.
    pub fn apply(&self, action: &Action, now: Instant, until: Instant) -> bool {
        let (now, until) = (nanos_since_epoch(now), nanos_since_epoch(until));
        match action {
            Action::Suspend => self.suspended_until.fetch_max(until, Ordering::Relaxed) <= now,
            Action::Slow { rate, connections } => {
                let was_slowed = self.slowed(now);
                // Several reactions at once: the slowest of them holds.
                let interval = rate.map_or(0, |r| r.interval_nanos());
                if interval > 0 {
                    // The next message waits one slow interval: slowing down starts now.
                    self.messages.next.fetch_max(now + interval, Ordering::Relaxed);
                }
                if was_slowed {
                    self.slow_interval.fetch_max(interval, Ordering::Relaxed);
                } else {
                    self.slow_interval.store(interval, Ordering::Relaxed);
                }
                let cap = connections.map_or(0, |c| c.max(1) as u64);
                let current = self.slow_connections.load(Ordering::Relaxed);
                if cap > 0 && (!was_slowed || current == 0 || cap < current) {
                    self.slow_connections.store(cap, Ordering::Relaxed);
                } else if !was_slowed {
                    self.slow_connections.store(0, Ordering::Relaxed);
                }
                self.slowed_until.fetch_max(until, Ordering::Relaxed);
                !was_slowed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let ok = [
            ("100/s", 100, 1, "100/s"),
            ("6000/min", 6000, 60, "6000/min"),
            (" 20_000 / h ", 20_000, 3600, "20000/h"),
            ("1/minute", 1, 60, "1/min"),
            ("5/day", 5, 86_400, "5/day"),
        ];
        for (text, count, secs, shown) in ok {
            let r: Rate = text.parse().unwrap();
            assert_eq!((r.count, r.per), (count, Duration::from_secs(secs)), "{text}");
            assert_eq!(r.to_string(), shown);
        }
        for bad in ["", "100", "0/s", "-1/s", "10/fortnight", "x/s", "1.5/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("4/s".parse::<Rate>().unwrap().interval_nanos(), 250_000_000);
        assert_eq!("1/min".parse::<Rate>().unwrap().per_second(), 1.0 / 60.0);
    }

    /// Shared with a fleet, a destination sends only on tokens it was granted, says what it
    /// wanted, and holds no more connections than its leases.
    #[test]
    fn a_fleet_grants_turns_and_leases() {
        let limits = Limits { rate: Some("1000/s".parse().unwrap()), ..Limits::default() };
        let s = Shaping::new(&limits);
        let fleet = Arc::new(Fleet::default());
        s.share_with_fleet(Arc::clone(&fleet));
        let now = Instant::now();
        assert!(!s.message_ready(now), "no token yet");
        assert!(s.admit_message(now).is_err());
        assert_eq!(fleet.take_wanted_messages(), 1, "the want is counted");
        fleet.grant_messages(2);
        let later = now + Duration::from_millis(5);
        assert!(s.message_ready(later));
        assert_eq!(s.admit_message(later), Ok(()));
        assert_eq!(s.admit_message(later + Duration::from_millis(1)), Ok(()));
        assert!(s.admit_message(later + Duration::from_millis(2)).is_err(), "two tokens, two messages");
        assert_eq!(fleet.messages(), 0, "a refusal takes no token");
        assert_eq!(s.connection_cap(now), Some(0), "no lease: no connection");
        assert_eq!(s.want_connection(), Some(FLEET_LOOK), "held back by its leases (none)");
        assert!(fleet.take_wanted_connection() && !fleet.take_wanted_connection());
        fleet.set_leases(3);
        assert_eq!(s.connection_cap(now), Some(3));
        s.connection_opened();
        assert_eq!(fleet.open(), 1);
        assert_eq!(s.want_connection(), None, "a lease is free: not the leases that hold it back");
        assert!(!fleet.take_wanted_connection());
        s.connection_opened();
        s.connection_opened();
        assert_eq!(s.want_connection(), Some(FLEET_LOOK), "every lease open");
        assert!(fleet.take_wanted_connection());
        // Leases taken back below what is open: that many sessions shed, no more.
        assert!(!s.claim_shed(), "3 open, 3 leased");
        fleet.set_leases(1);
        assert!(s.claim_shed() && s.claim_shed() && !s.claim_shed(), "two over");
        s.connection_closed(true);
        assert!(!s.claim_shed(), "one still shedding, 2 open for 1 lease");
        s.connection_closed(false);
        assert_eq!(fleet.open(), 1);
        // Without a rate of its own, messages need no token.
        let plain = Shaping::new(&Limits::default());
        plain.share_with_fleet(Arc::new(Fleet::default()));
        assert_eq!(plain.admit_message(now), Ok(()));
    }

    #[test]
    fn a_gate_spaces_turns_by_its_interval_and_says_when_the_next_is() {
        let g = Gate::default();
        assert_eq!(g.take(1_000, 100), Ok(()));
        assert_eq!(g.take(1_050, 100), Err(1_100), "too early");
        assert_eq!(g.take(1_100, 100), Ok(()));
        assert_eq!(g.take(5_000, 100), Ok(()), "idle time is not saved up as a burst");
        assert_eq!(g.take(5_001, 100), Err(5_100));
        g.undo(5_000, 100);
        assert_eq!(g.take(5_001, 100), Ok(()), "a turn given back is free again");
        g.undo(4_000, 100);
        assert_eq!(g.next(), 5_101, "only the turn that was taken can be given back");
    }

    #[test]
    fn a_gate_holds_its_rate_across_threads() {
        let g = Arc::new(Gate::default());
        let taken = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    // Simulated time: 10_000 ns in steps of 7; interval 100: at most 101 turns.
                    for now in (0..=10_000u64).step_by(7) {
                        if g.take(now, 100).is_ok() {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let n = taken.load(Ordering::Relaxed);
        assert!((90..=101).contains(&n), "{n} turns");
    }

    #[test]
    fn suspension_and_slowing_last_their_time_and_then_lift() {
        let s = Shaping::new(&Limits::default());
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert!(s.admit_message(t0).is_ok() && s.admit_message(t0).is_ok(), "no limits");
        assert!(s.apply(&Action::Suspend, t0, secs(10)), "a new suspension is an event");
        assert!(!s.apply(&Action::Suspend, secs(1), secs(5)), "a match meanwhile is not; never shortened");
        assert_eq!(s.suspended(secs(9)).map(|u| u.duration_since(t0).as_secs()), Some(10));
        assert!(s.admit_message(secs(9)).is_err() && s.admit_connection(secs(9)).is_err());
        assert!(!s.message_ready(secs(9)));
        assert!(s.suspended(secs(11)).is_none() && s.admit_message(secs(11)).is_ok(), "lifted");

        let slow = Action::Slow { rate: Some("1/s".parse().unwrap()), connections: Some(2) };
        assert!(s.apply(&slow, secs(20), secs(30)));
        assert_eq!(s.connection_cap(secs(21)), Some(2));
        assert!(s.admit_message(secs(21)).is_ok());
        assert!(s.admit_message(secs(21)).is_err(), "one a second");
        assert!(s.admit_message(secs(22)).is_ok());
        let tighter = Action::Slow { rate: Some("1/min".parse().unwrap()), connections: Some(1) };
        assert!(!s.apply(&tighter, secs(22), secs(25)));
        assert_eq!(s.connection_cap(secs(23)), Some(1), "the tighter cap holds");
        assert!(s.admit_message(secs(24)).is_err(), "the slower rate holds");
        assert_eq!(s.connection_cap(secs(31)), None);
        assert!(s.admit_message(secs(31)).is_ok() && s.admit_message(secs(31)).is_ok(), "back to no limit");
    }

    #[test]
    fn configured_rates_apply_to_messages_and_connections() {
        let limits = Limits {
            rate: Some("10/s".parse().unwrap()),
            connection_rate: Some("1/s".parse().unwrap()),
            ..Limits::default()
        };
        let s = Shaping::new(&limits);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(s.admit_message(ms(0)).is_ok());
        assert!(!s.message_ready(ms(50)));
        assert_eq!(s.admit_message(ms(50)).unwrap_err().duration_since(t0), Duration::from_millis(100));
        assert!(s.message_ready(ms(100)) && s.admit_message(ms(100)).is_ok());
        assert!(s.admit_connection(ms(0)).is_ok() && s.admit_connection(ms(999)).is_err());
        assert!(s.admit_connection(ms(1000)).is_ok());
    }

    #[test]
    fn reactions_match_refusals_only_and_the_first_rule_wins() {
        let rule = |name: &str, text: &str, action| Reaction {
            name: name.into(),
            pattern: ReplyPattern { text: vec![text.into()], ..ReplyPattern::default() }.normalise(),
            action,
            duration: Duration::from_secs(60),
            only: Vec::new(),
        };
        let r = Reactions::new(vec![
            rule("yahoo", "[TSS04]", Action::Suspend),
            rule("any-rate", "rate", Action::Slow { rate: None, connections: Some(1) }),
        ]);
        let reply = |code, text: &str| Reply { code, enhanced: None, text: text.into() };
        let hit = |code, text| r.find(&reply(code, text), None).map(|x| x.name);
        assert_eq!(
            hit(421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred, rate"),
            Some("yahoo".into())
        );
        assert_eq!(hit(451, "Rate limited"), Some("any-rate".into()));
        r.replace(vec![rule("other", "rate", Action::Suspend)]);
        assert_eq!(hit(451, "Rate limited"), Some("other".into()), "replaced in place");
        assert_eq!(hit(250, "rate [tss04]"), None, "never a positive reply");
        assert_eq!(hit(550, "no such user"), None);
    }
}
