//! Where each recipient domain's mail goes: its MX hosts (resolved on the DNS thread, cached
//! per TTL) or one relay. Domains whose MX host sets are the same share one destination (MX
//! rollup): one pool and one connection limit for the thousands of domains a large provider
//! hosts, as its servers see them. Each destination gets the limits of the shaping rule that
//! matches it (see [`super::shaping`]).
//!
//! Nothing here outlives its use: a domain's answer is forgotten when its TTL runs out, and a
//! destination once no domain, job or connection refers to it, so a long run (or `serve`) to
//! ever more domains keeps only what is current.

use crate::hash::DomainMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::bounce::Category;
use super::dns::{Answer, MxHost, Resolver, TlsDemand};
use super::shaping::ShapingRules;
use crate::engine::Destination;
use crate::tls::dane::Tlsa;

/// The longest between two looks for destinations nothing uses (see `Routes::expire`).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A domain's route.
#[derive(Debug, Clone)]
pub enum Route {
    Deliver(Arc<Destination>),
    /// The domain takes no mail (null MX, NXDOMAIN, no address at all): bounce.
    Undeliverable(String),
}

/// What [`Routes::lookup`] knows now.
#[derive(Debug)]
pub enum Lookup {
    Ready(Route),
    /// Asked; the answer comes through [`Routes::poll`].
    Pending,
}

/// A resolution that finished: the route, or a temporary failure to retry later.
pub type Resolved = (String, Result<Route, Unrouted>);

/// Why a domain has no route for now: its recipients are deferred, in `category`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrouted {
    pub reason: String,
    pub category: Category,
}

enum Mode {
    Mx { resolver: Resolver, port: u16 },
    Relay(Arc<Destination>),
}

enum State {
    Resolving,
    Ready { route: Route, until: Instant },
}

pub struct Routes {
    mode: Mode,
    domains: DomainMap<State>,
    /// When each answer in `domains` runs out, soonest first (an answer learnt again leaves
    /// its earlier entry here, skipped when it comes up).
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
    /// MX host set (sorted `pref host` pairs) to its destination.
    rollups: HashMap<String, Arc<Destination>>,
    /// Destinations after the last look for unused ones, and when it was: the next look is at
    /// twice as many, or [`SWEEP_EVERY`] later.
    rollups_swept: (usize, Instant),
    next_index: usize,
    shaping: ShapingRules,
    /// Destinations made under earlier shaping rules (see [`Routes::reshape`]), by key: one
    /// made again for the same hosts takes over what reactions did to it.
    retired: HashMap<String, Arc<Destination>>,
    /// Told of each destination made (see [`Routes::on_new_destination`]).
    on_new: Option<OnDestination>,
}

/// Told of each destination made, with its key: the same on every process that routes the same
/// hosts (the relay's name; an MX host set's sorted `preference host` pairs).
pub type OnDestination = Arc<dyn Fn(&Arc<Destination>, &str) + Send + Sync>;

impl Routes {
    /// Routes through each domain's MX hosts, connecting to `port`, with the limits `shaping`
    /// gives each destination.
    pub fn mx(resolver: Resolver, port: u16, shaping: ShapingRules) -> Routes {
        Routes::with(Mode::Mx { resolver, port }, shaping)
    }

    /// Everything through one relay (shaping rules match its name as they match an MX host's).
    pub fn relay(name: &str, addrs: Vec<SocketAddr>, shaping: ShapingRules) -> Routes {
        let hosts = vec![Arc::<str>::from(name); addrs.len()];
        let shaped = shaping.limits(None, &[name]);
        let destination = Destination::new(0, name, addrs, shaped.connections)
            .with_hosts(hosts)
            .with_limits(&shaped.limits, shaped.rule);
        let mut routes = Routes::with(Mode::Relay(Arc::new(destination)), shaping);
        routes.next_index = 1;
        routes
    }

    fn with(mode: Mode, shaping: ShapingRules) -> Routes {
        Routes {
            mode,
            domains: DomainMap::default(),
            expiries: BinaryHeap::new(),
            rollups: HashMap::new(),
            rollups_swept: (0, Instant::now()),
            next_index: 0,
            shaping,
            retired: HashMap::new(),
            on_new: None,
        }
    }

    /// Calls `hook` with every destination made from now on (and the relay, made already),
    /// before any job goes to it: a campaign shared with other processes shares its limits.
    pub fn on_new_destination(&mut self, hook: OnDestination) {
        if let Mode::Relay(relay) = &self.mode {
            hook(relay, &relay.name);
        }
        self.on_new = Some(hook);
    }

    /// From now on, `shaping`'s limits and rules: every destination is made anew as its
    /// domains are resolved again, so what is routed from now on gets them, while jobs and
    /// connections under way keep the destination they have (and finish with it). A
    /// destination made again for the same hosts keeps what reactions did to the old one (a
    /// suspension by a provider's `421` is not lifted by a reload).
    pub fn reshape(&mut self, shaping: ShapingRules) {
        self.shaping = shaping;
        self.retired = std::mem::take(&mut self.rollups);
        self.domains.retain(|_, state| matches!(state, State::Resolving));
        self.expiries.clear();
        if let Mode::Relay(old) = &self.mode {
            let name = old.name.clone();
            let shaped = self.shaping.limits(None, &[&name]);
            let destination = Destination::new(self.next_index, name, old.addrs.clone(), shaped.connections)
                .with_hosts(old.hosts.clone())
                .with_limits(&shaped.limits, shaped.rule);
            destination.shaping.carry_over(&old.shaping);
            self.next_index += 1;
            let destination = Arc::new(destination);
            if let Some(hook) = &self.on_new {
                hook(&destination, &destination.name);
            }
            self.mode = Mode::Relay(destination);
        }
    }

    /// Destinations created so far.
    pub fn destinations(&self) -> usize {
        self.next_index
    }

    /// Domains resolved or being resolved.
    pub fn domains(&self) -> usize {
        self.domains.len()
    }

    /// The route for `domain` (lower-case), asking DNS when it is unknown or its answer expired.
    pub fn lookup(&mut self, domain: &str, now: Instant) -> Lookup {
        let resolver = match &self.mode {
            Mode::Relay(d) => return Lookup::Ready(Route::Deliver(Arc::clone(d))),
            Mode::Mx { resolver, .. } => resolver,
        };
        match self.domains.get(domain) {
            Some(State::Ready { route, until }) if *until > now => Lookup::Ready(route.clone()),
            Some(State::Resolving) => Lookup::Pending,
            _ => {
                resolver.ask(domain);
                self.domains.insert(domain.to_owned(), State::Resolving);
                Lookup::Pending
            }
        }
    }

    /// The route `domain` (lower-case) has now, if its answer is known and current; never
    /// asks.
    pub fn cached(&self, domain: &str, now: Instant) -> Option<Route> {
        if let Mode::Relay(d) = &self.mode {
            return Some(Route::Deliver(Arc::clone(d)));
        }
        match self.domains.get(domain) {
            Some(State::Ready { route, until }) if *until > now => Some(route.clone()),
            _ => None,
        }
    }

    /// Every domain whose answer is known and current, with its route.
    pub fn known(&self, now: Instant) -> impl Iterator<Item = (&str, &Route)> {
        self.domains.iter().filter_map(move |(domain, state)| match state {
            State::Ready { route, until } if *until > now => Some((domain.as_str(), route)),
            _ => None,
        })
    }

    /// The run's TLS reports, when MTA-STS or DANE is looked up.
    pub fn tls_reports(&self) -> Option<Arc<crate::deliver::tls_report::run::TlsReports>> {
        match &self.mode {
            Mode::Mx { resolver, .. } => resolver.tls_reports().cloned(),
            Mode::Relay(_) => None,
        }
    }

    /// The relay every domain goes through, if that is how mail is routed.
    pub fn relay_destination(&self) -> Option<&Arc<Destination>> {
        match &self.mode {
            Mode::Relay(d) => Some(d),
            Mode::Mx { .. } => None,
        }
    }

    /// The destinations in use: the relay's, or those of the MX host sets known.
    pub fn in_use(&self) -> Vec<Arc<Destination>> {
        match &self.mode {
            Mode::Relay(d) => vec![Arc::clone(d)],
            Mode::Mx { .. } => self.rollups.values().cloned().collect(),
        }
    }

    /// Destinations held, for a domain's answer or for work still under way.
    pub fn live_destinations(&self) -> usize {
        self.rollups.len()
    }

    /// Answers that arrived since the last call. Forgets the answers that ran out meanwhile.
    pub fn poll(&mut self, now: Instant) -> Vec<Resolved> {
        self.expire(now);
        let mut done = Vec::new();
        while let Some((domain, answer)) = match &self.mode {
            Mode::Mx { resolver, .. } => resolver.try_answer(),
            Mode::Relay(_) => None,
        } {
            done.push(self.learn(domain, answer, now));
        }
        done
    }

    /// Waits up to `wait` for one answer (for `--dry-run`, which has nothing else to do).
    pub fn wait(&mut self, wait: std::time::Duration, now: Instant) -> Option<Resolved> {
        let answer = match &self.mode {
            Mode::Mx { resolver, .. } => resolver.answer_within(wait),
            Mode::Relay(_) => None,
        }?;
        Some(self.learn(answer.0, answer.1, now))
    }

    /// Forgets the answers whose TTL ran out (the next recipient of such a domain asks again),
    /// and, once there are twice as many destinations as at the last look or a while after it,
    /// those nothing refers to any more: no domain's answer, no job, no connection, no
    /// suspension. (A look visits every destination: doubling keeps that a constant cost per
    /// destination made.)
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((until, _))) = self.expiries.peek() {
            if *until > now {
                break;
            }
            let Some(Reverse((until, domain))) = self.expiries.pop() else { break };
            if matches!(self.domains.get(&domain), Some(State::Ready { until: current, .. }) if *current <= until)
            {
                self.domains.remove(&domain);
            }
        }
        let (swept, at) = self.rollups_swept;
        if self.rollups.len() >= 2 * swept.max(1024) || now.saturating_duration_since(at) >= SWEEP_EVERY {
            self.rollups.retain(|_, d| Arc::strong_count(d) > 1 || d.shaping.suspended(now).is_some());
            self.rollups_swept = (self.rollups.len(), now);
            // Long enough for the domains that were resolving at a reshape to come back.
            self.retired.clear();
        }
    }

    /// Caches `route` for `domain` until `until`.
    fn remember(&mut self, domain: &str, route: Route, until: Instant) {
        self.domains.insert(domain.to_owned(), State::Ready { route, until });
        self.expiries.push(Reverse((until, domain.to_owned())));
    }

    fn learn(&mut self, domain: String, answer: Answer, now: Instant) -> Resolved {
        let port = match &self.mode {
            Mode::Mx { port, .. } => *port,
            Mode::Relay(_) => 25,
        };
        match answer {
            Answer::Hosts { hosts, until, tls } => {
                let destination = self.rollup(&domain, &hosts, port, tls);
                let route = Route::Deliver(destination);
                self.remember(&domain, route.clone(), until.max(now));
                (domain, Ok(route))
            }
            Answer::Undeliverable(why) => {
                let route = Route::Undeliverable(why);
                // Cached like an answer: every recipient of the domain bounces at once.
                self.remember(&domain, route.clone(), now + std::time::Duration::from_secs(300));
                (domain, Ok(route))
            }
            // Not cached: the next attempt asks again.
            Answer::Failed(reason) => {
                self.domains.remove(&domain);
                (domain, Err(Unrouted { reason, category: Category::Connection }))
            }
            Answer::Unlisted(reason) => {
                self.domains.remove(&domain);
                (domain, Err(Unrouted { reason, category: Category::TlsRequired }))
            }
        }
    }

    /// The destination for an MX host set, shared by every domain with the same set (and, for
    /// domains a shaping rule names, the same rule; and the same demand on TLS: a domain that
    /// enforces MTA-STS never shares a pool, whose sessions may be plaintext, with one that
    /// does not).
    fn rollup(&mut self, domain: &str, hosts: &[MxHost], port: u16, tls: TlsDemand) -> Arc<Destination> {
        let host_names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let shaped = self.shaping.limits(Some(domain), &host_names);
        // By preference, then name: the same every run, whatever the shuffle.
        let mut sorted: Vec<(u16, &str)> = hosts.iter().map(|h| (h.preference, h.name.as_str())).collect();
        sorted.sort_unstable();
        let mut key = sorted.iter().map(|(p, h)| format!("{p} {h}")).collect::<Vec<_>>().join(",");
        if let Some(rule) = shaped.rule.as_ref().filter(|_| shaped.by_domain) {
            key = format!("{rule}|{key}");
        }
        // A domain with a policy has a destination of its own: its sessions are reported on
        // under its name, and under `enforce` never share a pool with plaintext ones. One per
        // policy: a policy that changes (testing to enforce, a new MX list) makes a new
        // destination, whose sessions keep to it and are reported under it.
        let (mut verified_tls, mut tls_watch) = (None, None);
        if let (TlsDemand::MtaSts(policy), Mode::Mx { resolver, .. }) = (&tls, &self.mode)
            && let Some(sts) = resolver.sts_tls()
        {
            key = format!("mta-sts:{domain}:{}|{key}", policy.to_text().trim_end().replace('\n', ";"));
            let enforced = policy.mode == super::mta_sts::Mode::Enforce;
            verified_tls = enforced.then(|| Arc::clone(&sts.verifier));
            tls_watch = Some(crate::engine::TlsWatch {
                observer: sts.reports.watch(domain, policy),
                check: (!enforced).then(|| sts.check.clone()),
            });
        }
        // MX hosts with TLSA records (DANE, which takes precedence over MTA-STS for them):
        // their sessions require TLS, each host's certificate checked against its own records.
        // The destination's other hosts: as the domain's MTA-STS policy says (enforce: TLS
        // required, the certificate valid for the host's name), else as the run's own TLS
        // policy says (RFC 7672 §2.2: no records, no DANE). One destination per record set.
        let under_sts = tls_watch.is_some();
        let mut tls_required_of = None;
        let dane: Vec<(&str, &Vec<Tlsa>)> =
            hosts.iter().filter_map(|h| Some((h.name.as_str(), h.tlsa.as_ref()?))).collect();
        if !dane.is_empty() {
            let digest = dane_digest(&dane);
            key = format!("dane:{digest}|{key}");
            if !self.rollups.contains_key(&key) {
                let enforced =
                    matches!(&tls, TlsDemand::MtaSts(p) if p.mode == super::mta_sts::Mode::Enforce);
                let otherwise = match &self.mode {
                    Mode::Mx { resolver, .. } if enforced => {
                        resolver.sts_tls().map(|sts| sts.check.verifier())
                    }
                    _ => None,
                };
                let records = dane.iter().map(|(h, r)| (h.to_ascii_lowercase(), (*r).clone())).collect();
                verified_tls = Some(crate::tls::dane::client_config(records, otherwise));
                if !enforced {
                    tls_required_of =
                        Some(dane.iter().map(|(h, _)| Arc::from(h.trim_end_matches('.'))).collect());
                }
                // Reported per host with records (its own DANE policy); the others' sessions
                // under the domain's MTA-STS policy, if it has one.
                if let Mode::Mx { resolver, .. } = &self.mode
                    && let Some(reports) = resolver.tls_reports()
                {
                    // The hosts without records keep the domain's policy's check (testing:
                    // the certificate checked after the handshake, for the reports).
                    let (otherwise, check) = match tls_watch.take() {
                        Some(watch) => (Some(watch.observer), watch.check),
                        None => (None, None),
                    };
                    tls_watch = Some(crate::engine::TlsWatch {
                        observer: reports.dane_watch(&dane, otherwise),
                        check,
                    });
                }
            }
        }
        if let Some(d) = self.rollups.get(&key) {
            return Arc::clone(d);
        }
        let mut addrs = Vec::new();
        let mut names = Vec::new();
        let mut preferences = Vec::new();
        for host in hosts {
            let name: Arc<str> = host.name.as_str().into();
            for ip in &host.addrs {
                addrs.push(SocketAddr::new(*ip, port));
                names.push(Arc::clone(&name));
                preferences.push(host.preference);
            }
        }
        // Named by its hosts in the key's order, all of them up to three, so two destinations
        // never share a label in a report (they did as `first (+n)`); past three, by its index.
        let mut label = sorted.iter().take(3).map(|(_, h)| *h).collect::<Vec<_>>().join(", ");
        if sorted.len() > 3 {
            label = format!("{label} (+{} more, #{})", sorted.len() - 3, self.next_index);
        }
        if let Some(rule) = shaped.rule.as_ref().filter(|_| shaped.by_domain) {
            // Set apart from the other domains on the same hosts: say so in reports.
            label = format!("{label} [{rule}]");
        }
        if under_sts {
            label = format!("{label} [MTA-STS {domain}]");
        }
        if !dane.is_empty() {
            label = format!("{label} [DANE]");
        }
        let mut destination = Destination::new(self.next_index, label, addrs, shaped.connections)
            .with_hosts(names)
            .with_preferences(preferences)
            .with_limits(&shaped.limits, shaped.rule);
        destination.verified_tls = verified_tls;
        destination.tls_required_of = tls_required_of;
        destination.tls_watch = tls_watch;
        if let Some(old) = self.retired.remove(&key) {
            destination.shaping.carry_over(&old.shaping);
        }
        let destination = Arc::new(destination);
        if let Some(hook) = &self.on_new {
            hook(&destination, &key);
        }
        self.next_index += 1;
        self.rollups.insert(key, Arc::clone(&destination));
        destination
    }
}

/// A short name for a destination's TLSA records (SHA-256 of their hosts and records).
fn dane_digest(hosts: &[(&str, &Vec<Tlsa>)]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // In a canonical order: the same records, however an answer ordered them, are one set.
    let mut hosts: Vec<(&str, Vec<&Tlsa>)> =
        hosts.iter().map(|(h, r)| (*h, r.iter().collect::<Vec<_>>())).collect();
    hosts.sort();
    for (host, mut records) in hosts {
        records.sort();
        context.update(host.as_bytes());
        for r in records {
            context.update(&[0, r.usage, r.selector, r.matching]);
            context.update(&(r.data.len() as u32).to_be_bytes());
            context.update(&r.data);
        }
        context.update(&[0xff]);
    }
    context.finish().as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::dns::DnsConfig;
    use crate::deliver::shaping::{Defaults, ShapingRules};
    use crate::engine::Limits;
    use crate::testkit::dns::{DnsStub, Zone};
    use std::time::Duration;

    #[test]
    fn domains_with_the_same_mx_hosts_share_a_destination() {
        let zone: Zone = "
            a.test MX 10 mx1.big.test
            a.test MX 20 mx2.big.test
            b.test MX 20 mx2.big.test
            b.test MX 10 mx1.big.test
            c.test MX 10 mx1.big.test
            own.test MX 10 mx1.big.test
            own.test MX 20 mx2.big.test
            mx1.big.test A 127.0.0.2
            mx2.big.test A 127.0.0.3
            null.test MX 0 .
            bad.test SERVFAIL
        "
        .parse()
        .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let resolver = Resolver::start(DnsConfig::for_stub(stub.addr())).unwrap();
        let defaults = Defaults { connections: 7, limits: Limits::default() };
        let mut shaping = ShapingRules::load(&[], false, defaults).unwrap();
        let rules = "[[destination]]\nname = \"own\"\ndomains = [\"own.test\"]\nrate = \"5/s\"\n\n\
                     [[destination]]\nname = \"big\"\nmx = [\".big.test\"]\nconnections = 3";
        shaping.add(rules, std::path::Path::new("rules.toml")).unwrap();
        let mut routes = Routes::mx(resolver, 2525, shaping);
        let now = Instant::now();
        let domains = ["a.test", "b.test", "c.test", "own.test", "null.test", "bad.test"];
        for d in domains {
            assert!(matches!(routes.lookup(d, now), Lookup::Pending));
            assert!(matches!(routes.lookup(d, now), Lookup::Pending), "asked once");
        }
        let mut got = HashMap::new();
        while got.len() < domains.len() {
            let (d, r) = routes.wait(Duration::from_secs(5), now).expect("answered");
            got.insert(d, r);
        }
        let dest = |d: &str| match &got[d] {
            Ok(Route::Deliver(dest)) => Arc::clone(dest),
            other => panic!("{d}: {other:?}"),
        };
        assert!(Arc::ptr_eq(&dest("a.test"), &dest("b.test")), "same MX set, same destination");
        assert!(!Arc::ptr_eq(&dest("a.test"), &dest("c.test")));
        let a = dest("a.test");
        assert_eq!(a.addrs, ["127.0.0.2:2525".parse().unwrap(), "127.0.0.3:2525".parse().unwrap()]);
        assert_eq!(a.hosts.iter().map(|h| &**h).collect::<Vec<_>>(), ["mx1.big.test", "mx2.big.test"]);
        assert_eq!((a.max_connections, a.shaped_by.as_deref()), (3, Some("big")), "the MX rule's limits");
        let own = dest("own.test");
        assert!(!Arc::ptr_eq(&a, &own), "a domain rule sets its domain apart from the same MX hosts");
        assert_eq!((own.max_connections, own.shaped_by.as_deref()), (7, Some("own")));
        assert_eq!(
            (a.name.as_str(), own.name.as_str()),
            ("mx1.big.test, mx2.big.test", "mx1.big.test, mx2.big.test [own]")
        );
        assert_eq!(routes.destinations(), 3);
        assert!(matches!(&got["null.test"], Ok(Route::Undeliverable(why)) if why.contains("null MX")));
        assert!(got["bad.test"].is_err());
        assert!(matches!(routes.lookup("a.test", now), Lookup::Ready(Route::Deliver(_))), "cached");
        assert!(matches!(routes.lookup("bad.test", now), Lookup::Pending), "a failure is asked again");
        assert!(
            matches!(routes.lookup("a.test", now + Duration::from_secs(301)), Lookup::Pending),
            "expired with its TTL"
        );
    }

    /// New shaping rules make destinations anew, with the new limits, keeping what reactions
    /// did to the old ones; answers are asked again.
    #[test]
    fn reshaping_makes_destinations_anew_and_keeps_their_suspensions() {
        let rules = |connections| {
            ShapingRules::load(&[], false, Defaults { connections, limits: Limits::default() }).unwrap()
        };
        let t0 = Instant::now();
        let suspend = |d: &Destination| {
            assert!(d.shaping.apply(&crate::engine::Action::Suspend, t0, t0 + Duration::from_secs(600)));
        };
        let mut relay = Routes::relay("relay.test", vec!["127.0.0.1:25".parse().unwrap()], rules(2));
        let Lookup::Ready(Route::Deliver(old)) = relay.lookup("a.test", t0) else { panic!() };
        suspend(&old);
        relay.reshape(rules(5));
        let Lookup::Ready(Route::Deliver(new)) = relay.lookup("a.test", t0) else { panic!() };
        assert_eq!((new.max_connections, old.max_connections), (5, 2));
        assert_ne!(new.index, old.index, "a pool of its own");
        assert!(new.shaping.suspended(t0).is_some(), "the provider's suspension holds");

        let mut mx = Routes::with(Mode::Relay(Arc::new(Destination::new(0, "r", vec![], 1))), rules(2));
        mx.next_index = 1;
        let host =
            MxHost { name: "mx.test".into(), preference: 10, addrs: vec![[127, 0, 0, 2].into()], tlsa: None };
        let old = mx.rollup("a.test", std::slice::from_ref(&host), 25, TlsDemand::None);
        mx.remember("a.test", Route::Deliver(Arc::clone(&old)), t0 + Duration::from_secs(300));
        suspend(&old);
        mx.reshape(rules(7));
        assert_eq!(mx.domains(), 0, "asked again");
        let new = mx.rollup("a.test", &[host], 25, TlsDemand::None);
        assert!(!Arc::ptr_eq(&new, &old) && new.max_connections == 7);
        assert!(new.shaping.suspended(t0).is_some());
    }

    #[test]
    fn a_policy_domain_has_its_own_destination_per_policy() {
        use crate::deliver::mta_sts::{Policy, lookup::StsConfig};
        let sts = StsConfig::new(None, 443, None).unwrap();
        let resolver = Resolver::start(DnsConfig {
            mta_sts: Some(sts),
            ..DnsConfig::for_stub("127.0.0.1:9".parse().unwrap())
        })
        .unwrap();
        let defaults = Defaults { connections: 2, limits: Limits::default() };
        let mut routes = Routes::mx(resolver, 25, ShapingRules::load(&[], false, defaults).unwrap());
        let host = MxHost {
            name: "mx.big.test".into(),
            preference: 10,
            addrs: vec![[127, 0, 0, 2].into()],
            tlsa: None,
        };
        let hosts = std::slice::from_ref(&host);
        let policy = |mode: &str| {
            let text = format!("version: STSv1\nmode: {mode}\nmx: *.big.test\nmax_age: 86400\n");
            TlsDemand::MtaSts(Arc::new(Policy::parse(text.as_bytes()).unwrap()))
        };
        let plain = routes.rollup("a.test", hosts, 25, TlsDemand::None);
        let testing = routes.rollup("a.test", hosts, 25, policy("testing"));
        let enforced = routes.rollup("a.test", hosts, 25, policy("enforce"));
        let other = routes.rollup("b.test", hosts, 25, policy("enforce"));
        assert!(!Arc::ptr_eq(&plain, &testing) && !Arc::ptr_eq(&testing, &enforced));
        assert!(!Arc::ptr_eq(&enforced, &other), "each policy domain is reported under its own name");
        assert!(Arc::ptr_eq(&enforced, &routes.rollup("a.test", hosts, 25, policy("enforce"))));
        assert!(plain.verified_tls.is_none() && plain.tls_watch.is_none());
        assert!(testing.verified_tls.is_none(), "testing: STARTTLS as usual, the certificate checked after");
        assert!(testing.tls_watch.as_ref().is_some_and(|w| w.check.is_some()));
        assert!(enforced.verified_tls.is_some(), "enforce: the handshake itself checks");
        assert!(enforced.tls_watch.as_ref().is_some_and(|w| w.check.is_none()));
        assert_eq!(enforced.name, "mx.big.test [MTA-STS a.test]");
    }

    #[test]
    fn answers_run_out_with_their_ttl_and_unused_destinations_go() {
        let defaults = Defaults { connections: 2, limits: Limits::default() };
        let shaping = ShapingRules::load(&[], false, defaults).unwrap();
        let mut routes = Routes::with(Mode::Relay(Arc::new(Destination::new(0, "r", vec![], 1))), shaping);
        let t0 = Instant::now();
        let host = |i: usize| MxHost {
            name: format!("mx{i}.test"),
            preference: 10,
            addrs: vec![[127, 0, 0, 2].into()],
            tlsa: None,
        };
        let mut kept = Vec::new();
        for i in 0..2100 {
            let domain = format!("d{i}.test");
            let d = routes.rollup(&domain, &[host(i)], 25, TlsDemand::None);
            // Domain 0's answer is short-lived, the rest live 300 s.
            let ttl = Duration::from_secs(if i == 0 { 10 } else { 300 });
            routes.remember(&domain, Route::Deliver(Arc::clone(&d)), t0 + ttl);
            match i {
                1 => kept.push(d), // a job or a connection still has it
                2 => assert!(d.shaping.apply(
                    &crate::engine::Action::Suspend,
                    t0,
                    t0 + Duration::from_secs(900)
                )),
                _ => {}
            }
        }
        routes.expire(t0 + Duration::from_secs(60));
        assert_eq!(routes.domains(), 2099, "only the short-lived answer went");
        assert_eq!(routes.live_destinations(), 2099, "its destination went with it; the others are named");
        // An answer learnt again is not forgotten at its earlier time.
        routes.remember("d5.test", Route::Undeliverable("x".into()), t0 + Duration::from_secs(600));
        routes.expire(t0 + Duration::from_secs(301));
        assert_eq!(routes.domains(), 1, "d5's later answer stays");
        assert_eq!(routes.live_destinations(), 2, "held and suspended ones stay, unused ones go");
        assert!(routes.rollups.values().any(|d| Arc::ptr_eq(d, &kept[0])));
        // A domain on a forgotten MX set gets a new destination.
        let again = routes.rollup("d9.test", &[host(9)], 25, TlsDemand::None);
        assert!(again.index >= 2100);
    }
}
