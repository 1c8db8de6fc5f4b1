//! What flows into the engine: jobs (a message for a destination) from a job source.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use super::shaping::{Limits, Shaping};
use crate::proto::{Address, Message};

/// Where messages go: a set of addresses to try and the connection budget for them.
#[derive(Debug)]
pub struct Destination {
    /// Assigned by the job source, unique among the destinations it has in use at once: the
    /// key of the cores' pools and of the jobs the producer sets aside.
    pub index: usize,
    /// A domain, a relay, or a load-test target: used in reports.
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// The host name each address belongs to (an MX host, a relay), in the order of `addrs`;
    /// empty when addresses were given directly. Used for SNI and in the delivery log.
    pub hosts: Vec<Arc<str>>,
    /// The MX preference of each address, in the order of `addrs` (ascending); empty when
    /// addresses were given directly (tried in their order). See [`Destination::connect_order`].
    pub preferences: Vec<u16>,
    /// Connections open at once to this destination, across all cores.
    pub max_connections: usize,
    /// The name a TLS session checks the certificate against and sends as SNI; without it,
    /// the address connected to.
    pub tls_name: Option<rustls::pki_types::ServerName<'static>>,
    /// TLS the receiver requires, whatever the run's own policy (a domain enforcing MTA-STS):
    /// every session uses STARTTLS and this configuration, which checks the certificate
    /// against the host's name; a server that does not offer STARTTLS or whose certificate
    /// fails gets nothing, never plaintext.
    pub verified_tls: Option<Arc<rustls::ClientConfig>>,
    /// When set, `verified_tls` is required only of these hosts (MX hosts with DANE records,
    /// by name); the destination's other hosts get the run's own TLS policy and
    /// configuration, as RFC 7672 §2.2 lets hosts without records be used opportunistically.
    pub tls_required_of: Option<Vec<Arc<str>>>,
    /// Told what became of each session's TLS (a receiver that asks for TLS reports).
    pub tls_watch: Option<super::TlsWatch>,
    /// How this destination's sessions are going, across cores (written per session, never per
    /// message).
    pub health: Health,
    /// Rates, and what reactions to its replies did to it (see [`super::shaping`]).
    pub shaping: Shaping,
    /// Its own limits (what `shaping` enforces, and transactions per connection), if any.
    pub limits: Limits,
    /// The shaping rule that set its limits, for reports.
    pub shaped_by: Option<Arc<str>>,
}

impl Destination {
    pub fn new(
        index: usize,
        name: impl Into<String>,
        addrs: Vec<SocketAddr>,
        max_connections: usize,
    ) -> Self {
        Destination {
            index,
            name: name.into(),
            addrs,
            hosts: Vec::new(),
            preferences: Vec::new(),
            max_connections,
            tls_name: None,
            verified_tls: None,
            tls_required_of: None,
            tls_watch: None,
            health: Health::new(),
            shaping: Shaping::default(),
            limits: Limits::default(),
            shaped_by: None,
        }
    }

    /// Gives the destination its own limits, set by the rule named `rule` (if one did).
    pub fn with_limits(mut self, limits: &Limits, rule: Option<Arc<str>>) -> Self {
        self.shaping = Shaping::new(limits);
        self.limits = limits.clone();
        self.shaped_by = rule;
        self
    }

    /// Names the host of each address (same order and length as `addrs`).
    pub fn with_hosts(mut self, hosts: Vec<Arc<str>>) -> Self {
        debug_assert_eq!(hosts.len(), self.addrs.len());
        self.hosts = hosts;
        self
    }

    /// Gives each address its MX preference (same order and length as `addrs`, ascending).
    pub fn with_preferences(mut self, preferences: Vec<u16>) -> Self {
        debug_assert_eq!(preferences.len(), self.addrs.len());
        debug_assert!(preferences.is_sorted());
        self.preferences = preferences;
        self
    }

    /// The addresses in the order one connection tries them: by preference, and among equal
    /// preferences starting at the `turn`-th, so that successive connections spread over
    /// equal-preference hosts as RFC 5321 §5.1 asks, instead of all going to one shuffled
    /// first. Called once per connection, not per message.
    pub fn connect_order(&self, turn: u64) -> Vec<SocketAddr> {
        if self.preferences.len() != self.addrs.len() {
            return self.addrs.clone();
        }
        let mut order = Vec::with_capacity(self.addrs.len());
        let mut start = 0;
        while start < self.addrs.len() {
            let tier = self.preferences[start];
            let end = start + self.preferences[start..].iter().take_while(|&&p| p == tier).count();
            let first = start + (turn % (end - start) as u64) as usize;
            order.extend_from_slice(&self.addrs[first..end]);
            order.extend_from_slice(&self.addrs[start..first]);
            start = end;
        }
        order
    }

    /// The configuration the receiver requires of sessions to `addr`, if it requires one
    /// (see `verified_tls` and `tls_required_of`).
    pub fn required_tls(&self, addr: SocketAddr) -> Option<&Arc<rustls::ClientConfig>> {
        let config = self.verified_tls.as_ref()?;
        match &self.tls_required_of {
            None => Some(config),
            Some(hosts) => {
                let host = self.host_of(addr)?;
                let host = host.trim_end_matches('.');
                hosts.iter().any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(host)).then_some(config)
            }
        }
    }

    /// The host name of `addr`, if the destination names its hosts.
    pub fn host_of(&self, addr: SocketAddr) -> Option<&Arc<str>> {
        self.addrs.iter().position(|a| *a == addr).and_then(|i| self.hosts.get(i))
    }

    pub fn with_tls_name(mut self, name: rustls::pki_types::ServerName<'static>) -> Self {
        self.tls_name = Some(name);
        self
    }
}

/// Shared session state of one destination: what the "destination as a whole is failing" rule
/// and the connection-cap detection need to know about other cores' sessions.
#[derive(Debug)]
pub struct Health {
    /// Sessions past EHLO, on every core, and the most there have been at once.
    established: AtomicUsize,
    peak: AtomicUsize,
    /// When sessions started failing with none succeeding since (nanoseconds after `EPOCH`,
    /// plus one so that zero means "not failing").
    failing_since: AtomicU64,
    /// Cores the server has capped to no connection while other cores hold its sessions (one
    /// bit per core, the first 64): the producer routes the destination's jobs elsewhere.
    blocked: AtomicU64,
    /// Cores whose pool for this destination holds its full backlog (one bit per core, the
    /// first 64): the producer sends the destination's jobs elsewhere or sets them aside, so a
    /// slow or rate-limited destination cannot hold up the others' jobs in a core's queue.
    full: AtomicU64,
    /// A failure every new session would repeat (refused credentials, a refused certificate,
    /// TLS required and not offered): the run stops trying this destination.
    given_up: OnceLock<crate::proto::SessionError>,
    /// Connections started, across cores: each starts its equal-preference tier at the next.
    turns: AtomicU64,
    /// Jobs the producer has placed: each is offered first to the next core in turn.
    placed: AtomicUsize,
    /// Sessions the server allowed at once, across cores, when it last refused one more (0:
    /// never refused): what the cores' connection targets share.
    cap: AtomicUsize,
    /// Cores on which a TLS handshake with this destination failed under the opportunistic
    /// policy (one bit per core, the first 64): their later connections go on in plaintext
    /// rather than fail the same way.
    plaintext: AtomicU64,
}

impl Health {
    pub fn new() -> Self {
        // Fix the epoch before any instant this destination will see.
        EPOCH.get_or_init(Instant::now);
        Health {
            established: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            failing_since: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            full: AtomicU64::new(0),
            given_up: OnceLock::new(),
            turns: AtomicU64::new(0),
            placed: AtomicUsize::new(0),
            cap: AtomicUsize::new(0),
            plaintext: AtomicU64::new(0),
        }
    }

    /// A TLS handshake failed on `core` under the opportunistic policy.
    pub fn fall_back_to_plaintext(&self, core: usize) {
        set_bit(&self.plaintext, core, true);
    }

    /// Whether `core`'s connections go on in plaintext (see [`Health::fall_back_to_plaintext`]).
    pub fn plaintext_fallback(&self, core: usize) -> bool {
        bit(&self.plaintext, core)
    }

    /// The server refused a connection while `sessions` were established across cores.
    pub fn set_cap(&self, sessions: usize) {
        self.cap.store(sessions, Ordering::Relaxed);
    }

    /// The sessions the server allows at once, once it has refused one.
    pub fn cap(&self) -> Option<usize> {
        Some(self.cap.load(Ordering::Relaxed)).filter(|&c| c > 0)
    }

    /// Which of `cores` the producer offers the next job to first (round robin).
    pub fn next_core(&self, cores: usize) -> usize {
        self.placed.fetch_add(1, Ordering::Relaxed) % cores.max(1)
    }

    /// Jobs the producer has placed so far (retries and jobs handed back count again).
    pub fn placed(&self) -> usize {
        self.placed.load(Ordering::Relaxed)
    }

    /// The next connection's turn (see [`Destination::connect_order`]).
    pub fn next_turn(&self) -> u64 {
        self.turns.fetch_add(1, Ordering::Relaxed)
    }

    pub fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }

    pub fn session_ready(&self) {
        let now = self.established.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The most sessions that were past EHLO at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn session_ended(&self) {
        self.established.fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks whether `core` is capped to no connection.
    pub fn set_blocked(&self, core: usize, blocked: bool) {
        set_bit(&self.blocked, core, blocked);
    }

    pub fn is_blocked(&self, core: usize) -> bool {
        bit(&self.blocked, core)
    }

    /// Marks whether `core`'s pool for the destination holds its whole backlog.
    pub fn set_full(&self, core: usize, full: bool) {
        set_bit(&self.full, core, full);
    }

    pub fn is_full(&self, core: usize) -> bool {
        bit(&self.full, core)
    }

    /// Stops trying the destination, for `error` (the first such error stands).
    pub fn give_up(&self, error: &crate::proto::SessionError) {
        let _ = self.given_up.set(error.clone());
    }

    pub fn given_up(&self) -> Option<&crate::proto::SessionError> {
        self.given_up.get()
    }

    /// A transaction got a final reply: the destination works.
    pub fn succeeded(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
    }

    /// A connection or session failed before carrying a transaction: the destination is
    /// failing since `now`, unless it already was.
    pub fn mark_failing(&self, now: Instant) {
        let stamp = nanos_since_epoch(now) + 1;
        let _ = self.failing_since.compare_exchange(0, stamp, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Since when sessions have been failing with none succeeding, if they are.
    pub fn failing_since(&self) -> Option<Instant> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            stamp => Some(instant_at(stamp - 1)),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

fn set_bit(bits: &AtomicU64, core: usize, on: bool) {
    let bit = 1u64.checked_shl(core as u32).unwrap_or(0);
    if on {
        bits.fetch_or(bit, Ordering::Relaxed);
    } else {
        bits.fetch_and(!bit, Ordering::Relaxed);
    }
}

fn bit(bits: &AtomicU64, core: usize) -> bool {
    bits.load(Ordering::Relaxed) & 1u64.checked_shl(core as u32).unwrap_or(0) != 0
}

/// The reference point for instants stored in atomics.
static EPOCH: OnceLock<Instant> = OnceLock::new();

pub(super) fn nanos_since_epoch(now: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The instant `nanos` after the epoch (the inverse of [`nanos_since_epoch`]).
pub(super) fn instant_at(nanos: u64) -> Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch + Duration::from_nanos(nanos)
}

/// What a job sends: a message ready to go, or the makings of one that the core taking the job
/// composes just before sending it. Composing on the cores (rendering a template, later
/// signing) spreads that work over every core instead of one producer thread, and keeps
/// queued jobs small.
#[derive(Debug)]
pub enum Payload {
    Ready(Message),
    Compose(Box<dyn Compose>),
}

/// A message the core composes when it needs it (see [`Payload`]).
pub trait Compose: Send + std::fmt::Debug {
    /// Builds the message at wall-clock time `at` (its Date). An `Err` means it cannot be sent
    /// at all: its recipients end as unsendable, with nothing sent and no attempt counted.
    fn compose(self: Box<Self>, at: SystemTime) -> Result<Message, Unsendable>;

    /// Whom the message will be for, without building it (a job handed back unsent).
    fn recipients(&self) -> Vec<Address>;
}

/// A message that could not be composed: whom it was for, and why.
#[derive(Debug)]
pub struct Unsendable {
    pub recipients: Vec<Address>,
    pub reason: String,
}

impl Payload {
    pub fn compose(self, at: SystemTime) -> Result<Message, Unsendable> {
        match self {
            Payload::Ready(message) => Ok(message),
            Payload::Compose(recipe) => recipe.compose(at),
        }
    }

    pub fn recipients(&self) -> Vec<Address> {
        match self {
            Payload::Ready(message) => message.envelope.recipients.clone(),
            Payload::Compose(recipe) => recipe.recipients(),
        }
    }
}

/// One message to deliver, with its bookkeeping.
#[derive(Debug)]
pub struct Job {
    pub id: u64,
    pub destination: Arc<Destination>,
    pub message: Payload,
    /// When the job was due: its creation (closed loop) or its scheduled time (open loop).
    /// Latency is measured from here, so a stalled server cannot hide queueing delay.
    pub due: Instant,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The connection of the last attempt, so a retry prefers another one.
    pub last_conn: u64,
    /// A retry of some recipients of a message already counted: only recipient totals change.
    pub partial: bool,
}

/// What a job source says when asked for work.
#[derive(Debug)]
pub enum Next {
    Job(Job),
    /// Nothing due before this instant.
    Wait(Instant),
    /// No more jobs, ever.
    Done,
}

/// A producer of jobs: `bench` generates them, `send` will read them from input.
pub trait JobSource: Send {
    fn next(&mut self, now: Instant) -> Next;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_turns_over_equal_preference_hosts() {
        let addrs: Vec<SocketAddr> = (2..=6).map(|x| SocketAddr::from(([127, 0, 0, x], 25))).collect();
        let d = Destination::new(0, "d", addrs.clone(), 10).with_preferences(vec![10, 10, 10, 20, 20]);
        let firsts: Vec<SocketAddr> = (0..6).map(|turn| d.connect_order(turn)[0]).collect();
        assert_eq!(firsts, [addrs[0], addrs[1], addrs[2], addrs[0], addrs[1], addrs[2]], "round robin");
        for turn in 0..6 {
            let order = d.connect_order(turn);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, addrs, "every address, once");
            assert!(order[..3].iter().all(|a| addrs[..3].contains(a)), "the better tier first");
        }
        assert_eq!(d.connect_order(1)[3..], [addrs[4], addrs[3]], "the second tier takes turns too");
        let plain = Destination::new(1, "relay", addrs.clone(), 10);
        assert_eq!(plain.connect_order(3), addrs, "addresses given directly keep their order");
    }

    #[test]
    fn failing_counts_from_the_first_failure_since_a_success() {
        let h = Health::new();
        let t0 = Instant::now();
        let since = |h: &Health| h.failing_since().map(|s| s.saturating_duration_since(t0).as_millis());
        assert_eq!(since(&h), None);
        h.mark_failing(t0 + Duration::from_secs(1));
        h.mark_failing(t0 + Duration::from_secs(3));
        assert_eq!(since(&h), Some(1000), "from the first failure");
        h.succeeded();
        assert_eq!(since(&h), None, "a success resets it");
        h.mark_failing(t0 + Duration::from_secs(6));
        assert_eq!(since(&h), Some(6000));
    }
}
