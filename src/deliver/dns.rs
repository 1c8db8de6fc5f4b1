//! MX resolution on its own thread. hickory-resolver is async on tokio: it runs on a small
//! current-thread tokio runtime here, and nowhere else. The cores never see DNS at all: the job
//! source asks, keeps rows for that domain aside, and turns answers into destinations.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{ResolveError, TokioResolver};

use super::dane::{Dane, DaneConfig, HostDane};
use super::mta_sts::Policy;
use super::mta_sts::lookup::{self, Sts, StsConfig, StsTls};
use super::tls_report::run::TlsReports;
use crate::rng::Rng;
use crate::tls::dane::Tlsa;

/// Answers the resolver keeps (see `build`).
const DNS_CACHE: usize = 8192;

/// One MX host with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
    /// Its DNSSEC-validated TLSA records (DANE, RFC 7672), when it has some: TLS is required
    /// of it and its certificate is checked against them.
    pub tlsa: Option<Vec<Tlsa>>,
}

/// What DNS says about delivering to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Hosts in the order to try: by preference, equal preferences shuffled. Valid until then.
    Hosts { hosts: Vec<MxHost>, until: Instant, tls: TlsDemand },
    /// A permanent reason the domain takes no mail: null MX (RFC 7505), NXDOMAIN, no MX and
    /// no address.
    Undeliverable(String),
    /// A temporary failure (SERVFAIL, a timeout): try again later.
    Failed(String),
    /// What the domain requires of TLS leaves none of its MX hosts to deliver to: its MTA-STS
    /// policy (enforce) lists none, or every host's DANE records fail validation. Deliver
    /// nowhere until that changes (deferred, category `tls_required`).
    Unlisted(String),
}

/// What the receiving domain requires of the TLS its mail goes over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsDemand {
    /// Nothing: the run's own TLS policy applies.
    None,
    /// It has an MTA-STS policy (RFC 8461). In `enforce` mode: STARTTLS with a certificate
    /// valid for the MX host's name, or no delivery at all (the hosts are already narrowed to
    /// those the policy lists); in `testing`, delivery as without it, and TLS reports either way.
    MtaSts(Arc<Policy>),
}

/// The resolver thread's handle: ask by domain, collect answers without blocking.
pub struct Resolver {
    requests: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    answers: mpsc::Receiver<(String, Answer)>,
    thread: Option<JoinHandle<()>>,
    /// What destinations of domains with an MTA-STS policy are given.
    sts_tls: Option<StsTls>,
    reports: Option<Arc<TlsReports>>,
}

/// How the resolver is set up.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// A resolver to ask (`None`: the system's, from /etc/resolv.conf).
    pub server: Option<SocketAddr>,
    /// How long one query waits for an answer, and how many tries it gets.
    pub timeout: Duration,
    pub attempts: usize,
    /// Lookups in flight at once.
    pub concurrency: usize,
    /// Look up each domain's MTA-STS policy beside its MX hosts, and keep to it.
    pub mta_sts: Option<StsConfig>,
    /// Look up each MX host's TLSA records (DANE), validated, and keep to them.
    pub dane: Option<DaneConfig>,
}

impl DnsConfig {
    /// Tests' settings against the local stub: its address, short waits, no second try.
    #[cfg(test)]
    pub(crate) fn for_stub(server: SocketAddr) -> DnsConfig {
        DnsConfig {
            server: Some(server),
            timeout: Duration::from_millis(500),
            attempts: 1,
            ..DnsConfig::default()
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            server: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
            concurrency: 64,
            mta_sts: None,
            dane: None,
        }
    }
}

impl Resolver {
    pub fn start(config: DnsConfig) -> std::io::Result<Resolver> {
        let resolver = build(&config)?;
        // Whatever a receiver publishes (an MTA-STS policy, DANE records), it is reported on.
        let reports = (config.mta_sts.is_some() || config.dane.is_some()).then(TlsReports::new);
        let sts_tls = config.mta_sts.as_ref().zip(reports.as_ref()).map(|(sts, reports)| StsTls {
            verifier: Arc::clone(&sts.fetcher.tls),
            check: sts.check.clone(),
            reports: Arc::clone(reports),
        });
        let sts = match (&config.mta_sts, &sts_tls) {
            (Some(sts), Some(tls)) => Some(Arc::new(Sts::open(sts.clone(), Arc::clone(&tls.reports))?)),
            _ => None,
        };
        let dane = config.dane.as_ref().map(|dane| Dane::with(&config, dane)).transpose()?;
        let probe_again = config.dane.as_ref().map_or(Duration::from_secs(60), |d| d.probe_again);
        let thread_reports = reports.clone();
        let (requests, incoming) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (answer_tx, answers) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("dns".into()).spawn(move || {
            runtime.block_on(async move {
                // DANE needs answers that validate: if even the trust anchor's zone does not
                // (a resolver that strips signatures, or one not answering yet), it is off
                // rather than failing every host, and is probed again until they do: a
                // long-running serve must not stay without DANE for a resolver's bad minute.
                let dane_on: Arc<std::sync::OnceLock<Arc<Dane>>> = Arc::default();
                let mut probing = None;
                if let Some(dane) = dane {
                    match dane.probe().await {
                        Ok(()) => {
                            let _ = dane_on.set(Arc::new(dane));
                        }
                        Err(why) => {
                            eprintln!(
                                "volley: warning: DANE is off until the resolver's answers validate \
                                 (asked again every {}): {why}",
                                humantime::format_duration(probe_again)
                            );
                            let on = Arc::clone(&dane_on);
                            probing = Some(tokio::spawn(async move {
                                loop {
                                    tokio::time::sleep(probe_again).await;
                                    if dane.probe().await.is_ok() {
                                        eprintln!("volley: DANE is on: the resolver's answers validate now");
                                        let _ = on.set(Arc::new(dane));
                                        return;
                                    }
                                }
                            }));
                        }
                    }
                }
                // `concurrency` workers take names from the channel in turn: requests waiting
                // are a name each, not a task each (a task per request waiting on a semaphore
                // was 64 MB for a list's first 50,000 domains).
                let incoming = Arc::new(tokio::sync::Mutex::new(incoming));
                let mut seed = Rng::new(0x5eed ^ u64::from(std::process::id()));
                let mut workers = tokio::task::JoinSet::new();
                for _ in 0..config.concurrency.max(1) {
                    let (resolver, tx, incoming) = (resolver.clone(), answer_tx.clone(), incoming.clone());
                    let (sts, dane_on, reports) = (sts.clone(), dane_on.clone(), thread_reports.clone());
                    let mut rng = seed.fork();
                    workers.spawn(async move {
                        loop {
                            let Some(domain) = incoming.lock().await.recv().await else { return };
                            let answer = match &sts {
                                Some(sts) => {
                                    let (answer, policy) = tokio::join!(
                                        resolve(&resolver, &domain, &mut rng),
                                        sts.policy(&resolver, &domain)
                                    );
                                    match policy {
                                        Some(policy) => keep_to(answer, policy, &domain),
                                        None => answer,
                                    }
                                }
                                None => resolve(&resolver, &domain, &mut rng).await,
                            };
                            let answer = match dane_on.get() {
                                Some(dane) => with_dane(answer, dane, &domain, reports.as_deref()).await,
                                None => answer,
                            };
                            let _ = tx.send((domain, answer));
                        }
                    });
                }
                // Policies in use are kept warm beside the lookups, for as long as they run.
                let refresh = sts.clone().map(|sts| {
                    let resolver = resolver.clone();
                    tokio::spawn(async move { sts.refresh_forever(&resolver).await })
                });
                while workers.join_next().await.is_some() {}
                for task in [refresh, probing].into_iter().flatten() {
                    task.abort();
                }
                if let Some(sts) = &sts {
                    sts.save();
                }
            })
        })?;
        Ok(Resolver { requests: Some(requests), answers, thread: Some(thread), sts_tls, reports })
    }

    /// The run's TLS reports (`None` unless MTA-STS or DANE is looked up).
    pub fn tls_reports(&self) -> Option<&Arc<TlsReports>> {
        self.reports.as_ref()
    }

    /// What destinations of domains with an MTA-STS policy are given (`None` unless MTA-STS
    /// is looked up).
    pub fn sts_tls(&self) -> Option<&StsTls> {
        self.sts_tls.as_ref()
    }

    /// Starts resolving `domain`; its answer comes out of [`Resolver::try_answer`].
    pub fn ask(&self, domain: &str) {
        if let Some(r) = &self.requests {
            let _ = r.send(domain.to_owned());
        }
    }

    pub fn try_answer(&self) -> Option<(String, Answer)> {
        self.answers.try_recv().ok()
    }

    /// Waits up to `wait` for an answer.
    pub fn answer_within(&self, wait: Duration) -> Option<(String, Answer)> {
        self.answers.recv_timeout(wait).ok()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        // Closing the request channel ends the thread once lookups in flight finish.
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn build(config: &DnsConfig) -> std::io::Result<TokioResolver> {
    Ok(builder(config)?.build())
}

/// A resolver like [`build`]'s that asks for DNSSEC records and validates them up to `anchors`
/// (each answer's records carry their proof).
pub(crate) fn build_validating(
    config: &DnsConfig,
    anchors: Arc<hickory_resolver::proto::dnssec::TrustAnchors>,
) -> std::io::Result<TokioResolver> {
    let mut builder = builder(config)?.with_trust_anchor(anchors);
    builder.options_mut().validate = true;
    Ok(builder.build())
}

fn builder(
    config: &DnsConfig,
) -> std::io::Result<hickory_resolver::ResolverBuilder<TokioConnectionProvider>> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match config.server {
        Some(server) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            TokioResolver::builder_with_config(ResolverConfig::from_parts(None, vec![], servers), provider)
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| std::io::Error::other(format!("system DNS configuration: {e}")))?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = config.timeout;
    opts.attempts = config.attempts;
    opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
    // Names are always fully qualified here: no search list.
    opts.ndots = 0;
    // hickory keeps 32 answers by default: the addresses of a provider's few MX hosts, shared
    // by thousands of its customers' domains, were asked for again and again. KumoMTA keeps
    // 8,192; so do we (a few MB).
    opts.cache_size = DNS_CACHE;
    Ok(builder)
}

/// The delivery route for `domain` (RFC 5321 §5.1).
async fn resolve(resolver: &TokioResolver, domain: &str, rng: &mut Rng) -> Answer {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(mx) => {
            let mut records: Vec<(u16, String)> = mx
                .iter()
                .map(|r| (r.preference(), r.exchange().to_ascii().trim_end_matches('.').to_ascii_lowercase()))
                .collect();
            // Null MX: a single record whose exchange is the root (RFC 7505).
            if records.iter().any(|(_, name)| name.is_empty()) {
                if records.len() == 1 {
                    return Answer::Undeliverable(format!("{domain} accepts no mail (null MX, RFC 7505)"));
                }
                records.retain(|(_, name)| !name.is_empty());
            }
            let mut until = mx.valid_until();
            order_by_preference(&mut records, rng);
            let mut hosts = Vec::with_capacity(records.len());
            let mut failures = Vec::new();
            for (preference, name) in records {
                match resolver.lookup_ip(format!("{name}.").as_str()).await {
                    Ok(ips) => {
                        until = until.min(ips.valid_until());
                        hosts.push(MxHost { name, preference, addrs: ips.iter().collect(), tlsa: None });
                    }
                    Err(e) => failures.push(format!("{name}: {}", describe(&e))),
                }
            }
            if hosts.is_empty() {
                return Answer::Failed(format!(
                    "no MX host of {domain} has an address ({})",
                    failures.join("; ")
                ));
            }
            Answer::Hosts { hosts, until, tls: TlsDemand::None }
        }
        Err(e) if no_such_domain(&e) => Answer::Undeliverable(format!("{domain} does not exist (NXDOMAIN)")),
        Err(e) if no_records(&e) => {
            // No MX: the domain itself is the implicit MX host, if it has an address.
            match resolver.lookup_ip(fqdn.as_str()).await {
                Ok(ips) => {
                    let host = MxHost {
                        name: domain.to_owned(),
                        preference: 0,
                        addrs: ips.iter().collect(),
                        tlsa: None,
                    };
                    Answer::Hosts { hosts: vec![host], until: ips.valid_until(), tls: TlsDemand::None }
                }
                Err(e) if no_records(&e) || no_such_domain(&e) => {
                    Answer::Undeliverable(format!("{domain} has no MX record and no address"))
                }
                Err(e) => Answer::Failed(format!("{domain}: address lookup failed: {}", describe(&e))),
            }
        }
        Err(e) => Answer::Failed(format!("{domain}: MX lookup failed: {}", describe(&e))),
    }
}

/// `answer` under `domain`'s MTA-STS `policy`: in `enforce` mode, only the MX hosts it lists,
/// and those only over TLS with a checked certificate; none listed, no delivery.
fn keep_to(answer: Answer, policy: Policy, domain: &str) -> Answer {
    let Answer::Hosts { hosts, until, .. } = answer else { return answer };
    if policy.mode != super::mta_sts::Mode::Enforce {
        return Answer::Hosts { hosts, until, tls: TlsDemand::MtaSts(Arc::new(policy)) };
    }
    match lookup::allowed(&policy, hosts, |h| h.name.as_str()) {
        Ok(hosts) => Answer::Hosts { hosts, until, tls: TlsDemand::MtaSts(Arc::new(policy)) },
        Err(refused) => Answer::Unlisted(format!(
            "TLS required: {domain}'s MTA-STS policy (enforce) lists none of its MX hosts ({refused})"
        )),
    }
}

/// `answer`'s hosts with what DANE says of each: their TLSA records, or left out when their
/// records fail validation (RFC 7672 §2.2.3); none left, no delivery.
async fn with_dane(answer: Answer, dane: &Dane, domain: &str, reports: Option<&TlsReports>) -> Answer {
    let Answer::Hosts { hosts, mut until, tls } = answer else { return answer };
    let mut kept = Vec::with_capacity(hosts.len());
    let mut failures = Vec::new();
    for mut host in hosts {
        let (verdict, records_until) = dane.host_until(&host.name).await;
        // The route is kept no longer than the records it checks certificates against.
        until = until.min(records_until.unwrap_or(until));
        match verdict {
            HostDane::None => kept.push(host),
            HostDane::Tlsa(records) => {
                host.tlsa = Some(records);
                kept.push(host);
            }
            HostDane::Failed(why) => {
                if let Some(reports) = reports {
                    reports.dane_failed(&host.name, &why);
                }
                failures.push(why)
            }
        }
    }
    if kept.is_empty() {
        return Answer::Unlisted(format!(
            "TLS required: no MX host of {domain} passes DANE ({})",
            failures.join("; ")
        ));
    }
    Answer::Hosts { hosts: kept, until, tls }
}

/// Sorts by preference, shuffling hosts of equal preference (RFC 5321 §5.1: spread the load).
fn order_by_preference(records: &mut [(u16, String)], rng: &mut Rng) {
    records.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut start = 0;
    while start < records.len() {
        let end = start + records[start..].iter().take_while(|r| r.0 == records[start].0).count();
        // Fisher-Yates within the group.
        for i in (start + 1..end).rev() {
            let j = start + (rng.next_u64() % (i - start + 1) as u64) as usize;
            records.swap(i, j);
        }
        start = end;
    }
}

fn proto(e: &ResolveError) -> Option<&ProtoError> {
    e.proto()
}

fn response_code(e: &ResolveError) -> Option<ResponseCode> {
    match proto(e).map(ProtoError::kind) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => Some(*response_code),
        _ => None,
    }
}

pub(crate) fn no_such_domain(e: &ResolveError) -> bool {
    response_code(e) == Some(ResponseCode::NXDomain)
}

pub(crate) fn no_records(e: &ResolveError) -> bool {
    response_code(e) == Some(ResponseCode::NoError)
}

/// A TXT record's strings as the one text they make (RFC 7208 §3.3, RFC 6376 §3.6.2.2,
/// RFC 8461 §3.1).
pub(crate) fn txt_text(txt: &hickory_resolver::proto::rr::rdata::TXT) -> String {
    txt.txt_data().iter().map(|s| String::from_utf8_lossy(s)).collect()
}

pub(crate) fn describe(e: &ResolveError) -> String {
    match response_code(e) {
        Some(code) if code != ResponseCode::NoError => format!("{code}"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_order_with_equal_preferences_shuffled() {
        let base: Vec<(u16, String)> =
            vec![(20, "c".into()), (10, "a".into()), (10, "b".into()), (30, "d".into()), (10, "e".into())];
        let mut firsts = std::collections::HashSet::new();
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let mut r = base.clone();
            order_by_preference(&mut r, &mut rng);
            let prefs: Vec<u16> = r.iter().map(|x| x.0).collect();
            assert_eq!(prefs, vec![10, 10, 10, 20, 30]);
            assert_eq!((r[3].1.as_str(), r[4].1.as_str()), ("c", "d"));
            firsts.insert(r[0].1.clone());
        }
        assert_eq!(firsts.len(), 3, "each of the preference-10 hosts comes first sometimes: {firsts:?}");
    }

    /// Every answer kind, against the in-process responder.
    #[test]
    fn answers_from_a_local_server() {
        use crate::testkit::dns::{DnsStub, Zone};
        let zone: Zone = "
            two.test MX 10 mx1.two.test
            two.test MX 20 mx2.two.test
            mx1.two.test A 127.0.0.2
            mx2.two.test A 127.0.0.3
            mx2.two.test AAAA ::1
            implicit.test A 127.0.0.4
            null.test MX 0 .
            nomx.test AAAA ::2
            nomx.test SERVFAIL
            broken.test SERVFAIL
            dangling.test MX 10 nowhere.test
            slow.test DELAY 1500
            slow.test A 127.0.0.5
            empty.test A 127.0.0.6
            empty.test DROP
        "
        .parse()
        .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let resolver = Resolver::start(DnsConfig::for_stub(stub.addr())).unwrap();
        let domains = [
            "two.test",
            "implicit.test",
            "null.test",
            "missing.test",
            "broken.test",
            "dangling.test",
            "slow.test",
            "empty.test",
        ];
        for d in domains {
            resolver.ask(d);
        }
        let mut got = std::collections::HashMap::new();
        while got.len() < domains.len() {
            let (d, a) = resolver.answer_within(Duration::from_secs(10)).expect("every domain is answered");
            got.insert(d, a);
        }
        let Answer::Hosts { hosts, .. } = &got["two.test"] else { panic!("{:?}", got["two.test"]) };
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["mx1.two.test", "mx2.two.test"]);
        assert_eq!(hosts[1].addrs.len(), 2, "A and AAAA");
        let Answer::Hosts { hosts, .. } = &got["implicit.test"] else { panic!("{:?}", got["implicit.test"]) };
        assert_eq!(
            (hosts[0].name.as_str(), hosts[0].addrs.as_slice()),
            ("implicit.test", &[loopback4(4)][..])
        );
        let reason = |d: &str| match &got[d] {
            Answer::Undeliverable(r) => format!("bounce: {r}"),
            Answer::Failed(r) => format!("defer: {r}"),
            other => panic!("{d}: {other:?}"),
        };
        assert!(reason("null.test").starts_with("bounce") && reason("null.test").contains("null MX"));
        assert!(reason("missing.test").starts_with("bounce") && reason("missing.test").contains("NXDOMAIN"));
        assert!(reason("broken.test").starts_with("defer"), "{}", reason("broken.test"));
        assert!(
            reason("dangling.test").starts_with("defer") && reason("dangling.test").contains("no MX host")
        );
        assert!(
            reason("slow.test").starts_with("defer"),
            "a late answer is a timeout: {}",
            reason("slow.test")
        );
        assert!(reason("empty.test").starts_with("defer"), "{}", reason("empty.test"));
    }

    fn loopback4(x: u8) -> IpAddr {
        crate::testkit::dns::loopback(x)
    }

    /// An answer with TLSA records lasts no longer than they do (a key rollover is seen when
    /// they run out, not when the MX answer does); one without, as its MX answer.
    #[test]
    fn a_dane_answer_lasts_no_longer_than_its_tlsa_records() {
        use crate::deliver::dane::DaneConfig;
        use crate::testkit::dns::{DnsStub, Zone};
        let digest = "0a".repeat(32);
        let zone: Zone = format!(
            "
            test SIGNED
            short.test MX 10 mx.short.test
            mx.short.test A 127.0.0.2
            _25._tcp.mx.short.test TLSA 3 1 1 {digest}
            _25._tcp.mx.short.test TTL 5
            plain.test MX 10 mx.plain.test
            mx.plain.test A 127.0.0.3
            "
        )
        .parse()
        .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let anchor = std::env::temp_dir().join(format!("volley-dane-ttl-{}.key", std::process::id()));
        std::fs::write(&anchor, stub.trust_anchor()).unwrap();
        let config = DnsConfig {
            dane: Some(DaneConfig::new(Some(anchor.clone()))),
            ..DnsConfig::for_stub(stub.addr())
        };
        let resolver = Resolver::start(config).unwrap();
        let asked = std::time::Instant::now();
        let mut until = std::collections::HashMap::new();
        for domain in ["short.test", "plain.test"] {
            resolver.ask(domain);
            let (name, answer) = resolver.answer_within(Duration::from_secs(10)).expect("an answer");
            let Answer::Hosts { hosts, until: at, .. } = answer else { panic!("{name}: {answer:?}") };
            assert_eq!(hosts[0].tlsa.is_some(), name == "short.test", "{hosts:?}");
            until.insert(name, at);
        }
        assert!(until["short.test"] <= asked + Duration::from_secs(6), "kept past its TLSA records' 5 s");
        assert!(until["plain.test"] >= asked + Duration::from_secs(200), "kept for its MX answer's 300 s");
        let _ = std::fs::remove_file(&anchor);
    }

    /// A resolver that does not answer at the start (down, or not validating yet) leaves DANE
    /// off only until its answers validate: probed again, DANE comes on by itself.
    #[test]
    fn dane_comes_on_once_the_resolvers_answers_validate() {
        use crate::deliver::dane::DaneConfig;
        use crate::testkit::dns::{DnsStub, Zone};
        use std::sync::atomic::{AtomicBool, Ordering};
        let zone: Zone = "
            test SIGNED
            dane.test MX 10 mx.dane.test
            mx.dane.test A 127.0.0.2
            _25._tcp.mx.dane.test TLSA 3 1 1 0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a
        "
        .parse()
        .unwrap();
        let stub = DnsStub::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let anchor = std::env::temp_dir().join(format!("volley-dane-probe-{}.key", std::process::id()));
        std::fs::write(&anchor, stub.trust_anchor()).unwrap();
        // A gate in front of the stub: it drops every query until opened.
        let gate = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gate_addr = gate.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let opened = Arc::clone(&open);
        let upstream = stub.addr();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, client)) = gate.recv_from(&mut buf) {
                if !opened.load(Ordering::Relaxed) {
                    continue;
                }
                let forward = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                forward.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                forward.send_to(&buf[..n], upstream).unwrap();
                let mut answer = [0u8; 4096];
                if let Ok(m) = forward.recv(&mut answer) {
                    let _ = gate.send_to(&answer[..m], client);
                }
            }
        });
        let config = DnsConfig {
            dane: Some(DaneConfig {
                trust_anchor: Some(anchor.clone()),
                probe_again: Duration::from_millis(200),
            }),
            ..DnsConfig::for_stub(gate_addr)
        };
        let resolver = Resolver::start(config).unwrap();
        let tlsa_of = |resolver: &Resolver| {
            resolver.ask("dane.test");
            match resolver.answer_within(Duration::from_secs(10)).expect("an answer").1 {
                Answer::Hosts { hosts, .. } => Some(hosts[0].tlsa.is_some()),
                _ => None,
            }
        };
        assert_eq!(tlsa_of(&resolver), None, "nothing answers yet");
        open.store(true, Ordering::Relaxed);
        // The first answers may come before the next probe: without DANE, as at the start.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tlsa_of(&resolver) {
                Some(true) => break,
                other => assert!(std::time::Instant::now() < deadline, "DANE did not come on: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&anchor);
    }
}
